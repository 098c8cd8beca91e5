//! Intents of the link leader: what the region records about its exchange
//! with the global tier.
//!
//! Owns the region lease state agents are told about, the status digests of
//! jobs the global tier accepted (and the retirement of jobs it accepted in
//! a final state: record, spec and tasks go, a tombstone of the epoch stays),
//! and the release of revoked jobs. Every one is fenced by the link lease
//! (checked by the pipeline). Must never retire a job whose tasks changed
//! since the state the global tier accepted.

use super::overlay::{Missing, Overlay, ReadSet, Tx};
use crate::link::LinkState;
use crate::model::{JobPhase, Keys, TASK_BLOCK, TaskRecord, encode};

/// The region lease as last granted by the global tier.
#[derive(Debug, Clone)]
pub struct SetLink {
    pub state: LinkState,
}

impl SetLink {
    pub(super) fn apply(&self, tx: &mut Tx<'_>) {
        tx.set_link(self.state);
    }
}

/// One status update the global tier answered ACCEPTED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub job: String,
    pub epoch: u64,
    /// Status version and task counts sent (stored as the job's digest).
    pub reported: crate::link::Reported,
    /// The state sent was final: retire the job if it still is.
    pub last: bool,
}

/// Accepted status updates to record.
#[derive(Debug, Clone, Default)]
pub struct RecordStatus {
    pub accepted: Vec<Accepted>,
    /// Wall-clock time of the report, kept with the tombstones of the jobs
    /// it retires so they can be forgotten after the retention.
    pub now_unix_ms: u64,
}

impl RecordStatus {
    pub(super) fn reads(&self, want: &mut ReadSet) {
        for a in self.accepted.iter().filter(|a| a.last) {
            want.jobs.insert(a.job.clone());
        }
    }

    pub(super) fn more_reads(&self, read: &Overlay, want: &mut ReadSet) {
        for a in self.accepted.iter().filter(|a| a.last) {
            if let Some(Some(job)) = read.jobs.get(&a.job) {
                for n in 0..job.task_count.div_ceil(TASK_BLOCK) {
                    want.blocks.insert((a.job.clone(), n));
                }
            }
        }
    }

    pub(super) fn weight(&self) -> usize {
        self.accepted.len() * 100
    }

    /// Records every digest; returns how many jobs were retired.
    pub(super) fn apply(&self, tx: &mut Tx<'_>, keys: &Keys) -> Result<u64, Missing> {
        let mut retired = 0;
        for a in &self.accepted {
            tx.set_raw(keys.job_status(&a.job), encode(&a.reported));
            if a.last
                && retire(
                    tx,
                    keys,
                    &a.job,
                    a.epoch,
                    &a.reported.digest,
                    self.now_unix_ms,
                )?
            {
                retired += 1;
            }
        }
        Ok(retired)
    }
}

/// Forgets job `job_id` once it is finished and the global tier accepted
/// exactly that final state (`reported`: the task counts sent, indexed by
/// `TaskState`). Its record, spec, task blocks and status bookkeeping go;
/// its captured output stays for `GetTaskLogs`; a tombstone keeps `epoch`
/// so a replayed ASSIGN of that epoch is refused, indexed by `now` so the
/// link leader's compaction forgets it (and the output) after the tombstone
/// retention. Without this every round, sweep and report would carry every
/// job the region ever ran.
fn retire(
    tx: &mut Tx<'_>,
    keys: &Keys,
    job_id: &str,
    epoch: u64,
    reported: &[u32],
    now: u64,
) -> Result<bool, Missing> {
    let Some(job) = tx.job(job_id)? else {
        return Ok(false);
    };
    if job.assignment_epoch != epoch || !matches!(job.state, JobPhase::Active | JobPhase::Cancelled)
    {
        return Ok(false);
    }
    let task_count = job.task_count;
    let mut blocks = Vec::new();
    for n in 0..task_count.div_ceil(TASK_BLOCK) {
        if let Some(b) = tx.block(job_id, n)? {
            blocks.push(b);
        }
    }
    let all_final = blocks
        .iter()
        .all(|b| b.tasks.iter().all(TaskRecord::is_terminal));
    if !all_final || crate::jobs::task_counts(blocks.iter().copied()) != reported {
        return Ok(false);
    }
    tx.remove_job(job_id);
    tx.clear_raw(keys.job_status(job_id));
    tx.set_raw(keys.retired(job_id), encode(&epoch));
    tx.set_raw(keys.retired_at(now, job_id), Vec::new());
    tx.set_raw(keys.retired_time(job_id), encode(&now));
    Ok(true)
}

/// Revoked jobs with nothing bound any more, released.
#[derive(Debug, Clone, Default)]
pub struct Release {
    /// `(job, epoch of the revoke)`.
    pub jobs: Vec<(String, u64)>,
}

impl Release {
    pub(super) fn reads(&self, want: &mut ReadSet) {
        for (job, _) in &self.jobs {
            want.jobs.insert(job.clone());
        }
    }

    pub(super) fn apply(&self, tx: &mut Tx<'_>) -> Result<(), Missing> {
        for (job_id, epoch) in &self.jobs {
            if let Some(mut job) = tx.job(job_id)?.cloned()
                && job.state == JobPhase::Revoked(*epoch)
            {
                job.state = JobPhase::Released(*epoch);
                tx.set_job(job);
            }
        }
        Ok(())
    }
}

/// Jobs a shard leader hands to another shard's leader.
#[derive(Debug, Clone, Default)]
pub struct Handoff {
    pub from: u32,
    /// `(job, shard to hand it to)`.
    pub moves: Vec<(String, u32)>,
}

impl Handoff {
    pub(super) fn reads(&self, want: &mut ReadSet) {
        for (job, _) in &self.moves {
            want.jobs.insert(job.clone());
        }
    }

    /// Returns the jobs moved (one that changed owner meanwhile stays).
    pub(super) fn apply(&self, tx: &mut Tx<'_>, count: u32) -> Result<Vec<String>, Missing> {
        let mut moved = Vec::new();
        for (job_id, to) in &self.moves {
            let Some(mut job) = tx.job(job_id)?.cloned() else {
                continue;
            };
            if job.shard % count.max(1) != self.from || job.state != JobPhase::Active {
                continue;
            }
            job.shard = *to;
            tx.set_job(job);
            moved.push(job_id.clone());
        }
        Ok(moved)
    }
}

/// Why jobs of one shard wait: the owner's placer records what it found.
#[derive(Debug, Clone, Default)]
pub struct Explain {
    pub from: u32,
    /// `(job, reason)`; an empty reason clears it.
    pub reasons: Vec<(String, String)>,
}

impl Explain {
    pub(super) fn reads(&self, want: &mut ReadSet) {
        for (job, _) in &self.reasons {
            want.jobs.insert(job.clone());
        }
    }

    /// Writes each reason that changed, for jobs `from` still owns (one
    /// handed on meanwhile is its new owner's to explain).
    pub(super) fn apply(&self, tx: &mut Tx<'_>, count: u32) -> Result<(), Missing> {
        for (job_id, reason) in &self.reasons {
            let Some(job) = tx.job(job_id)? else {
                continue;
            };
            if job.shard % count.max(1) != self.from
                || job.state != JobPhase::Active
                || job.waiting_reason == *reason
            {
                continue;
            }
            let mut job = job.clone();
            job.waiting_reason = reason.clone();
            tx.set_job(job);
        }
        Ok(())
    }
}
