//! Work that runs while a candidate leads: one loop for every lease.
//!
//! Owns [`Elector::lead`]: it runs the candidacy where lease duties run
//! ([`LeaseRuntime`]), starts the caller's work for each term won, with the
//! term's [`Fence`], and stops it when the term ends, whatever ended it (a
//! lost renewal, a takeover, shutdown). Stopping is fence-first: the work is
//! told to stop and awaited, and only then does anything else happen: a new
//! term's work starts, or, on shutdown, the lease is released so a standby
//! takes over at once. No decision of an old term is in flight while a new
//! one begins, in this process or (after the release) in another.
//!
//! Must never: run two terms' work at once, start work without a won term,
//! or release the lease before the work of its term has returned.

use std::future::Future;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{Elector, Fence, LeaseRuntime, Role};

/// One term of leadership, as the work sees it.
#[derive(Debug)]
pub struct Term {
    /// Proof to check inside every write of this term.
    pub fence: Fence,
    stop: watch::Receiver<bool>,
}

impl Term {
    /// The epoch of this term.
    pub fn epoch(&self) -> u64 {
        self.fence.epoch()
    }

    /// Resolves once the term is over and the work must return. Work that
    /// ignores it is awaited anyway before the next term starts.
    pub async fn ended(&mut self) {
        // An error means the leader loop is gone: the term is over as well.
        let _ = self.stop.wait_for(|stop| *stop).await;
    }

    /// The stop signal itself, for work that polls it or hands it on.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.clone()
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Tells the work to stop and waits until it has.
    async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(err) = self.task.await
            && err.is_panic()
        {
            tracing::error!(error = %err, "work of a leadership term panicked");
        }
    }
}

