//! Where lease duties run: on a thread and runtime of their own.
//!
//! Owns the thread that renews leases. A leader whose data path saturates the
//! process's runtime (a flood of agent reports, a large placement batch) must
//! still renew on time: a missed renewal costs a healthy leader its lease and
//! the whole shard a failover. Electors spawned here run on a single-threaded
//! tokio runtime on a dedicated OS thread, with its own timer and its own
//! blocking pool for store calls, so they are scheduled by the kernel beside
//! the busy workers instead of queued behind them.
//!
//! The simulation cannot have a second thread (it would break determinism);
//! there, and in tests, [`LeaseRuntime::inline`] spawns on the caller's
//! runtime. Must never run anything but lease duties (elector loops and the
//! like): work queued here delays renewals.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Stops the dedicated thread when the last handle is dropped.
struct Thread {
    stop: Option<oneshot::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Thread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Joining from inside a runtime would block one of its workers; the
        // thread ends on its own once told to stop.
        if let Some(join) = self.join.take()
            && Handle::try_current().is_err()
        {
            let _ = join.join();
        }
    }
}

/// Where a process's electors run. Cheap to clone.
#[derive(Clone)]
pub struct LeaseRuntime {
    handle: Option<Handle>,
    _thread: Option<Arc<Thread>>,
}

impl std::fmt::Debug for LeaseRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRuntime")
            .field("dedicated", &self.handle.is_some())
            .finish()
    }
}

impl LeaseRuntime {
    /// A dedicated thread named `name` running a single-threaded runtime.
    pub fn dedicated(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Store calls of renewals go to this runtime's own blocking pool;
            // a renewal needs one at a time per lease.
            .max_blocking_threads(8)
            .thread_name(format!("{name}-blocking"))
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let join = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
                // Dropping the runtime here cancels whatever still runs on it.
            })?;
        Ok(LeaseRuntime {
            handle: Some(handle),
            _thread: Some(Arc::new(Thread {
                stop: Some(stop),
                join: Some(join),
            })),
        })
    }

    /// Lease duties on the caller's runtime (simulation, tests).
    pub fn inline() -> Self {
        LeaseRuntime {
            handle: None,
            _thread: None,
        }
    }

    /// Whether duties run on a thread of their own.
    pub fn is_dedicated(&self) -> bool {
        self.handle.is_some()
    }

    /// Runs `future` where lease duties run.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.handle {
            Some(handle) => handle.spawn(future),
            None => tokio::spawn(future),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_dedicated_runtime_runs_while_the_callers_runtime_is_blocked() {
        let rt = LeaseRuntime::dedicated("lease-test").expect("thread");
        assert!(rt.is_dedicated());
        let (tx, rx) = std::sync::mpsc::channel();
        // The duty needs its runtime's timer (it sleeps): the scenario is a
        // duty that a blocked caller's runtime could not drive, not a wait.
        const DUTY_TIMER: std::time::Duration = std::time::Duration::from_millis(5);
        let task = rt.spawn(async move {
            tokio::time::sleep(DUTY_TIMER).await;
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        });
        // The caller's only worker is blocked right here; the duty still runs.
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the duty ran while the caller's runtime was blocked");
        assert_eq!(name.as_deref(), Some("lease-test"));
        task.await.expect("joined");
    }

    #[test]
    fn dropping_the_last_handle_stops_the_thread_and_drops_its_duties() {
        /// Says when the duty holding it is dropped.
        struct Dropped(std::sync::mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let rt = LeaseRuntime::dedicated("lease-test-stop").expect("thread");
        let (running_tx, running) = std::sync::mpsc::channel();
        let (dropped_tx, dropped) = std::sync::mpsc::channel();
        let guard = Dropped(dropped_tx);
        let _duty = rt.spawn(async move {
            let _guard = guard;
            let _ = running_tx.send(());
            std::future::pending::<()>().await;
        });
        running
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the duty started");
        // Outside any runtime, the drop joins the thread: when it returns,
        // the thread's runtime is gone and with it the never-ending duty.
        drop(rt);
        assert_eq!(dropped.try_recv(), Ok(()), "the duty outlived its runtime");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_inline_runtime_spawns_on_the_callers_runtime() {
        let rt = LeaseRuntime::inline();
        assert!(!rt.is_dedicated());
        let name = rt
            .spawn(async { std::thread::current().name().map(str::to_string) })
            .await
            .expect("joined");
        assert_eq!(name, std::thread::current().name().map(str::to_string));
    }
}
