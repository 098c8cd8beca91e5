//! Fence-first hand-off of jobs between regions, over real gRPC: the old
//! region's writes under the old epoch are refused from the revoking commit
//! on, the new region's are accepted, and never both.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

/// How often the live region of the failover test renews its lease.
const REGION_B_RENEWS_EVERY: Duration = Duration::from_millis(100);

async fn open(
    link: &mut RegionLinkClient<Channel>,
    region: &str,
    epoch: u64,
) -> Streaming<AssignmentEvent> {
    link.assignments(AssignmentsRequest {
        region: region.into(),
        region_lease_epoch: epoch,
        cursor: Vec::new(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// The next non-bookmark event.
async fn next(stream: &mut Streaming<AssignmentEvent>) -> AssignmentEvent {
    loop {
        let event = guarded("assignment event", stream.next())
            .await
            .unwrap()
            .unwrap();
        if event.kind != AssignmentEventKind::Bookmark as i32 {
            return event;
        }
    }
}

async fn ack(
    link: &mut RegionLinkClient<Channel>,
    region: &str,
    lease: u64,
    job: &str,
    epoch: u64,
) -> Verdict {
    let r = link
        .ack_assignments(AckAssignmentsRequest {
            region: region.into(),
            region_lease_epoch: lease,
            acks: vec![JobEpoch {
                job_id: job.into(),
                assignment_epoch: epoch,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    Verdict::try_from(r.results[0].verdict).unwrap()
}

async fn status(
    link: &mut RegionLinkClient<Channel>,
    region: &str,
    lease: u64,
    job: &str,
    epoch: u64,
    version: u64,
) -> Verdict {
    let r = link
        .report_status(ReportStatusRequest {
            region: region.into(),
            region_lease_epoch: lease,
            updates: vec![JobStatusUpdate {
                job_id: job.into(),
                assignment_epoch: epoch,
                status_version: version,
                state: JobState::Running as i32,
                ..JobStatusUpdate::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    Verdict::try_from(r.results[0].verdict).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_job_moves_from_a_to_b_only_b_is_accepted_and_never_both() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let mut api = h.federation().await;
    let lease_a = register(&mut link, "region-a").await;
    let lease_b = register(&mut link, "region-b").await;
    let mut s = spec("acme");
    s.allowed_regions = vec!["region-a".into(), "region-b".into()];
    s.preferred_regions = vec!["region-a".into()];
    let mut stream_a = open(&mut link, "region-a", lease_a).await;
    let job = api
        .submit_job(submit("move-me", s))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    let assign = next(&mut stream_a).await;
    assert_eq!(
        (assign.kind, assign.job_id.as_str()),
        (AssignmentEventKind::Assign as i32, job.as_str())
    );
    let old = assign.assignment_epoch;
    assert_eq!(
        ack(&mut link, "region-a", lease_a, &job, old).await,
        Verdict::Accepted
    );
    assert_eq!(
        status(&mut link, "region-a", lease_a, &job, old, 1).await,
        Verdict::Accepted
    );

    // A racer keeps reporting for A under the old epoch through the whole
    // hand-off; once the revocation is visible (its REVOKE event arrived, so
    // the revoking transaction has committed), none may be accepted.
    let drained = Arc::new(AtomicBool::new(false));
    let late_accepts = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (mut link, job, drained, late, stop) = (
            link.clone(),
            job.clone(),
            drained.clone(),
            late_accepts.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut version = 2;
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                let after_drain = drained.load(Ordering::SeqCst);
                let verdict = status(&mut link, "region-a", lease_a, &job, old, version).await;
                version += 1;
                sent += 1;
                if after_drain && verdict == Verdict::Accepted {
                    late.fetch_add(1, Ordering::SeqCst);
                }
            }
            sent
        })
    };
    api.drain_region(DrainRegionRequest {
        region: "region-a".into(),
        reason: "maintenance".into(),
        evacuate: true,
    })
    .await
    .unwrap();
    let revoke = next(&mut stream_a).await;
    drained.store(true, Ordering::SeqCst);
    assert_eq!(revoke.kind, AssignmentEventKind::Revoke as i32);
    let revoked = revoke.assignment_epoch;
    assert!(revoked > old, "the revocation carries a higher epoch");
    // Fenced from the revoking commit on: A's old-epoch writes are refused.
    assert_eq!(
        ack(&mut link, "region-a", lease_a, &job, old).await,
        Verdict::StaleEpoch
    );
    assert_eq!(
        status(&mut link, "region-a", lease_a, &job, old, 1_000_000).await,
        Verdict::StaleEpoch
    );
    // Not offered to B before A releases.
    let pending = api
        .get_job(GetJobRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        pending.region, "region-a",
        "still held by A until it releases"
    );

    let released = link
        .release_jobs(ReleaseJobsRequest {
            region: "region-a".into(),
            region_lease_epoch: lease_a,
            releases: vec![JobRelease {
                job_id: job.clone(),
                assignment_epoch: revoked,
                final_tasks: vec![],
                ..JobRelease::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.results[0].verdict, Verdict::Accepted as i32);

    let mut stream_b = open(&mut link, "region-b", lease_b).await;
    let assign_b = next(&mut stream_b).await;
    assert_eq!(
        (assign_b.kind, assign_b.job_id.as_str()),
        (AssignmentEventKind::Assign as i32, job.as_str())
    );
    let new = assign_b.assignment_epoch;
    assert!(new > revoked);
    assert_eq!(
        ack(&mut link, "region-b", lease_b, &job, new).await,
        Verdict::Accepted
    );
    assert_eq!(
        status(&mut link, "region-b", lease_b, &job, new, 1).await,
        Verdict::Accepted
    );
    assert_eq!(
        ack(&mut link, "region-a", lease_a, &job, old).await,
        Verdict::StaleEpoch
    );
    assert_eq!(
        status(&mut link, "region-a", lease_a, &job, old, 2_000_000).await,
        Verdict::StaleEpoch
    );
    // B may not present A's epoch either.
    assert_eq!(
        ack(&mut link, "region-b", lease_b, &job, old).await,
        Verdict::StaleEpoch
    );

    stop.store(true, Ordering::SeqCst);
    let sent = guarded("racer", racer).await.unwrap();
    assert!(sent > 0);
    assert_eq!(
        late_accepts.load(Ordering::SeqCst),
        0,
        "no old-epoch write accepted after the revoke"
    );

    let job = api
        .get_job(GetJobRequest { job_id: job })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.region, "region-b");
    assert_eq!(job.state, JobState::Running as i32);
    let reasons: Vec<&str> = job.history.iter().map(|t| t.reason.as_str()).collect();
    assert!(reasons.contains(&"released by region-a"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_region_loss_failover_jobs_move_and_keep_running_jobs_stay() {
    let h = Harness::start(|c| {
        c.region_lease = Duration::from_millis(400);
        c.skew_margin = Duration::from_millis(200);
    })
    .await;
    let mut link = h.link().await;
    let mut api = h.federation().await;
    let lease_a = register(&mut link, "region-a").await;
    let lease_b = register(&mut link, "region-b").await;
    // B keeps renewing; A will go silent.
    let renewer = {
        let mut link = link.clone();
        tokio::spawn(async move {
            // The renewal rate of a live region (a quarter of its 400 ms
            // lease): the behaviour of the fake region, not a wait.
            let mut ticker = tokio::time::interval(REGION_B_RENEWS_EVERY);
            loop {
                ticker.tick().await;
                let _ = link
                    .renew_region_lease(RenewRegionLeaseRequest {
                        region: "region-b".into(),
                        region_lease_epoch: lease_b,
                    })
                    .await;
            }
        })
    };
    let mut stream_a = open(&mut link, "region-a", lease_a).await;
    let mut stream_b = open(&mut link, "region-b", lease_b).await;
    let mut s = spec("acme");
    s.allowed_regions = vec!["region-a".into(), "region-b".into()];
    s.preferred_regions = vec!["region-a".into()];
    let mut keep = s.clone();
    keep.on_region_loss = RegionLossPolicy::KeepRunning as i32;
    let failover = api
        .submit_job(submit("fo", s))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let kept = api
        .submit_job(submit("kr", keep))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    for _ in 0..2 {
        let e = next(&mut stream_a).await;
        assert_eq!(
            ack(
                &mut link,
                "region-a",
                lease_a,
                &e.job_id,
                e.assignment_epoch
            )
            .await,
            Verdict::Accepted
        );
    }
    let moved = next(&mut stream_b).await;
    renewer.abort();
    assert_eq!(
        (moved.kind, moved.job_id.as_str()),
        (AssignmentEventKind::Assign as i32, failover.as_str())
    );
    let kept_job = api
        .get_job(GetJobRequest { job_id: kept })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        kept_job.region, "region-a",
        "keep_running jobs are not moved on region loss"
    );
    let fo_job = api
        .get_job(GetJobRequest {
            job_id: failover.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert!(fo_job.history.iter().any(|t| t.reason == "region lost"));
    // The lost region's late writes for the moved job are refused.
    let regions = api
        .list_regions(ListRegionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .regions;
    assert_eq!(regions[0].state, RegionState::Unreachable as i32);
    assert_eq!(
        ack(
            &mut link,
            "region-a",
            lease_a,
            &failover,
            fo_job.assignment_epoch - 2
        )
        .await,
        Verdict::StaleEpoch
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_with_a_superseded_region_lease_ends_with_failed_precondition() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let lease = register(&mut link, "region-a").await;
    let mut stream = open(&mut link, "region-a", lease).await;
    // Another replica of the region takes the lease over.
    let taken = link
        .register_region(RegisterRegionRequest {
            region: "region-a".into(),
            replica: Some(ReplicaIdentity {
                replica_id: "region-a-1".into(),
                boot_id: "b2".into(),
                ..ReplicaIdentity::default()
            }),
            leader_epoch: 2,
            ..RegisterRegionRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(taken.region_lease_epoch > lease);
    let end = guarded("stream end", async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return status,
                None => panic!("stream ended without a status"),
            }
        }
    })
    .await;
    assert_eq!(end.code(), tonic::Code::FailedPrecondition);
    let stale = link
        .ack_assignments(AckAssignmentsRequest {
            region: "region-a".into(),
            region_lease_epoch: lease,
            acks: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stale.verdict, Verdict::StaleEpoch as i32);
    // A deposed region leader cannot take the lease back.
    let back = link
        .register_region(RegisterRegionRequest {
            region: "region-a".into(),
            replica: Some(ReplicaIdentity {
                replica_id: "region-a-0".into(),
                boot_id: "boot-region-a".into(),
                ..ReplicaIdentity::default()
            }),
            leader_epoch: 1,
            ..RegisterRegionRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.verdict, Verdict::StaleEpoch as i32);
    let reopened = link
        .assignments(AssignmentsRequest {
            region: "region-a".into(),
            region_lease_epoch: lease,
            cursor: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(reopened.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn an_open_assignment_stream_ends_when_another_replica_takes_the_regions_lease() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let lease = register(&mut link, "region-a").await;
    let mut stream = open(&mut link, "region-a", lease).await;

    let taken = link
        .register_region(RegisterRegionRequest {
            region: "region-a".into(),
            replica: Some(ReplicaIdentity {
                replica_id: "region-a-1".into(),
                boot_id: "boot-region-a-1".into(),
                ..ReplicaIdentity::default()
            }),
            leader_epoch: 2,
            ..RegisterRegionRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(taken.verdict, Verdict::Accepted as i32);
    assert!(taken.region_lease_epoch > lease);

    // The old holder's stream learns it from the region record's watch,
    // not from a read before every batch.
    let end = guarded("the old stream's end", async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break status,
                None => panic!("the stream closed without saying why"),
            }
        }
    })
    .await;
    assert_eq!(end.code(), tonic::Code::FailedPrecondition, "{end:?}");
    assert!(end.message().contains("not current"), "{end:?}");
}
