//! A fake global replica for the CLI's tests: a real tonic `Federation`
//! server on 127.0.0.1 whose job and schedule calls a test scripts through
//! [`Script`]; every call a test does not script answers UNIMPLEMENTED.
#![allow(dead_code)]

use std::pin::Pin;
use std::sync::Arc;

use meridian_proto::v1::federation_server::{Federation, FederationServer};
use meridian_proto::v1::*;
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A watch stream as the fake serves it.
pub type Events = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;
/// A scripted FollowTaskLogs stream.
pub type LogChunks = Pin<Box<dyn Stream<Item = Result<TaskLogChunk, Status>> + Send>>;

fn unscripted() -> Status {
    Status::unimplemented("not scripted by this test")
}

/// The calls a test may script.
#[tonic::async_trait]
pub trait Script: Send + Sync + 'static {
    async fn submit_job(&self, _: SubmitJobRequest) -> Result<SubmitJobResponse, Status> {
        Err(unscripted())
    }
    async fn get_job(&self, _: GetJobRequest) -> Result<GetJobResponse, Status> {
        Err(unscripted())
    }
    async fn list_jobs(&self, _: ListJobsRequest) -> Result<ListJobsResponse, Status> {
        Err(unscripted())
    }
    async fn watch_jobs(&self, _: WatchJobsRequest) -> Result<Events, Status> {
        Err(unscripted())
    }
    async fn get_task_logs(&self, _: GetTaskLogsRequest) -> Result<GetTaskLogsResponse, Status> {
        Err(unscripted())
    }
    async fn list_job_tasks(&self, _: ListJobTasksRequest) -> Result<ListJobTasksResponse, Status> {
        Err(unscripted())
    }
    async fn follow_task_logs(&self, _: FollowTaskLogsRequest) -> Result<LogChunks, Status> {
        Err(unscripted())
    }
    async fn create_schedule(
        &self,
        _: CreateScheduleRequest,
    ) -> Result<CreateScheduleResponse, Status> {
        Err(unscripted())
    }
    async fn get_schedule(&self, _: GetScheduleRequest) -> Result<GetScheduleResponse, Status> {
        Err(unscripted())
    }
    async fn list_schedules(
        &self,
        _: ListSchedulesRequest,
    ) -> Result<ListSchedulesResponse, Status> {
        Err(unscripted())
    }
    async fn pause_schedule(
        &self,
        _: PauseScheduleRequest,
    ) -> Result<PauseScheduleResponse, Status> {
        Err(unscripted())
    }
    async fn resume_schedule(
        &self,
        _: ResumeScheduleRequest,
    ) -> Result<ResumeScheduleResponse, Status> {
        Err(unscripted())
    }
    async fn delete_schedule(
        &self,
        _: DeleteScheduleRequest,
    ) -> Result<DeleteScheduleResponse, Status> {
        Err(unscripted())
    }
    async fn get_usage(&self, _: GetUsageRequest) -> Result<GetUsageResponse, Status> {
        Err(unscripted())
    }
}

struct Fake<S>(Arc<S>);

