//! Bindings commit with OCC on node versions, a fit re-check and the shard
//! fence, all checked by the write pipeline's binding intent against the
//! store in the transaction that writes them: a decision made on a node
//! version that changed, on room that is gone, on a task that moved, by a
//! deposed leader or under an older layout never binds.

use crate::support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meridian_control::lease::{Acquired, Fence, Identity, Lease};
use meridian_proto::v1;
use meridian_regional::agent::stream::read_log;
use meridian_regional::error::Result;
use meridian_regional::jobs::simple_spec;
use meridian_regional::model::{CommandRecord, Res};
use meridian_regional::pipeline::bind::{BatchOutcome, Bind, PlannedBinding, Stale};
use meridian_regional::pipeline::node::{Cordon, SetCordon};
use meridian_regional::pipeline::{Authority, Intent, Outcome};
use meridian_regional::placement::{
    Binding, NodeId, PendingTask, Snapshot, Solution, SolverConfig, TaskRef, solve,
};
use meridian_regional::placer::round::{Batch, NodeView, RoundInput, batches, build_input};
use meridian_regional::shard::ensure_layout;
use support::{GIB, Region};

/// Decides for `jobs` on shard 0 from the replica's memory, as a round does.
fn decide(region: &Region, jobs: &[&str]) -> (RoundInput, Solution) {
    let jobs: BTreeSet<String> = jobs.iter().map(|j| j.to_string()).collect();
    let input = {
        let state = region.fx.path.state.read();
        build_input(&state, 0, &jobs, region.now_ms(), &mut NodeView::default())
    };
    let solution = solve(&input.snapshot, &input.pending, &SolverConfig::default());
    (input, solution)
}

/// The one batch a small decision is cut into.
fn one_batch(input: &RoundInput, solution: &Solution) -> Batch {
    let mut cut = batches(input, solution, 100);
    assert_eq!(cut.len(), 1, "{cut:?}");
    cut.remove(0)
}

fn bind_intent(region: &Region, batch: Batch) -> Intent {
    Intent::Bind(Bind {
        shard: 0,
        bindings: batch.bindings,
        stops: batch.stops,
        now_unix_ms: region.now_ms(),
    })
}

/// Submits `batch` as shard 0's binding intent under `fence`, decided under
/// layout `generation`.
async fn bind(
    region: &Region,
    fence: Fence,
    generation: u64,
    batch: Batch,
) -> Result<BatchOutcome> {
    let authority = Authority {
        fence,
        generation: Some(generation),
    };
    let intent = bind_intent(region, batch);
    match region
        .fx
        .path
        .pipeline
        .submit(Some(authority), intent)
        .await?
    {
        Outcome::Bound(out) => Ok(out),
        other => panic!("a binding intent answered {other:?}"),
    }
}

/// Every command in `node`'s log, oldest first.
async fn commands(region: &Region, node: &str) -> Vec<CommandRecord> {
    read_log(&region.db, &region.keys, node, None)
        .await
        .expect("log")
        .into_iter()
        .map(|(_, c)| c)
        .collect()
}

/// job-2 (3 of node-a's 4 cores) was refused: it is still pending, only
/// job-1 got a RUN on node-a, and node-a's allocation is job-1's alone.
async fn only_job_1_runs_on_node_a(region: &Region) {
    assert!(region.task("job-2", 0).await.is_pending());
    let runs: Vec<String> = commands(region, "node-a")
        .await
        .into_iter()
        .map(|c| c.job)
        .collect();
    assert_eq!(runs, vec!["job-1"]);
    assert_eq!(
        region.fx.path.state.read().nodes["node-a"].allocated.cpu,
        3_000
    );
}

/// A binding of task 0 of `job` to `node`, decided on node version
/// `version`, of a task needing `cpu` millicores and 1 GiB.
fn planned(job: &str, node: &str, version: u64, cpu: u64) -> PlannedBinding {
    PlannedBinding {
        task: TaskRef::new(job, 0),
        node: node.into(),
        node_version: version,
        seen_attempt: 0,
        resources: Res {
            cpu,
            mem: GIB,
            ..Res::default()
        },
    }
}

