//! Placement driven by events, not by timers: a job whose only feasible
//! node is in another shard moves there and is placed in the next round,
//! and a slot that frees wakes a waiting job of a shape it fits at once.
//! The manual clock never moves in these tests, so no backoff or resync
//! timer can be what placed a job.

use crate::support;

use meridian_proto::v1;
use meridian_regional::jobs::simple_spec;
use meridian_regional::pipeline::Intent;
use meridian_regional::pipeline::report::Report;
use meridian_regional::shard::shard_of_job;
use support::{GIB, Region, registration, report};

/// A node id that hashes to `shard` of `count`.
fn node_in(region: &Region, shard: u32, prefix: &str) -> String {
    (0..1_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|n| region.fx.shard_of(n) == shard)
        .expect("a node id for the shard")
}

/// A job id whose hash shard is `shard` of `count`.
fn job_in(shard: u32, count: u32, prefix: &str) -> String {
    (0..1_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|j| shard_of_job(j, count) == shard)
        .expect("a job id for the shard")
}

fn real_only(mut spec: v1::JobSpec) -> v1::JobSpec {
    spec.node_constraints.push(v1::LabelRequirement {
        key: "real".into(),
        op: v1::LabelOperator::In as i32,
        values: vec!["true".into()],
    });
    spec
}

async fn register_labelled(region: &Region, node: &str) {
    let mut req = registration(node, "boot-1");
    req.labels.insert("real".into(), "true".into());
    region.fx.register(req).await.expect("register");
}

/// The agent of `node` reports `state` for task 0 of `job`.
async fn finish(region: &Region, node: &str, job: &str, state: v1::TaskState) {
    let epoch = region.fx.path.state.read().nodes[node]
        .record
        .as_ref()
        .expect("node record")
        .epoch;
    let shard = region.fx.shard_of(node);
    region
        .submit(
            shard,
            Intent::Report(Report {
                request: v1::ReportTaskStatusRequest {
                    node_id: node.into(),
                    node_epoch: epoch,
                    reports: vec![report(job, 0, 1, state)],
                },
                now_unix_ms: region.now_ms(),
            }),
        )
        .await
        .expect("report");
}

#[tokio::test]
async fn a_job_whose_only_feasible_node_is_in_another_shard_is_placed_in_the_next_round() {
    let region = Region::with_shards(2).await;
    let plain = node_in(&region, 0, "plain");
    region.register(&plain, "boot-1").await;
    // The job arrives while no node can run it: it stays on its hash shard.
    let job = job_in(0, 2, "job");
    region
        .insert(&job, real_only(simple_spec("t", 1, 100, GIB / 8)))
        .await;
    let mut home = region.shard_loop(0).await;
    let mut other = region.shard_loop(1).await;
    let first = home.round().await.expect("round");
    assert_eq!(first.unschedulable, 1, "{first:?}");
    assert_eq!(home.waiting(), 1);
    assert!(other.round().await.expect("round").outcome.bound.is_empty());

    // The only node that can run it joins the other shard.
    let real = node_in(&region, 1, "real");
    register_labelled(&region, &real).await;
    let moved = home.round().await.expect("round");
    assert_eq!(moved.handed_off, 1, "{moved:?}");
    assert_eq!(home.waiting(), 0);
    let placed = other.round().await.expect("round");
    assert_eq!(placed.outcome.bound.len(), 1, "{placed:?}");
    let task = region.task(&job, 0).await;
    assert_eq!(task.node, real);
    assert_eq!(task.attempt, 1);
    // The home shard places nothing more for it.
    assert!(home.round().await.expect("round").outcome.bound.is_empty());
}

#[tokio::test]
async fn a_new_job_is_owned_by_the_shard_that_has_room_for_it_not_its_hash_shard() {
    let region = Region::with_shards(2).await;
    let real = node_in(&region, 1, "real");
    register_labelled(&region, &real).await;
    let job = job_in(0, 2, "job");
    region
        .insert(&job, real_only(simple_spec("t", 1, 100, GIB / 8)))
        .await;
    let mut home = region.shard_loop(0).await;
    let mut other = region.shard_loop(1).await;
    let hashed = home.round().await.expect("round");
    assert_eq!(hashed.jobs, 0, "the hash shard never sees it: {hashed:?}");
    let placed = other.round().await.expect("round");
    assert_eq!(placed.outcome.bound.len(), 1, "{placed:?}");
    assert_eq!(region.task(&job, 0).await.node, real);
}