impl Elector {
    /// Competes for the lease until `shutdown`, running `work` for every term
    /// won (spawned on the caller's runtime, so it never delays a renewal)
    /// and stopping it, awaited, when the term ends. On shutdown the current
    /// work is stopped first and the lease released after.
    pub async fn lead<W, Fut>(
        self,
        runtime: LeaseRuntime,
        shutdown: impl Future<Output = ()>,
        mut work: W,
    ) where
        W: FnMut(Term) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut status = self.subscribe();
        let lease_key = self.lease().fence_key().to_vec();
        let identity = self.lease().identity().clone();
        let (release, released) = oneshot::channel::<()>();
        let candidacy = runtime.spawn(self.run(async move {
            let _ = released.await;
        }));
        tokio::pin!(shutdown);
        let mut current: Option<Running> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                changed = status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = status.borrow_and_update().clone();
                    // Any change ends the current term's work first.
                    if let Some(running) = current.take() {
                        running.stop().await;
                    }
                    if now.role == Role::Leader {
                        let (stop, stop_rx) = watch::channel(false);
                        let term = Term {
                            fence: Fence::new(lease_key.clone(), identity.clone(), now.epoch),
                            stop: stop_rx,
                        };
                        let task = tokio::spawn(work(term));
                        current = Some(Running { stop, task });
                    }
                }
            }
        }
        if let Some(running) = current.take() {
            running.stop().await;
        }
        let _ = release.send(());
        let _ = candidacy.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use meridian_store::Database;
    use parking_lot::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use crate::lease::{ElectorConfig, Identity, Lease};

    fn elector(db: &Database, clock: &ManualClock, name: &str) -> Elector {
        let lease = Lease::new(
            db.clone(),
            b"lease".to_vec(),
            Identity::new_boot(name),
            clock.shared(),
            Duration::from_secs(3),
            Duration::from_millis(300),
        );
        Elector::new(
            lease,
            ElectorConfig::for_lease(Duration::from_secs(3)),
            1,
            name,
        )
    }

    /// `elector` leading with `work` until the returned sender fires.
    fn lead_until_quit<W, Fut>(elector: Elector, work: W) -> (oneshot::Sender<()>, JoinHandle<()>)
    where
        W: FnMut(Term) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (quit, quit_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(elector.lead(
            LeaseRuntime::inline(),
            async move {
                let _ = quit_rx.await;
            },
            work,
        ));
        (quit, task)
    }

    #[tokio::test]
    async fn work_runs_with_the_terms_fence_and_the_lease_is_released_only_after_it_returned() {
        let db = meridian_store::open("memory:").await.expect("store");
        let clock = ManualClock::new();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (started_tx, started) = oneshot::channel::<u64>();
        let mut started_tx = Some(started_tx);
        let work_log = log.clone();
        let (quit, leader) = lead_until_quit(elector(&db, &clock, "a"), move |mut term: Term| {
            let log = work_log.clone();
            let started = started_tx.take();
            async move {
                if let Some(tx) = started {
                    let _ = tx.send(term.epoch());
                }
                term.ended().await;
                log.lock()
                    .push(format!("work of epoch {} returned", term.epoch()));
            }
        });
        let epoch = started.await.expect("the work started");
        assert_eq!(epoch, 1);

        // Shutdown: the work returns, then the lease is released, so a
        // standby takes it over at once (not after it expires).
        let _ = quit.send(());
        leader.await.expect("lead returned");
        assert_eq!(*log.lock(), ["work of epoch 1 returned"]);
        let standby = elector(&db, &clock, "b");
        match standby.lease().try_acquire().await.expect("acquire") {
            crate::lease::Acquired::Held(held) => assert_eq!(held.fence.epoch(), 2),
            other => panic!("the lease was not released: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_term_that_ends_stops_its_work_before_anything_else_happens() {
        let db = meridian_store::open("memory:").await.expect("store");
        let clock = ManualClock::new();
        let (started_tx, started) = oneshot::channel::<()>();
        let (returned_tx, returned) = oneshot::channel::<()>();
        let mut slots = Some((started_tx, returned_tx));
        let (quit, leader) = lead_until_quit(elector(&db, &clock, "a"), move |mut term: Term| {
            let slot = slots.take();
            async move {
                let Some((started, returned)) = slot else {
                    return;
                };
                let _ = started.send(());
                term.ended().await;
                let _ = returned.send(());
            }
        });
        started.await.expect("the first term's work started");
        // The leader cannot renew while time jumps past its deadline: it
        // steps down, and its work is told to return.
        clock.advance(Duration::from_secs(10));
        returned
            .await
            .expect("the work returned when the term ended");
        let _ = quit.send(());
        leader.await.expect("lead returned");
    }

    #[tokio::test]
    async fn the_work_waits_in_ended_for_as_long_as_its_term_lasts() {
        let db = meridian_store::open("memory:").await.expect("store");
        let clock = ManualClock::new();
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let (quit, leader) = lead_until_quit(elector(&db, &clock, "a"), move |mut term: Term| {
            let events = events_tx.clone();
            async move {
                let _ = events.send("started");
                term.ended().await;
                let _ = events.send("ended");
            }
        });
        assert_eq!(events.recv().await, Some("started"));
        // The work ran as far as it could in the poll that sent "started"
        // (one thread): while the term lasts, it is held in `ended`.
        assert_eq!(
            events.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty)
        );
        let _ = quit.send(());
        leader.await.expect("lead returned");
        assert_eq!(events.recv().await, Some("ended"));
    }

    #[tokio::test]
    async fn each_terms_work_sees_the_epoch_of_its_own_term() {
        let db = meridian_store::open("memory:").await.expect("store");
        let clock = ManualClock::new();
        let (terms_tx, mut terms) = tokio::sync::mpsc::unbounded_channel::<(&'static str, u64)>();
        let work = |name: &'static str| {
            let terms = terms_tx.clone();
            move |mut term: Term| {
                let terms = terms.clone();
                async move {
                    let _ = terms.send((name, term.epoch()));
                    term.ended().await;
                }
            }
        };
        let (quit_a, a) = lead_until_quit(elector(&db, &clock, "a"), work("a"));
        assert_eq!(terms.recv().await, Some(("a", 1)));
        let (quit_b, b) = lead_until_quit(elector(&db, &clock, "b"), work("b"));
        // A hands over on shutdown; B, waiting for its next try, takes the
        // next epoch once its retry is due (at most a lease away).
        let _ = quit_a.send(());
        a.await.expect("a returned");
        clock.advance(Duration::from_secs(3));
        assert_eq!(terms.recv().await, Some(("b", 2)));
        let _ = quit_b.send(());
        b.await.expect("b returned");
    }
}
