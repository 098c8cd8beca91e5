//! Retry classification and the generic retry loop.
//!
//! Owns [`Retryable`], the one question every error answers: "is this
//! transient (retry with backoff) or permanent (never retry)?", and the
//! [`retry`] helper that acts on the answer.
//!
//! Must never: decide retryability by inspecting error text, wait other than
//! through a [`Clock`], or retry an error that says it is permanent.

use crate::backoff::Backoff;
use crate::clock::Clock;
use std::future::Future;

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
