//! The reconcile runner: workers that drive observed state toward desired
//! state, one key at a time.
//!
//! Owns the [`Reconciler`] contract, the [`Runner`] (N workers pulling keys
//! from a [`WorkQueue`], a periodic full resync on the [`Clock`], graceful
//! shutdown) and the [`Handle`] through which watch events enqueue keys.
//!
//! Watch events are hints only: a key says "look at this object again", and
//! the reconciler reads the observed state itself. That is why dropping a
//! queued key under overload is safe (the next resync re-lists it) and why a
//! burst of events for one key costs one reconcile.
//!
//! Error handling, per key:
//! - success (`Ok`, whatever the action) resets the key's attempt counter and
//!   retry budget history;
//! - an error bumps the attempt counter and asks
//!   [`Reconciler::error_policy`], whose default is: transient -> requeue
//!   after the full-jitter backoff delay for this attempt, permanent -> done
//!   (the reconciler is expected to have recorded it, e.g. in a job status);
//! - a requeue after an error is charged to the key's [`RetryBudget`]. A key
//!   whose budget is spent is **parked**: requeued in [`Lane::Low`] after the
//!   backoff cap, so it keeps converging once the fault heals but can no
//!   longer crowd out healthy keys;
//! - a panicking reconcile is treated as a transient error.
//!
//! Must never: run one key on two workers at once (the work queue
//! guarantees it), act on a hint without re-reading state, or read time or
//! randomness other than through the clock and the seeded backoff.

use std::collections::HashMap;
use std::fmt::{self, Display};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::backoff::{Backoff, BackoffConfig, BackoffConfigError};
use crate::clock::SharedClock;
use crate::queue::{
    AddOutcome, Lane, QueueConfig, QueueConfigError, QueueKey, WorkGuard, WorkQueue,
};
use crate::retry::{BudgetDecision, RetryBudget, RetryBudgetConfig, Retryable};
use crate::telemetry::{Outcome, RunnerMetrics};

/// What to do with a key after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing more until the next hint or resync.
    Done,
    /// Reconcile the key again after this delay (e.g. to check a deadline).
    RequeueAfter(Duration),
}

/// What [`Reconciler::error_policy`] knows about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryContext {
    /// Consecutive failures of this key, this one included (1 = first).
    pub attempt: u32,
    /// The full-jitter backoff delay drawn for this attempt.
    pub backoff_delay: Duration,
}

/// A controller's logic: reconcile one key, list all keys.
///
/// Implementations may write `async fn reconcile(...)` in their `impl`; the
/// returned future must be `Send` because workers run on the tokio pool.
pub trait Reconciler: Send + Sync + 'static {
    type Key: QueueKey;
    type Error: Retryable + Display + Send + 'static;

    /// Drives the object named by `key` toward its desired state, reading
    /// observed state itself. Must be idempotent.
    fn reconcile(
        &self,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// Every key that should exist, re-read from the store; used at start
    /// and by the periodic resync.
    fn list_keys(&self) -> impl Future<Output = Result<Vec<Self::Key>, Self::Error>> + Send;

    /// Lane for hints and requeues of `key`.
    fn lane(&self, _key: &Self::Key) -> Lane {
        Lane::Normal
    }

    /// What to do after `reconcile` failed.
    fn error_policy(&self, _key: &Self::Key, error: &Self::Error, retry: &RetryContext) -> Action {
        if error.is_retryable() {
            Action::RequeueAfter(retry.backoff_delay)
        } else {
            Action::Done
        }
    }
}

/// Parameters of a [`Runner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// `controller` metric label and the work queue's name.
    pub name: String,
    /// Concurrent reconciles (of distinct keys).
    pub workers: usize,
    /// Period of the full re-list; `None` lists once at start only.
    pub resync_interval: Option<Duration>,
    /// Lane of keys found by a resync: a sweep is a safety net, so by
    /// default it yields to real events and is dropped first under overload.
    pub resync_lane: Lane,
    pub backoff: BackoffConfig,
    pub retry_budget: RetryBudgetConfig,
    pub queue_capacity: usize,
    /// Per-key rate limit of the work queue.
    pub min_interval: Duration,
    /// Seeds the backoff jitter.
    pub seed: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        let queue = QueueConfig::default();
        RunnerConfig {
            name: "controller".to_owned(),
            workers: 4,
            resync_interval: Some(Duration::from_secs(300)),
            resync_lane: Lane::Low,
            backoff: BackoffConfig::default(),
            retry_budget: RetryBudgetConfig::default(),
            queue_capacity: queue.capacity,
            min_interval: queue.min_interval,
            seed: 0,
        }
    }
}

