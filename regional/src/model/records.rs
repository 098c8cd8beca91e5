//! The records the regional tier stores, and their encoding.
//!
//! Owns the stored shape of nodes, jobs, task blocks, command-log entries and
//! the shard layout, with conversions to the solver's and the wire's types.
//! The hot records (task blocks, command-log entries, nodes: read and
//! rewritten by every placement batch) are protobuf messages, compact and
//! cheap to decode (see [`super::codec`]); the cold ones are JSON, easy to
//! inspect in a dump; a job's spec is kept in the wire encoding next to its
//! record. Must never decide anything: the state machines live in the
//! modules that write these.

use std::collections::BTreeMap;

use meridian_proto::v1;
use serde::{Deserialize, Serialize};

use crate::placement;

pub use super::codec::{Corrupt, Record, decode, encode};

/// Resources as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
pub struct Res {
    #[prost(uint64, tag = "1")]
    pub cpu: u64,
    #[prost(uint64, tag = "2")]
    pub mem: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    #[prost(uint32, tag = "3")]
    pub gpus: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "4")]
    pub gpu_type: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Res {
    pub fn to_solver(&self) -> placement::Resources {
        placement::Resources {
            cpu_millis: self.cpu,
            memory_bytes: self.mem,
            gpus: self.gpus,
            gpu_type: (!self.gpu_type.is_empty()).then(|| self.gpu_type.clone()),
        }
    }

    pub fn to_proto(&self) -> v1::Resources {
        v1::Resources {
            cpu_millis: self.cpu,
            memory_bytes: self.mem,
            gpu_count: self.gpus,
            gpu_type: self.gpu_type.clone(),
        }
    }

    pub fn from_proto(r: &v1::Resources) -> Self {
        Res {
            cpu: r.cpu_millis,
            mem: r.memory_bytes,
            gpus: r.gpu_count,
            gpu_type: r.gpu_type.clone(),
        }
    }

    pub fn add(&mut self, other: &Res) {
        self.cpu = self.cpu.saturating_add(other.cpu);
        self.mem = self.mem.saturating_add(other.mem);
        self.gpus = self.gpus.saturating_add(other.gpus);
    }
}

/// The shard layout: how many shards, and a generation bumped by every
/// change of the count (bindings check it, so a re-shard fences every
/// placement decided under the old layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub count: u32,
    pub generation: u64,
}

/// Liveness of a node (mirrors `v1::NodeState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeLiveness {
    Ready,
    Suspect,
    Down,
}

impl NodeLiveness {
    pub fn to_proto(self) -> v1::NodeState {
        match self {
            NodeLiveness::Ready => v1::NodeState::Ready,
            NodeLiveness::Suspect => v1::NodeState::Unhealthy,
            NodeLiveness::Down => v1::NodeState::Down,
        }
    }
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    /// Registration epoch; bumped by every new registration and by being
    /// declared dead. Never reused.
    pub epoch: u64,
    pub boot_id: String,
    pub allocatable: Res,
    pub labels: BTreeMap<String, String>,
    pub zone: String,
    pub rack: String,
    pub liveness: NodeLiveness,
    pub cordoned: bool,
    pub draining: bool,
    pub cordon_reason: String,
    /// Drain stop deadline in ms (0: each job's own grace).
    #[serde(default)]
    pub drain_deadline_ms: u64,
    /// OCC version of everything placement depends on, except the tasks the
    /// shard leader itself binds (it is their only writer, under its fence).
    pub version: u64,
    pub registered_at_unix_ms: u64,
    pub agent_version: String,
    /// Where the node's agent serves live task output (`AgentLogs`); empty
    /// when it serves none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logs_endpoint: String,
}

impl NodeRecord {
    /// Whether new tasks may be bound here.
    pub fn schedulable(&self) -> bool {
        self.liveness == NodeLiveness::Ready && !self.cordoned && !self.draining
    }
}

/// Placement-relevant fields of a job, derived from its spec once at intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub assignment_epoch: u64,
    pub request_id: String,
    pub tenant: String,
    pub priority: i32,
    pub task_count: u32,
    pub resources: Res,
    pub labels: BTreeMap<String, String>,
    /// `(key, op, values)`, op as `v1::LabelOperator`.
    pub constraints: Vec<(String, i32, Vec<String>)>,
    /// Hard anti-affinity: `(label key, label value, scope)`; scope 0 node,
    /// 1 rack, 2 zone.
    pub anti_affinity: Vec<(String, String, u8)>,
    /// Soft affinity: `(label key, label value, scope, weight)`.
    pub affinity: Vec<(String, String, u8, u32)>,
    pub pack: bool,
    pub gang: bool,
    pub exclusive: bool,
    pub on_region_loss: i32,
    pub max_attempts: u32,
    pub stop_grace_ms: u64,
    pub state: JobPhase,
    pub created_at_unix_ms: u64,
    /// The job's trace id from the global tier (`Job.trace_id`), handed on
    /// with every RUN; empty when the job came without one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// The shard whose leader places this job's pending tasks (taken modulo
    /// the shard count). Chosen at intake as a shard with room for the job;
    /// a leader that cannot place it hands it to another shard that can.
    #[serde(default)]
    pub shard: u32,
    /// Why the job's tasks wait for a node, as its owner's placer last
    /// found (`state::why`); empty when it never found one unplaceable or
    /// has since placed them all. Written only by the owner shard's leader.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting_reason: String,
    /// Most tasks bound at once (`JobSpec.parallelism`); 0 means no limit.
    /// Enforced by the owner shard's leader, the job's only binder.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parallelism: u32,
    /// Retry backoff of a failed task (`RetryPolicy.backoff_base_ms`,
    /// `backoff_cap_ms`); 0 for no delay (`pipeline::retry`).
    #[serde(default, skip_serializing_if = "is_zero_ms")]
    pub retry_base_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero_ms")]
    pub retry_cap_ms: u64,
}

