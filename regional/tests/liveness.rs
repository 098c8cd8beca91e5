//! Node liveness and operator changes, driven by a manual clock: missed
//! heartbeats make a node SUSPECT, then DOWN after the grace; declaring it
//! DOWN moves its epoch before its tasks are placed again; a node that
//! keeps beating (through `Heartbeat` or the batched `HeartbeatNodes`) is
//! never declared dead; a new term counts every node as heard at its start;
//! exclusive tasks wait the documented extra time; cordon and drain through
//! `RegionAdmin` change the node and a drain stops its tasks, which are then
//! placed elsewhere.
//!
//! Heartbeats are kept in the leader's memory (`Beats`), not in the store:
//! the tests send them over gRPC to a served region (or, where the pace a
//! node was told matters, record them in the leader's `Beats` directly) and
//! assert on the node and task records the shard loop's sweep writes.

use crate::support;

use std::time::Duration;

use meridian_control::Clock;
use meridian_proto::v1;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use meridian_regional::agent::AgentApiConfig;
use meridian_regional::agent::stream::read_log;
use meridian_regional::fixture::Fixture;
use meridian_regional::jobs::simple_spec;
use meridian_regional::model::{NodeLiveness, NodeRecord, TaskBlock, decode};
use meridian_regional::placer::{PlacerConfig, ShardLoop};
use meridian_store::Mutation;
use support::{GIB, Region, admin_client, agent_client, report};
use tonic::transport::Channel;

type Agent = AgentLinkClient<Channel>;

/// Registers `node-a` and `node-b` at the start time.
async fn two_nodes(region: &Region) {
    for id in ["node-a", "node-b"] {
        region.register(id, "boot-1").await;
    }
}

/// A heartbeat of `node` at `epoch`, as its agent sends it; the region
/// must take it as current.
async fn heartbeat(agent: &mut Agent, node: &str, epoch: u64) {
    let answer = agent
        .heartbeat(v1::HeartbeatRequest {
            node_id: node.into(),
            node_epoch: epoch,
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(
        !answer.reregister,
        "{node} at epoch {epoch} is current: {answer:?}"
    );
}

/// One job of one task taking most of a node, so the two nodes are told apart.
async fn one_big_task(region: &Region, job: &str, exclusive: bool) {
    let mut spec = simple_spec("t", 1, 3_000, 6 * GIB);
    spec.exclusive = exclusive;
    region.insert(job, spec).await;
}

fn other(node: &str) -> &'static str {
    if node == "node-a" { "node-b" } else { "node-a" }
}

/// Advances the clock by `by`, has `alive` heartbeat, runs one round.
async fn step(region: &Region, lp: &mut ShardLoop, agent: &mut Agent, by: Duration, alive: &str) {
    region.clock.advance(by);
    heartbeat(agent, alive, 1).await;
    lp.round().await.expect("round");
}

async fn node(region: &Region, id: &str) -> NodeRecord {
    region.view().await.nodes[id].clone()
}

#[tokio::test]
async fn a_silent_node_turns_suspect_then_down_after_the_grace_and_its_epoch_moves_before_its_tasks_are_placed_again()
 {
    let (region, commits) = Region::recorded().await;
    two_nodes(&region).await;
    one_big_task(&region, "job-1", false).await;
    let mut lp = region.shard_loop(0).await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 1);
    let silent = region.task("job-1", 0).await.node;
    let alive = other(&silent);

    // Default timings: SUSPECT after 5 s without a heartbeat, DOWN after 15 s.
    step(&region, &mut lp, &mut agent, Duration::from_secs(6), alive).await;
    let n = node(&region, &silent).await;
    assert_eq!(n.liveness, NodeLiveness::Suspect);
    assert_eq!(n.epoch, 1, "suspicion alone does not fence the agent");
    let task = region.task("job-1", 0).await;
    assert!(
        task.is_bound() && task.node == silent,
        "a suspect keeps its tasks"
    );

    step(&region, &mut lp, &mut agent, Duration::from_secs(10), alive).await;
    let n = node(&region, &silent).await;
    assert_eq!(n.liveness, NodeLiveness::Down);
    assert_eq!(n.epoch, 2);
    step(&region, &mut lp, &mut agent, Duration::from_secs(1), alive).await;
    let task = region.task("job-1", 0).await;
    assert!(task.is_bound());
    assert_eq!((task.node.as_str(), task.attempt), (alive, 2));
    let a = node(&region, alive).await;
    assert_eq!(
        (a.liveness, a.epoch),
        (NodeLiveness::Ready, 1),
        "the node that kept beating is never suspected"
    );

    // Commit order: the epoch bump, then the task written off, then the new
    // binding.
    let node_key = region.keys.node(&silent);
    let block_key = region.keys.task_block("job-1", 0);
    let commits = commits.lock();
    let position = |what: &dyn Fn(&[u8], &[u8]) -> bool| {
        commits
            .iter()
            .position(|writes| {
                writes.iter().any(|m| match m {
                    Mutation::Set { key, value } => what(key, value),
                    _ => false,
                })
            })
            .expect("such a commit")
    };
    let fenced = position(&|k, v| {
        k == node_key.as_slice() && decode::<NodeRecord>("node", v).is_ok_and(|n| n.epoch == 2)
    });
    let written_off = position(&|k, v| {
        k == block_key.as_slice()
            && decode::<TaskBlock>("task block", v)
                .is_ok_and(|b| b.tasks[0].is_pending() && b.tasks[0].attempt == 1)
    });
    let rebound = position(&|k, v| {
        k == block_key.as_slice()
            && decode::<TaskBlock>("task block", v).is_ok_and(|b| b.tasks[0].attempt == 2)
    });
    assert!(
        fenced < written_off && written_off < rebound,
        "epoch bump #{fenced}, write-off #{written_off}, new binding #{rebound}"
    );
    let fence_commit = &commits[fenced];
    assert!(
        !fence_commit
            .iter()
            .any(|m| matches!(m, Mutation::Set { key, .. } if *key == block_key)),
        "the epoch bump commits on its own, before any task moves"
    );
}

