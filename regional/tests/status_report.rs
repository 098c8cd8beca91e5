//! The link's status reports against a fake global tier on a real socket:
//! task state changes (placement, then agents' reports through the write
//! pipeline) go up as they commit, not at the next catch-up, and a job
//! whose final state the global tier accepted is forgotten by the region,
//! while one it refused stays.

use crate::support;

use std::pin::Pin;
use std::time::Duration;

use meridian_proto::v1;
use meridian_proto::v1::region_link_server::RegionLink;
use meridian_regional::jobs::{Applied, insert_job, simple_spec};
use support::link::{accept, start_link};
use support::{GIB, Region, report};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Debug)]
enum Seen {
    Ack,
    Capacity(Vec<v1::NodeClass>),
    Status(String, i32),
    Waiting(String, String),
}

/// Assigns `jobs` (one task of `cpu` millis each) at epoch 1 and answers
/// everything, but
/// refuses the final status of `refuse_final` as STALE_EPOCH, and never
/// answers a capacity report when `hold_capacity` is set.
struct FakeGlobal {
    jobs: Vec<String>,
    cpu: u64,
    refuse_final: String,
    hold_capacity: bool,
    seen: mpsc::UnboundedSender<Seen>,
}

fn ok() -> i32 {
    v1::Verdict::Accepted as i32
}

type Events = Pin<Box<dyn Stream<Item = Result<v1::AssignmentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RegionLink for FakeGlobal {
    async fn check_console_token(
        &self,
        _request: Request<v1::CheckConsoleTokenRequest>,
    ) -> Result<Response<v1::CheckConsoleTokenResponse>, Status> {
        Err(Status::unimplemented(
            "this test's global tier checks no tokens",
        ))
    }

    async fn register_region(
        &self,
        _: Request<v1::RegisterRegionRequest>,
    ) -> Result<Response<v1::RegisterRegionResponse>, Status> {
        Ok(accept::registered(60_000))
    }

    async fn renew_region_lease(
        &self,
        _: Request<v1::RenewRegionLeaseRequest>,
    ) -> Result<Response<v1::RenewRegionLeaseResponse>, Status> {
        Ok(accept::renewed(60_000))
    }

    type AssignmentsStream = Events;

    async fn assignments(
        &self,
        request: Request<v1::AssignmentsRequest>,
    ) -> Result<Response<Events>, Status> {
        let after = request.into_inner().cursor;
        let events: Vec<Result<v1::AssignmentEvent, Status>> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, job)| v1::AssignmentEvent {
                cursor: (i as u64 + 1).to_be_bytes().to_vec(),
                kind: v1::AssignmentEventKind::Assign as i32,
                job_id: job.clone(),
                assignment_epoch: 1,
                spec: Some(simple_spec("t", 1, self.cpu, GIB)),
                request_id: format!("req-{job}"),
                ..Default::default()
            })
            .filter(|e| after.is_empty() || e.cursor > after)
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(
            tokio_stream::iter(events),
            futures::stream::pending(),
        ))))
    }

    async fn ack_assignments(
        &self,
        request: Request<v1::AckAssignmentsRequest>,
    ) -> Result<Response<v1::AckAssignmentsResponse>, Status> {
        let acks = request.into_inner().acks;
        for _ in &acks {
            let _ = self.seen.send(Seen::Ack);
        }
        Ok(Response::new(v1::AckAssignmentsResponse {
            verdict: ok(),
            current_epoch: 1,
            results: accept::items(acks.len()),
        }))
    }

    async fn report_status(
        &self,
        request: Request<v1::ReportStatusRequest>,
    ) -> Result<Response<v1::ReportStatusResponse>, Status> {
        let mut results = Vec::new();
        for u in request.into_inner().updates {
            let _ = self.seen.send(Seen::Status(u.job_id.clone(), u.state));
            if !u.waiting_reason.is_empty() {
                let _ = self
                    .seen
                    .send(Seen::Waiting(u.job_id.clone(), u.waiting_reason.clone()));
            }
            let refused =
                u.job_id == self.refuse_final && u.state == v1::JobState::Succeeded as i32;
            results.push(v1::ItemResult {
                verdict: if refused {
                    v1::Verdict::StaleEpoch as i32
                } else {
                    ok()
                },
                current_epoch: if refused { 2 } else { 1 },
                message: String::new(),
            });
        }
        Ok(Response::new(v1::ReportStatusResponse {
            verdict: ok(),
            current_epoch: 1,
            results,
        }))
    }

    async fn report_capacity(
        &self,
        request: Request<v1::ReportCapacityRequest>,
    ) -> Result<Response<v1::ReportCapacityResponse>, Status> {
        let classes = request
            .into_inner()
            .capacity
            .map(|c| c.node_classes)
            .unwrap_or_default();
        let _ = self.seen.send(Seen::Capacity(classes));
        if self.hold_capacity {
            futures::future::pending::<()>().await;
        }
        Ok(accept::capacity())
    }

    async fn release_jobs(
        &self,
        _: Request<v1::ReleaseJobsRequest>,
    ) -> Result<Response<v1::ReleaseJobsResponse>, Status> {
        Err(Status::unimplemented("no job is revoked in this test"))
    }
}