#[tokio::test]
async fn a_binding_decided_on_a_node_version_that_changed_is_refused_and_the_task_placed_again() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    region.register("node-b", "boot-b").await;
    region
        .insert("job-1", simple_spec("t", 1, 1_000, GIB))
        .await;

    // Decide on the current memory.
    let (input, solution) = decide(&region, &["job-1"]);
    assert_eq!(solution.bindings.len(), 1, "{solution:?}");
    let chosen = solution.bindings[0].node.0.clone();
    let seen_version = solution.bindings[0].node_version;

    // The chosen node changes (cordoned and uncordoned: still schedulable,
    // but its version moved) before the decision commits.
    for change in [Cordon::Cordon { reason: "x".into() }, Cordon::Uncordon] {
        let out = region
            .submit(
                0,
                Intent::Cordon(SetCordon {
                    node: chosen.clone(),
                    change,
                }),
            )
            .await
            .expect("cordon");
        assert!(matches!(out, Outcome::Node(Some(_))), "{out:?}");
    }
    assert_eq!(region.view().await.nodes[&chosen].version, seen_version + 2);

    let out = bind(
        &region,
        region.term().fence,
        input.generation,
        one_batch(&input, &solution),
    )
    .await
    .expect("bind");
    assert!(out.bound.is_empty(), "stale binding committed: {out:?}");
    assert_eq!(
        out.stale,
        vec![(
            TaskRef::new("job-1", 0),
            Stale::NodeVersion {
                seen: seen_version,
                found: seen_version + 2
            }
        )]
    );
    assert!(region.task("job-1", 0).await.is_pending());
    assert!(commands(&region, &chosen).await.is_empty());
    assert!(
        region.fx.path.state.read().pending_jobs.contains("job-1"),
        "the job still waits in memory"
    );

    // The placement loop decides again on the new view and binds it.
    let mut lp = region.shard_loop(0).await;
    let report = lp.round().await.expect("round");
    assert_eq!(
        report.outcome.bound,
        vec![TaskRef::new("job-1", 0)],
        "{report:?}"
    );
    let task = region.task("job-1", 0).await;
    assert_eq!(task.state(), v1::TaskState::Placed);
    assert_eq!(task.attempt, 1);
    assert!(!region.fx.path.state.read().pending_jobs.contains("job-1"));
}

#[tokio::test]
async fn a_binding_decided_when_the_node_had_room_is_refused_once_another_binding_took_it() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    // Each job needs 3 of node-a's 4 cores: one of them fits.
    region
        .insert("job-1", simple_spec("t", 1, 3_000, GIB))
        .await;
    region
        .insert("job-2", simple_spec("t", 1, 3_000, GIB))
        .await;

    // Both are decided on the same view, each on its own (as two rounds
    // that both saw the node empty would).
    let (input_1, solution_1) = decide(&region, &["job-1"]);
    let (input_2, solution_2) = decide(&region, &["job-2"]);
    assert_eq!(solution_1.bindings[0].node.0, "node-a");
    assert_eq!(solution_2.bindings[0].node.0, "node-a");
    let version = solution_2.bindings[0].node_version;

    let fence = region.term().fence;
    let first = bind(&region, fence.clone(), 1, one_batch(&input_1, &solution_1))
        .await
        .expect("bind job-1");
    assert_eq!(first.bound, vec![TaskRef::new("job-1", 0)]);

    // A binding does not move the node's version, so only the fit re-check
    // can refuse the second decision.
    assert_eq!(region.view().await.nodes["node-a"].version, version);
    let second = bind(&region, fence, 1, one_batch(&input_2, &solution_2))
        .await
        .expect("bind job-2");
    assert!(second.bound.is_empty(), "node-a overcommitted: {second:?}");
    assert_eq!(
        second.stale,
        vec![(TaskRef::new("job-2", 0), Stale::NoRoom)]
    );
    only_job_1_runs_on_node_a(&region).await;
}

#[tokio::test]
async fn a_wrong_decision_that_would_overcommit_a_node_binds_only_what_fits() {
    let region = Region::new().await;
    let node = region.register("node-a", "boot-a").await;
    for job in ["job-1", "job-2", "job-3"] {
        region.insert(job, simple_spec("t", 1, 2_000, GIB)).await;
    }
    // A faulty decision: three tasks of 2 cores on a 4-core node, in one
    // intent.
    let batch = Batch {
        bindings: ["job-1", "job-2", "job-3"]
            .into_iter()
            .map(|j| planned(j, "node-a", node.version, 2_000))
            .collect(),
        stops: Vec::new(),
    };
    let out = bind(&region, region.term().fence, 1, batch)
        .await
        .expect("bind");
    assert_eq!(
        out.bound,
        vec![TaskRef::new("job-1", 0), TaskRef::new("job-2", 0)]
    );
    assert_eq!(out.stale, vec![(TaskRef::new("job-3", 0), Stale::NoRoom)]);
    assert!(region.task("job-3", 0).await.is_pending());
    assert_eq!(commands(&region, "node-a").await.len(), 2);
}

