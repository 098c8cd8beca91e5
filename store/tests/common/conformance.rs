//! The store's conformance suite: what every backend must do the same.
//!
//! Each check is a plain async function over a [`Database`]; a backend's test
//! file opens a database and calls every check once (`sqlite_conformance.rs`
//! for SQLite files and `sqlite::memory:`, `fdb_conformance.rs` for a
//! FoundationDB cluster when `FDB_CLUSTER_FILE` is set). The checks panic on
//! the first violation. Every check works in a fresh, uniquely named subspace
//! (`("conformance", CHECK, UUID)`), so they can share one database, run in
//! any order or concurrently, and run against a long-lived cluster.
//!
//! The names are stable; backend test files call them directly:
//!
//! | check | what must hold |
//! |---|---|
//! | [`check_concurrent_read_modify_write_loses_no_update`] | 16 tasks x 100 get-then-set increments of one counter end at exactly 1,600 |
//! | [`check_concurrent_atomic_adds_lose_no_update`] | 16 tasks x 100 atomic adds end at exactly the sum |
//! | [`check_reads_see_own_writes`] | inside a transaction, `get`/`get_range` see its own sets, clears, clear-ranges and adds |
//! | [`check_range_reads_are_ordered_and_paginated`] | forward, reverse, limit, streaming in small batches, prefix, manual pages, empty ranges |
//! | [`check_versionstamps_increase_in_commit_order`] | commit stamps strictly increase; versionstamped keys sort in commit order, not begin order; versionstamped values carry the commit's stamp |
//! | [`check_watch_fires_after_another_transaction_commits_a_change`] | a committed watch resolves once another transaction changes (or creates) the key |
//! | [`check_watch_ignores_a_write_of_the_same_value`] | rewriting the same value does not fire a watch; a later change does |
//! | [`check_watch_of_an_uncommitted_transaction_fails`] | a watch whose transaction is dropped resolves with an error |
//! | [`check_key_size_limit`] | a key over 10,000 bytes is refused naming `key_too_large`; nothing of the transaction is written |
//! | [`check_value_size_limit`] | a value over 100,000 bytes is refused naming `value_too_large`; nothing is written |
//! | [`check_transaction_size_limit`] | writes over 10,000,000 bytes are refused naming `transaction_too_large`; nothing is written |
//! | [`check_transaction_age_limit`] | a transaction older than 5 s is refused (`transaction_too_old`, retryable) and `run` retries it |
//! | [`check_run_once_applies_at_most_once`] | a second `run_once` with the same marker is `AlreadyApplied` and writes nothing |
//! | [`check_unknown_commit_results_do_not_apply_twice`] | under injected `commit_unknown_result` faults, marker-guarded transactions (`run_once` and a hand-written marker check) apply exactly once, while an unguarded one applies twice |
//! | [`check_stale_read_conflicts`] | a transaction whose read was overwritten before its commit fails with retryable `not_committed`; `run` retries it to the right value |
//! | [`check_errors_classify_retryable`] | conflicts, unknown results and age are retryable; limits are not |

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use meridian_store::fault::{FaultConfig, FaultyBackend};
use meridian_store::limits::{
    MAX_KEY_BYTES, MAX_TRANSACTION_AGE, MAX_TRANSACTION_BYTES, MAX_VALUE_BYTES,
};
use meridian_store::tuple::{Subspace, Versionstamp};
use meridian_store::{
    Database, KeyValue, Limit, Once, RangeOption, Retryable, StoreError, Transaction,
};

/// How long a test waits for an event before it declares failure. A guard
/// against hanging, never a way to wait for something.
pub const EVENT_GUARD: Duration = Duration::from_secs(30);

/// A fresh subspace for one run of one check.
pub fn fresh_space(check: &str) -> Subspace {
    Subspace::all().subspace(&("conformance", check, uuid::Uuid::new_v4().to_string()))
}

/// Decodes a little-endian i64 counter; a missing key counts as zero.
pub fn decode_i64(value: Option<&[u8]>) -> i64 {
    match value {
        None => 0,
        Some(bytes) => i64::from_le_bytes(
            bytes
                .try_into()
                .unwrap_or_else(|_| panic!("a counter holds 8 bytes, found {bytes:?}")),
        ),
    }
}

/// Reads a counter in its own transaction.
pub async fn read_i64(db: &Database, key: &[u8]) -> i64 {
    let key = key.to_vec();
    db.run(|tx, _| {
        let key = key.clone();
        async move { Ok::<_, StoreError>(decode_i64(tx.get(&key).await?.as_deref())) }
    })
    .await
    .expect("reading a counter")
}

