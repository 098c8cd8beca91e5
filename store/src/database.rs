//! The database handle and the transaction retry loop.
//!
//! Owns `run`: begin, call the closure, commit, and on a retryable error back
//! off and run the closure again, the FoundationDB way. The pause is the one
//! full-jitter [`Backoff`], seeded per database, waited out on the
//! database's [`crate::clock::Clock`]. It must never retry a permanent error,
//! and never retry a `commit_unknown_result` silently for a caller that did
//! not make its closure idempotent (`run_once` does that).
//!
//! Metrics (through the `metrics` facade, recorded on retries only, never on
//! the first attempt's path):
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `meridian_store_retries_total` | counter | `reason` | transaction attempts retried; `reason` is `conflict` (OCC: `not_committed`), `busy`, `unknown_result` or `other` |

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::backend::{Backend, CommitInfo, TxOptions};
use crate::backoff::{Backoff, BackoffConfig};
use crate::clock::{SharedClock, SystemClock};
use crate::error::{Result, Retryable, StoreError, TxError};
use crate::transaction::Transaction;

/// Tells a transaction closure whether an earlier attempt may have committed
/// (its commit ended in `commit_unknown_result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeCommitted(pub bool);

/// Retry settings of `Database::run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOptions {
    /// Attempts before the last retryable error is returned to the caller.
    pub max_attempts: u32,
    /// First backoff ceiling; doubles on every retry (full jitter below it).
    pub base_delay: Duration,
    /// Largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        // FoundationDB's own client starts at 10 ms and caps at 1 s; a local
        // SQLite conflict clears much faster, so start lower.
        RetryOptions {
            max_attempts: 100,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(250),
        }
    }
}

/// What `run_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once<T> {
    /// This call applied the closure's writes and returned this value.
    Applied(T),
    /// An earlier call (or an earlier attempt of this one whose commit result
    /// was unknown) already applied them; nothing was written this time.
    AlreadyApplied,
}

/// A database: a backend plus the retry loop. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    backend: Arc<dyn Backend>,
    retry: RetryOptions,
    /// `None` when the options ask for no pause at all (a zero delay).
    backoff: Option<Arc<Mutex<Backoff>>>,
    clock: SharedClock,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend.name())
            .field("retry", &self.retry)
            .finish()
    }
}

