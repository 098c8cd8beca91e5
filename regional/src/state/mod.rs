//! A replica's memory of its region: nodes, jobs, task blocks, layout.
//!
//! Owns the in-memory copy of the region's records that every decision of a
//! replica is made from (placement, liveness, agent calls, reports upward),
//! and what is derived from it (each node's bound tasks and allocated
//! resources, the jobs with pending tasks). It is a cache of the store and
//! nothing more: it is loaded in one read ([`load`]), then kept current by
//! this process's own commits (the write pipeline applies what it wrote, at
//! its commit stamp) and by the change feed ([`tail`]) for everyone else's.
//! Every record carries the commit stamp it is known to reflect, and a
//! record is only ever replaced by one of a later stamp, so the two sources
//! can interleave in any order and still converge on the store.
//!
//! Must never hold anything that is not committed: decisions made from it
//! are re-checked against the store inside the transaction that applies them
//! (the pipeline), so a stale memory costs a retry, never safety.

pub mod delta;
pub mod fit;
pub mod load;
pub mod tail;
pub mod why;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meridian_proto::v1;
use parking_lot::RwLock;

use crate::link::LinkState;
use crate::model::{JobPhase, JobRecord, Layout, NodeRecord, Res, TASK_BLOCK, TaskBlock};
use crate::placement::TaskRef;
use crate::shard::shard_of_node;
pub use delta::{Delta, Watcher, Watchers};

/// A commit's 10-byte versionstamp: the position of a change in the
/// region's commit order. All zeros: known to be no older than the load.
pub type Stamp = [u8; 10];

/// A task bound to a node, as the node's entry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub attempt: u32,
    pub node_epoch: u64,
    /// The hold the attempt belongs to (`TaskRecord::assignment_epoch`).
    pub assignment_epoch: u64,
    pub resources: Res,
    /// A stop was asked for.
    pub stopping: bool,
    /// The job's priority.
    pub priority: i32,
    /// The job carries anti-affinity rules.
    pub rules: bool,
}

/// One node: its record (none yet when tasks name a node whose record has
/// not arrived) and what is bound there.
#[derive(Debug, Clone, Default)]
pub struct NodeEntry {
    pub record: Option<NodeRecord>,
    pub label: Stamp,
    /// Shard of the node under the current layout.
    pub shard: u32,
    pub allocated: Res,
    pub bound: BTreeMap<TaskRef, Bound>,
    /// Stamp of the node's last command-log entry.
    pub cmd_head: Option<Stamp>,
}

impl NodeEntry {
    /// Whether new work may be bound here.
    pub fn schedulable(&self) -> bool {
        self.record.as_ref().is_some_and(NodeRecord::schedulable)
    }

    /// What is left of the node's allocatable resources.
    pub fn free(&self) -> Res {
        let Some(r) = &self.record else {
            return Res::default();
        };
        Res {
            cpu: r.allocatable.cpu.saturating_sub(self.allocated.cpu),
            mem: r.allocatable.mem.saturating_sub(self.allocated.mem),
            gpus: r.allocatable.gpus.saturating_sub(self.allocated.gpus),
            gpu_type: r.allocatable.gpu_type.clone(),
        }
    }
}

/// One block of a job's tasks.
#[derive(Debug, Clone)]
pub struct BlockEntry {
    pub block: TaskBlock,
    pub label: Stamp,
    /// The block's tasks by state, counted when the block is put, so a job
    /// of many blocks is never recounted task by task.
    pub counts: TaskCounts,
    /// Accounting: run time (ms) and runs summed over the block's tasks,
    /// summed when the block is put, like `counts`.
    pub ran: Ran,
}

/// Accounting sums over tasks: (run time in ms, attempts that ran).
pub type Ran = (u64, u64);

fn ran_of(block: &TaskBlock) -> Ran {
    block.tasks.iter().fold((0, 0), |(ms, runs), t| {
        (
            ms.saturating_add(t.ran_ms),
            runs.saturating_add(u64::from(t.runs)),
        )
    })
}

/// Tasks by state, indexed by `v1::TaskState` (what the link reports
/// upward and compares).
pub type TaskCounts = [u32; 9];

