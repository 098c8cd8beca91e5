//! What the in-memory backend promises beyond the shared conformance suite:
//! FoundationDB's fine-grained conflicts (only overlapping reads and writes
//! conflict), snapshot isolation at the first read, the too-old window,
//! bounded memory, and the `memory:` URL.

use std::sync::Arc;

use meridian_store::memory::{MemoryBackend, MemoryOptions};
use meridian_store::{Database, RangeOption, Retryable, StoreError};

fn database() -> (MemoryBackend, Database) {
    let backend = MemoryBackend::new();
    let db = Database::new(Arc::new(backend.clone()));
    (backend, db)
}

async fn put(db: &Database, key: &[u8], value: &[u8]) {
    let tx = db.begin().await.expect("begin");
    tx.set(key, value).expect("set");
    tx.commit().await.expect("commit");
}

async fn value(db: &Database, key: &[u8]) -> Option<Vec<u8>> {
    let tx = db.begin().await.expect("begin");
    tx.get(key).await.expect("get")
}

#[tokio::test(flavor = "current_thread")]
async fn of_concurrent_conflicting_transactions_exactly_one_commits() {
    const TRANSACTIONS: usize = 8;
    let (_, db) = database();
    put(&db, b"counter", &0i64.to_le_bytes()).await;
    // Every transaction reads before any commits, so all read the same
    // version and all write what they read.
    let mut txs = Vec::new();
    for _ in 0..TRANSACTIONS {
        let tx = db.begin().await.expect("begin");
        let seen = tx.get(b"counter").await.expect("get").expect("present");
        let next = i64::from_le_bytes(seen.try_into().expect("8 bytes")) + 1;
        tx.set(b"counter", &next.to_le_bytes()).expect("set");
        txs.push(tx);
    }
    let mut committed = 0;
    for tx in txs {
        match tx.commit().await {
            Ok(_) => committed += 1,
            Err(err) => {
                assert_eq!(err, StoreError::NotCommitted);
                assert!(err.is_retryable());
            }
        }
    }
    assert_eq!(committed, 1);
    assert_eq!(
        value(&db, b"counter").await,
        Some(1i64.to_le_bytes().to_vec())
    );
}

#[tokio::test(flavor = "current_thread")]
async fn of_concurrent_tasks_racing_on_one_key_exactly_one_commits() {
    const TASKS: usize = 8;
    let (_, db) = database();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (db, barrier) = (db.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let tx = db.begin().await.expect("begin");
            let owner = tx.get(b"owner").await.expect("get");
            // Everyone has read before anyone commits.
            barrier.wait().await;
            if owner.is_none() {
                tx.set(b"owner", format!("task-{i}").as_bytes())
                    .expect("set");
            }
            tx.commit().await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => winners += 1,
            Err(err) => assert_eq!(err, StoreError::NotCommitted),
        }
    }
    assert_eq!(winners, 1, "exactly one task claims the key");
}

#[tokio::test(flavor = "current_thread")]
async fn transactions_touching_disjoint_keys_both_commit() {
    let (_, db) = database();
    let a = db.begin().await.expect("begin");
    let b = db.begin().await.expect("begin");
    a.get(b"a-in").await.expect("get");
    b.get(b"b-in").await.expect("get");
    a.set(b"a-out", b"1").expect("set");
    b.set(b"b-out", b"1").expect("set");
    a.commit().await.expect("a commits");
    b.commit()
        .await
        .expect("b commits: nothing it read was written");
}

