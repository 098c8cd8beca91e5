//! The reconcile runner, driven by a manual clock and observed through a
//! scripted reconciler.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use meridian_control::backoff::{Backoff, BackoffConfig};
use meridian_control::clock::{Clock, Instant, ManualClock};
use meridian_control::queue::{KeyState, Lane};
use meridian_control::reconcile::{
    Action, Reconciler, RetryContext, Runner, RunnerConfig, RunnerError,
};
use meridian_control::retry::{RetryBudgetConfig, Retryable};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TestError {
    #[error("transient failure")]
    Transient,
    #[error("permanent failure")]
    Permanent,
}

impl Retryable for TestError {
    fn is_retryable(&self) -> bool {
        matches!(self, TestError::Transient)
    }
}

/// One scripted reconcile result.
#[derive(Debug, Clone)]
enum Step {
    Ok(Action),
    Err(TestError),
    Panic,
    /// Waits for the gate to open, then Ok(Done).
    Gated,
}

/// A reconciler that plays a script per key (Ok(Done) once the script is
/// used up) and records what happened.
struct Scripted {
    clock: ManualClock,
    script: Mutex<BTreeMap<&'static str, VecDeque<Step>>>,
    keys: Mutex<Vec<&'static str>>,
    list_failures: AtomicUsize,
    calls: Mutex<Vec<(&'static str, Instant)>>,
    contexts: Mutex<Vec<(&'static str, RetryContext)>>,
    lists: AtomicUsize,
    gate: Notify,
    finished: AtomicUsize,
    started: mpsc::UnboundedSender<&'static str>,
}

impl Scripted {
    fn new(clock: &ManualClock) -> (Arc<Self>, mpsc::UnboundedReceiver<&'static str>) {
        let (started, rx) = mpsc::unbounded_channel();
        let r = Scripted {
            clock: clock.clone(),
            script: Mutex::new(BTreeMap::new()),
            keys: Mutex::new(Vec::new()),
            list_failures: AtomicUsize::new(0),
            calls: Mutex::new(Vec::new()),
            contexts: Mutex::new(Vec::new()),
            lists: AtomicUsize::new(0),
            gate: Notify::new(),
            finished: AtomicUsize::new(0),
            started,
        };
        (Arc::new(r), rx)
    }

    fn script(&self, key: &'static str, steps: Vec<Step>) {
        self.script.lock().entry(key).or_default().extend(steps);
    }

    fn calls_for(&self, key: &str) -> Vec<Instant> {
        self.calls
            .lock()
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, t)| *t)
            .collect()
    }
}

impl Reconciler for Scripted {
    type Key = &'static str;
    type Error = TestError;

    async fn reconcile(&self, key: &&'static str) -> Result<Action, TestError> {
        self.calls.lock().push((*key, self.clock.now()));
        let _ = self.started.send(*key);
        let step = self
            .script
            .lock()
            .get_mut(key)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Step::Ok(Action::Done));
        let result = match step {
            Step::Ok(a) => Ok(a),
            Step::Err(e) => Err(e),
            Step::Panic => panic!("scripted panic for {key}"),
            Step::Gated => {
                self.gate.notified().await;
                Ok(Action::Done)
            }
        };
        self.finished.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn list_keys(&self) -> Result<Vec<&'static str>, TestError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .list_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(TestError::Transient);
        }
        Ok(self.keys.lock().clone())
    }

    fn lane(&self, key: &&'static str) -> Lane {
        if key.starts_with("crit") {
            Lane::Critical
        } else {
            Lane::Normal
        }
    }

    fn error_policy(&self, key: &&'static str, error: &TestError, retry: &RetryContext) -> Action {
        self.contexts.lock().push((*key, *retry));
        if error.is_retryable() {
            Action::RequeueAfter(retry.backoff_delay)
        } else {
            Action::Done
        }
    }
}

const BACKOFF: BackoffConfig = BackoffConfig {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
};

fn config(workers: usize) -> RunnerConfig {
    RunnerConfig {
        name: "test".to_owned(),
        workers,
        resync_interval: None,
        backoff: BACKOFF,
        seed: 7,
        ..RunnerConfig::default()
    }
}

fn start(r: &Arc<Scripted>, clock: &ManualClock, config: RunnerConfig) -> Runner<Scripted> {
    Runner::start(Arc::clone(r), clock.shared(), config).expect("runner starts")
}

