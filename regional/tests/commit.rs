//! What the write pipeline guarantees to the bindings it commits: intents
//! submitted together commit together in one transaction and every one gets
//! its own outcome; preemption victims are stopped (a STOP in their node's
//! command log) with the binding they make room for and only with it; an
//! intent refused in a group leaves nothing behind while the others
//! commit. And batches are cut along job ids, never splitting a job.

use crate::support;

use std::collections::BTreeSet;

use meridian_proto::v1;
use meridian_regional::agent::stream::{Cursor, read_log};
use meridian_regional::error::{RegionalError, Result};
use meridian_regional::jobs::simple_spec;
use meridian_regional::model::CommandRecord;
use meridian_regional::pipeline::bind::{Bind, PlannedBinding, PlannedStop, Stale};
use meridian_regional::pipeline::intake::Intake;
use meridian_regional::pipeline::{Authority, Intent, Outcome};
use meridian_regional::placement::{Binding, NodeId, Solution, TaskRef};
use meridian_regional::placer::ShardLoop;
use meridian_regional::placer::round::{RoundInput, batches};
use support::{GIB, Region};

/// Jobs bound in one group.
const JOBS: usize = 70;

/// Every command in `node`'s log with its cursor, oldest first.
async fn log(region: &Region, node: &str) -> Vec<(Cursor, CommandRecord)> {
    read_log(&region.db, &region.keys, node, None)
        .await
        .expect("log")
}

/// A binding of task 0 of `job` to `node` at node version `version`, with
/// the job's resources as memory knows them.
fn planned(region: &Region, job: &str, node: &str, version: u64) -> PlannedBinding {
    let resources = region.fx.path.state.read().jobs[job]
        .record
        .resources
        .clone();
    PlannedBinding {
        task: TaskRef::new(job, 0),
        node: node.into(),
        node_version: version,
        seen_attempt: 0,
        resources,
    }
}

fn bind(region: &Region, bindings: Vec<PlannedBinding>, stops: Vec<PlannedStop>) -> Intent {
    Intent::Bind(Bind {
        shard: 0,
        bindings,
        stops,
        now_unix_ms: region.now_ms(),
    })
}

/// Shard 0's authority, decided under layout `generation`.
fn authority(region: &Region, generation: u64) -> Authority {
    Authority {
        fence: region.term().fence,
        generation: Some(generation),
    }
}

/// Submits every intent at once and waits for all outcomes. Each intent is
/// queued before the committer runs (the test runtime has one thread), so
/// they are all decided in one group transaction.
async fn submit_together(
    region: &Region,
    intents: Vec<(Option<Authority>, Intent)>,
) -> Vec<Result<Outcome>> {
    let pipeline = &region.fx.path.pipeline;
    let mut all: Vec<_> = intents
        .into_iter()
        .map(|(a, i)| Box::pin(pipeline.submit(a, i)))
        .collect();
    for f in &mut all {
        assert!(
            futures::poll!(f.as_mut()).is_pending(),
            "answered before the committer ran"
        );
    }
    futures::future::join_all(all).await
}

#[tokio::test]
async fn seventy_binding_intents_submitted_at_once_commit_in_one_transaction_and_bind_every_task() {
    let region = Region::new().await;
    let node = region.register("node-a", "boot-a").await;
    let jobs: Vec<String> = (0..JOBS).map(|i| format!("job-{i:03}")).collect();
    region
        .fx
        .insert_jobs(
            jobs.iter()
                .map(|j| (j.clone(), simple_spec("t", 1, 10, GIB / 64)))
                .collect(),
        )
        .await
        .expect("insert");

    let intents = jobs
        .iter()
        .map(|j| {
            (
                Some(authority(&region, 1)),
                bind(
                    &region,
                    vec![planned(&region, j, "node-a", node.version)],
                    Vec::new(),
                ),
            )
        })
        .collect();
    let outcomes = submit_together(&region, intents).await;

    // Each intent gets its own outcome: its own task bound.
    for (job, outcome) in jobs.iter().zip(outcomes) {
        match outcome.expect("bind") {
            Outcome::Bound(out) => {
                assert_eq!(out.bound, vec![TaskRef::new(job.clone(), 0)], "{out:?}");
                assert!(out.stale.is_empty(), "{out:?}");
            }
            other => panic!("a binding intent answered {other:?}"),
        }
    }
    let view = region.view().await;
    for job in &jobs {
        let task = &view.blocks[&(job.clone(), 0)].tasks[0];
        assert_eq!(task.state(), v1::TaskState::Placed, "{job}");
        assert_eq!(task.attempt, 1, "{job}");
        assert_eq!(task.node, "node-a", "{job}");
    }
    // One RUN per job, all in the one log entry a transaction writes per
    // node: they committed together.
    let log = log(&region, "node-a").await;
    let run: BTreeSet<&str> = log
        .iter()
        .filter(|(_, c)| c.kind == v1::CommandKind::Run as i32)
        .map(|(_, c)| c.job.as_str())
        .collect();
    assert_eq!(run, jobs.iter().map(String::as_str).collect());
    assert_eq!(log.len(), JOBS);
    let entries: BTreeSet<[u8; 12]> = log.iter().map(|(c, _)| c.stamp).collect();
    assert_eq!(
        entries.len(),
        1,
        "the bindings took {} commits",
        entries.len()
    );
    // Memory is current with the commit before anyone hears of it.
    let state = region.fx.path.state.read();
    assert!(jobs.iter().all(|j| !state.pending_jobs.contains(j)));
    assert_eq!(state.nodes["node-a"].bound.len(), JOBS);
    assert_eq!(state.nodes["node-a"].allocated.cpu, 10 * JOBS as u64);
}

