//! The transaction handle every caller uses, on every backend.
//!
//! Owns the checks that must hold the same everywhere: key, value and
//! transaction size limits, the 5 s age limit, and use-after-commit. It must
//! never talk to a database itself; that is the backend's job.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};

use crate::backend::{BackendTx, CommitInfo, KeyValue, Mutation, RangeRequest, WatchFuture};
use crate::clock::{Instant, SharedClock};
use crate::error::{Result, StoreError};
use crate::limits::{self, MAX_TRANSACTION_AGE};

/// Default number of pairs fetched per round trip when a range is streamed.
pub const DEFAULT_RANGE_BATCH: usize = 1_000;

/// A range to read: `[begin, end)` with a limit and a direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeOption {
    /// First key (inclusive).
    pub begin: Vec<u8>,
    /// End (exclusive).
    pub end: Vec<u8>,
    /// At most this many pairs; 0 means all of them.
    pub limit: usize,
    /// Last key first.
    pub reverse: bool,
    /// Read without adding a read conflict.
    pub snapshot: bool,
}

impl RangeOption {
    /// Every key in `[begin, end)`, ascending.
    pub fn new(begin: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        RangeOption {
            begin: begin.into(),
            end: end.into(),
            limit: 0,
            reverse: false,
            snapshot: false,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        RangeOption::new(prefix.to_vec(), strinc(prefix))
    }

    /// Limits the number of pairs returned.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Reads from the end of the range backwards.
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    /// Reads without adding a read conflict.
    pub fn snapshot(mut self, snapshot: bool) -> Self {
        self.snapshot = snapshot;
        self
    }
}

impl From<(Vec<u8>, Vec<u8>)> for RangeOption {
    fn from((begin, end): (Vec<u8>, Vec<u8>)) -> Self {
        RangeOption::new(begin, end)
    }
}

/// The first key greater than every key that starts with `prefix` (the
/// FoundationDB `strinc`). A prefix of only 0xff bytes has no such key; the
/// end of the whole key space is returned for it.
pub fn strinc(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xff {
            out.push(last + 1);
            return out;
        }
    }
    vec![0xff]
}

