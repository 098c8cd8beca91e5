//! The region's agent-facing metrics, read through a debugging recorder
//! installed for this test binary: calls under a superseded node epoch are
//! counted as fencing rejections (`epoch="node"`) and as `stale_epoch`
//! agent calls, while calls under the current epoch are not. One test per
//! binary: the recorder is the process's.

use crate::support;

use meridian_proto::v1;
use meridian_regional::agent::AgentApiConfig;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{Region, agent_client, registration, report};

/// One counter series: `(name, labels, value)`.
type Series = (String, Vec<(String, String)>, u64);

/// One snapshot of the counters (taking it resets them).
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

/// The value of the series `name` with exactly `labels`, 0 when absent.
fn value(all: &[Series], name: &str, labels: &[(&str, &str)]) -> u64 {
    all.iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map_or(0, |(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_under_a_superseded_node_epoch_count_as_fencing_rejections_and_current_ones_do_not() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let region = Region::new().await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    let old = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register")
        .into_inner()
        .node_epoch;
    // A reboot supersedes the first registration's epoch.
    let new = agent
        .register(registration("node-a", "boot-2"))
        .await
        .expect("register after a reboot")
        .into_inner()
        .node_epoch;
    assert!(new > old);

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
    let before = counters(&snapshotter);
    assert_eq!(
        value(
            &before,
            "meridian_regional_fencing_rejections_total",
            &[("epoch", "node")]
        ),
        0,
        "a current heartbeat is not a rejection"
    );
    assert_eq!(
        value(
            &before,
            "meridian_regional_agent_calls_total",
            &[("call", "heartbeat"), ("outcome", "ok")]
        ),
        1
    );

    let stale = agent
        .heartbeat(v1::HeartbeatRequest {
            node_id: "node-a".into(),
            node_epoch: old,
            ..Default::default()
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(stale.reregister);
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
    let refused = agent
        .assignments(v1::NodeAssignmentsRequest {
            node_id: "node-a".into(),
            node_epoch: old,
            cursor: Vec::new(),
        })
        .await
        .expect_err("a stream under the old epoch is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let after = counters(&snapshotter);
    assert_eq!(
        value(
            &after,
            "meridian_regional_fencing_rejections_total",
            &[("epoch", "node")]
        ),
        3,
        "the stale heartbeat, report and stream are each refused once"
    );
    for call in ["heartbeat", "report", "assignments"] {
        assert_eq!(
            value(
                &after,
                "meridian_regional_agent_calls_total",
                &[("call", call), ("outcome", "stale_epoch")]
            ),
            1,
            "{call}"
        );
    }
    assert_eq!(
        value(
            &after,
            "meridian_regional_task_reports_total",
            &[("state", "running")]
        ),
        0,
        "a refused report's tasks are not counted as starts"
    );
}
