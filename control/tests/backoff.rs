//! Backoff bounds and spread.

use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_control::backoff::{Backoff, BackoffConfig};
use proptest::prelude::*;

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
