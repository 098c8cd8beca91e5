//! One SQLite transaction seen through the FoundationDB model.
//!
//! Owns the life of a transaction: the lazily opened SQLite transaction, the
//! write buffer flushed on the next round trip, the commit with its
//! versionstamp and watch registration, and the rollback when dropped. It
//! must never leave a SQLite transaction open on a connection it gives back.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::pool::PooledConn;
use super::{Shared, apply};
use crate::backend::{
    BackendTx, CommitInfo, Mutation, RangeChunk, RangeRequest, TxOptions, WatchFuture,
};
use crate::error::{Result, StoreError};

pub(crate) struct SqliteTx {
    shared: Arc<Shared>,
    options: TxOptions,
    session: tokio::sync::Mutex<Session>,
    buffer: parking_lot::Mutex<Buffer>,
}

#[derive(Default)]
struct Session {
    conn: Option<PooledConn>,
    /// A SQLite transaction is open on `conn`.
    open: bool,
    /// Writes were flushed into the open SQLite transaction, so its commit
    /// must be a real one even if nothing is buffered any more.
    wrote: bool,
    /// Versionstamped writes held back until the commit assigns a stamp.
    deferred: Vec<Mutation>,
    /// The first error: the transaction is doomed and says so on every use.
    failed: Option<StoreError>,
    finished: bool,
}

#[derive(Default)]
struct Buffer {
    pending: Vec<Mutation>,
    want_stamp: bool,
    watches: Vec<(Vec<u8>, oneshot::Sender<Result<()>>)>,
}

fn is_stamped(m: &Mutation) -> bool {
    matches!(
        m,
        Mutation::SetVersionstampedKey { .. } | Mutation::SetVersionstampedValue { .. }
    )
}

fn begin_statement(immediate: bool) -> &'static str {
    if immediate {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    }
}

/// Runs a transaction-control statement through the statement cache, so it
/// is parsed once per connection rather than on every transaction.
fn control(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .map_err(super::map_err)
}

/// Ends whatever transaction is open on `conn`. A connection that cannot be
/// brought back to autocommit is closed rather than reused.
fn roll_back(conn: &mut PooledConn) {
    let clean = match conn.conn() {
        Ok(c) => c.is_autocommit() || (c.execute_batch("ROLLBACK").is_ok() && c.is_autocommit()),
        Err(_) => false,
    };
    if !clean {
        conn.mark_broken();
    }
}

/// Hands a connection back, rolling back first if needed, off the async
/// runtime when there is one.
fn release(mut conn: PooledConn, open: bool) {
    if !open {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(move || roll_back(&mut conn));
        }
        Err(_) => roll_back(&mut conn),
    }
}

impl SqliteTx {
    pub(crate) fn new(shared: Arc<Shared>, options: TxOptions) -> Self {
        SqliteTx {
            shared,
            options,
            session: tokio::sync::Mutex::new(Session::default()),
            buffer: parking_lot::Mutex::new(Buffer::default()),
        }
    }

    /// One round trip to SQLite on the blocking pool: open the transaction if
    /// needed, flush buffered writes, then run `work`.
    async fn round_trip<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let mut session = self.session.lock().await;
        if let Some(err) = &session.failed {
            return Err(err.clone());
        }
        if session.finished {
            return Err(StoreError::TransactionFinished);
        }
        let mut conn = match session.conn.take() {
            Some(conn) => conn,
            None => self.shared.pool.acquire().await?,
        };
        let pending = std::mem::take(&mut self.buffer.lock().pending);
        let flushes = !pending.is_empty();
        let open = session.open;
        let immediate = self.options.pessimistic;
        let joined = tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<_> {
                let c = conn.conn()?;
                if !open {
                    control(c, begin_statement(immediate))?;
                }
                let deferred = apply::apply(c, pending, None)?;
                Ok((work(c)?, deferred))
            })();
            (conn, result)
        })
        .await;
        let (mut conn, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                let err = StoreError::Backend(format!("sqlite worker failed: {e}"));
                session.failed = Some(err.clone());
                return Err(err);
            }
        };
        match result {
            Ok((value, deferred)) => {
                session.open = true;
                session.wrote |= flushes;
                session.deferred.extend(deferred);
                session.conn = Some(conn);
                Ok(value)
            }
            Err(err) => {
                // A statement failed inside the transaction: whatever SQLite
                // kept of it is discarded, so nothing half-done can commit.
                tokio::task::spawn_blocking(move || roll_back(&mut conn));
                session.open = false;
                session.failed = Some(err.clone());
                Err(err)
            }
        }
    }
}

