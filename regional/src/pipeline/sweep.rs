//! The sweep intent: tasks written off with their node, and stops.
//!
//! Owns what follows from a node's death and from a job or node that no
//! longer wants its tasks: an attempt bound under a node epoch that is gone
//! goes back to pending (after a fence wait for exclusive jobs) or, for a job
//! that is not active, ends LOST; an attempt of a cancelled or revoked job,
//! or on a draining node, gets one STOP. Each applies only if the task is
//! still bound as the decision saw it. Must never write off a task whose
//! node epoch has not moved: the epoch bump commits first, on its own.

use meridian_proto::v1;

use super::overlay::{Missing, ReadSet, Tx};
use crate::model::{CommandRecord, JobPhase, TASK_BLOCK, TaskRecord};
use crate::placement::TaskRef;

/// An attempt lost with its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostTask {
    pub task: TaskRef,
    pub attempt: u32,
    pub node_epoch: u64,
    /// Not placed again before this wall time (exclusive jobs' fence wait).
    pub not_before: u64,
}

/// An attempt to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopTask {
    pub task: TaskRef,
    pub attempt: u32,
    pub node: String,
    pub reason: String,
    pub grace_ms: u64,
}

/// A sweep's task changes in one shard.
#[derive(Debug, Clone, Default)]
pub struct SweepTasks {
    pub shard: u32,
    pub lost: Vec<LostTask>,
    pub stops: Vec<StopTask>,
}

/// What a sweep intent did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepDone {
    pub lost: usize,
    pub stops: usize,
}

impl SweepTasks {
    pub fn is_empty(&self) -> bool {
        self.lost.is_empty() && self.stops.is_empty()
    }

    pub(super) fn reads(&self, want: &mut ReadSet) {
        for t in self
            .lost
            .iter()
            .map(|l| &l.task)
            .chain(self.stops.iter().map(|s| &s.task))
        {
            want.blocks.insert((t.job_id.clone(), t.index / TASK_BLOCK));
            want.jobs.insert(t.job_id.clone());
        }
    }

    pub(super) fn weight(&self) -> usize {
        (self.lost.len() + self.stops.len()) * 120
    }

    pub(super) fn apply(&self, tx: &mut Tx<'_>, shard_epoch: u64) -> Result<SweepDone, Missing> {
        let mut done = SweepDone::default();
        for l in &self.lost {
            let active = tx
                .job(&l.task.job_id)?
                .is_some_and(|j| j.state == JobPhase::Active);
            let still_lost = |t: &TaskRecord| {
                t.is_bound() && t.attempt == l.attempt && t.node_epoch == l.node_epoch
            };
            if !tx
                .task(&l.task.job_id, l.task.index)?
                .is_some_and(still_lost)
            {
                continue;
            }
            let Some(t) = tx.task_mut(&l.task.job_id, l.task.index)? else {
                continue;
            };
            if active {
                t.repend_lost(l.not_before);
            } else {
                t.state = v1::TaskState::Lost as i32;
                t.message = "lost with its node".into();
            }
            done.lost += 1;
        }
        for s in &self.stops {
            let still_to_stop = |t: &TaskRecord| {
                t.is_bound() && t.attempt == s.attempt && t.node == s.node && t.stopping.is_empty()
            };
            if !tx
                .task(&s.task.job_id, s.task.index)?
                .is_some_and(still_to_stop)
            {
                continue;
            }
            let Some(t) = tx.task_mut(&s.task.job_id, s.task.index)? else {
                continue;
            };
            t.stopping = s.reason.clone();
            let (node_epoch, assignment_epoch) = (t.node_epoch, t.assignment_epoch);
            tx.command(
                &s.node,
                CommandRecord {
                    kind: v1::CommandKind::Stop as i32,
                    job: s.task.job_id.clone(),
                    index: s.task.index,
                    attempt: s.attempt,
                    shard: self.shard,
                    shard_epoch,
                    node_epoch,
                    reason: s.reason.clone(),
                    grace_ms: s.grace_ms,
                    assignment_epoch,
                },
            );
            done.stops += 1;
        }
        Ok(done)
    }
}
