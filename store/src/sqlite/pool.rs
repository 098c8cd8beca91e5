//! Connections to one SQLite file: opening, configuring, lending.
//!
//! Owns connection set-up (WAL, durability, busy timeout, schema) and the
//! pool's bound. It must never hand out a connection with an open
//! transaction: a connection comes back either clean or not at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{SqliteOptions, map_err};
use crate::error::{Result, StoreError};

/// SQLite's `PRAGMA synchronous` levels that make sense in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// No fsync at all: for throw-away databases.
    Off,
    /// fsync at checkpoints: a commit survives a process crash.
    Normal,
    /// fsync on every commit: a commit survives power loss.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

pub(crate) struct Pool {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
    permits: Arc<Semaphore>,
    /// A small lane of its own for system transactions (lease renewals), so
    /// they never queue behind ordinary ones for a connection.
    system_permits: Arc<Semaphore>,
    busy_timeout: Duration,
    synchronous: Synchronous,
}

/// Connections reserved for system transactions, on top of `pool_size`.
const SYSTEM_CONNECTIONS: usize = 2;

/// A connection on loan. Returned to the pool on drop unless marked broken.
pub(crate) struct PooledConn {
    conn: Option<Connection>,
    idle: Arc<Mutex<Vec<Connection>>>,
    broken: bool,
    _permit: OwnedSemaphorePermit,
}

impl PooledConn {
    pub(crate) fn conn(&mut self) -> Result<&mut Connection> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Backend("pooled connection already released".into()))
    }

    /// Marks the connection unusable (for example after a failed rollback),
    /// so it is closed instead of reused.
    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        // A connection still inside a transaction (its holder unwound
        // mid-flight) is closed, which rolls the transaction back.
        if let Some(conn) = self.conn.take()
            && !self.broken
            && conn.is_autocommit()
        {
            self.idle.lock().push(conn);
        }
    }
}

impl Pool {
    pub(crate) fn new(path: PathBuf, options: &SqliteOptions) -> Self {
        Pool {
            path,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(options.pool_size.max(1))),
            system_permits: Arc::new(Semaphore::new(SYSTEM_CONNECTIONS)),
            busy_timeout: options.busy_timeout,
            synchronous: options.synchronous,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) async fn warm_up(&self) -> Result<()> {
        let conn = self.acquire(false).await?;
        drop(conn);
        Ok(())
    }

    /// Lends a connection, opening one if none is idle. `system` callers
    /// draw on their own small lane.
    pub(crate) async fn acquire(&self, system: bool) -> Result<PooledConn> {
        let lane = if system {
            &self.system_permits
        } else {
            &self.permits
        };
        let permit = lane
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Backend("connection pool closed".into()))?;
        let conn = self.idle.lock().pop();
        let conn = match conn {
            Some(conn) => conn,
            None => {
                let path = self.path.clone();
                let busy = self.busy_timeout;
                let sync = self.synchronous;
                tokio::task::spawn_blocking(move || open_connection(&path, busy, sync))
                    .await
                    .map_err(|e| StoreError::Backend(format!("opening a connection: {e}")))??
            }
        };
        Ok(PooledConn {
            conn: Some(conn),
            idle: self.idle.clone(),
            broken: false,
            _permit: permit,
        })
    }
}

/// The longest any connection of this process waits for another process's
/// write lock (the largest configured busy timeout).
static BUSY_LIMIT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// When the current wait for the write lock began on this thread.
    static BUSY_SINCE: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// SQLite's busy handler: called while another process holds the write
/// lock, `tries` times so far for this attempt. SQLite's own handler sleeps
/// 1 to 100 ms per try; replicas of one region share a file and hand the
/// lock back and forth all the time, so those sleeps became most of a
/// commit's latency. This one waits 50 us, doubling to 1 ms, until the busy
/// timeout has passed (then the attempt fails as retryable `Busy`).
fn wait_for_lock(tries: i32) -> bool {
    let now = std::time::Instant::now();
    let since = BUSY_SINCE.with(|c| {
        if tries == 0 || c.get().is_none() {
            c.set(Some(now));
        }
        c.get().unwrap_or(now)
    });
    let limit = Duration::from_millis(BUSY_LIMIT_MS.load(std::sync::atomic::Ordering::Relaxed));
    if now.saturating_duration_since(since) >= limit {
        return false;
    }
    let shift = u32::try_from(tries.clamp(0, 5)).unwrap_or(5);
    std::thread::sleep(Duration::from_micros((50u64 << shift).min(1_000)));
    true
}

/// Opens and configures one connection, creating the schema if needed.
pub(crate) fn open_connection(
    path: &Path,
    busy_timeout: Duration,
    synchronous: Synchronous,
) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| {
        StoreError::Backend(format!("opening sqlite database {}: {e}", path.display()))
    })?;
    BUSY_LIMIT_MS.fetch_max(
        u64::try_from(busy_timeout.as_millis()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
    conn.busy_handler(Some(wait_for_lock)).map_err(map_err)?;
    // journal_mode is persistent in the file; setting it again is a no-op but
    // needs a moment of exclusive access on first creation, which the busy
    // timeout covers when processes start together.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(map_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "sqlite database {} refused WAL mode (got {mode})",
            path.display()
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={};
         PRAGMA foreign_keys=OFF;
         BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, n INTEGER NOT NULL) WITHOUT ROWID;
         INSERT OR IGNORE INTO meta (name, n) VALUES ('commit_seq', 0);
         COMMIT;",
        synchronous.pragma()
    ))
    .map_err(map_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}
