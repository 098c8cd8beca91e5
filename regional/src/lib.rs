//! meridian-regional: the regional tier of Meridian.
//!
//! A region scheduler owns the nodes of one region. For now this crate holds
//! the pure [`placement`] solver: given a snapshot of the region's nodes and
//! the tasks already running on them, it decides where pending tasks go, which
//! lower-priority tasks are preempted for them, and why the rest cannot be
//! placed. The shard leases, the agent API and node liveness will live here
//! too; they will feed the solver a [`placement::Snapshot`] and commit its
//! [`placement::Solution`] with OCC on node versions and the shard epoch.
//!
//! Must never: import another tier crate (`global`, `node-agent`); tiers talk
//! only through `meridian-proto`.

pub mod placement;
