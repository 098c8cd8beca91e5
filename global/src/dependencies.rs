//! Job dependencies: what `after_ok`, `after_any` and `after_failed` mean,
//! the rules a spec's dependencies must follow, and the judgement of a
//! dependent job against the states of the jobs it names.
//!
//! Owns the semantics, checked in one place: a dependency names a job of the
//! same tenant that exists when the dependent is submitted (by job id, or by
//! request id: a job submitted before, or an earlier item of the same
//! `SubmitJobs` call), so every dependency points at an older job and no
//! cycle can form through the store; a cycle written within one batch is
//! refused by [`batch_cycles`] naming the field. The judgement is pure: it
//! reads the named jobs' states given to it. It must never write: applying a
//! verdict is `gate.rs`'s, inside the leader's fenced transaction.

use std::collections::BTreeMap;

use meridian_proto::v1::job_dependency::Target;
use meridian_proto::v1::{DependencyCondition, JobDependency, JobSpec, JobState, SubmitJobRequest};
use meridian_store::Transaction;

use crate::error::{GlobalError, Result};
use crate::history::Removed;
use crate::jobs::read_job;
use crate::keys::Keys;
use crate::lifecycle::{is_terminal, state_of};

/// Dependencies per job at most.
pub const MAX_DEPENDENCIES: usize = 64;

/// Longest failure reason a dependent inherits from its dependency, in
/// bytes: a chain of failures names every job on the way, cut at this.
const MAX_REASON_BYTES: usize = 1024;

