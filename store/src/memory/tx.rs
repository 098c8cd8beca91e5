//! One transaction of the in-memory backend.
//!
//! Owns the transaction's read version, its read conflict ranges and its
//! buffered writes, and merges those writes into reads (read-your-writes).
//! Every method finishes without awaiting anything; only the future returned
//! by `watch` waits. It must never touch the shared state except under its
//! lock, and never hold that lock across an await.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::ranges::{RangeSet, key_after};
use super::state::{CommitRequest, PendingWatch, State};
use crate::backend::{
    BackendTx, CommitInfo, KeyValue, Mutation, RangeChunk, RangeRequest, WatchFuture,
};
use crate::error::{Result, StoreError};
use crate::sqlite::apply::add_le;

/// What this transaction's own writes say about one key.
#[derive(Debug, Clone)]
enum Local {
    /// Set (`Some`) or cleared (`None`): the stored value no longer matters.
    Value(Option<Vec<u8>>),
    /// Atomic adds on top of whatever the key holds underneath.
    Adds(Vec<Vec<u8>>),
}

/// The transaction's writes as reads see them.
#[derive(Debug, Default)]
struct Overlay {
    entries: BTreeMap<Vec<u8>, Local>,
    /// Ranges cleared by this transaction: stored keys inside are hidden
    /// unless a later write in `entries` brings them back.
    cleared: RangeSet,
}

impl Overlay {
    fn record(&mut self, mutation: &Mutation) {
        match mutation {
            Mutation::Set { key, value } => {
                self.entries
                    .insert(key.clone(), Local::Value(Some(value.clone())));
            }
            Mutation::Clear { key } => {
                self.entries.insert(key.clone(), Local::Value(None));
            }
            Mutation::ClearRange { begin, end } => {
                if begin >= end {
                    return;
                }
                let inside: Vec<Vec<u8>> = self
                    .entries
                    .range::<[u8], _>((
                        Bound::Included(begin.as_slice()),
                        Bound::Excluded(end.as_slice()),
                    ))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in inside {
                    self.entries.remove(&key);
                }
                self.cleared.insert(begin, end);
            }
            Mutation::Add { key, param } => {
                let next = match self.entries.remove(key) {
                    Some(Local::Value(value)) => {
                        Local::Value(Some(add_le(value.as_deref(), param)))
                    }
                    Some(Local::Adds(mut params)) => {
                        params.push(param.clone());
                        Local::Adds(params)
                    }
                    None => Local::Adds(vec![param.clone()]),
                };
                self.entries.insert(key.clone(), next);
            }
            // The stamp is only known at commit; like the SQLite backend,
            // reads in the writing transaction do not see these writes.
            Mutation::SetVersionstampedKey { .. } | Mutation::SetVersionstampedValue { .. } => {}
        }
    }

    /// True when the value this transaction sees for `key` depends on the
    /// store, so reading it must add a read conflict. A key set or cleared
    /// by the transaction itself does not, as on FoundationDB.
    fn depends_on_store(&self, key: &[u8]) -> bool {
        match self.entries.get(key) {
            Some(Local::Value(_)) => false,
            Some(Local::Adds(_)) | None => !self.cleared.contains(key),
        }
    }

    /// The value of `key` as this transaction sees it, given the stored
    /// value at its read version.
    fn resolve(&self, key: &[u8], stored: Option<&[u8]>) -> Option<Vec<u8>> {
        let underneath = if self.cleared.contains(key) {
            None
        } else {
            stored
        };
        match self.entries.get(key) {
            Some(Local::Value(value)) => value.clone(),
            Some(Local::Adds(params)) => {
                let mut value = underneath.map(<[u8]>::to_vec);
                for param in params {
                    value = Some(add_le(value.as_deref(), param));
                }
                value
            }
            None => underneath.map(<[u8]>::to_vec),
        }
    }

    fn keys_in<'a>(
        &'a self,
        begin: &'a [u8],
        end: &'a [u8],
        reverse: bool,
    ) -> Box<dyn Iterator<Item = &'a [u8]> + 'a> {
        if begin >= end {
            return Box::new(std::iter::empty());
        }
        let range = self
            .entries
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(k, _)| k.as_slice());
        if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Taken at the first read, as FoundationDB does; a transaction that
    /// never reads never conflicts.
    read_version: Option<u64>,
    reads: RangeSet,
    mutations: Vec<Mutation>,
    overlay: Overlay,
    want_stamp: bool,
    watches: Vec<PendingWatch>,
    finished: bool,
}

pub(crate) struct MemoryTx {
    shared: Arc<Mutex<State>>,
    inner: Mutex<Inner>,
}

impl MemoryTx {
    pub(crate) fn new(shared: Arc<Mutex<State>>) -> Self {
        MemoryTx {
            shared,
            inner: Mutex::new(Inner::default()),
        }
    }
}

/// The read version of `inner`, taken now if this is its first read, and
/// checked against the pruning horizon.
fn read_version(inner: &mut Inner, state: &mut State) -> Result<u64> {
    if inner.finished {
        return Err(StoreError::TransactionFinished);
    }
    let version = match inner.read_version {
        Some(version) => version,
        None => {
            let version = state.acquire_reader();
            inner.read_version = Some(version);
            version
        }
    };
    state.check_readable(version)?;
    Ok(version)
}

