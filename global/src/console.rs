//! The global tier's side of the federation overview: a
//! [`FederationConsoleSource`] over the same calls the API serves.
//!
//! Owns turning `ListRegions`, `ListJobs` and `GetJob` answers into the
//! console's views. Must never read or write the store directly: every read
//! goes through [`FederationService`], so the page shows what the API says.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_console::view::{
    ActionOutcome, Amount, DependencyRow, DependencyStatus, FederationSnapshot, JobDetail, JobRow,
    RegionSummary, ScheduleAction, ScheduleDetail, ScheduleRow, TaskPage, TaskPageQuery,
    TenantJobs, TransitionRow, UsageQuery, UsageView,
};
use meridian_console::{Actor, ConsoleError, FederationConsoleSource};
use meridian_proto::v1::{Job, JobState, ListJobsRequest, RegionInfo, RegionState, TaskState};

use crate::error::GlobalError;
use crate::federation::FederationService;
use crate::gate::{DependencyReport, Verdict};

mod schedules;
mod tasks;
mod usage;

/// Jobs counted per overview refresh at most (pages of 1000).
const SCAN_LIMIT: usize = 10_000;
/// Jobs listed under "Recent jobs".
const RECENT: usize = 25;
/// Held and dependency-waiting jobs listed on the overview at most.
const GATED: usize = 50;
/// Jobs waiting on a job listed on its page at most.
const DEPENDENTS: usize = 100;

/// The federation overview's data, read through the API service.
pub struct GlobalConsole {
    api: FederationService,
}

impl GlobalConsole {
    pub fn new(api: FederationService) -> Arc<Self> {
        Arc::new(GlobalConsole { api })
    }
}

/// The console routes of a global replica, for its HTTP listener. Its
/// pages are behind sign-in with an admin token (they show every tenant),
/// checked against this replica's token store; a replica started with
/// `--no-auth` serves them open.
///
/// Also returns the gate, whose sessions may read the API.
pub fn router(
    api: FederationService,
) -> Result<(axum::Router, Arc<meridian_console::Gate>), GlobalError> {
    let gate = if api.auth.enabled {
        meridian_console::Gate::sign_in(
            Arc::new(crate::auth::console::LocalCheck::new(api.auth.clone())),
            meridian_console::ConsoleRole::Admin,
            api.clock.clone(),
            api.regions.security().is_tls(),
        )
    } else {
        meridian_console::Gate::open()
    }
    .map_err(|e| GlobalError::Corrupt(e.to_string()))?;
    let router = meridian_console::federation_router(GlobalConsole::new(api), &gate);
    Ok((router, gate))
}

fn console_error(e: GlobalError) -> ConsoleError {
    match e {
        GlobalError::NotFound(_) => ConsoleError::NotFound(e.to_string()),
        GlobalError::Invalid { .. } => ConsoleError::Invalid(e.to_string()),
        GlobalError::NotLeader { .. } | GlobalError::Fenced(_) => {
            ConsoleError::Unavailable(e.to_string())
        }
        GlobalError::Store(ref s) if meridian_store::Retryable::is_retryable(s) => {
            ConsoleError::Unavailable(e.to_string())
        }
        _ => ConsoleError::Failed(e.to_string()),
    }
}

pub(crate) fn job_state_name(state: i32) -> String {
    JobState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("state {state}"))
}

pub(crate) fn task_state_name(state: i32) -> String {
    TaskState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("state {state}"))
}

pub(crate) fn row(job: &Job) -> JobRow {
    let spec = job.spec.clone().unwrap_or_default();
    let counts = job.task_counts.unwrap_or_default();
    JobRow {
        job_id: job.job_id.clone(),
        name: spec.name,
        tenant: spec.tenant,
        state: job_state_name(job.state),
        region: job.region.clone(),
        priority: spec.priority,
        task_count: spec.task_count,
        tasks_done: counts.succeeded + counts.failed + counts.killed + counts.lost,
        created_at_unix_ms: job.created_at_unix_ms,
        waiting_reason: job.waiting_reason.clone(),
        held: job.held,
        dependencies: job.dependencies.len() as u32,
        // The reason a job in the blocked index carries; a pending job whose
        // dependencies are met waits for a region with the router's reason.
        blocked: job.state == JobState::Pending as i32
            && !job.held
            && !job.dependencies.is_empty()
            && crate::dependencies::is_dependency_wait(&job.waiting_reason),
    }
}

