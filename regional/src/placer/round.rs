//! The pure half of a placement round: from memory to the solver's input,
//! and from the solver's output to binding batches.
//!
//! Owns which nodes and tasks a shard leader considers (its shard's nodes
//! with what is committed on them; the pending tasks of the jobs it took from
//! its queue whose retry time has come, and for a job that is not a gang no
//! more of them than its shard has room for, so a wide job that does not fit
//! costs nothing to decide; for a job with a parallelism, no more than its
//! cap leaves, so the cap holds whatever the solver decides), when the
//! solver needs the running tasks too
//! (preemption, affinity rules), and how decisions are cut into batches (a
//! job's bindings never span two batches, so a gang commits all or nothing).
//! Must never do I/O.

use std::collections::{BTreeMap, BTreeSet};

use meridian_proto::v1::TaskState::Pending;

use super::hints::Shape;
use crate::model::{JobPhase, NodeRecord, Res, pending_task, running_task, solver_node};
use crate::pipeline::bind::{PlannedBinding, PlannedStop};
use crate::placement::{Node, NodeId, PendingTask, Resources, Snapshot, Solution, TaskRef};
use crate::state::fit::{constraints, room_for};
use crate::state::{JobEntry, NodeEntry, RegionState};

/// What one solve of one shard works on.
#[derive(Debug, Clone, Default)]
pub struct RoundInput {
    pub snapshot: Snapshot,
    pub pending: Vec<PendingTask>,
    /// Attempt number of each pending task as seen.
    pub seen_attempts: BTreeMap<TaskRef, u32>,
    /// Resources of each job's tasks.
    pub resources: BTreeMap<String, crate::model::Res>,
    /// Layout generation the state was at.
    pub generation: u64,
    /// Earliest future retry time among the jobs' waiting tasks.
    pub next_retry_unix_ms: Option<u64>,
    /// Jobs taken that had tasks waiting but no room at all in the shard:
    /// unschedulable without a solve.
    pub no_room: BTreeSet<String>,
}

/// Builds the input of a solve for `shard` over `jobs`.
pub fn build_input(
    state: &RegionState,
    shard: u32,
    jobs: &BTreeSet<String>,
    now_unix_ms: u64,
    view: &mut NodeView,
) -> RoundInput {
    let count = state.shard_count();
    let mut input = RoundInput {
        generation: state.layout.map_or(0, |l| l.generation),
        ..RoundInput::default()
    };
    let mut room_by_shape: BTreeMap<Shape, u64> = BTreeMap::new();
    for job_id in jobs {
        let Some(job) = state.jobs.get(job_id) else {
            continue;
        };
        if job.owner(count) != shard || job.record.state != JobPhase::Active || job.pending == 0 {
            continue;
        }
        // The owner shard's leader is the only one binding the job's tasks,
        // and its memory holds every binding it committed, so `bound` here
        // is never below the truth: the cap holds region-wide.
        let cap = u64::from(job.parallel_room());
        if cap == 0 {
            // At its limit: a task of its own ending (a change of the job)
            // queues it again, no timer.
            continue;
        }
        let limit = if job.record.gang {
            u64::MAX
        } else {
            shape_room(state, shard, job, &mut room_by_shape)
        };
        take_pending(state, job_id, job, limit, cap, now_unix_ms, &mut input);
    }
    if input.pending.is_empty() {
        // Nothing to solve: the nodes would only be copied and dropped.
        return input;
    }
    input.snapshot.nodes = view.refreshed(state, shard);
    if needs_running(state, &input.pending) {
        add_running(state, shard, &mut input);
    }
    input
}

/// The solver's view of a shard's nodes, kept from one round to the next.
///
/// A round used to copy every node of the shard (its id, labels, zone and
/// rack) into a fresh snapshot and drop it after the solve, which cost more
/// than the solve itself when rounds are small and frequent. The view keeps
/// the copies and rebuilds only a node whose record or committed allocation
/// differs from its copy, found by a comparison that allocates nothing.
#[derive(Debug, Default)]
pub struct NodeView {
    nodes: BTreeMap<NodeId, Node>,
}

impl NodeView {
    /// The shard's nodes as of `state`, lent to one round's input; give
    /// them back with [`NodeView::restore`].
    fn refreshed(&mut self, state: &RegionState, shard: u32) -> BTreeMap<NodeId, Node> {
        let mut nodes = std::mem::take(&mut self.nodes);
        let mut seen = 0usize;
        for (entry, record) in state.shard_nodes(shard) {
            seen += 1;
            match nodes.get_mut(record.node_id.as_str()) {
                Some(node) if is_current(node, entry, record) => {}
                Some(node) => *node = fresh(entry, record),
                None => {
                    nodes.insert(NodeId::new(record.node_id.as_str()), fresh(entry, record));
                }
            }
        }
        if nodes.len() != seen {
            // A node left the shard (or the region): drop its copy.
            nodes.retain(|id, _| {
                state
                    .nodes
                    .get(id.0.as_str())
                    .is_some_and(|e| e.shard == shard && e.record.is_some())
            });
        }
        nodes
    }

    /// Takes back the nodes lent to `input`.
    pub fn restore(&mut self, input: RoundInput) {
        if !input.snapshot.nodes.is_empty() {
            self.nodes = input.snapshot.nodes;
        }
    }
}

