//! Leases kept in a store of their own, with their fences published beside
//! the data they guard (real SQLite files, a manual clock).

use std::time::Duration;

use meridian_control::clock::ManualClock;
use meridian_control::lease::{Acquired, Fence, Held, Identity, Lease, LeaseError};
use meridian_store::Database;

const LEASE: Duration = Duration::from_secs(3);
const MARGIN: Duration = Duration::from_millis(500);
/// Failure guard only: a renewal that works takes milliseconds.
const GUARD: Duration = Duration::from_secs(5);

struct Stores {
    data: Database,
    leases: Database,
    _dir: tempfile::TempDir,
}

async fn stores() -> Stores {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("region.db").display());
    let data = meridian_store::open(&url).await.expect("open data");
    let leases = meridian_store::open_leases(&url, &data)
        .await
        .expect("open leases");
    assert!(
        dir.path().join("region.leases.db").exists(),
        "the lease store is a file of its own"
    );
    Stores {
        data,
        leases,
        _dir: dir,
    }
}

fn lease(leases: &Database, data: &Database, clock: &ManualClock, name: &str) -> Lease {
    Lease::new(
        leases.clone(),
        b"lease/shard-0".to_vec(),
        Identity::new_boot(name),
        clock.shared(),
        LEASE,
        MARGIN,
    )
    .with_fence_in(data.clone(), b"fence/shard-0".to_vec())
}

fn held(acquired: Acquired) -> Held {
    match acquired {
        Acquired::Held(h) => h,
        Acquired::Busy(r) => panic!("lease busy: held by {} at epoch {}", r.holder, r.epoch),
    }
}

async fn fenced_write(db: &Database, fence: &Fence, value: &[u8]) -> Result<(), LeaseError> {
    db.run(|tx, _| {
        let (fence, value) = (fence.clone(), value.to_vec());
        async move {
            fence.check(&tx).await?;
            tx.set(b"data", &value)?;
            Ok(())
        }
    })
    .await
}

/// Opens a write transaction on `db` and takes SQLite's write lock with it.
async fn hold_write_lock(db: &Database) -> meridian_store::Transaction {
    let tx = db.begin().await.expect("begin");
    tx.set(b"busy", b"1").expect("buffer a write");
    // A read flushes the buffered write: the transaction now holds the lock.
    tx.get(b"busy").await.expect("flush");
    tx
}

#[tokio::test]
async fn a_renewal_does_not_wait_for_a_writer_holding_the_guarded_store() {
    let s = stores().await;
    let clock = ManualClock::new();
    let a = lease(&s.leases, &s.data, &clock, "a");
    let a_held = held(a.try_acquire().await.expect("a acquires"));

    let writer = hold_write_lock(&s.data).await;
    let renewed = tokio::time::timeout(GUARD, a.renew(&a_held))
        .await
        .expect("the renewal waited for the data's writer")
        .expect("renewal");
    assert_eq!(renewed.fence.epoch(), a_held.fence.epoch());
    writer.commit().await.expect("the writer commits after");
}

#[tokio::test]
async fn a_lease_kept_beside_its_data_waits_for_the_data_writer() {
    // What the store of its own avoids: one write lock for both.
    let s = stores().await;
    let clock = ManualClock::new();
    let a = Lease::new(
        s.data.clone(),
        b"lease/shard-0".to_vec(),
        Identity::new_boot("a"),
        clock.shared(),
        LEASE,
        MARGIN,
    );
    let a_held = held(a.try_acquire().await.expect("a acquires"));
    let writer = hold_write_lock(&s.data).await;
    let renewal = a.renew(&a_held);
    tokio::pin!(renewal);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut renewal)
            .await
            .is_err(),
        "a renewal in the data's store finished while a writer held its lock"
    );
    writer.commit().await.expect("the writer commits");
    renewal
        .await
        .expect("the renewal goes through once the lock is free");
}

#[tokio::test]
async fn a_deposed_holder_is_refused_by_the_fence_published_beside_the_data() {
    let s = stores().await;
    let clock = ManualClock::new();
    let (a, b) = (
        lease(&s.leases, &s.data, &clock, "a"),
        lease(&s.leases, &s.data, &clock, "b"),
    );
    let a_held = held(a.try_acquire().await.expect("a acquires"));
    assert_eq!(
        a_held.fence.key(),
        b"fence/shard-0",
        "writes check the fence"
    );
    fenced_write(&s.data, &a_held.fence, b"a, term 1")
        .await
        .expect("the holder writes");

    // A pauses past its lease; B takes over and publishes its fence.
    clock.advance(LEASE + Duration::from_millis(1));
    let b_held = held(b.try_acquire().await.expect("b acquires"));
    assert_eq!(b_held.fence.epoch(), a_held.fence.epoch() + 1);

    let refused = fenced_write(&s.data, &a_held.fence, b"a, stale")
        .await
        .expect_err("a stale holder's write");
    assert!(matches!(refused, LeaseError::Fenced { .. }), "{refused:?}");
    fenced_write(&s.data, &b_held.fence, b"b, term 2")
        .await
        .expect("the new holder writes");
    // And A can no longer renew the term it lost.
    assert!(matches!(
        a.renew(&a_held).await,
        Err(LeaseError::Fenced { .. })
    ));
}

#[tokio::test]
async fn a_lost_lease_store_never_brings_an_old_epoch_back() {
    let s = stores().await;
    let clock = ManualClock::new();
    let a = lease(&s.leases, &s.data, &clock, "a");
    let first = held(a.try_acquire().await.expect("a acquires"));
    clock.advance(LEASE + Duration::from_millis(1));
    let second = held(a.try_acquire().await.expect("a acquires again"));
    assert_eq!(second.fence.epoch(), first.fence.epoch() + 1);

    // The lease store is replaced by an empty one.
    let fresh = meridian_store::open("sqlite::memory:")
        .await
        .expect("fresh store");
    let c = lease(&fresh, &s.data, &clock, "c");
    let c_held = held(c.try_acquire().await.expect("c acquires"));
    assert!(
        c_held.fence.epoch() > second.fence.epoch(),
        "epoch {} after {}",
        c_held.fence.epoch(),
        second.fence.epoch()
    );
    assert!(
        fenced_write(&s.data, &second.fence, b"a, stale")
            .await
            .is_err()
    );
    fenced_write(&s.data, &c_held.fence, b"c")
        .await
        .expect("the new holder writes");
}
