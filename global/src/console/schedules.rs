//! The schedules pages' data: schedules as ListSchedules and GetSchedule
//! answer them, and a schedule's latest runs (the jobs of its latest
//! ticks, `schedules::runs`).
//!
//! Owns turning those answers into the console's views, and the schedule
//! page's actions into PauseSchedule, ResumeSchedule and DeleteSchedule.
//! Must never read the store directly or change a schedule other than
//! through those calls.

use meridian_console::view::{ActionOutcome, ScheduleAction, ScheduleDetail, ScheduleRow};
use meridian_proto::v1::{MissedTickPolicy, OverlapPolicy, Schedule};

use super::row;
use crate::error::Result;
use crate::federation::FederationService;
use crate::schedules::rules::starting_deadline_ms;

/// Runs listed on a schedule's page.
const RUNS: usize = 20;
/// Ticks looked at per refresh at most (one point read each): a schedule
/// whose last 20 runs are spread over more ticks (skipped, missed, paused)
/// shows those found among them.
const MAX_TICKS: usize = 200;

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

/// One schedule with its latest runs, newest first: the jobs of its
/// latest ticks, found by their request ids.
pub async fn detail(api: &FederationService, schedule_id: &str) -> Result<ScheduleDetail> {
    let schedule = api.schedules.get(schedule_id).await?;
    let runs = api
        .schedules
        .latest_runs(&schedule, RUNS, MAX_TICKS)
        .await?;
    Ok(ScheduleDetail {
        schedule: schedule_row(&schedule),
        runs: runs.jobs.iter().map(row).collect(),
        runs_truncated: runs.more,
    })
}

/// Pauses, resumes or deletes a schedule, as the API's calls do (the
/// leader's fence checked).
pub async fn act(
    api: &FederationService,
    schedule_id: &str,
    action: ScheduleAction,
) -> Result<ActionOutcome> {
    let message = match action {
        ScheduleAction::Pause => {
            api.pause_schedule(schedule_id, true).await?;
            format!("Schedule {schedule_id} paused: it creates no job until resumed")
        }
        ScheduleAction::Resume => {
            let s = api.pause_schedule(schedule_id, false).await?;
            format!(
                "Schedule {schedule_id} resumed: next tick {}",
                crate::schedules::cadence::rfc3339(s.next_tick_unix_ms)
            )
        }
        ScheduleAction::Delete => {
            api.delete_schedule(schedule_id).await?;
            format!("Schedule {schedule_id} deleted; the jobs it created are kept")
        }
    };
    Ok(ActionOutcome { message })
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
