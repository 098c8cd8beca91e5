//! The intake intent: the global tier's assignment events, applied.
//!
//! Owns the idempotent application of ASSIGN, CANCEL and REVOKE, keyed on
//! job id and assignment epoch (a duplicate, late or reordered event changes
//! nothing), the stream cursor stored with them, and which shard owns a new
//! job: the shard whose leader will place it, chosen from memory as one with
//! room for it (see `state::fit::owner_for`), so a job whose only feasible
//! nodes sit in one shard goes straight there. Cancelled and revoked jobs'
//! pending tasks end KILLED here; their bound tasks are stopped by the shard
//! leaders' sweeps, the only writers of the nodes' command logs. Must never
//! apply an event without storing its cursor in the same transaction.

use std::collections::BTreeMap;

use meridian_proto::v1;
use prost::Message;

use super::overlay::{Missing, Overlay, ReadSet, Tx};
use crate::error::RegionalError;
use crate::jobs::Applied;
use crate::model::{JobPhase, Keys, TASK_BLOCK, TaskBlock, TaskRecord, decode, job_from_spec};
use crate::shard::shard_of_job;
use crate::state::RegionState;

/// A batch of events from the assignment stream, in stream order.
#[derive(Debug, Clone, Default)]
pub struct Intake {
    pub events: Vec<v1::AssignmentEvent>,
    /// Stored with the events; `Some(empty)` clears the stored cursor.
    pub cursor: Option<Vec<u8>>,
    pub now_unix_ms: u64,
}

/// What intake takes from memory first: the owner shard of each new job.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    owners: BTreeMap<String, u32>,
}

impl Intake {
    pub(super) fn prepare(&self, state: &RegionState) -> Prepared {
        let count = state.shard_count();
        let mut owners = BTreeMap::new();
        for e in &self.events {
            if e.kind != v1::AssignmentEventKind::Assign as i32 {
                continue;
            }
            let preferred = shard_of_job(&e.job_id, count);
            let owner = e
                .spec
                .as_ref()
                .and_then(|spec| job_from_spec(&e.job_id, e.assignment_epoch, "", spec, 0).ok())
                .map_or(preferred, |job| {
                    crate::state::fit::owner_for(state, &job, preferred)
                });
            owners.insert(e.job_id.clone(), owner);
        }
        Prepared { owners }
    }

    pub(super) fn reads(&self, keys: &Keys, want: &mut ReadSet) {
        for e in &self.events {
            want.jobs.insert(e.job_id.clone());
            if e.kind == v1::AssignmentEventKind::Assign as i32 {
                want.raw.insert(keys.retired(&e.job_id));
            }
        }
    }

    /// The blocks of jobs that may be cancelled or revoked.
    pub(super) fn more_reads(&self, read: &Overlay, want: &mut ReadSet) {
        for e in &self.events {
            if e.kind == v1::AssignmentEventKind::Assign as i32 {
                continue;
            }
            if let Some(Some(job)) = read.jobs.get(&e.job_id) {
                for n in 0..job.task_count.div_ceil(TASK_BLOCK) {
                    want.blocks.insert((e.job_id.clone(), n));
                }
            }
        }
    }

    pub(super) fn weight(&self) -> usize {
        self.events.iter().map(|e| 300 + e.encoded_len()).sum()
    }

    pub(super) fn apply(
        &self,
        tx: &mut Tx<'_>,
        keys: &Keys,
        prepared: &Prepared,
    ) -> Result<Result<Vec<Applied>, RegionalError>, Missing> {
        let mut out = Vec::with_capacity(self.events.len());
        for event in &self.events {
            let kind = v1::AssignmentEventKind::try_from(event.kind)
                .unwrap_or(v1::AssignmentEventKind::Unspecified);
            let applied = match kind {
                v1::AssignmentEventKind::Assign => {
                    match assign(tx, keys, event, prepared, self.now_unix_ms)? {
                        Ok(a) => a,
                        Err(e) => return Ok(Err(e)),
                    }
                }
                v1::AssignmentEventKind::Cancel => {
                    end(tx, &event.job_id, event.assignment_epoch, Ending::Cancel)?
                }
                v1::AssignmentEventKind::Revoke => {
                    end(tx, &event.job_id, event.assignment_epoch, Ending::Revoke)?
                }
                _ => Applied::Unchanged,
            };
            out.push(applied);
        }
        match &self.cursor {
            Some(c) if c.is_empty() => tx.clear_raw(keys.link_cursor()),
            Some(c) => tx.set_raw(keys.link_cursor(), c.clone()),
            None => {
                if let Some(c) = self.events.iter().rev().find(|e| !e.cursor.is_empty()) {
                    tx.set_raw(keys.link_cursor(), c.cursor.clone());
                }
            }
        }
        Ok(Ok(out))
    }
}

