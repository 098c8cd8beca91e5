//! The link when the global tier has trimmed its assignment log past the
//! region's cursor, against a fake `RegionLink` server over real gRPC: the
//! stream opened from the old cursor ends OUT_OF_RANGE, the link stores an
//! empty cursor and opens again from it, and the snapshot it gets brings
//! every ASSIGN, CANCEL and REVOKE the trimmed events held, so the region
//! misses none of them.

use crate::support;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::v1;
use meridian_proto::v1::region_link_server::RegionLink;
use meridian_regional::jobs::simple_spec;
use meridian_regional::model::JobPhase;
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
    /// A job reported CANCELLED.
    Cancelled(String),
}

/// A global tier whose log holds `before` until the region has read it,
/// then is trimmed: from then on a cursor is refused OUT_OF_RANGE and an
/// empty one gets `snapshot`.
struct TrimmingGlobal {
    before: Vec<v1::AssignmentEvent>,
    snapshot: Vec<v1::AssignmentEvent>,
    seen: mpsc::UnboundedSender<Seen>,
    opened: Arc<Mutex<u32>>,
}

fn ok() -> i32 {
    v1::Verdict::Accepted as i32
}

fn cursor(i: u64) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

fn accepted(n: usize) -> Vec<v1::ItemResult> {
    vec![
        v1::ItemResult {
            verdict: ok(),
            ..Default::default()
        };
        n
    ]
}

type Events = Pin<Box<dyn Stream<Item = Result<v1::AssignmentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl RegionLink for TrimmingGlobal {
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
        let n = {
            let mut opened = self.opened.lock();
            *opened += 1;
            *opened
        };
        let events: Vec<Result<v1::AssignmentEvent, Status>> = if n == 1 {
            // The log before the trim; the stream then ends and the link
            // reconnects from the last cursor, which is trimmed by then.
            self.before.iter().cloned().map(Ok).collect()
        } else if after.is_empty() {
            self.snapshot.iter().cloned().map(Ok).collect()
        } else {
            // As the global tier does: the stream opens, then ends.
            vec![Err(Status::out_of_range(
                "cursor: the events after this cursor are no longer kept",
            ))]
        };
        let stream = tokio_stream::iter(events);
        if n == 1 || !after.is_empty() {
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
        let acks = request.into_inner().acks;
        for a in &acks {
            let _ = self
                .seen
                .send(Seen::Ack(a.job_id.clone(), a.assignment_epoch));
        }
        Ok(Response::new(v1::AckAssignmentsResponse {
            verdict: ok(),
            current_epoch: 1,
            results: accepted(acks.len()),
        }))
    }

    async fn report_status(
        &self,
        request: Request<v1::ReportStatusRequest>,
    ) -> Result<Response<v1::ReportStatusResponse>, Status> {
        let updates = request.into_inner().updates;
        for u in &updates {
            if u.state == v1::JobState::Cancelled as i32 {
                let _ = self.seen.send(Seen::Cancelled(u.job_id.clone()));
            }
        }
        let n = updates.len();
        Ok(Response::new(v1::ReportStatusResponse {
            verdict: ok(),
            current_epoch: 1,
            results: accepted(n),
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
            results: accepted(releases.len()),
        }))
    }
}

fn event(at: Vec<u8>, kind: v1::AssignmentEventKind, job: &str, epoch: u64) -> v1::AssignmentEvent {
    v1::AssignmentEvent {
        cursor: at,
        kind: kind as i32,
        job_id: job.into(),
        assignment_epoch: epoch,
        spec: (kind == v1::AssignmentEventKind::Assign).then(|| simple_spec("t", 2, 500, GIB)),
        request_id: format!("req-{job}"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_global_tier_trimmed_makes_the_link_start_again_from_a_snapshot_that_misses_no_assign_cancel_or_revoke()
 {
    use v1::AssignmentEventKind::{Assign, Cancel, Revoke};
    let region = Region::new().await;
    // While the region was away, the log gained an ASSIGN of job-3, a
    // CANCEL of job-1 and a REVOKE of job-2, and was trimmed past them all.
    // The snapshot carries the snapshot's position on every event.
    let at = cursor(9);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let fake = TrimmingGlobal {
        before: vec![
            event(cursor(1), Assign, "job-1", 1),
            event(cursor(2), Assign, "job-2", 1),
        ],
        snapshot: vec![
            event(at.clone(), Assign, "job-1", 1),
            event(at.clone(), Cancel, "job-1", 1),
            event(at.clone(), Revoke, "job-2", 2),
            event(at, Assign, "job-3", 1),
        ],
        seen: seen_tx,
        opened: Arc::default(),
    };
    let (stop, link) = start_link(&region, fake, Duration::from_millis(50)).await;

    let (mut opened, mut acks, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    let mut cancelled = Vec::new();
    let guard = tokio::time::timeout(Duration::from_secs(30), async {
        while opened.len() < 3
            || releases.is_empty()
            || cancelled.is_empty()
            || !acks.contains(&("job-3".into(), 1))
        {
            match seen.recv().await.expect("fake open") {
                Seen::Opened(c) => opened.push(c),
                Seen::Ack(j, e) => acks.push((j, e)),
                Seen::Release(j, e) => releases.push((j, e)),
                Seen::Cancelled(j) => cancelled.push(j),
            }
        }
    });
    guard.await.expect("the link resynchronised in time");
    // The release is marked after its answer: await that write.
    let state = region.fx.path.state.clone();
    let watcher = state.subscribe();
    let settled = async {
        loop {
            let done = {
                let s = state.read();
                s.jobs
                    .get("job-2")
                    .is_some_and(|e| e.record.state == JobPhase::Released(2))
            };
            if done {
                return;
            }
            watcher.changed().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settled)
        .await
        .expect("settled in time");
    let _ = stop.send(());
    link.await.expect("link task");

    assert_eq!(
        opened[..3],
        [Vec::new(), cursor(2), Vec::new()],
        "from the start, from its cursor (refused), then from a snapshot"
    );
    assert_eq!(releases[0], ("job-2".to_string(), 2), "the missed REVOKE");
    let view = region.view().await;
    assert_eq!(
        view.jobs["job-3"].state,
        JobPhase::Active,
        "the missed ASSIGN"
    );
    assert_eq!(cancelled[0], "job-1", "the missed CANCEL");
    assert_eq!(view.jobs["job-2"].state, JobPhase::Released(2));
}
