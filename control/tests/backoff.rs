//! Backoff bounds and spread, and the retry helper driven by a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_control::backoff::{Backoff, BackoffConfig};
use meridian_control::clock::{Clock, ManualClock};
use meridian_control::retry::{RetryError, Retryable, retry};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TestError {
    #[error("transient")]
    Transient,
    #[error("permanent")]
    Permanent,
}

impl Retryable for TestError {
    fn is_retryable(&self) -> bool {
        matches!(self, TestError::Transient)
    }
}

/// The ceiling by repeated doubling, independent of the crate's shift math.
fn ceiling_by_doubling(base: Duration, cap: Duration, retry: u32) -> Duration {
    let mut c = base.min(cap);
    for _ in 0..retry {
        if c >= cap {
            break;
        }
        c = c.saturating_mul(2).min(cap);
    }
    c
}

proptest! {
    #[test]
    fn backoff_delays_stay_within_zero_and_the_capped_exponential_ceiling(
        seed in any::<u64>(),
        base_us in 1u64..5_000_000,
        cap_factor in 1u64..100_000,
        retries in proptest::collection::vec(0u32..300, 1..64),
    ) {
        let base = Duration::from_micros(base_us);
        let cap = base.saturating_mul(u32::try_from(cap_factor).unwrap_or(u32::MAX));
        let cfg = BackoffConfig { base, cap };
        let mut backoff = Backoff::new(cfg, seed).expect("valid config");
        for n in retries {
            let ceiling = ceiling_by_doubling(base, cap, n);
            prop_assert_eq!(backoff.ceiling(n), ceiling);
            let d = backoff.delay(n);
            prop_assert!(d <= ceiling, "retry {n}: {d:?} above {ceiling:?}");
        }
    }
}

#[test]
fn full_jitter_delays_are_uniform_over_the_ceiling() {
    const SAMPLES: u64 = 100_000;
    const RETRY: u32 = 6;
    let cfg = BackoffConfig {
        base: Duration::from_millis(10),
        cap: Duration::from_secs(10),
    };
    let mut backoff = Backoff::new(cfg, 0x00c0_ffee).expect("valid config");
    let ceiling = backoff.ceiling(RETRY);
    assert_eq!(ceiling, Duration::from_millis(640));
    let ceiling_us = u64::try_from(ceiling.as_micros()).expect("fits");

    let mut hist = Histogram::<u64>::new_with_bounds(1, ceiling_us + 1, 3).expect("histogram");
    let mut deciles = [0u64; 10];
    let mut max_seen = Duration::ZERO;
    for _ in 0..SAMPLES {
        let d = backoff.delay(RETRY);
        max_seen = max_seen.max(d);
        let us = u64::try_from(d.as_micros()).expect("fits");
        hist.record(us.max(1)).expect("in range");
        let bucket = (d.as_nanos() * 10 / (ceiling.as_nanos() + 1)) as usize;
        deciles[bucket] += 1;
    }

    println!("full-jitter delays for retry {RETRY}, ceiling {ceiling:?}, {SAMPLES} samples");
    println!(
        "  min {} us  mean {:.0} us  max {} us",
        hist.min(),
        hist.mean(),
        hist.max()
    );
    for q in [0.01, 0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999] {
        println!(
            "  p{:<5} {:>7} us  (uniform: {:>7.0} us)",
            q * 100.0,
            hist.value_at_quantile(q),
            q * ceiling_us as f64
        );
    }
    for (i, count) in deciles.iter().enumerate() {
        let share = *count as f64 / SAMPLES as f64 * 100.0;
        println!(
            "  [{:>3}%, {:>3}%) of ceiling: {:>6} ({share:5.2}%) {}",
            i * 10,
            (i + 1) * 10,
            count,
            "#".repeat((share * 4.0) as usize)
        );
    }

    assert!(max_seen <= ceiling);
    for (i, count) in deciles.iter().enumerate() {
        let share = *count as f64 / SAMPLES as f64;
        assert!(
            (0.085..=0.115).contains(&share),
            "decile {i} holds {:.2}% of delays, expected 10% +/- 1.5%",
            share * 100.0
        );
    }
    let median = hist.value_at_quantile(0.5) as f64;
    assert!(
        (median / ceiling_us as f64 - 0.5).abs() < 0.02,
        "median {median} us is not near half the ceiling"
    );
    // The lowest and highest 1% are reached: jitter really spans [0, ceiling].
    assert!(hist.value_at_quantile(0.005) < ceiling_us / 100);
    assert!(hist.value_at_quantile(0.995) > ceiling_us * 99 / 100);
}

