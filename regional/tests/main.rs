//! The integration tests of this crate, built as one test binary: one link
//! instead of one per file, a fraction of the disk and build time. Each
//! file of this folder is a module here; the shared helpers are declared
//! once, above them. nextest still runs every test in its own process.

mod support;

mod agent_identity;
mod agent_link;
mod agent_retries;
mod arrays;
mod commit;
mod commit_checks;
mod compaction;
mod feed_follow;
mod holds;
mod host_streams;
mod link;
mod link_acks;
mod link_resync;
mod liveness;
mod metrics;
mod occ;
mod placement;
mod placement_events;
mod placement_properties;
mod reflection;
mod shards;
mod status_report;
mod usage_accounting;
