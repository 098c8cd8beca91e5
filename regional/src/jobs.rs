//! Jobs entering and leaving the region: assign, cancel, revoke, release,
//! retire.
//!
//! Owns the idempotent application of the global tier's assignment events to
//! the region store (keyed on job id and assignment epoch, so duplicated or
//! reordered events change nothing), and [`insert_job`], the entry point
//! tests and tools use to give the region work directly. Must never issue
//! commands to agents: stopping the tasks of a cancelled or revoked job is the
//! shard leaders' sweep, the only writer of a node's command log.

use meridian_proto::v1;
use meridian_store::{Database, Transaction};
use prost::Message;

use crate::error::Result;
use crate::model::view::{read_blocks, read_job};
use crate::model::{
    JobPhase, Keys, TASK_BLOCK, TaskBlock, TaskRecord, decode, encode, job_from_spec, put_block,
};

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The store changed.
    Changed,
    /// Already applied, or superseded by a newer epoch: nothing changed.
    Unchanged,
}

/// Records job `job_id` as held under `epoch`, all its tasks pending.
/// A second ASSIGN at the same or a lower epoch is a no-op.
pub async fn apply_assign(
    tx: &Transaction,
    keys: &Keys,
    job_id: &str,
    epoch: u64,
    request_id: &str,
    spec: &v1::JobSpec,
    now_unix_ms: u64,
) -> Result<Applied> {
    apply_assign_traced(tx, keys, job_id, epoch, request_id, spec, now_unix_ms, "").await
}

/// [`apply_assign`] keeping the job's trace id with its record.
#[allow(clippy::too_many_arguments)]
pub async fn apply_assign_traced(
    tx: &Transaction,
    keys: &Keys,
    job_id: &str,
    epoch: u64,
    request_id: &str,
    spec: &v1::JobSpec,
    now_unix_ms: u64,
    trace_id: &str,
) -> Result<Applied> {
    if let Some(b) = tx.get(&keys.retired(job_id)).await?
        && epoch <= decode::<u64>("retired job", &b)?
    {
        return Ok(Applied::Unchanged);
    }
    if let Some(existing) = read_job(tx, keys, job_id).await? {
        let newest = match existing.state {
            JobPhase::Revoked(e) | JobPhase::Released(e) => e.max(existing.assignment_epoch),
            _ => existing.assignment_epoch,
        };
        if epoch <= newest {
            return Ok(Applied::Unchanged);
        }
    }
    let mut job = job_from_spec(job_id, epoch, request_id, spec, now_unix_ms)?;
    job.trace_id = trace_id.to_string();
    tx.clear_range(&keys.task_blocks(job_id).0, &keys.task_blocks(job_id).1)?;
    let mut first = 0;
    while first < job.task_count {
        let n = TASK_BLOCK.min(job.task_count - first);
        let block = TaskBlock {
            first,
            tasks: vec![TaskRecord::new_pending(); n as usize],
        };
        // Not `put_block`: a new job is ROUTED, which the global tier
        // recorded itself when it assigned the job, so there is no status
        // to send up yet.
        tx.set(
            &keys.task_block(job_id, first / TASK_BLOCK),
            &encode(&block),
        )?;
        first += n;
    }
    tx.set(&keys.job_spec(job_id), &spec.encode_to_vec())?;
    tx.set(&keys.job(job_id), &encode(&job))?;
    tx.set(&keys.pending(job_id), &encode(&0u32))?;
    tx.add_i64(&keys.pending_head(), 1)?;
    Ok(Applied::Changed)
}

/// Marks a job cancelled (the user's request, under the region's current
/// hold). Its pending tasks end KILLED at once; the shard leaders stop the
/// bound ones.
pub async fn apply_cancel(
    tx: &Transaction,
    keys: &Keys,
    job_id: &str,
    epoch: u64,
) -> Result<Applied> {
    let Some(mut job) = read_job(tx, keys, job_id).await? else {
        return Ok(Applied::Unchanged);
    };
    if epoch < job.assignment_epoch || job.state != JobPhase::Active {
        return Ok(Applied::Unchanged);
    }
    job.state = JobPhase::Cancelled;
    tx.set(&keys.job(job_id), &encode(&job))?;
    end_pending(tx, keys, job_id, "cancelled").await?;
    Ok(Applied::Changed)
}