fn test_backoff() -> Backoff {
    Backoff::new(
        BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        },
        99,
    )
    .expect("valid config")
}

#[tokio::test]
async fn retry_waits_full_jitter_delays_on_the_clock_between_transient_failures() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicU32::new(0));
    let task = {
        let clock = clock.clone();
        let calls = Arc::clone(&calls);
        tokio::spawn(async move {
            let mut backoff = test_backoff();
            let mut seen = Vec::new();
            let result = retry(&clock, &mut backoff, 10, |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                seen.push((attempt, clock.now()));
                async move {
                    if attempt < 4 {
                        Err(TestError::Transient)
                    } else {
                        Ok(attempt * 10)
                    }
                }
            })
            .await;
            (result, seen)
        })
    };

    let mut expected = test_backoff();
    let mut at = clock.now();
    for n in 0..3 {
        clock.wait_for_timers(1).await;
        let delay = expected.delay(n);
        at = at + delay;
        assert_eq!(clock.next_deadline(), Some(at), "retry {n} waits {delay:?}");
        assert_eq!(calls.load(Ordering::SeqCst), n + 1);
        clock.advance_to_next_deadline();
    }
    let (result, seen) = task.await.expect("retry task");
    assert_eq!(result, Ok(40));
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.last().map(|(_, t)| *t), Some(at));
    assert_eq!(
        seen.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

#[tokio::test]
async fn retry_returns_a_permanent_error_at_once_without_waiting() {
    let clock = ManualClock::new();
    let mut backoff = test_backoff();
    let mut calls = 0;
    let result: Result<(), _> = retry(&clock, &mut backoff, 10, |_| {
        calls += 1;
        async { Err(TestError::Permanent) }
    })
    .await;
    assert_eq!(
        result,
        Err(RetryError::Permanent {
            attempts: 1,
            source: TestError::Permanent
        })
    );
    assert_eq!(calls, 1);
    assert_eq!(clock.pending_timers(), 0);
    assert!(!result.unwrap_err().is_retryable());
}

#[tokio::test]
async fn retry_gives_up_after_max_attempts_with_the_last_transient_error() {
    let clock = ManualClock::new();
    let task = {
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut backoff = test_backoff();
            retry(&clock, &mut backoff, 3, |_| async {
                Err::<(), _>(TestError::Transient)
            })
            .await
        })
    };
    for _ in 0..2 {
        clock.wait_for_timers(1).await;
        clock.advance_to_next_deadline();
    }
    let result = task.await.expect("retry task");
    let err = result.expect_err("exhausted");
    assert_eq!(
        err,
        RetryError::Exhausted {
            attempts: 3,
            source: TestError::Transient
        }
    );
    assert!(err.is_retryable());
    assert_eq!(clock.pending_timers(), 0);
}

#[tokio::test]
async fn retry_with_zero_max_attempts_still_tries_once() {
    let clock = ManualClock::new();
    let mut backoff = test_backoff();
    let result = retry(&clock, &mut backoff, 0, |attempt| async move {
        Err::<(), _>((attempt, TestError::Transient).1)
    })
    .await;
    assert_eq!(result.map_err(|e| e.attempts()), Err(1));
}
