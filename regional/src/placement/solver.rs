//! The solve loop: take tasks in queue order, place each (or its whole gang),
//! preempt when nothing fits, and say why when even that fails.
//!
//! Owns the translation from the public types into dense numbers (tenants,
//! jobs and selectors are numbered in sorted order, so numbering never depends
//! on input order), gang all-or-nothing, and the memory of failures: a task
//! whose feasibility depends only on its shape (no anti-affinity either way)
//! and whose shape already failed since the last release of resources fails
//! again without a scan. That keeps a queue of many identical tasks that do
//! not fit from costing a full scan of the cluster each.
//!
//! Must never: bind a task that does not fit the resources accounted so far,
//! leave part of a gang bound, or return a solution `verify` rejects (every
//! build checks it).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::config::SolverConfig;
use super::index::{Amount, ClusterIndex, FilterKey, Filters, Verdict};
use super::order::Queue;
use super::preempt;
use super::search::Search;
use super::solution::{Binding, Preemption, Reason, Solution};
use super::state::{Footprint, RunInfo, State, TaskInfo};
use super::types::{AntiAffinity, GangId, PendingTask, Resources, Snapshot, TaskRef, TaskSelector};
use super::verify::verify;

/// Decide bindings, preemptions and reasons for `pending` on `snapshot`.
///
/// Tasks are tried by priority (higher first), then by dominant-resource
/// fairness across tenants, then in queue order. Each goes to the best
/// feasible node by its policy (Spread or Pack), affinity and fullness; a task
/// that fits nowhere may preempt strictly lower-priority, preemptible running
/// tasks on one node (fewest victims, lowest priorities first); a gang is
/// bound completely or not at all. Resources are accounted as tasks are
/// bound, so no node ends up overcommitted. Every pending entry ends up
/// either bound or listed in [`Solution::unschedulable`] with its reason.
///
/// Deterministic: the same arguments always give the same solution.
///
/// Every solution is checked by [`verify`] before it is returned, in release
/// builds too: one that breaks a rule is replaced by
/// [`Solution::refused`], which binds nothing and gives every task the
/// violation as its reason, so a solver bug shows up as waiting jobs with a
/// loud reason instead of as an unsafe placement.
pub fn solve(snapshot: &Snapshot, pending: &[PendingTask], config: &SolverConfig) -> Solution {
    let solution = Solver::new(snapshot, pending, config).run();
    match verify(snapshot, pending, &solution) {
        Ok(()) => solution,
        Err(violation) => Solution::refused(pending, &violation),
    }
}

/// Selectors of every rule in the solve, numbered in sorted order, and which
/// tasks match them. The maps are looked up, never iterated.
struct Selectors<'a> {
    ids: HashMap<&'a TaskSelector, u32>,
    by_job: HashMap<&'a str, Vec<u32>>,
    by_label: HashMap<(&'a str, &'a str), Vec<u32>>,
    /// Whether some anti-affinity rule uses the selector.
    in_rule: Vec<bool>,
}

impl<'a> Selectors<'a> {
    fn new(snapshot: &'a Snapshot, pending: &'a [PendingTask]) -> Self {
        let mut all: BTreeMap<&'a TaskSelector, bool> = BTreeMap::new();
        for p in pending {
            for r in &p.anti_affinity {
                all.insert(&r.selector, true);
            }
            for a in &p.affinity {
                all.entry(&a.selector).or_insert(false);
            }
        }
        for r in &snapshot.running {
            for rule in &r.anti_affinity {
                all.insert(&rule.selector, true);
            }
        }
        let mut s = Selectors {
            ids: HashMap::new(),
            by_job: HashMap::new(),
            by_label: HashMap::new(),
            in_rule: Vec::with_capacity(all.len()),
        };
        for (i, (selector, in_rule)) in all.into_iter().enumerate() {
            let id = i as u32;
            s.ids.insert(selector, id);
            s.in_rule.push(in_rule);
            match selector {
                TaskSelector::Job(job) => s.by_job.entry(job).or_default().push(id),
                TaskSelector::Label { key, value } => {
                    s.by_label.entry((key, value)).or_default().push(id)
                }
            }
        }
        s
    }