/// Marks a job revoked under `epoch` (the epoch that fenced the region's
/// hold). Pending tasks end KILLED; the shard leaders stop the bound ones,
/// and the link leader releases the job once none is left.
pub async fn apply_revoke(
    tx: &Transaction,
    keys: &Keys,
    job_id: &str,
    epoch: u64,
) -> Result<Applied> {
    let Some(mut job) = read_job(tx, keys, job_id).await? else {
        return Ok(Applied::Unchanged);
    };
    let seen = match job.state {
        JobPhase::Revoked(e) | JobPhase::Released(e) => e,
        _ => job.assignment_epoch,
    };
    if epoch <= seen {
        return Ok(Applied::Unchanged);
    }
    job.state = JobPhase::Revoked(epoch);
    tx.set(&keys.job(job_id), &encode(&job))?;
    end_pending(tx, keys, job_id, "revoked").await?;
    Ok(Applied::Changed)
}

async fn end_pending(tx: &Transaction, keys: &Keys, job_id: &str, why: &str) -> Result<()> {
    for mut block in read_blocks(tx, keys, job_id).await? {
        let mut changed = false;
        for t in block.tasks.iter_mut().filter(|t| t.is_pending()) {
            t.state = v1::TaskState::Killed as i32;
            t.message = why.to_string();
            changed = true;
        }
        if changed {
            put_block(tx, keys, job_id, &block)?;
        }
    }
    tx.clear(&keys.pending(job_id))?;
    Ok(())
}

/// A job's tasks counted by state, indexed by `TaskState` (the digest the
/// link reports and compares).
pub fn task_counts<'a>(blocks: impl Iterator<Item = &'a TaskBlock>) -> [u32; 9] {
    let mut counts = [0u32; 9];
    for t in blocks.flat_map(|b| b.tasks.iter()) {
        counts[t.state.clamp(0, 8) as usize] += 1;
    }
    counts
}

/// Forgets job `job_id` once it is finished and the global tier has
/// accepted exactly that final state (`reported`: the task counts by state
/// that were sent, indexed by `TaskState`). Its record, spec, task blocks and
/// status bookkeeping go; its captured output stays for `GetTaskLogs`; a
/// tombstone keeps `epoch` so a replayed ASSIGN of that epoch is refused.
///
/// Without this every placement round, sweep and status report would read
/// every job the region ever ran. Returns whether the job was retired; a job
/// that changed since the report (a task placed again, a newer epoch) stays.
pub async fn retire(
    tx: &Transaction,
    keys: &Keys,
    job_id: &str,
    epoch: u64,
    reported: &[u32],
) -> Result<bool> {
    let Some(job) = read_job(tx, keys, job_id).await? else {
        return Ok(false);
    };
    if job.assignment_epoch != epoch || !matches!(job.state, JobPhase::Active | JobPhase::Cancelled)
    {
        return Ok(false);
    }
    let blocks = read_blocks(tx, keys, job_id).await?;
    let all_final = blocks
        .iter()
        .all(|b| b.tasks.iter().all(TaskRecord::is_terminal));
    if !all_final || task_counts(blocks.iter()) != reported {
        return Ok(false);
    }
    let (begin, end) = keys.task_blocks(job_id);
    tx.clear_range(&begin, &end)?;
    tx.clear(&keys.job(job_id))?;
    tx.clear(&keys.job_spec(job_id))?;
    tx.clear(&keys.job_status(job_id))?;
    // With every task final, a pending marker left behind is stale.
    tx.clear(&keys.pending(job_id))?;
    tx.clear(&keys.status_dirty(job_id))?;
    tx.set(&keys.retired(job_id), &encode(&epoch))?;
    Ok(true)
}

/// Gives the region job `job_id` directly (as an ASSIGN from the global tier
/// would), in its own transaction. Returns whether anything changed.
pub async fn insert_job(
    db: &Database,
    keys: &Keys,
    job_id: &str,
    epoch: u64,
    spec: &v1::JobSpec,
    now_unix_ms: u64,
) -> Result<Applied> {
    db.run(|tx, _| {
        let keys = keys.clone();
        let spec = spec.clone();
        let job_id = job_id.to_string();
        async move { apply_assign(&tx, &keys, &job_id, epoch, "", &spec, now_unix_ms).await }
    })
    .await
}

/// A minimal valid spec: `tasks` simulated tasks of `cpu_millis` and
/// `memory_bytes` each, for tests, tools and benchmarks.
pub fn simple_spec(tenant: &str, tasks: u32, cpu_millis: u64, memory_bytes: u64) -> v1::JobSpec {
    v1::JobSpec {
        name: "job".into(),
        tenant: tenant.into(),
        task_count: tasks,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                duration_ms: 60_000,
                exit_code: 0,
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis,
            memory_bytes,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        ..Default::default()
    }
}