impl Database {
    /// Wraps a backend with default retry options and a jitter seed of 0.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Database::with_options(backend, RetryOptions::default(), 0)
    }

    /// Wraps a backend with explicit retry options and the seed of the jitter
    /// applied between retries (so simulations replay exactly). Pauses are
    /// waited out on a [`SystemClock`] until [`Database::with_clock`].
    pub fn with_options(backend: Arc<dyn Backend>, retry: RetryOptions, seed: u64) -> Self {
        // A base above the cap means every pause is drawn below the cap, as
        // `min(cap, base * 2^n)` says; a zero base or cap means no pause.
        let config = BackoffConfig {
            base: retry.base_delay.min(retry.max_delay),
            cap: retry.max_delay,
        };
        let backoff = Backoff::new(config, seed)
            .ok()
            .map(|b| Arc::new(Mutex::new(b)));
        Database {
            backend,
            retry,
            backoff,
            clock: Arc::new(SystemClock::new()),
        }
    }

    /// The same database, waiting out its retry pauses on `clock` (the
    /// process's clock, so a simulation or a test controls them too).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The backend's short name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend, for wrappers such as fault injection.
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Starts a transaction that the caller commits (or drops) itself.
    /// Prefer [`Database::run`], which also retries.
    pub async fn begin(&self) -> Result<Transaction> {
        self.begin_with(TxOptions::default()).await
    }

    /// Starts a transaction with explicit options.
    pub async fn begin_with(&self, options: TxOptions) -> Result<Transaction> {
        Ok(Transaction::new(
            self.backend.begin(options).await?,
            self.clock.clone(),
        ))
    }

    /// Runs `f` in a serializable transaction and commits it, retrying on
    /// retryable errors (conflicts, busy, too old, and `commit_unknown_result`
    /// — so `f` must be idempotent; it is told when an earlier attempt may have
    /// committed). Returns the closure's value.
    pub async fn run<T, E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxError,
    {
        self.run_with_info(f).await.map(|(value, _)| value)
    }

    /// Like [`Database::run`], and also returns what the commit reported (its
    /// versionstamp, when one was asked for).
    pub async fn run_with_info<T, E, F, Fut>(&self, f: F) -> Result<(T, CommitInfo), E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxError,
    {
        self.run_inner(TxOptions::default(), f).await
    }

    /// Like [`Database::run`], but every attempt takes the write lock up
    /// front on backends that have one (SQLite's `BEGIN IMMEDIATE`). For a
    /// transaction that reads and then writes while other writers commit
    /// beside it: on a backend whose conflicts are coarse (any commit since
    /// its first read) such a transaction loses the race about as often as
    /// another commit lands between its first read and its commit, and each
    /// loss throws its reads and its work away and pauses before the retry.
    /// A read-only transaction must not use it: it would queue behind the
    /// writers for nothing.
    pub async fn run_locked<T, E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxError,
    {
        self.run_locked_with_info(f).await.map(|(value, _)| value)
    }

    /// Like [`Database::run_locked`], and also returns what the commit
    /// reported.
    pub async fn run_locked_with_info<T, E, F, Fut>(&self, f: F) -> Result<(T, CommitInfo), E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxError,
    {
        self.run_inner(
            TxOptions {
                pessimistic: true,
                system: false,
            },
            f,
        )
        .await
    }

    /// Like [`Database::run`] at system priority ([`TxOptions::system`]):
    /// for lease renewals and the like, which must not wait behind ordinary
    /// load. It takes the write lock up front on backends that have one.
    /// Nothing else should use it.
    pub async fn run_system<T, E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxError,
    {
        self.run_inner(
            TxOptions {
                pessimistic: true,
                system: true,
            },
            f,
        )
        .await
        .map(|(value, _)| value)
    }

    async fn run_inner<T, E, F, Fut>(
        &self,
        first: TxOptions,
        mut f: F,
    ) -> Result<(T, CommitInfo), E>
    where
        F: FnMut(Transaction, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxError,
    {
        let mut attempt: u32 = 0;
        let mut maybe_committed = false;
        // System transactions are small read-then-write ones that cannot
        // afford a lost race: they take the write lock (where a backend has
        // one) from their first attempt, as `run_locked` ones do.
        let system = first.system;
        let mut pessimistic = first.pessimistic;
        loop {
            attempt += 1;
            let options = TxOptions {
                pessimistic,
                system,
            };
            let err: E = match self.begin_with(options).await {
                Err(e) => E::from(e),
                Ok(tx) => match f(tx.clone(), MaybeCommitted(maybe_committed)).await {
                    Ok(value) => match tx.commit().await {
                        Ok(info) => return Ok((value, info)),
                        Err(e) => E::from(e),
                    },
                    Err(e) => e,
                },
            };
            let retry = match err.as_store_error() {
                Some(store_err) if store_err.is_retryable() => {
                    count_retry(store_err);
                    maybe_committed |= store_err.maybe_committed();
                    // After a conflict, take the write lock up front so the
                    // next attempt cannot lose the race again.
                    pessimistic |=
                        matches!(store_err, StoreError::NotCommitted | StoreError::Busy(_));
                    attempt < self.retry.max_attempts
                }
                _ => false,
            };
            if !retry {
                return Err(err);
            }
            let pause = self.pause(attempt);
            if !pause.is_zero() {
                self.clock.sleep(pause).await;
            }
        }
    }

    /// Runs `f` at most once to effect, identified by `marker`: the first
    /// commit also writes the marker key, and any later call (or a retry after
    /// `commit_unknown_result`) that finds it returns `AlreadyApplied` without
    /// writing. The caller owns the marker's subspace and its clean-up. `f`
    /// must do its work inside the future it returns, not before.
    pub async fn run_once<T, E, F, Fut>(&self, marker: &[u8], mut f: F) -> Result<Once<T>, E>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: TxError,
    {
        let marker = marker.to_vec();
        self.run(|tx, _| {
            let marker = marker.clone();
            // Futures are lazy: the body does nothing unless polled below,
            // after the marker check.
            let body = f(tx.clone());
            async move {
                if tx.get(&marker).await.map_err(E::from)?.is_some() {
                    return Ok(Once::AlreadyApplied);
                }
                let value = body.await?;
                tx.set(&marker, b"").map_err(E::from)?;
                Ok(Once::Applied(value))
            }
        })
        .await
    }

    /// The pause after failed attempt `attempt` (1-based).
    fn pause(&self, attempt: u32) -> Duration {
        self.backoff.as_ref().map_or(Duration::ZERO, |b| {
            b.lock().delay(attempt.saturating_sub(1))
        })
    }
}

/// Shows the retry series at zero; call once the process's recorder is
/// installed.
pub fn register_metrics() {
    for reason in ["conflict", "busy", "unknown_result", "other"] {
        let _ = metrics::counter!("meridian_store_retries_total", "reason" => reason);
    }
}

/// Counts one retry of a transaction by its cause.
fn count_retry(err: &StoreError) {
    let reason = match err {
        StoreError::NotCommitted => "conflict",
        StoreError::Busy(_) => "busy",
        StoreError::CommitUnknownResult => "unknown_result",
        _ => "other",
    };
    metrics::counter!("meridian_store_retries_total", "reason" => reason).increment(1);
}
