//! The link to the global tier against a fake `RegionLink` server over real
//! gRPC: duplicated and reordered assignment events change nothing, an ASSIGN
//! acknowledged STALE_EPOCH is dropped like a revoke, revoked jobs with no
//! bound task are released, and a reconnecting link resumes the stream from
//! its persisted cursor instead of re-listing. The stale acknowledgement is
//! counted as a fencing rejection (a debugging recorder is installed by
//! that test). An ASSIGN the region cannot take is failed upward and does
//! not hold up the events behind it.

use crate::support;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::v1;
use meridian_proto::v1::region_link_server::RegionLink;
use meridian_regional::jobs::simple_spec;
use meridian_regional::model::JobPhase;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use parking_lot::Mutex;
use support::link::{accept, start_link};
use support::{GIB, Region};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// What the fake global tier saw.
#[derive(Debug)]
enum Seen {
    /// An `Assignments` call, with its cursor.
    Opened(Vec<u8>),
    Ack(String, u64),
    Release(String, u64),
    /// A job reported FAILED, with its reason.
    Failed(String, String),
}

struct FakeGlobal {
    events: Vec<v1::AssignmentEvent>,
    /// Jobs whose ack is answered STALE_EPOCH with current epoch 2.
    stale_acks: Vec<String>,
    seen: mpsc::UnboundedSender<Seen>,
    opened: Arc<Mutex<u32>>,
}

fn ok() -> i32 {
    v1::Verdict::Accepted as i32
}

fn cursor(i: u64) -> Vec<u8> {
    i.to_be_bytes().to_vec()
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
        Ok(accept::registered(10_000))
    }

    async fn renew_region_lease(
        &self,
        _: Request<v1::RenewRegionLeaseRequest>,
    ) -> Result<Response<v1::RenewRegionLeaseResponse>, Status> {
        Ok(accept::renewed(10_000))
    }

    type AssignmentsStream = Events;

    async fn assignments(
        &self,
        request: Request<v1::AssignmentsRequest>,
    ) -> Result<Response<Events>, Status> {
        let after = request.into_inner().cursor;
        let _ = self.seen.send(Seen::Opened(after.clone()));
        let first = {
            let mut opened = self.opened.lock();
            *opened += 1;
            *opened == 1
        };
        let events: Vec<Result<v1::AssignmentEvent, Status>> = self
            .events
            .iter()
            .filter(|e| after.is_empty() || e.cursor > after)
            .cloned()
            .map(Ok)
            .collect();
        let stream = tokio_stream::iter(events);
        if first {
            // The first stream ends after its events: the link reconnects.
            Ok(Response::new(Box::pin(stream)))
        } else {
            Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(
                stream,
                futures::stream::pending(),
            ))))
        }
    }

    async fn ack_assignments(
        &self,
        request: Request<v1::AckAssignmentsRequest>,
    ) -> Result<Response<v1::AckAssignmentsResponse>, Status> {
        let mut results = Vec::new();
        for a in request.into_inner().acks {
            let _ = self
                .seen
                .send(Seen::Ack(a.job_id.clone(), a.assignment_epoch));
            results.push(if self.stale_acks.contains(&a.job_id) {
                v1::ItemResult {
                    verdict: v1::Verdict::StaleEpoch as i32,
                    current_epoch: 2,
                    message: String::new(),
                }
            } else {
                v1::ItemResult {
                    verdict: ok(),
                    ..Default::default()
                }
            });
        }
        Ok(Response::new(v1::AckAssignmentsResponse {
            verdict: ok(),
            current_epoch: 1,
            results,
        }))
    }

    async fn report_status(
        &self,
        request: Request<v1::ReportStatusRequest>,
    ) -> Result<Response<v1::ReportStatusResponse>, Status> {
        let updates = request.into_inner().updates;
        for u in &updates {
            if u.state == v1::JobState::Failed as i32 {
                let _ = self
                    .seen
                    .send(Seen::Failed(u.job_id.clone(), u.failure_reason.clone()));
            }
        }
        let n = updates.len();
        Ok(Response::new(v1::ReportStatusResponse {
            verdict: ok(),
            current_epoch: 1,
            results: accept::items(n),
        }))
    }

    async fn report_capacity(
        &self,
        _: Request<v1::ReportCapacityRequest>,
    ) -> Result<Response<v1::ReportCapacityResponse>, Status> {
        Ok(accept::capacity())
    }

    async fn release_jobs(
        &self,
        request: Request<v1::ReleaseJobsRequest>,
    ) -> Result<Response<v1::ReleaseJobsResponse>, Status> {
        let releases = request.into_inner().releases;
        for r in &releases {
            let _ = self
                .seen
                .send(Seen::Release(r.job_id.clone(), r.assignment_epoch));
        }
        Ok(Response::new(v1::ReleaseJobsResponse {
            verdict: ok(),
            current_epoch: 1,
            results: accept::items(releases.len()),
        }))
    }
}