    fn id(&self, selector: &TaskSelector) -> u32 {
        self.ids[selector]
    }

    fn matched(&self, task: &TaskRef, labels: &BTreeMap<String, String>) -> Vec<u32> {
        if self.ids.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<u32> = self
            .by_job
            .get(task.job_id.as_str())
            .cloned()
            .unwrap_or_default();
        if !self.by_label.is_empty() {
            for (k, v) in labels {
                if let Some(ids) = self.by_label.get(&(k.as_str(), v.as_str())) {
                    out.extend(ids);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Numbers for strings, assigned in sorted order so that they do not depend
/// on input order. The map is only ever looked up, never iterated, so a hash
/// map is safe here, and it spares 100,000 string comparisons per solve.
fn numbering<'a>(names: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, u32> {
    let distinct: HashSet<&str> = names.into_iter().collect();
    let mut sorted: Vec<&str> = distinct.into_iter().collect();
    sorted.sort_unstable();
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i as u32))
        .collect()
}

/// The dense numbers of one solve: tenants, jobs and selectors.
struct Numbers<'a> {
    tenants: HashMap<&'a str, u32>,
    jobs: HashMap<&'a str, u32>,
    selectors: Selectors<'a>,
}

/// The running tasks in dense numbers, each on its node's index (`None` for
/// a node not in the snapshot).
fn running_infos(
    snapshot: &Snapshot,
    ix: &ClusterIndex<'_>,
    numbers: &Numbers<'_>,
) -> Vec<RunInfo> {
    snapshot
        .running
        .iter()
        .map(|r| RunInfo {
            node: ix.by_id.get(&r.node).copied(),
            footprint: footprint(
                numbers,
                &r.task,
                &r.tenant,
                &r.resources,
                &r.labels,
                &r.anti_affinity,
            ),
            priority: r.priority,
            preemptible: r.preemptible,
        })
        .collect()
}

/// A task's footprint in dense numbers, running or pending alike.
fn footprint(
    numbers: &Numbers<'_>,
    task: &TaskRef,
    tenant: &str,
    resources: &Resources,
    labels: &BTreeMap<String, String>,
    anti_affinity: &[AntiAffinity],
) -> Footprint {
    Footprint {
        job: numbers.jobs[task.job_id.as_str()],
        tenant: numbers.tenants[tenant],
        amount: Amount::of(resources),
        selectors: numbers.selectors.matched(task, labels),
        rules: anti_affinity
            .iter()
            .map(|a| (numbers.selectors.id(&a.selector), a.scope))
            .collect(),
    }
}

/// The pending tasks in dense numbers, with their node filters interned.
fn task_infos<'a>(
    pending: &'a [PendingTask],
    ix: &ClusterIndex<'_>,
    filters: &mut Filters<'a>,
    numbers: &Numbers<'_>,
) -> Vec<TaskInfo> {
    pending
        .iter()
        .map(|p| {
            let footprint = footprint(
                numbers,
                &p.task,
                &p.tenant,
                &p.resources,
                &p.labels,
                &p.anti_affinity,
            );
            let shape_only = footprint.rules.is_empty()
                && footprint
                    .selectors
                    .iter()
                    .all(|&s| !numbers.selectors.in_rule[s as usize]);
            let gpu_type = match p.resources.gpus {
                0 => None,
                _ => p.resources.gpu_type.as_deref(),
            };
            TaskInfo {
                footprint,
                priority: p.priority,
                filter: filters.intern(
                    ix,
                    FilterKey {
                        constraints: &p.constraints,
                        gpu_type,
                    },
                ),
                policy: p.policy,
                affinity: p
                    .affinity
                    .iter()
                    .map(|a| (numbers.selectors.id(&a.selector), a.scope, a.weight))
                    .collect(),
                shape_only,
            }
        })
        .collect()
}