#[tokio::test]
async fn a_freed_slot_wakes_a_waiting_job_without_any_backoff_wait() {
    let region = Region::new().await;
    region.register("node-a", "boot-1").await;
    // Each job takes the whole node (4 cores).
    region
        .insert("job-1", simple_spec("t", 1, 4_000, GIB))
        .await;
    region
        .insert("job-2", simple_spec("t", 1, 4_000, GIB))
        .await;
    let mut lp = region.shard_loop(0).await;
    let first = lp.round().await.expect("round");
    assert_eq!(first.outcome.bound.len(), 1, "{first:?}");
    assert_eq!(first.unschedulable, 1);
    assert_eq!(lp.waiting(), 1);
    let (running, waiting) = if region.task("job-1", 0).await.node.is_empty() {
        ("job-2", "job-1")
    } else {
        ("job-1", "job-2")
    };
    // Nothing changed: the waiting job is not tried again.
    let idle = lp.round().await.expect("round");
    assert_eq!(idle.jobs, 0, "{idle:?}");

    finish(&region, "node-a", running, v1::TaskState::Succeeded).await;
    let woken = lp.round().await.expect("round");
    assert_eq!(woken.outcome.bound.len(), 1, "{woken:?}");
    assert_eq!(region.task(waiting, 0).await.node, "node-a");
    assert_eq!(lp.waiting(), 0);
}

#[tokio::test]
async fn a_freed_slot_too_small_for_a_waiting_job_leaves_it_asleep() {
    let region = Region::new().await;
    region.register("node-a", "boot-1").await;
    region
        .insert("job-small", simple_spec("t", 1, 2_000, GIB))
        .await;
    region
        .insert("job-other", simple_spec("t", 1, 2_000, GIB))
        .await;
    let mut lp = region.shard_loop(0).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 2);
    // Needs the whole node: waits.
    region
        .insert("job-big", simple_spec("t", 1, 4_000, GIB))
        .await;
    let parked = lp.round().await.expect("round");
    assert_eq!(parked.unschedulable, 1, "{parked:?}");

    // Half the node frees: not enough for the big job, which is not tried.
    finish(&region, "node-a", "job-small", v1::TaskState::Succeeded).await;
    let half = lp.round().await.expect("round");
    assert_eq!(half.jobs, 0, "{half:?}");
    assert_eq!(lp.waiting(), 1);

    // The other half frees: now it fits and is placed at once.
    finish(&region, "node-a", "job-other", v1::TaskState::Succeeded).await;
    let whole = lp.round().await.expect("round");
    assert_eq!(whole.outcome.bound.len(), 1, "{whole:?}");
    assert_eq!(region.task("job-big", 0).await.node, "node-a");
}

/// The waiting reason recorded on `job`.
fn waiting_reason(region: &Region, job: &str) -> String {
    region.fx.path.state.read().jobs[job]
        .record
        .waiting_reason
        .clone()
}

#[tokio::test]
async fn a_waiting_job_says_which_nodes_fail_what_and_forgets_it_once_placed() {
    let region = Region::new().await;
    region.register("plain-a", "boot-1").await;
    region.register("plain-b", "boot-1").await;
    register_labelled(&region, "real-c").await;
    // The only node that matches is full.
    region
        .insert("job-busy", real_only(simple_spec("t", 1, 4_000, GIB)))
        .await;
    let mut lp = region.shard_loop(0).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 1);
    assert_eq!(waiting_reason(&region, "job-busy"), "");

    region
        .insert("job-wait", real_only(simple_spec("t", 1, 1_000, GIB)))
        .await;
    let parked = lp.round().await.expect("round");
    assert_eq!(parked.unschedulable, 1, "{parked:?}");
    assert_eq!(
        waiting_reason(&region, "job-wait"),
        "0/3 nodes: 2 do not match real=true, 1 have too little cpu",
        "recorded by the round that parked it"
    );

    finish(&region, "real-c", "job-busy", v1::TaskState::Succeeded).await;
    let placed = lp.round().await.expect("round");
    assert_eq!(placed.outcome.bound.len(), 1, "{placed:?}");
    assert_eq!(
        waiting_reason(&region, "job-wait"),
        "",
        "no task waits any more"
    );
}
