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

use super::exec::{self, Work};
use super::gate::Turn;
use super::group::{self, Committed};
use super::pool::PooledConn;
use super::watch::Touched;
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
    /// This process's write turn, taken before the first round trip that
    /// takes SQLite's write lock and kept until the transaction ends.
    turn: Option<Turn>,
    /// The first error: the transaction is doomed and says so on every use.
    failed: Option<StoreError>,
    finished: bool,
}

#[derive(Default)]
struct Buffer {
    pending: Vec<Mutation>,
    /// Every key written so far, flushed or not (for the watch hub).
    touched: Touched,
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
/// runtime when there is one. The write turn, if held, passes on only once
/// SQLite's lock is free.
fn release(mut conn: PooledConn, open: bool, turn: Option<Turn>) {
    if !open {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(move || {
                roll_back(&mut conn);
                drop(turn);
            });
        }
        Err(_) => roll_back(&mut conn),
    }
}

/// One round trip: open the SQLite transaction if needed, flush buffered
/// writes, then read.
struct Hop<F> {
    open: bool,
    begin_immediate: bool,
    pending: Vec<Mutation>,
    read: F,
}

impl<F, R> Work for Hop<F>
where
    F: FnMut(&Connection) -> Result<R> + Send + 'static,
    R: Send + 'static,
{
    type Output = (R, Vec<Mutation>);
    const KIND: &'static str = "read";

    fn run(&mut self, c: &Connection) -> Result<Self::Output> {
        begun(c, self.open, self.begin_immediate, |c| {
            let deferred = apply::apply(c, &self.pending, None)?;
            Ok(((self.read)(c)?, deferred))
        })
    }
}

/// The final round trip: flush, stamp, read watched values, commit.
struct CommitHop {
    open: bool,
    begin_immediate: bool,
    pending: Vec<Mutation>,
    deferred: Vec<Mutation>,
    need_stamp: bool,
    watch_keys: Vec<Vec<u8>>,
}

impl Work for CommitHop {
    type Output = Committed;
    const KIND: &'static str = "commit";

    fn run(&mut self, c: &Connection) -> Result<Committed> {
        let result = begun(c, self.open, self.begin_immediate, |c| {
            let late = apply::apply(c, &self.pending, None)?;
            let stamp = if self.need_stamp {
                let stamp = apply::next_versionstamp(c)?;
                apply::apply(c, &self.deferred, Some(&stamp))?;
                apply::apply(c, &late, Some(&stamp))?;
                Some(stamp)
            } else {
                None
            };
            let values = self
                .watch_keys
                .iter()
                .map(|k| apply::get(c, k))
                .collect::<Result<Vec<_>>>()?;
            control(c, "COMMIT")?;
            Ok((stamp, values))
        });
        if result.is_err() && !c.is_autocommit() {
            // Nothing of a failed commit may stay pending on the connection.
            let _ = c.execute_batch("ROLLBACK");
        }
        result
    }
}