#[tokio::test]
async fn two_binding_intents_committed_in_one_group_never_overcommit_a_node_between_them() {
    let region = Region::new().await;
    let node = region.register("node-a", "boot-a").await;
    region
        .insert("job-1", simple_spec("t", 1, 3_000, GIB))
        .await;
    region
        .insert("job-2", simple_spec("t", 1, 3_000, GIB))
        .await;
    let fence = region.term().fence;
    let intent = |job: &str| {
        bind_intent(
            &region,
            Batch {
                bindings: vec![planned(job, "node-a", node.version, 3_000)],
                stops: Vec::new(),
            },
        )
    };
    let authority = Authority {
        fence,
        generation: Some(1),
    };
    let pipeline = &region.fx.path.pipeline;
    let mut first = Box::pin(pipeline.submit(Some(authority.clone()), intent("job-1")));
    let mut second = Box::pin(pipeline.submit(Some(authority), intent("job-2")));
    // Both are queued before the committer runs (this runtime has one
    // thread), so they are decided in the same group transaction.
    assert!(futures::poll!(first.as_mut()).is_pending());
    assert!(futures::poll!(second.as_mut()).is_pending());
    let (first, second) = futures::join!(first, second);
    let first = match first.expect("first") {
        Outcome::Bound(out) => out,
        other => panic!("{other:?}"),
    };
    let second = match second.expect("second") {
        Outcome::Bound(out) => out,
        other => panic!("{other:?}"),
    };
    let runs = commands(&region, "node-a").await;
    assert_eq!(runs.len(), 1, "node-a overcommitted: {first:?} {second:?}");
    assert_eq!(first.bound, vec![TaskRef::new("job-1", 0)]);
    assert_eq!(
        second.stale,
        vec![(TaskRef::new("job-2", 0), Stale::NoRoom)]
    );
    assert!(region.task("job-2", 0).await.is_pending());
}

#[tokio::test]
async fn the_same_decision_committed_twice_binds_the_task_once() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    region
        .insert("job-1", simple_spec("t", 1, 1_000, GIB))
        .await;
    let (input, solution) = decide(&region, &["job-1"]);
    let fence = region.term().fence;
    let first = bind(&region, fence.clone(), 1, one_batch(&input, &solution))
        .await
        .expect("first");
    assert_eq!(first.bound, vec![TaskRef::new("job-1", 0)]);
    let again = bind(&region, fence, 1, one_batch(&input, &solution))
        .await
        .expect("again");
    assert!(again.bound.is_empty(), "{again:?}");
    assert_eq!(
        again.stale,
        vec![(TaskRef::new("job-1", 0), Stale::TaskMoved)]
    );
    assert_eq!(region.task("job-1", 0).await.attempt, 1);
    assert_eq!(commands(&region, "node-a").await.len(), 1);
}

#[tokio::test]
async fn a_binding_on_a_node_cordoned_since_the_decision_is_refused() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    region
        .insert("job-1", simple_spec("t", 1, 1_000, GIB))
        .await;
    let (input, solution) = decide(&region, &["job-1"]);
    region
        .submit(
            0,
            Intent::Cordon(SetCordon {
                node: "node-a".into(),
                change: Cordon::Cordon {
                    reason: "maintenance".into(),
                },
            }),
        )
        .await
        .expect("cordon");
    let out = bind(
        &region,
        region.term().fence,
        1,
        one_batch(&input, &solution),
    )
    .await
    .expect("bind");
    assert!(out.bound.is_empty(), "{out:?}");
    assert_eq!(
        out.stale,
        vec![(TaskRef::new("job-1", 0), Stale::NodeUnavailable)]
    );
    assert!(region.task("job-1", 0).await.is_pending());
}

