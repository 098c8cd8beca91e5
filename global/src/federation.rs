//! The Federation service: what clients and the CLI call on any replica.
//!
//! Owns the gRPC surface of `federation.proto`: validation first (nothing is
//! read or written for a bad request), writes through the leader only
//! (others answer UNAVAILABLE with the `meridian-leader` hint), reads on any
//! replica, and node and log calls forwarded to the region's RegionAdmin
//! endpoint. It must never write on a replica that does not lead.

use std::sync::Arc;
use std::time::Duration;

use meridian_control::SharedClock;
use meridian_control::trace::{self, TraceId};
use meridian_proto::limits::MAX_BATCH_ITEMS;
use meridian_proto::v1::federation_server::Federation;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use meridian_proto::v1::submit_job_result::Outcome;
use meridian_proto::v1::*;
use meridian_store::Database;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{self, Auth};
use crate::dependencies;
use crate::error::{GlobalError, Result};
use crate::events;
use crate::gate::Gate;
use crate::jobs::Jobs;
use crate::keys::Keys;
use crate::leader::Leadership;
use crate::limits::Limits;
use crate::registry::Registry;
use crate::schedules::Schedules;
use crate::submitter::{self, Submitter};
use crate::validate;

/// The Federation service of one replica.
#[derive(Clone)]
pub struct FederationService {
    /// The store.
    pub db: Database,
    /// Key layout.
    pub keys: Keys,
    /// Time.
    pub clock: SharedClock,
    /// Leadership (writes need the leader).
    pub leadership: Arc<Leadership>,
    /// Job records.
    pub jobs: Jobs,
    /// Group commit of submits.
    pub submitter: Submitter,
    /// Hold, release and priority of queued jobs.
    pub gate: Gate,
    /// Schedules of periodic jobs.
    pub schedules: Schedules,
    /// Region records.
    pub registry: Registry,
    /// Quiet time before a bookmark on watch streams.
    pub bookmark_every: Duration,
    /// Flips to true on shutdown; open streams end.
    pub shutdown: watch::Receiver<bool>,
    /// Tokens and the audit log.
    pub auth: Auth,
    /// Per-tenant submit limits.
    pub limits: Limits,
    /// This replica's channels to regions' RegionAdmin (dialed with its own
    /// certificate, which names it `meridian://global`).
    pub regions: crate::admin_channels::AdminChannels,
}

