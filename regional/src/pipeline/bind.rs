//! The binding intent: a shard leader's placement decisions, checked and
//! made durable.
//!
//! Owns what a binding must still satisfy when it commits, in the same
//! transaction as its write (the plan applier's re-check): the node is
//! schedulable at the OCC version the decision saw; the task still fits the
//! node given everything bound there (committed, and accepted earlier in this
//! transaction, by this intent or another of its group), less the
//! preemption victims it stops there (the agent starts it only once they
//! stopped), so even a wrong decision can never overcommit a node; the
//! task is still pending at the attempt seen; the job's parallelism is not
//! passed (its bound tasks as memory holds them, plus the bindings this
//! intent accepted before). Accepted bindings become task
//! records (PLACED, next attempt) and RUN commands in the nodes' logs;
//! preemption victims of accepted bindings get STOP. The shard fence and the
//! layout generation are checked by the pipeline for the whole intent.
//! Must never bind a task a check refused: those come back [`Stale`].

use std::collections::{BTreeMap, BTreeSet};

use meridian_proto::v1;

use super::overlay::{Missing, ReadSet, Tx};
use crate::model::{CommandRecord, Res, TASK_BLOCK};
use crate::placement::TaskRef;
use crate::state::RegionState;

/// One decision to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBinding {
    pub task: TaskRef,
    pub node: String,
    /// The node's OCC version the decision was made on.
    pub node_version: u64,
    /// The task's attempt number the decision saw (the binding makes it
    /// `attempt + 1`).
    pub seen_attempt: u32,
    /// What the task needs (its job's resources).
    pub resources: Res,
}

/// A preemption to carry out with the binding it makes room for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStop {
    pub victim: TaskRef,
    pub node: String,
    pub for_task: TaskRef,
    pub grace_ms: u64,
}

/// Why a binding was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The node's version moved since the decision (OCC).
    NodeVersion { seen: u64, found: u64 },
    /// The node is unknown, down, cordoned or draining now.
    NodeUnavailable,
    /// The task does not fit the node any more (a faulty or stale decision).
    NoRoom,
    /// The task is no longer pending at the attempt seen (bound, cancelled
    /// or re-placed meanwhile).
    TaskMoved,
    /// The job already has `JobSpec.parallelism` tasks bound (a faulty or
    /// stale decision).
    Parallelism,
}

/// What a binding intent did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub bound: Vec<TaskRef>,
    pub stale: Vec<(TaskRef, Stale)>,
    pub stopped: usize,
}

/// A batch of bindings of one shard.
#[derive(Debug, Clone, Default)]
pub struct Bind {
    pub shard: u32,
    pub bindings: Vec<PlannedBinding>,
    pub stops: Vec<PlannedStop>,
    pub now_unix_ms: u64,
}

/// What the binding intent takes from memory before its transaction: the
/// committed allocation of each target node, and what each preemption
/// victim counts in it. The shard leader is the only writer of its nodes'
/// bindings and the pipeline applies each commit to memory before the next
/// group starts, so this is exact for bindings; a task that ended through
/// another process and is not seen yet only makes the check more
/// conservative.
///
/// The same holds for a job's bound tasks: only its owner shard's leader
/// binds them, so memory never counts fewer than there are (an end not
/// seen yet only makes the parallelism check stricter).
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    allocated: BTreeMap<String, Res>,
    victims: BTreeMap<TaskRef, Res>,
    /// For each job with a parallelism, how many more tasks may be bound.
    parallel_room: BTreeMap<String, u32>,
}