/// Increments a counter by reading it and writing the sum (no atomic add):
/// only serializability keeps concurrent increments from being lost.
pub async fn increment(db: &Database, key: &[u8]) -> Result<i64, StoreError> {
    db.run(|tx, _| {
        let key = key.to_vec();
        async move {
            let next = decode_i64(tx.get(&key).await?.as_deref()) + 1;
            tx.set(&key, &next.to_le_bytes())?;
            Ok(next)
        }
    })
    .await
}

/// Every pair in `range`, in its own transaction.
pub async fn read_range(db: &Database, range: RangeOption) -> Vec<KeyValue> {
    db.run(|tx, _| {
        let range = range.clone();
        async move { tx.get_range(range).await }
    })
    .await
    .expect("reading a range")
}

/// Every pair of a subspace.
pub async fn read_space(db: &Database, space: &Subspace) -> Vec<KeyValue> {
    read_range(db, RangeOption::prefix(space.bytes())).await
}

async fn collect_stream(tx: &Transaction, range: RangeOption, batch: usize) -> Vec<KeyValue> {
    tx.range_stream(range, batch)
        .map(|kv| kv.expect("a streamed range read"))
        .collect()
        .await
}

fn assert_limit(err: &StoreError, limit: Limit, name: &str) {
    assert!(
        matches!(err, StoreError::LimitExceeded { limit: l, .. } if *l == limit),
        "expected the {name} limit, got {err:?}"
    );
    assert!(
        err.to_string().contains(name),
        "the error message names the limit {name}: {err}"
    );
    assert!(!err.is_retryable(), "a limit error is permanent: {err:?}");
}

fn assert_too_old(err: &StoreError) {
    assert!(
        matches!(err, StoreError::TransactionTooOld { .. }),
        "expected transaction_too_old, got {err:?}"
    );
    assert!(err.to_string().contains("transaction_too_old"), "{err}");
    assert!(err.is_retryable(), "transaction_too_old is retryable");
}

/// 16 concurrent tasks each increment one counter 100 times by reading it
/// and writing the sum; the counter ends at exactly 1,600.
pub async fn check_concurrent_read_modify_write_loses_no_update(db: &Database) {
    const TASKS: usize = 16;
    const INCREMENTS: usize = 100;
    let counter = fresh_space("rmw").pack(&("counter",));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let db = db.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..INCREMENTS {
                let seen = increment(&db, &counter).await?;
                // A task's own increments are serialized, so it sees the
                // counter grow.
                assert!(seen > last, "counter went from {last} to {seen}");
                last = seen;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await
            .expect("an incrementing task panicked")
            .expect("every increment eventually commits");
    }
    assert_eq!(read_i64(db, &counter).await, (TASKS * INCREMENTS) as i64);
}