fn fresh(entry: &NodeEntry, record: &NodeRecord) -> Node {
    let mut node = solver_node(record);
    node.allocated = entry.allocated.to_solver();
    node
}

/// Whether `node` is what [`fresh`] would build from `entry` and `record`.
fn is_current(node: &Node, entry: &NodeEntry, record: &NodeRecord) -> bool {
    node.version == record.version
        && node.schedulable == record.schedulable()
        && same(&node.capacity, &record.allocatable)
        && same(&node.allocated, &entry.allocated)
        && node.zone.as_deref().unwrap_or("") == record.zone
        && node.rack.as_deref().unwrap_or("") == record.rack
        && node.labels == record.labels
}

fn same(solver: &Resources, res: &Res) -> bool {
    solver.cpu_millis == res.cpu
        && solver.memory_bytes == res.mem
        && solver.gpus == res.gpus
        && solver.gpu_type.as_deref().unwrap_or("") == res.gpu_type
}

/// How many tasks of a job of `job`'s shape the shard has room for. Jobs of
/// one shape see the same room: it is counted once a round (a round may
/// hold thousands of jobs of a few shapes).
fn shape_room(
    state: &RegionState,
    shard: u32,
    job: &JobEntry,
    room_by_shape: &mut BTreeMap<Shape, u64>,
) -> u64 {
    *room_by_shape
        .entry(Shape::of(&job.record))
        .or_insert_with(|| {
            let cons = constraints(&job.record);
            state
                .shard_nodes(shard)
                .map(|(e, _)| room_for(e, &job.record, &cons))
                .fold(0u64, u64::saturating_add)
        })
}

/// Takes up to `limit` of the job's tasks that wait now (more when
/// preemption could make room, never more than `cap`), lowest indexes
/// first, and notes when its waiting ones are due. Blocks with nothing
/// pending are skipped by their counts, so a round costs the job's waiting
/// blocks, not its finished ones.
fn take_pending(
    state: &RegionState,
    job_id: &str,
    job: &JobEntry,
    limit: u64,
    cap: u64,
    now_unix_ms: u64,
    input: &mut RoundInput,
) {
    let mut taken = 0u64;
    let mut waiting_now = false;
    let waiting = job
        .blocks
        .values()
        .filter(|b| b.counts[Pending as usize] > 0)
        .flat_map(|b| {
            b.block
                .tasks
                .iter()
                .enumerate()
                .map(|(i, t)| (b.block.first + i as u32, t))
        });
    for (index, t) in waiting {
        if !t.is_pending() {
            continue;
        }
        if t.not_before > now_unix_ms {
            input.next_retry_unix_ms = Some(
                input
                    .next_retry_unix_ms
                    .map_or(t.not_before, |at| at.min(t.not_before)),
            );
            continue;
        }
        waiting_now = true;
        if taken >= cap {
            break;
        }
        if taken >= limit {
            // Preemption could still make room for a higher priority.
            if job.record.priority <= state.lowest_bound_priority() {
                break;
            }
        }
        taken += 1;
        let p = pending_task(&job.record, index);
        input.seen_attempts.insert(p.task.clone(), t.attempt);
        input.pending.push(p);
    }
    if waiting_now && taken == 0 {
        input.no_room.insert(job_id.to_string());
    }
    input
        .resources
        .insert(job_id.to_string(), job.record.resources.clone());
}

/// The running tasks on the shard's nodes, for the solver to preempt or
/// weigh affinity against.
fn add_running(state: &RegionState, shard: u32, input: &mut RoundInput) {
    for (entry, record) in state.shard_nodes(shard) {
        for (task, bound) in &entry.bound {
            if let Some(job) = state.jobs.get(&task.job_id) {
                let mut running = running_task(&job.record, task.index, &record.node_id);
                // Already asked to stop (its room may already be the
                // task's it makes way for): it cannot make room again.
                running.preemptible &= !bound.stopping;
                input.snapshot.running.push(running);
            }
        }
    }
}

/// Whether the solver must see the tasks already running: to preempt some
/// of them, or to honour affinity rules that involve them.
fn needs_running(state: &RegionState, pending: &[PendingTask]) -> bool {
    let lowest = state.lowest_bound_priority();
    let rules_bound = state.bound_with_rules() > 0;
    pending.iter().any(|p| {
        p.priority > lowest
            || !p.anti_affinity.is_empty()
            || !p.affinity.is_empty()
            || (rules_bound && !p.labels.is_empty())
    })
}

/// One transaction's worth of decisions.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub bindings: Vec<PlannedBinding>,
    pub stops: Vec<PlannedStop>,
}

/// Cuts a solution into batches of about `batch_size` bindings, never
/// splitting one job's bindings.
pub fn batches(input: &RoundInput, solution: &Solution, batch_size: usize) -> Vec<Batch> {
    let mut by_job: BTreeMap<&str, Vec<PlannedBinding>> = BTreeMap::new();
    for b in &solution.bindings {
        let job = b.task.job_id.as_str();
        by_job.entry(job).or_default().push(PlannedBinding {
            task: b.task.clone(),
            node: b.node.0.clone(),
            node_version: b.node_version,
            seen_attempt: input.seen_attempts.get(&b.task).copied().unwrap_or(0),
            resources: input.resources.get(job).cloned().unwrap_or_default(),
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
