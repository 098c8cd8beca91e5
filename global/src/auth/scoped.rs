//! The tenant checks of the federation API: what the call's principal may
//! see and change among jobs and schedules.
//!
//! Owns one rule, applied by every path into the service (gRPC and HTTP):
//! a job or schedule of a tenant the principal cannot view answers
//! NOT_FOUND with the very message an unknown id gets, so nothing tells
//! another tenant's ids from unknown ones; one it can view but not change
//! answers PERMISSION_DENIED naming the missing role; lists are narrowed to
//! the principal's tenants. It must never return a record before checking
//! its tenant.

use meridian_proto::v1::{
    GetUsageRequest, Job, ListJobsRequest, ListJobsResponse, ListSchedulesRequest,
    ListSchedulesResponse, Schedule,
};

use crate::error::{GlobalError, Result};
use crate::federation::FederationService;

fn job_tenant(job: &Job) -> &str {
    job.spec.as_ref().map_or("", |s| s.tenant.as_str())
}

fn schedule_tenant(schedule: &Schedule) -> &str {
    schedule.spec.as_ref().map_or("", |s| s.tenant.as_str())
}

/// What a list call should read for a principal: `None` when it may read
/// nothing (it named a tenant not on its token), else the request to run
/// and whether its answer must still be filtered (several tenants, none
/// named).
fn narrow(tenant: &mut String) -> Option<bool> {
    let principal = super::current();
    let Some(visible) = principal.visible_tenants() else {
        return Some(false);
    };
    if !tenant.is_empty() {
        return visible.contains(tenant.as_str()).then_some(false);
    }
    match visible.len() {
        0 => None,
        1 => {
            tenant.clone_from(visible.iter().next()?);
            Some(false)
        }
        _ => Some(true),
    }
}

impl FederationService {
    /// Job `job_id`, when the caller may view it; NOT_FOUND as for an
    /// unknown job otherwise.
    pub async fn visible_job(&self, job_id: &str) -> Result<Job> {
        let job = self.jobs.get(job_id).await?;
        if super::current().can_view(job_tenant(&job)) {
            Ok(job)
        } else {
            Err(GlobalError::NotFound(format!("job {job_id}")))
        }
    }

    /// Checks the caller may change job `job_id`: NOT_FOUND when it cannot
    /// even view it, PERMISSION_DENIED naming the role when it only views.
    pub async fn changeable_job(&self, job_id: &str) -> Result<()> {
        let job = self.visible_job(job_id).await?;
        super::current().require_submit(job_tenant(&job))
    }

    /// Schedule `schedule_id`, when the caller may view it.
    pub async fn visible_schedule(&self, schedule_id: &str) -> Result<Schedule> {
        let schedule = self.schedules.get(schedule_id).await?;
        if super::current().can_view(schedule_tenant(&schedule)) {
            Ok(schedule)
        } else {
            Err(GlobalError::NotFound(format!("schedule {schedule_id}")))
        }
    }

    /// Checks the caller may change schedule `schedule_id`.
    pub async fn changeable_schedule(&self, schedule_id: &str) -> Result<()> {
        let schedule = self.visible_schedule(schedule_id).await?;
        super::current().require_submit(schedule_tenant(&schedule))
    }

    /// ListJobs narrowed to the caller's tenants.
    pub async fn list_visible_jobs(&self, req: &ListJobsRequest) -> Result<ListJobsResponse> {
        let mut req = req.clone();
        match narrow(&mut req.tenant) {
            None => Ok(ListJobsResponse::default()),
            Some(false) => self.jobs.list(&req).await,
            Some(true) => {
                let principal = super::current();
                let mut page = self.jobs.list(&req).await?;
                page.jobs.retain(|j| principal.can_view(job_tenant(j)));
                Ok(page)
            }
        }
    }

    /// ListSchedules narrowed to the caller's tenants.
    pub async fn list_visible_schedules(
        &self,
        req: &ListSchedulesRequest,
    ) -> Result<ListSchedulesResponse> {
        let mut req = req.clone();
        match narrow(&mut req.tenant) {
            None => Ok(ListSchedulesResponse::default()),
            Some(false) => self.schedules.list(&req).await,
            Some(true) => {
                let principal = super::current();
                let mut page = self.schedules.list(&req).await?;
                page.schedules
                    .retain(|s| principal.can_view(schedule_tenant(s)));
                Ok(page)
            }
        }
    }

    /// The usage request a caller may make: operators and admins read
    /// every tenant; a viewer or submitter names one of its tenants (or
    /// has only one).
    pub fn usage_request(&self, req: &GetUsageRequest) -> Result<GetUsageRequest> {
        let principal = super::current();
        let mut req = req.clone();
        if principal.is_operator() {
            return Ok(req);
        }
        match narrow(&mut req.tenant) {
            Some(false) => Ok(req),
            Some(true) => Err(GlobalError::PermissionDenied(
                "usage of several tenants at once needs role operator or admin: name a tenant"
                    .into(),
            )),
            None => Err(GlobalError::PermissionDenied(format!(
                "role viewer for tenant {:?} required",
                req.tenant
            ))),
        }
    }
}