/// Which pending entries are open for placement; the others (a task listed
/// twice, or already running) are unschedulable with that reason.
fn screen(snapshot: &Snapshot, pending: &[PendingTask]) -> (Vec<bool>, Vec<(u32, Reason)>) {
    let mut open = vec![false; pending.len()];
    let mut unschedulable = Vec::new();
    // Looked up only, never iterated.
    let already_running: HashSet<&TaskRef> = snapshot.running.iter().map(|r| &r.task).collect();
    let mut seen: HashSet<&TaskRef> = HashSet::with_capacity(pending.len());
    for (i, p) in pending.iter().enumerate() {
        if !seen.insert(&p.task) {
            unschedulable.push((i as u32, Reason::DuplicatePending));
        } else if already_running.contains(&p.task) {
            unschedulable.push((i as u32, Reason::AlreadyRunning));
        } else {
            open[i] = true;
        }
    }
    (open, unschedulable)
}

/// Each gang with its members.
type Gangs<'a> = Vec<(&'a GangId, Vec<u32>)>;

/// The gang of each open entry, and each gang's members, highest priority
/// first, then queue order.
fn group_gangs<'a>(pending: &'a [PendingTask], open: &[bool]) -> (Vec<Option<u32>>, Gangs<'a>) {
    let mut gang_members: BTreeMap<&GangId, Vec<u32>> = BTreeMap::new();
    for (i, p) in pending.iter().enumerate() {
        if let (true, Some(g)) = (open[i], &p.gang) {
            gang_members.entry(g).or_default().push(i as u32);
        }
    }
    let mut gang_of = vec![None; pending.len()];
    let gangs: Vec<(&GangId, Vec<u32>)> = gang_members
        .into_iter()
        .enumerate()
        .map(|(g, (id, mut members))| {
            members.sort_by_key(|&m| (std::cmp::Reverse(pending[m as usize].priority), m));
            for &m in &members {
                gang_of[m as usize] = Some(g as u32);
            }
            (id, members)
        })
        .collect();
    (gang_of, gangs)
}

struct Solver<'a> {
    snapshot: &'a Snapshot,
    pending: &'a [PendingTask],
    config: &'a SolverConfig,
    ix: ClusterIndex<'a>,
    filters: Filters<'a>,
    tasks: Vec<TaskInfo>,
    running: Vec<RunInfo>,
    /// Running tasks on each node, by index into `running`.
    on_node: Vec<Vec<u32>>,
    /// The lowest priority of any preemptible running task: a task at or
    /// below it cannot preempt anything.
    lowest_victim_priority: Option<i32>,
    state: State,
    search: Search,
    queue: Queue,
    /// Pending entries not yet decided.
    open: Vec<bool>,
    gang_of: Vec<Option<u32>>,
    /// Each gang's members, highest priority first, then queue order.
    gangs: Vec<(&'a GangId, Vec<u32>)>,
    probe: u64,
    unfit_shapes: BTreeMap<(u32, Amount), (u64, Reason)>,
    unpreemptable_shapes: BTreeMap<(u32, Amount, i32), u64>,
    bindings: Vec<(u32, u32)>,
    /// (victim, node, for pending task).
    preemptions: Vec<(u32, u32, u32)>,
    unschedulable: Vec<(u32, Reason)>,
}

