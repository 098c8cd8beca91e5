//! The SQLite backend: the FoundationDB model on one SQLite file.
//!
//! Owns the schema, the connection pool and the mapping of SQLite's locking
//! onto FoundationDB's optimistic transactions. Several processes may share
//! one file (WAL mode): that is how the replicas of one region share a store
//! on one machine. Every SQLite call runs on tokio's blocking pool; this
//! module must never block an async worker thread, and must never let a
//! "database is locked" reach a caller as anything but a retryable error.
//!
//! Transactions: the first statement opens a deferred SQLite transaction, so
//! reads share a snapshot without locking. Writes are buffered and flushed in
//! the same blocking call as the next read or the commit, so a typical
//! read-decide-write transaction holds SQLite's single write lock only for its
//! final round trip. If another writer committed since the snapshot, the
//! upgrade to a write lock fails (`SQLITE_BUSY_SNAPSHOT`): that is a conflict,
//! reported as `not_committed`, and the retry takes the lock up front
//! (`BEGIN IMMEDIATE`) so it cannot lose again.

pub(crate) mod apply;
mod exec;
mod gate;
mod group;
mod pool;
mod tx;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{Backend, BackendTx, TxOptions};
use crate::error::{Result, StoreError};

pub use pool::Synchronous;

/// Tuning of the SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Connections kept per process; also the number of transactions that can
    /// be open at once (others wait for a connection).
    pub pool_size: usize,
    /// How long a writer waits for another process's write lock before the
    /// attempt fails as retryable `Busy`. Longer than the 5 s transaction age
    /// limit, so a live lock holder always finishes first.
    pub busy_timeout: Duration,
    /// Durability of commits. `Normal` in WAL mode survives process crashes
    /// (not power loss of the last commits).
    pub synchronous: Synchronous,
    /// How often watches poll `PRAGMA data_version` for commits by other
    /// processes (commits by this process wake them at once).
    pub watch_poll: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            pool_size: 16,
            busy_timeout: Duration::from_secs(10),
            synchronous: Synchronous::Normal,
            watch_poll: Duration::from_millis(10),
        }
    }
}

/// A SQLite database used through the FoundationDB model.
pub struct SqliteBackend {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) pool: pool::Pool,
    pub(crate) watches: watch::WatchHub,
    pub(crate) group: group::GroupCommit,
    pub(crate) gate: gate::WriterGate,
    // Kept only so an ephemeral database's directory lives as long as the
    // backend; dropped last.
    _ephemeral: Option<tempfile::TempDir>,
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file at `path`.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        Self::open_inner(path.as_ref().to_path_buf(), options, None).await
    }

    /// Opens a private database that disappears when the backend is dropped.
    ///
    /// SQLite's own `:memory:` databases cannot be shared between the
    /// connections of a pool without shared-cache table locking, which has
    /// different semantics; a file in a private temporary directory with
    /// `synchronous=OFF` behaves exactly like the file backend and costs no
    /// fsync.
    pub async fn open_ephemeral(mut options: SqliteOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("meridian-store-")
            .tempdir()
            .map_err(|e| StoreError::Backend(format!("creating a temporary directory: {e}")))?;
        options.synchronous = Synchronous::Off;
        let path = dir.path().join("store.db");
        Self::open_inner(path, options, Some(dir)).await
    }

    async fn open_inner(
        path: PathBuf,
        options: SqliteOptions,
        ephemeral: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        let pool = pool::Pool::new(path.clone(), &options);
        // Opening the first connection creates the schema; do it now so a bad
        // path fails here rather than on the first transaction.
        pool.warm_up().await?;
        let watches = watch::WatchHub::new(path, options.clone());
        Ok(SqliteBackend {
            shared: Arc::new(Shared {
                pool,
                watches,
                group: group::GroupCommit::default(),
                gate: gate::WriterGate::new(options.busy_timeout),
                _ephemeral: ephemeral,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.shared.pool.path()
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn begin(&self, options: TxOptions) -> Result<Box<dyn BackendTx>> {
        Ok(Box::new(tx::SqliteTx::new(self.shared.clone(), options)))
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}

/// Maps a SQLite error onto the store's vocabulary. Lock contention is
/// retryable; a stale snapshot is a conflict.
pub(crate) fn map_err(err: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    if let rusqlite::Error::SqliteFailure(code, ref message) = err {
        let text = message.clone().unwrap_or_else(|| code.to_string());
        return match code.extended_code {
            ffi::SQLITE_BUSY_SNAPSHOT => StoreError::NotCommitted,
            _ => match code.code {
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                    StoreError::Busy(text)
                }
                _ => StoreError::Backend(text),
            },
        };
    }
    StoreError::Backend(err.to_string())
}
