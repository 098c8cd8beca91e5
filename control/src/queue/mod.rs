//! The per-key work queue.
//!
//! Owns the hand-off of keys to workers with these guarantees:
//!
//! - **dedup**: a key is pending at most once, however many adds arrive;
//!   merging keeps the highest lane and the earliest eligibility;
//! - **delayed adds**: [`WorkQueue::add_after`] makes a key eligible later,
//!   through the [`Clock`]; an earlier add wins over a later delayed one;
//! - **per-key rate limit**: a key starts processing at most once per
//!   `min_interval` (later adds are held back, not dropped);
//! - **priority lanes**: an eligible key of a higher [`Lane`] is always handed
//!   out before one of a lower lane; within a lane, first eligible first out;
//! - **bound**: at most `capacity` keys wait (pending plus dirty reruns). When
//!   full, an add evicts the last-in-line entry of the lowest non-empty lane
//!   below its own; with nothing lower to evict it is refused. Both count as
//!   drops. Dropped keys are recovered by the runner's periodic resync;
//! - **exclusive processing**: [`WorkQueue::get`] hands a key out as a
//!   [`WorkGuard`]; until the guard is done or dropped no one else gets that
//!   key. A key added meanwhile is marked dirty and handed out exactly once
//!   more after done;
//! - **shutdown**: [`WorkQueue::shut_down`] refuses new adds, lets getters
//!   drain what is already eligible, then makes them return `None`;
//!   [`WorkQueue::shut_down_now`] drops everything not in progress.
//!
//! Must never: hand a key to two holders at once, let a dirty key run more
//! than once per done, read time other than through its clock, or hold its
//! lock across an await.

mod lane;
mod state;

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

pub use lane::Lane;
pub use state::{AddOutcome, KeyState};

use crate::clock::{Instant, SharedClock};
use crate::telemetry::QueueMetrics;
use state::{QueueState, ShutdownMode};

/// What a work queue key must be. Keys are small ids (job ids, node ids,
/// `(shard, task)` tuples), cloned freely.
pub trait QueueKey: Ord + Clone + Hash + Debug + Send + Sync + 'static {}

impl<T: Ord + Clone + Hash + Debug + Send + Sync + 'static> QueueKey for T {}

/// Parameters of a [`WorkQueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Value of the `queue` metric label.
    pub name: String,
    /// Most keys that may wait at once.
    pub capacity: usize,
    /// Least time between two processing starts of one key; zero disables
    /// the limit.
    pub min_interval: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: "default".to_owned(),
            capacity: 100_000,
            min_interval: Duration::ZERO,
        }
    }
}

/// A [`QueueConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueConfigError {
    #[error("work queue capacity must be at least 1")]
    ZeroCapacity,
}

/// A per-key work queue; cloning gives another handle to the same queue.
pub struct WorkQueue<K: QueueKey> {
    shared: Arc<Shared<K>>,
}

struct Shared<K> {
    name: String,
    clock: SharedClock,
    state: Mutex<QueueState<K>>,
    // Getters wait here for a key to become eligible or the earliest
    // deadline to move.
    wake: Notify,
    // `idle()` waits here.
    idle: Notify,
    metrics: QueueMetrics,
}

enum Wake {
    Nobody,
    OneGetter,
    AllGetters,
}

impl<K: QueueKey> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        WorkQueue {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: QueueKey> Debug for WorkQueue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.state.lock();
        f.debug_struct("WorkQueue")
            .field("name", &self.shared.name)
            .field("len", &st.len())
            .field("processing", &st.processing())
            .field("shut_down", &st.is_shut_down())
            .finish()
    }
}

