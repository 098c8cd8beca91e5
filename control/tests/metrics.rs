//! Metrics recorded by the work queue and the leases, read back through a
//! debugging recorder installed around construction.
//!
//! Taking a debugging snapshot resets counters and gauges, so each check
//! point takes one snapshot and reads everything from it.

use std::sync::Arc;
use std::time::Duration;

use meridian_control::clock::ManualClock;
use meridian_control::queue::{Lane, QueueConfig, WorkQueue};
use meridian_control::telemetry;
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

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

/// Runs `f` on a current-thread runtime with `recorder` installed on this
/// thread, so everything the future records lands in it.
fn recorded<F: std::future::Future<Output = ()>>(recorder: &DebuggingRecorder, f: F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(recorder, || rt.block_on(f));
}

fn test_lease(
    db: &meridian_store::Database,
    clock: &ManualClock,
    name: &str,
) -> meridian_control::lease::Lease {
    meridian_control::lease::Lease::new(
        db.clone(),
        b"lease/metrics".to_vec(),
        meridian_control::lease::Identity::new_boot(name),
        clock.shared(),
        Duration::from_secs(3),
        Duration::from_millis(500),
    )
}

#[test]
fn a_deposed_owners_write_counts_as_a_fenced_write() {
    use meridian_control::lease::{Acquired, LeaseError};
    let recorder = DebuggingRecorder::new();
    let dir = tempfile::tempdir().expect("tempdir");
    recorded(&recorder, async move {
        let db = meridian_store::open(&format!("sqlite:{}", dir.path().join("m.db").display()))
            .await
            .expect("open store");
        let clock = ManualClock::new();
        let Acquired::Held(a) = test_lease(&db, &clock, "a").try_acquire().await.expect("a") else {
            panic!("a should acquire a fresh lease");
        };
        clock.advance(Duration::from_secs(4));
        let Acquired::Held(_b) = test_lease(&db, &clock, "b").try_acquire().await.expect("b")
        else {
            panic!("b should take over the expired lease");
        };
        let fence = a.fence.clone();
        let refused = db
            .run(|tx, _| {
                let fence = fence.clone();
                async move {
                    fence.check(&tx).await?;
                    tx.set(b"data", b"from a")?;
                    Ok::<_, LeaseError>(())
                }
            })
            .await;
        assert!(
            matches!(refused, Err(LeaseError::Fenced { .. })),
            "{refused:?}"
        );
    });
    let snap = Snap::take(&recorder);
    assert_eq!(snap.counter(telemetry::FENCED_WRITES, &[]), 1);
}

#[test]
fn a_renewal_refused_by_a_takeover_counts_as_a_fenced_renew_failure() {
    use meridian_control::lease::{Acquired, Elector, ElectorConfig, Role};
    let recorder = DebuggingRecorder::new();
    let dir = tempfile::tempdir().expect("tempdir");
    recorded(&recorder, async move {
        let db = meridian_store::open(&format!("sqlite:{}", dir.path().join("m.db").display()))
            .await
            .expect("open store");
        let (clock_a, clock_b) = (ManualClock::new(), ManualClock::new());
        let mut elector = Elector::new(
            test_lease(&db, &clock_a, "a"),
            ElectorConfig::for_lease(Duration::from_secs(3)),
            1,
            "shard-0",
        );
        elector.tick().await;
        assert_eq!(elector.subscribe().borrow().role, Role::Leader);
        // B's clock runs ahead (skew): it sees the lease expired while A's
        // own deadline has not passed, and takes over.
        clock_b.advance(Duration::from_secs(10));
        let taken = test_lease(&db, &clock_b, "b")
            .try_acquire()
            .await
            .expect("b");
        assert!(matches!(taken, Acquired::Held(_)));
        // A's next renewal is refused by the store: fenced.
        elector.tick().await;
        assert_eq!(elector.subscribe().borrow().role, Role::Follower);
    });
    let snap = Snap::take(&recorder);
    let failures = [("lease", "shard-0"), ("reason", "fenced")];
    assert_eq!(snap.counter(telemetry::LEASE_RENEW_FAILURES, &failures), 1);
    let timeouts = [("lease", "shard-0"), ("reason", "timeout")];
    assert_eq!(snap.counter(telemetry::LEASE_RENEW_FAILURES, &timeouts), 0);
}

#[test]
fn a_transaction_that_loses_an_occ_race_counts_one_conflict_retry() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let recorder = DebuggingRecorder::new();
    let dir = tempfile::tempdir().expect("tempdir");
    recorded(&recorder, async move {
        let db = meridian_store::open(&format!("sqlite:{}", dir.path().join("m.db").display()))
            .await
            .expect("open store");
        let attempts = Arc::new(AtomicU32::new(0));
        db.run(|tx, _| {
            let (db, attempts) = (db.clone(), attempts.clone());
            async move {
                let seen = tx.get(b"k").await?;
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Another writer commits the key this attempt read.
                    let other = db.begin().await?;
                    other.set(b"k", b"other")?;
                    other.commit().await?;
                }
                tx.set(b"k", if seen.is_some() { b"after" } else { b"first" })?;
                Ok::<_, meridian_store::StoreError>(())
            }
        })
        .await
        .expect("the retry commits");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    });
    let snap = Snap::take(&recorder);
    assert_eq!(
        snap.counter("meridian_store_retries_total", &[("reason", "conflict")]),
        1
    );
}
