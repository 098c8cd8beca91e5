//! meridian-regional: the regional tier of Meridian.
//!
//! A region scheduler owns the nodes of one region. Its replicas share the
//! region store; the region's nodes are split into [`shard`]s, each led by
//! one replica under a lease with a fencing epoch. Every replica keeps the
//! region in memory ([`state`]), loaded once and kept current by its own
//! commits and the store's change feed, and writes through one batching
//! write [`pipeline`] that re-checks every decision against the store under
//! its fence. A shard leader runs the [`placer`]: jobs its shard owns in a
//! work queue fed by changes to memory, the pure [`placement`] solver, and
//! node [`liveness`] from heartbeats held in memory. The leader of a node's
//! shard serves its [`agent`] API; the replica leading the link to the
//! global tier runs the [`link`]. The [`replica`] data path and the
//! [`server`] put it together for `meridian regional`.
//!
//! Must never: import another tier crate (`global`, `node-agent`); tiers talk
//! only through `meridian-proto`.

pub mod agent;
pub mod console;
pub mod error;
pub mod fixture;
pub mod jobs;
pub mod link;
pub mod liveness;
mod metrics;
pub mod model;
pub mod pipeline;
pub mod placement;
pub mod placer;
pub mod replica;
pub mod server;
pub mod shard;
pub mod state;

pub use error::{RegionalError, Result};