fn is_zero_ms(v: &u64) -> bool {
    *v == 0
}

/// Where a job stands in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPhase {
    /// Held: place and run its tasks.
    Active,
    /// Cancelled by the user: stop its tasks.
    Cancelled,
    /// Revoked by the global tier under this epoch: stop, then release.
    Revoked(u64),
    /// Released after a revoke: the region will not act on it again.
    Released(u64),
}

/// Whether an agent's message naming hold `named` is about an attempt of
/// hold `held`; 0 names none (a sender that predates holds) and matches any.
pub fn names_hold(named: u64, held: u64) -> bool {
    named == 0 || named == held
}

/// One task's state in the region.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
pub struct TaskRecord {
    /// `v1::TaskState` as i32.
    #[prost(int32, tag = "1")]
    pub state: i32,
    /// Attempt number; 0 before the first placement.
    #[prost(uint32, tag = "2")]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "3")]
    pub node: String,
    #[serde(default)]
    #[prost(uint64, tag = "4")]
    pub node_epoch: u64,
    #[serde(default)]
    #[prost(uint32, tag = "5")]
    pub shard: u32,
    #[serde(default)]
    #[prost(uint64, tag = "6")]
    pub shard_epoch: u64,
    #[serde(default)]
    #[prost(uint64, tag = "7")]
    pub placed_at: u64,
    /// While pending: not placed before this wall time (retry backoff, or
    /// the fence wait of an exclusive task lost with its node).
    #[serde(default)]
    #[prost(uint64, tag = "8")]
    pub not_before: u64,
    /// A stop has been asked for (reason), the agent has not confirmed yet.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "9")]
    pub stopping: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[prost(int32, optional, tag = "10")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "11")]
    pub message: String,
    /// Accounting: run time in ms (agent clock, end minus start) summed
    /// over the attempts of this task that ran and ended under the job's
    /// current hold, retries included; reported up as
    /// `JobStatusUpdate.task_run_ms`. Grown only where an attempt's end is
    /// applied, once per attempt.
    #[serde(default)]
    #[prost(uint64, tag = "20")]
    pub ran_ms: u64,
    /// Accounting: the number of those attempts.
    #[serde(default)]
    #[prost(uint32, tag = "21")]
    pub runs: u32,
    /// When the latest attempt started running (agent clock); 0 while it
    /// has not (`TaskStatus.started_at_unix_ms`).
    #[serde(default)]
    #[prost(uint64, tag = "22")]
    pub started_at: u64,
    /// When the latest attempt ended (agent clock); 0 while it has not
    /// (`TaskStatus.finished_at_unix_ms`).
    #[serde(default)]
    #[prost(uint64, tag = "23")]
    pub finished_at: u64,
    /// While pending after its attempt was written off with its node (the
    /// node declared dead, or registered again under a new epoch): the
    /// node and node epoch that attempt (`attempt`) ran under. Its agent
    /// may still hold the attempt's final report, which it could not
    /// deliver before the fence; until the task is placed again that report
    /// is accepted and ends the task, instead of a second run. Cleared when
    /// the task is placed again or pended for another reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "24")]
    pub lost_node: String,
    #[serde(default)]
    #[prost(uint64, tag = "25")]
    pub lost_node_epoch: u64,
    /// The job's assignment epoch when this task was created here: the hold
    /// its attempts belong to. A job given back to a region that held it
    /// before gets new tasks whose attempts count from 1 again; commands and
    /// reports carry the hold (`v1::TaskAttempt.assignment_epoch`) so that
    /// an agent does not take the new hold's attempt 1 for the one it ran
    /// before, and the region does not take the old one's late report for
    /// the new one's.
    #[serde(default)]
    #[prost(uint64, tag = "26")]
    pub assignment_epoch: u64,
}

impl TaskRecord {
    /// A task waiting for its first placement.
    pub fn new_pending() -> Self {
        TaskRecord {
            state: v1::TaskState::Pending as i32,
            attempt: 0,
            node: String::new(),
            node_epoch: 0,
            shard: 0,
            shard_epoch: 0,
            placed_at: 0,
            not_before: 0,
            stopping: String::new(),
            exit_code: None,
            message: String::new(),
            ran_ms: 0,
            runs: 0,
            started_at: 0,
            finished_at: 0,
            lost_node: String::new(),
            lost_node_epoch: 0,
            assignment_epoch: 0,
        }
    }

