//! Why a job's tasks find no node: the region's nodes counted by the first
//! thing that keeps each of them out, in the style operators know from
//! kube-scheduler (`0/603 nodes: 600 do not match real=true, 3 have too
//! little cpu`).
//!
//! Owns the wording users read in `Job.waiting_reason` and the order in
//! which a node's obstacles are judged: state first (not ready, cordoned,
//! draining), then the job's label constraints (the first one the node
//! fails is named), then the GPU type, then free resources. It looks at one
//! task's needs and the job's label constraints only; the solver's own
//! reason (anti-affinity, gangs) completes the sentence when some nodes do
//! have room. Must never decide where anything goes: it only explains.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::JobRecord;
use crate::placement::{LabelConstraint, LabelOp};

use super::RegionState;

/// What keeps one node out, in the order nodes are judged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Obstacle {
    NotReady,
    Cordoned,
    Draining,
    /// The first label constraint the node fails, rendered.
    Label(String),
    /// The node has no GPUs of this type.
    GpuType(String),
    Cpu,
    Memory,
    Gpus,
}

impl fmt::Display for Obstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obstacle::NotReady => f.write_str("are not ready"),
            Obstacle::Cordoned => f.write_str("are cordoned"),
            Obstacle::Draining => f.write_str("are draining"),
            Obstacle::Label(c) => write!(f, "do not match {c}"),
            Obstacle::GpuType(t) => write!(f, "have no {t} gpus"),
            Obstacle::Cpu => f.write_str("have too little cpu"),
            Obstacle::Memory => f.write_str("have too little memory"),
            Obstacle::Gpus => f.write_str("have too few gpus"),
        }
    }
}

/// The region's nodes judged for one task of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    /// Registered nodes.
    pub total: u64,
    /// Nodes where one task would fit now.
    pub fit: u64,
    /// Every other node, counted by its first obstacle.
    pub kept_out: BTreeMap<Obstacle, u64>,
}

impl Explanation {
    /// The sentence for a job the placer could not place; `placer` is the
    /// solver's reason, used when some node does have room (the obstacle
    /// is then not a node's: anti-affinity, a gang, the queue).
    pub fn sentence(&self, placer: &str) -> String {
        let mut out = format!("{}/{} nodes", self.fit, self.total);
        if self.fit > 0 {
            out.push_str(" have room for a task");
            if !placer.is_empty() {
                out.push_str("; ");
                out.push_str(placer);
            }
            return out;
        }
        if self.kept_out.is_empty() {
            out.push_str(": the region has no node");
            return out;
        }
        // Largest groups first; ties in judging order.
        let mut groups: Vec<(&Obstacle, &u64)> = self.kept_out.iter().collect();
        groups.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        out.push_str(": ");
        let parts: Vec<String> = groups.iter().map(|(o, n)| format!("{n} {o}")).collect();
        out.push_str(&parts.join(", "));
        out
    }
}

/// Judges every registered node of the region for one task of `job`.
pub fn explain(state: &RegionState, job: &JobRecord) -> Explanation {
    let constraints = super::fit::constraints(job);
    let want = &job.resources;
    let mut out = Explanation::default();
    for (entry, node) in state.node_records() {
        out.total += 1;
        let obstacle = if node.liveness != crate::model::NodeLiveness::Ready {
            Some(Obstacle::NotReady)
        } else if node.cordoned {
            Some(Obstacle::Cordoned)
        } else if node.draining {
            Some(Obstacle::Draining)
        } else if let Some(c) = constraints.iter().find(|c| !c.matches(&node.labels)) {
            Some(Obstacle::Label(render(c)))
        } else if want.gpus > 0
            && !want.gpu_type.is_empty()
            && node.allocatable.gpu_type != want.gpu_type
        {
            Some(Obstacle::GpuType(want.gpu_type.clone()))
        } else {
            let free = entry.free();
            if free.cpu < want.cpu {
                Some(Obstacle::Cpu)
            } else if free.mem < want.mem {
                Some(Obstacle::Memory)
            } else if free.gpus < want.gpus {
                Some(Obstacle::Gpus)
            } else {
                None
            }
        };
        match obstacle {
            Some(o) => *out.kept_out.entry(o).or_default() += 1,
            None => out.fit += 1,
        }
    }
    out
}

/// A constraint in label-selector syntax.
pub fn render(c: &LabelConstraint) -> String {
    use meridian_proto::v1::LabelOperator;
    let op = match c.op {
        LabelOp::In => LabelOperator::In,
        LabelOp::NotIn => LabelOperator::NotIn,
        LabelOp::Exists => LabelOperator::Exists,
        LabelOp::DoesNotExist => LabelOperator::DoesNotExist,
    };
    meridian_proto::selector::text(&c.key, op, &c.values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explained(fit: u64, groups: &[(Obstacle, u64)]) -> Explanation {
        Explanation {
            total: fit + groups.iter().map(|(_, n)| n).sum::<u64>(),
            fit,
            kept_out: groups.iter().cloned().collect(),
        }
    }

    #[test]
    fn a_sentence_names_the_largest_group_of_nodes_first() {
        let e = explained(
            0,
            &[
                (Obstacle::Cpu, 3),
                (Obstacle::Label("real=true".into()), 600),
            ],
        );
        assert_eq!(
            e.sentence("ignored"),
            "0/603 nodes: 600 do not match real=true, 3 have too little cpu"
        );
    }

    #[test]
    fn groups_of_equal_size_keep_the_judging_order() {
        let e = explained(0, &[(Obstacle::Memory, 2), (Obstacle::NotReady, 2)]);
        assert_eq!(
            e.sentence(""),
            "0/4 nodes: 2 are not ready, 2 have too little memory"
        );
    }

    #[test]
    fn when_some_node_has_room_the_placer_s_reason_completes_the_sentence() {
        let e = explained(2, &[(Obstacle::Cpu, 1)]);
        assert_eq!(
            e.sentence("every suitable node is excluded by anti-affinity"),
            "2/3 nodes have room for a task; every suitable node is excluded by anti-affinity"
        );
    }

    #[test]
    fn a_region_without_nodes_says_so() {
        assert_eq!(
            Explanation::default().sentence(""),
            "0/0 nodes: the region has no node"
        );
    }
}