impl<'a> Solver<'a> {
    fn new(snapshot: &'a Snapshot, pending: &'a [PendingTask], config: &'a SolverConfig) -> Self {
        let ix = ClusterIndex::new(snapshot);
        let numbers = Numbers {
            tenants: numbering(
                pending
                    .iter()
                    .map(|p| p.tenant.as_str())
                    .chain(snapshot.running.iter().map(|r| r.tenant.as_str())),
            ),
            jobs: numbering(
                pending
                    .iter()
                    .map(|p| p.task.job_id.as_str())
                    .chain(snapshot.running.iter().map(|r| r.task.job_id.as_str())),
            ),
            selectors: Selectors::new(snapshot, pending),
        };

        let running = running_infos(snapshot, &ix, &numbers);
        let mut on_node = vec![Vec::new(); ix.len()];
        for (i, r) in running.iter().enumerate() {
            if let Some(n) = r.node {
                on_node[n as usize].push(i as u32);
            }
        }
        let lowest_victim_priority = running
            .iter()
            .filter(|r| r.preemptible && r.node.is_some())
            .map(|r| r.priority)
            .min();

        let mut filters = Filters::new();
        let tasks = task_infos(pending, &ix, &mut filters, &numbers);

        let baseline: Vec<Amount> = ix.nodes.iter().map(|n| Amount::of(&n.allocated)).collect();
        let state = State::new(
            &ix,
            &baseline,
            &running,
            numbers.jobs.len(),
            numbers.selectors.in_rule.len(),
            numbers.tenants.len(),
        );

        let (open, unschedulable) = screen(snapshot, pending);
        let (gang_of, gangs) = group_gangs(pending, &open);

        let queue = Queue::new(
            (0..pending.len())
                .filter(|&i| open[i])
                .map(|i| (i as u32, tasks[i].priority, tasks[i].footprint.tenant)),
        );

        Solver {
            snapshot,
            pending,
            config,
            search: Search::new(&ix),
            ix,
            filters,
            tasks,
            running,
            on_node,
            lowest_victim_priority,
            state,
            queue,
            open,
            gang_of,
            gangs,
            probe: 0,
            unfit_shapes: BTreeMap::new(),
            unpreemptable_shapes: BTreeMap::new(),
            bindings: Vec::new(),
            preemptions: Vec::new(),
            unschedulable,
        }
    }

    fn run(mut self) -> Solution {
        let total = self.ix.schedulable_capacity;
        while let Some(p) = self.queue.pop(|t| self.state.dominant_share(t, total)) {
            if !self.open[p as usize] {
                continue;
            }
            match self.gang_of[p as usize] {
                Some(g) => self.place_gang(g),
                None => {
                    self.open[p as usize] = false;
                    if let Err(reason) = self.place(p) {
                        self.unschedulable.push((p, reason));
                    }
                }
            }
            let mut dirty = std::mem::take(&mut self.state.dirty_tenants);
            dirty.sort_unstable();
            dirty.dedup();
            for &t in &dirty {
                self.queue.reshare(t, self.state.dominant_share(t, total));
            }
            dirty.clear();
            self.state.dirty_tenants = dirty;
        }
        self.into_solution()
    }

    /// Place every member or none.
    fn place_gang(&mut self, g: u32) {
        let (gang, members) = self.gangs[g as usize].clone();
        let mark = self.state.mark();
        let (bindings, preemptions) = (self.bindings.len(), self.preemptions.len());
        for &m in &members {
            self.open[m as usize] = false;
        }
        for &m in &members {
            if let Err(reason) = self.place(m) {
                self.state
                    .rollback(&self.ix, mark, &self.tasks, &self.running);
                self.bindings.truncate(bindings);
                self.preemptions.truncate(preemptions);
                let blocking = self.pending[m as usize].task.clone();
                for &o in &members {
                    let why = if o == m {
                        reason.clone()
                    } else {
                        Reason::GangIncomplete {
                            gang: gang.clone(),
                            blocking: blocking.clone(),
                        }
                    };
                    self.unschedulable.push((o, why));
                }
                return;
            }
        }
    }

    /// Bind `p` where it fits best, or preempt for it, or say why not.
    fn place(&mut self, p: u32) -> Result<(), Reason> {
        let task = &self.tasks[p as usize];
        let shape = (task.filter, task.footprint.amount);
        let remembered = match self.unfit_shapes.get(&shape) {
            Some((epoch, reason)) if task.shape_only && *epoch == self.state.release_epoch => {
                Some(reason.clone())
            }
            _ => None,
        };
        let reason = match remembered {
            Some(reason) => reason,
            None => {
                self.probe += 1;
                let found = self.search.find(
                    &self.ix,
                    &self.filters,
                    &self.state,
                    task,
                    self.probe,
                    self.config.max_scored_candidates,
                );
                if let Some(node) = found {
                    self.bind(p, node);
                    return Ok(());
                }
                let reason = self.diagnose(p);
                if task.shape_only {
                    self.unfit_shapes
                        .insert(shape, (self.state.release_epoch, reason.clone()));
                }
                reason
            }
        };
        if self.preempt(p) {
            return Ok(());
        }
        Err(reason)
    }

