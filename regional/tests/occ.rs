//! Bindings commit with OCC on node versions and the shard fence: a decision
//! made on a node version that changed is rejected and the task placed again.

use std::time::Duration;

use meridian_control::lease::{Acquired, Identity, Lease};
use meridian_control::{ManualClock, SharedClock};
use meridian_proto::v1;
use meridian_regional::agent::nodes::{self, Cordon};
use meridian_regional::jobs::{insert_job, simple_spec};
use meridian_regional::model::{Keys, RegionView};
use meridian_regional::placement::{SolverConfig, solve};
use meridian_regional::placer::commit::{Stale, commit_batch};
use meridian_regional::placer::round::{batches, build_input};
use meridian_regional::placer::{PlacerConfig, ShardLoop};
use meridian_regional::shard::{ShardTerm, ensure_layout};
use meridian_store::Database;

const GIB: u64 = 1 << 30;

async fn setup() -> (Database, Keys, ManualClock) {
    let db = meridian_store::open("sqlite::memory:")
        .await
        .expect("store");
    let keys = Keys::new("r1");
    ensure_layout(&db, &keys, 1).await.expect("layout");
    let clock = ManualClock::starting_at_unix_ms(1_000_000);
    for id in ["node-a", "node-b"] {
        let req = v1::RegisterNodeRequest {
            node_id: id.into(),
            boot_id: format!("boot-{id}"),
            allocatable: Some(v1::Resources {
                cpu_millis: 4_000,
                memory_bytes: 8 * GIB,
                gpu_count: 0,
                gpu_type: String::new(),
            }),
            ..Default::default()
        };
        nodes::register(&db, &keys, &req, 1_000_000)
            .await
            .expect("register");
    }
    (db, keys, clock)
}

