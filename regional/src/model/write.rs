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
    put_blocks(tx, keys, [(job_id, block)])
}

/// Stores many blocks, marking each job once and bumping the reporter's
/// head once for all of them (a placement batch writes thousands of blocks
/// in one transaction; one counter update per block would be thousands of
/// read-modify-writes of one row).
pub fn put_blocks<'a>(
    tx: &Transaction,
    keys: &Keys,
    blocks: impl IntoIterator<Item = (&'a str, &'a TaskBlock)>,
) -> Result<()> {
    let mut last_job: Option<&str> = None;
    for (job_id, block) in blocks {
        tx.set(
            &keys.task_block(job_id, block.first / TASK_BLOCK),
            &encode(block),
        )?;
        if last_job != Some(job_id) {
            tx.set(&keys.status_dirty(job_id), &[])?;
            last_job = Some(job_id);
        }
    }
    if last_job.is_some() {
        tx.add_i64(&keys.status_head(), 1)?;
    }
    Ok(())
}
