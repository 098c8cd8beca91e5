//! The mutable occupancy of the cluster during one solve, with an undo log.
//!
//! Owns everything that changes as tasks are bound or evicted: resources in
//! use per node, how many tasks of each job sit in each zone, rack and node
//! (what Spread and Pack score), how many tasks matching each selector sit in
//! each domain (affinity and anti-affinity), which domains are closed to a
//! selector by a placed task's anti-affinity, and each tenant's usage (fair
//! share). Every mutation is logged so that a gang which cannot be placed
//! completely is rolled back exactly.
//!
//! Must never: decide anything. It answers questions ("does this fit", "is
//! this allowed next to what is placed") and applies what `solver` decided,
//! so that accounting is in one place and cannot drift between paths.

use std::collections::BTreeMap;

use super::index::{Amount, ClusterIndex};
use super::types::{Policy, Scope};

/// What a task occupies once placed, and what it forbids.
#[derive(Debug, Clone, Default)]
pub(crate) struct Footprint {
    pub job: u32,
    pub tenant: u32,
    pub amount: Amount,
    /// Selectors (of any rule in this solve) that this task matches.
    pub selectors: Vec<u32>,
    /// This task's anti-affinity rules, as (selector, scope).
    pub rules: Vec<(u32, Scope)>,
}

/// A pending task as the solver works with it.
#[derive(Debug, Clone)]
pub(crate) struct TaskInfo {
    pub footprint: Footprint,
    pub priority: i32,
    pub filter: u32,
    pub policy: Policy,
    /// Affinity rules, as (selector, scope, weight).
    pub affinity: Vec<(u32, Scope, u32)>,
    /// Whether its feasibility depends only on its filter and amount (no
    /// anti-affinity either way), so a failure can be remembered by shape.
    pub shape_only: bool,
}

/// A running task as the solver works with it.
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    /// `None` when the task's node is not in the snapshot.
    pub node: Option<u32>,
    pub footprint: Footprint,
    pub priority: i32,
    pub preemptible: bool,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Bind { pending: u32, node: u32 },
    Evict { running: u32 },
}

/// How many tasks of something (a job, a selector) sit in each domain of
/// each scope; absent means zero.
#[derive(Debug, Default, Clone)]
pub(crate) struct DomainCounts {
    by_scope: [BTreeMap<u32, u32>; 3],
}

impl DomainCounts {
    pub fn get(&self, ix: &ClusterIndex<'_>, scope: Scope, node: u32) -> u32 {
        self.in_domain(scope, domain(ix, scope, node))
    }

    pub fn in_domain(&self, scope: Scope, domain: u32) -> u32 {
        self.by_scope[scope as usize]
            .get(&domain)
            .copied()
            .unwrap_or(0)
    }

    /// The non-empty domains of `scope`, with their counts.
    pub fn domains(&self, scope: Scope) -> &BTreeMap<u32, u32> {
        &self.by_scope[scope as usize]
    }

    fn add(&mut self, ix: &ClusterIndex<'_>, scope: Scope, node: u32, delta: i64) {
        let map = &mut self.by_scope[scope as usize];
        let key = domain(ix, scope, node);
        let now = i64::from(map.get(&key).copied().unwrap_or(0)) + delta;
        let now = u32::try_from(now).expect("occupancy count out of range");
        // Kept sparse so that a job's occupied domains can be listed cheaply.
        if now == 0 {
            map.remove(&key);
        } else {
            map.insert(key, now);
        }
    }

    fn add_all(&mut self, ix: &ClusterIndex<'_>, node: u32, delta: i64) {
        for scope in SCOPES {
            self.add(ix, scope, node, delta);
        }
    }
}

pub(crate) const SCOPES: [Scope; 3] = [Scope::Node, Scope::Rack, Scope::Zone];

/// The number of `node`'s domain of `scope`.
pub(crate) fn domain(ix: &ClusterIndex<'_>, scope: Scope, node: u32) -> u32 {
    match scope {
        Scope::Node => node,
        Scope::Rack => ix.rack_of[node as usize],
        Scope::Zone => ix.zone_of[node as usize],
    }
}

pub(crate) struct State {
    pub used: Vec<Amount>,
    pub jobs: Vec<DomainCounts>,
    /// Placed tasks matching each selector.
    pub matching: Vec<DomainCounts>,
    /// For each selector, the domains where a placed task's anti-affinity
    /// keeps out tasks matching it (counted per scope of the rule).
    pub forbidden: Vec<DomainCounts>,
    pub tenant_used: Vec<Amount>,
    /// Tenants whose usage changed since the queue last looked.
    pub dirty_tenants: Vec<u32>,
    pub evicted: Vec<bool>,
    /// Bumped whenever resources are released (an eviction, a rollback), so
    /// that a remembered "fits nowhere" is known to be stale.
    pub release_epoch: u64,
    log: Vec<Op>,
}

