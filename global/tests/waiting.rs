//! Every waiting job says why, over a real socket: a job no node of any
//! allowed region could ever run waits at the global tier with the nodes
//! counted by what keeps them out, and goes to a region as soon as one
//! reports a node that could run it; a region's own reason reaches the job
//! and is cleared once no task waits.

use crate::common;

use common::*;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn real_only(mut spec: JobSpec) -> JobSpec {
    spec.node_constraints.push(LabelRequirement {
        key: "real".into(),
        op: LabelOperator::In as i32,
        values: vec!["true".into()],
    });
    spec
}

fn class(real: &str, nodes: u32) -> NodeClass {
    NodeClass {
        labels: [("real".to_string(), real.to_string())]
            .into_iter()
            .collect(),
        nodes,
        max_allocatable: Some(Resources {
            cpu_millis: 4_000,
            memory_bytes: 1 << 34,
            ..Resources::default()
        }),
        gpu_types: Vec::new(),
    }
}

async fn report_classes(
    link: &mut RegionLinkClient<Channel>,
    region: &str,
    lease: u64,
    classes: Vec<NodeClass>,
) {
    let mut capacity = capacity();
    capacity.node_classes = classes;
    let out = link
        .report_capacity(ReportCapacityRequest {
            region: region.into(),
            region_lease_epoch: lease,
            capacity: Some(capacity),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.verdict, Verdict::Accepted as i32);
}

/// Follows `job`'s events until one shows it as `pred` wants; returns it.
/// The guard covers the whole wait: bookmarks keep a stream busy without
/// ever showing the job.
async fn await_job(
    client: &mut FederationClient<Channel>,
    job: &str,
    what: &str,
    pred: impl Fn(&Job) -> bool,
) -> Job {
    let mut stream = client
        .watch_jobs(WatchJobsRequest {
            job_ids: vec![job.to_string()],
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The event may have passed before the watch opened.
    let now = client
        .get_job(GetJobRequest { job_id: job.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    if pred(&now) {
        return now;
    }
    guarded(what, async {
        loop {
            let event = stream.next().await.unwrap().unwrap();
            if let Some(j) = event.job
                && pred(&j)
            {
                return j;
            }
        }
    })
    .await
}

/// Takes `region`'s lease without reporting any capacity: until the
/// first report the router counts no room there (and routes nothing to
/// it), where a report without node classes would let it route anything.
async fn register_without_capacity(link: &mut RegionLinkClient<Channel>, region: &str) -> u64 {
    let reg = link
        .register_region(RegisterRegionRequest {
            region: region.into(),
            replica: Some(ReplicaIdentity {
                replica_id: format!("{region}-0"),
                boot_id: format!("boot-{region}"),
                ..ReplicaIdentity::default()
            }),
            leader_epoch: 1,
            ..RegisterRegionRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.verdict, Verdict::Accepted as i32);
    reg.region_lease_epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_node_of_any_region_could_run_waits_pending_with_the_reason_until_one_could() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let mut client = h.federation().await;
    // Classes from the first report on: a pass that read the region
    // between a report without them and this one could route the job.
    let lease = register_without_capacity(&mut link, "r1").await;
    report_classes(&mut link, "r1", lease, vec![class("false", 600)]).await;
    let job = client
        .submit_job(submit("never", real_only(spec("t"))))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // A pass that read the region before its report may first record
    // that no region has room; the reason that counts is the one judged on
    // the classes.
    let never =
        "0/600 nodes of the allowed regions could ever run a task: 600 do not match real=true";
    let waiting = await_job(&mut client, &job, "the never-fits reason", |j| {
        j.waiting_reason == never
    })
    .await;
    assert_eq!(waiting.state, JobState::Pending as i32);
    assert_eq!(waiting.region, "");
    let listed = client
        .list_jobs(ListJobsRequest {
            tenant: "t".into(),
            ..ListJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs[0].waiting_reason, waiting.waiting_reason);
    let http = h.running.http_addr.expect("HTTP on");
    let (status, body) = common::http(http, "GET", &format!("/v1/jobs/{job}"), "").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["waiting_reason"].as_str(),
        Some(waiting.waiting_reason.as_str()),
        "{body}"
    );

    // A region with a node that could run it: routed there, reason gone.
    let lease2 = register(&mut link, "r2").await;
    report_classes(
        &mut link,
        "r2",
        lease2,
        vec![class("false", 5), class("true", 1)],
    )
    .await;
    let routed = await_job(&mut client, &job, "routing to r2", |j| j.region == "r2").await;
    assert_eq!(routed.state, JobState::Routed as i32);
    assert_eq!(routed.waiting_reason, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_s_waiting_reason_reaches_the_job_and_clears_once_no_task_waits() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let mut client = h.federation().await;
    let lease = register(&mut link, "r1").await;
    let mut stream = assignments(&mut link, "r1", lease).await;
    let job = client
        .submit_job(submit("waits", spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let assign = loop {
        let e = guarded("the assignment", stream.next())
            .await
            .unwrap()
            .unwrap();
        if e.kind == AssignmentEventKind::Assign as i32 {
            break e;
        }
    };
    let why = "0/3 nodes: 2 do not match zone=a, 1 have too little cpu";
    let report =
        |version: u64, state: JobState, counts: TaskCounts, reason: &str| ReportStatusRequest {
            region: "r1".into(),
            region_lease_epoch: lease,
            updates: vec![JobStatusUpdate {
                job_id: job.clone(),
                assignment_epoch: assign.assignment_epoch,
                status_version: version,
                state: state as i32,
                task_counts: Some(counts),
                waiting_reason: reason.into(),
                ..JobStatusUpdate::default()
            }],
        };
    let out = link
        .report_status(report(
            1,
            JobState::Routed,
            TaskCounts {
                pending: 2,
                ..TaskCounts::default()
            },
            why,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.results[0].verdict, Verdict::Accepted as i32);
    let waiting = await_job(&mut client, &job, "the region's reason", |j| {
        j.waiting_reason == why
    })
    .await;
    assert_eq!(waiting.region, "r1");

    link.report_status(report(
        2,
        JobState::Running,
        TaskCounts {
            running: 2,
            ..TaskCounts::default()
        },
        "",
    ))
    .await
    .unwrap();
    let running = await_job(&mut client, &job, "running", |j| {
        j.state == JobState::Running as i32
    })
    .await;
    assert_eq!(running.waiting_reason, "");
}
