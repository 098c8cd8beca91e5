//! Retry classification, the generic retry loop and the per-key retry budget.
//!
//! Owns [`Retryable`], the one question every error answers: "is this
//! transient (retry with backoff) or permanent (never retry)?"; the
//! [`retry`] helper that acts on the answer; and [`RetryBudget`], which
//! bounds how many retries one key may spend in a window so that one sick
//! object cannot monopolise the work queue.
//!
//! Must never: decide retryability by inspecting error text, wait other than
//! through a [`Clock`], or retry an error that says it is permanent.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::clock::{Clock, Instant};

/// Whether an error is transient. Defined once, in meridian-store (the
/// lowest crate), so store errors and every tier's errors answer the same
/// question through the same method.
pub use meridian_store::Retryable;

/// Why [`retry`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError<E> {
    /// The operation failed with a permanent error; it was not retried.
    #[error("permanent error after {attempts} attempt(s): {source}")]
    Permanent { attempts: u32, source: E },
    /// Every allowed attempt failed with a transient error.
    #[error("gave up after {attempts} attempt(s), last error: {source}")]
    Exhausted { attempts: u32, source: E },
}

impl<E> RetryError<E> {
    /// The last error the operation returned.
    pub fn into_inner(self) -> E {
        match self {
            RetryError::Permanent { source, .. } | RetryError::Exhausted { source, .. } => source,
        }
    }

    /// Attempts made, the failing one included.
    pub fn attempts(&self) -> u32 {
        match self {
            RetryError::Permanent { attempts, .. } | RetryError::Exhausted { attempts, .. } => {
                *attempts
            }
        }
    }
}

/// Exhaustion stays transient: the cause has not changed, only this loop's
/// patience ran out, so an outer caller may still try again later.
impl<E> Retryable for RetryError<E> {
    fn is_retryable(&self) -> bool {
        matches!(self, RetryError::Exhausted { .. })
    }
}

