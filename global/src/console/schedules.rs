//! The schedules pages' data: schedules as ListSchedules and GetSchedule
//! answer them, and a schedule's latest runs as ListJobs answers them (the
//! jobs carrying its `meridian.schedule` label).
//!
//! Owns turning those answers into the console's views. Must never read the
//! store directly or change a schedule: the console's schedule pages are
//! read-only.

use meridian_console::view::{JobRow, ScheduleDetail, ScheduleRow};
use meridian_proto::v1::{
    LabelOperator, LabelRequirement, ListJobsRequest, MissedTickPolicy, OverlapPolicy, Schedule,
};

use super::row;
use crate::error::Result;
use crate::federation::FederationService;
use crate::schedules::rules::{SCHEDULE_LABEL, starting_deadline_ms};

/// Runs listed on a schedule's page.
const RUNS: usize = 20;
/// Jobs of a schedule read per refresh at most (pages of 1000): a schedule
/// that ran more often than this shows its runs among the first ones.
const RUNS_SCAN: usize = 10_000;

/// Every schedule, in id order.
pub async fn list(api: &FederationService) -> Result<Vec<ScheduleRow>> {
    Ok(api
        .schedules
        .all()
        .await?
        .iter()
        .map(schedule_row)
        .collect())
}

/// One schedule with its latest runs, newest first.
pub async fn detail(api: &FederationService, schedule_id: &str) -> Result<ScheduleDetail> {
    let schedule = api.schedules.get(schedule_id).await?;
    let tenant = schedule
        .spec
        .as_ref()
        .map(|s| s.tenant.clone())
        .unwrap_or_default();
    let mut runs: Vec<JobRow> = Vec::new();
    let mut total = 0usize;
    let mut token = String::new();
    loop {
        let page = api
            .jobs
            .list(&ListJobsRequest {
                tenant: tenant.clone(),
                label_selector: vec![LabelRequirement {
                    key: SCHEDULE_LABEL.into(),
                    op: LabelOperator::In as i32,
                    values: vec![schedule_id.to_string()],
                }],
                page_size: 1000,
                page_token: token,
                ..ListJobsRequest::default()
            })
            .await?;
        total += page.jobs.len();
        // Job ids sort by submission: the last ones read are the latest.
        runs.extend(page.jobs.iter().map(row));
        if runs.len() > RUNS {
            runs.drain(..runs.len() - RUNS);
        }
        token = page.next_page_token;
        if token.is_empty() || total >= RUNS_SCAN {
            break;
        }
    }
    runs.reverse();
    Ok(ScheduleDetail {
        schedule: schedule_row(&schedule),
        runs_truncated: total > runs.len(),
        runs,
    })
}

fn schedule_row(s: &Schedule) -> ScheduleRow {
    let spec = s.spec.clone().unwrap_or_default();
    let deadline = starting_deadline_ms(&spec);
    ScheduleRow {
        schedule_id: s.schedule_id.clone(),
        tenant: spec.tenant,
        job_name: spec.job.map(|j| j.name).unwrap_or_default(),
        cron: spec.cron,
        time_zone: if spec.time_zone.is_empty() {
            "UTC".into()
        } else {
            spec.time_zone
        },
        overlap: match OverlapPolicy::try_from(spec.overlap_policy) {
            Ok(OverlapPolicy::Forbid) => "forbid",
            Ok(OverlapPolicy::Replace) => "replace",
            _ => "allow",
        }
        .into(),
        missed: match MissedTickPolicy::try_from(spec.missed_tick_policy) {
            Ok(MissedTickPolicy::Skip) => "skip",
            _ => "run_once",
        }
        .into(),
        starting_deadline_ms: deadline,
        paused: s.paused,
        created_at_unix_ms: s.created_at_unix_ms,
        next_tick_unix_ms: s.next_tick_unix_ms,
        last_tick_unix_ms: s.last_tick_unix_ms,
        last_job_id: s.last_job_id.clone(),
        last_run_tick_unix_ms: s.last_run_tick_unix_ms,
        last_outcome: s.last_outcome.clone(),
        skipped_ticks: s.skipped_ticks,
    }
}
