//! Node heartbeats, in the memory of the replica that leads their shard.
//!
//! Owns when each node was last heard from on this replica, and at what pace
//! it was told to beat. Heartbeats are not written to the store: only the
//! transitions they lead to (SUSPECT, DOWN with its epoch bump, back to
//! READY) are, by the shard leader's sweep. A new leader has heard nothing
//! yet and counts every node as heard at the start of its term, so a
//! failover never makes a live node look dead. Must never decide a
//! transition itself: that is the sweep's, under the shard's fence.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_control::Instant;
use parking_lot::Mutex;

/// A node's last heartbeat on this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub at: Instant,
    /// The interval the node was told, in ms (0: the base interval).
    pub every_ms: u64,
}

/// The heartbeats this replica received.
#[derive(Debug, Default)]
pub struct Beats {
    last: Mutex<BTreeMap<String, Beat>>,
}

impl Beats {
    pub fn new() -> Arc<Self> {
        Arc::new(Beats::default())
    }

    /// Records a heartbeat of `node` at `at`.
    pub fn beat(&self, node: &str, at: Instant, every_ms: u64) {
        self.last
            .lock()
            .insert(node.to_string(), Beat { at, every_ms });
    }

    /// The last heartbeat of `node`, if any.
    pub fn last(&self, node: &str) -> Option<Beat> {
        self.last.lock().get(node).copied()
    }

    /// Every node's last heartbeat, held while `f` reads them (heartbeats
    /// wait meanwhile, so `f` must be short): a sweep of thousands of nodes
    /// looks each one up in place rather than copying them out first.
    pub fn with_all<R>(&self, f: impl FnOnce(&BTreeMap<String, Beat>) -> R) -> R {
        f(&self.last.lock())
    }
}