#[tokio::test]
async fn preemption_stops_are_written_with_the_binding_they_make_room_for_and_only_with_it() {
    let region = Region::new().await;
    let node = region.register("node-a", "boot-a").await;
    let victims = ["victim-1", "victim-2", "victim-3"];
    for v in victims {
        region.insert(v, simple_spec("t", 1, 500, GIB)).await;
    }
    let mut lp = region.shard_loop(0).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 3);
    let running: Vec<_> = {
        let mut out = Vec::new();
        for v in victims {
            out.push(region.task(v, 0).await);
        }
        out
    };
    region.insert("high", simple_spec("t", 1, 500, GIB)).await;
    region
        .insert("refused", simple_spec("t", 1, 500, GIB))
        .await;

    let stop = |victim: &str, for_job: &str| PlannedStop {
        victim: TaskRef::new(victim, 0),
        node: "node-a".into(),
        for_task: TaskRef::new(for_job, 0),
        grace_ms: 5,
    };
    // `high` binds and stops two victims; `refused` was decided on an old
    // node version, so its binding and the stop it planned are left out.
    let intent = bind(
        &region,
        vec![
            planned(&region, "high", "node-a", node.version),
            planned(&region, "refused", "node-a", node.version - 1),
        ],
        vec![
            stop("victim-1", "high"),
            stop("victim-2", "high"),
            stop("victim-3", "refused"),
        ],
    );
    let out = match region.submit(0, intent).await.expect("bind") {
        Outcome::Bound(out) => out,
        other => panic!("a binding intent answered {other:?}"),
    };
    assert_eq!(out.bound, vec![TaskRef::new("high", 0)]);
    assert_eq!(
        out.stale,
        vec![(
            TaskRef::new("refused", 0),
            Stale::NodeVersion {
                seen: node.version - 1,
                found: node.version
            }
        )]
    );
    assert_eq!(out.stopped, 2);

    assert_eq!(region.task("victim-1", 0).await.stopping, "preempted");
    assert_eq!(region.task("victim-2", 0).await.stopping, "preempted");
    assert_eq!(region.task("victim-3", 0).await.stopping, "");
    assert!(region.task("refused", 0).await.is_pending());
    let log = log(&region, "node-a").await;
    let stops: Vec<&CommandRecord> = log
        .iter()
        .map(|(_, c)| c)
        .filter(|c| c.kind == v1::CommandKind::Stop as i32)
        .collect();
    assert_eq!(stops.len(), 2, "{stops:?}");
    for (stop, victim) in stops.iter().zip(&running[..2]) {
        assert_eq!(stop.reason, "preempted");
        assert_eq!(stop.grace_ms, 5);
        assert_eq!(stop.attempt, victim.attempt);
        assert_eq!(stop.node_epoch, victim.node_epoch);
    }
    assert_eq!(
        stops.iter().map(|c| c.job.as_str()).collect::<Vec<_>>(),
        vec!["victim-1", "victim-2"]
    );
    let runs: Vec<&str> = log
        .iter()
        .filter(|(_, c)| c.kind == v1::CommandKind::Run as i32)
        .map(|(_, c)| c.job.as_str())
        .collect();
    assert_eq!(runs, vec!["victim-1", "victim-2", "victim-3", "high"]);
}

