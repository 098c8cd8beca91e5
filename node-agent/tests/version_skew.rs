//! An agent of a newer build than its region: the replica answers the
//! host-level calls UNIMPLEMENTED, and every node does its work through
//! its own calls, as agents of the older build did.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeOptions, FakeRegion, attempt, run};
use meridian_agent::{AgentOptions, Host, NodeSpec, Probe};
use meridian_control::ManualClock;
use meridian_proto::v1::task_template::Kind;
use meridian_proto::v1::{RegionLossPolicy, Resources, Simulated, TaskState, TaskTemplate};

/// Bounds each wait on the agent, so a broken fallback fails the test with
/// the calls served so far instead of hanging it.
const GUARD: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_a_newer_agent_register_run_report_and_beat_on_a_region_that_serves_only_per_node_calls()
 {
    let clock = ManualClock::new();
    let shared = clock.shared();
    let mut fake = FakeRegion::start(
        shared.clone(),
        FakeOptions {
            heartbeat_interval_ms: 1_000,
            per_node_calls_only: true,
            ..FakeOptions::default()
        },
    )
    .await;
    let spec = NodeSpec {
        node_id: "sim".into(),
        allocatable: Resources::default(),
        labels: BTreeMap::new(),
        zone: String::new(),
        rack: String::new(),
    };
    let opts = AgentOptions {
        report_interval: Duration::ZERO,
        ..AgentOptions::default()
    };
    let _host = Host::simulated(
        &fake.url(),
        &spec,
        3,
        opts,
        shared.clone(),
        Arc::new(Probe::default()),
    )
    .expect("host");
    for i in 0..3 {
        let node = format!("sim-{i:06}");
        tokio::time::timeout(GUARD, fake.wait_stream(&node, 1))
            .await
            .unwrap_or_else(|_| panic!("{node} has no stream after {GUARD:?}: {:?}", fake.calls()));
    }

    let node = "sim-000001";
    let task = attempt("j", 0, 1);
    let hour = TaskTemplate {
        kind: Some(Kind::Simulated(Simulated {
            duration_ms: 3_600_000,
            exit_code: 0,
        })),
    };
    let run = run(
        task.clone(),
        hour,
        fake.epoch_of(node),
        1,
        RegionLossPolicy::KeepRunning,
        0,
    );
    fake.send(node, run).await;
    fake.wait_report(&task, |r| r.state == TaskState::Running as i32)
        .await;

    fake.hold_heartbeats(true);
    clock.advance(Duration::from_secs(4));
    tokio::time::timeout(GUARD, fake.wait_held_heartbeats(1))
        .await
        .unwrap_or_else(|_| panic!("no heartbeat after {GUARD:?}: {:?}", fake.calls()));
    fake.hold_heartbeats(false);

    let calls = fake.calls();
    assert_eq!(
        calls.get("register"),
        Some(&3),
        "one registration per node: {calls:?}"
    );
    assert_eq!(
        calls.get("assignments"),
        Some(&3),
        "one stream per node: {calls:?}"
    );
    assert!(
        calls.get("report_task_status").is_some_and(|&n| n >= 1),
        "{calls:?}"
    );
    assert!(calls.get("heartbeat").is_some_and(|&n| n >= 1), "{calls:?}");
    for host_level in [
        "register_nodes",
        "host_assignments",
        "report_nodes",
        "heartbeat_nodes",
    ] {
        assert_eq!(
            calls.get(host_level),
            None,
            "{host_level} is not served: {calls:?}"
        );
    }
}