/// 16 concurrent tasks add to one counter 100 times each with atomic adds
/// (3 and then -1, so negative addends work too); none is lost.
pub async fn check_concurrent_atomic_adds_lose_no_update(db: &Database) {
    const TASKS: usize = 16;
    const ADDS: usize = 100;
    let counter = fresh_space("atomic-add").pack(&("counter",));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let db = db.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..ADDS {
                let delta = if i % 2 == 0 { 3 } else { -1 };
                db.run(|tx, _| {
                    let counter = counter.clone();
                    async move { tx.add_i64(&counter, delta) }
                })
                .await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in tasks {
        task.await
            .expect("an adding task panicked")
            .expect("every add commits");
    }
    assert_eq!(read_i64(db, &counter).await, (TASKS * ADDS) as i64);
}

/// Reads inside a transaction see its own uncommitted sets, clears,
/// clear-ranges and atomic adds, merged in key order with committed data;
/// after commit, a new transaction sees the same.
pub async fn check_reads_see_own_writes(db: &Database) {
    let space = fresh_space("read-your-writes");
    let rows = space.subspace(&("rows",));
    let key = |i: i64| rows.pack(&(i,));
    let counter = space.pack(&("counter",));
    let committed: Vec<Vec<u8>> = (0..5).map(key).collect();
    db.run(|tx, _| {
        let committed = committed.clone();
        async move {
            for k in &committed {
                tx.set(k, b"old")?;
            }
            Ok::<_, StoreError>(())
        }
    })
    .await
    .expect("seeding committed rows");

    let pairs = |kvs: Vec<KeyValue>| -> Vec<(Vec<u8>, Vec<u8>)> {
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    };
    let row = |i: i64, v: &[u8]| (key(i), v.to_vec());
    let all_rows = || RangeOption::prefix(rows.bytes());

    let tx = db.begin().await.expect("begin");
    // set then get
    tx.set(&key(5), b"new").expect("set");
    assert_eq!(tx.get(&key(5)).await.expect("get"), Some(b"new".to_vec()));
    tx.set(&key(1), b"changed").expect("set");
    assert_eq!(
        tx.get(&key(1)).await.expect("get"),
        Some(b"changed".to_vec())
    );
    // set then get_range, both directions
    let expected = vec![
        row(0, b"old"),
        row(1, b"changed"),
        row(2, b"old"),
        row(3, b"old"),
        row(4, b"old"),
        row(5, b"new"),
    ];
    assert_eq!(
        pairs(tx.get_range(all_rows()).await.expect("range")),
        expected
    );
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(
        pairs(tx.get_range(all_rows().reverse(true)).await.expect("range")),
        reversed
    );
    // clear_range then get_range and get
    tx.clear_range(&key(2), &key(4)).expect("clear_range");
    assert_eq!(
        pairs(tx.get_range(all_rows()).await.expect("range")),
        vec![
            row(0, b"old"),
            row(1, b"changed"),
            row(4, b"old"),
            row(5, b"new")
        ]
    );
    assert_eq!(tx.get(&key(2)).await.expect("get"), None);
    assert_eq!(tx.get(&key(3)).await.expect("get"), None);
    // clear then get, and a limited read past the cleared keys
    tx.clear(&key(0)).expect("clear");
    assert_eq!(tx.get(&key(0)).await.expect("get"), None);
    assert_eq!(
        pairs(tx.get_range(all_rows().limit(2)).await.expect("range")),
        vec![row(1, b"changed"), row(4, b"old")]
    );
    assert_eq!(
        pairs(
            tx.get_range(all_rows().limit(2).reverse(true))
                .await
                .expect("range")
        ),
        vec![row(5, b"new"), row(4, b"old")]
    );
    // atomic adds then get
    tx.add_i64(&counter, 5).expect("add");
    tx.add_i64(&counter, 5).expect("add");
    assert_eq!(
        decode_i64(tx.get(&counter).await.expect("get").as_deref()),
        10
    );
    tx.commit().await.expect("commit");
    assert!(
        matches!(tx.get(&counter).await, Err(StoreError::TransactionFinished)),
        "a committed transaction cannot be used again"
    );

    let after = read_range(db, all_rows()).await;
    assert_eq!(
        pairs(after),
        vec![row(1, b"changed"), row(4, b"old"), row(5, b"new")]
    );
    assert_eq!(read_i64(db, &counter).await, 10);
}

/// Range reads return keys in order (or reverse order), honour limits and
/// `[begin, end)` bounds, stream correctly in batches smaller than the
/// range, stay inside a prefix, page by hand without gaps or repeats, and
/// return nothing for empty ranges.
pub async fn check_range_reads_are_ordered_and_paginated(db: &Database) {
    const N: i64 = 50;
    let space = fresh_space("range");
    let rows = space.subspace(&("r",));
    let key = |i: i64| rows.pack(&(i,));
    let value = |i: i64| format!("value-{i}").into_bytes();
    let keys: Vec<Vec<u8>> = (0..N).map(key).collect();
    let before = space.pack(&("q", 1));
    let after = space.pack(&("s", 1));
    db.run(|tx, _| {
        let keys = keys.clone();
        let (before, after) = (before.clone(), after.clone());
        async move {
            // Written out of order on purpose.
            for (i, k) in keys.iter().enumerate().rev() {
                tx.set(k, &value(i as i64))?;
            }
            tx.set(&before, b"before")?;
            tx.set(&after, b"after")?;
            Ok::<_, StoreError>(())
        }
    })
    .await
    .expect("seeding the range");

    let indices = |kvs: &[KeyValue]| -> Vec<i64> {
        kvs.iter()
            .map(|kv| {
                let (i,) = rows.unpack::<(i64,)>(&kv.key).expect("a row key");
                assert_eq!(kv.value, value(i), "the value read belongs to its key");
                i
            })
            .collect()
    };
    let up = |from: i64, to: i64| (from..to).collect::<Vec<_>>();
    let down = |from: i64, to: i64| (to..from).rev().collect::<Vec<_>>();
    let (begin, end) = rows.range();
    let whole = || RangeOption::new(begin.clone(), end.clone());

    let tx = db.begin().await.expect("begin");
    let read = |range: RangeOption| {
        let tx = tx.clone();
        async move { tx.get_range(range).await.expect("range read") }
    };
    assert_eq!(indices(&read(whole()).await), up(0, N), "forward");
    assert_eq!(
        indices(&read(whole().reverse(true)).await),
        down(N, 0),
        "reverse"
    );
    assert_eq!(indices(&read(whole().limit(10)).await), up(0, 10), "limit");
    assert_eq!(
        indices(&read(whole().limit(10).reverse(true)).await),
        down(N, N - 10),
        "reverse limit"
    );
    assert_eq!(
        indices(&read(whole().limit(N as usize + 10)).await),
        up(0, N),
        "a limit past the end"
    );
    assert_eq!(
        indices(&read(RangeOption::new(key(10), key(20))).await),
        up(10, 20),
        "begin inclusive, end exclusive"
    );
    assert_eq!(
        indices(&read(RangeOption::new(key(10), key(20)).reverse(true)).await),
        down(20, 10),
        "a bounded reverse read"
    );
    assert_eq!(
        indices(&read(RangeOption::prefix(rows.bytes())).await),
        up(0, N),
        "a prefix range excludes its neighbours"
    );
    let everything = read(RangeOption::prefix(space.bytes())).await;
    assert_eq!(everything.len(), N as usize + 2);
    assert_eq!(everything.first().map(|kv| &kv.key), Some(&before));
    assert_eq!(everything.last().map(|kv| &kv.key), Some(&after));

    // Streaming in batches of 7: 8 round trips for 50 keys.
    assert_eq!(indices(&collect_stream(&tx, whole(), 7).await), up(0, N));
    assert_eq!(
        indices(&collect_stream(&tx, whole().reverse(true), 7).await),
        down(N, 0)
    );
    assert_eq!(
        indices(&collect_stream(&tx, whole().limit(23), 7).await),
        up(0, 23)
    );
    assert_eq!(
        indices(&collect_stream(&tx, whole().limit(23).reverse(true), 7).await),
        down(N, N - 23)
    );
    assert_eq!(indices(&collect_stream(&tx, whole(), 1).await), up(0, N));
    assert_eq!(indices(&collect_stream(&tx, whole(), 50).await), up(0, N));

    // Paging by hand: continue after the last key of each page.
    let mut pages = Vec::new();
    let mut from = begin.clone();
    loop {
        let page = read(RangeOption::new(from.clone(), end.clone()).limit(8)).await;
        let Some(last) = page.last() else { break };
        from = last.key.clone();
        from.push(0);
        pages.push(indices(&page));
    }
    assert_eq!(pages.len(), 7, "50 keys in pages of 8");
    assert!(pages[..6].iter().all(|p| p.len() == 8));
    assert_eq!(pages.concat(), up(0, N), "pages neither skip nor repeat");
    // Paging backwards.
    let mut pages = Vec::new();
    let mut to = end.clone();
    loop {
        let page = read(
            RangeOption::new(begin.clone(), to.clone())
                .limit(8)
                .reverse(true),
        )
        .await;
        let Some(last) = page.last() else { break };
        to = last.key.clone();
        pages.push(indices(&page));
    }
    assert_eq!(pages.concat(), down(N, 0));

    // Empty ranges.
    let empty = space.subspace(&("empty",));
    assert!(read(RangeOption::prefix(empty.bytes())).await.is_empty());
    assert!(read(RangeOption::new(key(7), key(7))).await.is_empty());
    assert!(
        collect_stream(&tx, RangeOption::prefix(empty.bytes()), 3)
            .await
            .is_empty()
    );
    assert!(
        read(RangeOption::new(key(7), key(8)).limit(1).reverse(true))
            .await
            .len()
            == 1
    );
    tx.commit().await.expect("a read-only commit");
}

/// Commits report strictly increasing versionstamps; versionstamped keys
/// sort in commit order even when the transactions began in the other
/// order; a versionstamped value holds the stamp of its commit.
pub async fn check_versionstamps_increase_in_commit_order(db: &Database) {
    const COMMITS: u32 = 20;
    let space = fresh_space("versionstamps");
    let log = space.subspace(&("log",));
    let template = log.pack_with_versionstamp(&(Versionstamp::incomplete(0),));

    let mut stamps = Vec::new();
    for i in 0..COMMITS {
        let (_, info) = db
            .run_with_info(|tx, _| {
                let template = template.clone();
                async move { tx.set_versionstamped_key(&template, &i.to_le_bytes()) }
            })
            .await
            .expect("a versionstamped commit");
        stamps.push(
            info.versionstamp
                .expect("a versionstamped commit reports its stamp"),
        );
    }
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "commit stamps strictly increase: {stamps:?}"
    );
    let logged = read_space(db, &log).await;
    assert_eq!(
        logged.len(),
        COMMITS as usize,
        "every stamped key is distinct"
    );
    for (i, kv) in logged.iter().enumerate() {
        assert_eq!(
            kv.value,
            (i as u32).to_le_bytes(),
            "keys sort in commit order"
        );
        let (stamp,) = log
            .unpack::<(Versionstamp,)>(&kv.key)
            .expect("a versionstamped key unpacks");
        assert!(stamp.is_complete());
        assert_eq!(
            stamp.transaction_version(),
            &stamps[i][..],
            "the key holds its commit's stamp"
        );
        assert_eq!(stamp.user_version(), 0);
    }

    // Began first, committed last: sorts last.
    let order = space.subspace(&("order",));
    let template = order.pack_with_versionstamp(&(Versionstamp::incomplete(0),));
    let first = db.begin().await.expect("begin");
    let second = db.begin().await.expect("begin");
    first
        .set_versionstamped_key(&template, b"began first")
        .expect("stamped set");
    second
        .set_versionstamped_key(&template, b"began second")
        .expect("stamped set");
    let second_info = second.commit().await.expect("commit");
    let first_info = first.commit().await.expect("commit");
    let (second_stamp, first_stamp) = (
        second_info.versionstamp.expect("stamp"),
        first_info.versionstamp.expect("stamp"),
    );
    assert!(
        second_stamp < first_stamp,
        "the later commit has the larger stamp"
    );
    assert!(*stamps.last().expect("stamps") < second_stamp);
    let values: Vec<Vec<u8>> = read_space(db, &order)
        .await
        .into_iter()
        .map(|kv| kv.value)
        .collect();
    assert_eq!(
        values,
        vec![b"began second".to_vec(), b"began first".to_vec()]
    );

    // A versionstamped value.
    let stamped_value_key = space.pack(&("value",));
    let mut value_template = b"v:".to_vec();
    value_template.extend_from_slice(&[0xff; 10]);
    value_template.extend_from_slice(&2u32.to_le_bytes());
    let (_, info) = db
        .run_with_info(|tx, _| {
            let (key, value) = (stamped_value_key.clone(), value_template.clone());
            async move { tx.set_versionstamped_value(&key, &value) }
        })
        .await
        .expect("a versionstamped value commit");
    let stamp = info.versionstamp.expect("stamp");
    assert!(first_stamp < stamp);
    let stored = db
        .run(|tx, _| {
            let key = stamped_value_key.clone();
            async move { tx.get(&key).await }
        })
        .await
        .expect("get")
        .expect("the stamped value exists");
    let mut expected = b"v:".to_vec();
    expected.extend_from_slice(&stamp);
    assert_eq!(stored, expected);

    // An explicitly requested stamp on a plain write.
    let (_, info) = db
        .run_with_info(|tx, _| {
            let key = space.pack(&("plain",));
            async move {
                tx.request_versionstamp();
                tx.set(&key, b"x")
            }
        })
        .await
        .expect("a plain commit");
    assert!(stamp < info.versionstamp.expect("a requested stamp is reported"));
}

