//! What a solve decides: bindings, preemptions, and why the rest waits.
//!
//! Owns the output types and the wording of reasons (they end up in job
//! status for users to read). Must never carry anything the commit does not
//! need: a solution is a proposal that the shard leader commits with OCC on
//! `node_version` and its epoch, or throws away.

use std::fmt;

use super::types::{GangId, NodeId, PendingTask, TaskRef};
use super::verify::Violation;

/// Bind `task` to `node`, valid only while the node is still at
/// `node_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub task: TaskRef,
    pub node: NodeId,
    pub node_version: u64,
}

/// Stop `victim` on `node`, within `grace_ms`, to make room for `for_task`,
/// which is bound to the same node in the same solution. The agent starts
/// `for_task` only once its victims have stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub victim: TaskRef,
    pub node: NodeId,
    pub for_task: TaskRef,
    pub grace_ms: u64,
}

/// Why a pending task was not bound.
///
/// For a task that fits nowhere, the reason names the furthest filter any
/// node got to: if some node matched the constraints and the GPU type but
/// every such node lacked CPU, the reason is [`Reason::InsufficientCpu`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The region has no schedulable node.
    NoSchedulableNode,
    /// No schedulable node has labels satisfying the task's constraints.
    Constraint,
    /// No node satisfying the constraints has GPUs of the requested type.
    GpuType(String),
    /// Every otherwise suitable node is excluded by an anti-affinity rule.
    AntiAffinity,
    /// Suitable nodes exist but lack free CPU (the most common shortfall).
    InsufficientCpu,
    /// Suitable nodes exist but lack free memory (the most common shortfall).
    InsufficientMemory,
    /// Suitable nodes exist but lack free GPUs (the most common shortfall).
    InsufficientGpu,
    /// Another member of the task's gang could not be placed, so none was.
    GangIncomplete { gang: GangId, blocking: TaskRef },
    /// The task is already running (listed in the snapshot).
    AlreadyRunning,
    /// The task appears earlier in the pending list; that entry decides.
    DuplicatePending,
    /// The solve broke one of its own safety rules and was thrown away (a
    /// bug in the solver, never expected): the rule it broke.
    Refused(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoSchedulableNode => f.write_str("no schedulable node in the region"),
            Reason::Constraint => {
                f.write_str("no schedulable node satisfies the label constraints")
            }
            Reason::GpuType(t) => write!(f, "no suitable node has GPUs of type {t}"),
            Reason::AntiAffinity => f.write_str("every suitable node is excluded by anti-affinity"),
            Reason::InsufficientCpu => f.write_str("insufficient free cpu on suitable nodes"),
            Reason::InsufficientMemory => f.write_str("insufficient free memory on suitable nodes"),
            Reason::InsufficientGpu => f.write_str("insufficient free gpus on suitable nodes"),
            Reason::GangIncomplete { gang, blocking } => {
                write!(
                    f,
                    "gang {gang} incomplete: member {blocking} cannot be placed"
                )
            }
            Reason::AlreadyRunning => f.write_str("task is already running"),
            Reason::DuplicatePending => f.write_str("task is listed twice in the pending queue"),
            Reason::Refused(rule) => {
                write!(f, "placement decision refused by its safety check: {rule}")
            }
        }
    }
}

/// The decisions of one solve.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Solution {
    /// In the order they were decided.
    pub bindings: Vec<Binding>,
    /// In the order they were decided; each names the binding it makes room
    /// for.
    pub preemptions: Vec<Preemption>,
    /// Every pending entry that was not bound, in the order decided.
    pub unschedulable: Vec<(TaskRef, Reason)>,
}

impl Solution {
    /// What a solve that broke `violation` returns instead of its decisions:
    /// nothing bound, nothing stopped, and every pending entry waiting with
    /// the broken rule as its reason.
    pub fn refused(pending: &[PendingTask], violation: &Violation) -> Solution {
        Solution {
            bindings: Vec::new(),
            preemptions: Vec::new(),
            unschedulable: pending
                .iter()
                .map(|p| (p.task.clone(), Reason::Refused(violation.to_string())))
                .collect(),
        }
    }

    /// The rule a refused solve broke, if this is one.
    pub fn refusal(&self) -> Option<&str> {
        self.unschedulable.iter().find_map(|(_, r)| match r {
            Reason::Refused(rule) => Some(rule.as_str()),
            _ => None,
        })
    }
}