#[tokio::test(flavor = "current_thread")]
async fn snapshot_reads_and_blind_writes_do_not_conflict() {
    let (_, db) = database();
    put(&db, b"k", b"1").await;
    let snap = db.begin().await.expect("begin");
    assert_eq!(
        snap.get_snapshot(b"k").await.expect("get"),
        Some(b"1".to_vec())
    );
    let blind = db.begin().await.expect("begin");
    put(&db, b"k", b"2").await;
    snap.set(b"other", b"x").expect("set");
    snap.commit()
        .await
        .expect("a snapshot read adds no conflict");
    blind.set(b"k", b"3").expect("set");
    blind
        .commit()
        .await
        .expect("a transaction that never read cannot conflict");
    assert_eq!(value(&db, b"k").await, Some(b"3".to_vec()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_limited_range_read_conflicts_only_on_the_keys_it_returned() {
    let (_, db) = database();
    for key in [b"r1", b"r2", b"r3", b"r4"] {
        put(&db, key, b"v").await;
    }
    // Forward, limit 2: depends on [r, r2\0) only.
    let tx = db.begin().await.expect("begin");
    let got = tx
        .get_range(RangeOption::new(b"r".to_vec(), b"s".to_vec()).limit(2))
        .await
        .expect("range");
    assert_eq!(got.len(), 2);
    put(&db, b"r3", b"changed").await;
    tx.set(b"out", b"1").expect("set");
    tx.commit()
        .await
        .expect("a write past the last key returned does not conflict");

    let tx = db.begin().await.expect("begin");
    tx.get_range(RangeOption::new(b"r".to_vec(), b"s".to_vec()).limit(2))
        .await
        .expect("range");
    put(&db, b"r15", b"inserted").await;
    tx.set(b"out", b"2").expect("set");
    assert_eq!(
        tx.commit()
            .await
            .expect_err("an insert inside the returned span conflicts"),
        StoreError::NotCommitted
    );

    // Reverse, limit 1: depends on [r4, s) only.
    let tx = db.begin().await.expect("begin");
    tx.get_range(
        RangeOption::new(b"r".to_vec(), b"s".to_vec())
            .limit(1)
            .reverse(true),
    )
    .await
    .expect("range");
    put(&db, b"r2", b"changed again").await;
    tx.set(b"out", b"3").expect("set");
    tx.commit()
        .await
        .expect("a write below the returned span does not conflict");
}

#[tokio::test(flavor = "current_thread")]
async fn a_clear_range_conflicts_with_a_read_of_any_key_inside_it() {
    let (_, db) = database();
    let tx = db.begin().await.expect("begin");
    assert_eq!(tx.get(b"m-absent").await.expect("get"), None);
    let clearer = db.begin().await.expect("begin");
    clearer.clear_range(b"m", b"n").expect("clear_range");
    clearer.commit().await.expect("commit");
    tx.set(b"x", b"1").expect("set");
    assert_eq!(
        tx.commit()
            .await
            .expect_err("the cleared range covers the read"),
        StoreError::NotCommitted
    );
}

#[tokio::test(flavor = "current_thread")]
async fn reads_see_the_version_of_the_first_read_until_commit() {
    let (_, db) = database();
    put(&db, b"a", b"1").await;
    put(&db, b"b", b"1").await;
    let tx = db.begin().await.expect("begin");
    assert_eq!(tx.get(b"a").await.expect("get"), Some(b"1".to_vec()));
    put(&db, b"a", b"2").await;
    put(&db, b"b", b"2").await;
    put(&db, b"c", b"2").await;
    assert_eq!(tx.get(b"a").await.expect("get"), Some(b"1".to_vec()));
    let kvs = tx
        .get_range(RangeOption::new(b"a".to_vec(), b"d".to_vec()))
        .await
        .expect("range");
    let seen: Vec<(&[u8], &[u8])> = kvs
        .iter()
        .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
        .collect();
    assert_eq!(seen, vec![(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"1"[..])]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_transaction_older_than_the_window_is_too_old_and_retryable() {
    let backend = MemoryBackend::with_options(MemoryOptions { window_commits: 3 });
    let db = Database::new(Arc::new(backend.clone()));
    put(&db, b"k", b"0").await;
    let old = db.begin().await.expect("begin");
    old.get(b"k").await.expect("get");
    for i in 1..=3u8 {
        put(&db, b"k", &[i]).await;
    }
    assert_eq!(
        old.get(b"k").await.expect("still inside the window"),
        Some(b"0".to_vec())
    );
    put(&db, b"k", b"4").await;
    let err = old.get(b"k").await.expect_err("outside the window");
    assert!(
        matches!(err, StoreError::TransactionTooOld { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    old.set(b"k", b"stale").expect("set");
    let err = old.commit().await.expect_err("outside the window");
    assert!(
        matches!(err, StoreError::TransactionTooOld { .. }),
        "{err:?}"
    );
    assert!(backend.stats().logged_commits <= 3, "{:?}", backend.stats());
    assert_eq!(value(&db, b"k").await, Some(b"4".to_vec()));
}

#[tokio::test(flavor = "current_thread")]
async fn superseded_versions_are_kept_only_while_a_reader_needs_them() {
    let (backend, db) = database();
    for i in 0..1_000u32 {
        put(&db, b"hot", &i.to_le_bytes()).await;
    }
    let stats = backend.stats();
    assert_eq!((stats.keys, stats.versions), (1, 1), "{stats:?}");
    assert_eq!(stats.logged_commits, 0, "{stats:?}");
    assert_eq!(stats.live_readers, 0, "{stats:?}");

    let reader = db.begin().await.expect("begin");
    let before = reader.get(b"hot").await.expect("get");
    for i in 0..100u32 {
        put(&db, b"hot", &(1_000 + i).to_le_bytes()).await;
    }
    let held = backend.stats();
    assert_eq!(held.versions, 101, "the reader's version is kept: {held:?}");
    assert_eq!(held.logged_commits, 100, "{held:?}");
    assert_eq!(reader.get(b"hot").await.expect("get"), before);
    drop(reader);
    put(&db, b"hot", b"last").await;
    let after = backend.stats();
    assert_eq!((after.versions, after.logged_commits), (1, 0), "{after:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn cleared_keys_leave_nothing_behind() {
    let (backend, db) = database();
    let tx = db.begin().await.expect("begin");
    for i in 0..100u32 {
        tx.set(format!("row/{i:03}").as_bytes(), b"v").expect("set");
    }
    tx.commit().await.expect("commit");
    assert_eq!(backend.stats().keys, 100);
    let tx = db.begin().await.expect("begin");
    tx.clear_range(b"row/", b"row0").expect("clear_range");
    tx.commit().await.expect("commit");
    let stats = backend.stats();
    assert_eq!((stats.keys, stats.versions), (0, 0), "{stats:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_watch_fires_when_a_clear_range_removes_its_key() {
    let (backend, db) = database();
    put(&db, b"w/1", b"v").await;
    let tx = db.begin().await.expect("begin");
    let watch = tx.watch(b"w/1").expect("watch");
    tx.commit().await.expect("commit");
    assert_eq!(backend.stats().watches, 1);
    let tx = db.begin().await.expect("begin");
    tx.clear_range(b"w/", b"w0").expect("clear_range");
    tx.commit().await.expect("commit");
    watch.await.expect("the watch fires with success");
    assert_eq!(backend.stats().watches, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn every_writing_commit_reports_a_larger_versionstamp() {
    let (_, db) = database();
    let mut last = [0u8; 10];
    for i in 0..5u8 {
        let tx = db.begin().await.expect("begin");
        tx.set(b"k", &[i]).expect("set");
        let stamp = tx
            .commit()
            .await
            .expect("commit")
            .versionstamp
            .expect("stamp");
        assert!(stamp > last);
        last = stamp;
    }
    let tx = db.begin().await.expect("begin");
    tx.get(b"k").await.expect("get");
    assert_eq!(
        tx.commit().await.expect("commit").versionstamp,
        None,
        "a read-only commit has no version"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn clones_of_a_backend_share_one_database() {
    let backend = MemoryBackend::new();
    let first = Database::new(Arc::new(backend.clone()));
    let second = Database::new(Arc::new(backend));
    put(&first, b"shared", b"yes").await;
    assert_eq!(value(&second, b"shared").await, Some(b"yes".to_vec()));
}

#[tokio::test(flavor = "current_thread")]
async fn the_memory_url_opens_a_fresh_database_each_time() {
    let one = meridian_store::open("memory:").await.expect("open");
    let two = meridian_store::open("memory:").await.expect("open");
    assert_eq!(one.backend_name(), "memory");
    put(&one, b"k", b"v").await;
    assert_eq!(value(&two, b"k").await, None);
    let err = meridian_store::open("memory:extra")
        .await
        .expect_err("nothing may follow memory:");
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn watches_whose_futures_were_dropped_do_not_accumulate() {
    let (backend, db) = database();
    for i in 0..1_000u32 {
        let tx = db.begin().await.expect("begin");
        let watch = tx
            .watch(format!("never-written/{i}").as_bytes())
            .expect("watch");
        tx.commit().await.expect("commit");
        drop(watch);
    }
    let watches = backend.stats().watches;
    assert!(watches <= 64, "{watches} abandoned watches are still held");
    let tx = db.begin().await.expect("begin");
    let live = tx.watch(b"live").expect("watch");
    tx.commit().await.expect("commit");
    put(&db, b"live", b"changed").await;
    live.await.expect("a watch still awaited fires");
}

#[tokio::test(flavor = "current_thread")]
async fn reading_back_its_own_write_adds_no_conflict_but_an_add_does() {
    let (_, db) = database();
    let tx = db.begin().await.expect("begin");
    tx.set(b"mine", b"1").expect("set");
    assert_eq!(tx.get(b"mine").await.expect("get"), Some(b"1".to_vec()));
    put(&db, b"mine", b"theirs").await;
    tx.commit()
        .await
        .expect("the value read came from the transaction's own write");
    assert_eq!(value(&db, b"mine").await, Some(b"1".to_vec()));

    let tx = db.begin().await.expect("begin");
    tx.add_i64(b"sum", 1).expect("add");
    tx.get(b"sum").await.expect("get");
    put(&db, b"sum", &5i64.to_le_bytes()).await;
    assert_eq!(
        tx.commit()
            .await
            .expect_err("an add read back depends on the stored value"),
        StoreError::NotCommitted
    );
}