/// A watch registered by a committed transaction resolves once another
/// transaction changes the key, and once another transaction creates a
/// key that was absent.
pub async fn check_watch_fires_after_another_transaction_commits_a_change(db: &Database) {
    let space = fresh_space("watch-fires");
    let present = space.pack(&("present",));
    let absent = space.pack(&("absent",));
    set(db, &present, b"v1").await;

    let tx = db.begin().await.expect("begin");
    let on_present = tx.watch(&present).expect("watch");
    let on_absent = tx.watch(&absent).expect("watch");
    tx.commit().await.expect("committing the watches");

    set(db, &present, b"v2").await;
    tokio::time::timeout(EVENT_GUARD, on_present)
        .await
        .expect("the watch fires after the change is committed")
        .expect("a fired watch reports success");
    set(db, &absent, b"created").await;
    tokio::time::timeout(EVENT_GUARD, on_absent)
        .await
        .expect("the watch fires after the key is created")
        .expect("a fired watch reports success");
}

/// Rewriting a watched key with the value it already has does not fire the
/// watch; a real change afterwards does. (Observed without waiting: a second
/// watch, on a key changed after the same-value write, fires first.)
pub async fn check_watch_ignores_a_write_of_the_same_value(db: &Database) {
    let space = fresh_space("watch-same-value");
    let same = space.pack(&("same",));
    let probe = space.pack(&("probe",));
    set(db, &same, b"v1").await;
    set(db, &probe, b"v1").await;

    let tx = db.begin().await.expect("begin");
    let mut on_same = tx.watch(&same).expect("watch");
    let on_probe = tx.watch(&probe).expect("watch");
    tx.commit().await.expect("committing the watches");

    set(db, &same, b"v1").await;
    set(db, &probe, b"v2").await;
    tokio::time::timeout(EVENT_GUARD, on_probe)
        .await
        .expect("the probe watch fires")
        .expect("a fired watch reports success");
    assert!(
        (&mut on_same).now_or_never().is_none(),
        "a write of the same value does not fire the watch"
    );
    set(db, &same, b"v3").await;
    tokio::time::timeout(EVENT_GUARD, on_same)
        .await
        .expect("the watch fires after a real change")
        .expect("a fired watch reports success");
}