/// A region whose node-a (4 cores) is full with the four one-core tasks of
/// job `low` (priority 0), with its placement loop.
async fn full_node() -> (Region, ShardLoop) {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    region.insert("low", simple_spec("t", 4, 1_000, GIB)).await;
    let mut lp = region.shard_loop(0).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 4);
    (region, lp)
}

async fn insert_high(region: &Region, job: &str) {
    let mut high = simple_spec("t", 1, 1_000, GIB);
    high.priority = 10;
    region.insert(job, high).await;
}

/// Tasks of `low` asked to stop as preemption victims.
async fn preempted(region: &Region) -> BTreeSet<u32> {
    region.view().await.blocks[&("low".to_string(), 0)]
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.stopping == "preempted")
        .map(|(i, _)| i as u32)
        .collect()
}

/// STOP commands in node-a's log, as (job, index).
async fn stops(region: &Region) -> Vec<(String, u32)> {
    log(region, "node-a")
        .await
        .into_iter()
        .filter(|(_, c)| c.kind == v1::CommandKind::Stop as i32)
        .map(|(_, c)| (c.job, c.index))
        .collect()
}

/// CPU of node-a's bound tasks that are not asked to stop: what runs there
/// once every stop is done.
fn staying_cpu(region: &Region) -> u64 {
    region.fx.path.state.read().nodes["node-a"]
        .bound
        .values()
        .filter(|b| !b.stopping)
        .map(|b| b.resources.cpu)
        .sum()
}

#[tokio::test]
async fn a_placement_round_on_a_full_node_preempts_a_lower_priority_task_for_a_higher_one() {
    let (region, mut lp) = full_node().await;
    insert_high(&region, "high").await;
    let report = lp.round().await.expect("round");
    assert_eq!(
        report.outcome.bound,
        vec![TaskRef::new("high", 0)],
        "{report:?}"
    );
    assert_eq!(report.outcome.stopped, 1, "{report:?}");

    let preempted = preempted(&region).await;
    assert_eq!(preempted.len(), 1, "{preempted:?}");
    let victim = *preempted.first().expect("a victim");
    assert_eq!(stops(&region).await, vec![("low".to_string(), victim)]);
    assert_eq!(staying_cpu(&region), 4_000);
    // Nothing is left to decide: the next round has no work.
    assert_eq!(lp.round().await.expect("round"), Default::default());
}

#[tokio::test]
async fn a_second_preemption_on_a_node_whose_victim_is_still_stopping_takes_another_victim() {
    let (region, mut lp) = full_node().await;
    insert_high(&region, "high-1").await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 1);
    let first = preempted(&region).await;
    assert_eq!(first.len(), 1);

    // The first victim has not stopped yet when the next one arrives.
    insert_high(&region, "high-2").await;
    let report = lp.round().await.expect("round");
    assert_eq!(
        report.outcome.bound,
        vec![TaskRef::new("high-2", 0)],
        "{report:?}"
    );
    assert!(report.outcome.stale.is_empty(), "{report:?}");
    let all = preempted(&region).await;
    assert!(
        all.is_superset(&first) && all.len() > first.len(),
        "{all:?}"
    );
    let stops = stops(&region).await;
    assert_eq!(stops.len(), all.len(), "one STOP per victim: {stops:?}");
    // Once the victims have stopped, what stays fits the node.
    assert!(staying_cpu(&region) <= 4_000, "{}", staying_cpu(&region));
    // Decided for good: no binding comes back refused to be tried again.
    assert_eq!(lp.round().await.expect("round"), Default::default());
}