fn counts_of(block: &TaskBlock) -> TaskCounts {
    crate::jobs::task_counts(std::iter::once(block))
}

/// One job with its spec and tasks.
#[derive(Debug, Clone)]
pub struct JobEntry {
    pub record: JobRecord,
    pub spec: Option<Arc<v1::JobSpec>>,
    pub label: Stamp,
    pub blocks: BTreeMap<u32, BlockEntry>,
    /// Tasks waiting for a node.
    pub pending: u32,
    /// Every task of the job by state: the sum of its blocks' counts, kept
    /// as blocks are put and removed (O(block), never O(job)).
    pub counts: TaskCounts,
    /// The sum of its blocks' accounting sums, kept the same way.
    pub ran: Ran,
}

impl JobEntry {
    /// The task record of `index`, if its block is known.
    pub fn task(&self, index: u32) -> Option<&crate::model::TaskRecord> {
        let block = self.blocks.get(&(index / TASK_BLOCK))?;
        block.block.tasks.get((index - block.block.first) as usize)
    }

    /// Every task with its index, in order.
    pub fn tasks(&self) -> impl Iterator<Item = (u32, &crate::model::TaskRecord)> {
        self.blocks.values().flat_map(|b| {
            b.block
                .tasks
                .iter()
                .enumerate()
                .map(|(i, t)| (b.block.first + i as u32, t))
        })
    }

    /// The tasks of the blocks holding a bound task, with their index:
    /// every bound task of the job, without walking its finished blocks.
    pub fn tasks_of_bound_blocks(&self) -> impl Iterator<Item = (u32, &crate::model::TaskRecord)> {
        self.blocks
            .values()
            .filter(|b| {
                [
                    v1::TaskState::Placed,
                    v1::TaskState::Starting,
                    v1::TaskState::Running,
                ]
                .iter()
                .any(|s| b.counts[*s as usize] > 0)
            })
            .flat_map(|b| {
                b.block
                    .tasks
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (b.block.first + i as u32, t))
            })
    }

    /// The shard whose leader places this job's pending tasks.
    pub fn owner(&self, count: u32) -> u32 {
        self.record.shard % count.max(1)
    }

    /// Tasks bound to a node and not finished (PLACED, STARTING,
    /// RUNNING): what `JobSpec.parallelism` caps.
    pub fn bound(&self) -> u32 {
        [
            v1::TaskState::Placed,
            v1::TaskState::Starting,
            v1::TaskState::Running,
        ]
        .iter()
        .map(|s| self.counts[*s as usize])
        .sum()
    }

    /// How many more tasks may be bound now under the job's parallelism
    /// (`u32::MAX` without one).
    pub fn parallel_room(&self) -> u32 {
        match self.record.parallelism {
            0 => u32::MAX,
            cap => cap.saturating_sub(self.bound()),
        }
    }
}

/// The region as a replica knows it.
#[derive(Debug, Clone, Default)]
pub struct RegionState {
    pub layout: Option<Layout>,
    pub layout_label: Stamp,
    pub nodes: BTreeMap<String, NodeEntry>,
    pub jobs: BTreeMap<String, JobEntry>,
    pub link: Option<LinkState>,
    pub link_label: Stamp,
    /// Active jobs with pending tasks.
    pub pending_jobs: BTreeSet<String>,
    /// Jobs removed (retired) at a stamp: an older re-read must not bring
    /// them back. Pruned once the feed cursor passes the stamp.
    removed: BTreeMap<String, Stamp>,
    /// Bound tasks by their job's priority (who could be preempted).
    bound_priorities: BTreeMap<i32, u64>,
    /// Bound tasks whose job carries anti-affinity rules.
    bound_rules: u64,
    /// Position in the change feed: every entry up to here is reflected.
    pub cursor: Stamp,
}

fn forget_bound(priorities: &mut BTreeMap<i32, u64>, rules: &mut u64, b: &Bound) {
    if let Some(n) = priorities.get_mut(&b.priority) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            priorities.remove(&b.priority);
        }
    }
    *rules = rules.saturating_sub(u64::from(b.rules));
}