/// A watch whose transaction is dropped without committing resolves with an
/// error, and the transaction's writes are not applied.
pub async fn check_watch_of_an_uncommitted_transaction_fails(db: &Database) {
    let space = fresh_space("watch-dropped");
    let key = space.pack(&("k",));
    let tx = db.begin().await.expect("begin");
    let watch = tx.watch(&key).expect("watch");
    tx.set(&key, b"never committed").expect("set");
    drop(tx);
    let outcome = tokio::time::timeout(EVENT_GUARD, watch)
        .await
        .expect("the watch of a dropped transaction resolves");
    assert!(
        outcome.is_err(),
        "it resolves with an error, got {outcome:?}"
    );
    assert!(read_space(db, &space).await.is_empty());
}

async fn set(db: &Database, key: &[u8], value: &[u8]) {
    db.run(|tx, _| {
        let (key, value) = (key.to_vec(), value.to_vec());
        async move { tx.set(&key, &value) }
    })
    .await
    .expect("a set commits");
}

fn sized_key(space: &Subspace, len: usize) -> Vec<u8> {
    let mut key = space.bytes().to_vec();
    assert!(key.len() < len);
    key.resize(len, b'k');
    key
}

/// A key of 10,000 bytes is accepted; one byte more is refused, on write and
/// on read, naming `key_too_large`, and the transaction cannot commit any of
/// its other writes.
pub async fn check_key_size_limit(db: &Database) {
    let space = fresh_space("key-limit");
    let largest = sized_key(&space, MAX_KEY_BYTES);
    let too_large = sized_key(&space, MAX_KEY_BYTES + 1);

    let tx = db.begin().await.expect("begin");
    tx.set(&space.pack(&("fine",)), b"x")
        .expect("a normal write");
    let err = tx
        .set(&too_large, b"v")
        .expect_err("an oversize key is refused");
    assert_limit(&err, Limit::KeySize, "key_too_large");
    assert!(matches!(err, StoreError::LimitExceeded { actual, max, .. }
        if actual == MAX_KEY_BYTES + 1 && max == MAX_KEY_BYTES));
    let err = tx
        .get(&too_large)
        .await
        .expect_err("reading an oversize key is refused");
    assert_limit(&err, Limit::KeySize, "key_too_large");
    let err = tx
        .commit()
        .await
        .expect_err("a transaction with a refused write cannot commit");
    assert_limit(&err, Limit::KeySize, "key_too_large");
    assert!(
        read_space(db, &space).await.is_empty(),
        "nothing was written"
    );

    set(db, &largest, b"at the limit").await;
    let kvs = read_space(db, &space).await;
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].key, largest, "the key is stored whole");
}

