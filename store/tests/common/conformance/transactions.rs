//! Serializability, read-your-writes, conflicts and commit-unknown handling.

use super::*;

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

/// `get_many` returns the values of its keys in the order asked, `None`
/// for missing ones, sees the transaction's own writes, answers later `get`s
/// of its keys (writes after it win), and adds read conflicts like `get`: a
/// transaction whose batched read was overwritten before its commit fails
/// with retryable `not_committed`.
pub async fn check_get_many_reads_in_order_with_own_writes_and_conflicts(db: &Database) {
    let space = fresh_space("get-many");
    let key = |i: i64| space.pack(&("k", i));
    db.run(|tx, _| {
        let (a, b) = (key(1), key(3));
        async move {
            tx.set(&a, b"one")?;
            tx.set(&b, b"three")?;
            Ok::<_, StoreError>(())
        }
    })
    .await
    .expect("seeding");

    let tx = db.begin().await.expect("begin");
    tx.set(&key(2), b"two").expect("set");
    tx.clear(&key(3)).expect("clear");
    let got = tx
        .get_many(&[key(3), key(1), key(4), key(2)])
        .await
        .expect("get_many");
    assert_eq!(
        got,
        vec![None, Some(b"one".to_vec()), None, Some(b"two".to_vec())],
        "values in the order asked, own sets and clears seen, missing keys as None"
    );
    assert_eq!(
        tx.get_many(&[]).await.expect("empty"),
        Vec::<Option<Vec<u8>>>::new()
    );
    // Values read in a batch answer later gets, and writes after the batch
    // are seen over them.
    tx.prefetch(&[key(1), key(5)]).await.expect("prefetch");
    assert_eq!(tx.get(&key(1)).await.expect("get"), Some(b"one".to_vec()));
    tx.set(&key(1), b"uno").expect("set");
    assert_eq!(tx.get(&key(1)).await.expect("get"), Some(b"uno".to_vec()));
    tx.set(&key(5), b"five").expect("set");
    assert_eq!(tx.get(&key(5)).await.expect("get"), Some(b"five".to_vec()));
    tx.clear_range(&key(0), &key(9)).expect("clear_range");
    assert_eq!(tx.get(&key(5)).await.expect("get"), None);
    tx.add_i64(&key(7), 1).expect("add");
    assert_eq!(tx.get_many(&[key(7)]).await.expect("get_many").len(), 1);
    tx.add_i64(&key(7), 1).expect("add");
    assert_eq!(
        tx.get(&key(7)).await.expect("get"),
        Some(2i64.to_le_bytes().to_vec()),
        "an atomic add after a batched read is seen"
    );
    drop(tx);

    // A batched read conflicts with a write that commits before the reader.
    let reader = db.begin().await.expect("begin");
    let seen = reader.get_many(&[key(1)]).await.expect("get_many");
    assert_eq!(seen, vec![Some(b"one".to_vec())]);
    db.run(|tx, _| {
        let k = key(1);
        async move { tx.set(&k, b"changed") }
    })
    .await
    .expect("overwrite");
    reader.set(&key(9), b"derived").expect("set");
    match reader.commit().await {
        Err(e) => assert!(e.is_retryable(), "a conflict is retryable, got {e}"),
        Ok(_) => panic!("a transaction whose get_many read was overwritten must not commit"),
    }
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
