//! meridian-regional: the regional tier of Meridian.
//!
//! A region scheduler owns the nodes of one region. Its replicas share the
//! region store; the region's nodes are split into [`shard`]s, each led by
//! one replica under a lease with a fencing epoch. A shard leader runs the
//! [`placer`]: pending tasks in a work queue, the pure [`placement`] solver,
//! and commits of bindings with OCC on node versions and the shard epoch; and
//! the node sweep (liveness, lost tasks, stops). Every replica serves the
//! [`agent`] API (registration, assignment streams, status, heartbeats) and
//! the operator API; the replica leading the link to the global tier runs the
//! [`link`] (region lease, assignment pull, acks, status and capacity). The
//! [`server`] puts it together for `meridian regional`.
//!
//! Must never: import another tier crate (`global`, `node-agent`); tiers talk
//! only through `meridian-proto`.

pub mod agent;
pub mod console;
pub mod error;
pub mod jobs;
pub mod link;
mod metrics;
pub mod model;
pub mod placement;
pub mod placer;
pub mod server;
pub mod shard;

pub use error::{RegionalError, Result};
