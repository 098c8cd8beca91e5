//! The agent's metrics, read through a debugging recorder installed for
//! this test binary: a command from a deposed shard leader and one bound
//! under another node epoch are counted as fencing rejections, the accepted
//! ones as task starts.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeOptions, FakeRegion, attempt, run};
use meridian_agent::{AgentOptions, Host, NodeSpec, Probe};
use meridian_control::ManualClock;
use meridian_proto::v1::task_template::Kind;
use meridian_proto::v1::{RegionLossPolicy, Resources, Simulated, TaskState, TaskTemplate};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

fn simulated(ms: u64) -> TaskTemplate {
    TaskTemplate {
        kind: Some(Kind::Simulated(Simulated {
            duration_ms: ms,
            exit_code: 0,
        })),
    }
}

/// One counter series: `(name, labels, value)`.
type Series = (String, Vec<(String, String)>, u64);

/// One snapshot (taking it resets the counters).
fn counters(snapshotter: &Snapshotter) -> Vec<Series> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((
                key.key().name().to_string(),
                key.key()
                    .labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect(),
                n,
            )),
            _ => None,
        })
        .collect()
}

fn value(all: &[Series], name: &str, label: (&str, &str)) -> u64 {
    all.iter()
        .find(|(n, labels, _)| {
            n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1)
        })
        .map_or(0, |(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_under_a_stale_shard_or_node_epoch_count_as_fencing_rejections_and_accepted_runs_as_starts()
 {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let clock = ManualClock::new();
    let shared = clock.shared();
    let mut fake = FakeRegion::start(shared.clone(), FakeOptions::default()).await;
    let opts = AgentOptions {
        report_interval: Duration::ZERO,
        ..AgentOptions::default()
    };
    let base = NodeSpec {
        node_id: "sim".into(),
        allocatable: Resources::default(),
        labels: BTreeMap::new(),
        zone: String::new(),
        rack: String::new(),
    };
    let _host = Host::simulated(
        &fake.url(),
        &base,
        1,
        opts,
        shared.clone(),
        Arc::new(Probe::default()),
    )
    .expect("host");
    let node = "sim-000000";
    fake.wait_stream(node, 1).await;
    let epoch = fake.epoch_of(node);
    let hour = 3_600_000;
    // Index 1 comes from an older shard leader, index 3 was bound under a
    // node epoch the agent does not hold; 0 and 2 are current.
    for (index, shard_epoch, node_epoch) in [
        (0, 5, epoch),
        (1, 4, epoch),
        (3, 5, epoch + 1),
        (2, 5, epoch),
    ] {
        fake.send(
            node,
            run(
                attempt("j", index, 1),
                simulated(hour),
                node_epoch,
                shard_epoch,
                RegionLossPolicy::KeepRunning,
                0,
            ),
        )
        .await;
    }
    // Commands apply in stream order: once the last runs, all were seen.
    fake.wait_report(&attempt("j", 2, 1), |r| {
        r.state == TaskState::Running as i32
    })
    .await;

    let all = counters(&snapshotter);
    assert_eq!(
        value(
            &all,
            "meridian_agent_task_starts_total",
            ("outcome", "started")
        ),
        2
    );
    assert_eq!(
        value(
            &all,
            "meridian_agent_fencing_rejections_total",
            ("epoch", "shard")
        ),
        1
    );
    assert_eq!(
        value(
            &all,
            "meridian_agent_fencing_rejections_total",
            ("epoch", "node")
        ),
        1
    );
}