/// Node `n1`'s agent reports task 0 of `job` (bound to it) in `state`,
/// through the write pipeline as the agent API submits it.
async fn set_task(region: &Region, job: &str, state: v1::TaskState) {
    let task = region.task(job, 0).await;
    assert_eq!(task.node, "n1", "{job}'s task is bound to n1");
    let results = region
        .report_as(
            "n1",
            task.node_epoch,
            vec![report(job, 0, task.attempt, state)],
        )
        .await;
    assert_eq!(
        results.iter().map(|r| r.verdict).collect::<Vec<_>>(),
        vec![v1::Verdict::Accepted as i32],
        "{job}: {state:?} accepted"
    );
}

/// Waits until `jobs` assignments were acknowledged and a capacity report
/// was sent.
async fn await_intake(seen: &mut mpsc::UnboundedReceiver<Seen>, jobs: usize) {
    let (mut acks, mut capacity) = (0, false);
    while acks < jobs || !capacity {
        match seen.recv().await.expect("fake global open") {
            Seen::Ack => acks += 1,
            Seen::Capacity(_) => capacity = true,
            Seen::Status(..) | Seen::Waiting(..) => {}
        }
    }
}

/// Waits until every `(job, state)` in `want` was reported.
async fn await_statuses(seen: &mut mpsc::UnboundedReceiver<Seen>, want: &[(&str, v1::JobState)]) {
    let mut missing: Vec<(String, i32)> = want
        .iter()
        .map(|(j, s)| (j.to_string(), *s as i32))
        .collect();
    while !missing.is_empty() {
        if let Seen::Status(job, state) = seen.recv().await.expect("fake global open") {
            missing.retain(|m| *m != (job.clone(), state));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_state_changes_go_up_as_they_commit_and_an_accepted_final_state_retires_the_job() {
    let region = Region::new().await;
    // One node, room for every job's task: placement binds them there.
    region.register("n1", "boot-1").await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let fake = FakeGlobal {
        jobs: vec!["job-a".into(), "job-b".into(), "job-c".into()],
        cpu: 500,
        refuse_final: "job-b".into(),
        hold_capacity: false,
        seen: seen_tx,
    };
    // One catch-up and one capacity report when the session starts, the
    // next an hour later: whatever arrives in between came by the fast path.
    let (stop, link) = start_link(&region, fake, Duration::from_secs(3600)).await;

    let guard = Duration::from_secs(60);
    tokio::time::timeout(guard, await_intake(&mut seen, 3))
        .await
        .expect("the jobs taken in and the first capacity report sent");

    // The shard leader places the three jobs' tasks on n1.
    let mut placer = region.shard_loop(0).await;
    assert_eq!(placer.round().await.expect("round").outcome.bound.len(), 3);
    tokio::time::timeout(
        guard,
        await_statuses(
            &mut seen,
            &[
                ("job-a", v1::JobState::Placed),
                ("job-b", v1::JobState::Placed),
                ("job-c", v1::JobState::Placed),
            ],
        ),
    )
    .await
    .expect("PLACED reported without waiting for the next catch-up");

    for job in ["job-a", "job-b"] {
        set_task(&region, job, v1::TaskState::Running).await;
    }
    tokio::time::timeout(
        guard,
        await_statuses(
            &mut seen,
            &[
                ("job-a", v1::JobState::Running),
                ("job-b", v1::JobState::Running),
            ],
        ),
    )
    .await
    .expect("RUNNING reported without waiting for the next catch-up");

    for job in ["job-a", "job-b"] {
        set_task(&region, job, v1::TaskState::Succeeded).await;
    }
    tokio::time::timeout(
        guard,
        await_statuses(
            &mut seen,
            &[
                ("job-a", v1::JobState::Succeeded),
                ("job-b", v1::JobState::Succeeded),
            ],
        ),
    )
    .await
    .expect("SUCCEEDED reported");

    // Job-a's answer is recorded: it is retired.
    let digest_of = |state: v1::TaskState| {
        let mut counts = [0u32; 9];
        counts[state as usize] = 1;
        format!(
            "\"digest\":{}",
            serde_json::to_string(&counts).expect("json")
        )
    };
    // The value of `key` once it exists and contains `want`.
    let stored = |key: Vec<u8>, want: String| {
        let db = region.db.clone();
        async move {
            loop {
                let (value, watch) = db
                    .run(|tx, _| {
                        let key = key.clone();
                        async move {
                            Ok::<_, meridian_store::StoreError>((
                                tx.get(&key).await?,
                                tx.watch(&key)?,
                            ))
                        }
                    })
                    .await
                    .expect("read");
                if let Some(v) = value
                    && String::from_utf8_lossy(&v).contains(&want)
                {
                    return v;
                }
                let _ = watch.await;
            }
        }
    };
    tokio::time::timeout(guard, stored(region.keys.retired("job-a"), String::new()))
        .await
        .expect("job-a retired");
    // One reporter sends one batch at a time: once a later change of job-c
    // is recorded, job-b's refused answer has been handled too.
    set_task(&region, "job-c", v1::TaskState::Running).await;
    tokio::time::timeout(
        guard,
        stored(
            region.keys.job_status("job-c"),
            digest_of(v1::TaskState::Running),
        ),
    )
    .await
    .expect("job-c's report recorded");
    let b_status = tokio::time::timeout(
        guard,
        stored(
            region.keys.job_status("job-b"),
            digest_of(v1::TaskState::Running),
        ),
    )
    .await
    .expect("job-b's RUNNING was recorded earlier");
    assert!(
        !String::from_utf8_lossy(&b_status).contains(&digest_of(v1::TaskState::Succeeded)),
        "a refused final state is not recorded as reported, so the next catch-up sends it again"
    );
    let _ = stop.send(());
    link.await.expect("link task");

    let view = region.view().await;
    assert!(
        !view.jobs.contains_key("job-a"),
        "the job whose final state was accepted is forgotten"
    );
    assert!(
        !view.blocks.keys().any(|(j, _)| j == "job-a"),
        "with its task blocks"
    );
    assert!(
        view.jobs.contains_key("job-b"),
        "the job whose final state was refused stays"
    );

    let replay = |epoch: u64| {
        let region = &region;
        async move {
            insert_job(
                &region.fx.path.pipeline,
                "job-a",
                epoch,
                &simple_spec("t", 1, 500, GIB),
                region.now_ms(),
            )
            .await
            .expect("insert")
        }
    };
    assert_eq!(
        replay(1).await,
        Applied::Unchanged,
        "a replayed ASSIGN of the retired epoch does not bring the job back"
    );
    assert_eq!(
        replay(2).await,
        Applied::Changed,
        "a newer epoch is a new hold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_report_the_global_tier_never_answers_holds_back_no_task_status() {
    let region = Region::new().await;
    region.register("n1", "boot-1").await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let fake = FakeGlobal {
        jobs: vec!["job-a".into()],
        cpu: 500,
        refuse_final: String::new(),
        hold_capacity: true,
        seen: seen_tx,
    };
    let (stop, link) = start_link(&region, fake, Duration::from_secs(3600)).await;

    let guard = Duration::from_secs(60);
    tokio::time::timeout(guard, await_intake(&mut seen, 1))
        .await
        .expect("the job taken in and a capacity report sent");

    // The capacity call is still out, and stays out: the task's changes go
    // up beside it.
    let mut placer = region.shard_loop(0).await;
    assert_eq!(placer.round().await.expect("round").outcome.bound.len(), 1);
    tokio::time::timeout(
        guard,
        await_statuses(&mut seen, &[("job-a", v1::JobState::Placed)]),
    )
    .await
    .expect("PLACED reported while a capacity report is unanswered");
    set_task(&region, "job-a", v1::TaskState::Running).await;
    tokio::time::timeout(
        guard,
        await_statuses(&mut seen, &[("job-a", v1::JobState::Running)]),
    )
    .await
    .expect("RUNNING reported while a capacity report is unanswered");

    let _ = stop.send(());
    let _ = link.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_placer_cannot_place_goes_up_with_why_and_the_node_classes_with_capacity() {
    let region = Region::new().await;
    region.register("n1", "boot-1").await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    // Twice the node's 4 cores: no node can ever take it.
    let fake = FakeGlobal {
        jobs: vec!["job-big".into()],
        cpu: 8_000,
        refuse_final: String::new(),
        hold_capacity: false,
        seen: seen_tx,
    };
    let (stop, link) = start_link(&region, fake, Duration::from_secs(3600)).await;
    let guard = Duration::from_secs(60);
    let classes = tokio::time::timeout(guard, async {
        let (mut acked, mut classes) = (false, None);
        while !acked || classes.is_none() {
            match seen.recv().await.expect("fake global open") {
                Seen::Ack => acked = true,
                Seen::Capacity(c) => classes = Some(c),
                Seen::Status(..) | Seen::Waiting(..) => {}
            }
        }
        classes.unwrap_or_default()
    })
    .await
    .expect("the job taken in and a capacity report sent");
    assert_eq!(classes.len(), 1, "{classes:?}");
    assert_eq!(classes[0].nodes, 1);
    assert_eq!(
        classes[0].max_allocatable.as_ref().map(|r| r.cpu_millis),
        Some(4_000)
    );

    // One round finds no node for it: the reason goes up at once.
    let mut placer = region.shard_loop(0).await;
    let round = placer.round().await.expect("round");
    assert_eq!(round.unschedulable, 1, "{round:?}");
    let why = tokio::time::timeout(guard, async {
        loop {
            if let Seen::Waiting(job, why) = seen.recv().await.expect("fake global open") {
                break (job, why);
            }
        }
    })
    .await
    .expect("the waiting reason reported without waiting for the next catch-up");
    assert_eq!(
        why,
        (
            "job-big".to_string(),
            "0/1 nodes: 1 have too little cpu".to_string()
        )
    );
    let _ = stop.send(());
    link.await.expect("link task");
}