fn event(
    i: u64,
    kind: v1::AssignmentEventKind,
    job: &str,
    epoch: u64,
    tasks: u32,
) -> v1::AssignmentEvent {
    v1::AssignmentEvent {
        cursor: cursor(i),
        kind: kind as i32,
        job_id: job.into(),
        assignment_epoch: epoch,
        spec: (kind == v1::AssignmentEventKind::Assign).then(|| simple_spec("t", tasks, 500, GIB)),
        request_id: format!("req-{job}"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_events_change_nothing_stale_acks_and_revokes_are_released_and_the_stream_resumes_from_its_cursor()
 {
    use v1::AssignmentEventKind::{Assign, Cancel, Revoke};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let region = Region::new().await;
    let events = vec![
        event(1, Assign, "job-1", 2, 3),
        event(2, Assign, "job-1", 2, 3),
        // Reordered: an older epoch's ASSIGN and CANCEL arrive late.
        event(3, Assign, "job-1", 1, 5),
        event(4, Cancel, "job-1", 1, 0),
        event(5, Assign, "job-2", 1, 1),
        event(6, Assign, "job-3", 1, 2),
        event(7, Revoke, "job-3", 2, 0),
    ];
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let fake = FakeGlobal {
        events,
        stale_acks: vec!["job-2".into()],
        seen: seen_tx,
        opened: Arc::default(),
    };
    let (stop, link) = start_link(&region, fake, Duration::from_millis(50)).await;

    let mut opened = Vec::new();
    let mut acks = Vec::new();
    let mut releases = Vec::new();
    let guard = tokio::time::timeout(Duration::from_secs(30), async {
        while opened.len() < 2 || releases.len() < 2 {
            match seen.recv().await.expect("fake open") {
                Seen::Opened(c) => opened.push(c),
                Seen::Ack(j, e) => acks.push((j, e)),
                Seen::Release(j, e) => {
                    if !releases.contains(&(j.clone(), e)) {
                        releases.push((j, e));
                    }
                }
                Seen::Failed(..) => {}
            }
        }
    });
    guard.await.expect("the link converged in time");
    // The region marks a job released after the answer: await that write
    // (memory follows the pipeline's commits).
    let state = region.fx.path.state.clone();
    let watcher = state.subscribe();
    let released = async {
        loop {
            let done = {
                let s = state.read();
                ["job-2", "job-3"].iter().all(|j| {
                    s.jobs
                        .get(*j)
                        .is_some_and(|e| matches!(e.record.state, JobPhase::Released(_)))
                })
            };
            if done {
                return;
            }
            watcher.changed().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), released)
        .await
        .expect("released in time");
    let _ = stop.send(());
    link.await.expect("link task");

    assert_eq!(opened[0], Vec::<u8>::new(), "first open: from the start");
    assert_eq!(
        opened[1],
        cursor(7),
        "reconnect resumes after the last event"
    );
    let first_pass: Vec<(String, u64)> = acks.iter().take(5).cloned().collect();
    assert_eq!(
        first_pass,
        vec![
            ("job-1".to_string(), 2),
            ("job-1".to_string(), 2),
            ("job-1".to_string(), 1),
            ("job-2".to_string(), 1),
            ("job-3".to_string(), 1),
        ],
        "every ASSIGN is acknowledged once it is durable, duplicates too"
    );
    releases.sort();
    assert_eq!(
        releases,
        vec![("job-2".to_string(), 2), ("job-3".to_string(), 2)],
        "the stale-acked job and the revoked one are released at the newer epoch"
    );

    let view = region.view().await;
    let job1 = &view.jobs["job-1"];
    assert_eq!(job1.assignment_epoch, 2);
    assert_eq!(
        job1.state,
        JobPhase::Active,
        "the old epoch's CANCEL is ignored"
    );
    assert_eq!(job1.task_count, 3, "the old epoch's ASSIGN changed nothing");
    let tasks: usize = view
        .blocks
        .iter()
        .filter(|((j, _), _)| j == "job-1")
        .map(|(_, b)| b.tasks.len())
        .sum();
    assert_eq!(tasks, 3);
    assert!(
        view.blocks
            .iter()
            .filter(|((j, _), _)| j == "job-1")
            .flat_map(|(_, b)| b.tasks.iter())
            .all(|t| t.is_pending()),
        "job-1's tasks wait for a node"
    );
    assert!(
        state.read().pending_jobs.contains("job-1"),
        "and the replica's memory queues job-1 for placement"
    );
    let job3: Vec<i32> = view
        .blocks
        .iter()
        .filter(|((j, _), _)| j == "job-3")
        .flat_map(|(_, b)| b.tasks.iter().map(|t| t.state))
        .collect();
    assert_eq!(
        job3,
        vec![v1::TaskState::Killed as i32; 2],
        "the revoked job's pending tasks ended KILLED"
    );
    assert_eq!(view.jobs["job-2"].state, JobPhase::Released(2));
    assert_eq!(view.jobs["job-3"].state, JobPhase::Released(2));

    let rejections = |epoch: &str| -> u64 {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n)
                    if key.key().name() == "meridian_regional_fencing_rejections_total"
                        && key
                            .key()
                            .labels()
                            .any(|l| l.key() == "epoch" && l.value() == epoch) =>
                {
                    Some(n)
                }
                _ => None,
            })
            .unwrap_or(0)
    };
    assert_eq!(
        rejections("assignment"),
        1,
        "job-2's acknowledgement, answered STALE_EPOCH once, is one rejection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_the_region_cannot_take_is_failed_upward_and_the_ones_behind_it_are_taken() {
    use v1::AssignmentEventKind::Assign;
    let region = Region::new().await;
    // No task at all: the region's conversion refuses it.
    let events = vec![
        event(1, Assign, "job-bad", 1, 0),
        event(2, Assign, "job-good", 1, 2),
    ];
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let fake = FakeGlobal {
        events,
        stale_acks: Vec::new(),
        seen: seen_tx,
        opened: Arc::default(),
    };
    let (stop, link) = start_link(&region, fake, Duration::from_millis(50)).await;

    let (mut failed, mut acks) = (Vec::new(), Vec::new());
    let guard = tokio::time::timeout(Duration::from_secs(30), async {
        while failed.is_empty() || acks.is_empty() {
            match seen.recv().await.expect("fake open") {
                Seen::Failed(j, why) => failed.push((j, why)),
                Seen::Ack(j, e) => acks.push((j, e)),
                _ => {}
            }
        }
    });
    guard
        .await
        .expect("the link reported and acknowledged in time");
    let _ = stop.send(());
    link.await.expect("link task");

    assert_eq!(failed[0].0, "job-bad");
    assert!(
        failed[0].1.contains("region r1 cannot run this job") && failed[0].1.contains("task_count"),
        "{}",
        failed[0].1
    );
    assert_eq!(acks[0], ("job-good".to_string(), 1));
    assert!(!acks.iter().any(|(j, _)| j == "job-bad"));
    let view = region.view().await;
    assert!(view.jobs.contains_key("job-good"));
    assert!(!view.jobs.contains_key("job-bad"));
}
