//! Where SQLite work runs: on tokio's blocking pool, never on a thread that is
//! driving futures.
//!
//! Owns the hand-off of one round trip of SQLite work to a blocking thread and
//! back. Each hand-off costs two thread wake-ups; that is the store's main
//! overhead against raw SQLite for tiny transactions (see
//! `docs/bench/store.md`), and the reason transactions buffer their writes and
//! flush them with the next read or the commit.
//!
//! Must never: run SQLite work on an async worker thread, or lose a
//! connection's open transaction when a worker dies (the pool closes a
//! connection that comes back inside a transaction).

use rusqlite::Connection;

use super::pool::PooledConn;
use crate::error::{Result, StoreError};

/// A unit of SQLite work for one round trip.
pub(crate) trait Work: Send + 'static {
    type Output: Send + 'static;
    /// What kind of round trip this is, for the round-trip counter.
    const KIND: &'static str;
    /// Runs the work on `conn`.
    fn run(&mut self, conn: &Connection) -> Result<Self::Output>;
}

/// Runs `work` on `conn` on the blocking pool. Returns the connection (unless
/// the worker thread died with it) and the outcome.
pub(crate) async fn execute<W: Work>(
    mut conn: PooledConn,
    mut work: W,
) -> (Option<PooledConn>, Result<W::Output>) {
    // Counted because round trips, not bytes, are what a store operation
    // costs here: each is two thread wake-ups.
    metrics::counter!("meridian_store_round_trips_total", "kind" => W::KIND).increment(1);
    let joined = tokio::task::spawn_blocking(move || {
        let outcome = conn.conn().and_then(|c| work.run(c));
        (conn, outcome)
    })
    .await;
    match joined {
        Ok((conn, outcome)) => (Some(conn), outcome),
        // The connection went down with the worker; the pool opens another.
        Err(e) => (
            None,
            Err(StoreError::Backend(format!("sqlite worker failed: {e}"))),
        ),
    }
}