/// The `traceparent` metadata of an incoming call, when readable.
fn traceparent_of(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn item_error(err: &GlobalError) -> ItemError {
    ItemError {
        code: err.code() as i32,
        message: err.to_string(),
        field: err.field().unwrap_or_default().to_string(),
    }
}

impl FederationService {
    /// SubmitJob, callable without gRPC; the job gets a fresh trace id.
    pub async fn submit(&self, req: SubmitJobRequest) -> Result<SubmitJobResponse> {
        self.submit_traced(req, None).await
    }

    /// SubmitJob with the caller's `traceparent` (gRPC metadata or HTTP
    /// header), whose trace id the job keeps; a fresh one without it.
    pub async fn submit_traced(
        &self,
        req: SubmitJobRequest,
        traceparent: Option<&str>,
    ) -> Result<SubmitJobResponse> {
        let trace = TraceId::from_traceparent_or_generate(traceparent);
        let span = tracing::info_span!(
            "submit",
            trace_id = %trace,
            request_id = %req.request_id,
            job_id = tracing::field::Empty,
        );
        trace::link(&span, Some(trace));
        async move {
            let tenant = req
                .spec
                .as_ref()
                .map_or("", |s| s.tenant.as_str())
                .to_string();
            let request_id = req.request_id.clone();
            let result = self.submit_checked(req, trace).await;
            let target = match &result {
                Ok(accepted) => accepted.job_id.clone(),
                Err(_) => format!("{tenant}/{request_id}"),
            };
            self.auth.audit.outcome("SubmitJob", &target, &result).await;
            if let Ok(accepted) = &result {
                tracing::Span::current().record("job_id", accepted.job_id.as_str());
                tracing::debug!(
                    target: trace::TARGET,
                    trace_id = %trace,
                    job_id = %accepted.job_id,
                    created = accepted.created,
                    "submit: job accepted"
                );
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn submit_checked(
        &self,
        req: SubmitJobRequest,
        trace: TraceId,
    ) -> Result<SubmitJobResponse> {
        validate::submit(&req)?;
        if !self.leadership.is_leader() {
            return Err(self.leadership.not_leader().await);
        }
        let tenant = req
            .spec
            .as_ref()
            .map_or("", |s| s.tenant.as_str())
            .to_string();
        auth::current().require_submit(&tenant)?;
        self.limits.admit(&tenant, 1).await?;
        let result = self.submitter.submit(req, trace).await;
        if !matches!(&result, Ok(r) if r.created) {
            self.limits.unused(&tenant, 1);
        }
        let outcome = match &result {
            Ok(r) if r.created => "created",
            Ok(_) => "duplicate",
            Err(GlobalError::RequestIdReused { .. }) => "reused",
            Err(e) if e.field().is_some() => "invalid",
            Err(_) => "error",
        };
        metrics::counter!("meridian_global_submits_total", "outcome" => outcome).increment(1);
        result
    }

    /// SubmitJobs: each item judged on its own, valid ones in one commit.
    /// Every job gets a fresh trace id.
    pub async fn submit_batch(&self, req: SubmitJobsRequest) -> Result<SubmitJobsResponse> {
        self.submit_batch_traced(req, None).await
    }

    /// SubmitJobs with the caller's `traceparent`: a traced batch is one
    /// request, so all its jobs share that trace id; without one, each job
    /// gets its own.
    pub async fn submit_batch_traced(
        &self,
        req: SubmitJobsRequest,
        traceparent: Option<&str>,
    ) -> Result<SubmitJobsResponse> {
        let shared = traceparent.and_then(TraceId::from_traceparent);
        if req.items.is_empty() || req.items.len() > MAX_BATCH_ITEMS {
            return Err(GlobalError::invalid(
                "items",
                format!("1 to {MAX_BATCH_ITEMS} items"),
            ));
        }
        let mut results: Vec<Option<SubmitJobResult>> = vec![None; req.items.len()];
        let mut valid = Vec::new();
        let mut positions = Vec::new();
        // Request ids of this batch naming each other in a circle: only
        // possible within one call, since every other dependency must name
        // a job that exists already.
        let cycles = dependencies::batch_cycles(&req.items);
        let principal = auth::current();
        let mut admitted = Vec::new();
        // The items' audit records, written together once every item has
        // its outcome.
        let mut records = Vec::new();
        for ((i, item), cycle) in req.items.into_iter().enumerate().zip(cycles) {
            let tenant = item
                .spec
                .as_ref()
                .map_or("", |s| s.tenant.as_str())
                .to_string();
            let mut checked = validate::submit(&item)
                .and_then(|()| cycle.map_or(Ok(()), Err))
                .and_then(|()| principal.require_submit(&tenant));
            if checked.is_ok() && self.leadership.is_leader() {
                checked = self.limits.admit(&tenant, 1).await;
            }
            if let Err(err) = &checked {
                let target = format!("{tenant}/{}", item.request_id);
                records.extend(self.auth.audit.failure("SubmitJobs", &target, err));
            }
            match checked {
                Ok(()) => {
                    positions.push(i);
                    admitted.push(tenant);
                    valid.push((item, shared.unwrap_or_else(TraceId::generate)));
                }
                Err(err) => {
                    results[i] = Some(SubmitJobResult {
                        outcome: Some(Outcome::Error(item_error(&err))),
                    })
                }
            }
        }
        if !valid.is_empty() {
            let _slot = self.submitter.batch_slot()?;
            let done = match submitter::submit_group(&self.jobs, &self.leadership, valid).await {
                Ok(done) => done,
                Err(e) => {
                    for tenant in &admitted {
                        self.limits.unused(tenant, 1);
                    }
                    self.auth.audit.write_all(records).await;
                    return Err(e);
                }
            };
            for ((i, result), tenant) in positions.into_iter().zip(done).zip(&admitted) {
                if !matches!(&result, Ok(r) if r.created) {
                    self.limits.unused(tenant, 1);
                }
                let target = match &result {
                    Ok(accepted) => accepted.job_id.clone(),
                    Err(_) => tenant.clone(),
                };
                records.extend(
                    self.auth
                        .audit
                        .outcome_record("SubmitJobs", &target, &result),
                );
                results[i] = Some(SubmitJobResult {
                    outcome: Some(match result {
                        Ok(accepted) => Outcome::Accepted(accepted),
                        Err(err) => Outcome::Error(item_error(&err)),
                    }),
                });
            }
        }
        self.auth.audit.write_all(records).await;
        Ok(SubmitJobsResponse {
            results: results.into_iter().map(Option::unwrap_or_default).collect(),
        })
    }

    /// CancelJob.
    pub async fn cancel(&self, req: &CancelJobRequest) -> Result<CancelJobResponse> {
        let result = async {
            validate::job_id("job_id", &req.job_id)?;
            validate::reason("reason", &req.reason)?;
            self.changeable_job(&req.job_id).await?;
            let fence = self.audited_fence("CancelJob", &req.job_id).await?;
            self.jobs.cancel(&fence, &req.job_id, &req.reason).await
        }
        .await;
        let job = self.audit_failure("CancelJob", &req.job_id, result).await?;
        Ok(CancelJobResponse { job: Some(job) })
    }

    /// HoldJob.
    pub async fn hold(&self, req: &HoldJobRequest) -> Result<HoldJobResponse> {
        let result = async {
            validate::job_id("job_id", &req.job_id)?;
            validate::reason("reason", &req.reason)?;
            self.changeable_job(&req.job_id).await?;
            let fence = self.audited_fence("HoldJob", &req.job_id).await?;
            self.gate.hold(&fence, &req.job_id, &req.reason).await
        }
        .await;
        let job = self.audit_failure("HoldJob", &req.job_id, result).await?;
        Ok(HoldJobResponse { job: Some(job) })
    }

    /// ReleaseJob.
    pub async fn release(&self, req: &ReleaseJobRequest) -> Result<ReleaseJobResponse> {
        let result = async {
            validate::job_id("job_id", &req.job_id)?;
            self.changeable_job(&req.job_id).await?;
            let fence = self.audited_fence("ReleaseJob", &req.job_id).await?;
            self.gate.release(&fence, &req.job_id).await
        }
        .await;
        let job = self
            .audit_failure("ReleaseJob", &req.job_id, result)
            .await?;
        Ok(ReleaseJobResponse { job: Some(job) })
    }

    /// SetJobPriority.
    pub async fn set_priority(
        &self,
        req: &SetJobPriorityRequest,
    ) -> Result<SetJobPriorityResponse> {
        let result = async {
            validate::job_id("job_id", &req.job_id)?;
            self.changeable_job(&req.job_id).await?;
            let fence = self.audited_fence("SetJobPriority", &req.job_id).await?;
            self.gate
                .set_priority(&fence, &req.job_id, req.priority)
                .await
        }
        .await;
        let job = self
            .audit_failure("SetJobPriority", &req.job_id, result)
            .await?;
        Ok(SetJobPriorityResponse { job: Some(job) })
    }

    /// CreateSchedule.
    pub async fn create_schedule(
        &self,
        req: &CreateScheduleRequest,
    ) -> Result<CreateScheduleResponse> {
        let result = async {
            crate::schedules::rules::create(req)?;
            let tenant = req.spec.as_ref().map_or("", |s| s.tenant.as_str());
            auth::current().require_submit(tenant)?;
            let fence = self
                .audited_fence("CreateSchedule", &req.schedule_id)
                .await?;
            self.schedules.create(&fence, req).await
        }
        .await;
        self.audit_failure("CreateSchedule", &req.schedule_id, result)
            .await
    }

    /// PauseSchedule (`paused`) and ResumeSchedule.
    pub async fn pause_schedule(&self, schedule_id: &str, paused: bool) -> Result<Schedule> {
        let action = if paused {
            "PauseSchedule"
        } else {
            "ResumeSchedule"
        };
        let result = async {
            crate::schedules::rules::schedule_id("schedule_id", schedule_id)?;
            self.changeable_schedule(schedule_id).await?;
            let fence = self.audited_fence(action, schedule_id).await?;
            self.schedules.set_paused(&fence, schedule_id, paused).await
        }
        .await;
        self.audit_failure(action, schedule_id, result).await
    }

    /// DeleteSchedule.
    pub async fn delete_schedule(&self, schedule_id: &str) -> Result<Schedule> {
        let result = async {
            crate::schedules::rules::schedule_id("schedule_id", schedule_id)?;
            self.changeable_schedule(schedule_id).await?;
            let fence = self.audited_fence("DeleteSchedule", schedule_id).await?;
            self.schedules.delete(&fence, schedule_id).await
        }
        .await;
        self.audit_failure("DeleteSchedule", schedule_id, result)
            .await
    }

    /// GetUsage (any replica).
    pub async fn usage(&self, req: &GetUsageRequest) -> Result<GetUsageResponse> {
        let req = self.usage_request(req)?;
        crate::usage::get(&self.db, &self.keys, &self.clock, &req).await
    }

    /// The region a task was placed in (`task` as the log calls name it):
    /// its own status's, or the job's for a job too large to list its
    /// tasks. FAILED_PRECONDITION while the job waits to be routed.
    async fn task_region(&self, task: Option<&TaskId>) -> Result<String, Status> {
        let task = task.ok_or_else(|| Status::from(GlobalError::invalid("task", "required")))?;
        let job = self.visible_job(&task.job_id).await?;
        let count = job.spec.as_ref().map_or(0, |s| s.task_count);
        if task.index >= count {
            return Err(GlobalError::invalid(
                "task.index",
                format!("no such task: job {} has {count} tasks", task.job_id),
            )
            .into());
        }
        job.tasks
            .get(task.index as usize)
            .map(|t| t.region.clone())
            .filter(|r| !r.is_empty())
            .or_else(|| Some(job.region.clone()).filter(|r| !r.is_empty()))
            .ok_or_else(|| {
                GlobalError::FailedPrecondition(format!(
                    "task {}/{} is not placed in a region yet",
                    task.job_id, task.index
                ))
                .into()
            })
    }

    /// The region holding job `job_id` now.
    async fn job_region(&self, job_id: &str) -> Result<String, Status> {
        validate::job_id("job_id", job_id)?;
        let job = self.visible_job(job_id).await?;
        if job.region.is_empty() {
            return Err(GlobalError::FailedPrecondition(format!(
                "job {job_id} is not in a region yet"
            ))
            .into());
        }
        Ok(job.region)
    }

    /// FollowTaskLogs (any replica): the region's stream, passed through
    /// as it comes (HTTP/2 flow control is the only buffer here).
    pub async fn follow_logs(
        &self,
        req: FollowTaskLogsRequest,
    ) -> Result<tonic::codec::Streaming<TaskLogChunk>, Status> {
        let region = self.task_region(req.task.as_ref()).await?;
        Ok(self
            .admin(&region)
            .await?
            .follow_task_logs(req)
            .await?
            .into_inner())
    }

    /// DrainRegion / UndrainRegion.
    pub async fn drain(&self, req: &DrainRegionRequest, drain: bool) -> Result<RegionInfo> {
        let action = if drain {
            "DrainRegion"
        } else {
            "UndrainRegion"
        };
        let result = async {
            validate::region_name("region", &req.region)?;
            validate::reason("reason", &req.reason)?;
            let fence = self.audited_fence(action, &req.region).await?;
            self.registry.set_drain(&fence, req, drain).await
        }
        .await;
        self.audit_failure(action, &req.region, result).await
    }

    async fn admin(
        &self,
        region: &str,
    ) -> Result<RegionAdminClient<tonic::transport::Channel>, Status> {
        validate::region_name("region", region)?;
        let list = self.registry.list().await?;
        let info = list
            .regions
            .into_iter()
            .find(|r| r.name == region)
            .ok_or_else(|| Status::not_found(format!("region {region}")))?;
        if info.admin_endpoint.is_empty() {
            return Err(Status::unavailable(format!(
                "region {region} has no admin endpoint"
            )));
        }
        self.regions
            .client(&info.admin_endpoint)
            .await
            .map_err(|e| Status::unavailable(format!("region {region}: {e}")))
    }
}

#[tonic::async_trait]
impl Federation for FederationService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let traceparent = traceparent_of(request.metadata());
        Ok(Response::new(
            self.submit_traced(request.into_inner(), traceparent.as_deref())
                .await?,
        ))
    }

    async fn submit_jobs(
        &self,
        request: Request<SubmitJobsRequest>,
    ) -> Result<Response<SubmitJobsResponse>, Status> {
        let traceparent = traceparent_of(request.metadata());
        Ok(Response::new(
            self.submit_batch_traced(request.into_inner(), traceparent.as_deref())
                .await?,
        ))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let job = self.visible_job(&request.get_ref().job_id).await?;
        Ok(Response::new(GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(
            self.list_visible_jobs(request.get_ref()).await?,
        ))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        Ok(Response::new(self.cancel(request.get_ref()).await?))
    }

    async fn hold_job(
        &self,
        request: Request<HoldJobRequest>,
    ) -> Result<Response<HoldJobResponse>, Status> {
        Ok(Response::new(self.hold(request.get_ref()).await?))
    }

    async fn release_job(
        &self,
        request: Request<ReleaseJobRequest>,
    ) -> Result<Response<ReleaseJobResponse>, Status> {
        Ok(Response::new(self.release(request.get_ref()).await?))
    }

    async fn set_job_priority(
        &self,
        request: Request<SetJobPriorityRequest>,
    ) -> Result<Response<SetJobPriorityResponse>, Status> {
        Ok(Response::new(self.set_priority(request.get_ref()).await?))
    }

    type WatchJobsStream = ReceiverStream<Result<JobEvent, Status>>;

    async fn watch_jobs(
        &self,
        request: Request<WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let stream = events::watch_jobs(
            self.db.clone(),
            self.keys.clone(),
            request.into_inner(),
            self.clock.clone(),
            self.bookmark_every,
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn get_task_logs(
        &self,
        request: Request<GetTaskLogsRequest>,
    ) -> Result<Response<GetTaskLogsResponse>, Status> {
        let req = request.into_inner();
        let region = self.task_region(req.task.as_ref()).await?;
        self.admin(&region).await?.get_task_logs(req).await
    }

    async fn list_job_tasks(
        &self,
        request: Request<ListJobTasksRequest>,
    ) -> Result<Response<ListJobTasksResponse>, Status> {
        let req = request.into_inner();
        let region = self.job_region(&req.job_id).await?;
        self.admin(&region).await?.list_job_tasks(req).await
    }

    type FollowTaskLogsStream = tonic::codec::Streaming<TaskLogChunk>;

    async fn follow_task_logs(
        &self,
        request: Request<FollowTaskLogsRequest>,
    ) -> Result<Response<Self::FollowTaskLogsStream>, Status> {
        Ok(Response::new(self.follow_logs(request.into_inner()).await?))
    }

    async fn list_regions(
        &self,
        _request: Request<ListRegionsRequest>,
    ) -> Result<Response<ListRegionsResponse>, Status> {
        Ok(Response::new(self.registry.list().await?))
    }

    async fn drain_region(
        &self,
        request: Request<DrainRegionRequest>,
    ) -> Result<Response<DrainRegionResponse>, Status> {
        let region = self.drain(request.get_ref(), true).await?;
        Ok(Response::new(DrainRegionResponse {
            region: Some(region),
        }))
    }

    async fn undrain_region(
        &self,
        request: Request<UndrainRegionRequest>,
    ) -> Result<Response<UndrainRegionResponse>, Status> {
        let req = DrainRegionRequest {
            region: request.into_inner().region,
            ..DrainRegionRequest::default()
        };
        let region = self.drain(&req, false).await?;
        Ok(Response::new(UndrainRegionResponse {
            region: Some(region),
        }))
    }

    async fn create_schedule(
        &self,
        request: Request<CreateScheduleRequest>,
    ) -> Result<Response<CreateScheduleResponse>, Status> {
        Ok(Response::new(
            self.create_schedule(request.get_ref()).await?,
        ))
    }

    async fn get_schedule(
        &self,
        request: Request<GetScheduleRequest>,
    ) -> Result<Response<GetScheduleResponse>, Status> {
        let schedule = self
            .visible_schedule(&request.get_ref().schedule_id)
            .await?;
        Ok(Response::new(GetScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        Ok(Response::new(
            self.list_visible_schedules(request.get_ref()).await?,
        ))
    }

    async fn pause_schedule(
        &self,
        request: Request<PauseScheduleRequest>,
    ) -> Result<Response<PauseScheduleResponse>, Status> {
        let schedule = self
            .pause_schedule(&request.get_ref().schedule_id, true)
            .await?;
        Ok(Response::new(PauseScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn resume_schedule(
        &self,
        request: Request<ResumeScheduleRequest>,
    ) -> Result<Response<ResumeScheduleResponse>, Status> {
        let schedule = self
            .pause_schedule(&request.get_ref().schedule_id, false)
            .await?;
        Ok(Response::new(ResumeScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<DeleteScheduleRequest>,
    ) -> Result<Response<DeleteScheduleResponse>, Status> {
        let schedule = self.delete_schedule(&request.get_ref().schedule_id).await?;
        Ok(Response::new(DeleteScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn get_usage(
        &self,
        request: Request<GetUsageRequest>,
    ) -> Result<Response<GetUsageResponse>, Status> {
        Ok(Response::new(self.usage(request.get_ref()).await?))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        Ok(Response::new(self.create_token(request.get_ref()).await?))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        Ok(Response::new(self.list_tokens(request.get_ref()).await?))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        Ok(Response::new(self.revoke_token(request.get_ref()).await?))
    }

    async fn list_audit_records(
        &self,
        request: Request<ListAuditRecordsRequest>,
    ) -> Result<Response<ListAuditRecordsResponse>, Status> {
        Ok(Response::new(self.list_audit(request.get_ref()).await?))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let req = request.into_inner();
        self.admin(&req.region).await?.list_nodes(req).await
    }

    async fn cordon_node(
        &self,
        request: Request<CordonNodeRequest>,
    ) -> Result<Response<CordonNodeResponse>, Status> {
        let req = request.into_inner();
        let target = format!("{}/{}", req.region, req.node_id);
        let result = match self.admin(&req.region).await {
            Ok(mut admin) => admin.cordon_node(req).await,
            Err(status) => Err(status),
        };
        self.audit_forwarded("CordonNode", &target, &result).await;
        result
    }

    async fn uncordon_node(
        &self,
        request: Request<UncordonNodeRequest>,
    ) -> Result<Response<UncordonNodeResponse>, Status> {
        let req = request.into_inner();
        let target = format!("{}/{}", req.region, req.node_id);
        let result = match self.admin(&req.region).await {
            Ok(mut admin) => admin.uncordon_node(req).await,
            Err(status) => Err(status),
        };
        self.audit_forwarded("UncordonNode", &target, &result).await;
        result
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        let req = request.into_inner();
        let target = format!("{}/{}", req.region, req.node_id);
        let result = match self.admin(&req.region).await {
            Ok(mut admin) => admin.drain_node(req).await,
            Err(status) => Err(status),
        };
        self.audit_forwarded("DrainNode", &target, &result).await;
        result
    }
}
