//! The write turn: who in this process may hold SQLite's write lock next.
//!
//! Owns the in-process queue in front of SQLite's single write lock. Every
//! round trip that takes the lock (a `BEGIN IMMEDIATE`, a flush of writes, a
//! commit that writes, a group-commit batch) first waits for its turn here,
//! asynchronously and in order, and keeps the turn until the SQLite
//! transaction has ended. Without it, writers of one process meet inside
//! SQLite, where a waiting writer sleeps in SQLite's busy handler (1 to
//! 100 ms per try, no order) and an upgrading reader gets `SQLITE_BUSY` at
//! once and backs off: under load, that starved lease renewals past their
//! deadlines.
//!
//! Two lanes, as FoundationDB's transaction priorities: a system transaction
//! (lease renewals) waits behind the current holder and at most one ordinary
//! waiter, never behind the whole ordinary queue. Ordinary waiters queue on
//! an outer lock first and only the head of that queue competes for the turn.
//!
//! Must never: be waited on while holding the turn (a transaction takes it
//! once and keeps it), or be waited on without a bound: a wait longer than
//! the busy timeout fails as retryable `Busy`, as SQLite's lock would.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::{Result, StoreError};

/// Proof that this transaction may take SQLite's write lock; dropping it
/// lets the next writer in.
pub(crate) type Turn = OwnedMutexGuard<()>;

/// The two-lane queue in front of SQLite's write lock.
pub(crate) struct WriterGate {
    turn: Arc<Mutex<()>>,
    ordinary: Mutex<()>,
    timeout: Duration,
}

impl WriterGate {
    pub(crate) fn new(timeout: Duration) -> Self {
        WriterGate {
            turn: Arc::new(Mutex::new(())),
            ordinary: Mutex::new(()),
            timeout,
        }
    }

    /// Waits for the write turn; `system` transactions skip the ordinary
    /// queue.
    pub(crate) async fn enter(&self, system: bool) -> Result<Turn> {
        let wait = async {
            if system {
                self.turn.clone().lock_owned().await
            } else {
                let _head = self.ordinary.lock().await;
                self.turn.clone().lock_owned().await
            }
        };
        tokio::time::timeout(self.timeout, wait).await.map_err(|_| {
            StoreError::Busy(format!(
                "waited {} ms for this process's write turn",
                self.timeout.as_millis()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_system_writer_goes_before_a_queue_of_ordinary_writers() {
        let gate = Arc::new(WriterGate::new(Duration::from_secs(10)));
        let holder = gate.enter(false).await.unwrap();
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..5 {
            let (gate, order) = (gate.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _turn = gate.enter(false).await.unwrap();
                order.lock().push(format!("ordinary-{i}"));
            }));
            tokio::task::yield_now().await;
        }
        let system = {
            let (gate, order) = (gate.clone(), order.clone());
            tokio::spawn(async move {
                let _turn = gate.enter(true).await.unwrap();
                order.lock().push("system".to_string());
            })
        };
        tokio::task::yield_now().await;
        drop(holder);
        system.await.unwrap();
        for w in waiters {
            w.await.unwrap();
        }
        let order = order.lock().clone();
        let at = order.iter().position(|s| s == "system").unwrap();
        assert!(
            at <= 1,
            "system writer was {at}th after the holder: {order:?}"
        );
        assert_eq!(order.len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn ordinary_writers_get_the_turn_in_arrival_order() {
        let gate = Arc::new(WriterGate::new(Duration::from_secs(10)));
        let holder = gate.enter(false).await.unwrap();
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..5 {
            let (gate, order) = (gate.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _turn = gate.enter(false).await.unwrap();
                order.lock().push(i);
            }));
            tokio::task::yield_now().await;
        }
        drop(holder);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_that_waits_past_the_busy_timeout_gets_a_retryable_busy() {
        let gate = WriterGate::new(Duration::from_millis(50));
        let _holder = gate.enter(false).await.unwrap();
        let err = gate.enter(true).await.unwrap_err();
        assert!(matches!(err, StoreError::Busy(_)), "{err:?}");
        assert!(crate::Retryable::is_retryable(&err));
    }
}
