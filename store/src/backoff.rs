//! Exponential backoff with full jitter.
//!
//! Owns the delay formula: retry `n` (0-based) waits a duration drawn
//! uniformly from `[0, min(cap, base * 2^n)]` ("full jitter"), from a seeded
//! RNG so that a run is reproducible from its seed.
//!
//! It is the only jitter formula in Meridian: the store's transaction retry,
//! the control kit's runner and retry loop, and every RPC client draw their
//! delays here.
//!
//! Must never: sleep, read the clock, or use an unseeded RNG. Callers wait
//! for the delay through a [`crate::clock::Clock`].

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Parameters of a [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest delay ever returned.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    /// 10 ms doubling up to 30 s: the first retries are fast enough to hide a
    /// lost commit, and the cap is short against a lease length so that a
    /// key converges soon after a fault heals.
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(10),
            cap: Duration::from_secs(30),
        }
    }
}

/// A [`BackoffConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffConfigError {
    #[error("backoff base must be greater than zero")]
    ZeroBase,
    #[error("backoff base {base:?} is greater than its cap {cap:?}")]
    BaseAboveCap { base: Duration, cap: Duration },
}

impl BackoffConfig {
    /// Checks that `0 < base <= cap`.
    pub fn validate(&self) -> Result<(), BackoffConfigError> {
        if self.base.is_zero() {
            return Err(BackoffConfigError::ZeroBase);
        }
        if self.base > self.cap {
            return Err(BackoffConfigError::BaseAboveCap {
                base: self.base,
                cap: self.cap,
            });
        }
        Ok(())
    }

    /// `min(cap, base * 2^retry)`, the upper end of retry `retry`'s delay.
    /// Never overflows: any product beyond the cap is the cap.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let base = self.base.as_nanos();
        let cap = self.cap.as_nanos();
        let scaled = 1u128
            .checked_shl(retry)
            .and_then(|factor| base.checked_mul(factor))
            .unwrap_or(cap);
        nanos_to_duration(scaled.min(cap))
    }
}

/// Exponential backoff with full jitter and its own seeded RNG.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    rng: ChaCha8Rng,
}

impl Backoff {
    /// A backoff whose delays are a pure function of `config`, `seed` and the
    /// sequence of calls.
    pub fn new(config: BackoffConfig, seed: u64) -> Result<Self, BackoffConfigError> {
        config.validate()?;
        Ok(Backoff {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// A backoff from `base` doubling to `cap` that cannot be invalid: a
    /// zero base counts as one nanosecond and a base above the cap as the
    /// cap. For the fixed settings of a loop, where an error would only be a
    /// constant's mistake.
    pub fn between(base: Duration, cap: Duration, seed: u64) -> Self {
        let cap = cap.max(Duration::from_nanos(1));
        Backoff {
            config: BackoffConfig {
                base: base.clamp(Duration::from_nanos(1), cap),
                cap,
            },
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn config(&self) -> BackoffConfig {
        self.config
    }

    /// `min(cap, base * 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.config.ceiling(retry)
    }

    /// The cap: the longest any delay can be.
    pub fn cap(&self) -> Duration {
        self.config.cap
    }

    /// Delay before retry `retry` (0 = the first retry): uniform on
    /// `[0, ceiling(retry)]`, both ends included.
    pub fn delay(&mut self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry).as_nanos();
        // Durations beyond u64 nanoseconds (584 years) are clamped: nobody
        // waits that long, and u64 keeps the uniform draw exact.
        let ceiling = u64::try_from(ceiling).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=ceiling))
    }
}

/// Spreads a periodic action: `period` shortened by a uniform random part of
/// up to `share` of it (`share` clamped to `0.0..=1.0`), so a crowd that
/// starts in step drifts apart and nobody acts later than asked. With
/// [`Backoff::delay`], the one place a random wait is drawn.
pub fn spread<R: Rng + ?Sized>(period: Duration, share: f64, rng: &mut R) -> Duration {
    let share = share.clamp(0.0, 1.0);
    period.mul_f64(rng.random_range((1.0 - share)..=1.0))
}

fn nanos_to_duration(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits a u32.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_between_impossible_bounds_is_made_valid_not_refused() {
        let b = Backoff::between(Duration::ZERO, Duration::from_millis(5), 1);
        assert_eq!(b.config().base, Duration::from_nanos(1));
        let b = Backoff::between(Duration::from_secs(9), Duration::from_secs(2), 1);
        assert_eq!(b.config().base, Duration::from_secs(2));
        assert_eq!(b.config().validate(), Ok(()));
    }

    #[test]
    fn a_spread_period_is_never_later_than_asked_nor_shorter_than_its_share_allows() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let period = Duration::from_millis(400);
        let draws: Vec<Duration> = (0..1_000).map(|_| spread(period, 0.25, &mut rng)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d <= period && *d >= period.mul_f64(0.75))
        );
        // Spread, not constant: a crowd drifts apart.
        let (min, max) = (draws.iter().min(), draws.iter().max());
        assert!(
            max.zip(min)
                .is_some_and(|(a, b)| *a - *b > Duration::from_millis(80))
        );
        assert_eq!(spread(period, 0.0, &mut rng), period);
    }

    fn cfg(base_ms: u64, cap_ms: u64) -> BackoffConfig {
        BackoffConfig {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms),
        }
    }

    #[test]
    fn ceiling_doubles_until_the_cap_and_stays_there() {
        let c = cfg(10, 1_000);
        let got: Vec<u64> = (0..10).map(|n| c.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            got,
            vec![10, 20, 40, 80, 160, 320, 640, 1_000, 1_000, 1_000]
        );
        assert_eq!(c.ceiling(u32::MAX), Duration::from_millis(1_000));
    }

    #[test]
    fn ceiling_does_not_overflow_with_a_huge_cap() {
        let c = BackoffConfig {
            base: Duration::from_secs(1),
            cap: Duration::MAX,
        };
        assert_eq!(c.ceiling(3), Duration::from_secs(8));
        assert!(c.ceiling(200) == Duration::MAX);
        let mut b = Backoff::new(c, 1).expect("valid config");
        let _ = b.delay(200);
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert_eq!(
            Backoff::new(cfg(0, 10), 0).map(|_| ()),
            Err(BackoffConfigError::ZeroBase)
        );
        assert!(matches!(
            Backoff::new(cfg(20, 10), 0),
            Err(BackoffConfigError::BaseAboveCap { .. })
        ));
    }

    #[test]
    fn same_seed_gives_the_same_delays_and_another_seed_does_not() {
        let mut a = Backoff::new(cfg(10, 10_000), 42).expect("valid");
        let mut b = Backoff::new(cfg(10, 10_000), 42).expect("valid");
        let mut c = Backoff::new(cfg(10, 10_000), 43).expect("valid");
        let da: Vec<_> = (0..20).map(|n| a.delay(n)).collect();
        let db: Vec<_> = (0..20).map(|n| b.delay(n)).collect();
        let dc: Vec<_> = (0..20).map(|n| c.delay(n)).collect();
        assert_eq!(da, db);
        assert_ne!(da, dc);
    }
}
