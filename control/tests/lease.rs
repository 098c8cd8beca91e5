//! Leases and fencing in one process, with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use meridian_control::clock::{Clock, ManualClock};
use meridian_control::lease::{
    Acquired, Elector, ElectorConfig, Held, Identity, Lease, LeaseError, LeaseRecord, Role,
};
use meridian_store::fault::{FaultConfig, FaultyBackend};
use meridian_store::sqlite::{SqliteBackend, SqliteOptions};
use meridian_store::{Database, RetryOptions, Retryable, StoreError};

const LEASE: Duration = Duration::from_secs(3);
const MARGIN: Duration = Duration::from_millis(500);

fn lease(db: &Database, clock: &ManualClock, name: &str) -> Lease {
    Lease::new(
        db.clone(),
        b"lease/test".to_vec(),
        Identity::new_boot(name),
        clock.shared(),
        LEASE,
        MARGIN,
    )
}

fn held(acquired: Acquired) -> Held {
    match acquired {
        Acquired::Held(h) => h,
        Acquired::Busy(r) => panic!("lease busy: held by {} at epoch {}", r.holder, r.epoch),
    }
}

async fn file_db(dir: &tempfile::TempDir) -> Database {
    meridian_store::open(&format!("sqlite:{}", dir.path().join("lease.db").display()))
        .await
        .expect("open store")
}

#[tokio::test]
async fn stale_leader_write_is_rejected_after_takeover_even_from_a_transaction_begun_before_the_pause()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = file_db(&dir).await;
    let clock = ManualClock::new();
    let (a, b) = (lease(&db, &clock, "a"), lease(&db, &clock, "b"));
    let a_held = held(a.try_acquire().await.expect("a acquires"));
    assert_eq!(a_held.fence.epoch(), 1);

    // A begins a write while it still leads, and checks its fence...
    let stale = db.begin().await.expect("begin");
    a_held
        .fence
        .check(&stale)
        .await
        .expect("fence holds before the pause");
    stale.set(b"data", b"written by a").expect("buffer write");

    // ...then pauses past its lease; B takes over with a higher epoch.
    assert!(matches!(
        b.try_acquire().await.expect("b tries"),
        Acquired::Busy(_)
    ));
    clock.advance(LEASE + Duration::from_millis(1));
    let b_held = held(b.try_acquire().await.expect("b acquires"));
    assert_eq!(b_held.fence.epoch(), 2);

    // A wakes up and commits the transaction it began before: rejected.
    let err = stale.commit().await.expect_err("stale commit must fail");
    assert_eq!(err, StoreError::NotCommitted);
    assert!(err.is_retryable());
    // Retrying it as a fenced write now fails for good.
    let fence = a_held.fence.clone();
    let retried = db
        .run(|tx, _| {
            let fence = fence.clone();
            async move {
                fence.check(&tx).await?;
                tx.set(b"data", b"written by a")?;
                Ok::<_, LeaseError>(())
            }
        })
        .await;
    assert!(
        matches!(
            retried,
            Err(LeaseError::Fenced {
                expected_epoch: 1,
                ..
            })
        ),
        "{retried:?}"
    );
    assert!(!retried.expect_err("fenced").is_retryable());

    let fence = b_held.fence.clone();
    db.run(|tx, _| {
        let fence = fence.clone();
        async move {
            fence.check(&tx).await?;
            tx.set(b"data", b"written by b")?;
            Ok::<_, LeaseError>(())
        }
    })
    .await
    .expect("the new leader writes");
    let data = db
        .run(|tx, _| async move { tx.get(b"data").await })
        .await
        .expect("read");
    assert_eq!(data.as_deref(), Some(&b"written by b"[..]));
}

