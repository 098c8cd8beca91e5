//! The seam between the store's public API and its backends.
//!
//! Owns the object-safe traits a backend implements (SQLite, FoundationDB, the
//! fault-injection wrapper). Limits, transaction age and retries live above this
//! seam, in `Transaction` and `Database`, so every backend gets them the same;
//! a backend must never re-implement them or weaken them.

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::error::Result;

/// One key and its value, as returned by range reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// A range read: keys in `[begin, end)`, in key order or reversed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key of the range (inclusive).
    pub begin: Vec<u8>,
    /// End of the range (exclusive).
    pub end: Vec<u8>,
    /// At most this many pairs; 0 means no limit.
    pub limit: usize,
    /// Newest keys first.
    pub reverse: bool,
    /// A snapshot read adds no read conflict (FoundationDB); backends with
    /// coarser conflict detection may ignore it.
    pub snapshot: bool,
}

/// One batch of a range read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeChunk {
    /// The pairs, in the requested order.
    pub kvs: Vec<KeyValue>,
    /// True when the range holds more pairs past the last one returned.
    pub more: bool,
}

/// A write buffered in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Set `key` to `value`.
    Set {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key`.
    Clear {
        /// The key.
        key: Vec<u8>,
    },
    /// Remove every key in `[begin, end)`.
    ClearRange {
        /// First key (inclusive).
        begin: Vec<u8>,
        /// End (exclusive).
        end: Vec<u8>,
    },
    /// Little-endian integer addition of `param` to the stored value, with
    /// FoundationDB semantics: a missing value counts as zero, the result has
    /// the width of `param`, overflow wraps.
    Add {
        /// The key.
        key: Vec<u8>,
        /// The little-endian addend.
        param: Vec<u8>,
    },
    /// Set a key whose bytes contain a placeholder for the commit versionstamp.
    /// The last four bytes of `key` are the little-endian offset of the 10-byte
    /// placeholder; they are removed when the key is written.
    SetVersionstampedKey {
        /// The key template with its 4-byte offset suffix.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Set a value whose bytes contain a placeholder for the commit versionstamp
    /// (same offset-suffix convention as the key form).
    SetVersionstampedValue {
        /// The key.
        key: Vec<u8>,
        /// The value template with its 4-byte offset suffix.
        value: Vec<u8>,
    },
}

/// Options a transaction starts with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOptions {
    /// Take the write lock up front. Backends with a single writer (SQLite) use
    /// it on retries after a conflict so a retried transaction cannot starve.
    pub pessimistic: bool,
    /// System priority (FoundationDB's `PRIORITY_SYSTEM_IMMEDIATE`): for the
    /// few transactions that keep the system alive, lease renewals above all.
    /// They must not queue behind ordinary load. Keep them small and rare.
    pub system: bool,
}

/// What a successful commit reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitInfo {
    /// The 10-byte versionstamp of the commit, when one was assigned (always on
    /// FoundationDB; on SQLite when the transaction used a versionstamped
    /// operation or asked for it).
    pub versionstamp: Option<[u8; 10]>,
}

/// A future that resolves once a watched key changed after the commit that
/// registered the watch.
pub type WatchFuture = BoxFuture<'static, Result<()>>;

/// A store backend: opens transactions.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Starts a transaction.
    async fn begin(&self, options: TxOptions) -> Result<Box<dyn BackendTx>>;
    /// A short name for logs and metrics ("sqlite", "fdb", ...).
    fn name(&self) -> &'static str;
}

/// One transaction of a backend. Writes are buffered by the backend as it sees
/// fit, but must be visible to later reads of the same transaction.
#[async_trait]
pub trait BackendTx: Send + Sync {
    /// Reads one key.
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>>;
    /// Reads several keys, in order. Backends where each read is a round
    /// trip (SQLite's blocking pool) override this to read them all in one;
    /// the default reads them one after the other.
    async fn get_many(&self, keys: &[Vec<u8>], snapshot: bool) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key, snapshot).await?);
        }
        Ok(out)
    }
    /// Reads one batch of a range.
    async fn get_range(&self, request: &RangeRequest) -> Result<RangeChunk>;
    /// Buffers a write. Validation already happened above the seam.
    fn mutate(&self, mutation: Mutation);
    /// Asks that the commit be assigned a versionstamp even without a
    /// versionstamped operation.
    fn request_versionstamp(&self);
    /// Registers a watch on `key`; it becomes active when the transaction
    /// commits and fails if it never does.
    fn watch(&self, key: &[u8]) -> WatchFuture;
    /// Commits. After this returns (either way) the transaction is finished.
    async fn commit(&self) -> Result<CommitInfo>;
}
