//! The binding commit's own checks, met by decisions that are wrong or stale
//! by the time they commit: intents built by hand and submitted straight to
//! the write pipeline, as a faulty or late placer would send them. Each test
//! asserts what the commit refuses and that the store (task records, node
//! command logs) and memory hold nothing of a refused binding.
//!
//! The placer's own rounds never produce such decisions, so these are the
//! only tests in which the commit's re-checks decide anything.

use crate::support;

use meridian_proto::v1;
use meridian_regional::agent::stream::read_log;
use meridian_regional::error::Result;
use meridian_regional::jobs::simple_spec;
use meridian_regional::model::{CommandRecord, Res};
use meridian_regional::pipeline::bind::{BatchOutcome, Bind, PlannedBinding, PlannedStop, Stale};
use meridian_regional::pipeline::report::Report;
use meridian_regional::pipeline::{Authority, Intent, Outcome};
use meridian_regional::placement::TaskRef;
use support::{GIB, Region, registration, report};

/// The pipeline's budget of one group commit (`MAX_GROUP_BYTES`).
const GROUP_BYTES: usize = 4 << 20;

/// A region with `node-a` (4 cores, 8 GiB, one GPU).
async fn gpu_region() -> Region {
    let region = Region::new().await;
    let mut req = registration("node-a", "boot-a");
    if let Some(r) = req.allocatable.as_mut() {
        r.gpu_count = 1;
        r.gpu_type = "a100".into();
    }
    region.fx.register(req).await.expect("register");
    region
}

/// A one-task job needing `cpu` millicores, `mem` bytes and `gpus` GPUs.
fn spec(cpu: u64, mem: u64, gpus: u32) -> v1::JobSpec {
    let mut spec = simple_spec("t", 1, cpu, mem);
    if let Some(r) = spec.resources.as_mut() {
        r.gpu_count = gpus;
        if gpus > 0 {
            r.gpu_type = "a100".into();
        }
    }
    spec
}

/// `node`'s OCC version as memory holds it now.
fn version(region: &Region, node: &str) -> u64 {
    region.fx.path.state.read().nodes[node]
        .record
        .as_ref()
        .expect("node record")
        .version
}

/// A binding of task `index` of `job` to `node` at the node's current
/// version, seen at attempt `seen`, with the job's resources.
fn planned_at(region: &Region, job: &str, index: u32, node: &str, seen: u32) -> PlannedBinding {
    let resources = region.fx.path.state.read().jobs[job]
        .record
        .resources
        .clone();
    PlannedBinding {
        task: TaskRef::new(job, index),
        node: node.into(),
        node_version: version(region, node),
        seen_attempt: seen,
        resources,
    }
}

/// Task 0 of `job` to `node`, seen pending at attempt 0.
fn planned(region: &Region, job: &str, node: &str) -> PlannedBinding {
    planned_at(region, job, 0, node, 0)
}

/// A stop of task 0 of `victim` on `node` for task 0 of `for_job`.
fn stop(victim: &str, node: &str, for_job: &str) -> PlannedStop {
    PlannedStop {
        victim: TaskRef::new(victim, 0),
        node: node.into(),
        for_task: TaskRef::new(for_job, 0),
        grace_ms: 5,
    }
}

fn intent(region: &Region, bindings: Vec<PlannedBinding>, stops: Vec<PlannedStop>) -> Intent {
    Intent::Bind(Bind {
        shard: 0,
        bindings,
        stops,
        now_unix_ms: region.now_ms(),
    })
}

fn outcome(answer: Result<Outcome>) -> BatchOutcome {
    match answer.expect("bind") {
        Outcome::Bound(out) => out,
        other => panic!("a binding intent answered {other:?}"),
    }
}

/// Commits one binding intent under shard 0's term.
async fn commit(
    region: &Region,
    bindings: Vec<PlannedBinding>,
    stops: Vec<PlannedStop>,
) -> BatchOutcome {
    outcome(region.submit(0, intent(region, bindings, stops)).await)
}

