//! Observable counters shared by every node of a host, for operators and for
//! tests that must await "all nodes are now backing off" instead of
//! sleeping.
//!
//! Owns the [`ProbeSnapshot`] counts and their change notification. Must
//! never influence what a node does.

use tokio::sync::watch;

/// Counts over all nodes of a host at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeSnapshot {
    /// Nodes with an open session (registered, stream open).
    pub connected: usize,
    /// Nodes waiting out a reconnect backoff delay.
    pub backing_off: usize,
    /// Backoff waits started, over all time.
    pub backoffs: u64,
    /// Task attempts live (started, not yet exited).
    pub running: usize,
    /// Successful session starts, over all time.
    pub sessions: u64,
    /// Commands refused by fencing (stale shard epoch or node epoch).
    pub refused_commands: u64,
    /// Times a node was fenced (told to re-register).
    pub fenced: u64,
    /// Task attempts launched.
    pub launched: u64,
    /// Task attempts stopped because the region lease ran out (failover).
    pub region_loss_stops: u64,
    /// Streams refused by a replica that named the shard's leader, which
    /// the node then moved to.
    pub redirects: u64,
    /// Heartbeats answered in a session, over all time (counted once the
    /// next one is scheduled).
    pub heartbeats: u64,
    /// Finished attempts' directories removed past their retention.
    pub attempt_dirs_removed: u64,
}

/// Shared, watchable counters.
#[derive(Debug)]
pub struct Probe {
    tx: watch::Sender<ProbeSnapshot>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            tx: watch::Sender::new(ProbeSnapshot::default()),
        }
    }
}

impl Probe {
    /// The counts now.
    pub fn snapshot(&self) -> ProbeSnapshot {
        *self.tx.borrow()
    }

    /// Resolves with the first snapshot for which `pred` holds.
    pub async fn wait_for(&self, mut pred: impl FnMut(&ProbeSnapshot) -> bool) -> ProbeSnapshot {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`: the channel cannot close while we wait.
        match rx.wait_for(|s| pred(s)).await {
            Ok(s) => *s,
            Err(_) => self.snapshot(),
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ProbeSnapshot)) {
        self.tx.send_modify(f);
    }
}
