//! The solver's own domain types: nodes, resources, tasks, and the rules a
//! task can carry (label constraints, affinity, anti-affinity, policy, gang).
//!
//! Owns the meaning of each rule (how a constraint, a selector or a failure
//! domain matches), so that the solver and the checker in `verify` cannot
//! disagree about it.
//!
//! Must never: depend on `meridian-proto` or the store. The regional tier
//! converts its stored records into these types; keeping them separate lets
//! the solver be tested and benchmarked as a pure function.

use std::collections::BTreeMap;
use std::fmt;

/// A node's identity inside its region. Its order is the solver's final
/// tie-break, so it is part of what makes placement deterministic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(id.into())
    }
}

// A map keyed by node id can be searched by the id's text without building a
// `NodeId`: the derived order is the `String`'s, which is the `str`'s.
impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount of resources, or (as a node's capacity) what a node offers.
///
/// `gpu_type` on a request only matters when `gpus > 0`: a request for GPUs of
/// a type fits only nodes whose capacity names that type; a request without a
/// type takes any GPU. On a node's `allocated` it is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    pub gpu_type: Option<String>,
}

impl Resources {
    pub fn new(cpu_millis: u64, memory_bytes: u64) -> Self {
        Resources {
            cpu_millis,
            memory_bytes,
            gpus: 0,
            gpu_type: None,
        }
    }

    pub fn with_gpus(mut self, gpus: u32, gpu_type: Option<&str>) -> Self {
        self.gpus = gpus;
        self.gpu_type = gpu_type.map(str::to_string);
        self
    }

    /// Whether a node whose capacity is `capacity` has the GPU model this
    /// request asks for (always true for a request without GPUs).
    pub fn gpu_type_matches(&self, capacity: &Resources) -> bool {
        match (&self.gpu_type, self.gpus) {
            (_, 0) | (None, _) => true,
            (Some(wanted), _) => capacity.gpu_type.as_deref() == Some(wanted.as_str()),
        }
    }
}

/// One node of the region as the shard leader last read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    /// The node record's OCC version; a binding carries it so that the commit
    /// fails if the node changed after the snapshot was taken.
    pub version: u64,
    pub capacity: Resources,
    /// What the store has already committed on this node. It includes the
    /// tasks listed in [`Snapshot::running`] for this node; the solver takes,
    /// per dimension, the larger of this and the sum of those tasks, so a
    /// snapshot in which one lags the other never leads to an overcommit.
    pub allocated: Resources,
    pub labels: BTreeMap<String, String>,
    pub zone: Option<String>,
    pub rack: Option<String>,
    /// False when the node is cordoned, draining or not ready: nothing new is
    /// bound there. Its running tasks still count, and are never preempted,
    /// since a preemptor is bound on the node its victims leave.
    pub schedulable: bool,
}

impl Node {
    /// A schedulable node with nothing allocated, no labels and no domain.
    pub fn new(id: impl Into<String>, capacity: Resources) -> Self {
        Node {
            id: NodeId::new(id),
            version: 1,
            capacity,
            allocated: Resources::default(),
            labels: BTreeMap::new(),
            zone: None,
            rack: None,
            schedulable: true,
        }
    }

    pub fn in_domain(mut self, zone: &str, rack: &str) -> Self {
        self.zone = Some(zone.to_string());
        self.rack = Some(rack.to_string());
        self
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }
}

/// One task of a job: `job_id/index`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskRef {
    pub job_id: String,
    pub index: u32,
}

impl TaskRef {
    pub fn new(job_id: impl Into<String>, index: u32) -> Self {
        TaskRef {
            job_id: job_id.into(),
            index,
        }
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job_id, self.index)
    }
}

/// How a [`LabelConstraint`] compares a node label with its values
/// (Kubernetes node-affinity semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelOp {
    /// The label is present and its value is one of the values.
    In,
    /// The label is absent, or its value is none of the values.
    NotIn,
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// A hard requirement on a node's labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelConstraint {
    pub key: String,
    pub op: LabelOp,
    pub values: Vec<String>,
}

impl LabelConstraint {
    pub fn new(key: &str, op: LabelOp, values: &[&str]) -> Self {
        LabelConstraint {
            key: key.to_string(),
            op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            LabelOp::In => value.is_some_and(|v| self.values.contains(v)),
            LabelOp::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
        }
    }
}

/// Which placed tasks an affinity or anti-affinity rule is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskSelector {
    /// Tasks of this job.
    Job(String),
    /// Tasks carrying this label with this value.
    Label { key: String, value: String },
}

impl TaskSelector {
    pub fn job(job_id: &str) -> Self {
        TaskSelector::Job(job_id.to_string())
    }