/// Whether a value read at `label` may replace one held at `than`: the same
/// stamp is the same commit, so the same value.
fn newer(label: Stamp, than: Stamp) -> bool {
    label >= than
}

impl RegionState {
    /// Shards in the current layout (1 before any layout is known).
    pub fn shard_count(&self) -> u32 {
        self.layout.map_or(1, |l| l.count.max(1))
    }

    /// The lowest priority among bound tasks (`i32::MAX` when none is):
    /// only a task above it could preempt anything.
    pub fn lowest_bound_priority(&self) -> i32 {
        self.bound_priorities
            .keys()
            .next()
            .copied()
            .unwrap_or(i32::MAX)
    }

    /// How many bound tasks carry anti-affinity rules.
    pub fn bound_with_rules(&self) -> u64 {
        self.bound_rules
    }

    /// Nodes with a record, in id order.
    pub fn node_records(&self) -> impl Iterator<Item = (&NodeEntry, &NodeRecord)> {
        self.nodes
            .values()
            .filter_map(|e| e.record.as_ref().map(|r| (e, r)))
    }

    /// Nodes of shard `shard` with a record.
    pub fn shard_nodes(&self, shard: u32) -> impl Iterator<Item = (&NodeEntry, &NodeRecord)> {
        self.node_records().filter(move |(e, _)| e.shard == shard)
    }

    /// Replaces the layout if `label` is newer.
    pub fn put_layout(&mut self, layout: Option<Layout>, label: Stamp, delta: &mut Delta) {
        if !newer(label, self.layout_label) || layout == self.layout {
            return;
        }
        self.layout = layout;
        self.layout_label = label;
        let count = self.shard_count();
        for (id, e) in self.nodes.iter_mut() {
            e.shard = shard_of_node(id, count);
        }
        delta.layout = true;
    }

    /// Replaces the link state if `label` is newer.
    pub fn put_link(&mut self, link: Option<LinkState>, label: Stamp, delta: &mut Delta) {
        if !newer(label, self.link_label) {
            return;
        }
        self.link_label = label;
        if self.link != link {
            self.link = link;
            delta.link = true;
        }
    }

    /// Replaces a node record if `label` is newer than the one held.
    pub fn put_node(
        &mut self,
        id: &str,
        record: Option<NodeRecord>,
        label: Stamp,
        delta: &mut Delta,
    ) {
        let count = self.shard_count();
        if !self.nodes.contains_key(id) {
            self.nodes.insert(
                id.to_string(),
                NodeEntry {
                    shard: shard_of_node(id, count),
                    ..NodeEntry::default()
                },
            );
        }
        let Some(entry) = self.nodes.get_mut(id) else {
            return;
        };
        if entry.record.is_some() && !newer(label, entry.label) {
            return;
        }
        entry.label = label.max(entry.label);
        if entry.record == record {
            return;
        }
        let before = entry.record.take();
        let more_room = match (&before, &record) {
            (None, Some(n)) => n.schedulable(),
            (Some(b), Some(n)) => {
                (n.schedulable() && !b.schedulable())
                    || n.allocatable.cpu > b.allocatable.cpu
                    || n.allocatable.mem > b.allocatable.mem
                    || n.allocatable.gpus > b.allocatable.gpus
            }
            _ => false,
        };
        let epoch_moved = match (&before, &record) {
            (Some(b), Some(n)) => b.epoch != n.epoch || n.liveness != b.liveness,
            _ => false,
        };
        entry.record = record;
        delta.nodes.insert(id.to_string());
        if more_room {
            delta.freed.insert(id.to_string());
        }
        if epoch_moved {
            delta.epochs.insert(id.to_string());
        }
    }

    /// Records the stamp of a node's newest command-log entry.
    pub fn put_cmd_head(&mut self, node: &str, stamp: Stamp) {
        let count = self.shard_count();
        let entry = self
            .nodes
            .entry(node.to_string())
            .or_insert_with(|| NodeEntry {
                shard: shard_of_node(node, count),
                ..NodeEntry::default()
            });
        if entry.cmd_head.is_none_or(|h| stamp > h) {
            entry.cmd_head = Some(stamp);
        }
    }