/// Submits every intent at once; they are all queued before the committer
/// runs (the test runtime has one thread), so it sees them together.
async fn submit_together(region: &Region, intents: Vec<Intent>) -> Vec<Result<Outcome>> {
    let fence = region.fx.fence(0).expect("fence");
    let pipeline = &region.fx.path.pipeline;
    let mut all: Vec<_> = intents
        .into_iter()
        .map(|i| {
            let authority = Authority {
                fence: fence.clone(),
                generation: None,
            };
            Box::pin(pipeline.submit(Some(authority), i))
        })
        .collect();
    for f in &mut all {
        assert!(
            futures::poll!(f.as_mut()).is_pending(),
            "answered before the committer ran"
        );
    }
    futures::future::join_all(all).await
}

/// Every command in `node`'s log, oldest first.
async fn log(region: &Region, node: &str) -> Vec<CommandRecord> {
    read_log(&region.db, &region.keys, node, None)
        .await
        .expect("log")
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// The jobs of the RUN commands in `node`'s log, oldest first.
async fn runs(region: &Region, node: &str) -> Vec<(String, u32)> {
    log(region, node)
        .await
        .into_iter()
        .filter(|c| c.kind == v1::CommandKind::Run as i32)
        .map(|c| (c.job, c.index))
        .collect()
}

/// The victims of the STOP commands in `node`'s log, oldest first.
async fn stops(region: &Region, node: &str) -> Vec<String> {
    log(region, node)
        .await
        .into_iter()
        .filter(|c| c.kind == v1::CommandKind::Stop as i32)
        .map(|c| c.job)
        .collect()
}

/// What memory counts as allocated on `node`.
fn allocated(region: &Region, node: &str) -> Res {
    region.fx.path.state.read().nodes[node].allocated.clone()
}

/// Commits `resident` (one task, bound to node-a), then a decision that
/// binds `late` there as if the node were still empty: it must be refused
/// for room, leave `late` pending with no RUN, and leave node-a's allocation
/// as the resident made it.
async fn assert_refused_for_room(resident: v1::JobSpec, late: v1::JobSpec) {
    let region = gpu_region().await;
    region.insert("resident", resident).await;
    region.insert("late", late).await;
    let decided_on_empty = planned(&region, "late", "node-a");
    let first = commit(
        &region,
        vec![planned(&region, "resident", "node-a")],
        vec![],
    )
    .await;
    assert_eq!(first.bound, vec![TaskRef::new("resident", 0)], "{first:?}");
    let before = allocated(&region, "node-a");

    let out = commit(&region, vec![decided_on_empty], vec![]).await;
    assert!(out.bound.is_empty(), "{out:?}");
    assert_eq!(out.stale, vec![(TaskRef::new("late", 0), Stale::NoRoom)]);
    let late = region.task("late", 0).await;
    assert!(late.is_pending(), "{late:?}");
    assert_eq!(late.attempt, 0);
    assert_eq!(runs(&region, "node-a").await, vec![("resident".into(), 0)]);
    assert_eq!(allocated(&region, "node-a"), before);
    assert!(region.fx.path.state.read().pending_jobs.contains("late"));
}

#[tokio::test]
async fn a_binding_over_the_node_on_cpu_alone_is_refused() {
    assert_refused_for_room(spec(3_000, GIB, 0), spec(2_000, GIB, 0)).await;
}

#[tokio::test]
async fn a_binding_over_the_node_on_memory_alone_is_refused() {
    assert_refused_for_room(spec(1_000, 7 * GIB, 0), spec(1_000, 2 * GIB, 0)).await;
}

#[tokio::test]
async fn a_binding_over_the_node_on_gpus_alone_is_refused() {
    assert_refused_for_room(spec(1_000, GIB, 1), spec(1_000, GIB, 1)).await;
}

#[tokio::test]
async fn a_binding_that_fills_the_node_exactly_on_every_dimension_commits() {
    let region = gpu_region().await;
    region.insert("resident", spec(2_500, 3 * GIB, 0)).await;
    region.insert("rest", spec(1_500, 5 * GIB, 1)).await;
    let out = commit(
        &region,
        vec![
            planned(&region, "resident", "node-a"),
            planned(&region, "rest", "node-a"),
        ],
        vec![],
    )
    .await;
    assert_eq!(
        out.bound,
        vec![TaskRef::new("resident", 0), TaskRef::new("rest", 0)],
        "{out:?}"
    );
    assert!(out.stale.is_empty(), "{out:?}");
    assert_eq!(region.task("rest", 0).await.state(), v1::TaskState::Placed);
    let full = allocated(&region, "node-a");
    assert_eq!((full.cpu, full.mem, full.gpus), (4_000, 8 * GIB, 1));
}

#[tokio::test]
async fn a_decision_on_an_attempt_the_task_has_left_is_refused_although_it_is_pending_again() {
    let region = gpu_region().await;
    let mut retried = spec(1_000, GIB, 0);
    retried.retry = Some(v1::RetryPolicy {
        max_attempts: 3,
        backoff_base_ms: 1_000,
        backoff_cap_ms: 1_000,
    });
    region.insert("retried", retried).await;
    // Decided while the task waited for its first attempt, committed only
    // after that attempt was bound and failed.
    let late = planned(&region, "retried", "node-a");
    let first = commit(&region, vec![planned(&region, "retried", "node-a")], vec![]).await;
    assert_eq!(first.bound.len(), 1, "{first:?}");
    let mut failed = report("retried", 0, 1, v1::TaskState::Failed);
    failed.exit_code = Some(2);
    let epoch = region.node_epoch("node-a");
    for r in region.report_as("node-a", epoch, vec![failed]).await {
        assert_eq!(r.verdict, v1::Verdict::Accepted as i32, "{}", r.message);
    }
    let waiting = region.task("retried", 0).await;
    assert!(waiting.is_pending(), "{waiting:?}");
    assert_eq!(waiting.attempt, 1);

    let out = commit(&region, vec![late], vec![]).await;
    assert!(out.bound.is_empty(), "{out:?}");
    assert_eq!(
        out.stale,
        vec![(TaskRef::new("retried", 0), Stale::TaskMoved)]
    );
    let still = region.task("retried", 0).await;
    assert!(still.is_pending(), "{still:?}");
    assert_eq!(still.attempt, 1);
    assert_eq!(runs(&region, "node-a").await.len(), 1);

    // A decision on the attempt it waits at now is taken.
    let current = planned_at(&region, "retried", 0, "node-a", 1);
    let out = commit(&region, vec![current], vec![]).await;
    assert_eq!(out.bound, vec![TaskRef::new("retried", 0)], "{out:?}");
    assert_eq!(region.task("retried", 0).await.attempt, 2);
    assert_eq!(runs(&region, "node-a").await.len(), 2);
}

#[tokio::test]
async fn a_decision_on_a_task_already_bound_at_the_attempt_it_names_is_refused() {
    let region = gpu_region().await;
    region.insert("once", spec(1_000, GIB, 0)).await;
    let first = commit(&region, vec![planned(&region, "once", "node-a")], vec![]).await;
    assert_eq!(first.bound.len(), 1, "{first:?}");

    // The task is PLACED at attempt 1; a decision naming attempt 1 must not
    // place it a second time.
    let again = planned_at(&region, "once", 0, "node-a", 1);
    let out = commit(&region, vec![again], vec![]).await;
    assert!(out.bound.is_empty(), "{out:?}");
    assert_eq!(out.stale, vec![(TaskRef::new("once", 0), Stale::TaskMoved)]);
    let task = region.task("once", 0).await;
    assert_eq!(task.state(), v1::TaskState::Placed);
    assert_eq!(task.attempt, 1);
    assert_eq!(runs(&region, "node-a").await, vec![("once".into(), 0)]);
    assert_eq!(allocated(&region, "node-a").cpu, 1_000);
}

#[tokio::test]
async fn bindings_past_the_jobs_parallelism_are_refused_within_one_intent_and_across_intents() {
    let region = gpu_region().await;
    let mut capped = simple_spec("t", 4, 500, GIB / 4);
    capped.parallelism = 2;
    region.insert("capped", capped).await;

    // A faulty decision binds three of them at once.
    let out = commit(
        &region,
        (0..3)
            .map(|i| planned_at(&region, "capped", i, "node-a", 0))
            .collect(),
        vec![],
    )
    .await;
    assert_eq!(
        out.bound,
        vec![TaskRef::new("capped", 0), TaskRef::new("capped", 1)],
        "{out:?}"
    );
    assert_eq!(
        out.stale,
        vec![(TaskRef::new("capped", 2), Stale::Parallelism)]
    );
    // And a later one, while both still run, binds the fourth.
    let out = commit(
        &region,
        vec![planned_at(&region, "capped", 3, "node-a", 0)],
        vec![],
    )
    .await;
    assert!(out.bound.is_empty(), "{out:?}");
    assert_eq!(
        out.stale,
        vec![(TaskRef::new("capped", 3), Stale::Parallelism)]
    );

    assert!(region.task("capped", 2).await.is_pending());
    assert!(region.task("capped", 3).await.is_pending());
    assert_eq!(
        runs(&region, "node-a").await,
        vec![("capped".into(), 0), ("capped".into(), 1)]
    );
    assert_eq!(allocated(&region, "node-a").cpu, 1_000);
}

/// A region whose node-a (4 cores) is full with the one-core tasks
/// `low-0` .. `low-3`, bound by the commit itself.
async fn full_node() -> Region {
    let region = gpu_region().await;
    let low: Vec<String> = (0..4).map(|i| format!("low-{i}")).collect();
    for job in &low {
        region.insert(job, spec(1_000, GIB, 0)).await;
    }
    let out = commit(
        &region,
        low.iter().map(|j| planned(&region, j, "node-a")).collect(),
        vec![],
    )
    .await;
    assert_eq!(out.bound.len(), 4, "{out:?}");
    region
}

/// Asserts that `job`'s binding was refused for room and nothing of it, nor
/// of its planned stops, reached the store: `job` pending, every `low-*`
/// still running with no stop asked, no STOP in node-a's log.
async fn assert_refused_without_stops(region: &Region, out: &BatchOutcome, job: &str) {
    assert!(
        out.stale.contains(&(TaskRef::new(job, 0), Stale::NoRoom)),
        "{out:?}"
    );
    assert!(!out.bound.contains(&TaskRef::new(job, 0)), "{out:?}");
    assert!(region.task(job, 0).await.is_pending());
    for i in 0..4 {
        let low = region.task(&format!("low-{i}"), 0).await;
        assert_eq!(low.state(), v1::TaskState::Placed, "low-{i}");
        assert_eq!(low.stopping, "", "low-{i}");
    }
    assert_eq!(stops(region, "node-a").await, Vec::<String>::new());
    assert!(!runs(region, "node-a").await.contains(&(job.into(), 0)));
}

#[tokio::test]
async fn a_binding_may_not_count_a_victim_planned_for_another_task() {
    let region = full_node().await;
    region.insert("high", spec(1_000, GIB, 0)).await;
    region.insert("other", spec(1_000, GIB, 0)).await;
    // The only stop names `other`, which this intent does not bind.
    let out = commit(
        &region,
        vec![planned(&region, "high", "node-a")],
        vec![stop("low-0", "node-a", "other")],
    )
    .await;
    assert_eq!(out.stopped, 0, "{out:?}");
    assert_refused_without_stops(&region, &out, "high").await;
    assert_eq!(allocated(&region, "node-a").cpu, 4_000);
}

#[tokio::test]
async fn a_binding_may_not_count_a_victim_that_runs_on_another_node() {
    let region = full_node().await;
    region.register("node-b", "boot-b").await;
    region.insert("far", spec(1_000, GIB, 0)).await;
    let out = commit(&region, vec![planned(&region, "far", "node-b")], vec![]).await;
    assert_eq!(out.bound.len(), 1, "{out:?}");
    region.insert("high", spec(1_000, GIB, 0)).await;
    // Stopping `far` frees node-b, not node-a.
    let out = commit(
        &region,
        vec![planned(&region, "high", "node-a")],
        vec![stop("far", "node-b", "high")],
    )
    .await;
    assert_refused_without_stops(&region, &out, "high").await;
    assert_eq!(region.task("far", 0).await.stopping, "");
    assert_eq!(stops(&region, "node-b").await, Vec::<String>::new());
    assert_eq!(allocated(&region, "node-a").cpu, 4_000);
}

#[tokio::test]
async fn two_bindings_of_one_intent_may_not_both_count_the_same_victim() {
    let region = full_node().await;
    region.insert("high-1", spec(1_000, GIB, 0)).await;
    region.insert("high-2", spec(1_000, GIB, 0)).await;
    let out = commit(
        &region,
        vec![
            planned(&region, "high-1", "node-a"),
            planned(&region, "high-2", "node-a"),
        ],
        vec![
            stop("low-0", "node-a", "high-1"),
            stop("low-0", "node-a", "high-2"),
        ],
    )
    .await;
    assert_eq!(out.bound, vec![TaskRef::new("high-1", 0)], "{out:?}");
    assert_eq!(out.stale, vec![(TaskRef::new("high-2", 0), Stale::NoRoom)]);
    assert_eq!(out.stopped, 1);
    assert!(region.task("high-2", 0).await.is_pending());
    assert_eq!(region.task("low-0", 0).await.stopping, "preempted");
    assert_eq!(stops(&region, "node-a").await, vec!["low-0".to_string()]);
}

#[tokio::test]
async fn a_binding_may_not_count_a_victim_twice_by_naming_it_twice() {
    let region = full_node().await;
    region.insert("wide", spec(2_000, GIB, 0)).await;
    let out = commit(
        &region,
        vec![planned(&region, "wide", "node-a")],
        vec![
            stop("low-0", "node-a", "wide"),
            stop("low-0", "node-a", "wide"),
        ],
    )
    .await;
    assert_refused_without_stops(&region, &out, "wide").await;
}

#[tokio::test]
async fn a_victim_asked_to_stop_earlier_in_the_group_frees_no_room_for_a_later_intent() {
    let region = full_node().await;
    region.insert("high-1", spec(1_000, GIB, 0)).await;
    region.insert("high-2", spec(1_000, GIB, 0)).await;
    // Both decisions chose low-0 as their victim; memory still shows it
    // running with no stop asked when both are prepared.
    let first = intent(
        &region,
        vec![planned(&region, "high-1", "node-a")],
        vec![stop("low-0", "node-a", "high-1")],
    );
    let second = intent(
        &region,
        vec![planned(&region, "high-2", "node-a")],
        vec![stop("low-0", "node-a", "high-2")],
    );
    let mut answers = submit_together(&region, vec![first, second])
        .await
        .into_iter();
    let first = outcome(answers.next().expect("an answer"));
    let second = outcome(answers.next().expect("an answer"));
    assert_eq!(first.bound, vec![TaskRef::new("high-1", 0)], "{first:?}");
    assert_eq!(first.stopped, 1);
    assert!(second.bound.is_empty(), "{second:?}");
    assert_eq!(
        second.stale,
        vec![(TaskRef::new("high-2", 0), Stale::NoRoom)]
    );
    assert_eq!(second.stopped, 0);
    assert!(region.task("high-2", 0).await.is_pending());
    assert_eq!(stops(&region, "node-a").await, vec!["low-0".to_string()]);
    // What stays once low-0 has stopped fits the node.
    let state = region.fx.path.state.read();
    let staying: u64 = state.nodes["node-a"]
        .bound
        .values()
        .filter(|b| !b.stopping)
        .map(|b| b.resources.cpu)
        .sum();
    assert_eq!(staying, 4_000);
}

#[tokio::test]
async fn a_victim_that_ended_earlier_in_the_group_frees_no_room_it_has_not_given_back() {
    let region = full_node().await;
    region.insert("high", spec(1_000, GIB, 0)).await;
    let epoch = region.node_epoch("node-a");
    // low-0 succeeds in the same group, before the binding that counts on
    // stopping it; it no longer runs, so there is nothing to stop and the
    // binding may not count its room as freed by a stop.
    let ended = Intent::Report(Report {
        request: v1::ReportTaskStatusRequest {
            node_id: "node-a".into(),
            node_epoch: epoch,
            reports: vec![report("low-0", 0, 1, v1::TaskState::Succeeded)],
        },
        now_unix_ms: region.now_ms(),
    });
    let preempting = intent(
        &region,
        vec![planned(&region, "high", "node-a")],
        vec![stop("low-0", "node-a", "high")],
    );
    let mut answers = submit_together(&region, vec![ended, preempting])
        .await
        .into_iter();
    match answers.next().expect("an answer").expect("report") {
        Outcome::Reported(out) => {
            for r in out.results {
                assert_eq!(r.verdict, v1::Verdict::Accepted as i32, "{}", r.message);
            }
        }
        other => panic!("a report answered {other:?}"),
    }
    let out = outcome(answers.next().expect("an answer"));
    assert!(out.bound.is_empty(), "{out:?}");
    assert_eq!(out.stale, vec![(TaskRef::new("high", 0), Stale::NoRoom)]);
    assert_eq!(out.stopped, 0);
    assert_eq!(
        region.task("low-0", 0).await.state(),
        v1::TaskState::Succeeded
    );
    assert!(region.task("high", 0).await.is_pending());
    assert_eq!(stops(&region, "node-a").await, Vec::<String>::new());
}

/// Commits `heavy` and then a one-binding intent submitted right behind it,
/// and returns whether the two RUNs they write share one transaction (one
/// log entry stamp).
async fn committed_together(region: &Region, heavy: Intent) -> bool {
    let light = intent(region, vec![planned(region, "second", "node-a")], vec![]);
    let answers = submit_together(region, vec![heavy, light]).await;
    for a in answers {
        let out = outcome(a);
        assert_eq!(out.bound.len(), 1, "{:?}", out.bound);
    }
    let entries = read_log(&region.db, &region.keys, "node-a", None)
        .await
        .expect("log");
    assert_eq!(entries.len(), 2);
    entries[0].0.stamp == entries[1].0.stamp
}

async fn two_jobs() -> Region {
    let region = gpu_region().await;
    region.insert("first", spec(1_000, GIB, 0)).await;
    region.insert("second", spec(1_000, GIB, 0)).await;
    region
}

#[tokio::test]
async fn small_binding_intents_submitted_together_share_one_commit() {
    let region = two_jobs().await;
    let heavy = intent(&region, vec![planned(&region, "first", "node-a")], vec![]);
    assert!(committed_together(&region, heavy).await);
}

#[tokio::test]
async fn an_intent_of_a_group_budget_of_bindings_commits_in_a_group_of_its_own() {
    let region = two_jobs().await;
    // One real binding and enough refused ones (an unknown node) to weigh
    // a whole group budget at 160 bytes a binding.
    let mut bindings = vec![planned(&region, "first", "node-a")];
    let mut junk = planned(&region, "first", "node-a");
    junk.node = "nowhere".into();
    bindings.extend(std::iter::repeat_n(junk, GROUP_BYTES.div_ceil(160)));
    let heavy = intent(&region, bindings, vec![]);
    assert!(!committed_together(&region, heavy).await);
}

#[tokio::test]
async fn an_intent_of_a_group_budget_of_stops_commits_in_a_group_of_its_own() {
    let region = two_jobs().await;
    // Stops planned for a task the intent does not bind weigh 100 bytes
    // each and stop nothing.
    let stops = vec![stop("second", "node-a", "nobody"); GROUP_BYTES.div_ceil(100)];
    let heavy = intent(&region, vec![planned(&region, "first", "node-a")], stops);
    assert!(!committed_together(&region, heavy).await);
}
