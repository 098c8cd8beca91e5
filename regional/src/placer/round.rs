//! The pure half of a placement round: from a region view to the solver's
//! input, and from the solver's output to commit batches.
//!
//! Owns which nodes and tasks a shard leader considers (its shard's nodes;
//! the pending tasks of the jobs it took from its queue, whose retry time has
//! come) and how decisions are cut into batches (a job's bindings never span
//! two batches, so a gang commits all or nothing). Must never do I/O.

use std::collections::{BTreeMap, BTreeSet};

use super::commit::{PlannedBinding, PlannedStop};
use crate::model::{RegionView, pending_task, running_task, solver_node};
use crate::placement::{NodeId, PendingTask, Snapshot, Solution, TaskRef};
use crate::shard::shard_of_node;

/// What one solve of one shard works on.
#[derive(Debug, Clone, Default)]
pub struct RoundInput {
    pub snapshot: Snapshot,
    pub pending: Vec<PendingTask>,
    /// Attempt number of each pending task as read.
    pub seen_attempts: BTreeMap<TaskRef, u32>,
    /// Layout generation the view was read at.
    pub generation: u64,
    /// Earliest future retry time among the jobs' waiting tasks.
    pub next_retry_unix_ms: Option<u64>,
}

/// Builds the input of a solve for `shard` over `jobs`.
pub fn build_input(
    view: &RegionView,
    shard: u32,
    jobs: &BTreeSet<String>,
    now_unix_ms: u64,
) -> RoundInput {
    let (count, generation) = view.layout.map_or((1, 0), |l| (l.count, l.generation));
    let mine = |id: &str| shard_of_node(id, count) == shard;
    let mut input = RoundInput {
        generation,
        ..RoundInput::default()
    };
    for node in view.nodes.values().filter(|n| mine(&n.node_id)) {
        input
            .snapshot
            .nodes
            .insert(NodeId::new(node.node_id.clone()), solver_node(node));
    }
    for ((job_id, _), block) in &view.blocks {
        let Some(job) = view.jobs.get(job_id) else {
            continue;
        };
        let take_pending = jobs.contains(job_id) && job.state == crate::model::JobPhase::Active;
        for (i, t) in block.tasks.iter().enumerate() {
            let index = block.first + i as u32;
            if t.is_bound()
                && input
                    .snapshot
                    .nodes
                    .contains_key(&NodeId::new(t.node.clone()))
            {
                input
                    .snapshot
                    .running
                    .push(running_task(job, index, &t.node));
            } else if take_pending && t.is_pending() {
                if t.not_before > now_unix_ms {
                    input.next_retry_unix_ms = Some(
                        input
                            .next_retry_unix_ms
                            .map_or(t.not_before, |at| at.min(t.not_before)),
                    );
                    continue;
                }
                let p = pending_task(job, index);
                input.seen_attempts.insert(p.task.clone(), t.attempt);
                input.pending.push(p);
            }
        }
    }
    input
}

/// One transaction's worth of decisions.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub bindings: Vec<PlannedBinding>,
    pub stops: Vec<PlannedStop>,
}

/// Cuts a solution into batches of about `batch_size` bindings, never
/// splitting one job's bindings. Jobs go in id order, so the jobs of one
/// batch are contiguous in the store's key order and the commit reads their
/// task blocks as one short range.
pub fn batches(input: &RoundInput, solution: &Solution, batch_size: usize) -> Vec<Batch> {
    let mut by_job: BTreeMap<&str, Vec<PlannedBinding>> = BTreeMap::new();
    for b in &solution.bindings {
        let job = b.task.job_id.as_str();
        by_job.entry(job).or_default().push(PlannedBinding {
            task: b.task.clone(),
            node: b.node.0.clone(),
            node_version: b.node_version,
            seen_attempt: input.seen_attempts.get(&b.task).copied().unwrap_or(0),
        });
    }
    let mut stops_for: BTreeMap<&str, Vec<PlannedStop>> = BTreeMap::new();
    for p in &solution.preemptions {
        stops_for
            .entry(p.for_task.job_id.as_str())
            .or_default()
            .push(PlannedStop {
                victim: p.victim.clone(),
                node: p.node.0.clone(),
                for_task: p.for_task.clone(),
                grace_ms: p.grace_ms,
            });
    }
    let mut out: Vec<Batch> = Vec::new();
    let mut current = Batch::default();
    for (job, bindings) in by_job {
        if !current.bindings.is_empty() && current.bindings.len() + bindings.len() > batch_size {
            out.push(std::mem::take(&mut current));
        }
        current.bindings.extend(bindings);
        current
            .stops
            .extend(stops_for.remove(job).unwrap_or_default());
    }
    if !current.bindings.is_empty() {
        out.push(current);
    }
    out
}