#[tonic::async_trait]
impl<S: Script> Federation for Fake<S> {
    async fn submit_job(
        &self,
        r: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        self.0.submit_job(r.into_inner()).await.map(Response::new)
    }
    async fn submit_jobs(
        &self,
        _: Request<SubmitJobsRequest>,
    ) -> Result<Response<SubmitJobsResponse>, Status> {
        Err(unscripted())
    }
    async fn get_job(&self, r: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        self.0.get_job(r.into_inner()).await.map(Response::new)
    }
    async fn list_jobs(
        &self,
        r: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        self.0.list_jobs(r.into_inner()).await.map(Response::new)
    }
    async fn cancel_job(
        &self,
        _: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        Err(unscripted())
    }
    async fn hold_job(
        &self,
        _: Request<HoldJobRequest>,
    ) -> Result<Response<HoldJobResponse>, Status> {
        Err(unscripted())
    }
    async fn release_job(
        &self,
        _: Request<ReleaseJobRequest>,
    ) -> Result<Response<ReleaseJobResponse>, Status> {
        Err(unscripted())
    }
    async fn set_job_priority(
        &self,
        _: Request<SetJobPriorityRequest>,
    ) -> Result<Response<SetJobPriorityResponse>, Status> {
        Err(unscripted())
    }
    type WatchJobsStream = Events;
    async fn watch_jobs(
        &self,
        r: Request<WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        self.0.watch_jobs(r.into_inner()).await.map(Response::new)
    }
    async fn list_job_tasks(
        &self,
        r: Request<ListJobTasksRequest>,
    ) -> Result<Response<ListJobTasksResponse>, Status> {
        self.0
            .list_job_tasks(r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_task_logs(
        &self,
        r: Request<GetTaskLogsRequest>,
    ) -> Result<Response<GetTaskLogsResponse>, Status> {
        self.0
            .get_task_logs(r.into_inner())
            .await
            .map(Response::new)
    }
    type FollowTaskLogsStream = LogChunks;
    async fn follow_task_logs(
        &self,
        r: Request<FollowTaskLogsRequest>,
    ) -> Result<Response<Self::FollowTaskLogsStream>, Status> {
        self.0
            .follow_task_logs(r.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_regions(
        &self,
        _: Request<ListRegionsRequest>,
    ) -> Result<Response<ListRegionsResponse>, Status> {
        Err(unscripted())
    }
    async fn drain_region(
        &self,
        _: Request<DrainRegionRequest>,
    ) -> Result<Response<DrainRegionResponse>, Status> {
        Err(unscripted())
    }
    async fn undrain_region(
        &self,
        _: Request<UndrainRegionRequest>,
    ) -> Result<Response<UndrainRegionResponse>, Status> {
        Err(unscripted())
    }
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        Err(unscripted())
    }
    async fn cordon_node(
        &self,
        _: Request<CordonNodeRequest>,
    ) -> Result<Response<CordonNodeResponse>, Status> {
        Err(unscripted())
    }
    async fn uncordon_node(
        &self,
        _: Request<UncordonNodeRequest>,
    ) -> Result<Response<UncordonNodeResponse>, Status> {
        Err(unscripted())
    }
    async fn drain_node(
        &self,
        _: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        Err(unscripted())
    }
    async fn create_schedule(
        &self,
        r: Request<CreateScheduleRequest>,
    ) -> Result<Response<CreateScheduleResponse>, Status> {
        self.0
            .create_schedule(r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_schedule(
        &self,
        r: Request<GetScheduleRequest>,
    ) -> Result<Response<GetScheduleResponse>, Status> {
        self.0.get_schedule(r.into_inner()).await.map(Response::new)
    }
    async fn list_schedules(
        &self,
        r: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        self.0
            .list_schedules(r.into_inner())
            .await
            .map(Response::new)
    }
    async fn pause_schedule(
        &self,
        r: Request<PauseScheduleRequest>,
    ) -> Result<Response<PauseScheduleResponse>, Status> {
        self.0
            .pause_schedule(r.into_inner())
            .await
            .map(Response::new)
    }
    async fn resume_schedule(
        &self,
        r: Request<ResumeScheduleRequest>,
    ) -> Result<Response<ResumeScheduleResponse>, Status> {
        self.0
            .resume_schedule(r.into_inner())
            .await
            .map(Response::new)
    }
    async fn delete_schedule(
        &self,
        r: Request<DeleteScheduleRequest>,
    ) -> Result<Response<DeleteScheduleResponse>, Status> {
        self.0
            .delete_schedule(r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_usage(
        &self,
        r: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        self.0.get_usage(r.into_inner()).await.map(Response::new)
    }
    async fn create_token(
        &self,
        _: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        Err(unscripted())
    }
    async fn list_tokens(
        &self,
        _: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        Err(unscripted())
    }
    async fn revoke_token(
        &self,
        _: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        Err(unscripted())
    }
    async fn list_audit_records(
        &self,
        _: Request<ListAuditRecordsRequest>,
    ) -> Result<Response<ListAuditRecordsResponse>, Status> {
        Err(unscripted())
    }
}

/// Serves `script` on a free loopback port; returns its URL.
pub async fn serve<S: Script>(script: Arc<S>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(FederationServer::new(Fake(script)))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    url
}
