//! A job the global tier took from the region and gave back is a new hold
//! here, whose tasks are created again and whose attempts count from 1
//! again. Each hold's RUNs name it, so that an agent that ran the earlier
//! hold's attempt 1 does not take the new one's for a repeat; and a late
//! report of the earlier hold does not end the same-numbered attempt of the
//! current one.

use crate::support;

use meridian_proto::v1;
use meridian_regional::agent::stream::read_log;
use meridian_regional::jobs::simple_spec;
use meridian_regional::pipeline::Intent;
use meridian_regional::pipeline::intake::Intake;
use support::{GIB, Region, report};

async fn event(region: &Region, kind: v1::AssignmentEventKind, epoch: u64) {
    region
        .fx
        .path
        .pipeline
        .submit(
            None,
            Intent::Intake(Intake {
                events: vec![v1::AssignmentEvent {
                    kind: kind as i32,
                    job_id: "j".into(),
                    assignment_epoch: epoch,
                    spec: (kind == v1::AssignmentEventKind::Assign)
                        .then(|| simple_spec("t", 1, 500, GIB)),
                    job_created_at_unix_ms: region.now_ms(),
                    ..Default::default()
                }],
                cursor: None,
                now_unix_ms: region.now_ms(),
            }),
        )
        .await
        .expect("intake");
}

/// Sends one report of attempt 1 of hold `hold` as n1's agent would; its
/// verdict.
async fn report_of_hold(region: &Region, hold: u64, state: v1::TaskState) -> v1::Verdict {
    let mut r = report("j", 0, 1, state);
    if let Some(a) = r.task.as_mut() {
        a.assignment_epoch = hold;
    }
    let results = region
        .report_as("n1", region.node_epoch("n1"), vec![r])
        .await;
    v1::Verdict::try_from(results[0].verdict).expect("a verdict")
}

/// The holds named by the RUNs in n1's log, oldest first.
async fn holds_of_runs(region: &Region) -> Vec<(u32, u64)> {
    read_log(&region.db, &region.keys, "n1", None)
        .await
        .expect("log")
        .into_iter()
        .filter(|(_, c)| c.kind == v1::CommandKind::Run as i32)
        .map(|(_, c)| (c.attempt, c.assignment_epoch))
        .collect()
}

#[tokio::test]
async fn a_late_report_of_an_earlier_hold_does_not_end_the_same_attempt_of_the_job_given_back() {
    use v1::AssignmentEventKind::{Assign, Revoke};
    let region = Region::new().await;
    region.register("n1", "b1").await;
    let mut lp = region.shard_loop(0).await;

    event(&region, Assign, 1).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 1);
    let first = region.task("j", 0).await;
    assert_eq!((first.attempt, first.assignment_epoch), (1, 1));

    // Taken away (its task, bound on n1, is written off), then given back.
    event(&region, Revoke, 2).await;
    event(&region, Assign, 3).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 1);
    let again = region.task("j", 0).await;
    assert_eq!(
        (again.node.as_str(), again.attempt, again.assignment_epoch),
        ("n1", 1, 3),
        "the new hold's attempt 1 is on the node that ran the earlier one"
    );
    assert_eq!(holds_of_runs(&region).await, vec![(1, 1), (1, 3)]);

    // The earlier hold's attempt 1 ends late: not this task's end.
    assert_eq!(
        report_of_hold(&region, 1, v1::TaskState::Succeeded).await,
        v1::Verdict::NotFound
    );
    assert!(region.task("j", 0).await.is_bound(), "still bound");
    assert_eq!(
        report_of_hold(&region, 3, v1::TaskState::Succeeded).await,
        v1::Verdict::Accepted
    );
    assert_eq!(region.task("j", 0).await.state(), v1::TaskState::Succeeded);
}