/// A handle on one transaction. Cheap to clone: clones share the transaction,
/// which is how `Database::run` hands it to a closure and still commits it.
#[derive(Clone)]
pub struct Transaction {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Box<dyn BackendTx>,
    /// The database's clock: a transaction's age is measured on it, so in
    /// the simulation it is simulated time, never the host's load.
    clock: SharedClock,
    started: Instant,
    /// Added to the real age (see `Transaction::backdate`), in nanoseconds.
    backdated_nanos: AtomicU64,
    written_bytes: AtomicUsize,
    finished: AtomicBool,
    /// The first write refused for a limit. Like FoundationDB's deferred
    /// error, it dooms the transaction: its commit fails with the same error,
    /// so a caller that ignored the refusal cannot commit the other writes.
    refused: parking_lot::Mutex<Option<StoreError>>,
    /// Values read in batches ([`Transaction::get_many`],
    /// [`Transaction::prefetch`]), so a later `get` of one of them costs no
    /// round trip. A write to a cached key drops it (the backend, which
    /// sees the write, answers from then on).
    cache: parking_lot::Mutex<std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl Transaction {
    pub(crate) fn new(backend: Box<dyn BackendTx>, clock: SharedClock) -> Self {
        let started = clock.now();
        Transaction {
            inner: Arc::new(Inner {
                backend,
                clock,
                started,
                backdated_nanos: AtomicU64::new(0),
                written_bytes: AtomicUsize::new(0),
                finished: AtomicBool::new(false),
                refused: parking_lot::Mutex::new(None),
                cache: parking_lot::Mutex::new(std::collections::BTreeMap::new()),
            }),
        }
    }

    fn check_usable(&self) -> Result<()> {
        if self.inner.finished.load(Ordering::Acquire) {
            return Err(StoreError::TransactionFinished);
        }
        if self.age() > MAX_TRANSACTION_AGE {
            return Err(StoreError::TransactionTooOld {
                limit_ms: MAX_TRANSACTION_AGE.as_millis() as u64,
            });
        }
        Ok(())
    }

    fn account(&self, bytes: usize) -> Result<()> {
        let total = self.inner.written_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        limits::check_transaction_size(total)
    }

    /// Remembers the first refused write (see `Inner::refused`).
    fn refuse<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e @ StoreError::LimitExceeded { .. }) = &result {
            self.inner.refused.lock().get_or_insert_with(|| e.clone());
        }
        result
    }

    /// Reads one key.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_usable()?;
        limits::check_key(key)?;
        if let Some(v) = self.inner.cache.lock().get(key) {
            return Ok(v.clone());
        }
        self.inner.backend.get(key, false).await
    }

    /// Reads one key without adding a read conflict.
    pub async fn get_snapshot(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check_usable()?;
        limits::check_key(key)?;
        if let Some(v) = self.inner.cache.lock().get(key) {
            return Ok(v.clone());
        }
        self.inner.backend.get(key, true).await
    }

    /// Reads `keys` in one round trip (as [`Transaction::get_many`]) so that
    /// the `get`s of them that follow are answered without one: for code
    /// that reads key by key but knows its keys up front.
    pub async fn prefetch(&self, keys: &[Vec<u8>]) -> Result<()> {
        let missing: Vec<Vec<u8>> = {
            let cache = self.inner.cache.lock();
            keys.iter()
                .filter(|k| !cache.contains_key(*k))
                .cloned()
                .collect()
        };
        self.get_many(&missing).await.map(|_| ())
    }

    fn forget(&self, key: &[u8]) {
        self.inner.cache.lock().remove(key);
    }

    /// Reads several keys in one round trip where the backend can (SQLite),
    /// concurrently where it cannot batch (FoundationDB); the values come
    /// back in the order of `keys`. Each key adds its read conflict, as
    /// [`Transaction::get`] does.
    pub async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.check_usable()?;
        for key in keys {
            limits::check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.inner.backend.get_many(keys, false).await?;
        let mut cache = self.inner.cache.lock();
        for (k, v) in keys.iter().zip(&values) {
            cache.insert(k.clone(), v.clone());
        }
        Ok(values)
    }

    /// [`Transaction::get_many`] without read conflicts.
    pub async fn get_many_snapshot(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.check_usable()?;
        for key in keys {
            limits::check_key(key)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.backend.get_many(keys, true).await
    }

    /// Reads a range. With a limit of 0 every pair is returned, fetched in
    /// batches of [`DEFAULT_RANGE_BATCH`].
    pub async fn get_range(&self, range: impl Into<RangeOption>) -> Result<Vec<KeyValue>> {
        let range = range.into();
        let mut out = Vec::new();
        let mut pages = self.range_stream(range, DEFAULT_RANGE_BATCH);
        while let Some(kv) = pages.next().await {
            out.push(kv?);
        }
        Ok(out)
    }

    /// Streams a range, fetching `batch` pairs per round trip, so a large range
    /// is never held in memory at once.
    pub fn range_stream(
        &self,
        range: RangeOption,
        batch: usize,
    ) -> BoxStream<'static, Result<KeyValue>> {
        let batch = batch.max(1);
        let tx = self.clone();
        let state = RangeCursor {
            begin: range.begin,
            end: range.end,
            remaining: if range.limit == 0 {
                usize::MAX
            } else {
                range.limit
            },
            reverse: range.reverse,
            snapshot: range.snapshot,
            done: false,
        };
        stream::unfold((tx, state), move |(tx, mut cur)| async move {
            if cur.done || cur.remaining == 0 || cur.begin >= cur.end {
                return None;
            }
            let request = RangeRequest {
                begin: cur.begin.clone(),
                end: cur.end.clone(),
                limit: batch.min(cur.remaining),
                reverse: cur.reverse,
                snapshot: cur.snapshot,
            };
            let chunk = match tx.fetch_range(&request).await {
                Ok(chunk) => chunk,
                Err(e) => {
                    cur.done = true;
                    return Some((stream::iter(vec![Err(e)]), (tx, cur)));
                }
            };
            cur.remaining = cur.remaining.saturating_sub(chunk.kvs.len());
            match chunk.kvs.last() {
                Some(last) if chunk.more => {
                    if cur.reverse {
                        cur.end = last.key.clone();
                    } else {
                        let mut next = last.key.clone();
                        next.push(0);
                        cur.begin = next;
                    }
                }
                _ => cur.done = true,
            }
            let items: Vec<Result<KeyValue>> = chunk.kvs.into_iter().map(Ok).collect();
            Some((stream::iter(items), (tx, cur)))
        })
        .flatten()
        .boxed()
    }

    async fn fetch_range(&self, request: &RangeRequest) -> Result<crate::backend::RangeChunk> {
        self.check_usable()?;
        limits::check_key(&request.begin)?;
        limits::check_key(&request.end)?;
        self.inner.backend.get_range(request).await
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_usable()?;
        self.refuse((|| {
            limits::check_key(key)?;
            limits::check_value(value)?;
            self.account(key.len() + value.len())
        })())?;
        self.forget(key);
        self.inner.backend.mutate(Mutation::Set {
            key: key.to_vec(),
            value: value.to_vec(),
        });
        Ok(())
    }

    /// Removes `key`.
    pub fn clear(&self, key: &[u8]) -> Result<()> {
        self.check_usable()?;
        self.refuse(limits::check_key(key).and_then(|()| self.account(key.len())))?;
        self.forget(key);
        self.inner
            .backend
            .mutate(Mutation::Clear { key: key.to_vec() });
        Ok(())
    }

    /// Removes every key in `[begin, end)`.
    pub fn clear_range(&self, begin: &[u8], end: &[u8]) -> Result<()> {
        self.check_usable()?;
        self.refuse((|| {
            limits::check_key(begin)?;
            limits::check_key(end)?;
            self.account(begin.len() + end.len())
        })())?;
        {
            let mut cache = self.inner.cache.lock();
            let inside: Vec<Vec<u8>> = cache
                .range(begin.to_vec()..end.to_vec())
                .map(|(k, _)| k.clone())
                .collect();
            for k in inside {
                cache.remove(&k);
            }
        }
        self.inner.backend.mutate(Mutation::ClearRange {
            begin: begin.to_vec(),
            end: end.to_vec(),
        });
        Ok(())
    }

    /// Atomic little-endian addition (FoundationDB `ADD`): adds no read
    /// conflict, so concurrent adders never conflict with each other.
    pub fn atomic_add(&self, key: &[u8], param: &[u8]) -> Result<()> {
        self.check_usable()?;
        self.refuse((|| {
            limits::check_key(key)?;
            limits::check_value(param)?;
            self.account(key.len() + param.len())
        })())?;
        self.forget(key);
        self.inner.backend.mutate(Mutation::Add {
            key: key.to_vec(),
            param: param.to_vec(),
        });
        Ok(())
    }

    /// Atomically adds `delta` to a little-endian i64 counter.
    pub fn add_i64(&self, key: &[u8], delta: i64) -> Result<()> {
        self.atomic_add(key, &delta.to_le_bytes())
    }

    /// Sets a key containing a versionstamp placeholder (see
    /// `Subspace::pack_with_versionstamp`: the last four bytes give the offset).
    pub fn set_versionstamped_key(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_usable()?;
        check_placeholder(key)?;
        self.refuse((|| {
            limits::check_key(&key[..key.len() - 4])?;
            limits::check_value(value)?;
            self.account(key.len() + value.len())
        })())?;
        self.inner.backend.mutate(Mutation::SetVersionstampedKey {
            key: key.to_vec(),
            value: value.to_vec(),
        });
        Ok(())
    }

    /// Sets a value containing a versionstamp placeholder (four-byte offset
    /// suffix, as for keys).
    pub fn set_versionstamped_value(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_usable()?;
        self.refuse(limits::check_key(key))?;
        check_placeholder(value)?;
        self.refuse((|| {
            limits::check_value(&value[..value.len() - 4])?;
            self.account(key.len() + value.len())
        })())?;
        self.forget(key);
        self.inner.backend.mutate(Mutation::SetVersionstampedValue {
            key: key.to_vec(),
            value: value.to_vec(),
        });
        Ok(())
    }

    /// Asks for the commit's versionstamp in [`CommitInfo`].
    pub fn request_versionstamp(&self) {
        self.inner.backend.request_versionstamp();
    }

    /// Watches `key`: the returned future resolves once the key's value differs
    /// from its value at this transaction's commit. It fails if the
    /// transaction does not commit.
    pub fn watch(&self, key: &[u8]) -> Result<WatchFuture> {
        self.check_usable()?;
        limits::check_key(key)?;
        Ok(self.inner.backend.watch(key))
    }

    /// Commits. Every clone of this handle is finished afterwards.
    pub async fn commit(&self) -> Result<CommitInfo> {
        self.check_usable()?;
        let refused = self.inner.refused.lock().clone();
        self.inner.finished.store(true, Ordering::Release);
        if let Some(err) = refused {
            // Dropping the backend transaction (with the last handle) rolls
            // back whatever it flushed.
            return Err(err);
        }
        self.inner.backend.commit().await
    }

    /// How long ago the transaction started.
    pub fn age(&self) -> Duration {
        self.inner
            .clock
            .now()
            .saturating_duration_since(self.inner.started)
            + Duration::from_nanos(self.inner.backdated_nanos.load(Ordering::Acquire))
    }

    /// Makes the transaction `by` older than it is, so the age limit can be
    /// exercised without waiting for it. For tests only.
    #[doc(hidden)]
    pub fn backdate(&self, by: Duration) {
        let nanos = by.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.inner
            .backdated_nanos
            .fetch_add(nanos, Ordering::AcqRel);
    }
}

