//! The store's conformance suite: what every backend must do the same.
//!
//! Each check is a plain async function over a [`Database`]; a backend's test
//! file opens a database and calls every check once (`sqlite_conformance.rs`
//! for SQLite files and `sqlite::memory:`, `memory_conformance.rs` for the
//! in-memory backend, `fdb_conformance.rs` for a
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
//! | [`check_get_many_reads_in_order_with_own_writes_and_conflicts`] | `get_many` answers in the order asked, sees own writes, and conflicts like `get` |
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

mod limits;
mod ranges;
mod stamps_and_watches;
mod transactions;

// Each backend's test file calls the checks by name; a file that uses only
// some of them must not warn about the rest.
#[allow(unused_imports)]
pub use limits::*;
#[allow(unused_imports)]
pub use ranges::*;
#[allow(unused_imports)]
pub use stamps_and_watches::*;
#[allow(unused_imports)]
pub use transactions::*;