/// Why a [`Runner`] could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    #[error("a runner needs at least one worker")]
    ZeroWorkers,
    #[error("invalid backoff: {0}")]
    Backoff(#[from] BackoffConfigError),
    #[error("invalid work queue: {0}")]
    Queue(#[from] QueueConfigError),
    #[error("a runner must be started inside a tokio runtime")]
    NoRuntime,
}

/// A runner's own task died (not a reconcile: those are caught).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} runner task(s) panicked")]
pub struct ShutdownError(pub usize);

/// Enqueues keys into a runner: the receiving end of watch events.
pub struct Handle<K: QueueKey> {
    queue: WorkQueue<K>,
    lane_of: Arc<dyn Fn(&K) -> Lane + Send + Sync>,
}

impl<K: QueueKey> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Handle {
            queue: self.queue.clone(),
            lane_of: Arc::clone(&self.lane_of),
        }
    }
}

impl<K: QueueKey> fmt::Debug for Handle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("queue", &self.queue)
            .finish()
    }
}

impl<K: QueueKey> Handle<K> {
    /// Enqueues `key` now, in the reconciler's lane for it.
    pub fn enqueue(&self, key: K) -> AddOutcome<K> {
        let lane = (self.lane_of)(&key);
        self.queue.add(key, lane)
    }

    /// Enqueues `key` now in `lane`.
    pub fn enqueue_in(&self, key: K, lane: Lane) -> AddOutcome<K> {
        self.queue.add(key, lane)
    }

    /// Enqueues `key` after `delay`, in the reconciler's lane for it.
    pub fn enqueue_after(&self, key: K, delay: Duration) -> AddOutcome<K> {
        let lane = (self.lane_of)(&key);
        self.queue.add_after(key, lane, delay)
    }

    /// Enqueues every key of `hints` until the stream ends; returns how many
    /// hints it read.
    pub async fn forward<S>(&self, hints: S) -> u64
    where
        S: Stream<Item = K>,
    {
        let mut hints = std::pin::pin!(hints);
        let mut n = 0;
        while let Some(key) = hints.next().await {
            self.enqueue(key);
            n += 1;
        }
        n
    }
}

/// A running controller. Stop it with [`Runner::shutdown`] or
/// [`Runner::drain`]; dropping it stops it without waiting.
pub struct Runner<R: Reconciler> {
    queue: WorkQueue<R::Key>,
    handle: Handle<R::Key>,
    stop_tx: watch::Sender<bool>,
    resyncs_rx: watch::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
    _reconciler: PhantomData<fn() -> R>,
}

impl<R: Reconciler> fmt::Debug for Runner<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("queue", &self.queue)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

struct Worker<R: Reconciler> {
    reconciler: Arc<R>,
    queue: WorkQueue<R::Key>,
    clock: SharedClock,
    name: Arc<str>,
    backoff: Arc<Mutex<Backoff>>,
    budget: Arc<Mutex<RetryBudget<R::Key>>>,
    attempts: Arc<Mutex<HashMap<R::Key, u32>>>,
    metrics: Arc<RunnerMetrics>,
}

