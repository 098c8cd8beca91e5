//! Array jobs: many indexed tasks with a cap on how many are bound at once
//! (`JobSpec.parallelism`), placed by several shards of one region.
//!
//! The region is driven round by round on a manual clock that never moves,
//! so no backoff or resync timer can place anything: every index placed
//! after the first wave was placed because a task of the job ended. The cap
//! is checked from the region's store (the task records), not from memory,
//! after every round of every shard.
//!
//! The size is `MERIDIAN_ARRAY_TASKS` (default 10,000 tasks, parallelism
//! 1,000; the load suite and docs/workloads.md record a run at 100,000).

use crate::support;

use std::collections::BTreeMap;

use meridian_proto::v1;
use meridian_regional::jobs::simple_spec;
use meridian_regional::placer::ShardLoop;
use support::{Region, registration, report};

const SHARDS: u32 = 4;
/// 40 nodes of 4 cores, tasks of 100 millicores: 1,600 slots in the
/// region, about 400 per shard. The cap (1,000) is above what one shard
/// holds, so the job is placed by several shards' leaders in turn.
const NODES: usize = 40;
const PARALLELISM: u32 = 1_000;

fn tasks() -> u32 {
    std::env::var("MERIDIAN_ARRAY_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Indexes whose first attempt fails (and is retried on its own).
fn fails_first(index: u32) -> bool {
    index % 10 == 3
}

/// The job's task records as stored: (index, record).
async fn stored_tasks(
    region: &Region,
    job: &str,
) -> Vec<(u32, meridian_regional::model::TaskRecord)> {
    let view = region.view().await;
    view.blocks
        .iter()
        .filter(|((j, _), _)| j == job)
        .flat_map(|(_, b)| {
            b.tasks
                .iter()
                .enumerate()
                .map(|(i, t)| (b.first + i as u32, t.clone()))
        })
        .collect()
}

fn is_bound(t: &meridian_regional::model::TaskRecord) -> bool {
    t.is_bound()
}

/// Ends `count` of the job's bound tasks (lowest indexes first), as their
/// agents would report: succeeded, or failed for a first attempt of an
/// index in [`fails_first`]. Returns how many it ended.
async fn end_some(region: &Region, job: &str, count: usize) -> usize {
    let bound: Vec<(u32, meridian_regional::model::TaskRecord)> = stored_tasks(region, job)
        .await
        .into_iter()
        .filter(|(_, t)| is_bound(t))
        .take(count)
        .collect();
    let mut by_node: BTreeMap<String, Vec<v1::TaskReport>> = BTreeMap::new();
    for (index, t) in &bound {
        let state = if fails_first(*index) && t.attempt == 1 {
            v1::TaskState::Failed
        } else {
            v1::TaskState::Succeeded
        };
        let mut r = report(job, *index, t.attempt, state);
        if state == v1::TaskState::Failed {
            r.exit_code = Some(1);
        }
        by_node.entry(t.node.clone()).or_default().push(r);
    }
    for (node, reports) in by_node {
        let epoch = region.node_epoch(&node);
        for r in region.report_as(&node, epoch, reports).await {
            assert_eq!(r.verdict, v1::Verdict::Accepted as i32, "{}", r.message);
        }
    }
    bound.len()
}

/// Every shard's loop runs one round; after each, the job's bound tasks
/// are counted in the store and must not pass the cap. Returns the most
/// seen and how many tasks the rounds bound and jobs they handed over.
async fn rounds(region: &Region, loops: &mut [ShardLoop], job: &str) -> (u32, usize) {
    let mut most = 0;
    let mut bound_now = 0;
    for lp in loops.iter_mut() {
        let out = lp.round().await.expect("round");
        bound_now += out.outcome.bound.len() + out.handed_off;
        let bound = stored_tasks(region, job)
            .await
            .iter()
            .filter(|(_, t)| is_bound(t))
            .count() as u32;
        assert!(
            bound <= PARALLELISM,
            "{bound} tasks of the job bound at once, over its parallelism of {PARALLELISM}"
        );
        most = most.max(bound);
    }
    (most, bound_now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_job_completes_with_its_parallelism_never_exceeded_across_shards() {
    let n = tasks();
    let region = Region::with_shards(SHARDS).await;
    let nodes: Vec<v1::RegisterNodeRequest> = (0..NODES)
        .map(|i| registration(&format!("node-{i:02}"), "boot-1"))
        .collect();
    region.fx.register_many(nodes).await.expect("register");
    let mut spec = simple_spec("t", n, 100, 1 << 20);
    spec.parallelism = PARALLELISM;
    spec.retry = Some(v1::RetryPolicy {
        max_attempts: 2,
        ..Default::default()
    });
    region.insert("array", spec).await;
    let mut loops = Vec::new();
    for shard in 0..SHARDS {
        loops.push(region.shard_loop(shard).await);
    }

    let mut most = 0;
    let mut shards_binding = std::collections::BTreeSet::new();
    let mut steps = 0u32;
    loop {
        // Rounds until nothing more is bound or handed over: a hand-off
        // between shards takes a round.
        loop {
            let (seen, bound) = rounds(&region, &mut loops, "array").await;
            most = most.max(seen);
            if bound == 0 {
                break;
            }
        }
        let stored = stored_tasks(&region, "array").await;
        for (_, t) in stored.iter().filter(|(_, t)| is_bound(t)) {
            shards_binding.insert(t.shard);
        }
        let bound = stored.iter().filter(|(_, t)| is_bound(t)).count() as u32;
        let unfinished = stored
            .iter()
            .filter(|(_, t)| t.is_pending() || is_bound(t))
            .count() as u32;
        if unfinished == 0 {
            break;
        }
        // The cap is filled, not only respected: every index that could
        // run is bound, with no clock moved.
        assert_eq!(
            bound,
            unfinished.min(PARALLELISM),
            "step {steps}: the waiting indexes were not placed when tasks ended"
        );
        // A third of the bound tasks end: exactly as many waiting indexes
        // must be placed next, at once.
        let ended = end_some(&region, "array", (bound as usize / 3).max(1)).await;
        assert!(ended > 0);
        steps += 1;
        assert!(
            steps < 10 * n / PARALLELISM + 100,
            "no progress after {steps} steps"
        );
    }

    assert_eq!(most, PARALLELISM, "the cap was never reached");
    assert!(
        shards_binding.len() > 1,
        "the job was placed by one shard only: {shards_binding:?}"
    );
    let stored = stored_tasks(&region, "array").await;
    assert_eq!(stored.len() as u32, n);
    for (index, t) in &stored {
        assert_eq!(t.state(), v1::TaskState::Succeeded, "task {index}");
        // Each index retried on its own: only the ones that failed took a
        // second attempt.
        let attempts = if fails_first(*index) { 2 } else { 1 };
        assert_eq!(t.attempt, attempts, "attempts of task {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_at_its_parallelism_waits_with_the_limit_as_its_reason() {
    let region = Region::new().await;
    region.register("node-0", "boot-1").await;
    let mut spec = simple_spec("t", 10, 100, 1 << 20);
    spec.parallelism = 3;
    region.insert("capped", spec).await;
    let mut lp = region.shard_loop(0).await;
    let out = lp.round().await.expect("round");
    assert_eq!(out.outcome.bound.len(), 3);
    // The next round records the reason; nothing more is bound.
    let out = lp.round().await.expect("round");
    assert!(out.outcome.bound.is_empty(), "{out:?}");
    let view = region.view().await;
    assert_eq!(
        view.jobs["capped"].waiting_reason,
        "at its parallelism limit of 3 tasks at once"
    );
    // Lowest indexes first.
    let bound: Vec<u32> = stored_tasks(&region, "capped")
        .await
        .into_iter()
        .filter(|(_, t)| is_bound(t))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(bound, vec![0, 1, 2]);
}

/// `ListJobTasks` over real gRPC: a large job's tasks page by page, of
/// chosen states, from the replica's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_jobs_tasks_are_listed_page_by_page_by_state() {
    let region = Region::new().await;
    region.register("node-0", "boot-1").await;
    let mut spec = simple_spec("t", 1_000, 10, 1 << 20);
    spec.parallelism = 100;
    region.insert("big", spec).await;
    let mut lp = region.shard_loop(0).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 100);
    let (addr, _) = region
        .serve(meridian_regional::agent::AgentApiConfig::default())
        .await;
    let mut admin = support::admin_client(addr).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_job_tasks(v1::ListJobTasksRequest {
                job_id: "big".into(),
                states: vec![v1::TaskState::Placed as i32],
                page_size: 30,
                page_token: token.clone(),
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        let counts = page.task_counts.unwrap_or_default();
        assert_eq!((counts.placed, counts.pending), (100, 900));
        assert!(
            page.tasks
                .iter()
                .all(|t| t.state == v1::TaskState::Placed as i32)
        );
        assert!(
            page.tasks
                .iter()
                .all(|t| t.node_id == "node-0" && t.attempt == 1)
        );
        seen.extend(page.tasks.iter().map(|t| t.index));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, (0..100).collect::<Vec<u32>>());

    let pending = admin
        .list_job_tasks(v1::ListJobTasksRequest {
            job_id: "big".into(),
            states: vec![v1::TaskState::Pending as i32],
            page_size: 1_000,
            page_token: String::new(),
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(pending.tasks.len(), 900);
    assert_eq!(pending.tasks.first().map(|t| t.index), Some(100));
    assert!(pending.next_page_token.is_empty());

    let missing = admin
        .list_job_tasks(v1::ListJobTasksRequest {
            job_id: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown job");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad = admin
        .list_job_tasks(v1::ListJobTasksRequest {
            job_id: "big".into(),
            page_token: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("page_token"), "{}", bad.message());
}

/// Per-index retries with the spec's backoff: the failed index alone waits
/// (its `not_before`), the others keep running, and it is placed again as
/// attempt 2 once its delay has passed on the manual clock, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_index_waits_its_backoff_alone_then_runs_again() {
    let region = Region::new().await;
    region.register("node-0", "boot-1").await;
    let mut spec = simple_spec("t", 3, 100, 1 << 20);
    spec.retry = Some(v1::RetryPolicy {
        max_attempts: 3,
        backoff_base_ms: 1_000,
        backoff_cap_ms: 1_000,
    });
    region.insert("retried", spec).await;
    let mut lp = region.shard_loop(0).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 3);
    let mut failed = report("retried", 1, 1, v1::TaskState::Failed);
    failed.exit_code = Some(2);
    region
        .report_as("node-0", region.node_epoch("node-0"), vec![failed])
        .await;
    let waiting = region.task("retried", 1).await;
    assert!(waiting.is_pending());
    assert!(
        waiting.not_before <= region.now_ms() + 1_000,
        "{} after {}",
        waiting.not_before,
        region.now_ms()
    );
    assert!(region.task("retried", 0).await.is_bound());
    // The jitter is drawn from the task and attempt: for this one it is
    // not zero, so the index waits.
    assert!(waiting.not_before > region.now_ms());
    assert!(lp.round().await.expect("round").outcome.bound.is_empty());
    region
        .clock
        .advance(std::time::Duration::from_millis(1_001));
    let again = lp.round().await.expect("round");
    assert_eq!(
        again.outcome.bound,
        vec![meridian_regional::placement::TaskRef::new("retried", 1)]
    );
    let task = region.task("retried", 1).await;
    assert_eq!((task.attempt, task.is_bound()), (2, true));
}
