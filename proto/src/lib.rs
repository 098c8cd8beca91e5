//! Meridian wire protocol: the protobuf definitions of package `meridian.v1`
//! and the prost messages and tonic clients/servers generated from them.
//!
//! This crate owns the bytes on the wire and nothing else. It must never
//! contain scheduling logic, validation, storage or networking policy: the
//! tiers (`meridian-global`, `meridian-regional`, `meridian-agent`) talk to
//! each other only through these types, and all behaviour lives in them. The
//! `.proto` files under `proto/meridian/v1/` are the reference for what every
//! field means; the generated Rust items carry the same documentation.
//!
//! Services (all in [`v1`]):
//!
//! - `Federation`: clients and the CLI to any global replica (jobs, regions,
//!   and node/log calls the global tier forwards to the region).
//! - `RegionLink`: a region's link leader to the global leader (region lease,
//!   assignment stream, acknowledgements, status, capacity, releases).
//! - `RegionAdmin`: operators (or the forwarding global tier) to a region.
//! - `AgentLink`: node agents to their region (registration, command stream,
//!   task status, heartbeats).
//!
//! Protocol conventions shared by all services:
//!
//! - Epochs are `u64`, only grow, and 0 is never issued. A unary call that
//!   presents a stale epoch for the caller's own authority is answered with
//!   [`v1::Verdict::StaleEpoch`] in the response body (or
//!   `HeartbeatResponse::reregister`); batch items get one
//!   [`v1::ItemResult`] each. A stream opened with, or overtaken by, a stale
//!   epoch ends with `FAILED_PRECONDITION`, a code used for nothing else on
//!   `RegionLink` and `AgentLink`.
//! - Cursors, versionstamps and page tokens are opaque. A stream resumed
//!   from a cursor the server no longer retains ends with `OUT_OF_RANGE`.
//! - A replica that is not the leader answers `UNAVAILABLE`, with the
//!   leader's endpoint in the [`LEADER_METADATA_KEY`] response metadata when
//!   known.
//! - Times are `*_unix_ms` (0 = unset) and durations `*_ms`; maps are
//!   `BTreeMap`s so that equal messages encode to equal bytes.

/// Generated code of protobuf package `meridian.v1`.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    rustdoc::all
)]
pub mod v1 {
    tonic::include_proto!("meridian.v1");
}

pub mod selector;

/// Encoded `google.protobuf.FileDescriptorSet` of every `meridian.v1` file
/// (with source info), for registering gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meridian_descriptor.bin"));

/// Response metadata key in which a non-leader replica names the leader's
/// endpoint when it answers `UNAVAILABLE`.
pub const LEADER_METADATA_KEY: &str = "meridian-leader";

/// Response metadata key of a RESOURCE_EXHAUSTED answer saying after how
/// many milliseconds a retry may succeed (a tenant over its submit rate or
/// its cap of queued jobs).
pub const RETRY_AFTER_MS_METADATA_KEY: &str = "retry-after-ms";

/// The message of the `NOT_FOUND` a region answers to `GetTaskLogs` for an
/// attempt without stored output: a region keeps output only for tasks that
/// wrote some, so clients may take it as "nothing to show".
pub const NO_TASK_OUTPUT: &str = "the region has no output for this task attempt";

/// Wire limits documented in the `.proto` files, for the tiers that enforce
/// them and the clients that want to respect them up front.
pub mod limits {
    /// Maximum encoded size of a `JobSpec`, in bytes.
    pub const MAX_JOB_SPEC_BYTES: usize = 64 * 1024;
    /// Maximum `JobSpec.task_count`.
    pub const MAX_TASK_COUNT: u32 = 100_000;
    /// Largest job whose region reports every task's status to the global
    /// tier; a larger job's status carries its task counts only.
    pub const MAX_TASKS_REPORTED: u32 = 256;
    /// Maximum length of a client request id, in bytes.
    pub const MAX_REQUEST_ID_BYTES: usize = 128;
    /// Maximum items per batch call (SubmitJobs, AckAssignments,
    /// ReportStatus, ReleaseJobs, ReportTaskStatus).
    pub const MAX_BATCH_ITEMS: usize = 1000;
    /// Most nodes in one RegisterNodes, HeartbeatNodes or ReportNodes call
    /// (and most opens, closes or credits in one HostAssignments message).
    pub const MAX_NODES_PER_CALL: usize = 10_000;
    /// Commands a node stream on a HostAssignments call may send before
    /// the agent grants more: every stream starts with this credit.
    pub const HOST_STREAM_WINDOW: u32 = 1024;
    /// Page size used when a list request leaves it at 0.
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
    /// Largest page size a list request may ask for.
    pub const MAX_PAGE_SIZE: u32 = 1000;
    /// Maximum captured output kept per stream (stdout, stderr) of a task
    /// attempt, in bytes.
    pub const MAX_OUTPUT_TAIL_BYTES: usize = 64 * 1024;
    /// Maximum labels on a job or a node.
    pub const MAX_LABELS: usize = 64;
    /// Maximum length of a label key, in bytes.
    pub const MAX_LABEL_KEY_BYTES: usize = 128;
    /// Maximum length of a label value, in bytes.
    pub const MAX_LABEL_VALUE_BYTES: usize = 256;
    /// Maximum `RetryPolicy.max_attempts`.
    pub const MAX_ATTEMPTS: u32 = 100;
    /// Maximum `JobSpec.stop_grace_period_ms`.
    pub const MAX_STOP_GRACE_PERIOD_MS: u64 = 3_600_000;
}

mod counts;
mod display;

pub use display::ParseTaskIdError;
