//! A sweep of what changed finds exactly what a sweep of everything finds;
//! the liveness walk finds each node's beat as a lookup by id would.

use meridian_proto::v1;
use proptest::prelude::*;

use super::*;
use crate::jobs::simple_spec;
use crate::model::{JobRecord, NodeRecord, TaskBlock, TaskRecord, job_from_spec};
use crate::state::{Delta, Stamp};

fn stamp(n: u32) -> Stamp {
    let mut s = [0u8; 10];
    s[4..8].copy_from_slice(&n.to_be_bytes());
    s
}

fn node(id: &str) -> NodeRecord {
    NodeRecord::ready_for_tests(id, 100_000, 1 << 40)
}

fn job(id: &str, tasks: u32) -> JobRecord {
    let mut spec = simple_spec("t", tasks, 100, 1);
    spec.exclusive = id.ends_with('0');
    job_from_spec(id, 1, "", &spec, 0).expect("job")
}

/// Every task of every job running on node `(job + index) % nodes`.
fn settled(nodes: usize, jobs: &[u32]) -> (RegionState, u32) {
    let mut s = RegionState::default();
    let mut d = Delta::default();
    let mut at = 1;
    for n in 0..nodes {
        let id = format!("n{n}");
        s.put_node(&id, Some(node(&id)), stamp(at), &mut d);
    }
    for (j, &tasks) in jobs.iter().enumerate() {
        let id = format!("j{j}");
        s.put_job(&id, Some((job(&id, tasks), None)), stamp(at), &mut d);
        at += 1;
        let block = TaskBlock {
            first: 0,
            tasks: (0..tasks)
                .map(|i| {
                    let mut t = TaskRecord::new_pending();
                    t.state = v1::TaskState::Running as i32;
                    t.node = format!("n{}", (j + i as usize) % nodes);
                    t.attempt = 1;
                    t.node_epoch = 1;
                    t
                })
                .collect(),
        };
        s.put_block(&id, 0, Some(block), stamp(at), &mut d);
    }
    (s, at + 1)
}

#[derive(Debug, Clone)]
enum Change {
    NodeDown(usize),
    NodeReregistered(usize),
    NodeDraining(usize),
    NodeRemoved(usize),
    JobCancelled(usize),
    JobRevoked(usize),
    TaskEnded(usize, u32),
    TaskMoved(usize, u32, usize),
}

fn change(nodes: usize, jobs: usize) -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..nodes).prop_map(Change::NodeDown),
        (0..nodes).prop_map(Change::NodeReregistered),
        (0..nodes).prop_map(Change::NodeDraining),
        (0..nodes).prop_map(Change::NodeRemoved),
        (0..jobs).prop_map(Change::JobCancelled),
        (0..jobs).prop_map(Change::JobRevoked),
        (0..jobs, 0u32..4).prop_map(|(j, i)| Change::TaskEnded(j, i)),
        (0..jobs, 0u32..4, 0..nodes).prop_map(|(j, i, n)| Change::TaskMoved(j, i, n)),
    ]
}

fn apply(s: &mut RegionState, c: &Change, at: Stamp, d: &mut Delta) {
    let node_with = |s: &RegionState, n: usize, f: &dyn Fn(&mut NodeRecord)| {
        let id = format!("n{n}");
        let mut r = s.nodes.get(&id).and_then(|e| e.record.clone())?;
        f(&mut r);
        r.version += 1;
        Some((id, r))
    };
    let job_id = |j: usize| format!("j{j}");
    match c {
        Change::NodeDown(n) => {
            if let Some((id, r)) = node_with(s, *n, &|r| {
                r.liveness = NodeLiveness::Down;
                r.epoch += 1;
            }) {
                s.put_node(&id, Some(r), at, d);
            }
        }
        Change::NodeReregistered(n) => {
            if let Some((id, r)) = node_with(s, *n, &|r| r.epoch += 1) {
                s.put_node(&id, Some(r), at, d);
            }
        }
        Change::NodeDraining(n) => {
            if let Some((id, r)) = node_with(s, *n, &|r| r.draining = true) {
                s.put_node(&id, Some(r), at, d);
            }
        }
        Change::NodeRemoved(n) => s.put_node(&format!("n{n}"), None, at, d),
        Change::JobCancelled(j) | Change::JobRevoked(j) => {
            let id = job_id(*j);
            if let Some(mut r) = s.jobs.get(&id).map(|e| e.record.clone()) {
                r.state = match c {
                    Change::JobCancelled(_) => JobPhase::Cancelled,
                    _ => JobPhase::Revoked(2),
                };
                s.put_job(&id, Some((r, None)), at, d);
            }
        }
        Change::TaskEnded(j, i) | Change::TaskMoved(j, i, _) => {
            let id = job_id(*j);
            let Some(mut block) = s
                .jobs
                .get(&id)
                .and_then(|e| e.blocks.get(&0))
                .map(|b| b.block.clone())
            else {
                return;
            };
            let Some(t) = block.tasks.get_mut(*i as usize) else {
                return;
            };
            match c {
                Change::TaskMoved(_, _, n) => {
                    t.node = format!("n{n}");
                    t.attempt += 1;
                    t.node_epoch = s
                        .nodes
                        .get(&t.node)
                        .and_then(|e| e.record.as_ref())
                        .map_or(1, |r| r.epoch);
                }
                _ => t.state = v1::TaskState::Succeeded as i32,
            }
            s.put_block(&id, 0, Some(block), at, d);
        }
    }
}