/// The console's rows of a dependency report.
fn dependency_rows(report: &DependencyReport) -> Vec<DependencyRow> {
    report
        .dependencies
        .iter()
        .map(|d| {
            let (status, reason) = match &d.verdict {
                Verdict::Met => (DependencyStatus::Met, String::new()),
                Verdict::Wait(why) => (DependencyStatus::Pending, why.clone()),
                Verdict::Never(why) => (DependencyStatus::Never, why.clone()),
            };
            DependencyRow {
                job_id: crate::dependencies::target_id(&d.dependency).to_string(),
                condition: crate::dependencies::condition_name(d.dependency.condition).into(),
                job_state: match d.state {
                    None => "unknown".into(),
                    Some(state) if d.removed => {
                        format!("{} (removed)", job_state_name(state as i32))
                    }
                    Some(state) => job_state_name(state as i32),
                },
                status,
                reason,
            }
        })
        .collect()
}

fn region_summary(r: &RegionInfo, now: u64) -> RegionSummary {
    let cap = r.capacity.clone().unwrap_or_default();
    let live = r.state == RegionState::Ready as i32;
    RegionSummary {
        name: r.name.clone(),
        lease_state: if live { "ready" } else { "unreachable" }.into(),
        lease_epoch: r.lease_epoch,
        lease_expires_in_ms: r.lease_expires_at_unix_ms.saturating_sub(now),
        leader: r
            .leader
            .as_ref()
            .map(|l| l.replica_id.clone())
            .unwrap_or_default(),
        draining: r.draining,
        evacuating: r.evacuating,
        capacity: Amount {
            cpu_millis: cap.cpu_millis_allocatable,
            memory_bytes: cap.memory_bytes_allocatable,
            gpus: cap.gpu_allocatable,
        },
        used: Amount {
            cpu_millis: cap.cpu_millis_allocated,
            memory_bytes: cap.memory_bytes_allocated,
            gpus: cap.gpu_allocated,
        },
        nodes_ready: cap.nodes_ready,
        nodes_total: cap.nodes_total,
        assigned_jobs: r.assigned_jobs,
        pending_tasks: cap.pending_tasks,
        running_tasks: cap.running_tasks,
        report_age_ms: (r.capacity_reported_at_unix_ms > 0)
            .then(|| now.saturating_sub(r.capacity_reported_at_unix_ms)),
    }
}

const STATE_ORDER: [&str; 7] = [
    "pending",
    "routed",
    "placed",
    "running",
    "succeeded",
    "failed",
    "cancelled",
];

fn ordered(counts: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = STATE_ORDER
        .iter()
        .filter_map(|s| counts.get(*s).map(|n| (s.to_string(), *n)))
        .collect();
    for (s, n) in counts {
        if !STATE_ORDER.contains(&s.as_str()) {
            out.push((s.clone(), *n));
        }
    }
    out
}