#[async_trait]
impl BackendTx for SqliteTx {
    async fn get(&self, key: &[u8], _snapshot: bool) -> Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.round_trip(move |c| apply::get(c, &key)).await
    }

    async fn get_range(&self, request: &RangeRequest) -> Result<RangeChunk> {
        let request = request.clone();
        self.round_trip(move |c| apply::get_range(c, &request))
            .await
    }

    fn mutate(&self, mutation: Mutation) {
        self.buffer.lock().pending.push(mutation);
    }

    fn request_versionstamp(&self) {
        self.buffer.lock().want_stamp = true;
    }

    fn watch(&self, key: &[u8]) -> WatchFuture {
        let (sender, receiver) = oneshot::channel();
        self.buffer.lock().watches.push((key.to_vec(), sender));
        Box::pin(async move {
            receiver
                .await
                .unwrap_or(Err(StoreError::TransactionFinished))
        })
    }

    async fn commit(&self) -> Result<CommitInfo> {
        let mut session = self.session.lock().await;
        if let Some(err) = &session.failed {
            return Err(err.clone());
        }
        if session.finished {
            return Err(StoreError::TransactionFinished);
        }
        session.finished = true;
        let (pending, want_stamp, watches) = {
            let mut buffer = self.buffer.lock();
            (
                std::mem::take(&mut buffer.pending),
                buffer.want_stamp,
                std::mem::take(&mut buffer.watches),
            )
        };
        let deferred = std::mem::take(&mut session.deferred);
        let need_stamp = want_stamp || !deferred.is_empty() || pending.iter().any(is_stamped);
        let writes = session.wrote || !pending.is_empty() || !deferred.is_empty();
        let open = session.open;

        if !writes && !need_stamp && watches.is_empty() {
            // Read-only: nothing to make durable. Give the connection back in
            // the background; the caller need not wait for the rollback.
            if let Some(conn) = session.conn.take() {
                release(conn, open);
            }
            return Ok(CommitInfo::default());
        }

        let mut conn = match session.conn.take() {
            Some(conn) => conn,
            None => self.shared.pool.acquire().await?,
        };
        let immediate = self.options.pessimistic || (!open && writes);
        let watch_keys: Vec<Vec<u8>> = watches.iter().map(|(k, _)| k.clone()).collect();
        let joined = tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<_> {
                let c = conn.conn()?;
                if !open {
                    control(c, begin_statement(immediate))?;
                }
                let mut held = deferred;
                held.extend(apply::apply(c, pending, None)?);
                let stamp = if need_stamp {
                    Some(apply::next_versionstamp(c)?)
                } else {
                    None
                };
                if let Some(stamp) = &stamp {
                    apply::apply(c, held, Some(stamp))?;
                }
                let values = watch_keys
                    .iter()
                    .map(|k| apply::get(c, k))
                    .collect::<Result<Vec<_>>>()?;
                control(c, "COMMIT")?;
                Ok((stamp, values))
            })();
            if result.is_err() {
                roll_back(&mut conn);
            }
            (conn, result)
        })
        .await;
        let (conn, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                let err = StoreError::Backend(format!("sqlite worker failed: {e}"));
                for (_, sender) in watches {
                    let _ = sender.send(Err(err.clone()));
                }
                return Err(err);
            }
        };
        drop(conn);
        match result {
            Ok((stamp, values)) => {
                if writes {
                    self.shared.watches.poke();
                }
                for ((key, sender), value) in watches.into_iter().zip(values) {
                    self.shared.watches.register(key, value, sender);
                }
                Ok(CommitInfo {
                    versionstamp: stamp,
                })
            }
            Err(err) => {
                for (_, sender) in watches {
                    let _ = sender.send(Err(err.clone()));
                }
                Err(err)
            }
        }
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        let session = self.session.get_mut();
        if let Some(conn) = session.conn.take() {
            release(conn, session.open);
        }
    }
}