struct RangeCursor {
    begin: Vec<u8>,
    end: Vec<u8>,
    remaining: usize,
    reverse: bool,
    snapshot: bool,
    done: bool,
}

/// Checks the FoundationDB placeholder convention: a 4-byte little-endian
/// offset suffix pointing at 10 bytes inside the rest.
pub(crate) fn check_placeholder(bytes: &[u8]) -> Result<()> {
    placeholder_offset(bytes).map(|_| ())
}

/// The offset of the 10-byte versionstamp placeholder in a template.
pub(crate) fn placeholder_offset(bytes: &[u8]) -> Result<usize> {
    if bytes.len() < 14 {
        return Err(StoreError::InvalidVersionstamp(format!(
            "template of {} bytes cannot hold a 10-byte placeholder and a 4-byte offset",
            bytes.len()
        )));
    }
    let body = bytes.len() - 4;
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[body..]);
    let offset = u32::from_le_bytes(raw) as usize;
    if offset + 10 > body {
        return Err(StoreError::InvalidVersionstamp(format!(
            "placeholder offset {offset} + 10 exceeds the {body}-byte template"
        )));
    }
    Ok(offset)
}

/// Fills a template's placeholder with `stamp` and drops the offset suffix.
pub(crate) fn fill_placeholder(template: &[u8], stamp: &[u8; 10]) -> Result<Vec<u8>> {
    let offset = placeholder_offset(template)?;
    let mut out = template[..template.len() - 4].to_vec();
    out[offset..offset + 10].copy_from_slice(stamp);
    Ok(out)
}
