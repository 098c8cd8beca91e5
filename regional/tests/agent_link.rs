//! The `AgentLink` service over real gRPC: registration and node epochs,
//! stale epochs answered so the agent re-registers, the resumable assignment
//! stream, the rate bound on status reports and the heartbeat budget.

use crate::support;

use meridian_proto::v1;
use meridian_regional::agent::AgentApiConfig;
use meridian_regional::jobs::simple_spec;
use meridian_regional::shard::Leading;
use support::{GIB, Region, agent_client, registration, report};
use tokio_stream::StreamExt;

/// Ends the open assignment streams that must not go on, as the server does
/// beside its agent API (on every change of memory).
fn prune_streams(region: &Region, leading: &Leading) {
    tokio::spawn(region.fx.path.streams.clone().keep_pruned(
        region.fx.path.state.clone(),
        leading.clone(),
        region.shared_clock(),
    ));
}

#[tokio::test]
async fn registering_again_with_the_same_boot_id_keeps_the_epoch_and_a_new_boot_id_gets_a_higher_one()
 {
    let (region, log) = Region::recorded().await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;

    let first = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(first.region, "r1");
    assert_eq!(first.shard_id, 0);
    let commits = log.lock().len();
    let retry = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register again")
        .into_inner();
    assert_eq!(
        retry.node_epoch, first.node_epoch,
        "a retry keeps the epoch"
    );
    assert_eq!(log.lock().len(), commits, "a retry writes nothing");

    let rebooted = agent
        .register(registration("node-a", "boot-2"))
        .await
        .expect("register after a reboot")
        .into_inner();
    assert!(rebooted.node_epoch > first.node_epoch);
}

