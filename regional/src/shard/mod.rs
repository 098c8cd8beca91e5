//! Shards: which shard a node belongs to, the stored layout, and this
//! replica's shard leadership.
//!
//! Owns the division of a region's nodes between scheduler replicas. Must
//! never place tasks itself: a led shard's work is a [`manager::ShardWork`].

pub mod hash;
pub mod layout;
pub mod manager;

pub use hash::{shard_of_job, shard_of_node, stable_hash};
pub use layout::{ensure_layout, observe_shard_leases};
pub use manager::{Leading, ManagerConfig, ShardManager, ShardTerm, ShardWork};