#[tokio::test]
async fn a_binding_batch_of_a_deposed_shard_leader_never_commits() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    region
        .insert("job-1", simple_spec("t", 2, 1_000, GIB))
        .await;
    let old = region.term();
    let mut old_loop = region.shard_loop(0).await;
    let (input, solution) = decide(&region, &["job-1"]);
    assert_eq!(solution.bindings.len(), 2);

    // The fixture's lease (an hour) expires and another replica takes the
    // shard over.
    region.clock.advance(Duration::from_secs(3_601));
    let lease = Lease::new(
        region.db.clone(),
        region.keys.shard_lease(0),
        Identity::new_boot("replica-b"),
        region.shared_clock(),
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .with_fence_in(region.db.clone(), region.keys.shard_fence(0));
    let new = match lease.try_acquire().await.expect("acquire") {
        Acquired::Held(held) => held.fence,
        Acquired::Busy(r) => panic!("lease busy: {r:?}"),
    };
    assert!(new.epoch() > old.epoch);

    let err = bind(
        &region,
        old.fence.clone(),
        input.generation,
        one_batch(&input, &solution),
    )
    .await
    .expect_err("a deposed leader's binding must not commit");
    assert!(err.is_fenced(), "{err}");

    // Its placement loop, which still believes it leads, ends its round
    // fenced too (the node is heard from, so the round gets to binding).
    region.fx.beat_all();
    let err = old_loop
        .round()
        .await
        .expect_err("a deposed leader's round must not commit");
    assert!(err.is_fenced(), "{err}");

    let view = region.view().await;
    assert!(
        view.blocks
            .values()
            .all(|b| b.tasks.iter().all(|t| t.is_pending()))
    );
    assert!(commands(&region, "node-a").await.is_empty());

    // The same decision under the new leader's fence binds.
    let out = bind(&region, new, input.generation, one_batch(&input, &solution))
        .await
        .expect("bind under the new fence");
    assert_eq!(out.bound.len(), 2, "{out:?}");
}

#[tokio::test]
async fn a_binding_decided_under_an_older_shard_layout_never_commits() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    region
        .insert("job-1", simple_spec("t", 1, 1_000, GIB))
        .await;
    let (input, solution) = decide(&region, &["job-1"]);
    assert_eq!(solution.bindings.len(), 1);
    let layout = ensure_layout(&region.db, &region.keys, 2)
        .await
        .expect("re-shard");
    assert!(layout.generation > input.generation);
    let err = bind(
        &region,
        region.term().fence,
        input.generation,
        one_batch(&input, &solution),
    )
    .await
    .expect_err("a binding under the old layout must not commit");
    assert!(err.is_fenced(), "{err}");
    assert!(region.task("job-1", 0).await.is_pending());
    assert!(commands(&region, "node-a").await.is_empty());
}

/// A wrong solver: binds every pending task to `node` at the version it
/// sees, room or not, and counts how often it was asked.
fn everything_on(
    node: &'static str,
    calls: Arc<AtomicUsize>,
) -> impl Fn(&Snapshot, &[PendingTask], &SolverConfig) -> Solution + Send + Sync {
    move |snapshot: &Snapshot, pending: &[PendingTask], _: &SolverConfig| {
        calls.fetch_add(1, Ordering::SeqCst);
        let node = NodeId::new(node);
        let version = snapshot.nodes.get(&node).map_or(0, |n| n.version);
        Solution {
            bindings: pending
                .iter()
                .map(|p| Binding {
                    task: p.task.clone(),
                    node: node.clone(),
                    node_version: version,
                })
                .collect(),
            preemptions: Vec::new(),
            unschedulable: Vec::new(),
        }
    }
}

#[tokio::test]
async fn a_faulty_solver_that_binds_onto_a_full_node_never_overcommits_it() {
    let mut region = Region::new().await;
    region.register("node-a", "boot-a").await;
    // The shard has room (on node-b), so the round asks the solver.
    region.register("node-b", "boot-b").await;
    let calls = Arc::new(AtomicUsize::new(0));
    region.fx.solver = Arc::new(everything_on("node-a", calls.clone()));
    let mut placer = region.shard_loop(0).await;

    // Each job needs 3 of node-a's 4 cores; the first one fits.
    region
        .insert("job-1", simple_spec("t", 1, 3_000, GIB))
        .await;
    let first = placer.round().await.expect("round");
    assert_eq!(first.outcome.bound, vec![TaskRef::new("job-1", 0)]);

    // The solver puts the second one on the same node, not on node-b where
    // it fits: the commit refuses.
    region
        .insert("job-2", simple_spec("t", 1, 3_000, GIB))
        .await;
    let second = placer.round().await.expect("round");
    assert!(second.outcome.bound.is_empty(), "{second:?}");
    assert_eq!(
        second.outcome.stale,
        vec![(TaskRef::new("job-2", 0), Stale::NoRoom)]
    );
    only_job_1_runs_on_node_a(&region).await;

    // The refused job went back to the queue: the next round decides it
    // again (and the commit refuses it again) with no timer involved.
    let asked = calls.load(Ordering::SeqCst);
    let third = placer.round().await.expect("round");
    assert_eq!(calls.load(Ordering::SeqCst), asked + 1);
    assert_eq!(third.jobs, 1);
    assert_eq!(
        third.outcome.stale,
        vec![(TaskRef::new("job-2", 0), Stale::NoRoom)]
    );
}