/// Merges two key iterators running in the same direction into one, without
/// duplicates.
fn merge_keys<'a>(
    mut a: Peekable<Box<dyn Iterator<Item = &'a [u8]> + 'a>>,
    mut b: Peekable<Box<dyn Iterator<Item = &'a [u8]> + 'a>>,
    reverse: bool,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (None, None) => None,
        (Some(_), None) => a.next(),
        (None, Some(_)) => b.next(),
        (Some(x), Some(y)) => {
            let (x, y) = (*x, *y);
            if x == y {
                b.next();
                a.next()
            } else if (x < y) != reverse {
                a.next()
            } else {
                b.next()
            }
        }
    })
}

#[async_trait]
impl BackendTx for MemoryTx {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>> {
        let mut inner = self.inner.lock();
        let state = &mut *self.shared.lock();
        let version = read_version(&mut inner, state)?;
        if !snapshot && inner.overlay.depends_on_store(key) {
            inner.reads.insert(key, &key_after(key));
        }
        Ok(inner.overlay.resolve(key, state.value_at(key, version)))
    }

    async fn get_range(&self, request: &RangeRequest) -> Result<RangeChunk> {
        let mut inner = self.inner.lock();
        let state = &mut *self.shared.lock();
        let version = read_version(&mut inner, state)?;
        let (begin, end) = (request.begin.as_slice(), request.end.as_slice());
        let mut kvs = Vec::new();
        let mut more = false;
        {
            let stored = state.keys_in(begin, end, request.reverse).peekable();
            let local = inner
                .overlay
                .keys_in(begin, end, request.reverse)
                .peekable();
            for key in merge_keys(stored, local, request.reverse) {
                let Some(value) = inner.overlay.resolve(key, state.value_at(key, version)) else {
                    continue;
                };
                if request.limit != 0 && kvs.len() == request.limit {
                    more = true;
                    break;
                }
                kvs.push(KeyValue {
                    key: key.to_vec(),
                    value,
                });
            }
        }
        if !request.snapshot {
            // A read cut short by its limit depends only on the keys up to
            // the last one returned, as on FoundationDB.
            match kvs.last() {
                Some(last) if more && request.reverse => inner.reads.insert(&last.key, end),
                Some(last) if more => inner.reads.insert(begin, &key_after(&last.key)),
                _ => inner.reads.insert(begin, end),
            }
        }
        Ok(RangeChunk { kvs, more })
    }

    fn mutate(&self, mutation: Mutation) {
        let mut inner = self.inner.lock();
        if inner.finished {
            return;
        }
        inner.overlay.record(&mutation);
        inner.mutations.push(mutation);
    }

    fn request_versionstamp(&self) {
        self.inner.lock().want_stamp = true;
    }

    fn watch(&self, key: &[u8]) -> WatchFuture {
        let (sender, receiver) = oneshot::channel();
        let mut inner = self.inner.lock();
        if inner.finished {
            let _ = sender.send(Err(StoreError::TransactionFinished));
        } else {
            inner.watches.push((key.to_vec(), sender));
        }
        Box::pin(async move {
            // A dropped sender means the transaction was dropped uncommitted.
            receiver
                .await
                .unwrap_or(Err(StoreError::TransactionFinished))
        })
    }

    async fn commit(&self) -> Result<CommitInfo> {
        let mut inner = self.inner.lock();
        if inner.finished {
            return Err(StoreError::TransactionFinished);
        }
        inner.finished = true;
        let request = CommitRequest {
            read_version: inner.read_version.take(),
            reads: std::mem::take(&mut inner.reads),
            mutations: std::mem::take(&mut inner.mutations),
            want_stamp: inner.want_stamp,
            watches: std::mem::take(&mut inner.watches),
        };
        inner.overlay = Overlay::default();
        let mut state = self.shared.lock();
        if let Some(version) = request.read_version {
            state.release_reader(version);
        }
        let versionstamp = state.commit(request)?;
        Ok(CommitInfo { versionstamp })
    }
}

impl Drop for MemoryTx {
    fn drop(&mut self) {
        if let Some(version) = self.inner.get_mut().read_version.take() {
            self.shared.lock().release_reader(version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(key: &[u8], n: u8) -> Mutation {
        Mutation::Add {
            key: key.to_vec(),
            param: vec![n],
        }
    }

    #[test]
    fn own_writes_combine_in_the_order_they_were_made() {
        let mut overlay = Overlay::default();
        // Adds on a stored value apply on top of it.
        overlay.record(&add(b"a", 2));
        overlay.record(&add(b"a", 3));
        assert_eq!(overlay.resolve(b"a", Some(&[10])), Some(vec![15]));
        // A clear-range hides stored values and earlier writes; a later add
        // starts from nothing, a later set brings a key back.
        overlay.record(&Mutation::ClearRange {
            begin: b"a".to_vec(),
            end: b"c".to_vec(),
        });
        assert_eq!(overlay.resolve(b"a", Some(&[10])), None);
        assert_eq!(overlay.resolve(b"b", Some(&[1])), None);
        overlay.record(&add(b"a", 4));
        assert_eq!(overlay.resolve(b"a", Some(&[10])), Some(vec![4]));
        overlay.record(&Mutation::Set {
            key: b"b".to_vec(),
            value: vec![7],
        });
        overlay.record(&add(b"b", 1));
        assert_eq!(overlay.resolve(b"b", Some(&[1])), Some(vec![8]));
        // Outside the cleared range, stored values show through.
        assert_eq!(overlay.resolve(b"c", Some(&[9])), Some(vec![9]));
        overlay.record(&Mutation::Clear { key: b"c".to_vec() });
        assert_eq!(overlay.resolve(b"c", Some(&[9])), None);
    }
}