impl<K: QueueKey> WorkQueue<K> {
    pub fn new(config: QueueConfig, clock: SharedClock) -> Result<Self, QueueConfigError> {
        if config.capacity == 0 {
            return Err(QueueConfigError::ZeroCapacity);
        }
        let metrics = QueueMetrics::new(&config.name);
        let queue = WorkQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(QueueState::new(config.capacity, config.min_interval)),
                name: config.name,
                clock,
                wake: Notify::new(),
                idle: Notify::new(),
                metrics,
            }),
        };
        queue.publish(&queue.shared.state.lock());
        Ok(queue)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn clock(&self) -> &SharedClock {
        &self.shared.clock
    }

    /// Makes `key` eligible now in `lane`.
    pub fn add(&self, key: K, lane: Lane) -> AddOutcome<K> {
        self.insert(key, lane, None)
    }

    /// Makes `key` eligible `delay` from now in `lane`, unless it is already
    /// eligible earlier.
    pub fn add_after(&self, key: K, lane: Lane, delay: Duration) -> AddOutcome<K> {
        self.insert(key, lane, Some(Target::After(delay)))
    }

    /// Makes `key` eligible at `at` in `lane`, unless it is already eligible
    /// earlier.
    pub fn add_at(&self, key: K, lane: Lane, at: Instant) -> AddOutcome<K> {
        self.insert(key, lane, Some(Target::At(at)))
    }

    fn insert(&self, key: K, lane: Lane, target: Option<Target>) -> AddOutcome<K> {
        let (outcome, wake) = {
            let mut st = self.shared.state.lock();
            let now = self.shared.clock.now();
            let at = match target {
                None => now,
                Some(Target::After(d)) => now.saturating_add(d),
                Some(Target::At(at)) => at,
            };
            let earliest_before = st.next_eligible_at();
            let added = st.add(key, lane, at);
            self.shared.metrics.add(lane);
            if let Some(dropped) = added.dropped_lane {
                self.shared.metrics.drop_in(dropped);
                tracing::debug!(queue = %self.shared.name, lane = %dropped, "work queue full, dropped an entry");
            }
            self.publish(&st);
            let wake = match added.pending_at {
                Some(at) if at <= now => Wake::OneGetter,
                Some(at) if earliest_before.is_none_or(|e| at < e) => Wake::AllGetters,
                _ => Wake::Nobody,
            };
            (added.outcome, wake)
        };
        self.wake(wake);
        outcome
    }

    /// Waits for an eligible key and hands it out. Returns `None` once the
    /// queue is shut down and has nothing left to hand out.
    ///
    /// Cancel-safe: dropping the future takes nothing off the queue.
    pub async fn get(&self) -> Option<WorkGuard<K>> {
        loop {
            let notified = self.shared.wake.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the state is read, so an add between the
            // read and the await still wakes us.
            notified.as_mut().enable();
            let deadline = {
                let mut st = self.shared.state.lock();
                if let Some(guard) = self.pop_locked(&mut st) {
                    return Some(guard);
                }
                if st.is_shut_down() && st.lanes_empty() {
                    return None;
                }
                st.next_eligible_at()
            };
            match deadline {
                Some(at) => {
                    let sleep = self.shared.clock.sleep_until(at);
                    futures::future::select(notified, sleep).await;
                }
                None => notified.await,
            }
        }
    }

    /// Hands out an eligible key if there is one, without waiting.
    pub fn try_get(&self) -> Option<WorkGuard<K>> {
        let mut st = self.shared.state.lock();
        self.pop_locked(&mut st)
    }

    fn pop_locked(&self, st: &mut MutexGuard<'_, QueueState<K>>) -> Option<WorkGuard<K>> {
        let now = self.shared.clock.now();
        let popped = st.pop_ready(now)?;
        let waited = now.saturating_duration_since(popped.eligible_at);
        self.shared
            .metrics
            .waited(popped.lane, waited.as_secs_f64());
        self.publish(st);
        Some(WorkGuard {
            queue: self.clone(),
            key: popped.key,
            lane: popped.lane,
            claim: popped.claim,
        })
    }

    fn finish(&self, key: &K, claim: u64) {
        let (wake, idle) = {
            let mut st = self.shared.state.lock();
            let now = self.shared.clock.now();
            let earliest_before = st.next_eligible_at();
            let requeued = st.done(key, claim, now);
            self.publish(&st);
            let wake = match requeued {
                Some(at) if at <= now => Wake::OneGetter,
                Some(at) if earliest_before.is_none_or(|e| at < e) => Wake::AllGetters,
                // Getters of a draining queue may be waiting on this key's
                // rerun that will now never come; let them see that.
                None if st.is_shut_down() => Wake::AllGetters,
                _ => Wake::Nobody,
            };
            (wake, st.is_idle(now))
        };
        self.wake(wake);
        if idle {
            self.shared.idle.notify_waiters();
        }
    }

    /// Refuses new adds; getters hand out what is eligible now, then return
    /// `None`. Entries not yet eligible are dropped (counted as discarded).
    /// Keys being processed finish normally; a dirty rerun still runs if it
    /// is eligible when its key is done.
    pub fn shut_down(&self) {
        self.stop(ShutdownMode::Drain);
    }

    /// Refuses new adds and drops every entry not being processed; getters
    /// return `None` at once. Keys being processed finish normally, without
    /// reruns.
    pub fn shut_down_now(&self) {
        self.stop(ShutdownMode::Discard);
    }

    fn stop(&self, mode: ShutdownMode) {
        let idle = {
            let mut st = self.shared.state.lock();
            let now = self.shared.clock.now();
            st.shut_down(mode, now);
            self.publish(&st);
            st.is_idle(now)
        };
        self.wake(Wake::AllGetters);
        if idle {
            self.shared.idle.notify_waiters();
        }
    }

    pub fn is_shut_down(&self) -> bool {
        self.shared.state.lock().is_shut_down()
    }

    /// Resolves once nothing is being processed and nothing is eligible:
    /// everything that could run at the current time has run.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.state.lock();
                if st.is_idle(self.shared.clock.now()) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Keys waiting: pending (eligible or not) plus dirty reruns.
    pub fn len(&self) -> usize {
        self.shared.state.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`WorkQueue::len`] per lane; every lane is present.
    pub fn len_by_lane(&self) -> BTreeMap<Lane, usize> {
        let st = self.shared.state.lock();
        Lane::ALL.into_iter().map(|l| (l, st.lane_len(l))).collect()
    }

    /// Pending keys eligible now.
    pub fn ready_len(&self) -> usize {
        let st = self.shared.state.lock();
        st.ready_len(self.shared.clock.now())
    }

    /// Keys handed out and not yet done.
    pub fn processing(&self) -> usize {
        self.shared.state.lock().processing()
    }

    /// Entries dropped because the queue was full, all lanes.
    pub fn drops(&self) -> u64 {
        let st = self.shared.state.lock();
        Lane::ALL.into_iter().map(|l| st.drops(l)).sum()
    }

    /// Drops per lane of the dropped entry; every lane is present.
    pub fn drops_by_lane(&self) -> BTreeMap<Lane, u64> {
        let st = self.shared.state.lock();
        Lane::ALL.into_iter().map(|l| (l, st.drops(l))).collect()
    }

    /// Entries dropped by shutdown.
    pub fn discarded(&self) -> u64 {
        self.shared.state.lock().discarded()
    }

    /// When the next pending key becomes eligible (maybe already past).
    pub fn next_eligible_at(&self) -> Option<Instant> {
        self.shared.state.lock().next_eligible_at()
    }

    pub fn key_state(&self, key: &K) -> Option<KeyState> {
        self.shared.state.lock().key_state(key)
    }

    fn publish(&self, st: &QueueState<K>) {
        for lane in Lane::ALL {
            self.shared.metrics.set_depth(lane, st.lane_len(lane));
        }
        self.shared.metrics.set_processing(st.processing());
    }

    fn wake(&self, wake: Wake) {
        match wake {
            Wake::Nobody => {}
            Wake::OneGetter => self.shared.wake.notify_one(),
            Wake::AllGetters => self.shared.wake.notify_waiters(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    After(Duration),
    At(Instant),
}

/// Exclusive hold on a key handed out by a [`WorkQueue`]. The key stays
/// "processing" until [`WorkGuard::done`] or drop.
#[must_use = "dropping the guard ends processing of the key at once"]
pub struct WorkGuard<K: QueueKey> {
    queue: WorkQueue<K>,
    key: K,
    lane: Lane,
    claim: u64,
}

impl<K: QueueKey> WorkGuard<K> {
    pub fn key(&self) -> &K {
        &self.key
    }

    /// The lane the key was handed out from.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// Ends processing; a dirty key becomes pending again.
    pub fn done(self) {
        drop(self);
    }
}

impl<K: QueueKey> Drop for WorkGuard<K> {
    fn drop(&mut self) {
        self.queue.finish(&self.key, self.claim);
    }
}

impl<K: QueueKey> Debug for WorkGuard<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkGuard")
            .field("key", &self.key)
            .field("lane", &self.lane)
            .finish()
    }
}
