//! The region's stored model: key layout, records, consistent reads, and the
//! conversions between stored jobs and the solver's types.
//!
//! Owns the shape of the region store. Must never contain policy (who may
//! write what, when): that lives in `shard`, `placer`, `agent` and `link`.

pub mod codec;
pub mod commands;
mod convert;
pub mod keys;
pub mod records;
pub mod view;
mod write;

pub use commands::CommandBatch;
pub use convert::{job_from_spec, pending_task, running_task, solver_node};
pub use keys::{Keys, TASK_BLOCK};
pub use records::{
    CommandRecord, Corrupt, HeartbeatRecord, JobPhase, JobRecord, Layout, NodeLiveness, NodeRecord,
    Record, Res, TaskBlock, TaskRecord, decode, encode,
};
pub use view::RegionView;
pub use write::{put_block, put_blocks};