impl Bind {
    pub(super) fn prepare(&self, state: &RegionState) -> Prepared {
        let mut allocated = BTreeMap::new();
        for b in &self.bindings {
            if !allocated.contains_key(&b.node) {
                let a = state
                    .nodes
                    .get(&b.node)
                    .map(|n| n.allocated.clone())
                    .unwrap_or_default();
                allocated.insert(b.node.clone(), a);
            }
        }
        let mut victims = BTreeMap::new();
        for stop in &self.stops {
            let bound = state
                .nodes
                .get(&stop.node)
                .and_then(|n| n.bound.get(&stop.victim))
                .filter(|b| !b.stopping);
            if let Some(b) = bound {
                victims.insert(stop.victim.clone(), b.resources.clone());
            }
        }
        let mut parallel_room = BTreeMap::new();
        for b in &self.bindings {
            if parallel_room.contains_key(&b.task.job_id) {
                continue;
            }
            if let Some(job) = state.jobs.get(&b.task.job_id)
                && job.record.parallelism > 0
            {
                parallel_room.insert(b.task.job_id.clone(), job.parallel_room());
            }
        }
        Prepared {
            allocated,
            victims,
            parallel_room,
        }
    }

    pub(super) fn reads(&self, want: &mut ReadSet) {
        for b in &self.bindings {
            want.nodes.insert(b.node.clone());
            want.blocks
                .insert((b.task.job_id.clone(), b.task.index / TASK_BLOCK));
        }
        for s in &self.stops {
            want.blocks
                .insert((s.victim.job_id.clone(), s.victim.index / TASK_BLOCK));
        }
    }

    pub(super) fn weight(&self) -> usize {
        self.bindings.len() * 160 + self.stops.len() * 100
    }

    pub(super) fn apply(
        &self,
        tx: &mut Tx<'_>,
        prepared: &Prepared,
        shard_epoch: u64,
    ) -> Result<BatchOutcome, Missing> {
        let mut out = BatchOutcome::default();
        // Victims whose room accepted bindings of this intent count on.
        let mut claimed: BTreeSet<&TaskRef> = BTreeSet::new();
        let mut room = prepared.parallel_room.clone();
        for b in &self.bindings {
            if room.get(&b.task.job_id) == Some(&0) {
                out.stale.push((b.task.clone(), Stale::Parallelism));
                continue;
            }
            match self.bind(tx, prepared, shard_epoch, b, &mut claimed)? {
                Ok(()) => {
                    if let Some(left) = room.get_mut(&b.task.job_id) {
                        *left -= 1;
                    }
                    out.bound.push(b.task.clone());
                }
                Err(stale) => out.stale.push((b.task.clone(), stale)),
            }
        }
        out.stopped = self.stop_victims(tx, &out.bound, shard_epoch)?;
        tx.count_bound(out.bound.len() as i64);
        Ok(out)
    }