fn assign(
    tx: &mut Tx<'_>,
    keys: &Keys,
    event: &v1::AssignmentEvent,
    prepared: &Prepared,
    now: u64,
) -> Result<Result<Applied, RegionalError>, Missing> {
    let job_id = &event.job_id;
    let epoch = event.assignment_epoch;
    let Some(spec) = &event.spec else {
        return Ok(Err(RegionalError::invalid("spec", "ASSIGN without a spec")));
    };
    if let Some(b) = tx.raw(&keys.retired(job_id))?
        && decode::<u64>("retired job", &b).is_ok_and(|e| epoch <= e)
    {
        return Ok(Ok(Applied::Unchanged));
    }
    let existing = tx.job(job_id)?.cloned();
    if let Some(existing) = &existing {
        let newest = match existing.state {
            JobPhase::Revoked(e) | JobPhase::Released(e) => e.max(existing.assignment_epoch),
            _ => existing.assignment_epoch,
        };
        if epoch <= newest {
            return Ok(Ok(Applied::Unchanged));
        }
    }
    let created = if event.job_created_at_unix_ms > 0 {
        event.job_created_at_unix_ms
    } else {
        now
    };
    let mut job = match job_from_spec(job_id, epoch, &event.request_id, spec, created) {
        Ok(j) => j,
        Err(e) => return Ok(Err(e)),
    };
    job.trace_id = event.trace_id.clone();
    job.shard = prepared.owners.get(job_id).copied().unwrap_or(0);
    if let Some(old) = &existing {
        // A new hold of a job held before: the new tasks replace the old
        // ones below; blocks past the new count go.
        let new_blocks = job.task_count.div_ceil(TASK_BLOCK);
        for n in new_blocks..old.task_count.div_ceil(TASK_BLOCK) {
            tx.clear_block(job_id, n);
        }
    }
    let mut first = 0;
    while first < job.task_count {
        let n = TASK_BLOCK.min(job.task_count - first);
        tx.set_block(
            job_id,
            TaskBlock {
                first,
                tasks: vec![TaskRecord::new_pending_in(job.assignment_epoch); n as usize],
            },
        );
        first += n;
    }
    tx.set_spec(job_id, spec.encode_to_vec());
    tx.set_job(job);
    Ok(Ok(Applied::Changed))
}

enum Ending {
    Cancel,
    Revoke,
}

/// A cancel (under the region's current hold) or a revoke (under the epoch
/// that fenced it): the job stops being placed, its pending tasks end KILLED.
fn end(tx: &mut Tx<'_>, job_id: &str, epoch: u64, how: Ending) -> Result<Applied, Missing> {
    let Some(mut job) = tx.job(job_id)?.cloned() else {
        return Ok(Applied::Unchanged);
    };
    let why = match how {
        Ending::Cancel => {
            if epoch < job.assignment_epoch || job.state != JobPhase::Active {
                return Ok(Applied::Unchanged);
            }
            job.state = JobPhase::Cancelled;
            "cancelled"
        }
        Ending::Revoke => {
            let seen = match job.state {
                JobPhase::Revoked(e) | JobPhase::Released(e) => e,
                _ => job.assignment_epoch,
            };
            if epoch <= seen {
                return Ok(Applied::Unchanged);
            }
            job.state = JobPhase::Revoked(epoch);
            "revoked"
        }
    };
    for n in 0..job.task_count.div_ceil(TASK_BLOCK) {
        let any_pending = tx
            .block(job_id, n)?
            .is_some_and(|b| b.tasks.iter().any(|t| t.is_pending()));
        if !any_pending {
            continue;
        }
        let Some(block) = tx.block_mut(job_id, n)? else {
            continue;
        };
        for t in block.tasks.iter_mut().filter(|t| t.is_pending()) {
            t.state = v1::TaskState::Killed as i32;
            t.message = why.to_string();
        }
    }
    tx.set_job(job);
    Ok(Applied::Changed)
}