#[tokio::test]
async fn renewal_keeps_the_epoch_and_release_lets_a_standby_take_over_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = file_db(&dir).await;
    let clock = ManualClock::new();
    let (a, b) = (lease(&db, &clock, "a"), lease(&db, &clock, "b"));
    let first = held(a.try_acquire().await.expect("acquire"));
    clock.advance(Duration::from_secs(1));
    let renewed = a.renew(&first).await.expect("renew");
    assert_eq!(renewed.fence.epoch(), first.fence.epoch());
    assert!(renewed.act_until > first.act_until);

    a.release(&renewed).await.expect("release");
    let taken = held(b.try_acquire().await.expect("b acquires without waiting"));
    assert_eq!(taken.fence.epoch(), 2);
    let renew_after = a.renew(&renewed).await;
    assert!(
        matches!(renew_after, Err(LeaseError::Fenced { .. })),
        "{renew_after:?}"
    );
}

#[tokio::test]
async fn a_restarted_process_waits_for_its_old_lease_and_takes_a_new_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = file_db(&dir).await;
    let clock = ManualClock::new();
    let before = held(
        lease(&db, &clock, "a")
            .try_acquire()
            .await
            .expect("acquire"),
    );
    // Same name, new boot: a different identity.
    let after_restart = lease(&db, &clock, "a");
    assert!(matches!(
        after_restart.try_acquire().await.expect("try"),
        Acquired::Busy(_)
    ));
    clock.advance(LEASE);
    let again = held(
        after_restart
            .try_acquire()
            .await
            .expect("acquire after expiry"),
    );
    assert_eq!(again.fence.epoch(), before.fence.epoch() + 1);
}

struct Harness {
    clock: ManualClock,
    faults: Arc<FaultyBackend>,
    observer: Database,
    elector: Elector,
}

async fn elector_on_faulty_store() -> Harness {
    let inner: Arc<SqliteBackend> = Arc::new(
        SqliteBackend::open_ephemeral(SqliteOptions::default())
            .await
            .expect("store"),
    );
    let faults = Arc::new(FaultyBackend::new(inner.clone(), FaultConfig::none(), 1));
    // One attempt per renewal: the elector, not the store, decides when to retry.
    let once = RetryOptions {
        max_attempts: 1,
        ..RetryOptions::default()
    };
    let db = Database::with_options(faults.clone(), once, 0);
    let clock = ManualClock::new();
    let elector = Elector::new(
        lease(&db, &clock, "leader"),
        ElectorConfig::for_lease(LEASE),
        3,
        "test",
    );
    Harness {
        clock,
        faults,
        observer: Database::new(inner),
        elector,
    }
}

async fn stored_record(db: &Database) -> LeaseRecord {
    let bytes = db
        .run(|tx, _| async move { tx.get(b"lease/test").await })
        .await
        .expect("read")
        .expect("record");
    let (name, boot_id, epoch, expires_at_unix_ms): (String, uuid::Uuid, u64, u64) =
        meridian_store::tuple::unpack(&bytes).expect("decode");
    LeaseRecord {
        holder: Identity { name, boot_id },
        epoch,
        expires_at_unix_ms,
    }
}

#[tokio::test]
async fn leader_that_cannot_renew_stops_acting_before_its_lease_expires() {
    let mut h = elector_on_faulty_store().await;
    let mut status = h.elector.subscribe();
    let mut wait = h.elector.tick().await;
    assert_eq!(status.borrow_and_update().role, Role::Leader);
    let act_until = h.elector.act_until().expect("leading");

    // The store stops accepting commits: every renewal fails.
    h.faults.set_config(FaultConfig {
        not_committed: 1.0,
        ..FaultConfig::none()
    });
    let expires_at = stored_record(&h.observer).await.expires_at_unix_ms;
    let mut failed_renewals = 0;
    while h.elector.fence().is_some() {
        h.clock.advance(wait);
        if h.elector.fence().is_none() {
            break;
        }
        wait = h.elector.tick().await;
        failed_renewals += 1;
        assert!(failed_renewals < 100, "never stepped down");
    }
    assert!(failed_renewals >= 2, "renewal was retried before giving up");
    assert!(h.clock.now() >= act_until);
    // It stopped acting while the stored lease still had time left: no other
    // candidate could have taken over yet.
    assert!(
        h.clock.now_unix_ms() < expires_at,
        "stopped only after the lease expired"
    );
    h.elector.tick().await;
    assert_eq!(status.borrow_and_update().role, Role::Follower);
}