    /// Try to make room for `p` by preemption; true if it is now bound.
    fn preempt(&mut self, p: u32) -> bool {
        let task = &self.tasks[p as usize];
        if !self.config.preemption
            || self
                .lowest_victim_priority
                .is_none_or(|lowest| task.priority <= lowest)
        {
            return false;
        }
        let key = (task.filter, task.footprint.amount, task.priority);
        if task.shape_only && self.unpreemptable_shapes.get(&key) == Some(&self.state.release_epoch)
        {
            return false;
        }
        let plan = preempt::find(
            &self.ix,
            &self.filters,
            &self.state,
            task,
            &self.running,
            &self.on_node,
            self.config.max_victim_combinations,
        );
        let Some(plan) = plan else {
            if task.shape_only {
                self.unpreemptable_shapes
                    .insert(key, self.state.release_epoch);
            }
            return false;
        };
        for &v in &plan.victims {
            self.state.evict(&self.ix, v, &self.running[v as usize]);
            self.preemptions.push((v, plan.node, p));
        }
        self.bind(p, plan.node);
        true
    }

    fn bind(&mut self, p: u32, node: u32) {
        let fp = &self.tasks[p as usize].footprint;
        assert!(
            self.state.fits(&self.ix, fp.amount, node),
            "placement chose a node without room"
        );
        self.state.bind(&self.ix, p, fp, node);
        self.bindings.push((p, node));
    }

    /// Why `p` fits nowhere: the furthest filter any node got to.
    fn diagnose(&self, p: u32) -> Reason {
        let task = &self.tasks[p as usize];
        let ix = &self.ix;
        let mut furthest = 0u8;
        let mut short = [0usize; 3];
        for node in 0..ix.len() as u32 {
            let n = node as usize;
            if !ix.nodes[n].schedulable {
                continue;
            }
            let stage = match self.filters.verdict(task.filter, ix.class_of[n]) {
                Verdict::Constraint => 1,
                Verdict::GpuType => 2,
                Verdict::Fits
                    if !(task.shape_only
                        || self.state.anti_affinity_allows(ix, &task.footprint, node)) =>
                {
                    3
                }
                Verdict::Fits => {
                    let after = self.state.used[n].plus(task.footprint.amount);
                    let cap = ix.capacity[n];
                    short[0] += usize::from(after.cpu > cap.cpu);
                    short[1] += usize::from(after.mem > cap.mem);
                    short[2] += usize::from(after.gpus > cap.gpus);
                    4
                }
            };
            furthest = furthest.max(stage);
        }
        match furthest {
            0 => Reason::NoSchedulableNode,
            1 => Reason::Constraint,
            2 => Reason::GpuType(
                self.pending[p as usize]
                    .resources
                    .gpu_type
                    .clone()
                    .unwrap_or_default(),
            ),
            3 => Reason::AntiAffinity,
            _ => {
                let most = short.iter().copied().max().unwrap_or(0);
                if short[0] == most {
                    Reason::InsufficientCpu
                } else if short[1] == most {
                    Reason::InsufficientMemory
                } else {
                    Reason::InsufficientGpu
                }
            }
        }
    }

    fn into_solution(self) -> Solution {
        let ix = &self.ix;
        Solution {
            bindings: self
                .bindings
                .iter()
                .map(|&(p, n)| Binding {
                    task: self.pending[p as usize].task.clone(),
                    node: ix.ids[n as usize].clone(),
                    node_version: ix.nodes[n as usize].version,
                })
                .collect(),
            preemptions: self
                .preemptions
                .iter()
                .map(|&(v, n, p)| Preemption {
                    victim: self.snapshot.running[v as usize].task.clone(),
                    node: ix.ids[n as usize].clone(),
                    for_task: self.pending[p as usize].task.clone(),
                    grace_ms: self.snapshot.running[v as usize].drain_grace_ms,
                })
                .collect(),
            unschedulable: self
                .unschedulable
                .into_iter()
                .map(|(p, r)| (self.pending[p as usize].task.clone(), r))
                .collect(),
        }
    }
}
