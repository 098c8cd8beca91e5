//! Acknowledgements go beside the intake: while the global tier has not
//! answered one acknowledgement (it commits to the global store, which can
//! be slow), the assignments behind it are still stored and their jobs
//! placed; the next acknowledgement goes once the first is answered, and
//! carries every ASSIGN stored meanwhile.

use crate::support;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::v1;
use meridian_proto::v1::region_link_server::RegionLink;
use meridian_regional::jobs::simple_spec;
use parking_lot::Mutex;
use support::link::{accept, start_link};
use support::{GIB, Region};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

/// Sends the test's events on the first stream and holds each
/// acknowledgement until the test lets one through.
struct FakeGlobal {
    events: Mutex<Option<mpsc::UnboundedReceiver<v1::AssignmentEvent>>>,
    acks: mpsc::UnboundedSender<Vec<String>>,
    answer: Arc<Semaphore>,
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
        _: Request<v1::AssignmentsRequest>,
    ) -> Result<Response<Events>, Status> {
        let rx = self
            .events
            .lock()
            .take()
            .ok_or_else(|| Status::unavailable("one stream only in this test"))?;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            UnboundedReceiverStream::new(rx),
            Ok,
        ))))
    }

    async fn ack_assignments(
        &self,
        request: Request<v1::AckAssignmentsRequest>,
    ) -> Result<Response<v1::AckAssignmentsResponse>, Status> {
        let acks = request.into_inner().acks;
        let _ = self
            .acks
            .send(acks.iter().map(|a| a.job_id.clone()).collect());
        self.answer
            .acquire()
            .await
            .map_err(|_| Status::unavailable("closing"))?
            .forget();
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
        Ok(accept::statuses(request.into_inner().updates.len()))
    }

    async fn report_capacity(
        &self,
        _: Request<v1::ReportCapacityRequest>,
    ) -> Result<Response<v1::ReportCapacityResponse>, Status> {
        Ok(accept::capacity())
    }

    async fn release_jobs(
        &self,
        _: Request<v1::ReleaseJobsRequest>,
    ) -> Result<Response<v1::ReleaseJobsResponse>, Status> {
        Err(Status::unimplemented("no job is revoked in this test"))
    }
}

fn assign(i: u64, job: &str) -> v1::AssignmentEvent {
    v1::AssignmentEvent {
        cursor: i.to_be_bytes().to_vec(),
        kind: v1::AssignmentEventKind::Assign as i32,
        job_id: job.into(),
        assignment_epoch: 1,
        spec: Some(simple_spec("t", 1, 500, GIB)),
        request_id: format!("req-{job}"),
        ..Default::default()
    }
}

/// Awaits `job` in the region's memory (as the intake's commit puts it).
async fn await_stored(region: &Region, job: &str) {
    let state = region.fx.path.state.clone();
    let watcher = state.subscribe();
    while !state.read().jobs.contains_key(job) {
        watcher.changed().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_the_global_tier_is_slow_to_answer_holds_back_no_later_assignment() {
    let region = Region::new().await;
    region.register("n1", "boot-1").await;
    let (events, events_rx) = mpsc::unbounded_channel();
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let answer = Arc::new(Semaphore::new(0));
    let fake = FakeGlobal {
        events: Mutex::new(Some(events_rx)),
        acks: acks_tx,
        answer: answer.clone(),
    };
    let (stop, link) = start_link(&region, fake, Duration::from_secs(3600)).await;
    let guard = Duration::from_secs(60);

    events.send(assign(1, "job-1")).expect("stream open");
    let first = tokio::time::timeout(guard, acks.recv())
        .await
        .expect("the first acknowledgement sent")
        .expect("fake open");
    assert_eq!(first, vec!["job-1".to_string()]);

    // The first acknowledgement is held: later assignments are stored and
    // placed all the same.
    events.send(assign(2, "job-2")).expect("stream open");
    events.send(assign(3, "job-3")).expect("stream open");
    for job in ["job-2", "job-3"] {
        tokio::time::timeout(guard, await_stored(&region, job))
            .await
            .unwrap_or_else(|_| panic!("{job} stored while job-1's acknowledgement is held"));
    }
    let mut placer = region.shard_loop(0).await;
    let round = placer.round().await.expect("round");
    assert_eq!(round.outcome.bound.len(), 3, "{round:?}");
    assert!(
        acks.try_recv().is_err(),
        "one acknowledgement in flight at a time"
    );

    // Once the first is answered, one call acknowledges the rest.
    answer.add_permits(1);
    let second = tokio::time::timeout(guard, acks.recv())
        .await
        .expect("the second acknowledgement sent")
        .expect("fake open");
    assert_eq!(second, vec!["job-2".to_string(), "job-3".to_string()]);
    answer.add_permits(1);
    let _ = stop.send(());
    let _ = link.await;
}