    /// Checks one binding against the node and the task as they are now
    /// and writes it (task record, RUN command, room used), or says why not.
    fn bind<'s>(
        &'s self,
        tx: &mut Tx<'_>,
        prepared: &Prepared,
        shard_epoch: u64,
        b: &PlannedBinding,
        claimed: &mut BTreeSet<&'s TaskRef>,
    ) -> Result<Result<(), Stale>, Missing> {
        let Some(node) = tx.node(&b.node)?.filter(|n| n.schedulable()) else {
            return Ok(Err(Stale::NodeUnavailable));
        };
        if node.version != b.node_version {
            return Ok(Err(Stale::NodeVersion {
                seen: b.node_version,
                found: node.version,
            }));
        }
        let node_epoch = node.epoch;
        let mut room = node.allocatable.clone();
        // The victims this binding stops on the node give their room back
        // (each once, and only while it still runs there).
        let (freed, mine) = self.freed_by(tx, prepared, b, claimed)?;
        let (taken, group_freed) = tx.room(&b.node);
        let mut would = prepared.allocated.get(&b.node).cloned().unwrap_or_default();
        would.add(&taken);
        would.add(&b.resources);
        room.add(&group_freed);
        room.add(&freed);
        if meridian_control::planted::on(meridian_control::planted::Bug::PlacerIgnoresMemory) {
            // The planted defect of 7.5 reaches the commit's check too.
            would.mem = 0;
        }
        if would.cpu > room.cpu || would.mem > room.mem || would.gpus > room.gpus {
            crate::metrics::overcommit_refused();
            return Ok(Err(Stale::NoRoom));
        }
        let pending_at_seen = tx
            .task(&b.task.job_id, b.task.index)?
            .is_some_and(|t| t.is_pending() && t.attempt == b.seen_attempt);
        if !pending_at_seen {
            return Ok(Err(Stale::TaskMoved));
        }
        let Some(task) = tx.task_mut(&b.task.job_id, b.task.index)? else {
            return Ok(Err(Stale::TaskMoved));
        };
        task.state = v1::TaskState::Placed as i32;
        task.attempt += 1;
        task.node = b.node.clone();
        task.node_epoch = node_epoch;
        task.shard = self.shard;
        task.shard_epoch = shard_epoch;
        task.placed_at = self.now_unix_ms;
        task.not_before = 0;
        task.message.clear();
        // Placed again: a late report of the written-off attempt no longer
        // ends the task.
        task.lost_node.clear();
        task.lost_node_epoch = 0;
        let (attempt, assignment_epoch) = (task.attempt, task.assignment_epoch);
        tx.command(
            &b.node,
            CommandRecord {
                kind: v1::CommandKind::Run as i32,
                job: b.task.job_id.clone(),
                index: b.task.index,
                attempt,
                shard: self.shard,
                shard_epoch,
                node_epoch,
                reason: String::new(),
                grace_ms: 0,
                assignment_epoch,
            },
        );
        tx.use_room(&b.node, &b.resources, &freed);
        claimed.extend(mine);
        Ok(Ok(()))
    }

    /// The room given back by the victims `b` stops on its node that no
    /// other accepted binding counts on and that still run there.
    fn freed_by<'s>(
        &'s self,
        tx: &Tx<'_>,
        prepared: &Prepared,
        b: &PlannedBinding,
        claimed: &BTreeSet<&'s TaskRef>,
    ) -> Result<(Res, Vec<&'s TaskRef>), Missing> {
        let mut freed = Res::default();
        let mut mine: Vec<&TaskRef> = Vec::new();
        for s in &self.stops {
            if s.for_task != b.task
                || s.node != b.node
                || claimed.contains(&s.victim)
                || mine.contains(&&s.victim)
            {
                continue;
            }
            let Some(res) = prepared.victims.get(&s.victim) else {
                continue;
            };
            if stoppable(tx, s)? {
                freed.add(res);
                mine.push(&s.victim);
            }
        }
        Ok((freed, mine))
    }

    /// Stops the victims of accepted bindings that still run; returns how
    /// many.
    fn stop_victims(
        &self,
        tx: &mut Tx<'_>,
        bound: &[TaskRef],
        shard_epoch: u64,
    ) -> Result<usize, Missing> {
        let mut stopped = 0;
        let accepted: BTreeSet<&TaskRef> = bound.iter().collect();
        for s in self.stops.iter().filter(|s| accepted.contains(&s.for_task)) {
            if !stoppable(tx, s)? {
                continue;
            }
            let Some(task) = tx.task_mut(&s.victim.job_id, s.victim.index)? else {
                continue;
            };
            task.stopping = "preempted".into();
            let (attempt, node_epoch, assignment_epoch) =
                (task.attempt, task.node_epoch, task.assignment_epoch);
            tx.command(
                &s.node,
                CommandRecord {
                    kind: v1::CommandKind::Stop as i32,
                    job: s.victim.job_id.clone(),
                    index: s.victim.index,
                    attempt,
                    shard: self.shard,
                    shard_epoch,
                    node_epoch,
                    reason: "preempted".into(),
                    grace_ms: s.grace_ms,
                    assignment_epoch,
                },
            );
            stopped += 1;
        }
        Ok(stopped)
    }
}

/// Whether the victim of `stop` still runs on its node with no stop asked.
fn stoppable(tx: &Tx<'_>, stop: &PlannedStop) -> Result<bool, Missing> {
    let v = &stop.victim;
    Ok(tx
        .task(&v.job_id, v.index)?
        .is_some_and(|t| t.is_bound() && t.node == stop.node && t.stopping.is_empty()))
}
