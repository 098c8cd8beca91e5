//! Accounting at the region: every attempt that ran adds its run time (the
//! agent's end minus start) to its task's record once, retries included;
//! a repeated end adds nothing; the record keeps the latest attempt's start
//! and end, which the status report carries up (the global tier's usage
//! and `TaskStatus` times come from here).

use crate::support;

use meridian_proto::v1;
use meridian_regional::jobs::simple_spec;
use support::{Region, report};

/// Node `n1`'s agent reports `index` of `job` in `state`, with the
/// attempt's start and (for an end) end; returns the verdict.
async fn agent_says(
    region: &Region,
    job: &str,
    index: u32,
    state: v1::TaskState,
    started: u64,
    finished: u64,
) -> i32 {
    let task = region.task(job, index).await;
    let mut r = report(job, index, task.attempt.max(1), state);
    r.started_at_unix_ms = started;
    r.finished_at_unix_ms = finished;
    if state == v1::TaskState::Failed {
        r.exit_code = Some(1);
    }
    region
        .report_as("n1", region.node_epoch("n1"), vec![r])
        .await[0]
        .verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_that_ran_adds_its_run_time_once_retries_included() {
    let region = Region::new().await;
    region.register("n1", "boot-1").await;
    let mut spec = simple_spec("t", 2, 100, 1 << 20);
    spec.retry = Some(v1::RetryPolicy {
        max_attempts: 2,
        ..Default::default()
    });
    region.insert("acct", spec).await;
    let mut placer = region.shard_loop(0).await;
    placer.round().await.expect("round");
    let accepted = v1::Verdict::Accepted as i32;
    let t0 = 5_000_000;
    for index in 0..2 {
        assert_eq!(region.task("acct", index).await.attempt, 1);
        let said = agent_says(&region, "acct", index, v1::TaskState::Running, t0, 0).await;
        assert_eq!(said, accepted);
    }
    assert_eq!(region.task("acct", 0).await.started_at, t0);

    // Task 0 succeeds after 10 s; its end said twice counts once.
    for _ in 0..2 {
        let said = agent_says(
            &region,
            "acct",
            0,
            v1::TaskState::Succeeded,
            t0,
            t0 + 10_000,
        )
        .await;
        assert_eq!(said, accepted);
    }
    // Task 1 fails after 4 s and goes back to pending for its retry; the
    // failed attempt's end said again is refused (no longer bound) and
    // adds nothing.
    let said = agent_says(&region, "acct", 1, v1::TaskState::Failed, t0, t0 + 4_000).await;
    assert_eq!(said, accepted);
    let retried = region.task("acct", 1).await;
    assert!(retried.is_pending(), "{retried:?}");
    assert_eq!((retried.ran_ms, retried.runs), (4_000, 1));
    assert_eq!((retried.started_at, retried.finished_at), (0, 0));
    let said = agent_says(&region, "acct", 1, v1::TaskState::Failed, t0, t0 + 4_000).await;
    assert_ne!(said, accepted);
    assert_eq!(region.task("acct", 1).await.runs, 1);

    // The retry runs 7 s.
    placer.round().await.expect("round");
    assert_eq!(region.task("acct", 1).await.attempt, 2);
    let t1 = t0 + 60_000;
    let said = agent_says(&region, "acct", 1, v1::TaskState::Running, t1, 0).await;
    assert_eq!(said, accepted);
    let said = agent_says(&region, "acct", 1, v1::TaskState::Succeeded, t1, t1 + 7_000).await;
    assert_eq!(said, accepted);

    let first = region.task("acct", 0).await;
    assert_eq!((first.ran_ms, first.runs), (10_000, 1));
    assert_eq!((first.started_at, first.finished_at), (t0, t0 + 10_000));
    let second = region.task("acct", 1).await;
    assert_eq!((second.ran_ms, second.runs), (11_000, 2));
    assert_eq!((second.started_at, second.finished_at), (t1, t1 + 7_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_never_started_adds_nothing() {
    let region = Region::new().await;
    region.register("n1", "boot-1").await;
    region
        .insert("acct", simple_spec("t", 1, 100, 1 << 20))
        .await;
    let mut placer = region.shard_loop(0).await;
    placer.round().await.expect("round");
    // A start failure: the agent reports FAILED with no start.
    let said = agent_says(&region, "acct", 0, v1::TaskState::Failed, 0, 0).await;
    assert_eq!(said, v1::Verdict::Accepted as i32);
    let task = region.task("acct", 0).await;
    assert_eq!(task.state(), v1::TaskState::Failed);
    assert_eq!((task.ran_ms, task.runs), (0, 0));
}