#[tokio::test]
async fn a_node_beating_through_heartbeat_nodes_stays_ready_while_a_silent_one_goes_down_and_hears_of_its_new_epoch()
 {
    let region = Region::new().await;
    two_nodes(&region).await;
    let mut lp = region.shard_loop(0).await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    let beat = |node: &str, epoch: u64| v1::HeartbeatRequest {
        node_id: node.into(),
        node_epoch: epoch,
        ..Default::default()
    };

    // node-a beats every 4 s (inside the 5 s suspicion) for 40 s, in the
    // batched call of an agent process that hosts many nodes; node-b is
    // silent.
    for _ in 0..10 {
        region.clock.advance(Duration::from_secs(4));
        let answer = agent
            .heartbeat_nodes(v1::HeartbeatNodesRequest {
                nodes: vec![beat("node-a", 1)],
            })
            .await
            .expect("heartbeat nodes")
            .into_inner();
        let r = answer.results[0].response.as_ref().expect("an answer");
        assert!(!r.reregister);
        lp.round().await.expect("round");
        let a = node(&region, "node-a").await;
        assert_eq!((a.liveness, a.epoch), (NodeLiveness::Ready, 1));
    }
    let b = node(&region, "node-b").await;
    assert_eq!((b.liveness, b.epoch), (NodeLiveness::Down, 2));

    // node-b's agent comes back: its next heartbeat is told to register
    // again, under the epoch that fenced it.
    let answer = agent
        .heartbeat_nodes(v1::HeartbeatNodesRequest {
            nodes: vec![beat("node-a", 1), beat("node-b", 1)],
        })
        .await
        .expect("heartbeat nodes")
        .into_inner();
    let a = answer.results[0].response.as_ref().expect("an answer");
    let b = answer.results[1].response.as_ref().expect("an answer");
    assert!(!a.reregister);
    assert!(b.reregister);
    assert_eq!(b.current_node_epoch, 2);
}