    /// Replaces a job's record and spec if `label` is newer; `None` removes
    /// the job with all its tasks (retired). Blocks are set with
    /// [`RegionState::put_block`].
    pub fn put_job(
        &mut self,
        id: &str,
        job: Option<(JobRecord, Option<Arc<v1::JobSpec>>)>,
        label: Stamp,
        delta: &mut Delta,
    ) {
        if let Some(gone) = self.removed.get(id)
            && !newer(label, *gone)
        {
            return;
        }
        if let Some(e) = self.jobs.get(id)
            && !newer(label, e.label)
        {
            return;
        }
        match job {
            None => {
                if let Some(old) = self.jobs.remove(id) {
                    for (_, b) in old.blocks {
                        self.unaccount(id, &b.block, delta);
                    }
                    delta.jobs.insert(id.to_string());
                }
                self.pending_jobs.remove(id);
                self.removed.insert(id.to_string(), label);
            }
            Some((record, spec)) => {
                self.removed.remove(id);
                let entry = self.jobs.entry(id.to_string()).or_insert_with(|| JobEntry {
                    record: record.clone(),
                    spec: None,
                    label,
                    blocks: BTreeMap::new(),
                    pending: 0,
                    counts: [0; 9],
                    ran: (0, 0),
                });
                let changed = entry.record != record || entry.spec.is_none();
                entry.record = record;
                if spec.is_some() {
                    entry.spec = spec;
                }
                entry.label = label.max(entry.label);
                if changed {
                    delta.jobs.insert(id.to_string());
                }
                self.refresh_pending(id);
            }
        }
    }

    /// Replaces block `block` of job `job` if `label` is newer; `None`
    /// removes it. Ignored for a job not (or no longer) known: its job
    /// change brings the blocks with it.
    pub fn put_block(
        &mut self,
        job: &str,
        block: u32,
        value: Option<TaskBlock>,
        label: Stamp,
        delta: &mut Delta,
    ) {
        let Some(entry) = self.jobs.get(job) else {
            return;
        };
        if let Some(b) = entry.blocks.get(&block)
            && !newer(label, b.label)
        {
            return;
        }
        let old = self.jobs.get_mut(job).and_then(|e| e.blocks.remove(&block));
        if let Some(old) = &old {
            self.unaccount(job, &old.block, delta);
            if let Some(e) = self.jobs.get_mut(job) {
                for (total, n) in e.counts.iter_mut().zip(old.counts) {
                    *total = total.saturating_sub(n);
                }
                e.ran.0 = e.ran.0.saturating_sub(old.ran.0);
                e.ran.1 = e.ran.1.saturating_sub(old.ran.1);
            }
        }
        if let Some(new) = value {
            self.account(job, &new);
            let counts = counts_of(&new);
            let ran = ran_of(&new);
            if let Some(e) = self.jobs.get_mut(job) {
                for (total, n) in e.counts.iter_mut().zip(counts) {
                    *total = total.saturating_add(n);
                }
                e.ran.0 = e.ran.0.saturating_add(ran.0);
                e.ran.1 = e.ran.1.saturating_add(ran.1);
                e.blocks.insert(
                    block,
                    BlockEntry {
                        block: new,
                        label: label.max(old.map_or([0; 10], |o| o.label)),
                        counts,
                        ran,
                    },
                );
            }
        }
        delta.jobs.insert(job.to_string());
        self.refresh_pending(job);
    }

