//! A schedule's latest runs: the jobs its ticks created, found the way a
//! tick finds its own job, by the tick's request id.
//!
//! Owns walking a schedule's ticks back from the last one handled and
//! reading the job each tick's request id names. The work is bounded by the
//! ticks looked at, not by the tenant's jobs (a label scan would read every
//! job of the tenant). Must never write.

use meridian_proto::v1::{Job, Schedule};
use meridian_store::Database;

use super::cadence_of;
use super::rules::tick_request_id;
use crate::error::{GlobalError, Result};
use crate::jobs::read_job;
use crate::keys::Keys;

/// The latest runs of a schedule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runs {
    /// Newest first.
    pub jobs: Vec<Job>,
    /// Earlier ticks were not looked at (the limits were reached).
    pub more: bool,
}

impl super::Schedules {
    /// Up to `limit` jobs created by `schedule`'s ticks, newest first (see
    /// [`latest`]).
    pub async fn latest_runs(
        &self,
        schedule: &Schedule,
        limit: usize,
        max_ticks: usize,
    ) -> Result<Runs> {
        latest(&self.db, &self.keys, schedule, limit, max_ticks).await
    }
}

/// Up to `limit` jobs created by `schedule`'s ticks, newest first, looking
/// at most `max_ticks` ticks back from the last one handled (a skipped,
/// missed or paused tick has no job). Read in one transaction.
pub async fn latest(
    db: &Database,
    keys: &Keys,
    schedule: &Schedule,
    limit: usize,
    max_ticks: usize,
) -> Result<Runs> {
    let cadence = cadence_of(schedule)?;
    let spec = schedule.spec.clone().unwrap_or_default();
    let mut ticks = Vec::new();
    let mut at = schedule.last_tick_unix_ms;
    let mut more = false;
    while at >= schedule.created_at_unix_ms && at > 0 {
        let Some(tick) = cadence.latest_at_or_before(at) else {
            break;
        };
        if tick < schedule.created_at_unix_ms {
            break;
        }
        if ticks.len() == max_ticks {
            more = true;
            break;
        }
        ticks.push(tick);
        at = tick.saturating_sub(1);
    }
    let keys = keys.clone();
    db.run(|tx, _| {
        let (keys, ticks, spec) = (keys.clone(), ticks.clone(), spec.clone());
        async move {
            let mut runs = Runs {
                more,
                ..Runs::default()
            };
            for (i, tick) in ticks.iter().enumerate() {
                if runs.jobs.len() == limit {
                    // Ticks `i..` are older than the runs listed.
                    runs.more = i < ticks.len();
                    break;
                }
                let request =
                    tick_request_id(&schedule.schedule_id, schedule.created_at_unix_ms, *tick);
                let Some(raw) = tx.get(&keys.request(&spec.tenant, &request)).await? else {
                    continue;
                };
                let job_id = String::from_utf8(raw)
                    .map_err(|_| GlobalError::Corrupt("request record is not UTF-8".into()))?;
                // A run removed after the job retention is no longer listed.
                if let Some(job) = read_job(&tx, &keys, &job_id).await? {
                    runs.jobs.push(job);
                }
            }
            Ok::<_, GlobalError>(runs)
        }
    })
    .await
}