/// The shard's nodes as a round built from a view kept since earlier rounds,
/// and as one built from scratch.
fn kept_and_fresh(region: &Region, kept: &mut NodeView, jobs: &[&str]) -> (Snapshot, Snapshot) {
    let jobs: BTreeSet<String> = jobs.iter().map(|j| j.to_string()).collect();
    let state = region.fx.path.state.read();
    let now = region.now_ms();
    let from_kept = build_input(&state, 0, &jobs, now, kept);
    let from_scratch = build_input(&state, 0, &jobs, now, &mut NodeView::default());
    let snapshots = (from_kept.snapshot.clone(), from_scratch.snapshot.clone());
    kept.restore(from_kept);
    snapshots
}

#[tokio::test]
async fn a_node_view_kept_between_rounds_sees_every_binding_cordon_new_node_and_reshard() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    region.register("node-b", "boot-b").await;
    for job in ["job-1", "job-2"] {
        region.insert(job, simple_spec("t", 1, 1_000, GIB)).await;
    }
    let mut kept = NodeView::default();
    let (first, fresh) = kept_and_fresh(&region, &mut kept, &["job-1"]);
    assert_eq!(first, fresh);
    assert_eq!(first.nodes.len(), 2);

    // A binding moves a node's allocation.
    let (input, solution) = decide(&region, &["job-1"]);
    let out = bind(
        &region,
        region.term().fence,
        input.generation,
        one_batch(&input, &solution),
    )
    .await
    .expect("bind");
    assert_eq!(out.bound.len(), 1, "{out:?}");
    let (after_bind, fresh) = kept_and_fresh(&region, &mut kept, &["job-2"]);
    assert_eq!(after_bind, fresh);
    assert_ne!(after_bind, first, "the kept view missed the binding");

    // A cordon makes a node unschedulable; a new node joins.
    let out = region
        .submit(
            0,
            Intent::Cordon(SetCordon {
                node: "node-b".into(),
                change: Cordon::Cordon { reason: "x".into() },
            }),
        )
        .await
        .expect("cordon");
    assert!(matches!(out, Outcome::Node(Some(_))), "{out:?}");
    region.register("node-c", "boot-c").await;
    let (after_cordon, fresh) = kept_and_fresh(&region, &mut kept, &["job-2"]);
    assert_eq!(after_cordon, fresh);
    assert!(!after_cordon.nodes["node-b"].schedulable);
    assert_eq!(after_cordon.nodes.len(), 3);

    // Re-sharding moves nodes to another shard: they leave shard 0's view.
    // Jobs of every shard wait, so shard 0 still has one to decide for.
    let waiting: Vec<String> = (0..16).map(|i| format!("w-{i}")).collect();
    for job in &waiting {
        region.insert(job, simple_spec("t", 1, 1_000, GIB)).await;
    }
    ensure_layout(&region.db, &region.keys, 2)
        .await
        .expect("re-shard");
    region.fx.path.tailer.catch_up().await.expect("catch up");
    let waiting: Vec<&str> = waiting.iter().map(String::as_str).collect();
    let (resharded, fresh) = kept_and_fresh(&region, &mut kept, &waiting);
    assert_eq!(resharded, fresh);
    let on_shard_0: BTreeSet<&str> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .filter(|n| region.fx.shard_of(n) == 0)
        .collect();
    assert!(
        !on_shard_0.is_empty() && on_shard_0.len() < 3,
        "the test needs nodes on both sides of the re-shard: {on_shard_0:?}"
    );
    let kept_ids: BTreeSet<&str> = resharded.nodes.keys().map(|id| id.0.as_str()).collect();
    assert_eq!(kept_ids, on_shard_0);
}