    pub fn label(key: &str, value: &str) -> Self {
        TaskSelector::Label {
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    pub fn matches(&self, task: &TaskRef, labels: &BTreeMap<String, String>) -> bool {
        match self {
            TaskSelector::Job(job) => task.job_id == *job,
            TaskSelector::Label { key, value } => labels.get(key) == Some(value),
        }
    }
}

/// The failure domain a rule reaches over.
///
/// Two nodes share a rack when both their zone and rack are equal, `None`
/// included: nodes without a rack label in one zone count as one rack, which
/// is the cautious reading for anti-affinity. Likewise for zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Scope {
    #[default]
    Node,
    Rack,
    Zone,
}

/// Identifies one failure domain: nodes with equal keys for a scope share
/// that scope's domain.
pub type DomainKey<'a> = (Scope, Option<&'a str>, Option<&'a str>);

impl Scope {
    /// The domain of this scope that the node `id` is in.
    pub fn domain_of<'a>(self, id: &'a NodeId, node: &'a Node) -> DomainKey<'a> {
        match self {
            Scope::Node => (self, Some(id.0.as_str()), None),
            Scope::Rack => (self, node.zone.as_deref(), node.rack.as_deref()),
            Scope::Zone => (self, node.zone.as_deref(), None),
        }
    }

    /// Whether nodes `a` and `b` are in the same domain of this scope.
    pub fn same_domain(self, a_id: &NodeId, a: &Node, b_id: &NodeId, b: &Node) -> bool {
        self.domain_of(a_id, a) == self.domain_of(b_id, b)
    }
}

/// A hard rule: the task must not share the domain `scope` with any other
/// placed task matching `selector`.
///
/// Enforced both ways: a new task is also kept away from placed tasks whose
/// own anti-affinity matches it (as Kubernetes does), so a rule holds for as
/// long as its task runs, not only at the moment it is placed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AntiAffinity {
    pub selector: TaskSelector,
    pub scope: Scope,
}

impl AntiAffinity {
    pub fn new(selector: TaskSelector, scope: Scope) -> Self {
        AntiAffinity { selector, scope }
    }
}

/// A soft rule: prefer nodes whose domain `scope` already holds a task
/// matching `selector`. The weights of the rules a node satisfies add up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Affinity {
    pub selector: TaskSelector,
    pub scope: Scope,
    pub weight: u32,
}

impl Affinity {
    pub fn new(selector: TaskSelector, scope: Scope, weight: u32) -> Self {
        Affinity {
            selector,
            scope,
            weight,
        }
    }
}

/// How a job's tasks are distributed over failure domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Policy {
    /// Prefer the zone, then the rack, with the fewest tasks of this job, then
    /// the node with the fewest tasks of this job and the most room: survives
    /// the loss of a domain.
    #[default]
    Spread,
    /// Prefer the zone, then the rack, with the most tasks of this job, then
    /// the fullest node: keeps a job's traffic local and leaves whole nodes
    /// free for large tasks.
    Pack,
}

/// A set of tasks that is placed completely or not at all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GangId(pub String);

impl GangId {
    pub fn new(id: impl Into<String>) -> Self {
        GangId(id.into())
    }
}

impl fmt::Display for GangId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task waiting for a node, in queue (FIFO) order within the pending slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTask {
    pub task: TaskRef,
    pub tenant: String,
    /// Higher goes first and may preempt strictly lower.
    pub priority: i32,
    pub resources: Resources,
    /// The task's own labels: what other tasks' selectors match once it runs.
    pub labels: BTreeMap<String, String>,
    pub constraints: Vec<LabelConstraint>,
    pub anti_affinity: Vec<AntiAffinity>,
    pub affinity: Vec<Affinity>,
    pub policy: Policy,
    pub gang: Option<GangId>,
    /// Whether this task may be preempted once it runs.
    pub preemptible: bool,
    /// The graceful-stop period this task gets if it is preempted later.
    pub drain_grace_ms: u64,
}

impl PendingTask {
    /// A priority-0, preemptible, spread task with no rules.
    pub fn new(task: TaskRef, tenant: &str, resources: Resources) -> Self {
        PendingTask {
            task,
            tenant: tenant.to_string(),
            priority: 0,
            resources,
            labels: BTreeMap::new(),
            constraints: Vec::new(),
            anti_affinity: Vec::new(),
            affinity: Vec::new(),
            policy: Policy::Spread,
            gang: None,
            preemptible: true,
            drain_grace_ms: 0,
        }
    }
}

/// A task already bound to a node (running, starting, or stopping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub task: TaskRef,
    pub node: NodeId,
    pub priority: i32,
    pub resources: Resources,
    pub tenant: String,
    pub labels: BTreeMap<String, String>,
    pub preemptible: bool,
    /// The graceful-stop period a preemption grants this task.
    pub drain_grace_ms: u64,
    /// The task's own anti-affinity rules, still binding while it runs.
    pub anti_affinity: Vec<AntiAffinity>,
}

impl Running {
    /// A priority-0, preemptible task with no labels and no rules.
    pub fn new(task: TaskRef, node: &str, tenant: &str, resources: Resources) -> Self {
        Running {
            task,
            node: NodeId::new(node),
            priority: 0,
            resources,
            tenant: tenant.to_string(),
            labels: BTreeMap::new(),
            preemptible: true,
            drain_grace_ms: 0,
            anti_affinity: Vec::new(),
        }
    }
}

/// The region as one shard leader sees it at the start of a solve. The map
/// key is the node's identity; [`Node::id`] is expected to equal it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub nodes: BTreeMap<NodeId, Node>,
    pub running: Vec<Running>,
}

impl Snapshot {
    pub fn new(nodes: impl IntoIterator<Item = Node>, running: Vec<Running>) -> Self {
        Snapshot {
            nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            running,
        }
    }
}
