//! Conversions between the wire's job spec, the stored job record, and the
//! solver's task and node types.
//!
//! Owns how a `JobSpec` is understood by placement (which affinity forms the
//! solver supports, how a gang is named). Must never do I/O.

use meridian_proto::v1;

use super::records::{JobPhase, JobRecord, NodeRecord, Res};
use crate::error::{RegionalError, Result};
use crate::placement::{
    Affinity, AntiAffinity, GangId, LabelConstraint, LabelOp, Node, NodeId, PendingTask, Policy,
    Running, Scope, TaskRef, TaskSelector,
};

/// The stored record of a job assigned under `epoch`.
///
/// Affinity terms are kept when their selector is one `IN` requirement with
/// one value (a label match, the form the solver evaluates); other selector
/// forms are rejected as invalid, so nothing is silently ignored.
pub fn job_from_spec(
    job_id: &str,
    epoch: u64,
    request_id: &str,
    spec: &v1::JobSpec,
    created_at_unix_ms: u64,
) -> Result<JobRecord> {
    if job_id.is_empty() {
        return Err(RegionalError::invalid("job_id", "must not be empty"));
    }
    if spec.task_count == 0 || spec.task_count > meridian_proto::limits::MAX_TASK_COUNT {
        return Err(RegionalError::invalid(
            "spec.task_count",
            format!("must be 1 to {}", meridian_proto::limits::MAX_TASK_COUNT),
        ));
    }
    let mut anti_affinity = Vec::new();
    let mut affinity = Vec::new();
    for (i, term) in spec.affinities.iter().enumerate() {
        let [req] = term.selector.as_slice() else {
            return Err(RegionalError::invalid(
                &format!("spec.affinities[{i}].selector"),
                "only a single IN requirement with one value is supported",
            ));
        };
        if req.op != v1::LabelOperator::In as i32 || req.values.len() != 1 {
            return Err(RegionalError::invalid(
                &format!("spec.affinities[{i}].selector"),
                "only a single IN requirement with one value is supported",
            ));
        }
        let scope = match v1::TopologyDomain::try_from(term.topology) {
            Ok(v1::TopologyDomain::Rack) => 1,
            Ok(v1::TopologyDomain::Zone) => 2,
            _ => 0,
        };
        let (key, value) = (req.key.clone(), req.values[0].clone());
        match v1::AffinityKind::try_from(term.kind) {
            Ok(v1::AffinityKind::AntiAffinity) if term.required => {
                anti_affinity.push((key, value, scope));
            }
            Ok(v1::AffinityKind::Affinity) if !term.required => {
                affinity.push((key, value, scope, term.weight.clamp(1, 100)));
            }
            _ => {
                return Err(RegionalError::invalid(
                    &format!("spec.affinities[{i}]"),
                    "supported: required anti-affinity and preferred affinity",
                ));
            }
        }
    }
    Ok(JobRecord {
        job_id: job_id.to_string(),
        assignment_epoch: epoch,
        request_id: request_id.to_string(),
        tenant: spec.tenant.clone(),
        priority: spec.priority,
        task_count: spec.task_count,
        resources: spec
            .resources
            .as_ref()
            .map(Res::from_proto)
            .unwrap_or_default(),
        labels: spec.labels.clone().into_iter().collect(),
        constraints: constraints_of(spec),
        anti_affinity,
        affinity,
        pack: spec.placement == v1::PlacementPolicy::Pack as i32,
        gang: spec.gang,
        exclusive: spec.exclusive,
        on_region_loss: spec.on_region_loss,
        max_attempts: spec.retry.as_ref().map_or(1, |r| r.max_attempts.max(1)),
        stop_grace_ms: spec.stop_grace_period_ms,
        state: JobPhase::Active,
        created_at_unix_ms,
        trace_id: String::new(),
        shard: 0,
        waiting_reason: String::new(),
        parallelism: spec.parallelism,
        retry_base_ms: spec.retry.as_ref().map_or(0, |r| r.backoff_base_ms),
        retry_cap_ms: spec.retry.as_ref().map_or(0, |r| r.backoff_cap_ms),
    })
}

/// Label every simulated node carries (`meridian agent --simulate`).
pub const SIMULATED_LABEL: &str = "meridian.io/simulated";

/// Whether the job's tasks run a real process (anything but a simulated
/// template).
pub fn runs_a_process(spec: &v1::JobSpec) -> bool {
    !matches!(
        spec.task.as_ref().and_then(|t| t.kind.as_ref()),
        Some(v1::task_template::Kind::Simulated(_))
    )
}