#[tokio::test]
async fn a_new_term_counts_every_node_as_heard_at_its_start_and_declares_none_dead_before_it_had_time_to_hear_from_it()
 {
    let region = Region::new().await;
    two_nodes(&region).await;
    one_big_task(&region, "job-1", false).await;
    let mut old = region.shard_loop(0).await;
    assert_eq!(old.round().await.expect("round").outcome.bound.len(), 1);
    let placed = region.task("job-1", 0).await;

    // The leader goes away and nobody leads the shard for two hours, long
    // past its lease: no heartbeat is heard anywhere meanwhile.
    let long_ago = region.clock.now();
    region.clock.advance(Duration::from_secs(2 * 3600));
    let next = Fixture::open(
        region.db.clone(),
        "r1",
        1,
        region.shared_clock(),
        PlacerConfig::default(),
    )
    .await
    .expect("the next leader takes the shard");
    assert!(next.term(0).expect("term").epoch > region.term().epoch);
    // The next leader last heard node-a two hours ago (it led the shard
    // once before) and has never heard node-b.
    next.path.beats.beat("node-a", long_ago, 0);
    let mut lp = next.shard_loop(0).await.expect("shard loop");

    // Its first rounds judge nobody late: it counts every node as heard at
    // least when its term began.
    lp.round().await.expect("round");
    region.clock.advance(Duration::from_secs(4));
    lp.round().await.expect("round");
    for id in ["node-a", "node-b"] {
        let n = node(&region, id).await;
        assert_eq!((n.liveness, n.epoch), (NodeLiveness::Ready, 1), "{id}");
    }
    assert_eq!(
        region.task("job-1", 0).await,
        placed,
        "the task stays where it runs"
    );

    // From then on, it judges by what it hears: the node running the task
    // stays silent, the other beats to it.
    let silent = placed.node.as_str();
    let alive = other(silent);
    for (by, silent_is) in [(2, NodeLiveness::Suspect), (10, NodeLiveness::Down)] {
        region.clock.advance(Duration::from_secs(by));
        next.path.beats.beat(alive, next.clock.now(), 0);
        lp.round().await.expect("round");
        assert_eq!(node(&region, silent).await.liveness, silent_is);
        assert_eq!(node(&region, alive).await.liveness, NodeLiveness::Ready);
    }
    assert_eq!(node(&region, silent).await.epoch, 2);

    // The old term can no longer act on anything.
    let err = old.round().await.expect_err("the old term is over");
    assert!(err.is_fenced(), "{err}");
}

#[tokio::test]
async fn a_lost_task_of_an_exclusive_job_is_placed_again_only_after_the_exclusive_wait() {
    let region = Region::new().await;
    two_nodes(&region).await;
    one_big_task(&region, "job-x", true).await;
    let mut lp = region.shard_loop(0).await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 1);
    let silent = region.task("job-x", 0).await.node;
    let alive = other(&silent);

    step(&region, &mut lp, &mut agent, Duration::from_secs(16), alive).await;
    assert_eq!(node(&region, &silent).await.liveness, NodeLiveness::Down);
    let task = region.task("job-x", 0).await;
    assert!(task.is_pending());
    let declared_at = region.now_ms();
    assert_eq!(
        task.not_before,
        declared_at + 10_000,
        "exclusive_wait is 10 s"
    );

    // Rounds before the wait is over place nothing.
    for _ in 0..9 {
        step(&region, &mut lp, &mut agent, Duration::from_secs(1), alive).await;
        assert!(region.task("job-x", 0).await.is_pending());
    }
    step(&region, &mut lp, &mut agent, Duration::from_secs(1), alive).await;
    let task = region.task("job-x", 0).await;
    assert!(task.is_bound(), "placed once the wait is over: {task:?}");
    assert_eq!((task.node.as_str(), task.attempt), (alive, 2));
}