#[tokio::test]
async fn a_stale_node_epoch_is_told_to_reregister_and_its_open_assignment_stream_ends_failed_precondition()
 {
    let region = Region::new().await;
    let (addr, leading) = region.serve(AgentApiConfig::default()).await;
    prune_streams(&region, &leading);
    let mut agent = agent_client(addr).await;
    let old = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register")
        .into_inner()
        .node_epoch;
    let mut stream = agent
        .assignments(v1::NodeAssignmentsRequest {
            node_id: "node-a".into(),
            node_epoch: old,
            cursor: Vec::new(),
        })
        .await
        .expect("open the stream")
        .into_inner();
    let bookmark = stream.next().await.expect("a message").expect("ok");
    assert_eq!(bookmark.kind, v1::CommandKind::Bookmark as i32);

    // The node comes back with a new boot: its old epoch is superseded.
    let new = agent
        .register(registration("node-a", "boot-2"))
        .await
        .expect("register")
        .into_inner()
        .node_epoch;
    assert!(new > old);

    // A guard only: the stream ends as soon as memory has the new epoch.
    let end = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
        .await
        .expect("the stream ended in time")
        .expect("the stream ends with a status");
    let status = end.expect_err("an error, not a command");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);

    let hb = agent
        .heartbeat(v1::HeartbeatRequest {
            node_id: "node-a".into(),
            node_epoch: old,
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(hb.reregister);
    assert_eq!(hb.current_node_epoch, new);

    let rep = agent
        .report_task_status(v1::ReportTaskStatusRequest {
            node_id: "node-a".into(),
            node_epoch: old,
            reports: vec![report("job-x", 0, 1, v1::TaskState::Running)],
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(rep.verdict, v1::Verdict::StaleEpoch as i32);
    assert_eq!(rep.current_epoch, new);

    // A stream opened with the old epoch is refused outright.
    let refused = agent
        .assignments(v1::NodeAssignmentsRequest {
            node_id: "node-a".into(),
            node_epoch: old,
            cursor: Vec::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let current = agent
        .heartbeat(v1::HeartbeatRequest {
            node_id: "node-a".into(),
            node_epoch: new,
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!current.reregister);
}

#[tokio::test]
async fn the_assignment_stream_resumes_from_a_cursor_without_resending_acknowledged_commands() {
    let region = Region::new().await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    let epoch = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register")
        .into_inner()
        .node_epoch;
    let mut placer = region.shard_loop(0).await;
    region
        .insert("job-1", simple_spec("t", 2, 500, GIB / 4))
        .await;
    let bound = placer.round().await.expect("round").outcome.bound.len();
    assert_eq!(bound, 2);

    let open = |cursor: Vec<u8>| {
        let mut agent = agent.clone();
        async move {
            agent
                .assignments(v1::NodeAssignmentsRequest {
                    node_id: "node-a".into(),
                    node_epoch: epoch,
                    cursor,
                })
                .await
                .expect("open")
                .into_inner()
        }
    };
    let mut first = open(Vec::new()).await;
    let mut runs = Vec::new();
    let bookmark = loop {
        let cmd = first.next().await.expect("message").expect("ok");
        if cmd.kind == v1::CommandKind::Bookmark as i32 {
            break cmd;
        }
        assert_eq!(cmd.kind, v1::CommandKind::Run as i32);
        assert!(cmd.template.is_some(), "a RUN carries the task template");
        runs.push(cmd);
    };
    assert_eq!(runs.len(), 2, "the snapshot holds both bindings");
    assert!(
        !bookmark.cursor.is_empty(),
        "the bookmark marks the log's head"
    );
    // The agent acknowledged everything up to the bookmark.
    let acked = bookmark.cursor.clone();
    drop(first);

    region
        .insert("job-2", simple_spec("t", 1, 500, GIB / 4))
        .await;
    assert_eq!(placer.round().await.expect("round").outcome.bound.len(), 1);

    let mut resumed = open(acked.clone()).await;
    let next = resumed.next().await.expect("message").expect("ok");
    assert_eq!(next.kind, v1::CommandKind::Run as i32);
    assert!(next.template.is_some(), "a RUN carries the task template");
    let task = next.task.and_then(|a| a.task).expect("task");
    assert_eq!(
        (task.job_id.as_str(), task.index),
        ("job-2", 0),
        "only the command after the acknowledged cursor is sent"
    );
    assert!(next.cursor > acked);

    // Commands committed later follow on the resumed stream, once each.
    region
        .insert("job-3", simple_spec("t", 1, 500, GIB / 4))
        .await;
    assert_eq!(placer.round().await.expect("round").outcome.bound.len(), 1);
    let live = resumed.next().await.expect("message").expect("ok");
    assert_eq!(live.kind, v1::CommandKind::Run as i32);
    let task = live.task.and_then(|a| a.task).expect("task");
    assert_eq!(
        (task.job_id.as_str(), task.index),
        ("job-3", 0),
        "the next command is the new one, not job-2's again"
    );
    assert!(live.cursor > next.cursor);
}

#[tokio::test]
async fn status_reports_past_the_nodes_bucket_are_answered_resource_exhausted_until_it_refills() {
    let region = Region::new().await;
    let config = AgentApiConfig {
        reports_per_second: 2,
        ..AgentApiConfig::default()
    };
    let (addr, _) = region.serve(config).await;
    let mut agent = agent_client(addr).await;
    let epoch = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register")
        .into_inner()
        .node_epoch;
    let call = || {
        let mut agent = agent.clone();
        async move {
            agent
                .report_task_status(v1::ReportTaskStatusRequest {
                    node_id: "node-a".into(),
                    node_epoch: epoch,
                    reports: Vec::new(),
                })
                .await
        }
    };
    // The bucket holds twice the rate; the clock does not move.
    for i in 0..4 {
        call().await.unwrap_or_else(|e| panic!("call {i}: {e}"));
    }
    let refused = call().await.expect_err("over the rate");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);

    region.clock.advance(std::time::Duration::from_millis(500));
    call().await.expect("one token back after half a second");
    assert_eq!(
        call().await.expect_err("empty again").code(),
        tonic::Code::ResourceExhausted
    );
}

#[tokio::test]
async fn a_region_past_its_heartbeat_budget_tells_its_nodes_to_beat_more_slowly() {
    let region = Region::new().await;
    let config = AgentApiConfig {
        max_heartbeats_per_second: 4,
        ..AgentApiConfig::default()
    };
    let (addr, _) = region.serve(config).await;
    let mut agent = agent_client(addr).await;
    let first = agent
        .register(registration("node-0", "boot-1"))
        .await
        .expect("register")
        .into_inner();
    assert_eq!(first.heartbeat_interval_ms, 1_000, "one node: the base");
    for i in 1..20 {
        agent
            .register(registration(&format!("node-{i}"), "boot-1"))
            .await
            .expect("register");
    }
    // The count is the replica's memory of its nodes: no wait.
    let beat = agent
        .heartbeat(v1::HeartbeatRequest {
            node_id: "node-0".into(),
            node_epoch: first.node_epoch,
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!beat.reregister);
    assert_eq!(
        beat.heartbeat_interval_ms, 5_000,
        "20 nodes at 4 beats/s: every 5 s"
    );
    let again = agent
        .register(registration("node-0", "boot-1"))
        .await
        .expect("register again")
        .into_inner();
    assert_eq!(again.heartbeat_interval_ms, 5_000);
    assert!(again.node_timeout_ms >= 15_000, "{}", again.node_timeout_ms);
}