/// The spec's node constraints, plus, for a job running a real process,
/// `meridian.io/simulated NOT IN (true)`: a real command never lands on a
/// simulated node (it would never run). Simulated tasks may land anywhere.
fn constraints_of(spec: &v1::JobSpec) -> Vec<(String, i32, Vec<String>)> {
    let mut constraints: Vec<_> = spec
        .node_constraints
        .iter()
        .map(|c| (c.key.clone(), c.op, c.values.clone()))
        .collect();
    if runs_a_process(spec) {
        constraints.push((
            SIMULATED_LABEL.to_string(),
            v1::LabelOperator::NotIn as i32,
            vec!["true".to_string()],
        ));
    }
    constraints
}

fn scope(s: u8) -> Scope {
    match s {
        1 => Scope::Rack,
        2 => Scope::Zone,
        _ => Scope::Node,
    }
}

fn label_op(op: i32) -> LabelOp {
    match v1::LabelOperator::try_from(op) {
        Ok(v1::LabelOperator::NotIn) => LabelOp::NotIn,
        Ok(v1::LabelOperator::Exists) => LabelOp::Exists,
        Ok(v1::LabelOperator::DoesNotExist) => LabelOp::DoesNotExist,
        _ => LabelOp::In,
    }
}

fn anti(job: &JobRecord) -> Vec<AntiAffinity> {
    job.anti_affinity
        .iter()
        .map(|(k, v, s)| AntiAffinity::new(TaskSelector::label(k, v), scope(*s)))
        .collect()
}

/// The solver's view of task `index` of `job`, waiting for a node.
pub fn pending_task(job: &JobRecord, index: u32) -> PendingTask {
    PendingTask {
        task: TaskRef::new(job.job_id.clone(), index),
        tenant: job.tenant.clone(),
        priority: job.priority,
        resources: job.resources.to_solver(),
        labels: job.labels.clone(),
        constraints: job
            .constraints
            .iter()
            .map(|(k, op, values)| LabelConstraint {
                key: k.clone(),
                op: label_op(*op),
                values: values.clone(),
            })
            .collect(),
        anti_affinity: anti(job),
        affinity: job
            .affinity
            .iter()
            .map(|(k, v, s, w)| Affinity::new(TaskSelector::label(k, v), scope(*s), *w))
            .collect(),
        policy: if job.pack {
            Policy::Pack
        } else {
            Policy::Spread
        },
        gang: job.gang.then(|| GangId::new(job.job_id.clone())),
        preemptible: true,
        drain_grace_ms: job.stop_grace_ms,
    }
}

/// The solver's view of task `index` of `job`, bound to `node`.
pub fn running_task(job: &JobRecord, index: u32, node: &str) -> Running {
    Running {
        task: TaskRef::new(job.job_id.clone(), index),
        node: NodeId::new(node),
        priority: job.priority,
        resources: job.resources.to_solver(),
        tenant: job.tenant.clone(),
        labels: job.labels.clone(),
        preemptible: true,
        drain_grace_ms: job.stop_grace_ms,
        anti_affinity: anti(job),
    }
}

/// The solver's view of a node record.
pub fn solver_node(node: &NodeRecord) -> Node {
    Node {
        id: NodeId::new(node.node_id.clone()),
        version: node.version,
        capacity: node.allocatable.to_solver(),
        allocated: crate::placement::Resources::default(),
        labels: node.labels.clone(),
        zone: (!node.zone.is_empty()).then(|| node.zone.clone()),
        rack: (!node.rack.is_empty()).then(|| node.rack.clone()),
        schedulable: node.schedulable(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(kind: v1::task_template::Kind) -> v1::JobSpec {
        v1::JobSpec {
            task_count: 1,
            task: Some(v1::TaskTemplate { kind: Some(kind) }),
            ..Default::default()
        }
    }

    fn simulated_node() -> BTreeMap<String, String> {
        BTreeMap::from([(SIMULATED_LABEL.to_string(), "true".to_string())])
    }

    #[test]
    fn a_real_command_never_lands_on_a_simulated_node_and_a_simulated_task_may() {
        let real = job_from_spec(
            "j1",
            1,
            "r1",
            &spec(v1::task_template::Kind::Command(v1::Command {
                program: "echo".into(),
                args: vec!["hello".into()],
                ..Default::default()
            })),
            0,
        )
        .expect("real job");
        let sim = job_from_spec(
            "j2",
            1,
            "r2",
            &spec(v1::task_template::Kind::Simulated(v1::Simulated::default())),
            0,
        )
        .expect("simulated job");
        let fits = |job: &JobRecord, labels: &BTreeMap<String, String>| {
            pending_task(job, 0)
                .constraints
                .iter()
                .all(|c| c.matches(labels))
        };
        assert!(!fits(&real, &simulated_node()));
        assert!(fits(&real, &BTreeMap::new()));
        assert!(fits(&sim, &simulated_node()));
        assert!(fits(&sim, &BTreeMap::new()));
    }
}