#[tokio::test]
async fn leader_steps_down_at_its_deadline_while_a_renewal_hangs_in_the_store() {
    let mut h = elector_on_faulty_store().await;
    let mut status = h.elector.subscribe();
    h.elector.tick().await;
    assert_eq!(status.borrow_and_update().role, Role::Leader);
    let act_until = h.elector.act_until().expect("leading");
    h.clock.advance(LEASE / 3);

    // Every commit now hangs for an hour (of real time): the renewal cannot
    // finish, and the deadline on the manual clock must win.
    h.faults.set_config(FaultConfig {
        latency: Duration::from_secs(3_600),
        ..FaultConfig::none()
    });
    let timers_before = h.clock.pending_timers();
    let clock = h.clock.clone();
    let mut elector = h.elector;
    let ticking = tokio::spawn(async move {
        elector.tick().await;
        elector
    });
    // The tick registers its deadline timer; then time passes the deadline.
    clock.wait_for_timers(timers_before + 1).await;
    clock.advance_to(act_until).expect("forward");
    let elector = ticking.await.expect("tick finished");
    assert!(elector.fence().is_none());
    assert_eq!(status.borrow_and_update().role, Role::Follower);
}

/// A fence proves one term, not one holder: the same process taking the
/// lease again after releasing it holds a new epoch, and the fence of its
/// first term admits no write and renews nothing. (Both halves of the
/// check, epoch and holder, must hold; with either alone this passes.)
#[tokio::test]
async fn a_fence_of_an_earlier_term_of_the_same_holder_admits_no_write_and_renews_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = file_db(&dir).await;
    let clock = ManualClock::new();
    let a = lease(&db, &clock, "a");
    let first = held(a.try_acquire().await.expect("first term"));
    a.release(&first).await.expect("release");
    let second = held(a.try_acquire().await.expect("second term"));
    assert_eq!(second.fence.epoch(), first.fence.epoch() + 1);
    assert_eq!(second.fence.holder(), first.fence.holder());

    let tx = db.begin().await.expect("begin");
    let refused = first.fence.check(&tx).await;
    assert!(
        matches!(refused, Err(LeaseError::Fenced { .. })),
        "the first term's fence: {refused:?}"
    );
    second
        .fence
        .check(&tx)
        .await
        .expect("the current term's fence holds");
    let renewed = a.renew(&first).await;
    assert!(
        matches!(renewed, Err(LeaseError::Fenced { .. })),
        "renewing the first term: {renewed:?}"
    );
    assert_eq!(stored_record(&db).await.epoch, second.fence.epoch());
}

/// Only a store error the store calls retryable makes a lease error
/// retryable; a fence never is (retrying a fenced write cannot help).
#[test]
fn a_lease_error_is_retryable_exactly_when_its_store_error_is() {
    assert!(LeaseError::Store(StoreError::NotCommitted).is_retryable());
    assert!(!LeaseError::Store(StoreError::TransactionFinished).is_retryable());
    let fenced = LeaseError::Fenced {
        expected_holder: "a".into(),
        expected_epoch: 1,
        found: "b at epoch 2".into(),
    };
    assert!(!fenced.is_retryable());
}

/// A leader acts strictly before its local deadline: at the deadline itself
/// it hands out no fence.
#[tokio::test]
async fn a_leader_hands_out_no_fence_at_its_deadline_itself() {
    let mut h = elector_on_faulty_store().await;
    h.elector.tick().await;
    let act_until = h.elector.act_until().expect("leading");
    assert!(h.elector.fence().is_some());
    h.clock
        .advance(act_until.saturating_duration_since(h.clock.now()) - Duration::from_millis(1));
    assert!(h.elector.fence().is_some(), "a millisecond before");
    h.clock.advance(Duration::from_millis(1));
    assert_eq!(h.clock.now(), act_until);
    assert!(h.elector.fence().is_none(), "at the deadline");
}
