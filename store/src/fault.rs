//! Fault injection: a backend wrapper that makes commits fail the ways
//! FoundationDB's can, for the chaos tests and the simulation.
//!
//! Owns the choice, at each commit, of whether to fail it and how:
//! `not_committed` (nothing applied), `commit_unknown_result` before applying
//! (nothing applied) or after applying (everything applied), plus added commit
//! latency; the seeded random source that makes a run replay; counters of what
//! it injected, of the reads that reached it and of the races the inner
//! backend lost on its own; and switching faults at run time.
//!
//! It must never corrupt data or apply half a transaction: a transaction is
//! either committed whole by the inner backend or dropped whole, so it rolls
//! back. It must never touch reads, and never report success for a commit the
//! inner backend refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::backend::{
    Backend, BackendTx, CommitInfo, Mutation, RangeChunk, RangeRequest, TxOptions, WatchFuture,
};
use crate::error::{Result, StoreError};

/// Which faults to inject, and how often.
///
/// The three probabilities are drawn from one uniform number per commit, in
/// the order `not_committed`, `unknown_before`, `unknown_after`, so each is the
/// exact fraction of commits that get that fault as long as they add up to at
/// most 1 (beyond that, the later kinds get what is left). Values outside
/// `[0, 1]` are clamped.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultConfig {
    /// Fraction of commits failed with `NotCommitted`, nothing applied.
    pub not_committed: f64,
    /// Fraction of commits failed with `CommitUnknownResult`, nothing applied.
    pub unknown_before: f64,
    /// Fraction of commits applied and then reported as `CommitUnknownResult`.
    pub unknown_after: f64,
    /// Delay added before every commit.
    pub latency: Duration,
    /// Upper bound of a uniform random delay added on top of `latency`.
    pub jitter: Duration,
}

impl FaultConfig {
    /// No faults and no latency (the same as `Default`).
    pub fn none() -> Self {
        FaultConfig::default()
    }

    /// Fails `fraction` of commits, split evenly between the three kinds.
    pub fn mixed(fraction: f64) -> Self {
        let each = fraction.clamp(0.0, 1.0) / 3.0;
        FaultConfig {
            not_committed: each,
            unknown_before: each,
            unknown_after: each,
            ..FaultConfig::default()
        }
    }
}

/// What the wrapper did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Commits that reached the wrapper.
    pub commits: u64,
    /// Commits failed with `NotCommitted` without applying.
    pub not_committed: u64,
    /// Commits failed with `CommitUnknownResult` without applying.
    pub unknown_before: u64,
    /// Commits applied and then reported as `CommitUnknownResult`.
    pub unknown_after: u64,
    /// Commits that were delayed.
    pub delayed: u64,
    /// Reads that reached the wrapper: each `get`, `get_many` and
    /// `get_range` of a transaction (keys a transaction had read before are
    /// answered above the backend and never get here). On SQLite each is
    /// one round trip to the store's thread.
    pub reads: u64,
    /// Races the inner backend lost on its own: a read or a commit it
    /// refused with `NotCommitted` because another writer committed first
    /// (on SQLite, any commit since the transaction's first read). Not a
    /// fault of this wrapper, and not among [`FaultStats::faults`].
    pub lost_races: u64,
}