#[tokio::test]
async fn cordon_and_drain_through_region_admin_change_the_node_and_a_drain_stops_its_tasks_which_go_elsewhere()
 {
    let region = Region::new().await;
    two_nodes(&region).await;
    let mut lp = region.shard_loop(0).await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut admin = admin_client(addr).await;
    let mut agent = agent_client(addr).await;

    // A cordoned node gets nothing new.
    let cordoned = admin
        .cordon_node(v1::CordonNodeRequest {
            region: "r1".into(),
            node_id: "node-a".into(),
            reason: "maintenance".into(),
        })
        .await
        .expect("cordon")
        .into_inner()
        .node
        .expect("node");
    assert!(cordoned.cordoned && !cordoned.draining);
    assert_eq!(cordoned.cordon_reason, "maintenance");
    assert_eq!(node(&region, "node-a").await.version, 2, "version bumped");
    one_big_task(&region, "job-1", false).await;
    lp.round().await.expect("round");
    assert_eq!(region.task("job-1", 0).await.node, "node-b");
    admin
        .uncordon_node(v1::UncordonNodeRequest {
            region: "r1".into(),
            node_id: "node-a".into(),
        })
        .await
        .expect("uncordon");
    assert!(node(&region, "node-a").await.schedulable());

    // Draining node-b stops its task (grace capped by the deadline) ...
    let drained = admin
        .drain_node(v1::DrainNodeRequest {
            region: "r1".into(),
            node_id: "node-b".into(),
            reason: "kernel upgrade".into(),
            deadline_ms: 2_000,
        })
        .await
        .expect("drain")
        .into_inner()
        .node
        .expect("node");
    assert!(drained.cordoned && drained.draining);
    region.clock.advance(Duration::from_secs(1));
    for id in ["node-a", "node-b"] {
        heartbeat(&mut agent, id, 1).await;
    }
    lp.round().await.expect("round with a sweep");
    let task = region.task("job-1", 0).await;
    assert_eq!(task.stopping, "drain");
    let log = read_log(&region.db, &region.keys, "node-b", None)
        .await
        .expect("log");
    let (_, stop) = log.last().expect("a command");
    assert_eq!(stop.kind, v1::CommandKind::Stop as i32);
    assert_eq!((stop.reason.as_str(), stop.grace_ms), ("drain", 2_000));

    // ... and once the agent reports it KILLED, it is placed elsewhere.
    let answer = agent
        .report_task_status(v1::ReportTaskStatusRequest {
            node_id: "node-b".into(),
            node_epoch: 1,
            reports: vec![report("job-1", 0, 1, v1::TaskState::Killed)],
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(answer.results[0].verdict, v1::Verdict::Accepted as i32);
    assert!(region.task("job-1", 0).await.is_pending());
    region.clock.advance(Duration::from_secs(1));
    lp.round().await.expect("round");
    let task = region.task("job-1", 0).await;
    assert_eq!((task.node.as_str(), task.attempt), ("node-a", 2));
}

#[tokio::test]
async fn a_task_its_agent_stopped_on_its_own_while_the_job_stays_active_is_placed_again() {
    let region = Region::new().await;
    two_nodes(&region).await;
    let mut lp = region.shard_loop(0).await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    one_big_task(&region, "job-1", false).await;
    lp.round().await.expect("round");
    let first = region.task("job-1", 0).await;
    assert!(first.is_bound(), "placed: {first:?}");
    assert!(first.stopping.is_empty(), "the region asked for no stop");

    // The agent lost its region lease (a scheduler failover outlasted it)
    // and stopped the task itself; the job never left this region.
    let answer = agent
        .report_task_status(v1::ReportTaskStatusRequest {
            node_id: first.node.clone(),
            node_epoch: 1,
            reports: vec![report("job-1", 0, 1, v1::TaskState::Killed)],
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(answer.results[0].verdict, v1::Verdict::Accepted as i32);
    assert!(
        region.task("job-1", 0).await.is_pending(),
        "an agent-side stop does not end the task"
    );
    region.clock.advance(Duration::from_secs(1));
    for id in ["node-a", "node-b"] {
        heartbeat(&mut agent, id, 1).await;
    }
    lp.round().await.expect("round");
    let again = region.task("job-1", 0).await;
    assert!(again.is_bound(), "placed again: {again:?}");
    assert_eq!(again.attempt, 2);
}

#[tokio::test]
async fn a_node_told_to_beat_every_ten_seconds_is_judged_at_that_pace_not_the_base_one() {
    let region = Region::new().await;
    region.register("node-slow", "boot-1").await;
    region.register("node-base", "boot-1").await;
    // node-slow's last heartbeat was answered with a 10 s pace (a region
    // large enough to slow its agents down); node-base beats at the base.
    region
        .fx
        .path
        .beats
        .beat("node-slow", region.clock.now(), 10_000);
    let mut lp = region.shard_loop(0).await;

    // Both silent for 6 s: past the base 5 s, well inside three beats of 10 s.
    region.clock.advance(Duration::from_secs(6));
    lp.round().await.expect("round");
    assert_eq!(
        node(&region, "node-base").await.liveness,
        NodeLiveness::Suspect
    );
    assert_eq!(
        node(&region, "node-slow").await.liveness,
        NodeLiveness::Ready
    );

    // 31 s: three slow beats missed; not yet the further 10 s of grace.
    region.clock.advance(Duration::from_secs(25));
    lp.round().await.expect("round");
    assert_eq!(
        node(&region, "node-slow").await.liveness,
        NodeLiveness::Suspect
    );
    assert_eq!(
        node(&region, "node-base").await.liveness,
        NodeLiveness::Down
    );

    region.clock.advance(Duration::from_secs(10));
    lp.round().await.expect("round");
    let n = node(&region, "node-slow").await;
    assert_eq!((n.liveness, n.epoch), (NodeLiveness::Down, 2));
}

/// The silent node of an exclusive job's task declared DOWN: the task is
/// written off (pending at attempt 1, remembering the node), and the
/// silent node's agent registers again. Returns the silent node, the other
/// one, and the epoch the agent registered under.
async fn an_exclusive_task_written_off_with_its_node(
    region: &Region,
    lp: &mut ShardLoop,
    agent: &mut Agent,
) -> (String, &'static str, u64) {
    two_nodes(region).await;
    one_big_task(region, "job-x", true).await;
    assert_eq!(lp.round().await.expect("round").outcome.bound.len(), 1);
    let silent = region.task("job-x", 0).await.node;
    let alive = other(&silent);
    step(region, lp, agent, Duration::from_secs(16), alive).await;
    assert_eq!(node(region, &silent).await.liveness, NodeLiveness::Down);
    let task = region.task("job-x", 0).await;
    assert!(task.is_pending(), "written off: {task:?}");
    assert_eq!(
        (task.attempt, task.lost_node.as_str()),
        (1, silent.as_str())
    );
    assert_eq!(task.lost_node_epoch, 1);
    let back = region.register(&silent, "boot-1").await;
    assert!(back.epoch > 1, "a dead node registers under a new epoch");
    (silent, alive, back.epoch)
}

/// The end of attempt 1 of `job-x`, as the agent carries it across the
/// fence: it ran under node epoch 1.
fn carried_end(state: v1::TaskState) -> v1::TaskReport {
    v1::TaskReport {
        node_epoch: 1,
        started_at_unix_ms: 1_000,
        finished_at_unix_ms: 2_000,
        ..report("job-x", 0, 1, state)
    }
}

async fn send_carried(
    agent: &mut Agent,
    node: &str,
    epoch: u64,
    end: v1::TaskReport,
) -> v1::ReportTaskStatusResponse {
    agent
        .report_task_status(v1::ReportTaskStatusRequest {
            node_id: node.into(),
            node_epoch: epoch,
            reports: vec![end],
        })
        .await
        .expect("report")
        .into_inner()
}

/// The double run once seen under faults: an exclusive task finished, its
/// agent could not deliver the SUCCEEDED report before its node was
/// declared dead (a failover and a slow reconnect), dropped it at the
/// fence, and the task ran again as attempt 2. The agent now carries the
/// end across the fence, and the region applies it while the task has not
/// been placed again.
#[tokio::test]
async fn an_end_carried_across_a_fence_finishes_the_written_off_exclusive_task_which_never_runs_again()
 {
    let region = Region::new().await;
    let mut lp = region.shard_loop(0).await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    let (silent, alive, epoch) =
        an_exclusive_task_written_off_with_its_node(&region, &mut lp, &mut agent).await;

    let answer = send_carried(
        &mut agent,
        &silent,
        epoch,
        carried_end(v1::TaskState::Succeeded),
    )
    .await;
    assert_eq!(answer.verdict, v1::Verdict::Accepted as i32);
    assert_eq!(answer.results[0].verdict, v1::Verdict::Accepted as i32);
    let task = region.task("job-x", 0).await;
    assert_eq!(task.state(), v1::TaskState::Succeeded, "{task:?}");
    assert_eq!((task.attempt, task.node.as_str()), (1, silent.as_str()));
    assert_eq!(task.runs, 1, "the attempt's run time is accounted once");
    assert!(
        task.message
            .contains("reported after that epoch was superseded"),
        "the record says how it ended: {}",
        task.message
    );

    // Sent again (its answer lost): accepted without change.
    let again = send_carried(
        &mut agent,
        &silent,
        epoch,
        carried_end(v1::TaskState::Succeeded),
    )
    .await;
    assert_eq!(again.results[0].verdict, v1::Verdict::Accepted as i32);
    assert_eq!(region.task("job-x", 0).await, task);

    // Well past the exclusive wait, nothing places it again.
    for _ in 0..12 {
        step(&region, &mut lp, &mut agent, Duration::from_secs(1), alive).await;
        heartbeat(&mut agent, &silent, epoch).await;
    }
    let after = region.task("job-x", 0).await;
    assert_eq!(
        (after.state(), after.attempt),
        (v1::TaskState::Succeeded, 1)
    );
}

#[tokio::test]
async fn a_carried_end_is_refused_once_the_task_was_placed_again_and_a_carried_non_end_always() {
    let region = Region::new().await;
    let mut lp = region.shard_loop(0).await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    let (silent, alive, epoch) =
        an_exclusive_task_written_off_with_its_node(&region, &mut lp, &mut agent).await;

    // A stop the fence caused says nothing about how the attempt ended.
    for state in [v1::TaskState::Killed, v1::TaskState::Running] {
        let answer = send_carried(&mut agent, &silent, epoch, carried_end(state)).await;
        assert_eq!(answer.verdict, v1::Verdict::Accepted as i32);
        assert_eq!(
            answer.results[0].verdict,
            v1::Verdict::NotFound as i32,
            "{state:?} under a superseded epoch"
        );
        assert!(region.task("job-x", 0).await.is_pending());
    }

    // Past the exclusive wait the task is placed again, on the node that
    // kept beating; the end of attempt 1 arrives too late to matter.
    for _ in 0..11 {
        step(&region, &mut lp, &mut agent, Duration::from_secs(1), alive).await;
    }
    let placed = region.task("job-x", 0).await;
    assert!(placed.is_bound(), "{placed:?}");
    assert_eq!((placed.node.as_str(), placed.attempt), (alive, 2));
    assert!(
        placed.lost_node.is_empty(),
        "placing again forgets the lost attempt"
    );
    let late = send_carried(
        &mut agent,
        &silent,
        epoch,
        carried_end(v1::TaskState::Succeeded),
    )
    .await;
    assert_eq!(late.results[0].verdict, v1::Verdict::NotFound as i32);
    assert_eq!(region.task("job-x", 0).await, placed);
}
