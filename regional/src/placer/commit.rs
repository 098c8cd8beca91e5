//! The durable half of placement: committing a batch of bindings.
//!
//! Owns the one transaction that turns decisions into state: it checks the
//! shard [`Fence`] and the layout generation, then each binding's node (its
//! OCC version and registration epoch, and that it is still schedulable) and
//! task (still pending at the attempt the decision saw), and writes the
//! accepted bindings (task blocks, RUN commands in the nodes' logs) and the
//! stops of preemption victims. A binding whose check fails is left out and
//! reported stale; the others commit. Must never commit anything for a fenced
//! term or a superseded layout: those fail the whole batch.

use std::collections::{BTreeMap, BTreeSet};

use meridian_control::lease::Fence;
use meridian_proto::v1;
use meridian_store::{Database, Transaction};

use crate::error::Result;
use crate::model::view::{read_node, scan};
use crate::model::{CommandBatch, CommandRecord, Keys, NodeRecord, TASK_BLOCK, TaskBlock, decode};
use crate::placement::TaskRef;
use crate::shard::check_generation;

/// Reading every node record at once beats one read per node above this many
/// distinct nodes in a batch.
const RANGE_READ_NODES_ABOVE: usize = 64;
/// Likewise for the task blocks of the jobs in a batch: above this many jobs
/// their blocks are read as one range (the batch's jobs are contiguous in
/// key order, see [`super::round::batches`]).
const RANGE_READ_JOBS_ABOVE: usize = 64;

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
    /// The task is no longer pending at the attempt seen (bound, cancelled
    /// or re-placed meanwhile).
    TaskMoved,
}

/// What a batch commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub bound: Vec<TaskRef>,
    pub stale: Vec<(TaskRef, Stale)>,
    pub stopped: usize,
}

/// Commits `bindings` (and the stops of `stops` whose binding is accepted)
/// under `fence` and layout `generation`, in one transaction.
#[allow(clippy::too_many_arguments)]
pub async fn commit_batch(
    db: &Database,
    keys: &Keys,
    fence: &Fence,
    shard: u32,
    generation: u64,
    bindings: &[PlannedBinding],
    stops: &[PlannedStop],
    now_unix_ms: u64,
) -> Result<BatchOutcome> {
    let outcome = db
        .run(|tx, _| async move {
            commit_in(
                &tx,
                keys,
                fence,
                shard,
                generation,
                bindings,
                stops,
                now_unix_ms,
            )
            .await
        })
        .await;
    meridian_control::lease::observe::fenced_write(fence, outcome.is_ok());
    outcome
}

/// Test-only switch: while on (on the calling thread), the binding commit
/// skips its shard fence check, so a deposed leader's batch can commit. It
/// exists to prove that the simulation's checker catches exactly that.
#[cfg(feature = "unfenced-writes-for-tests")]
pub mod unfenced_for_tests {
    use std::cell::Cell;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
    }

    /// Turns the bug on or off for this thread.
    pub fn set(on: bool) {
        ON.with(|c| c.set(on));
    }

    pub(super) fn on() -> bool {
        ON.with(Cell::get)
    }
}

fn fence_check_disabled() -> bool {
    #[cfg(feature = "unfenced-writes-for-tests")]
    {
        unfenced_for_tests::on()
    }
    #[cfg(not(feature = "unfenced-writes-for-tests"))]
    {
        false
    }
}