impl FederationConsoleSource for GlobalConsole {
    async fn overview(&self) -> Result<FederationSnapshot, ConsoleError> {
        let now = self.api.clock.now_unix_ms();
        let regions = self.api.registry.list().await.map_err(console_error)?;
        let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_tenant: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut recent: Vec<JobRow> = Vec::new();
        let mut gated: Vec<JobRow> = Vec::new();
        let mut scanned = 0usize;
        let mut token = String::new();
        let mut truncated = false;
        loop {
            let page = self
                .api
                .jobs
                .list(&ListJobsRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                    ..ListJobsRequest::default()
                })
                .await
                .map_err(console_error)?;
            for job in &page.jobs {
                let r = row(job);
                if gated.len() < GATED && (r.held || r.waits_on_dependencies()) {
                    gated.push(r.clone());
                }
                *by_state.entry(r.state.clone()).or_default() += 1;
                *by_tenant
                    .entry(r.tenant.clone())
                    .or_default()
                    .entry(r.state.clone())
                    .or_default() += 1;
                recent.push(r);
                if recent.len() > RECENT * 4 {
                    recent.drain(..recent.len() - RECENT);
                }
            }
            scanned += page.jobs.len();
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
            if scanned >= SCAN_LIMIT {
                truncated = true;
                break;
            }
        }
        recent.sort_by(|a, b| {
            (b.created_at_unix_ms, &b.job_id).cmp(&(a.created_at_unix_ms, &a.job_id))
        });
        recent.truncate(RECENT);
        let tenants = by_tenant
            .into_iter()
            .map(|(tenant, counts)| TenantJobs {
                tenant,
                total: counts.values().sum(),
                by_state: ordered(&counts),
            })
            .collect();
        Ok(FederationSnapshot {
            replica: self.api.leadership.identity().name.clone(),
            leader: self.api.leadership.is_leader(),
            generated_at_unix_ms: now,
            regions: regions
                .regions
                .iter()
                .map(|r| region_summary(r, now))
                .collect(),
            jobs_by_state: ordered(&by_state),
            tenants,
            jobs_scanned: scanned as u64,
            scan_truncated: truncated,
            recent,
            gated,
        })
    }

    async fn job(&self, job_id: &str) -> Result<JobDetail, ConsoleError> {
        let job = self.api.jobs.get(job_id).await.map_err(console_error)?;
        let report = self
            .api
            .gate
            .dependency_report(&job, DEPENDENTS)
            .await
            .map_err(console_error)?;
        Ok(JobDetail {
            hold_reason: job.hold_reason.clone(),
            dependencies: dependency_rows(&report),
            dependents: report.dependents,
            dependents_truncated: report.dependents_truncated,
            job: row(&job),
            request_id: job.request_id.clone(),
            failure_reason: job.failure_reason.clone(),
            assignment_epoch: job.assignment_epoch,
            cancel_requested: job.cancel_requested,
            updated_at_unix_ms: job.updated_at_unix_ms,
            tasks: job.tasks.iter().map(tasks::task_row).collect(),
            task_counts: tasks::counts(&job.task_counts.unwrap_or_default()),
            parallelism: job.spec.as_ref().map_or(0, |s| s.parallelism),
            history: job
                .history
                .iter()
                .map(|h| TransitionRow {
                    at_unix_ms: h.at_unix_ms,
                    from: job_state_name(h.from),
                    to: job_state_name(h.to),
                    region: h.region.clone(),
                    epoch: h.assignment_epoch,
                    reason: h.reason.clone(),
                })
                .collect(),
        })
    }

    async fn job_tasks(
        &self,
        job_id: &str,
        query: &TaskPageQuery,
    ) -> Result<TaskPage, ConsoleError> {
        tasks::page(&self.api, job_id, query).await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRow>, ConsoleError> {
        schedules::list(&self.api).await.map_err(console_error)
    }

    async fn schedule_action(
        &self,
        schedule_id: &str,
        action: ScheduleAction,
        actor: &Actor,
    ) -> Result<ActionOutcome, ConsoleError> {
        // As the person signed in, so the tenant checks and the audit log
        // see them, not the replica.
        let principal = crate::auth::console::principal_of(&actor.viewer);
        crate::auth::act_as(principal, schedules::act(&self.api, schedule_id, action))
            .await
            .map_err(console_error)
    }

    async fn usage(&self, query: &UsageQuery) -> Result<UsageView, ConsoleError> {
        usage::read(&self.api, query).await.map_err(console_error)
    }

    async fn schedule(&self, schedule_id: &str) -> Result<ScheduleDetail, ConsoleError> {
        schedules::detail(&self.api, schedule_id)
            .await
            .map_err(console_error)
    }
}
