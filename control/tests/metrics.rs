//! Metrics recorded by the work queue and the runner, read back through a
//! debugging recorder installed around construction.
//!
//! Taking a debugging snapshot resets counters and gauges, so each check
//! point takes one snapshot and reads everything from it.

use std::sync::Arc;
use std::time::Duration;

use meridian_control::clock::ManualClock;
use meridian_control::queue::{Lane, QueueConfig, WorkQueue};
use meridian_control::reconcile::{Action, Reconciler, Runner, RunnerConfig};
use meridian_control::retry::Retryable;
use meridian_control::telemetry;
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use parking_lot::Mutex;

struct Snap(Vec<(CompositeKey, DebugValue)>);

impl Snap {
    fn take(recorder: &DebuggingRecorder) -> Self {
        Snap(
            recorder
                .snapshotter()
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, _, _, v)| (k, v))
                .collect(),
        )
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(key, _)| {
                let key = key.key();
                key.name() == name
                    && labels.iter().all(|(k, v)| {
                        key.labels()
                            .any(|label| label.key() == *k && label.value() == *v)
                    })
            })
            .map(|(_, v)| v)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name} {labels:?} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.value(name, labels) {
            Some(DebugValue::Gauge(g)) => g.into_inner(),
            other => panic!("{name} {labels:?} is not a gauge: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.value(name, labels) {
            Some(DebugValue::Histogram(h)) => h.iter().map(|v| v.into_inner()).collect(),
            other => panic!("{name} {labels:?} is not a histogram: {other:?}"),
        }
    }
}

#[test]
fn the_queue_reports_depth_per_lane_adds_drops_and_waits() {
    let recorder = DebuggingRecorder::new();
    let clock = ManualClock::new();
    let q: WorkQueue<u32> = metrics::with_local_recorder(&recorder, || {
        WorkQueue::new(
            QueueConfig {
                name: "placement".to_owned(),
                capacity: 2,
                min_interval: Duration::ZERO,
            },
            clock.shared(),
        )
        .expect("valid config")
    });
    q.add(1, Lane::Low);
    q.add(2, Lane::Low);
    q.add(3, Lane::Critical); // evicts 2
    q.add(4, Lane::Low); // refused
    let snap = Snap::take(&recorder);
    let depth = |lane: &str| {
        snap.gauge(
            telemetry::QUEUE_DEPTH,
            &[("queue", "placement"), ("lane", lane)],
        )
    };
    assert_eq!(
        (depth("low"), depth("critical"), depth("high")),
        (1.0, 1.0, 0.0)
    );
    assert_eq!(snap.counter(telemetry::QUEUE_ADDS, &[("lane", "low")]), 3);
    assert_eq!(
        snap.counter(telemetry::QUEUE_ADDS, &[("lane", "critical")]),
        1
    );
    assert_eq!(snap.counter(telemetry::QUEUE_DROPS, &[("lane", "low")]), 2);
    assert_eq!(
        snap.counter(telemetry::QUEUE_DROPS, &[("lane", "critical")]),
        0
    );

    clock.advance(Duration::from_millis(250));
    let g = q.try_get().expect("3");
    let snap = Snap::take(&recorder);
    assert_eq!(
        snap.gauge(telemetry::QUEUE_PROCESSING, &[("queue", "placement")]),
        1.0
    );
    assert_eq!(
        snap.gauge(
            telemetry::QUEUE_DEPTH,
            &[("queue", "placement"), ("lane", "critical")]
        ),
        0.0
    );
    let waits = snap.histogram(telemetry::QUEUE_WAIT, &[("lane", "critical")]);
    assert_eq!(waits.len(), 1);
    assert!((waits[0] - 0.25).abs() < 1e-9, "waited {waits:?}");
    g.done();
    let snap = Snap::take(&recorder);
    assert_eq!(
        snap.gauge(telemetry::QUEUE_PROCESSING, &[("queue", "placement")]),
        0.0
    );
}

#[derive(Debug, thiserror::Error)]
#[error("flaky")]
struct Flaky;

impl Retryable for Flaky {
    fn is_retryable(&self) -> bool {
        true
    }
}

struct FailsOnce {
    failed: Mutex<bool>,
}

impl Reconciler for FailsOnce {
    type Key = u32;
    type Error = Flaky;

    async fn reconcile(&self, _key: &u32) -> Result<Action, Flaky> {
        let mut failed = self.failed.lock();
        if *failed {
            Ok(Action::Done)
        } else {
            *failed = true;
            Err(Flaky)
        }
    }

    async fn list_keys(&self) -> Result<Vec<u32>, Flaky> {
        Ok(vec![1])
    }
}

#[tokio::test]
async fn the_runner_reports_outcomes_retries_durations_and_resyncs() {
    let recorder = DebuggingRecorder::new();
    let clock = ManualClock::new();
    let runner = metrics::with_local_recorder(&recorder, || {
        Runner::start(
            Arc::new(FailsOnce {
                failed: Mutex::new(false),
            }),
            clock.shared(),
            RunnerConfig {
                name: "jobs".to_owned(),
                workers: 1,
                resync_interval: None,
                ..RunnerConfig::default()
            },
        )
        .expect("runner starts")
    });
    runner.wait_for_resyncs(1).await;
    runner.queue().idle().await;
    let due = runner.queue().next_eligible_at().expect("retry scheduled");
    clock.advance_to(due).expect("forward");
    runner.queue().idle().await;

    let snap = Snap::take(&recorder);
    let jobs = ("controller", "jobs");
    let outcome = |o: &str| snap.counter(telemetry::RECONCILES, &[jobs, ("outcome", o)]);
    assert_eq!(outcome("transient_error"), 1);
    assert_eq!(outcome("done"), 1);
    assert_eq!(outcome("permanent_error"), 0);
    assert_eq!(snap.counter(telemetry::RETRIES, &[jobs]), 1);
    assert_eq!(snap.counter(telemetry::RETRY_BUDGET_EXHAUSTED, &[jobs]), 0);
    assert_eq!(
        snap.counter(telemetry::RESYNCS, &[jobs, ("outcome", "ok")]),
        1
    );
    let done_durations =
        snap.histogram(telemetry::RECONCILE_DURATION, &[jobs, ("outcome", "done")]);
    assert_eq!(done_durations.len(), 1);
    // The runner's queue is named after the controller.
    assert_eq!(
        snap.counter(telemetry::QUEUE_ADDS, &[("queue", "jobs"), ("lane", "low")]),
        1
    );
    runner.shutdown().await.expect("clean shutdown");
}