#[tokio::test]
async fn a_transiently_failing_reconcile_is_retried_after_full_jitter_backoff_on_the_clock() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.script("a", vec![Step::Err(TestError::Transient); 3]);
    let runner = start(&r, &clock, config(1));
    runner.wait_for_resyncs(1).await;
    runner.handle().enqueue("a");

    let mut expected = Backoff::new(BACKOFF, 7).expect("valid");
    for retry in 0..3u32 {
        runner.queue().idle().await;
        assert_eq!(r.calls_for("a").len(), retry as usize + 1);
        let delay = expected.delay(retry);
        assert!(delay <= BACKOFF.ceiling(retry));
        let due = clock.now() + delay;
        assert_eq!(
            runner.queue().next_eligible_at(),
            Some(due),
            "retry {retry}"
        );
        // Just before the delay is up nothing runs.
        clock
            .advance_to(Instant::from_epoch(
                due.since_epoch() - Duration::from_nanos(1),
            ))
            .expect("forward");
        runner.queue().idle().await;
        assert_eq!(r.calls_for("a").len(), retry as usize + 1);
        clock.advance(Duration::from_nanos(1));
    }
    runner.queue().idle().await;

    let calls = r.calls_for("a");
    assert_eq!(calls.len(), 4);
    let mut replay = Backoff::new(BACKOFF, 7).expect("valid");
    for (n, pair) in calls.windows(2).enumerate() {
        assert_eq!(pair[1] - pair[0], replay.delay(n as u32));
    }
    let attempts: Vec<u32> = r.contexts.lock().iter().map(|(_, c)| c.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 3]);
    assert!(runner.queue().is_empty());
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_permanent_error_is_not_retried() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.script("a", vec![Step::Err(TestError::Permanent)]);
    let runner = start(&r, &clock, config(2));
    runner.wait_for_resyncs(1).await;
    runner.handle().enqueue("a");
    runner.queue().idle().await;

    assert_eq!(r.calls_for("a").len(), 1);
    assert!(runner.queue().is_empty());
    assert_eq!(runner.queue().next_eligible_at(), None);
    clock.advance(Duration::from_secs(3_600));
    runner.queue().idle().await;
    assert_eq!(r.calls_for("a").len(), 1);
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn success_resets_the_attempt_counter() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.script(
        "a",
        vec![
            Step::Err(TestError::Transient),
            Step::Err(TestError::Transient),
            Step::Ok(Action::Done),
            Step::Err(TestError::Transient),
        ],
    );
    let runner = start(&r, &clock, config(1));
    runner.wait_for_resyncs(1).await;
    runner.handle().enqueue("a");
    for _ in 0..2 {
        runner.queue().idle().await;
        let due = runner.queue().next_eligible_at().expect("retry scheduled");
        clock.advance_to(due).expect("forward");
    }
    runner.queue().idle().await;
    assert_eq!(r.calls_for("a").len(), 3);
    runner.handle().enqueue("a");
    runner.queue().idle().await;
    let attempts: Vec<u32> = r.contexts.lock().iter().map(|(_, c)| c.attempt).collect();
    assert_eq!(attempts, vec![1, 2, 1]);
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_requeue_after_reconciles_again_once_the_delay_has_passed() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.script(
        "a",
        vec![Step::Ok(Action::RequeueAfter(Duration::from_secs(30)))],
    );
    let runner = start(&r, &clock, config(1));
    runner.wait_for_resyncs(1).await;
    runner.handle().enqueue("a");
    runner.queue().idle().await;
    assert_eq!(
        runner.queue().key_state(&"a"),
        Some(KeyState::Pending {
            lane: Lane::Normal,
            eligible_at: Instant::ZERO + Duration::from_secs(30)
        })
    );
    clock.advance(Duration::from_secs(30));
    runner.queue().idle().await;
    assert_eq!(
        r.calls_for("a"),
        vec![Instant::ZERO, Instant::ZERO + Duration::from_secs(30)]
    );
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_key_that_spends_its_retry_budget_is_parked_in_the_low_lane_for_the_backoff_cap() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.script("crit-a", vec![Step::Err(TestError::Transient); 4]);
    let runner = start(
        &r,
        &clock,
        RunnerConfig {
            retry_budget: RetryBudgetConfig {
                max_retries: 2,
                window: Duration::from_secs(3_600),
            },
            ..config(1)
        },
    );
    runner.wait_for_resyncs(1).await;
    runner.handle().enqueue("crit-a");
    for _ in 0..2 {
        runner.queue().idle().await;
        assert!(matches!(
            runner.queue().key_state(&"crit-a"),
            Some(KeyState::Pending {
                lane: Lane::Critical,
                ..
            })
        ));
        let due = runner.queue().next_eligible_at().expect("retry scheduled");
        clock.advance_to(due).expect("forward");
    }
    runner.queue().idle().await;
    assert_eq!(r.calls_for("crit-a").len(), 3);
    assert_eq!(
        runner.queue().key_state(&"crit-a"),
        Some(KeyState::Pending {
            lane: Lane::Low,
            eligible_at: clock.now() + BACKOFF.cap
        })
    );
    // Parked, not forgotten: it runs again after the cap.
    clock.advance(BACKOFF.cap);
    runner.queue().idle().await;
    assert_eq!(r.calls_for("crit-a").len(), 4);
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_panicking_reconcile_is_retried_as_a_transient_error() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.script("a", vec![Step::Panic]);
    let runner = start(&r, &clock, config(1));
    runner.wait_for_resyncs(1).await;
    runner.handle().enqueue("a");
    runner.queue().idle().await;
    let due = runner.queue().next_eligible_at().expect("retry scheduled");
    assert!(due - clock.now() <= BACKOFF.base);
    clock.advance_to(due).expect("forward");
    runner.queue().idle().await;
    assert_eq!(r.calls_for("a").len(), 2);
    assert_eq!(r.finished.load(Ordering::SeqCst), 1);
    runner
        .shutdown()
        .await
        .expect("workers survive a reconcile panic");
}