async fn lead(db: &Database, keys: &Keys, clock: &SharedClock, name: &str) -> ShardTerm {
    let lease = Lease::new(
        db.clone(),
        keys.shard_lease(0),
        Identity::new_boot(name),
        clock.clone(),
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    match lease.try_acquire().await.expect("acquire") {
        Acquired::Held(held) => ShardTerm {
            shard: 0,
            epoch: held.fence.epoch(),
            fence: held.fence,
        },
        Acquired::Busy(r) => panic!("lease busy: {r:?}"),
    }
}

async fn view(db: &Database, keys: &Keys) -> RegionView {
    db.run(|tx, _| {
        let keys = keys.clone();
        async move { RegionView::read(&tx, &keys).await }
    })
    .await
    .expect("view")
}

#[tokio::test]
async fn a_binding_decided_on_a_node_version_that_changed_is_rejected_and_the_task_placed_again() {
    let (db, keys, clock) = setup().await;
    let shared = clock.shared();
    let term = lead(&db, &keys, &shared, "replica-a").await;
    insert_job(
        &db,
        &keys,
        "job-1",
        1,
        &simple_spec("t", 1, 1_000, GIB),
        1_000_000,
    )
    .await
    .expect("insert");

    // Decide on the current view.
    let before = view(&db, &keys).await;
    let jobs = ["job-1".to_string()].into_iter().collect();
    let input = build_input(&before, 0, &jobs, 1_000_000);
    let solution = solve(&input.snapshot, &input.pending, &SolverConfig::default());
    assert_eq!(solution.bindings.len(), 1);
    let chosen = solution.bindings[0].node.0.clone();
    let seen_version = solution.bindings[0].node_version;

    // The chosen node changes (cordoned and uncordoned: still schedulable,
    // but its version moved) before the decision commits.
    nodes::set_cordon(&db, &keys, &chosen, &Cordon::Cordon { reason: "x".into() })
        .await
        .expect("cordon");
    let after = nodes::set_cordon(&db, &keys, &chosen, &Cordon::Uncordon)
        .await
        .expect("uncordon");
    assert_eq!(after.version, seen_version + 2);

    let batch = batches(&input, &solution, 100).remove(0);
    let out = commit_batch(
        &db,
        &keys,
        &term.fence,
        0,
        input.generation,
        &batch.bindings,
        &batch.stops,
        1_000_001,
    )
    .await
    .expect("commit");
    assert!(out.bound.is_empty(), "stale binding committed: {out:?}");
    assert_eq!(
        out.stale,
        vec![(
            solution.bindings[0].task.clone(),
            Stale::NodeVersion {
                seen: seen_version,
                found: seen_version + 2
            }
        )]
    );
    let still = view(&db, &keys).await;
    assert!(still.blocks.values().all(|b| b.tasks[0].is_pending()));
    assert!(still.pending.contains_key("job-1"));

    // The placement loop decides again on the new view and binds it.
    let mut lp = ShardLoop::new(
        db.clone(),
        keys.clone(),
        shared.clone(),
        PlacerConfig::default(),
        term,
    )
    .expect("loop");
    let report = lp.round().await.expect("round");
    assert_eq!(report.outcome.bound.len(), 1, "{report:?}");
    let placed = view(&db, &keys).await;
    let task = &placed.blocks.values().next().expect("block").tasks[0];
    assert_eq!(task.state(), v1::TaskState::Placed);
    assert_eq!(task.attempt, 1);
    assert!(!placed.pending.contains_key("job-1"));
}

#[tokio::test]
async fn a_binding_batch_of_a_fenced_shard_leader_never_commits() {
    let (db, keys, clock) = setup().await;
    let shared = clock.shared();
    let old = lead(&db, &keys, &shared, "replica-a").await;
    insert_job(
        &db,
        &keys,
        "job-1",
        1,
        &simple_spec("t", 2, 1_000, GIB),
        1_000_000,
    )
    .await
    .expect("insert");
    let before = view(&db, &keys).await;
    let jobs = ["job-1".to_string()].into_iter().collect();
    let input = build_input(&before, 0, &jobs, 1_000_000);
    let solution = solve(&input.snapshot, &input.pending, &SolverConfig::default());

    // The lease expires and another replica takes the shard over.
    clock.advance(Duration::from_secs(11));
    let new = lead(&db, &keys, &shared, "replica-b").await;
    assert!(new.epoch > old.epoch);

    let batch = batches(&input, &solution, 100).remove(0);
    let err = commit_batch(
        &db,
        &keys,
        &old.fence,
        0,
        input.generation,
        &batch.bindings,
        &batch.stops,
        1_000_001,
    )
    .await
    .expect_err("a fenced commit must fail");
    assert!(err.is_fenced(), "{err}");
    assert!(
        view(&db, &keys)
            .await
            .blocks
            .values()
            .all(|b| b.tasks.iter().all(|t| t.is_pending()))
    );
}

#[tokio::test]
async fn a_binding_decided_under_an_older_shard_layout_never_commits() {
    let (db, keys, clock) = setup().await;
    let shared = clock.shared();
    let term = lead(&db, &keys, &shared, "replica-a").await;
    insert_job(
        &db,
        &keys,
        "job-1",
        1,
        &simple_spec("t", 1, 1_000, GIB),
        1_000_000,
    )
    .await
    .expect("insert");
    let before = view(&db, &keys).await;
    let jobs = ["job-1".to_string()].into_iter().collect();
    let input = build_input(&before, 0, &jobs, 1_000_000);
    let solution = solve(&input.snapshot, &input.pending, &SolverConfig::default());
    ensure_layout(&db, &keys, 2).await.expect("re-shard");
    let batch = batches(&input, &solution, 100).remove(0);
    let err = commit_batch(
        &db,
        &keys,
        &term.fence,
        0,
        input.generation,
        &batch.bindings,
        &batch.stops,
        1_000_001,
    )
    .await
    .expect_err("a commit under the old layout must fail");
    assert!(err.is_fenced(), "{err}");
}