/// A value of 100,000 bytes is accepted; one byte more is refused naming
/// `value_too_large` (plain and versionstamped), and nothing of the
/// transaction is written.
pub async fn check_value_size_limit(db: &Database) {
    let space = fresh_space("value-limit");
    let key = space.pack(&("k",));
    let tx = db.begin().await.expect("begin");
    tx.set(&space.pack(&("fine",)), b"x")
        .expect("a normal write");
    let err = tx
        .set(&key, &vec![7u8; MAX_VALUE_BYTES + 1])
        .expect_err("an oversize value is refused");
    assert_limit(&err, Limit::ValueSize, "value_too_large");
    let mut stamped = vec![0u8; MAX_VALUE_BYTES + 1];
    stamped.extend_from_slice(&0u32.to_le_bytes());
    let err = tx
        .set_versionstamped_value(&key, &stamped)
        .expect_err("an oversize versionstamped value is refused");
    assert_limit(&err, Limit::ValueSize, "value_too_large");
    let err = tx
        .commit()
        .await
        .expect_err("a transaction with a refused write cannot commit");
    assert_limit(&err, Limit::ValueSize, "value_too_large");
    assert!(
        read_space(db, &space).await.is_empty(),
        "nothing was written"
    );

    let largest = vec![9u8; MAX_VALUE_BYTES];
    set(db, &key, &largest).await;
    let kvs = read_space(db, &space).await;
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].value, largest, "the value is stored whole");
}

/// Writes adding up to more than 10,000,000 bytes are refused naming
/// `transaction_too_large` (when the write crosses the limit, or at the
/// latest at commit), and none of them is written.
pub async fn check_transaction_size_limit(db: &Database) {
    let space = fresh_space("transaction-limit");
    let value = vec![1u8; MAX_VALUE_BYTES];
    let writes = MAX_TRANSACTION_BYTES / MAX_VALUE_BYTES + 20;
    let tx = db.begin().await.expect("begin");
    let mut total = 0;
    for i in 0..writes {
        let key = space.pack(&("big", i as i64));
        total += key.len() + value.len();
        if let Err(err) = tx.set(&key, &value) {
            assert_limit(&err, Limit::TransactionSize, "transaction_too_large");
            assert!(
                total > MAX_TRANSACTION_BYTES,
                "write {i} was refused at {total} bytes, within the limit"
            );
            break;
        }
    }
    let err = tx
        .commit()
        .await
        .expect_err("an oversize transaction cannot commit");
    assert_limit(&err, Limit::TransactionSize, "transaction_too_large");
    assert!(
        read_space(db, &space).await.is_empty(),
        "nothing was written"
    );
}