#[tokio::test]
async fn an_intent_refused_in_a_group_leaves_nothing_behind_while_the_others_commit() {
    let region = Region::new().await;
    let node = region.register("node-a", "boot-a").await;
    for job in ["victim", "job-1", "job-2", "job-3", "stale-layout"] {
        region.insert(job, simple_spec("t", 1, 500, GIB)).await;
    }
    // The victim runs.
    let victim = planned(&region, "victim", "node-a", node.version);
    match region
        .submit(0, bind(&region, vec![victim], Vec::new()))
        .await
        .expect("bind victim")
    {
        Outcome::Bound(out) => assert_eq!(out.bound.len(), 1, "{out:?}"),
        other => panic!("{other:?}"),
    }
    let version = node.version;

    let intents = vec![
        (
            Some(authority(&region, 1)),
            bind(
                &region,
                vec![planned(&region, "job-1", "node-a", version)],
                Vec::new(),
            ),
        ),
        // Decided under a layout generation that is not the stored one:
        // refused as a whole, with the stop it planned.
        (
            Some(authority(&region, 7)),
            bind(
                &region,
                vec![planned(&region, "stale-layout", "node-a", version)],
                vec![PlannedStop {
                    victim: TaskRef::new("victim", 0),
                    node: "node-a".into(),
                    for_task: TaskRef::new("stale-layout", 0),
                    grace_ms: 5,
                }],
            ),
        ),
        (
            Some(authority(&region, 1)),
            bind(
                &region,
                vec![planned(&region, "job-2", "node-a", version)],
                Vec::new(),
            ),
        ),
        // An intake refused halfway: its first job was already written in
        // its own layer when the second event turned out invalid.
        (
            None,
            Intent::Intake(Intake {
                events: vec![
                    v1::AssignmentEvent {
                        kind: v1::AssignmentEventKind::Assign as i32,
                        job_id: "half-written".into(),
                        assignment_epoch: 1,
                        spec: Some(simple_spec("t", 1, 500, GIB)),
                        job_created_at_unix_ms: region.now_ms(),
                        ..Default::default()
                    },
                    v1::AssignmentEvent {
                        kind: v1::AssignmentEventKind::Assign as i32,
                        job_id: "no-spec".into(),
                        assignment_epoch: 1,
                        spec: None,
                        ..Default::default()
                    },
                ],
                cursor: Some(b"refused-cursor".to_vec()),
                now_unix_ms: region.now_ms(),
            }),
        ),
        (
            Some(authority(&region, 1)),
            bind(
                &region,
                vec![planned(&region, "job-3", "node-a", version)],
                Vec::new(),
            ),
        ),
    ];
    let mut outcomes = submit_together(&region, intents).await.into_iter();

    let bound = |job: &str, outcome: Option<Result<Outcome>>| match outcome
        .expect("an outcome")
        .expect("bind")
    {
        Outcome::Bound(out) => assert_eq!(out.bound, vec![TaskRef::new(job, 0)], "{out:?}"),
        other => panic!("{other:?}"),
    };
    bound("job-1", outcomes.next());
    match outcomes.next().expect("an outcome") {
        Err(RegionalError::Resharded { expected, found }) => {
            assert_eq!((expected, found), (7, 1));
        }
        other => panic!("a binding under another layout answered {other:?}"),
    }
    bound("job-2", outcomes.next());
    match outcomes.next().expect("an outcome") {
        Err(RegionalError::Invalid { field, .. }) => assert_eq!(field, "spec"),
        other => panic!("an invalid intake answered {other:?}"),
    }
    bound("job-3", outcomes.next());

    // The others committed, together.
    let log = log(&region, "node-a").await;
    let after_victim: Vec<&(Cursor, CommandRecord)> = log.iter().skip(1).collect();
    assert_eq!(
        after_victim
            .iter()
            .map(|(_, c)| (c.kind, c.job.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (v1::CommandKind::Run as i32, "job-1"),
            (v1::CommandKind::Run as i32, "job-2"),
            (v1::CommandKind::Run as i32, "job-3"),
        ],
        "no RUN of the refused binding, no STOP of its victim"
    );
    assert!(
        after_victim
            .iter()
            .all(|(c, _)| c.stamp == after_victim[0].0.stamp)
    );

    // The refused ones left nothing: not in the store, not in memory.
    assert!(region.task("stale-layout", 0).await.is_pending());
    let victim = region.task("victim", 0).await;
    assert_eq!(victim.state(), v1::TaskState::Placed);
    assert_eq!(victim.stopping, "");
    let view = region.view().await;
    assert!(!view.jobs.contains_key("half-written"));
    assert!(!view.jobs.contains_key("no-spec"));
    {
        let state = region.fx.path.state.read();
        assert!(!state.jobs.contains_key("half-written"));
        assert!(state.pending_jobs.contains("stale-layout"));
        assert_eq!(state.nodes["node-a"].bound.len(), 4);
    }
    let cursor = region
        .db
        .run(|tx, _| {
            let key = region.keys.link_cursor();
            async move { tx.get(&key).await.map_err(RegionalError::from) }
        })
        .await
        .expect("read the link cursor");
    assert_eq!(cursor, None, "the refused intake's cursor was written");
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