impl<R: Reconciler> Runner<R> {
    /// Starts `config.workers` workers and the resync loop on the current
    /// tokio runtime. The first list runs at once.
    pub fn start(
        reconciler: Arc<R>,
        clock: SharedClock,
        config: RunnerConfig,
    ) -> Result<Self, RunnerError> {
        if config.workers == 0 {
            return Err(RunnerError::ZeroWorkers);
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| RunnerError::NoRuntime)?;
        // Separate streams for keys and for re-list retries, so that a
        // failing list does not shift every key's jitter.
        let backoff = Backoff::new(config.backoff, config.seed)?;
        let list_backoff = Backoff::new(config.backoff, config.seed ^ 0x5eed_f00d)?;
        let queue = WorkQueue::new(
            QueueConfig {
                name: config.name.clone(),
                capacity: config.queue_capacity,
                min_interval: config.min_interval,
            },
            Arc::clone(&clock),
        )?;
        let metrics = Arc::new(RunnerMetrics::new(&config.name));
        let lane_reconciler = Arc::clone(&reconciler);
        let handle = Handle {
            queue: queue.clone(),
            lane_of: Arc::new(move |k: &R::Key| lane_reconciler.lane(k)),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (resyncs_tx, resyncs_rx) = watch::channel(0u64);

        let name: Arc<str> = Arc::from(config.name.as_str());
        let backoff = Arc::new(Mutex::new(backoff));
        let budget = Arc::new(Mutex::new(RetryBudget::new(config.retry_budget)));
        let attempts = Arc::new(Mutex::new(HashMap::new()));
        let mut tasks = Vec::with_capacity(config.workers + 1);
        let resync = Resync {
            reconciler: Arc::clone(&reconciler),
            queue: queue.clone(),
            clock: Arc::clone(&clock),
            interval: config.resync_interval,
            lane: config.resync_lane,
            backoff: list_backoff,
            stop: stop_rx,
            resyncs: resyncs_tx,
            metrics: Arc::clone(&metrics),
            name: Arc::clone(&name),
        };
        tasks.push(rt.spawn(resync.run()));
        for _ in 0..config.workers {
            let worker = Worker {
                reconciler: Arc::clone(&reconciler),
                queue: queue.clone(),
                clock: Arc::clone(&clock),
                name: Arc::clone(&name),
                backoff: Arc::clone(&backoff),
                budget: Arc::clone(&budget),
                attempts: Arc::clone(&attempts),
                metrics: Arc::clone(&metrics),
            };
            tasks.push(rt.spawn(worker.run()));
        }
        Ok(Runner {
            queue,
            handle,
            stop_tx,
            resyncs_rx,
            tasks,
            _reconciler: PhantomData,
        })
    }

    /// A handle for enqueueing hints.
    pub fn handle(&self) -> Handle<R::Key> {
        self.handle.clone()
    }

    /// The runner's work queue, for depth and idleness.
    pub fn queue(&self) -> &WorkQueue<R::Key> {
        &self.queue
    }

    /// Completed full re-lists (the initial one included) whose keys have
    /// all been enqueued.
    pub fn resyncs(&self) -> u64 {
        *self.resyncs_rx.borrow()
    }

    /// Resolves once at least `n` re-lists have completed.
    pub async fn wait_for_resyncs(&self, n: u64) {
        let mut rx = self.resyncs_rx.clone();
        // The sender lives in the resync task; if that task is gone no more
        // resyncs can happen and waiting longer would hang.
        let _ = rx.wait_for(|done| *done >= n).await;
    }

    /// Stops: no new hints, resyncs or queued keys are processed; waits for
    /// the reconciles in flight to finish.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        self.stop(false).await
    }

    /// Stops taking hints and resyncs, reconciles every key already
    /// eligible, waits for all of it to finish.
    pub async fn drain(self) -> Result<(), ShutdownError> {
        self.stop(true).await
    }

    async fn stop(mut self, drain: bool) -> Result<(), ShutdownError> {
        self.stop_tx.send_replace(true);
        if drain {
            self.queue.shut_down();
        } else {
            self.queue.shut_down_now();
        }
        let mut panicked = 0;
        for task in std::mem::take(&mut self.tasks) {
            if task.await.is_err() {
                panicked += 1;
            }
        }
        if panicked == 0 {
            Ok(())
        } else {
            Err(ShutdownError(panicked))
        }
    }
}

impl<R: Reconciler> Drop for Runner<R> {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            self.stop_tx.send_replace(true);
            self.queue.shut_down_now();
        }
    }
}

impl<R: Reconciler> Worker<R> {
    async fn run(self) {
        while let Some(guard) = self.queue.get().await {
            self.process(guard).await;
        }
    }

