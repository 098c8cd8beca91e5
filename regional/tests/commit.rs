//! The batch commit's reads: a batch of many jobs reads their task blocks as
//! one range from its first job to its last, and still finds every
//! preemption victim, inside that range but not in the batch or outside it;
//! batches are cut along job ids so that range holds the batch's own jobs.

mod support;

use meridian_proto::v1;
use meridian_regional::agent::nodes;
use meridian_regional::agent::stream::read_log;
use meridian_regional::jobs::{insert_job, simple_spec};
use meridian_regional::placement::{Binding, NodeId, Solution, TaskRef};
use meridian_regional::placer::commit::{PlannedBinding, PlannedStop, commit_batch};
use meridian_regional::placer::round::{RoundInput, batches};
use meridian_regional::placer::{PlacerConfig, ShardLoop};
use support::{GIB, Region, registration};

/// Jobs in the batch: more than the commit's range-read threshold (64).
const JOBS: usize = 70;

#[tokio::test]
async fn a_batch_of_many_jobs_commits_with_one_range_read_and_stops_victims_inside_and_outside_it()
{
    let region = Region::new().await;
    nodes::register(
        &region.db,
        &region.keys,
        &registration("node-a", "boot-1"),
        region.now_ms(),
    )
    .await
    .expect("register");
    let term = region.lead("replica-a").await;
    // Two running victims: one whose id sorts inside the batch's range, one
    // after it.
    for victim in ["job-030-victim", "zz-victim"] {
        insert_job(
            &region.db,
            &region.keys,
            victim,
            1,
            &simple_spec("t", 1, 100, GIB / 8),
            region.now_ms(),
        )
        .await
        .expect("insert");
    }
    let mut lp = ShardLoop::new(
        region.db.clone(),
        region.keys.clone(),
        region.shared_clock(),
        PlacerConfig::default(),
        term.clone(),
    )
    .expect("loop");
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 2);

    let jobs: Vec<String> = (0..JOBS).map(|i| format!("job-{i:03}")).collect();
    for job in &jobs {
        insert_job(
            &region.db,
            &region.keys,
            job,
            1,
            &simple_spec("t", 1, 10, GIB / 64),
            region.now_ms(),
        )
        .await
        .expect("insert");
    }
    let view = region.view().await;
    let version = view.nodes["node-a"].version;
    let generation = view.layout.expect("layout").generation;
    let bindings: Vec<PlannedBinding> = jobs
        .iter()
        .map(|j| PlannedBinding {
            task: TaskRef::new(j.clone(), 0),
            node: "node-a".into(),
            node_version: version,
            seen_attempt: 0,
        })
        .collect();
    let stops: Vec<PlannedStop> = ["job-030-victim", "zz-victim"]
        .iter()
        .map(|v| PlannedStop {
            victim: TaskRef::new(*v, 0),
            node: "node-a".into(),
            for_task: TaskRef::new("job-000", 0),
            grace_ms: 5,
        })
        .collect();
    let out = commit_batch(
        &region.db,
        &region.keys,
        &term.fence,
        0,
        generation,
        &bindings,
        &stops,
        region.now_ms(),
    )
    .await
    .expect("commit");
    assert_eq!(out.bound.len(), JOBS, "stale: {:?}", out.stale);
    assert_eq!(out.stopped, 2);
    for victim in ["job-030-victim", "zz-victim"] {
        assert_eq!(region.task(victim, 0).await.stopping, "preempted");
    }
    let view = region.view().await;
    assert!(jobs.iter().all(|j| !view.pending.contains_key(j)));
    let log = read_log(&region.db, &region.keys, "node-a", None)
        .await
        .expect("log");
    let stopped: Vec<&str> = log
        .iter()
        .filter(|(_, c)| c.kind == v1::CommandKind::Stop as i32)
        .map(|(_, c)| c.job.as_str())
        .collect();
    assert_eq!(stopped, vec!["job-030-victim", "zz-victim"]);
    let runs = log
        .iter()
        .filter(|(_, c)| c.kind == v1::CommandKind::Run as i32)
        .count();
    assert_eq!(runs, 2 + JOBS);
}

#[test]
fn batches_follow_job_ids_and_never_split_a_job() {
    let mut solution = Solution::default();
    // Solver order is not id order.
    for job in ["job-c", "job-a", "job-b"] {
        for index in 0..3 {
            solution.bindings.push(Binding {
                task: TaskRef::new(job, index),
                node: NodeId::new("node-a"),
                node_version: 1,
            });
        }
    }
    let cut = batches(&RoundInput::default(), &solution, 4);
    let jobs: Vec<Vec<&str>> = cut
        .iter()
        .map(|b| {
            let mut js: Vec<&str> = b.bindings.iter().map(|x| x.task.job_id.as_str()).collect();
            js.dedup();
            js
        })
        .collect();
    assert_eq!(jobs, vec![vec!["job-a"], vec!["job-b"], vec!["job-c"]]);
    assert!(cut.iter().all(|b| b.bindings.len() == 3));
}