/// Runs `body` inside the transaction, opening it first when `open` is false.
/// If this call opened it and `body` fails, it is rolled back here.
fn begun<R>(
    c: &Connection,
    open: bool,
    immediate: bool,
    body: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
    if open {
        return body(c);
    }
    control(c, begin_statement(immediate))?;
    let result = body(c);
    if result.is_err() && !c.is_autocommit() {
        let _ = c.execute_batch("ROLLBACK");
    }
    result
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

    async fn connection(&self, session: &mut Session) -> Result<PooledConn> {
        match session.conn.take() {
            Some(conn) => Ok(conn),
            None => self.shared.pool.acquire(self.options.system).await,
        }
    }

    /// Takes this process's write turn before a round trip that `writes`
    /// (takes SQLite's write lock), unless already held. Called with the
    /// connection in hand, so the turn's holder never waits for one.
    async fn take_turn(&self, session: &mut Session, writes: bool) -> Result<()> {
        if writes && session.turn.is_none() {
            session.turn = Some(self.shared.gate.enter(self.options.system).await?);
        }
        Ok(())
    }

    /// One round trip to SQLite: open the transaction if needed, flush
    /// buffered writes, then run `read`.
    async fn round_trip<R, F>(&self, read: F) -> Result<R>
    where
        F: FnMut(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let mut session = self.session.lock().await;
        if let Some(err) = &session.failed {
            return Err(err.clone());
        }
        if session.finished {
            return Err(StoreError::TransactionFinished);
        }
        let conn = self.connection(&mut session).await?;
        let pending = std::mem::take(&mut self.buffer.lock().pending);
        let flushes = !pending.is_empty();
        let open = session.open;
        let begin_immediate = !open && (self.options.pessimistic || flushes);
        if let Err(err) = self
            .take_turn(&mut session, begin_immediate || flushes)
            .await
        {
            session.conn = Some(conn);
            session.failed = Some(err.clone());
            return Err(err);
        }
        let hop = Hop {
            open,
            begin_immediate,
            pending,
            read,
        };
        let (conn, result) = exec::execute(conn, hop).await;
        match result {
            Ok((value, deferred)) => {
                session.open = true;
                session.wrote |= flushes;
                session.deferred.extend(deferred);
                session.conn = conn;
                Ok(value)
            }
            Err(err) => {
                // A statement failed inside the transaction: whatever SQLite
                // kept of it is discarded, so nothing half-done can commit.
                let turn = session.turn.take();
                if let Some(conn) = conn {
                    release(conn, true, turn);
                }
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

    async fn get_many(&self, keys: &[Vec<u8>], _snapshot: bool) -> Result<Vec<Option<Vec<u8>>>> {
        // One round trip for all of them: the hand-off to the blocking pool
        // costs more than a small read does.
        let keys = keys.to_vec();
        self.round_trip(move |c| keys.iter().map(|k| apply::get(c, k)).collect())
            .await
    }

    async fn get_range(&self, request: &RangeRequest) -> Result<RangeChunk> {
        let request = request.clone();
        self.round_trip(move |c| apply::get_range(c, &request))
            .await
    }

    fn mutate(&self, mutation: Mutation) {
        let mut buffer = self.buffer.lock();
        buffer.touched.add(&mutation);
        buffer.pending.push(mutation);
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
        let (pending, want_stamp, watches, touched) = {
            let mut buffer = self.buffer.lock();
            (
                std::mem::take(&mut buffer.pending),
                buffer.want_stamp,
                std::mem::take(&mut buffer.watches),
                std::mem::take(&mut buffer.touched),
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
                release(conn, open, session.turn.take());
            }
            return Ok(CommitInfo::default());
        }

        if !open && session.conn.is_none() {
            // Never touched SQLite: nothing read, so nothing to conflict on.
            // Commit with whatever else is queued (see `group.rs`).
            let mut mutations = deferred;
            mutations.extend(pending);
            let watch_keys = watches.iter().map(|(k, _)| k.clone()).collect();
            let entry = group::Entry::new(mutations, need_stamp, watch_keys);
            let result = group::GroupCommit::commit(&self.shared, entry).await;
            return self.finish_commit(result, touched, watches);
        }

        let conn = self.connection(&mut session).await?;
        let must_lock = writes || need_stamp;
        let begin_immediate = !open && (self.options.pessimistic || must_lock);
        if let Err(err) = self
            .take_turn(&mut session, must_lock || begin_immediate)
            .await
        {
            release(conn, open, None);
            return Err(err);
        }
        let hop = CommitHop {
            open,
            begin_immediate,
            pending,
            deferred,
            need_stamp,
            watch_keys: watches.iter().map(|(k, _)| k.clone()).collect(),
        };
        let (conn, result) = exec::execute(conn, hop).await;
        drop(conn);
        drop(session.turn.take());
        self.finish_commit(result, touched, watches)
    }
}

impl SqliteTx {
    /// Hands watches to the hub (or fails them) once the commit's outcome is
    /// known.
    fn finish_commit(
        &self,
        result: Result<Committed>,
        touched: Touched,
        watches: Vec<(Vec<u8>, oneshot::Sender<Result<()>>)>,
    ) -> Result<CommitInfo> {
        match result {
            Ok((stamp, values)) => {
                self.shared.watches.poke(touched);
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
            release(conn, session.open, session.turn.take());
        }
    }
}
