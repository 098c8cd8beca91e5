//! When a failed task's next attempt may be placed: the spec's retry
//! backoff, per index.
//!
//! Owns the delay before attempt `n + 1` of one task after attempt `n`
//! failed or was lost: exponential from `JobSpec.retry.backoff_base_ms`,
//! doubling per attempt, capped by `backoff_cap_ms` (or
//! [`DEFAULT_CAP_MS`]), with full jitter. The jitter is drawn from a hash
//! of the task and its attempt, not from a process's random state, so the
//! transaction that applies a report decides the same delay however often
//! it is retried. A base of 0 means no delay (the region's default).
//! Must never do I/O.

use crate::shard::stable_hash;

/// Cap of the delay when the spec sets a base and no cap: ten minutes.
pub const DEFAULT_CAP_MS: u64 = 600_000;

/// The delay (ms) before the attempt after `attempt` of task `index` of
/// `job_id` may be placed.
pub fn delay_ms(base_ms: u64, cap_ms: u64, job_id: &str, index: u32, attempt: u32) -> u64 {
    if base_ms == 0 {
        return 0;
    }
    let cap = if cap_ms == 0 { DEFAULT_CAP_MS } else { cap_ms };
    let doublings = attempt.saturating_sub(1).min(40);
    let ceiling = base_ms
        .saturating_mul(1u64 << doublings)
        .min(cap.max(base_ms));
    let draw = stable_hash(&format!("{job_id}/{index}/{attempt}"));
    draw % ceiling.saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_ceiling_that_doubles_up_to_the_cap() {
        for attempt in 1..12u32 {
            let ceiling = (1_000u64 << (attempt - 1)).min(8_000);
            for index in 0..200 {
                let d = delay_ms(1_000, 8_000, "j", index, attempt);
                assert!(d <= ceiling, "attempt {attempt}: {d} > {ceiling}");
            }
        }
        // Jittered: not every index waits the same.
        let spread: std::collections::BTreeSet<u64> =
            (0..50).map(|i| delay_ms(1_000, 8_000, "j", i, 3)).collect();
        assert!(spread.len() > 40, "{spread:?}");
    }

    #[test]
    fn no_base_means_no_delay_and_the_same_attempt_draws_the_same_delay() {
        assert_eq!(delay_ms(0, 5_000, "j", 1, 3), 0);
        assert_eq!(delay_ms(500, 0, "j", 7, 2), delay_ms(500, 0, "j", 7, 2));
        assert!(delay_ms(500, 0, "j", 7, 30) <= DEFAULT_CAP_MS);
    }
}