#[tokio::test]
async fn the_periodic_resync_relists_and_reconciles_every_key() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.keys.lock().extend(["a", "b"]);
    let runner = start(
        &r,
        &clock,
        RunnerConfig {
            resync_interval: Some(Duration::from_secs(60)),
            ..config(2)
        },
    );
    runner.wait_for_resyncs(1).await;
    runner.queue().idle().await;
    assert_eq!((r.calls_for("a").len(), r.calls_for("b").len()), (1, 1));
    // Idle workers sleep on no timer, so the one timer is the resync's.
    clock.wait_for_timers(1).await;
    assert_eq!(
        clock.next_deadline(),
        Some(Instant::ZERO + Duration::from_secs(60))
    );

    clock.advance(Duration::from_secs(59));
    runner.queue().idle().await;
    assert_eq!(runner.resyncs(), 1);
    assert_eq!(r.lists.load(Ordering::SeqCst), 1);

    // The store changed: c appeared, and nothing sent a hint for it.
    r.keys.lock().push("c");
    clock.advance(Duration::from_secs(1));
    runner.wait_for_resyncs(2).await;
    runner.queue().idle().await;
    assert_eq!(r.lists.load(Ordering::SeqCst), 2);
    assert_eq!(
        (
            r.calls_for("a").len(),
            r.calls_for("b").len(),
            r.calls_for("c").len()
        ),
        (2, 2, 1)
    );
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_failed_resync_is_retried_with_backoff_before_the_next_interval() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.keys.lock().push("a");
    r.list_failures.store(1, Ordering::SeqCst);
    let runner = start(
        &r,
        &clock,
        RunnerConfig {
            resync_interval: Some(Duration::from_secs(600)),
            ..config(1)
        },
    );
    // The failed list leaves one timer: the list retry, due within the
    // first backoff ceiling rather than a whole interval later.
    clock.wait_for_timers(1).await;
    assert_eq!(runner.resyncs(), 0);
    let due = clock.next_deadline().expect("list retry pending");
    assert!(due - clock.now() <= BACKOFF.base);
    clock.advance_to(due).expect("forward");
    runner.wait_for_resyncs(1).await;
    runner.queue().idle().await;
    assert_eq!(r.lists.load(Ordering::SeqCst), 2);
    assert_eq!(r.calls_for("a").len(), 1);
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn hints_from_a_stream_are_enqueued_and_a_burst_costs_one_reconcile() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    let runner = start(&r, &clock, config(1));
    runner.wait_for_resyncs(1).await;
    let hints = futures::stream::iter(["a", "a", "crit-b", "a"]);
    assert_eq!(runner.handle().forward(hints).await, 4);
    runner.queue().idle().await;
    let order: Vec<&str> = r.calls.lock().iter().map(|(k, _)| *k).collect();
    assert_eq!(order, vec!["crit-b", "a"]);
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn shutdown_waits_for_the_reconcile_in_flight_and_drops_queued_keys() {
    let clock = ManualClock::new();
    let (r, mut started) = Scripted::new(&clock);
    r.script("slow", vec![Step::Gated]);
    let runner = start(&r, &clock, config(1));
    runner.wait_for_resyncs(1).await;
    runner.handle().enqueue("slow");
    assert_eq!(started.recv().await, Some("slow"));
    runner.handle().enqueue("queued");

    let queue = runner.queue().clone();
    let mut shutdown = Box::pin(runner.shutdown());
    for _ in 0..50 {
        assert!(futures::poll!(&mut shutdown).is_pending());
        tokio::task::yield_now().await;
    }
    assert_eq!(r.finished.load(Ordering::SeqCst), 0);
    assert_eq!(queue.processing(), 1);

    r.gate.notify_one();
    shutdown.await.expect("clean shutdown");
    assert_eq!(r.finished.load(Ordering::SeqCst), 1);
    assert!(r.calls_for("queued").is_empty());
    assert_eq!(queue.processing(), 0);
}

