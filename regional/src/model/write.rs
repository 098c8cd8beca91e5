//! Writes of task blocks, the one way task states change in the store.
//!
//! Owns the rule that a task block never changes without its job being
//! marked for the link's status reporter, so a state change reaches the
//! global tier at once instead of at the next full report. Must never read:
//! the mark is a blind write, so it adds no conflicts to the writers'
//! transactions. (The one block write outside it is a new job's first,
//! all pending: its status is the one the global tier assigned.)

use meridian_store::Transaction;

use crate::error::Result;
use crate::model::{Keys, TASK_BLOCK, TaskBlock, encode};

/// Stores `block` of job `job_id` and marks the job's status as changed.
pub fn put_block(tx: &Transaction, keys: &Keys, job_id: &str, block: &TaskBlock) -> Result<()> {
    tx.set(
        &keys.task_block(job_id, block.first / TASK_BLOCK),
        &encode(block),
    )?;
    tx.set(&keys.status_dirty(job_id), &[])?;
    tx.add_i64(&keys.status_head(), 1)?;
    Ok(())
}