    async fn process(&self, guard: WorkGuard<R::Key>) {
        let key = guard.key().clone();
        let span = tracing::debug_span!("reconcile", controller = %self.name, key = ?key);
        let started = self.clock.now();
        let result = AssertUnwindSafe(self.reconciler.reconcile(&key))
            .catch_unwind()
            .instrument(span)
            .await;
        let seconds = self
            .clock
            .now()
            .saturating_duration_since(started)
            .as_secs_f64();
        match result {
            Ok(Ok(action)) => {
                let outcome = match action {
                    Action::Done => Outcome::Done,
                    Action::RequeueAfter(_) => Outcome::Requeue,
                };
                self.metrics.reconciled(outcome, seconds);
                self.forget(&key);
                if let Action::RequeueAfter(delay) = action {
                    let lane = self.reconciler.lane(&key);
                    self.queue.add_after(key, lane, delay);
                }
            }
            Ok(Err(error)) => {
                let outcome = if error.is_retryable() {
                    Outcome::TransientError
                } else {
                    Outcome::PermanentError
                };
                self.metrics.reconciled(outcome, seconds);
                let retry = self.next_attempt(&key);
                let action = self.reconciler.error_policy(&key, &error, &retry);
                tracing::debug!(
                    controller = %self.name,
                    ?key,
                    %error,
                    attempt = retry.attempt,
                    ?action,
                    "reconcile failed"
                );
                match action {
                    Action::Done => self.forget(&key),
                    Action::RequeueAfter(delay) => self.retry_later(key, delay),
                }
            }
            Err(_panic) => {
                self.metrics.reconciled(Outcome::Panic, seconds);
                let retry = self.next_attempt(&key);
                tracing::error!(
                    controller = %self.name,
                    ?key,
                    attempt = retry.attempt,
                    "reconcile panicked; retrying as a transient error"
                );
                self.retry_later(key, retry.backoff_delay);
            }
        }
        guard.done();
    }

    fn next_attempt(&self, key: &R::Key) -> RetryContext {
        let attempt = {
            let mut attempts = self.attempts.lock();
            let n = attempts.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let backoff_delay = self.backoff.lock().delay(attempt - 1);
        RetryContext {
            attempt,
            backoff_delay,
        }
    }

    fn forget(&self, key: &R::Key) {
        self.attempts.lock().remove(key);
        self.budget.lock().forget(key);
    }

    fn retry_later(&self, key: R::Key, delay: Duration) {
        let decision = self.budget.lock().try_spend(&key, self.clock.now());
        match decision {
            BudgetDecision::Granted { .. } => {
                self.metrics.retried();
                let lane = self.reconciler.lane(&key);
                self.queue.add_after(key, lane, delay);
            }
            BudgetDecision::Exhausted { refill_at } => {
                self.metrics.budget_exhausted();
                let cap = self.backoff.lock().cap();
                tracing::warn!(
                    controller = %self.name,
                    ?key,
                    %refill_at,
                    parked_for = ?cap,
                    "retry budget spent; parking key"
                );
                self.queue.add_after(key, Lane::Low, cap);
            }
        }
    }
}

struct Resync<R: Reconciler> {
    reconciler: Arc<R>,
    queue: WorkQueue<R::Key>,
    clock: SharedClock,
    interval: Option<Duration>,
    lane: Lane,
    backoff: Backoff,
    stop: watch::Receiver<bool>,
    resyncs: watch::Sender<u64>,
    metrics: Arc<RunnerMetrics>,
    name: Arc<str>,
}

impl<R: Reconciler> Resync<R> {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            if *self.stop.borrow() {
                return;
            }
            // The period is anchored at the start of each list so that slow
            // lists do not stretch it.
            let started = self.clock.now();
            let listed = AssertUnwindSafe(self.reconciler.list_keys())
                .catch_unwind()
                .await;
            let next = match listed {
                Ok(Ok(keys)) => {
                    failures = 0;
                    let n = keys.len();
                    for key in keys {
                        self.queue.add(key, self.lane);
                    }
                    self.metrics.resynced(true);
                    self.resyncs.send_modify(|done| *done += 1);
                    tracing::debug!(controller = %self.name, keys = n, "resync listed keys");
                    self.interval.map(|i| started.saturating_add(i))
                }
                Ok(Err(error)) => {
                    self.metrics.resynced(false);
                    failures = failures.saturating_add(1);
                    tracing::warn!(controller = %self.name, %error, failures, "resync list failed");
                    Some(
                        self.clock
                            .now()
                            .saturating_add(self.backoff.delay(failures - 1)),
                    )
                }
                Err(_panic) => {
                    self.metrics.resynced(false);
                    failures = failures.saturating_add(1);
                    tracing::error!(controller = %self.name, failures, "resync list panicked");
                    Some(
                        self.clock
                            .now()
                            .saturating_add(self.backoff.delay(failures - 1)),
                    )
                }
            };
            let stopped = self.stop.wait_for(|stop| *stop);
            match next {
                Some(deadline) => {
                    let sleep = self.clock.sleep_until(deadline);
                    tokio::select! {
                        _ = stopped => return,
                        _ = sleep => {}
                    }
                }
                None => {
                    let _ = stopped.await;
                    return;
                }
            }
        }
    }
}