fn sorted(t: SweepTasks) -> (Vec<String>, Vec<String>) {
    let mut lost: Vec<String> = t.lost.iter().map(|l| format!("{l:?}")).collect();
    let mut stops: Vec<String> = t.stops.iter().map(|s| format!("{s:?}")).collect();
    lost.sort();
    stops.sort();
    (lost, stops)
}

fn sweep(s: &RegionState, scope: &SweepScope) -> SweepTasks {
    let config = LivenessConfig::default();
    task_changes(s, &|_| 0, 0, scope, &config, 1_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_sweep_of_the_nodes_and_jobs_that_changed_finds_what_a_full_sweep_finds(
        (nodes, jobs, changes) in (2usize..6, prop::collection::vec(1u32..5, 1..5))
            .prop_flat_map(|(nodes, jobs)| {
                let n = jobs.len();
                (Just(nodes), Just(jobs), prop::collection::vec(change(nodes, n), 1..6))
            })
    ) {
        let (mut s, mut at) = settled(nodes, &jobs);
        prop_assert!(sweep(&s, &SweepScope::everything()).is_empty(), "nothing to do at first");
        let mut scope = SweepScope::default();
        for c in &changes {
            let mut d = Delta::default();
            apply(&mut s, c, stamp(at), &mut d);
            at += 1;
            scope.note(&d);
        }
        prop_assert!(!scope.all);
        prop_assert_eq!(
            sorted(sweep(&s, &scope)),
            sorted(sweep(&s, &SweepScope::everything()))
        );
    }
}

#[test]
fn a_reload_or_a_new_layout_owes_a_full_sweep_and_a_failed_sweep_is_owed_again() {
    let mut scope = SweepScope::default();
    assert!(scope.is_empty());
    scope.note(&Delta {
        jobs: ["j".to_string()].into(),
        ..Delta::default()
    });
    let taken = std::mem::take(&mut scope);
    scope.note(&Delta {
        nodes: ["n".to_string()].into(),
        ..Delta::default()
    });
    scope.merge(taken);
    assert_eq!(scope.jobs, ["j".to_string()].into());
    assert_eq!(scope.nodes, ["n".to_string()].into());
    scope.note(&Delta {
        reload: true,
        ..Delta::default()
    });
    assert!(scope.all && scope.nodes.is_empty() && scope.jobs.is_empty());
}

/// The liveness rule with each node's beat looked up by id: what the walk
/// of both ordered maps must decide.
fn liveness_by_lookup(
    s: &RegionState,
    beats: &BTreeMap<String, Beat>,
    shard: u32,
    now: Instant,
    config: &LivenessConfig,
) -> Vec<LivenessChange> {
    let mut out = Vec::new();
    for (_, node) in s.shard_nodes(shard) {
        if node.liveness == NodeLiveness::Down {
            continue;
        }
        let beat = beats.get(&node.node_id);
        let late = ms(now.saturating_duration_since(beat.map_or(Instant::ZERO, |b| b.at)));
        let to = config.judge(late, beat.map_or(0, |b| b.every_ms));
        if to != node.liveness {
            out.push(LivenessChange {
                node: node.node_id.clone(),
                epoch: node.epoch,
                from: node.liveness,
                to,
            });
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_liveness_walk_finds_every_nodes_beat_as_a_lookup_by_id_does(
        nodes in prop::collection::btree_map(
            "[a-c]{1,3}[0-9]{0,2}",
            (0u8..3, 0u32..3),
            1..40,
        ),
        beats in prop::collection::btree_map(
            "[a-d]{1,3}[0-9]{0,2}",
            (0u64..40_000, prop::sample::select(vec![0u64, 10_000])),
            0..50,
        ),
        now_ms in 0u64..60_000,
    ) {
        let mut s = RegionState::default();
        let mut d = Delta::default();
        for (i, (id, (liveness, _))) in nodes.iter().enumerate() {
            let mut n = node(id);
            n.liveness = [NodeLiveness::Ready, NodeLiveness::Suspect, NodeLiveness::Down]
                [usize::from(*liveness)];
            s.put_node(id, Some(n), stamp(i as u32 + 1), &mut d);
        }
        // Shards as the test chose them, so every shard has gaps in its ids.
        for (id, (_, shard)) in &nodes {
            if let Some(e) = s.nodes.get_mut(id) {
                e.shard = *shard;
            }
        }
        let beats: BTreeMap<String, Beat> = beats
            .into_iter()
            .map(|(id, (at, every_ms))| {
                (id, Beat { at: Instant::from_epoch(Duration::from_millis(at)), every_ms })
            })
            .collect();
        let now = Instant::from_epoch(Duration::from_millis(now_ms));
        let config = LivenessConfig::default();
        for shard in 0..3 {
            prop_assert_eq!(
                liveness_changes(&s, &beats, shard, Instant::ZERO, now, &config),
                liveness_by_lookup(&s, &beats, shard, now, &config)
            );
        }
    }
}