/// Runs `op` until it succeeds, fails permanently, or has been tried
/// `max_attempts` times (at least once, even if `max_attempts` is 0).
///
/// Between attempts it waits `backoff.delay(n)` on `clock`, `n` being the
/// 0-based retry number. `op` receives the 1-based attempt number.
pub async fn retry<T, E, F, Fut>(
    clock: &dyn Clock,
    backoff: &mut Backoff,
    max_attempts: u32,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Retryable,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let max_attempts = max_attempts.max(1);
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) if !e.is_retryable() => {
                return Err(RetryError::Permanent {
                    attempts: attempt,
                    source: e,
                });
            }
            Err(e) if attempt >= max_attempts => {
                return Err(RetryError::Exhausted {
                    attempts: attempt,
                    source: e,
                });
            }
            Err(_) => {
                let delay = backoff.delay(attempt - 1);
                tracing::debug!(attempt, ?delay, "transient error, retrying");
                clock.sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// Parameters of a [`RetryBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetConfig {
    /// Retries one key may spend within any `window`.
    pub max_retries: u32,
    /// Length of the sliding window.
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    /// 10 retries per minute: with the default backoff the tenth retry is
    /// already ~5 s out, so a key still failing after that is sick rather
    /// than unlucky.
    fn default() -> Self {
        RetryBudgetConfig {
            max_retries: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Per-key sliding-window retry budget.
///
/// Each key may spend at most `max_retries` retries within any `window`.
/// What happens to a key whose budget is spent is the caller's decision; the
/// reconcile runner parks it (see [`crate::reconcile`]).
///
/// Memory is bounded by the keys currently failing: [`RetryBudget::forget`]
/// drops a key's history once it has succeeded, because success is progress
/// and the budget exists to contain keys that make none.
#[derive(Debug, Clone)]
pub struct RetryBudget<K: Ord> {
    config: RetryBudgetConfig,
    spent: BTreeMap<K, VecDeque<Instant>>,
}

/// Answer of [`RetryBudget::try_spend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetDecision {
    /// The retry was charged to the key's budget; go ahead.
    Granted { remaining: u32 },
    /// The budget is spent until `refill_at`, when the oldest charged retry
    /// leaves the window.
    Exhausted { refill_at: Instant },
}

impl<K: Ord + Clone> RetryBudget<K> {
    pub fn new(config: RetryBudgetConfig) -> Self {
        RetryBudget {
            config,
            spent: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> RetryBudgetConfig {
        self.config
    }

    /// Charges one retry to `key` at `now`, if its budget allows.
    pub fn try_spend(&mut self, key: &K, now: Instant) -> BudgetDecision {
        let window = self.config.window;
        let max = usize::try_from(self.config.max_retries).unwrap_or(usize::MAX);
        let log = match self.spent.get_mut(key) {
            Some(log) => log,
            None => self.spent.entry(key.clone()).or_default(),
        };
        while log.front().is_some_and(|t| t.saturating_add(window) <= now) {
            log.pop_front();
        }
        if log.len() >= max {
            let refill_at = log
                .front()
                .map_or(now, |oldest| oldest.saturating_add(window));
            return BudgetDecision::Exhausted { refill_at };
        }
        log.push_back(now);
        let remaining = u32::try_from(max - log.len()).unwrap_or(u32::MAX);
        BudgetDecision::Granted { remaining }
    }

    /// Retries `key` has charged within the window ending at `now`.
    pub fn spent(&self, key: &K, now: Instant) -> u32 {
        let window = self.config.window;
        self.spent.get(key).map_or(0, |log| {
            let live = log
                .iter()
                .filter(|t| t.saturating_add(window) > now)
                .count();
            u32::try_from(live).unwrap_or(u32::MAX)
        })
    }

    /// Drops `key`'s history.
    pub fn forget(&mut self, key: &K) {
        self.spent.remove(key);
    }

    /// Keys with a history.
    pub fn tracked_keys(&self) -> usize {
        self.spent.len()
    }
}

impl fmt::Display for BudgetDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetDecision::Granted { remaining } => write!(f, "granted ({remaining} left)"),
            BudgetDecision::Exhausted { refill_at } => write!(f, "exhausted until {refill_at}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_epoch(Duration::from_millis(ms))
    }

    #[test]
    fn budget_grants_up_to_the_limit_within_a_window_then_refills() {
        let mut b = RetryBudget::new(RetryBudgetConfig {
            max_retries: 3,
            window: Duration::from_millis(100),
        });
        assert_eq!(
            b.try_spend(&"k", at(0)),
            BudgetDecision::Granted { remaining: 2 }
        );
        assert_eq!(
            b.try_spend(&"k", at(10)),
            BudgetDecision::Granted { remaining: 1 }
        );
        assert_eq!(
            b.try_spend(&"k", at(20)),
            BudgetDecision::Granted { remaining: 0 }
        );
        assert_eq!(
            b.try_spend(&"k", at(50)),
            BudgetDecision::Exhausted { refill_at: at(100) }
        );
        // Another key is unaffected by k's sickness.
        assert_eq!(
            b.try_spend(&"j", at(50)),
            BudgetDecision::Granted { remaining: 2 }
        );
        assert_eq!(b.spent(&"k", at(99)), 3);
        // At 100 the retry charged at 0 leaves the window.
        assert_eq!(
            b.try_spend(&"k", at(100)),
            BudgetDecision::Granted { remaining: 0 }
        );
        assert_eq!(
            b.try_spend(&"k", at(105)),
            BudgetDecision::Exhausted { refill_at: at(110) }
        );
    }

    #[test]
    fn forgetting_a_key_restores_its_budget_and_frees_its_memory() {
        let mut b = RetryBudget::new(RetryBudgetConfig {
            max_retries: 1,
            window: Duration::from_secs(60),
        });
        assert!(matches!(
            b.try_spend(&1, at(0)),
            BudgetDecision::Granted { .. }
        ));
        assert!(matches!(
            b.try_spend(&1, at(1)),
            BudgetDecision::Exhausted { .. }
        ));
        assert_eq!(b.tracked_keys(), 1);
        b.forget(&1);
        assert_eq!(b.tracked_keys(), 0);
        assert!(matches!(
            b.try_spend(&1, at(2)),
            BudgetDecision::Granted { .. }
        ));
    }

    #[test]
    fn a_zero_budget_never_grants() {
        let mut b = RetryBudget::new(RetryBudgetConfig {
            max_retries: 0,
            window: Duration::from_secs(1),
        });
        assert!(matches!(
            b.try_spend(&"x", at(0)),
            BudgetDecision::Exhausted { .. }
        ));
    }
}