impl State {
    /// The cluster with `running` in place. `baseline` is each node's
    /// committed allocation; the running tasks are accounted on top only
    /// where their sum exceeds it (see [`super::types::Node::allocated`]).
    pub fn new(
        ix: &ClusterIndex<'_>,
        baseline: &[Amount],
        running: &[RunInfo],
        jobs: usize,
        selectors: usize,
        tenants: usize,
    ) -> Self {
        let mut state = State {
            used: vec![Amount::default(); ix.len()],
            jobs: vec![DomainCounts::default(); jobs],
            matching: vec![DomainCounts::default(); selectors],
            forbidden: vec![DomainCounts::default(); selectors],
            tenant_used: vec![Amount::default(); tenants],
            dirty_tenants: Vec::new(),
            evicted: vec![false; running.len()],
            release_epoch: 0,
            log: Vec::new(),
        };
        for r in running {
            if let Some(node) = r.node {
                state.occupy(ix, &r.footprint, node, 1);
            }
        }
        for (used, base) in state.used.iter_mut().zip(baseline) {
            *used = used.per_dim_max(*base);
        }
        state.dirty_tenants.clear();
        state
    }

    fn occupy(&mut self, ix: &ClusterIndex<'_>, fp: &Footprint, node: u32, delta: i64) {
        let n = node as usize;
        if delta > 0 {
            self.used[n] = self.used[n].plus(fp.amount);
            self.tenant_used[fp.tenant as usize] =
                self.tenant_used[fp.tenant as usize].plus(fp.amount);
        } else {
            self.used[n] = self.used[n].minus(fp.amount);
            self.tenant_used[fp.tenant as usize] =
                self.tenant_used[fp.tenant as usize].minus(fp.amount);
            self.release_epoch += 1;
        }
        self.dirty_tenants.push(fp.tenant);
        self.jobs[fp.job as usize].add_all(ix, node, delta);
        for &s in &fp.selectors {
            self.matching[s as usize].add_all(ix, node, delta);
        }
        for &(s, scope) in &fp.rules {
            self.forbidden[s as usize].add(ix, scope, node, delta);
        }
    }

    pub fn fits(&self, ix: &ClusterIndex<'_>, amount: Amount, node: u32) -> bool {
        let mut amount = amount;
        if meridian_control::planted::on(meridian_control::planted::Bug::PlacerIgnoresMemory) {
            // The planted defect of 7.5: only what else is placed counts.
            amount.mem = 0;
        }
        self.used[node as usize]
            .plus(amount)
            .within(ix.capacity[node as usize])
    }

    /// Whether placing a task with footprint `fp` on `node` keeps every
    /// anti-affinity rule, its own and those of the tasks already placed.
    pub fn anti_affinity_allows(&self, ix: &ClusterIndex<'_>, fp: &Footprint, node: u32) -> bool {
        fp.rules
            .iter()
            .all(|&(s, scope)| self.matching[s as usize].get(ix, scope, node) == 0)
            && fp.selectors.iter().all(|&s| {
                let closed = &self.forbidden[s as usize];
                SCOPES.iter().all(|&scope| closed.get(ix, scope, node) == 0)
            })
    }

    /// The sum of the weights of the affinity rules `node` satisfies.
    pub fn affinity_score(
        &self,
        ix: &ClusterIndex<'_>,
        rules: &[(u32, Scope, u32)],
        node: u32,
    ) -> u64 {
        rules
            .iter()
            .filter(|&&(s, scope, _)| self.matching[s as usize].get(ix, scope, node) > 0)
            .map(|&(_, _, w)| u64::from(w))
            .sum()
    }

    pub fn bind(&mut self, ix: &ClusterIndex<'_>, pending: u32, fp: &Footprint, node: u32) {
        self.occupy(ix, fp, node, 1);
        self.log.push(Op::Bind { pending, node });
    }

    pub fn evict(&mut self, ix: &ClusterIndex<'_>, running: u32, info: &RunInfo) {
        let node = info.node.expect("only tasks on known nodes are evicted");
        debug_assert!(!self.evicted[running as usize]);
        self.evicted[running as usize] = true;
        self.occupy(ix, &info.footprint, node, -1);
        self.log.push(Op::Evict { running });
    }

    /// A point to roll back to.
    pub fn mark(&self) -> usize {
        self.log.len()
    }

    /// Undo every bind and evict since `mark`, newest first.
    pub fn rollback(
        &mut self,
        ix: &ClusterIndex<'_>,
        mark: usize,
        tasks: &[TaskInfo],
        running: &[RunInfo],
    ) {
        if self.log.len() > mark {
            self.release_epoch += 1;
        }
        while self.log.len() > mark {
            match self.log.pop().expect("log is longer than mark") {
                Op::Bind { pending, node } => {
                    self.occupy(ix, &tasks[pending as usize].footprint, node, -1);
                }
                Op::Evict { running: r } => {
                    let info = &running[r as usize];
                    self.evicted[r as usize] = false;
                    let node = info.node.expect("only tasks on known nodes are evicted");
                    self.occupy(ix, &info.footprint, node, 1);
                }
            }
        }
    }

    /// A tenant's dominant share of the schedulable capacity, in parts per
    /// billion (integers, so that ordering is exact and deterministic).
    pub fn dominant_share(&self, tenant: u32, total: Amount) -> u64 {
        let used = self.tenant_used[tenant as usize];
        [
            (used.cpu, total.cpu),
            (used.mem, total.mem),
            (used.gpus, total.gpus),
        ]
        .into_iter()
        .filter(|&(_, t)| t > 0)
        .map(|(u, t)| match u.checked_mul(1_000_000_000) {
            Some(scaled) => scaled / t,
            None => (u128::from(u) * 1_000_000_000 / u128::from(t)) as u64,
        })
        .max()
        .unwrap_or(0)
    }
}
