//! A node reaches its shard's leader whichever replica of the region it was
//! given: it follows the `meridian-leader` hint of a replica that refuses its
//! stream, and a dead replica moves it to the next one it was given.
//!
//! Real time (the reconnect backoff is 100 ms at first); every wait is an
//! awaited event under a guard that only stops a hang.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeOptions, FakeRegion, attempt, run};
use meridian_agent::{AgentOptions, Host, NodeSpec, Probe};
use meridian_control::SystemClock;
use meridian_proto::v1::task_template::Kind;
use meridian_proto::v1::{RegionLossPolicy, Resources, Simulated, TaskState, TaskTemplate};

const GUARD: Duration = Duration::from_secs(30);

fn simulated(ms: u64) -> TaskTemplate {
    TaskTemplate {
        kind: Some(Kind::Simulated(Simulated {
            duration_ms: ms,
            exit_code: 0,
        })),
    }
}

fn base() -> NodeSpec {
    NodeSpec {
        node_id: "sim".into(),
        allocatable: Resources::default(),
        labels: BTreeMap::new(),
        zone: String::new(),
        rack: String::new(),
    }
}

/// Sends a RUN to `node` and waits for its RUNNING report.
async fn runs_a_task(fake: &mut FakeRegion, node: &str, job: &str) {
    let epoch = fake.epoch_of(node);
    let a = attempt(job, 0, 1);
    fake.send(
        node,
        run(
            a.clone(),
            simulated(3_600_000),
            epoch,
            1,
            RegionLossPolicy::KeepRunning,
            0,
        ),
    )
    .await;
    fake.wait_report(&a, |r| r.state == TaskState::Running as i32)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_given_a_replica_that_does_not_lead_its_shard_follows_the_hint_and_runs_its_task() {
    let clock = SystemClock::shared();
    let mut fake = FakeRegion::start(clock.clone(), FakeOptions::default()).await;
    let leader = fake.add_replica().await;
    fake.set_stream_leader(&leader);
    let probe = Arc::new(Probe::default());
    // Given only the replica that does not lead.
    let host = Host::simulated(
        &fake.url(),
        &base(),
        1,
        AgentOptions::default(),
        clock,
        probe.clone(),
    )
    .expect("host");
    let node = "sim-000000";
    tokio::time::timeout(GUARD, fake.wait_stream(node, 1))
        .await
        .expect("the node opened its stream on the shard leader");
    assert!(
        fake.refusals(&fake.url()) >= 1,
        "the given replica refused the stream"
    );
    assert!(probe.snapshot().redirects >= 1);
    runs_a_task(&mut fake, node, "hinted").await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_replica_dies_moves_to_the_next_given_replica_and_keeps_receiving_commands() {
    let clock = SystemClock::shared();
    let mut fake = FakeRegion::start(clock.clone(), FakeOptions::default()).await;
    let second = fake.add_replica().await;
    let probe = Arc::new(Probe::default());
    let host = Host::simulated(
        &format!("{},{second}", fake.url()),
        &base(),
        1,
        AgentOptions::default(),
        clock,
        probe.clone(),
    )
    .expect("host");
    let node = "sim-000000";
    tokio::time::timeout(GUARD, fake.wait_stream(node, 1))
        .await
        .expect("the node opened its stream on the first replica");
    runs_a_task(&mut fake, node, "before").await;

    // The first replica dies for good; only the second is left to serve.
    fake.stop().await;
    tokio::time::timeout(GUARD, fake.wait_stream(node, 1))
        .await
        .expect("the node opened its stream on the second replica");
    tokio::time::timeout(GUARD, probe.wait_for(|p| p.sessions >= 2))
        .await
        .expect("a second session started");
    runs_a_task(&mut fake, node, "after").await;
    host.shutdown().await;
}