#[allow(clippy::too_many_arguments)]
async fn commit_in(
    tx: &Transaction,
    keys: &Keys,
    fence: &Fence,
    shard: u32,
    generation: u64,
    bindings: &[PlannedBinding],
    stops: &[PlannedStop],
    now_unix_ms: u64,
) -> Result<BatchOutcome> {
    if !fence_check_disabled() {
        fence.check(tx).await?;
    }
    check_generation(tx, keys, generation).await?;

    let wanted: BTreeSet<&str> = bindings.iter().map(|b| b.node.as_str()).collect();
    let nodes = read_nodes(tx, keys, &wanted).await?;

    let blocks = read_blocks_of(tx, keys, bindings, stops).await?;
    let mut blocks = blocks;
    let mut dirty: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut commands = CommandBatch::new();
    let mut out = BatchOutcome::default();
    let shard_epoch = fence.epoch();

    for b in bindings {
        let node = match nodes.get(b.node.as_str()) {
            Some(n) if n.schedulable() => n,
            _ => {
                out.stale.push((b.task.clone(), Stale::NodeUnavailable));
                continue;
            }
        };
        if node.version != b.node_version {
            out.stale.push((
                b.task.clone(),
                Stale::NodeVersion {
                    seen: b.node_version,
                    found: node.version,
                },
            ));
            continue;
        }
        let id = (b.task.job_id.clone(), b.task.index / TASK_BLOCK);
        let Some(task) = blocks
            .get_mut(&id)
            .and_then(|bl| bl.tasks.get_mut((b.task.index % TASK_BLOCK) as usize))
        else {
            out.stale.push((b.task.clone(), Stale::TaskMoved));
            continue;
        };
        if !task.is_pending() || task.attempt != b.seen_attempt {
            out.stale.push((b.task.clone(), Stale::TaskMoved));
            continue;
        }
        task.state = v1::TaskState::Placed as i32;
        task.attempt += 1;
        task.node = b.node.clone();
        task.node_epoch = node.epoch;
        task.shard = shard;
        task.shard_epoch = shard_epoch;
        task.placed_at = now_unix_ms;
        task.not_before = 0;
        task.message.clear();
        dirty.insert(id);
        commands.push(
            &b.node,
            CommandRecord {
                kind: v1::CommandKind::Run as i32,
                job: b.task.job_id.clone(),
                index: b.task.index,
                attempt: task.attempt,
                shard,
                shard_epoch,
                node_epoch: node.epoch,
                reason: String::new(),
                grace_ms: 0,
            },
        );
        out.bound.push(b.task.clone());
    }

    let accepted: BTreeSet<&TaskRef> = out.bound.iter().collect();
    for s in stops.iter().filter(|s| accepted.contains(&s.for_task)) {
        let id = (s.victim.job_id.clone(), s.victim.index / TASK_BLOCK);
        let Some(task) = blocks
            .get_mut(&id)
            .and_then(|bl| bl.tasks.get_mut((s.victim.index % TASK_BLOCK) as usize))
        else {
            continue;
        };
        if !task.is_bound() || task.node != s.node || !task.stopping.is_empty() {
            continue;
        }
        task.stopping = "preempted".into();
        dirty.insert(id);
        commands.push(
            &s.node,
            CommandRecord {
                kind: v1::CommandKind::Stop as i32,
                job: s.victim.job_id.clone(),
                index: s.victim.index,
                attempt: task.attempt,
                shard,
                shard_epoch,
                node_epoch: task.node_epoch,
                reason: "preempted".into(),
                grace_ms: s.grace_ms,
            },
        );
        out.stopped += 1;
    }

    crate::model::put_blocks(
        tx,
        keys,
        dirty
            .iter()
            .filter_map(|id| blocks.get(id).map(|b| (id.0.as_str(), b))),
    )?;
    // A job with nothing pending any more leaves the pending index.
    for job in bindings
        .iter()
        .map(|b| b.task.job_id.as_str())
        .collect::<BTreeSet<_>>()
    {
        let any_pending = blocks
            .range((job.to_string(), 0)..=(job.to_string(), u32::MAX))
            .any(|(_, bl)| bl.tasks.iter().any(|t| t.is_pending()));
        if !any_pending {
            tx.clear(&keys.pending(job))?;
        }
    }
    if !out.bound.is_empty() {
        tx.add_i64(&keys.bound_counter(), out.bound.len() as i64)?;
    }
    commands.write(tx, keys)?;
    Ok(out)
}

async fn read_nodes<'a>(
    tx: &Transaction,
    keys: &Keys,
    wanted: &BTreeSet<&'a str>,
) -> Result<BTreeMap<&'a str, NodeRecord>> {
    let mut out = BTreeMap::new();
    if wanted.len() > RANGE_READ_NODES_ABOVE {
        for (k, v) in scan(tx, keys.nodes(), false).await? {
            if let Some(id) = keys.node_id_of(&k)
                && let Some(name) = wanted.get(id.as_str())
            {
                out.insert(*name, decode("node", &v)?);
            }
        }
    } else {
        for name in wanted {
            if let Some(node) = read_node(tx, keys, name).await? {
                out.insert(*name, node);
            }
        }
    }
    Ok(out)
}

type Blocks = BTreeMap<(String, u32), TaskBlock>;

/// Reads the task blocks of the jobs of `bindings` and of the victims of
/// `stops`. The binding jobs are read as one range from the first to the last
/// (in key order: [`super::round::batches`] cuts batches along it, so the
/// range holds few other jobs, whose blocks are skipped undecoded); victims'
/// jobs outside that range are read one by one.
async fn read_blocks_of(
    tx: &Transaction,
    keys: &Keys,
    bindings: &[PlannedBinding],
    stops: &[PlannedStop],
) -> Result<Blocks> {
    let bound: BTreeSet<&str> = bindings.iter().map(|b| b.task.job_id.as_str()).collect();
    let mut blocks = Blocks::new();
    let mut single: BTreeSet<&str> = BTreeSet::new();
    match (bound.first(), bound.last()) {
        (Some(first), Some(last)) if bound.len() > RANGE_READ_JOBS_ABOVE => {
            for (k, v) in scan(tx, keys.task_blocks_between(first, last), false).await? {
                if let Some(id) = keys.block_of(&k)
                    && bound.contains(id.0.as_str())
                {
                    blocks.insert(id, decode("task block", &v)?);
                }
            }
            single.extend(
                stops
                    .iter()
                    .map(|s| s.victim.job_id.as_str())
                    .filter(|j| !bound.contains(j)),
            );
        }
        _ => {
            single.extend(bound.iter().copied());
            single.extend(stops.iter().map(|s| s.victim.job_id.as_str()));
        }
    }
    for job in single {
        for (k, v) in scan(tx, keys.task_blocks(job), false).await? {
            if let Some(id) = keys.block_of(&k) {
                blocks.insert(id, decode("task block", &v)?);
            }
        }
    }
    Ok(blocks)
}