/// A transaction older than 5 s is refused on read, write and commit with
/// retryable `transaction_too_old` and writes nothing; `run` retries a
/// closure that hit the limit and its next attempt commits.
pub async fn check_transaction_age_limit(db: &Database) {
    let space = fresh_space("age-limit");
    let key = space.pack(&("k",));
    let tx = db.begin().await.expect("begin");
    tx.set(&key, b"written while young").expect("set");
    assert!(tx.get(&key).await.is_ok(), "a young transaction reads");
    tx.backdate(MAX_TRANSACTION_AGE + Duration::from_secs(1));
    assert!(tx.age() > MAX_TRANSACTION_AGE);
    assert_too_old(
        &tx.get(&key)
            .await
            .expect_err("an old transaction cannot read"),
    );
    assert_too_old(
        &tx.set(&key, b"x")
            .expect_err("an old transaction cannot write"),
    );
    assert_too_old(
        &tx.commit()
            .await
            .expect_err("an old transaction cannot commit"),
    );
    drop(tx);
    assert!(
        read_space(db, &space).await.is_empty(),
        "nothing was written"
    );

    let attempts = Arc::new(AtomicUsize::new(0));
    db.run(|tx, _| {
        let (key, attempts) = (key.clone(), attempts.clone());
        async move {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                tx.backdate(MAX_TRANSACTION_AGE + Duration::from_secs(1));
            }
            tx.set(&key, b"retried")
        }
    })
    .await
    .expect("run retries a transaction that grew too old");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let kvs = read_space(db, &space).await;
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].value, b"retried");
}

async fn increment_once(db: &Database, marker: &[u8], counter: &[u8]) -> Once<i64> {
    db.run_once(marker, |tx| {
        let counter = counter.to_vec();
        async move {
            let next = decode_i64(tx.get(&counter).await?.as_deref()) + 1;
            tx.set(&counter, &next.to_le_bytes())?;
            Ok::<_, StoreError>(next)
        }
    })
    .await
    .expect("run_once commits")
}

/// `run_once` applies its closure once per marker: calling it again with the
/// same marker (what a caller does when it cannot know whether its commit
/// landed) returns `AlreadyApplied` and writes nothing.
pub async fn check_run_once_applies_at_most_once(db: &Database) {
    let space = fresh_space("run-once");
    let counter = space.pack(&("counter",));
    let marker = space.pack(&("marker", "operation-1"));
    assert_eq!(
        increment_once(db, &marker, &counter).await,
        Once::Applied(1)
    );
    assert_eq!(
        increment_once(db, &marker, &counter).await,
        Once::AlreadyApplied
    );
    assert_eq!(read_i64(db, &counter).await, 1);
    let other = space.pack(&("marker", "operation-2"));
    assert_eq!(increment_once(db, &other, &counter).await, Once::Applied(2));
    assert_eq!(read_i64(db, &counter).await, 2);
}

/// Under injected commit faults (`not_committed`, `commit_unknown_result`
/// before and after applying), increments guarded by a marker key apply
/// exactly once per operation — through `run_once`, and through `run` with a
/// closure that checks its own marker when told the previous attempt may
/// have committed — while unguarded increments apply once more for every
/// unknown result that hid a successful commit.
pub async fn check_unknown_commit_results_do_not_apply_twice(db: &Database) {
    const OPERATIONS: i64 = 40;
    let space = fresh_space("unknown-result");
    let faulty = Arc::new(FaultyBackend::new(
        db.backend(),
        FaultConfig {
            not_committed: 0.1,
            unknown_before: 0.1,
            unknown_after: 0.3,
            ..FaultConfig::none()
        },
        7,
    ));
    let chaotic = Database::new(faulty.clone());

    // run_once
    let counter = space.pack(&("run-once",));
    let mut already = 0;
    let unknown_before_phase = faulty.stats().unknown_after;
    for op in 0..OPERATIONS {
        let marker = space.pack(&("marker", "run-once", op));
        match increment_once(&chaotic, &marker, &counter).await {
            Once::Applied(_) => {}
            Once::AlreadyApplied => already += 1,
        }
    }
    let hidden = faulty.stats().unknown_after - unknown_before_phase;
    assert!(hidden > 0, "the fault seed hides some successful commits");
    assert!(
        already > 0,
        "some retries found their marker already written"
    );
    assert!(already as u64 <= hidden);
    assert_eq!(
        read_i64(db, &counter).await,
        OPERATIONS,
        "no operation applied twice"
    );

    // The same by hand: the closure checks its marker when an earlier
    // attempt may have committed.
    let counter = space.pack(&("by-hand",));
    for op in 0..OPERATIONS {
        let marker = space.pack(&("marker", "by-hand", op));
        chaotic
            .run(|tx, maybe_committed| {
                let (marker, counter) = (marker.clone(), counter.clone());
                async move {
                    if maybe_committed.0 && tx.get(&marker).await?.is_some() {
                        return Ok::<_, StoreError>(false);
                    }
                    let next = decode_i64(tx.get(&counter).await?.as_deref()) + 1;
                    tx.set(&counter, &next.to_le_bytes())?;
                    tx.set(&marker, b"")?;
                    Ok(true)
                }
            })
            .await
            .expect("a marker-guarded transaction commits");
    }
    assert_eq!(
        read_i64(db, &counter).await,
        OPERATIONS,
        "no operation applied twice"
    );

    // Without a marker, every hidden success is applied again by the retry.
    let counter = space.pack(&("unguarded",));
    let hidden_before = faulty.stats().unknown_after;
    for _ in 0..OPERATIONS {
        increment(&chaotic, &counter)
            .await
            .expect("an unguarded transaction commits");
    }
    let hidden = faulty.stats().unknown_after - hidden_before;
    assert!(hidden > 0);
    assert_eq!(read_i64(db, &counter).await, OPERATIONS + hidden as i64);
}

