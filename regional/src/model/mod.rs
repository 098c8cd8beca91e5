//! The region's stored model: key layout, records, consistent reads, and the
//! conversions between stored jobs and the solver's types.
//!
//! Owns the shape of the region store. Must never contain policy (who may
//! write what, when): that lives in `shard`, `placer`, `agent` and `link`.

pub mod codec;
pub mod commands;
mod convert;
pub mod feed;
pub mod keys;
pub mod records;
pub mod view;

pub use commands::CommandBatch;
pub use convert::{job_from_spec, pending_task, running_task, solver_node};
pub use keys::{Keys, TASK_BLOCK};
pub use records::{
    CommandRecord, Corrupt, JobPhase, JobRecord, Layout, NodeLiveness, NodeRecord, Record, Res,
    TaskBlock, TaskRecord, decode, encode,
};
pub use view::RegionView;