/// Checks the form of `spec.dependencies` (whether the named jobs exist is
/// judged inside the submit transaction, [`resolve`]).
pub fn validate(spec: &JobSpec) -> Result<()> {
    if spec.dependencies.len() > MAX_DEPENDENCIES {
        return Err(GlobalError::invalid(
            "spec.dependencies",
            format!("at most {MAX_DEPENDENCIES} entries"),
        ));
    }
    for (i, dep) in spec.dependencies.iter().enumerate() {
        let field = format!("spec.dependencies[{i}]");
        match DependencyCondition::try_from(dep.condition) {
            Ok(DependencyCondition::Unspecified) => {
                return Err(GlobalError::invalid(
                    format!("{field}.condition"),
                    "required: AFTER_OK, AFTER_ANY or AFTER_FAILED",
                ));
            }
            Err(_) => {
                return Err(GlobalError::invalid(
                    format!("{field}.condition"),
                    format!("unknown enum value {}", dep.condition),
                ));
            }
            Ok(_) => {}
        }
        match &dep.target {
            None => {
                return Err(GlobalError::invalid(
                    format!("{field}.job_id"),
                    "required: a job_id or a request_id",
                ));
            }
            Some(Target::JobId(id)) => crate::validate::job_id(&format!("{field}.job_id"), id)?,
            Some(Target::RequestId(id)) => {
                if id.is_empty() || id.len() > meridian_proto::limits::MAX_REQUEST_ID_BYTES {
                    return Err(GlobalError::invalid(
                        format!("{field}.request_id"),
                        format!(
                            "1 to {} bytes",
                            meridian_proto::limits::MAX_REQUEST_ID_BYTES
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// For each item of one `SubmitJobs` call, the refusal of an item whose
/// dependencies by request id close a cycle among the call's items (its
/// own request id included), naming the dependency that closes it. Items
/// outside every cycle get `None`.
pub fn batch_cycles(items: &[SubmitJobRequest]) -> Vec<Option<GlobalError>> {
    // (tenant, request id) -> item; the first item wins, as at submit.
    let mut by_request: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let tenant = item.spec.as_ref().map_or("", |s| s.tenant.as_str());
        by_request
            .entry((tenant, item.request_id.as_str()))
            .or_insert(i);
    }
    // Edges: item -> (dependency index, item named).
    let edges: Vec<Vec<(usize, usize)>> = items
        .iter()
        .map(|item| {
            let Some(spec) = &item.spec else {
                return Vec::new();
            };
            spec.dependencies
                .iter()
                .enumerate()
                .filter_map(|(d, dep)| match &dep.target {
                    Some(Target::RequestId(r)) => by_request
                        .get(&(spec.tenant.as_str(), r.as_str()))
                        .map(|&to| (d, to)),
                    _ => None,
                })
                .collect()
        })
        .collect();
    (0..items.len())
        .map(|start| {
            cycle_from(start, &edges).map(|(d, path)| {
                let names: Vec<&str> = path.iter().map(|&i| items[i].request_id.as_str()).collect();
                GlobalError::invalid(
                    format!("spec.dependencies[{d}].request_id"),
                    format!("dependency cycle: {}", names.join(" -> ")),
                )
            })
        })
        .collect()
}

/// A path of items from `start` back to `start`, with the index of the
/// first dependency taken, if there is one (depth-first, bounded by the
/// batch size).
fn cycle_from(start: usize, edges: &[Vec<(usize, usize)>]) -> Option<(usize, Vec<usize>)> {
    let mut seen = vec![false; edges.len()];
    // Stack of (item, next edge to try); the path is the items on it.
    let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
    let mut first_dep = 0;
    while let Some(top) = stack.last_mut() {
        let Some(&(dep, to)) = edges[top.0].get(top.1) else {
            stack.pop();
            continue;
        };
        top.1 += 1;
        if stack.len() == 1 {
            first_dep = dep;
        }
        if to == start {
            let mut path: Vec<usize> = stack.iter().map(|&(n, _)| n).collect();
            path.push(start);
            return Some((first_dep, path));
        }
        if !seen[to] {
            seen[to] = true;
            stack.push((to, 0));
        }
    }
    None
}

/// The spec's dependencies with every target a job id, read in `tx`; a
/// dependency naming no job of `tenant` is refused naming its field.
pub async fn resolve(
    tx: &Transaction,
    keys: &Keys,
    spec: &JobSpec,
) -> Result<Result<Vec<JobDependency>>> {
    let mut resolved = Vec::with_capacity(spec.dependencies.len());
    for (i, dep) in spec.dependencies.iter().enumerate() {
        let job_id = match &dep.target {
            Some(Target::JobId(id)) => {
                let known = read_job(tx, keys, id)
                    .await?
                    .is_some_and(|job| job.spec.is_some_and(|s| s.tenant == spec.tenant));
                if !known {
                    let field = format!("spec.dependencies[{i}].job_id");
                    let removed = Removed::read(tx, keys, id)
                        .await?
                        .filter(|removed| removed.tenant == spec.tenant);
                    let why = match removed {
                        Some(removed) => format!(
                            "{}; a dependency must name a job still kept",
                            removed.sentence(id)
                        ),
                        None => format!("no job {id} of tenant {:?}", spec.tenant),
                    };
                    return Ok(Err(GlobalError::invalid(field, why)));
                }
                id.clone()
            }
            Some(Target::RequestId(request_id)) => {
                match tx.get(&keys.request(&spec.tenant, request_id)).await? {
                    Some(raw) => String::from_utf8(raw)
                        .map_err(|_| GlobalError::Corrupt("request record is not UTF-8".into()))?,
                    None => {
                        return Ok(Err(GlobalError::invalid(
                            format!("spec.dependencies[{i}].request_id"),
                            format!(
                                "no job of tenant {:?} has request id {request_id:?} (name a job \
                                 submitted before, or an earlier item of the same call)",
                                spec.tenant
                            ),
                        )));
                    }
                }
            }
            None => {
                return Ok(Err(GlobalError::invalid(
                    format!("spec.dependencies[{i}].job_id"),
                    "required: a job_id or a request_id",
                )));
            }
        };
        resolved.push(JobDependency {
            condition: dep.condition,
            target: Some(Target::JobId(job_id)),
        });
    }
    Ok(Ok(resolved))
}

/// What is known of a job another job depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// Its state.
    pub state: JobState,
    /// Its failure reason, when FAILED.
    pub failure_reason: String,
}

/// How the reason of a job waiting for its dependencies begins (its
/// `Job.waiting_reason` while in the blocked index).
const WAIT_PREFIX: &str = "waits for ";

/// Whether `reason` is a [`Verdict::Wait`]'s: the job is kept at the global
/// tier by a dependency not met yet (rather than waiting for a region).
pub fn is_dependency_wait(reason: &str) -> bool {
    reason.starts_with(WAIT_PREFIX)
}

/// The judgement of a dependent job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every dependency is met: the job may be routed.
    Met,
    /// Some dependency may still be met; the sentence says what it waits
    /// for.
    Wait(String),
    /// A dependency can never be met; the sentence names it (and, for a
    /// dependency that failed, carries its own reason, so a chain names the
    /// job it started from).
    Never(String),
}

/// The job id a resolved dependency names.
pub fn target_id(dep: &JobDependency) -> &str {
    match &dep.target {
        Some(Target::JobId(id) | Target::RequestId(id)) => id,
        None => "",
    }
}

/// A condition's short name, as the CLI flags spell it.
pub fn condition_name(condition: i32) -> &'static str {
    match DependencyCondition::try_from(condition) {
        Ok(DependencyCondition::AfterOk) => "after_ok",
        Ok(DependencyCondition::AfterAny) => "after_any",
        Ok(DependencyCondition::AfterFailed) => "after_failed",
        _ => "unknown",
    }
}

/// Judges resolved dependencies against what is known of the named jobs
/// (a job missing from `named` no longer exists). The first dependency that
/// can never be met decides; otherwise every unmet one is listed.
pub fn judge(deps: &[JobDependency], named: &BTreeMap<String, Named>) -> Verdict {
    let mut waits = Vec::new();
    for dep in deps {
        let id = target_id(dep);
        let Some(job) = named.get(id) else {
            return Verdict::Never(format!(
                "dependency {id} no longer exists (it finished and was removed more than a \
                 retention period ago)"
            ));
        };
        let condition = DependencyCondition::try_from(dep.condition)
            .unwrap_or(DependencyCondition::Unspecified);
        let ended = is_terminal(job.state);
        let met = match condition {
            DependencyCondition::AfterOk => job.state == JobState::Succeeded,
            DependencyCondition::AfterAny => ended,
            DependencyCondition::AfterFailed => {
                matches!(job.state, JobState::Failed | JobState::Cancelled)
            }
            DependencyCondition::Unspecified => false,
        };
        if met {
            continue;
        }
        if ended || condition == DependencyCondition::Unspecified {
            let name = condition_name(dep.condition);
            let state = state_name(job.state);
            let mut why = format!("dependency {id} ({name}) ended {state}");
            if !job.failure_reason.is_empty() {
                why.push_str(": ");
                why.push_str(&job.failure_reason);
            }
            return Verdict::Never(truncate(why));
        }
        let what = match condition {
            DependencyCondition::AfterAny => "end",
            DependencyCondition::AfterFailed => "fail",
            _ => "succeed",
        };
        waits.push(format!("job {id} to {what}"));
    }
    if waits.is_empty() {
        Verdict::Met
    } else {
        Verdict::Wait(format!("{WAIT_PREFIX}{}", waits.join(", ")))
    }
}

/// Judges resolved dependencies against the named jobs as stored, read in
/// `tx` (so a dependency failed earlier in the same transaction is seen).
pub async fn judge_in(tx: &Transaction, keys: &Keys, deps: &[JobDependency]) -> Result<Verdict> {
    let mut named = BTreeMap::new();
    for dep in deps {
        let id = target_id(dep);
        if named.contains_key(id) {
            continue;
        }
        if let Some(job) = read_job(tx, keys, id).await? {
            named.insert(id.to_string(), named_of(&job));
        } else if let Some(removed) = Removed::read(tx, keys, id).await? {
            // Removed after the retention period: its tombstone keeps the
            // state it ended in, which is all a judgement needs.
            named.insert(
                id.to_string(),
                Named {
                    state: removed.state,
                    failure_reason: removed.failure_reason,
                },
            );
        }
    }
    Ok(judge(deps, &named))
}

/// What is known of a job record, for [`judge`].
pub fn named_of(job: &meridian_proto::v1::Job) -> Named {
    Named {
        state: state_of(job),
        failure_reason: job.failure_reason.clone(),
    }
}

fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Succeeded => "SUCCEEDED",
        JobState::Failed => "FAILED",
        JobState::Cancelled => "CANCELLED",
        JobState::Pending => "PENDING",
        JobState::Routed => "ROUTED",
        JobState::Placed => "PLACED",
        JobState::Running => "RUNNING",
        JobState::Unspecified => "UNSPECIFIED",
    }
}

/// Cuts a reason to [`MAX_REASON_BYTES`] on a character boundary.
fn truncate(mut text: String) -> String {
    if text.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(condition: DependencyCondition, id: &str) -> JobDependency {
        JobDependency {
            condition: condition as i32,
            target: Some(Target::JobId(id.to_string())),
        }
    }

    fn named(pairs: &[(&str, JobState, &str)]) -> BTreeMap<String, Named> {
        pairs
            .iter()
            .map(|(id, state, why)| {
                (
                    (*id).to_string(),
                    Named {
                        state: *state,
                        failure_reason: (*why).to_string(),
                    },
                )
            })
            .collect()
    }

    fn item(request_id: &str, deps: &[&str]) -> SubmitJobRequest {
        SubmitJobRequest {
            request_id: request_id.to_string(),
            spec: Some(JobSpec {
                tenant: "t".into(),
                dependencies: deps
                    .iter()
                    .map(|r| JobDependency {
                        condition: DependencyCondition::AfterOk as i32,
                        target: Some(Target::RequestId((*r).to_string())),
                    })
                    .collect(),
                ..JobSpec::default()
            }),
        }
    }

    #[test]
    fn after_ok_is_met_only_by_success_and_never_after_failure_or_cancel() {
        let deps = [on(DependencyCondition::AfterOk, "a")];
        let ok = named(&[("a", JobState::Succeeded, "")]);
        assert_eq!(judge(&deps, &ok), Verdict::Met);
        for running in [JobState::Pending, JobState::Routed, JobState::Running] {
            let waiting = named(&[("a", running, "")]);
            assert_eq!(
                judge(&deps, &waiting),
                Verdict::Wait("waits for job a to succeed".into())
            );
        }
        let failed = named(&[("a", JobState::Failed, "task 0 exited 3")]);
        assert_eq!(
            judge(&deps, &failed),
            Verdict::Never("dependency a (after_ok) ended FAILED: task 0 exited 3".into())
        );
        let cancelled = named(&[("a", JobState::Cancelled, "")]);
        assert_eq!(
            judge(&deps, &cancelled),
            Verdict::Never("dependency a (after_ok) ended CANCELLED".into())
        );
    }

    #[test]
    fn after_any_is_met_by_every_end_and_waits_before() {
        let deps = [on(DependencyCondition::AfterAny, "a")];
        for end in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            assert_eq!(judge(&deps, &named(&[("a", end, "")])), Verdict::Met);
        }
        assert_eq!(
            judge(&deps, &named(&[("a", JobState::Placed, "")])),
            Verdict::Wait("waits for job a to end".into())
        );
    }

    #[test]
    fn after_failed_is_met_by_failure_or_cancel_and_never_by_success() {
        let deps = [on(DependencyCondition::AfterFailed, "a")];
        for end in [JobState::Failed, JobState::Cancelled] {
            assert_eq!(judge(&deps, &named(&[("a", end, "")])), Verdict::Met);
        }
        assert_eq!(
            judge(&deps, &named(&[("a", JobState::Succeeded, "")])),
            Verdict::Never("dependency a (after_failed) ended SUCCEEDED".into())
        );
        assert_eq!(
            judge(&deps, &named(&[("a", JobState::Running, "")])),
            Verdict::Wait("waits for job a to fail".into())
        );
    }

    #[test]
    fn every_unmet_dependency_is_listed_and_one_never_met_decides() {
        let deps = [
            on(DependencyCondition::AfterOk, "a"),
            on(DependencyCondition::AfterAny, "b"),
            on(DependencyCondition::AfterOk, "c"),
        ];
        let known = named(&[
            ("a", JobState::Running, ""),
            ("b", JobState::Pending, ""),
            ("c", JobState::Succeeded, ""),
        ]);
        assert_eq!(
            judge(&deps, &known),
            Verdict::Wait("waits for job a to succeed, job b to end".into())
        );
        let known = named(&[
            ("a", JobState::Running, ""),
            ("b", JobState::Pending, ""),
            ("c", JobState::Failed, "no region"),
        ]);
        assert_eq!(
            judge(&deps, &known),
            Verdict::Never("dependency c (after_ok) ended FAILED: no region".into())
        );
        assert_eq!(
            judge(&deps[..1], &BTreeMap::new()),
            Verdict::Never(
                "dependency a no longer exists (it finished and was removed more than a \
                 retention period ago)"
                    .into()
            )
        );
    }

    #[test]
    fn a_failure_passed_down_a_chain_names_the_job_it_started_from() {
        let b_failed = match judge(
            &[on(DependencyCondition::AfterOk, "a")],
            &named(&[("a", JobState::Failed, "task 0 exited 1")]),
        ) {
            Verdict::Never(why) => why,
            other => panic!("{other:?}"),
        };
        let c = judge(
            &[on(DependencyCondition::AfterOk, "b")],
            &named(&[("b", JobState::Failed, &b_failed)]),
        );
        assert_eq!(
            c,
            Verdict::Never(
                "dependency b (after_ok) ended FAILED: dependency a (after_ok) ended FAILED: \
                 task 0 exited 1"
                    .into()
            )
        );
        let long = "x".repeat(5000);
        let Verdict::Never(cut) = judge(
            &[on(DependencyCondition::AfterOk, "b")],
            &named(&[("b", JobState::Failed, &long)]),
        ) else {
            panic!("not refused");
        };
        assert_eq!(cut.len(), MAX_REASON_BYTES);
    }

    #[test]
    fn a_cycle_within_one_batch_is_refused_naming_the_dependency_that_closes_it() {
        let items = [
            item("a", &["c"]),
            item("b", &["a"]),
            item("c", &["b"]),
            item("d", &["a"]),
            item("e", &["e"]),
        ];
        let out = batch_cycles(&items);
        let message = |i: usize| out[i].as_ref().map(ToString::to_string);
        assert_eq!(
            message(0).as_deref(),
            Some("spec.dependencies[0].request_id: dependency cycle: a -> c -> b -> a")
        );
        assert!(message(1).is_some_and(|m| m.contains("b -> a -> c -> b")));
        assert!(message(2).is_some());
        assert_eq!(message(3), None, "d only depends on the cycle");
        assert_eq!(
            message(4).as_deref(),
            Some("spec.dependencies[0].request_id: dependency cycle: e -> e")
        );
    }

    #[test]
    fn a_pipeline_in_one_batch_has_no_cycle() {
        let items = [item("a", &[]), item("b", &["a"]), item("c", &["b", "a"])];
        assert!(batch_cycles(&items).iter().all(Option::is_none));
    }

    #[test]
    fn malformed_dependencies_are_refused_naming_the_field() {
        let mut spec = JobSpec {
            dependencies: vec![on(DependencyCondition::Unspecified, "a")],
            ..JobSpec::default()
        };
        let field = |spec: &JobSpec| {
            validate(spec)
                .err()
                .and_then(|e| e.field().map(str::to_owned))
        };
        assert_eq!(
            field(&spec).as_deref(),
            Some("spec.dependencies[0].condition")
        );
        spec.dependencies[0].condition = 9;
        assert_eq!(
            field(&spec).as_deref(),
            Some("spec.dependencies[0].condition")
        );
        spec.dependencies[0].condition = DependencyCondition::AfterOk as i32;
        spec.dependencies[0].target = None;
        assert_eq!(field(&spec).as_deref(), Some("spec.dependencies[0].job_id"));
        spec.dependencies[0].target = Some(Target::RequestId(String::new()));
        assert_eq!(
            field(&spec).as_deref(),
            Some("spec.dependencies[0].request_id")
        );
        spec.dependencies[0].target = Some(Target::JobId(String::new()));
        assert_eq!(field(&spec).as_deref(), Some("spec.dependencies[0].job_id"));
        spec.dependencies = vec![on(DependencyCondition::AfterOk, "a"); MAX_DEPENDENCIES + 1];
        assert_eq!(field(&spec).as_deref(), Some("spec.dependencies"));
        spec.dependencies.truncate(MAX_DEPENDENCIES);
        assert_eq!(field(&spec), None);
    }
}