    fn account(&mut self, job: &str, block: &TaskBlock) {
        let Some((res, priority, rules)) = self.jobs.get(job).map(|e| {
            (
                e.record.resources.clone(),
                e.record.priority,
                !e.record.anti_affinity.is_empty(),
            )
        }) else {
            return;
        };
        let count = self.shard_count();
        for (i, t) in block.tasks.iter().enumerate() {
            if !t.is_bound() {
                continue;
            }
            let node = self
                .nodes
                .entry(t.node.clone())
                .or_insert_with(|| NodeEntry {
                    shard: shard_of_node(&t.node, count),
                    ..NodeEntry::default()
                });
            node.allocated.add(&res);
            let old = node.bound.insert(
                TaskRef::new(job, block.first + i as u32),
                Bound {
                    attempt: t.attempt,
                    node_epoch: t.node_epoch,
                    assignment_epoch: t.assignment_epoch,
                    resources: res.clone(),
                    stopping: !t.stopping.is_empty(),
                    priority,
                    rules,
                },
            );
            if let Some(old) = old {
                // Never two entries for one task: the old one's share goes.
                node.allocated.cpu = node.allocated.cpu.saturating_sub(old.resources.cpu);
                node.allocated.mem = node.allocated.mem.saturating_sub(old.resources.mem);
                node.allocated.gpus = node.allocated.gpus.saturating_sub(old.resources.gpus);
                forget_bound(&mut self.bound_priorities, &mut self.bound_rules, &old);
            }
            *self.bound_priorities.entry(priority).or_default() += 1;
            self.bound_rules += u64::from(rules);
        }
    }

    fn unaccount(&mut self, job: &str, block: &TaskBlock, delta: &mut Delta) {
        for (i, t) in block.tasks.iter().enumerate() {
            if !t.is_bound() {
                continue;
            }
            let Some(node) = self.nodes.get_mut(&t.node) else {
                continue;
            };
            if let Some(b) = node
                .bound
                .remove(&TaskRef::new(job, block.first + i as u32))
            {
                node.allocated.cpu = node.allocated.cpu.saturating_sub(b.resources.cpu);
                node.allocated.mem = node.allocated.mem.saturating_sub(b.resources.mem);
                node.allocated.gpus = node.allocated.gpus.saturating_sub(b.resources.gpus);
                forget_bound(&mut self.bound_priorities, &mut self.bound_rules, &b);
                delta.freed.insert(t.node.clone());
            }
        }
    }

    /// A job's pending tasks (from its kept counts) and its place among
    /// pending jobs.
    fn refresh_pending(&mut self, job: &str) {
        let Some(e) = self.jobs.get_mut(job) else {
            self.pending_jobs.remove(job);
            return;
        };
        e.pending = e.counts[v1::TaskState::Pending as usize];
        if e.pending > 0 && e.record.state == JobPhase::Active {
            self.pending_jobs.insert(job.to_string());
        } else {
            self.pending_jobs.remove(job);
        }
    }

    /// Moves the feed cursor (never back) and forgets removals it passed.
    pub fn advance_cursor(&mut self, to: Stamp) {
        if to > self.cursor {
            self.cursor = to;
            let cursor = self.cursor;
            self.removed.retain(|_, at| *at > cursor);
        }
    }
}

/// The state of one replica, shared by everything in the process that
/// reads it, with the watchers of its changes.
pub struct StateHandle {
    state: RwLock<RegionState>,
    watchers: Watchers,
}

/// A replica's state, shared.
pub type SharedState = Arc<StateHandle>;

impl StateHandle {
    pub fn new(state: RegionState) -> SharedState {
        Arc::new(StateHandle {
            state: RwLock::new(state),
            watchers: Watchers::default(),
        })
    }

    /// Reads the state. Hold the guard briefly: writers wait for it.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, RegionState> {
        self.state.read()
    }

    /// Changes the state and tells the watchers what changed.
    pub fn update<T>(&self, f: impl FnOnce(&mut RegionState, &mut Delta) -> T) -> T {
        let mut delta = Delta::default();
        let out = {
            let mut state = self.state.write();
            f(&mut state, &mut delta)
        };
        self.watchers.publish(&delta);
        out
    }

    /// Replaces the whole state (a fresh load) and tells every watcher to
    /// start over.
    pub fn replace(&self, fresh: RegionState) {
        *self.state.write() = fresh;
        self.watchers.publish(&Delta {
            reload: true,
            ..Delta::default()
        });
    }

    /// A new watcher of changes from now on.
    pub fn subscribe(&self) -> Watcher {
        self.watchers.subscribe()
    }
}

#[cfg(test)]
mod tests;