/// Transaction A reads a key, B overwrites it and commits, A writes it and
/// tries to commit: A fails with retryable `not_committed`, applies nothing,
/// and its watch fails. Through `run`, the same interleaving is retried and
/// ends with the right value.
pub async fn check_stale_read_conflicts(db: &Database) {
    let space = fresh_space("stale-read");
    let key = space.pack(&("k",));
    set(db, &key, &1i64.to_le_bytes()).await;

    let a = db.begin().await.expect("begin");
    let seen = decode_i64(a.get(&key).await.expect("read").as_deref());
    assert_eq!(seen, 1);
    let watch = a.watch(&key).expect("watch");
    set(db, &key, &(seen + 10).to_le_bytes()).await;
    a.set(&key, &(seen + 1).to_le_bytes()).expect("set");
    let err = a.commit().await.expect_err("a stale read conflicts");
    assert_eq!(err, StoreError::NotCommitted);
    assert!(err.is_retryable());
    assert!(
        !err.maybe_committed(),
        "a conflict is known not to have committed"
    );
    drop(a);
    assert_eq!(
        read_i64(db, &key).await,
        11,
        "the loser's write is not applied"
    );
    let watch = tokio::time::timeout(EVENT_GUARD, watch)
        .await
        .expect("the watch of a failed commit resolves");
    assert!(watch.is_err(), "the watch of a failed commit fails");

    let attempts = Arc::new(AtomicUsize::new(0));
    let result = db
        .run(|tx, _| {
            let (key, attempts, db) = (key.clone(), attempts.clone(), db.clone());
            async move {
                let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                let seen = decode_i64(tx.get(&key).await?.as_deref());
                if attempt == 1 {
                    // Another transaction overwrites what this one read.
                    set(&db, &key, &(seen + 100).to_le_bytes()).await;
                }
                tx.set(&key, &(seen + 1).to_le_bytes())?;
                Ok::<_, StoreError>(seen + 1)
            }
        })
        .await
        .expect("run retries the conflict");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "one conflict, one retry"
    );
    assert_eq!(result, 112, "the retry read the other transaction's write");
    assert_eq!(read_i64(db, &key).await, 112);
}

/// Conflicts, unknown commit results and old transactions are retryable;
/// limit errors and misuse are not.
pub async fn check_errors_classify_retryable(_db: &Database) {
    for err in [
        StoreError::NotCommitted,
        StoreError::CommitUnknownResult,
        StoreError::TransactionTooOld { limit_ms: 5_000 },
    ] {
        assert!(err.is_retryable(), "{err:?} is retryable");
    }
    assert!(StoreError::CommitUnknownResult.maybe_committed());
    for (limit, max) in [
        (Limit::KeySize, MAX_KEY_BYTES),
        (Limit::ValueSize, MAX_VALUE_BYTES),
        (Limit::TransactionSize, MAX_TRANSACTION_BYTES),
    ] {
        let err = StoreError::LimitExceeded {
            limit,
            actual: max + 1,
            max,
        };
        assert!(!err.is_retryable(), "{err:?} is permanent");
        assert!(!err.maybe_committed());
    }
    assert!(!StoreError::TransactionFinished.is_retryable());
    assert!(!StoreError::InvalidVersionstamp("bad".into()).is_retryable());
}
