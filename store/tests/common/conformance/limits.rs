//! The FoundationDB limits and the retryable/permanent split of errors.

use super::*;

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
