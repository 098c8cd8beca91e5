//! Changes to a job still queued at the global tier, over real sockets:
//! a held job is not routed until released, a priority raised while queued
//! makes the router take that job first and reaches the region with the
//! job, a job already routed refuses both with FAILED_PRECONDITION, the
//! HTTP routes answer as the gRPC calls do, and holds and dependency waits
//! are in the store, so a new leader keeps them. Every wait is on a watch
//! stream.

use crate::common;

use std::time::Duration;

use common::*;
use meridian_global::GlobalConfig;
use meridian_global::server::start_with;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::job_dependency::Target;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Follows `job`'s events until one shows it as `pred` wants; returns it.
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
    let now = get(client, job).await;
    if pred(&now) {
        return now;
    }
    loop {
        let event = guarded(what, stream.next()).await.unwrap().unwrap();
        if let Some(j) = event.job
            && pred(&j)
        {
            return j;
        }
    }
}

async fn get(client: &mut FederationClient<Channel>, job: &str) -> Job {
    client
        .get_job(GetJobRequest { job_id: job.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn submit_job(client: &mut FederationClient<Channel>, id: &str, s: JobSpec) -> String {
    client
        .submit_job(submit(id, s))
        .await
        .unwrap()
        .into_inner()
        .job_id
}

async fn hold(client: &mut FederationClient<Channel>, job: &str, reason: &str) -> Job {
    client
        .hold_job(HoldJobRequest {
            job_id: job.into(),
            reason: reason.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn release(client: &mut FederationClient<Channel>, job: &str) -> Job {
    client
        .release_job(ReleaseJobRequest { job_id: job.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

fn routed(j: &Job) -> bool {
    j.state == JobState::Routed as i32
}

/// Registers `region` with room for `cpu_millis` in all; returns its lease.
async fn register_with(link: &mut RegionLinkClient<Channel>, region: &str, cpu_millis: u64) -> u64 {
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
    let mut room = capacity();
    room.cpu_millis_allocatable = cpu_millis;
    let cap = link
        .report_capacity(ReportCapacityRequest {
            region: region.into(),
            region_lease_epoch: reg.region_lease_epoch,
            capacity: Some(room),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.verdict, Verdict::Accepted as i32);
    reg.region_lease_epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_job_is_not_routed_until_released_and_watchers_see_the_hold() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    // No region yet: the job stays pending while it is held.
    let held = submit_job(&mut client, "held", spec("t")).await;
    let mut events = client
        .watch_jobs(WatchJobsRequest {
            job_ids: vec![held.clone()],
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let answer = hold(&mut client, &held, "waiting for the data").await;
    assert!(answer.held);
    assert_eq!(answer.hold_reason, "waiting for the data");
    assert_eq!(answer.waiting_reason, "held");
    let seen = guarded("the hold's event", async {
        loop {
            let event = events.next().await.unwrap().unwrap();
            if event.job.as_ref().is_some_and(|j| j.held) {
                return event;
            }
        }
    })
    .await;
    assert_eq!(seen.kind, JobEventKind::Updated as i32);
    // Held twice is still held once.
    assert!(hold(&mut client, &held, "again").await.held);

    let mut link = h.link().await;
    register(&mut link, "r1").await;
    let other = submit_job(&mut client, "other", spec("t")).await;
    await_job(&mut client, &other, "the other job routed", routed).await;
    // The pass that routed the later job passed the held one over.
    let still = get(&mut client, &held).await;
    assert_eq!(still.state, JobState::Pending as i32);
    assert_eq!(still.waiting_reason, "held");

    let released = release(&mut client, &held).await;
    assert!(!released.held);
    assert_eq!(released.hold_reason, "");
    let done = await_job(&mut client, &held, "the released job routed", routed).await;
    assert_eq!(done.region, "r1");

    // A routed job refuses a hold and a priority change; releasing a job
    // that is not held changes nothing.
    let refused = client
        .hold_job(HoldJobRequest {
            job_id: other.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains(&format!("job {other} is ROUTED in region r1")),
        "{}",
        refused.message()
    );
    let refused = client
        .set_job_priority(SetJobPriorityRequest {
            job_id: other.clone(),
            priority: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(!release(&mut client, &other).await.held);
    // Bad requests name the field; unknown jobs are NOT_FOUND.
    let bad = client
        .hold_job(HoldJobRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("job_id:"), "{}", bad.message());
    let long = client
        .hold_job(HoldJobRequest {
            job_id: held.clone(),
            reason: "x".repeat(2000),
        })
        .await
        .unwrap_err();
    assert!(long.message().starts_with("reason:"), "{}", long.message());
    let missing = client
        .release_job(ReleaseJobRequest {
            job_id: "j0000000001-000000000777".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_raised_while_queued_makes_the_router_take_that_job_first() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    // Both wait for a region; submitted first, `early` would go first.
    let early = submit_job(&mut client, "early", spec("t")).await;
    let late = submit_job(&mut client, "late", spec("t")).await;
    let raised = client
        .set_job_priority(SetJobPriorityRequest {
            job_id: late.clone(),
            priority: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(raised.priority, Some(10));
    assert_eq!(
        raised.spec.unwrap().priority,
        0,
        "the spec stays as submitted"
    );
    // Room for one job of two 500-millicore tasks, not for two.
    let mut link = h.link().await;
    let lease = register_with(&mut link, "r1", 1_500).await;
    await_job(&mut client, &late, "the raised job routed", routed).await;
    let waiting = get(&mut client, &early).await;
    assert_eq!(waiting.state, JobState::Pending as i32);
    // The region is given the priority the router used, for its own queue.
    let mut stream = assignments(&mut link, "r1", lease).await;
    let assign = guarded("the ASSIGN event", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(assign.job_id, late);
    assert_eq!(assign.spec.unwrap().priority, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_release_and_priority_over_http_answer_as_the_grpc_calls_do() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let addr = h.running.http_addr.unwrap();
    let job = submit_job(&mut client, "j", spec("t")).await;
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap();

    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/jobs/{job}/hold"),
        r#"{"reason":"r"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["job"]["held"], true);
    assert_eq!(json(&body)["job"]["hold_reason"], "r");
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/jobs/{job}/priority"),
        r#"{"priority":7}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["job"]["priority"], 7);
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/jobs/{job}/priority"),
        r#"{"priority":"high"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["field"], "priority");
    let (status, body) = http(addr, "POST", &format!("/v1/jobs/{job}/release"), "{}").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        json(&body)["job"].get("held").is_none(),
        "false is omitted: {body}"
    );
    let (status, body) = http(addr, "POST", "/v1/jobs/j0000000001-000000000777/hold", "{}").await;
    assert_eq!(status, 404, "{body}");

    let mut link = h.link().await;
    register(&mut link, "r1").await;
    await_job(&mut client, &job, "routed", routed).await;
    let (status, body) = http(addr, "POST", &format!("/v1/jobs/{job}/hold"), "{}").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(json(&body)["code"], "FailedPrecondition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_and_dependency_waits_are_kept_by_a_new_leader() {
    let Harness { running, dir } = Harness::start(|_| {}).await;
    let mut client = FederationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap();
    let a = submit_job(&mut client, "a", spec("t")).await;
    let mut dependent = spec("t");
    dependent.dependencies = vec![JobDependency {
        condition: DependencyCondition::AfterOk as i32,
        target: Some(Target::JobId(a.clone())),
    }];
    let b = submit_job(&mut client, "b", dependent).await;
    let held = submit_job(&mut client, "held", spec("t")).await;
    hold(&mut client, &held, "").await;
    client
        .set_job_priority(SetJobPriorityRequest {
            job_id: held.clone(),
            priority: 3,
        })
        .await
        .unwrap();

    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.name = "replica-2".into();
    config.controller_every = Duration::from_millis(20);
    let db = meridian_store::open(&url).await.unwrap();
    let second = start_with(config, db, meridian_control::SystemClock::shared())
        .await
        .unwrap();
    // The first leader steps down and gives its lease up.
    running.shutdown().await;
    guarded("the second replica leads", second.wait_leader()).await;
    let mut client = FederationClient::connect(format!("http://{}", second.grpc_addr))
        .await
        .unwrap();
    let mut link = RegionLinkClient::connect(format!("http://{}", second.grpc_addr))
        .await
        .unwrap();
    let lease = register(&mut link, "r1").await;
    let a_routed = await_job(&mut client, &a, "a routed by the new leader", routed).await;
    let still = get(&mut client, &held).await;
    assert!(still.held);
    assert_eq!(still.priority, Some(3));
    assert_eq!(still.state, JobState::Pending as i32);
    let waiting = get(&mut client, &b).await;
    assert_eq!(
        waiting.waiting_reason,
        format!("waits for job {a} to succeed")
    );
    assert_eq!(waiting.state, JobState::Pending as i32);

    let out = link
        .report_status(ReportStatusRequest {
            region: "r1".into(),
            region_lease_epoch: lease,
            updates: vec![JobStatusUpdate {
                job_id: a.clone(),
                assignment_epoch: a_routed.assignment_epoch,
                status_version: 1,
                state: JobState::Succeeded as i32,
                ..JobStatusUpdate::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.results[0].verdict, Verdict::Accepted as i32);
    await_job(&mut client, &b, "b routed by the new leader", routed).await;
    release(&mut client, &held).await;
    await_job(&mut client, &held, "the released job routed", routed).await;
    second.shutdown().await;
}
