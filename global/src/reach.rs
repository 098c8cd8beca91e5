//! Could any node of a region ever run a task of this job? Judged on the
//! node classes each region reports with its capacity (its nodes grouped by
//! label set, with the largest allocatable amounts of each group).
//!
//! Owns the router's test that keeps a job away from regions none of whose
//! nodes match its label constraints or are big enough for one task, and
//! the sentence that tells the user why such a job waits at the global tier
//! (`0/603 nodes of the allowed regions could ever run a task: 600 do not
//! match real=true, 3 have less cpu than a task asks`). A region whose
//! classes are unknown (no report yet, or too many label sets to report) is
//! always given the benefit of the doubt. Must never look at free capacity:
//! that is the router's; this is about what could ever fit.

use std::collections::BTreeMap;

use meridian_proto::v1::{LabelOperator, LabelRequirement, NodeClass};

use crate::router::Amount;

/// The nodes of one label set in a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassView {
    /// Their labels.
    pub labels: BTreeMap<String, String>,
    /// How many nodes.
    pub nodes: u64,
    /// Largest allocatable amount of each resource on one of them.
    pub max: Amount,
    /// GPU types among them.
    pub gpu_types: Vec<String>,
}

impl ClassView {
    /// The router's view of a reported class.
    pub fn of(class: &NodeClass) -> Self {
        let max = class.max_allocatable.clone().unwrap_or_default();
        ClassView {
            labels: class
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            nodes: u64::from(class.nodes),
            max: Amount {
                cpu_millis: max.cpu_millis,
                memory_bytes: max.memory_bytes,
                gpus: u64::from(max.gpu_count),
            },
            gpu_types: class.gpu_types.clone(),
        }
    }
}

/// What one task of a job needs from a node, forever.
#[derive(Debug, Clone, Copy)]
pub struct Need<'a> {
    pub per_task: Amount,
    pub gpu_type: &'a str,
    pub constraints: &'a [LabelRequirement],
}

/// Why the nodes of a class could never run a task, in judging order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Obstacle {
    Label(String),
    GpuType(String),
    Cpu,
    Memory,
    Gpus,
}

impl std::fmt::Display for Obstacle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Obstacle::Label(c) => write!(f, "do not match {c}"),
            Obstacle::GpuType(t) => write!(f, "have no {t} gpus"),
            Obstacle::Cpu => f.write_str("have less cpu than a task asks"),
            Obstacle::Memory => f.write_str("have less memory than a task asks"),
            Obstacle::Gpus => f.write_str("have fewer gpus than a task asks"),
        }
    }
}

fn matches(req: &LabelRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    match LabelOperator::try_from(req.op).unwrap_or(LabelOperator::Unspecified) {
        LabelOperator::In => value.is_some_and(|v| req.values.contains(v)),
        LabelOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
        LabelOperator::Exists => value.is_some(),
        LabelOperator::DoesNotExist => value.is_none(),
        // Refused at submit; never blocks a job here.
        LabelOperator::Unspecified => true,
    }
}

/// The first thing that keeps every node of `class` from ever running a
/// task; `None` when one could.
fn obstacle(class: &ClassView, need: &Need<'_>) -> Option<Obstacle> {
    if let Some(req) = need.constraints.iter().find(|r| !matches(r, &class.labels)) {
        let op = LabelOperator::try_from(req.op).unwrap_or(LabelOperator::Unspecified);
        return Some(Obstacle::Label(meridian_proto::selector::text(
            &req.key,
            op,
            &req.values,
        )));
    }
    let want = need.per_task;
    if want.gpus > 0
        && !need.gpu_type.is_empty()
        && !class.gpu_types.iter().any(|t| t == need.gpu_type)
    {
        return Some(Obstacle::GpuType(need.gpu_type.to_string()));
    }
    if want.cpu_millis > class.max.cpu_millis {
        Some(Obstacle::Cpu)
    } else if want.memory_bytes > class.max.memory_bytes {
        Some(Obstacle::Memory)
    } else if want.gpus > class.max.gpus {
        Some(Obstacle::Gpus)
    } else {
        None
    }
}

/// Whether some node of a region with these classes could ever run a task;
/// `None` classes (unknown) always could.
pub fn could_ever_run(classes: Option<&[ClassView]>, need: &Need<'_>) -> bool {
    classes.is_none_or(|cs| cs.iter().any(|c| obstacle(c, need).is_none()))
}

/// The sentence for a job no node of `regions` (each with known classes)
/// could ever run.
pub fn never_runs<'a>(
    regions: impl IntoIterator<Item = &'a [ClassView]>,
    need: &Need<'_>,
) -> String {
    let mut total = 0u64;
    let mut kept_out: BTreeMap<Obstacle, u64> = BTreeMap::new();
    for classes in regions {
        for class in classes {
            total += class.nodes;
            if let Some(o) = obstacle(class, need) {
                *kept_out.entry(o).or_default() += class.nodes;
            }
        }
    }
    if total == 0 {
        return "the allowed regions have no node".to_string();
    }
    let mut groups: Vec<(Obstacle, u64)> = kept_out.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let parts: Vec<String> = groups.iter().map(|(o, n)| format!("{n} {o}")).collect();
    format!(
        "0/{total} nodes of the allowed regions could ever run a task: {}",
        parts.join(", ")
    )
}