#[tokio::test]
async fn drain_reconciles_every_eligible_key_before_stopping() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    r.script("slow", vec![Step::Gated]);
    let runner = start(&r, &clock, config(1));
    runner.wait_for_resyncs(1).await;
    runner.handle().enqueue("slow");
    runner.handle().enqueue("x");
    runner.handle().enqueue("y");
    runner
        .handle()
        .enqueue_after("later", Duration::from_secs(5));
    let mut drain = Box::pin(runner.drain());
    assert!(futures::poll!(&mut drain).is_pending());
    r.gate.notify_one();
    drain.await.expect("clean drain");
    let order: Vec<&str> = r.calls.lock().iter().map(|(k, _)| *k).collect();
    assert_eq!(order, vec!["slow", "x", "y"]);
}

/// Per-key overlap detector and "ran after the last hint" bookkeeping.
struct Contended {
    in_flight: Vec<AtomicUsize>,
    overlap: AtomicBool,
    generation: AtomicU64,
    last_hint: Vec<AtomicU64>,
    last_start: Vec<AtomicU64>,
    reconciles: AtomicUsize,
}

const KEYS: usize = 16;

impl Reconciler for Contended {
    type Key = usize;
    type Error = TestError;

    async fn reconcile(&self, key: &usize) -> Result<Action, TestError> {
        self.reconciles.fetch_add(1, Ordering::SeqCst);
        if self.in_flight[*key].fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlap.store(true, Ordering::SeqCst);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        self.last_start[*key].fetch_max(generation, Ordering::SeqCst);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.in_flight[*key].fetch_sub(1, Ordering::SeqCst);
        Ok(Action::Done)
    }

    async fn list_keys(&self) -> Result<Vec<usize>, TestError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_is_reconciled_by_two_workers_at_once_under_many_workers() {
    let clock = ManualClock::new();
    let r = Arc::new(Contended {
        in_flight: (0..KEYS).map(|_| AtomicUsize::new(0)).collect(),
        overlap: AtomicBool::new(false),
        generation: AtomicU64::new(0),
        last_hint: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        last_start: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
        reconciles: AtomicUsize::new(0),
    });
    let runner = Runner::start(Arc::clone(&r), clock.shared(), config(8)).expect("runner starts");
    runner.wait_for_resyncs(1).await;
    let handle = runner.handle();

    let hints = 4_000;
    for i in 0..hints {
        let key = (i * 7 + i / 5) % KEYS;
        let generation = r.generation.fetch_add(1, Ordering::SeqCst) + 1;
        r.last_hint[key].store(generation, Ordering::SeqCst);
        handle.enqueue(key);
        if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
    runner.queue().idle().await;

    assert!(
        !r.overlap.load(Ordering::SeqCst),
        "a key ran on two workers at once"
    );
    let total = r.reconciles.load(Ordering::SeqCst);
    assert!(
        total >= KEYS && total <= hints,
        "{total} reconciles for {hints} hints"
    );
    for key in 0..KEYS {
        let hint = r.last_hint[key].load(Ordering::SeqCst);
        let start = r.last_start[key].load(Ordering::SeqCst);
        assert!(
            start >= hint,
            "key {key}: last hint {hint} never reconciled (last start {start})"
        );
    }
    runner.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_runner_without_workers_or_with_a_bad_backoff_is_refused() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    let err = Runner::start(Arc::clone(&r), clock.shared(), config(0)).map(|_| ());
    assert_eq!(err, Err(RunnerError::ZeroWorkers));
    let bad = RunnerConfig {
        backoff: BackoffConfig {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(1),
        },
        ..config(1)
    };
    let err = Runner::start(Arc::clone(&r), clock.shared(), bad).map(|_| ());
    assert!(matches!(err, Err(RunnerError::Backoff(_))));
    assert_eq!(r.lists.load(Ordering::SeqCst), 0, "nothing started");
}

#[test]
fn a_runner_started_outside_a_runtime_is_refused() {
    let clock = ManualClock::new();
    let (r, _started) = Scripted::new(&clock);
    let err = Runner::start(r, clock.shared(), config(1)).map(|_| ());
    assert_eq!(err, Err(RunnerError::NoRuntime));
}
