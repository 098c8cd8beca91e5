//! The in-memory backend: the FoundationDB model in one process, for
//! deterministic simulation and fast tests.
//!
//! Owns an ordered multi-version map behind one lock, with FoundationDB's
//! semantics: snapshot reads at a read version taken at the first read,
//! optimistic conflict detection at commit against the write ranges of
//! later commits (`not_committed`, retryable), read-your-writes, atomic adds,
//! versionstamps from a commit version counter, and watches. There are no
//! threads, no blocking pool, no clock and no randomness: every operation
//! completes without awaiting anything except a watch's future, so a
//! single-threaded simulated runtime replays a run exactly. It must never
//! gain any of those, and never keep versions no transaction can read.
//!
//! Sharing: clones (and clones of an `Arc<MemoryBackend>`) share one
//! database, which is how several simulated processes share a store.
//!
//! Memory: old versions and commits' write ranges are kept only while a live
//! transaction may still read them or conflict with them, and never for more
//! than [`MemoryOptions::window_commits`] commits; a transaction older than
//! that window fails with retryable `transaction_too_old`, as it would on
//! FoundationDB after its 5 s MVCC window.

mod ranges;
mod state;
mod tx;

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::backend::{Backend, BackendTx, TxOptions};
use crate::error::Result;

pub use state::MemoryStats;

/// Tuning of the in-memory backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Most commits whose write ranges and superseded versions are kept for
    /// transactions still reading at an older version. A transaction whose
    /// read version falls further behind gets `transaction_too_old`.
    pub window_commits: u64,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        // Far more commits than a well-behaved transaction sees during its
        // life in a simulation, small enough that a leaked transaction
        // holds at most this many commits' worth of old versions.
        MemoryOptions {
            window_commits: 100_000,
        }
    }
}

/// A database held in memory. Clones share the same data.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Mutex<state::State>>,
}

impl MemoryBackend {
    /// An empty database with default options.
    pub fn new() -> Self {
        Self::with_options(MemoryOptions::default())
    }

    /// An empty database with explicit options.
    pub fn with_options(options: MemoryOptions) -> Self {
        MemoryBackend {
            shared: Arc::new(Mutex::new(state::State::new(options.window_commits))),
        }
    }

    /// What the database currently holds (keys, retained versions, logged
    /// commits, live readers, watches).
    pub fn stats(&self) -> MemoryStats {
        self.shared.lock().stats()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("stats", &self.stats())
            .finish()
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    /// `TxOptions::pessimistic` is ignored: taking a lock up front would
    /// mean awaiting it, and a conflict here costs only a retry.
    async fn begin(&self, _options: TxOptions) -> Result<Box<dyn BackendTx>> {
        Ok(Box::new(tx::MemoryTx::new(self.shared.clone())))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