impl FaultStats {
    /// Every fault injected, of any kind (delays excluded).
    pub fn faults(&self) -> u64 {
        self.not_committed + self.unknown_before + self.unknown_after
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    NotCommitted,
    UnknownBefore,
    UnknownAfter,
}

struct State {
    config: FaultConfig,
    rng: SmallRng,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    not_committed: AtomicU64,
    unknown_before: AtomicU64,
    unknown_after: AtomicU64,
    delayed: AtomicU64,
    reads: AtomicU64,
    lost_races: AtomicU64,
}

struct Shared {
    state: Mutex<State>,
    counters: Counters,
}

impl Shared {
    /// Decides one commit's fate. Both draws happen under one lock so that the
    /// sequence of decisions depends only on the seed and the commit order.
    fn draw(&self) -> (Fault, Duration) {
        let mut state = self.state.lock();
        let config = state.config;
        let delay = if config.jitter.is_zero() {
            config.latency
        } else {
            let nanos = config.jitter.as_nanos().min(u64::MAX as u128) as u64;
            config.latency + Duration::from_nanos(state.rng.random_range(0..=nanos))
        };
        let nc = config.not_committed.clamp(0.0, 1.0);
        let ub = config.unknown_before.clamp(0.0, 1.0);
        let ua = config.unknown_after.clamp(0.0, 1.0);
        if nc + ub + ua <= 0.0 {
            return (Fault::None, delay);
        }
        let roll: f64 = state.rng.random();
        let fault = if roll < nc {
            Fault::NotCommitted
        } else if roll < nc + ub {
            Fault::UnknownBefore
        } else if roll < nc + ub + ua {
            Fault::UnknownAfter
        } else {
            Fault::None
        };
        (fault, delay)
    }
}

/// A backend that injects commit faults and latency into another backend,
/// and counts the commits and reads that reach it ([`FaultStats`]).
///
/// Keep an `Arc<FaultyBackend>` to read [`FaultyBackend::stats`] or change the
/// faults with [`FaultyBackend::set_config`] while a `Database` uses it.
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner.name())
            .field("config", &self.config())
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultyBackend {
    /// Wraps `inner`. The same seed, config and commit order replay the same
    /// faults.
    pub fn new(inner: Arc<dyn Backend>, config: FaultConfig, seed: u64) -> Self {
        FaultyBackend {
            inner,
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    config,
                    rng: SmallRng::seed_from_u64(seed),
                }),
                counters: Counters::default(),
            }),
        }
    }

    /// The faults in force.
    pub fn config(&self) -> FaultConfig {
        self.shared.state.lock().config
    }

    /// Replaces the faults for every later commit, including those of
    /// transactions already open (a chaos test's heal phase).
    pub fn set_config(&self, config: FaultConfig) {
        self.shared.state.lock().config = config;
    }

    /// What was injected so far.
    pub fn stats(&self) -> FaultStats {
        let c = &self.shared.counters;
        FaultStats {
            commits: c.commits.load(Ordering::Relaxed),
            not_committed: c.not_committed.load(Ordering::Relaxed),
            unknown_before: c.unknown_before.load(Ordering::Relaxed),
            unknown_after: c.unknown_after.load(Ordering::Relaxed),
            delayed: c.delayed.load(Ordering::Relaxed),
            reads: c.reads.load(Ordering::Relaxed),
            lost_races: c.lost_races.load(Ordering::Relaxed),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> Arc<dyn Backend> {
        self.inner.clone()
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    async fn begin(&self, options: TxOptions) -> Result<Box<dyn BackendTx>> {
        let inner = self.inner.begin(options).await?;
        Ok(Box::new(FaultyTx {
            inner: Mutex::new(Some(Arc::from(inner))),
            shared: self.shared.clone(),
        }))
    }

    fn name(&self) -> &'static str {
        "faulty"
    }
}

/// A transaction of the inner backend, intercepted at commit.
struct FaultyTx {
    /// Shared so a read can run without holding the lock across its await;
    /// taken out (and so finished) at commit. Dropping the last reference to
    /// an uncommitted inner transaction rolls it back.
    inner: Mutex<Option<Arc<dyn BackendTx>>>,
    shared: Arc<Shared>,
}

impl FaultyTx {
    fn current(&self) -> Result<Arc<dyn BackendTx>> {
        self.inner
            .lock()
            .clone()
            .ok_or(StoreError::TransactionFinished)
    }

    fn counted_read(&self) -> Result<Arc<dyn BackendTx>> {
        let inner = self.current()?;
        self.shared.counters.reads.fetch_add(1, Ordering::Relaxed);
        Ok(inner)
    }

    /// Passes the inner backend's answer on, counting a race it lost (a
    /// read that flushed writes can lose one as a commit does).
    fn raced<T>(&self, result: Result<T>) -> Result<T> {
        if matches!(result, Err(StoreError::NotCommitted)) {
            self.shared
                .counters
                .lost_races
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[async_trait]
impl BackendTx for FaultyTx {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>> {
        let result = self.counted_read()?.get(key, snapshot).await;
        self.raced(result)
    }

    async fn get_many(&self, keys: &[Vec<u8>], snapshot: bool) -> Result<Vec<Option<Vec<u8>>>> {
        let result = self.counted_read()?.get_many(keys, snapshot).await;
        self.raced(result)
    }

    async fn get_range(&self, request: &RangeRequest) -> Result<RangeChunk> {
        let result = self.counted_read()?.get_range(request).await;
        self.raced(result)
    }

    fn mutate(&self, mutation: Mutation) {
        if let Some(inner) = self.inner.lock().as_ref() {
            inner.mutate(mutation);
        }
    }

    fn request_versionstamp(&self) {
        if let Some(inner) = self.inner.lock().as_ref() {
            inner.request_versionstamp();
        }
    }

    fn watch(&self, key: &[u8]) -> WatchFuture {
        match self.inner.lock().as_ref() {
            Some(inner) => inner.watch(key),
            None => Box::pin(futures::future::ready(Err(StoreError::TransactionFinished))),
        }
    }

    async fn commit(&self) -> Result<CommitInfo> {
        let inner = self
            .inner
            .lock()
            .take()
            .ok_or(StoreError::TransactionFinished)?;
        let counters = &self.shared.counters;
        counters.commits.fetch_add(1, Ordering::Relaxed);
        let (fault, delay) = self.shared.draw();
        if !delay.is_zero() {
            counters.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
        }
        match fault {
            Fault::None => {
                let result = inner.commit().await;
                self.raced(result)
            }
            Fault::NotCommitted => {
                drop(inner);
                counters.not_committed.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::NotCommitted)
            }
            Fault::UnknownBefore => {
                drop(inner);
                counters.unknown_before.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::CommitUnknownResult)
            }
            Fault::UnknownAfter => {
                // A commit the inner backend refused was not applied; its own
                // error is the truth and is returned unchanged.
                let result = inner.commit().await;
                self.raced(result)?;
                counters.unknown_after.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::CommitUnknownResult)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::{Database, Once};
    use crate::sqlite::{SqliteBackend, SqliteOptions};

    async fn sqlite() -> Arc<dyn Backend> {
        Arc::new(
            SqliteBackend::open_ephemeral(SqliteOptions::default())
                .await
                .unwrap(),
        )
    }

    fn faulty(inner: &Arc<dyn Backend>, config: FaultConfig, seed: u64) -> Arc<FaultyBackend> {
        Arc::new(FaultyBackend::new(inner.clone(), config, seed))
    }

    async fn read(db: &Database, key: &[u8]) -> Option<Vec<u8>> {
        db.begin().await.unwrap().get(key).await.unwrap()
    }

    /// Writes `key` through `db` in one transaction and commits it once.
    async fn write_once(db: &Database, key: &[u8]) -> Result<CommitInfo> {
        let tx = db.begin().await?;
        tx.set(key, b"v")?;
        tx.commit().await
    }

    #[tokio::test]
    async fn a_race_the_inner_backend_loses_is_counted_apart_from_injected_faults() {
        let inner = sqlite().await;
        let faulty = faulty(&inner, FaultConfig::none(), 7);
        let db = Database::new(faulty.clone());

        // The first read opens the snapshot; another writer commits after it.
        let slow = db.begin().await.unwrap();
        assert_eq!(slow.get(b"k").await.unwrap(), None);
        write_once(&db, b"other").await.unwrap();
        slow.set(b"k", b"v").unwrap();
        let err = slow.commit().await.unwrap_err();

        assert!(matches!(err, StoreError::NotCommitted), "{err:?}");
        let stats = faulty.stats();
        assert_eq!(stats.lost_races, 1);
        assert_eq!(stats.faults(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn locked_read_then_write_transactions_side_by_side_never_lose_a_race() {
        const WRITERS: u64 = 4;
        const EACH: u64 = 25;
        let inner = sqlite().await;
        let faulty = faulty(&inner, FaultConfig::none(), 8);
        let db = Database::new(faulty.clone());

        // Each attempt reads the counter and writes it back one higher, so
        // every commit lands between another writer's read and commit
        // unless the lock is taken before the read.
        let attempts = Arc::new(AtomicU64::new(0));
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..WRITERS {
            let (db, attempts) = (db.clone(), attempts.clone());
            writers.spawn(async move {
                for _ in 0..EACH {
                    db.run_locked(|tx, _| {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        async move {
                            let n = tx
                                .get(b"counter")
                                .await?
                                .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                            tx.set(b"counter", &(n + 1).to_be_bytes())?;
                            Ok::<_, StoreError>(())
                        }
                    })
                    .await
                    .unwrap();
                }
            });
        }
        writers.join_all().await;

        let total = read(&db, b"counter").await.unwrap();
        assert_eq!(
            u64::from_be_bytes(total.try_into().unwrap()),
            WRITERS * EACH
        );
        assert_eq!(faulty.stats().lost_races, 0);
        assert_eq!(attempts.load(Ordering::Relaxed), WRITERS * EACH);
    }

    #[tokio::test]
    async fn a_commit_failed_after_applying_is_applied_and_reports_an_unknown_result() {
        let inner = sqlite().await;
        let config = FaultConfig {
            unknown_after: 1.0,
            ..FaultConfig::default()
        };
        let faulty = faulty(&inner, config, 1);
        let db = Database::new(faulty.clone());

        let err = write_once(&db, b"k").await.unwrap_err();

        assert!(matches!(err, StoreError::CommitUnknownResult), "{err:?}");
        assert_eq!(read(&Database::new(inner), b"k").await, Some(b"v".to_vec()));
        assert_eq!(faulty.stats().unknown_after, 1);
    }

    #[tokio::test]
    async fn a_commit_failed_as_not_committed_applies_nothing() {
        let inner = sqlite().await;
        let config = FaultConfig {
            not_committed: 1.0,
            ..FaultConfig::default()
        };
        let faulty = faulty(&inner, config, 2);
        let db = Database::new(faulty.clone());

        let err = write_once(&db, b"k").await.unwrap_err();

        assert!(matches!(err, StoreError::NotCommitted), "{err:?}");
        assert_eq!(read(&Database::new(inner), b"k").await, None);
        assert_eq!(faulty.stats().not_committed, 1);
    }

    #[tokio::test]
    async fn a_commit_failed_as_unknown_before_applying_applies_nothing() {
        let inner = sqlite().await;
        let config = FaultConfig {
            unknown_before: 1.0,
            ..FaultConfig::default()
        };
        let faulty = faulty(&inner, config, 3);
        let db = Database::new(faulty.clone());

        let err = write_once(&db, b"k").await.unwrap_err();

        assert!(matches!(err, StoreError::CommitUnknownResult), "{err:?}");
        assert_eq!(read(&Database::new(inner), b"k").await, None);
        assert_eq!(faulty.stats().unknown_before, 1);
    }

    #[tokio::test]
    async fn run_once_counts_exactly_500_increments_through_a_30_percent_fault_mix() {
        let inner = sqlite().await;
        let faulty = faulty(&inner, FaultConfig::mixed(0.3), 42);
        let db = Database::new(faulty.clone());

        let mut already_applied = 0;
        for i in 0u32..500 {
            let marker = [b"marker/".as_slice(), &i.to_be_bytes()].concat();
            let outcome = db
                .run_once(&marker, |tx| async move {
                    tx.add_i64(b"counter", 1)?;
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
            if outcome == Once::AlreadyApplied {
                already_applied += 1;
            }
        }

        let counter = read(&Database::new(inner), b"counter").await.unwrap();
        assert_eq!(i64::from_le_bytes(counter.try_into().unwrap()), 500);
        let stats = faulty.stats();
        assert!(stats.not_committed > 0, "{stats:?}");
        assert!(stats.unknown_before > 0, "{stats:?}");
        assert!(stats.unknown_after > 0, "{stats:?}");
        // Every applied-then-unknown commit of an increment is found by its
        // retry; the retry's own (read-only) commit may draw faults too.
        assert!(already_applied > 0, "{stats:?}");
        assert!(already_applied <= stats.unknown_after, "{stats:?}");
    }

    #[tokio::test]
    async fn the_same_seed_replays_the_same_faults() {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let inner = sqlite().await;
            let db = Database::new(faulty(&inner, FaultConfig::mixed(0.5), 9));
            let mut outcomes = Vec::new();
            for i in 0u32..100 {
                let outcome = write_once(&db, &i.to_be_bytes()).await;
                outcomes.push(outcome.map_err(|e| e.to_string()));
            }
            runs.push(outcomes);
        }
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].iter().any(|o| o.is_err()));
    }

    #[tokio::test]
    async fn switching_faults_off_lets_the_next_commit_through() {
        let inner = sqlite().await;
        let config = FaultConfig {
            not_committed: 1.0,
            ..FaultConfig::default()
        };
        let faulty = faulty(&inner, config, 4);
        let db = Database::new(faulty.clone());
        assert!(write_once(&db, b"before").await.is_err());

        faulty.set_config(FaultConfig::none());

        write_once(&db, b"after").await.unwrap();
        assert_eq!(faulty.config(), FaultConfig::none());
        assert_eq!(
            faulty.stats(),
            FaultStats {
                commits: 2,
                not_committed: 1,
                ..FaultStats::default()
            }
        );
    }

    #[tokio::test]
    async fn latency_delays_every_commit_without_failing_it() {
        let inner = sqlite().await;
        let config = FaultConfig {
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            ..FaultConfig::default()
        };
        let faulty = faulty(&inner, config, 5);
        let db = Database::new(faulty.clone());

        for key in [b"a", b"b", b"c"] {
            write_once(&db, key).await.unwrap();
        }

        let stats = faulty.stats();
        assert_eq!((stats.commits, stats.delayed, stats.faults()), (3, 3, 0));
    }

    #[tokio::test]
    async fn a_watch_in_a_transaction_failed_before_applying_does_not_stay_pending_forever() {
        let inner = sqlite().await;
        let config = FaultConfig {
            not_committed: 1.0,
            ..FaultConfig::default()
        };
        let db = Database::new(faulty(&inner, config, 6));
        let tx = db.begin().await.unwrap();
        tx.set(b"k", b"v").unwrap();
        let watch = tx.watch(b"k").unwrap();

        assert!(tx.commit().await.is_err());

        // The bound only turns a hang into a failure; the watch resolves at once.
        let outcome = tokio::time::timeout(Duration::from_secs(10), watch).await;
        assert!(matches!(outcome, Ok(Err(_))), "{outcome:?}");
    }
}