    /// A task of the job's hold `assignment_epoch`, waiting for its first
    /// placement.
    pub fn new_pending_in(assignment_epoch: u64) -> Self {
        TaskRecord {
            assignment_epoch,
            ..TaskRecord::new_pending()
        }
    }

    /// Whether a report or command naming hold `assignment_epoch` is about
    /// this task's hold.
    pub fn of_hold(&self, assignment_epoch: u64) -> bool {
        names_hold(assignment_epoch, self.assignment_epoch)
    }

    pub fn state(&self) -> v1::TaskState {
        v1::TaskState::try_from(self.state).unwrap_or(v1::TaskState::Unspecified)
    }

    pub fn is_pending(&self) -> bool {
        self.state() == v1::TaskState::Pending
    }

    /// Bound to a node and not finished.
    pub fn is_bound(&self) -> bool {
        matches!(
            self.state(),
            v1::TaskState::Placed | v1::TaskState::Starting | v1::TaskState::Running
        )
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self.state(),
            v1::TaskState::Succeeded
                | v1::TaskState::Failed
                | v1::TaskState::Killed
                | v1::TaskState::Lost
        )
    }

    /// Back to pending as the next attempt.
    pub fn repend(&mut self, not_before: u64, why: &str) {
        self.state = v1::TaskState::Pending as i32;
        self.node.clear();
        self.node_epoch = 0;
        self.stopping.clear();
        self.not_before = not_before;
        self.message = why.to_string();
        self.started_at = 0;
        self.finished_at = 0;
        self.lost_node.clear();
        self.lost_node_epoch = 0;
    }

    /// Back to pending as the next attempt because its node was fenced
    /// (declared dead, or registered again under a new epoch), remembering
    /// where the written-off attempt ran (see [`TaskRecord::lost_node`]).
    pub fn repend_lost(&mut self, not_before: u64) {
        let node = std::mem::take(&mut self.node);
        let epoch = self.node_epoch;
        self.repend(
            not_before,
            &format!(
                "attempt {} lost with its node {node} (node epoch {epoch} superseded)",
                self.attempt
            ),
        );
        self.lost_node = node;
        self.lost_node_epoch = epoch;
    }

    /// The written-off attempt `attempt` of `node` under `epoch`, whose
    /// final report may still arrive: the task is pending at that attempt
    /// and has not been placed again.
    pub fn awaits_report_of(&self, node: &str, attempt: u32, epoch: u64) -> bool {
        self.is_pending()
            && self.attempt == attempt
            && !self.lost_node.is_empty()
            && self.lost_node == node
            && self.lost_node_epoch == epoch
    }
}

/// Up to [`super::keys::TASK_BLOCK`] consecutive tasks of one job.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
pub struct TaskBlock {
    /// Index of the first task of the block.
    #[prost(uint32, tag = "1")]
    pub first: u32,
    #[prost(message, repeated, tag = "2")]
    pub tasks: Vec<TaskRecord>,
}

/// One command in a node's log (several share a log entry when written by
/// one transaction).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, prost::Message)]
pub struct CommandRecord {
    /// `v1::CommandKind` as i32.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(string, tag = "2")]
    pub job: String,
    #[prost(uint32, tag = "3")]
    pub index: u32,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
    #[prost(uint32, tag = "5")]
    pub shard: u32,
    #[prost(uint64, tag = "6")]
    pub shard_epoch: u64,
    #[prost(uint64, tag = "7")]
    pub node_epoch: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[prost(string, tag = "8")]
    pub reason: String,
    #[serde(default)]
    #[prost(uint64, tag = "9")]
    pub grace_ms: u64,
    /// The job's assignment epoch here when the command was written: the
    /// hold its attempt belongs to (`v1::TaskAttempt.assignment_epoch`).
    #[serde(default)]
    #[prost(uint64, tag = "10")]
    pub assignment_epoch: u64,
}

#[cfg(test)]
impl NodeRecord {
    /// A registered, ready node with `cpu` millicores and `mem` bytes, at
    /// epoch 1 and version 1: the node most unit tests start from.
    pub(crate) fn ready_for_tests(id: &str, cpu: u64, mem: u64) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            epoch: 1,
            boot_id: "b".into(),
            allocatable: Res {
                cpu,
                mem,
                gpus: 0,
                gpu_type: String::new(),
            },
            labels: Default::default(),
            zone: String::new(),
            rack: String::new(),
            liveness: NodeLiveness::Ready,
            cordoned: false,
            draining: false,
            cordon_reason: String::new(),
            drain_deadline_ms: 0,
            version: 1,
            registered_at_unix_ms: 0,
            agent_version: String::new(),
            logs_endpoint: String::new(),
        }
    }
}
