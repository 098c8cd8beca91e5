//! What regions tell the global tier about jobs: acknowledgements, status
//! and releases, each checked against the job's current assignment epoch.
//!
//! Owns the per-item verdicts of `AckAssignments`, `ReportStatus` and
//! `ReleaseJobs`. Every item is judged inside the one transaction that
//! applies it, so at any commit exactly one `(region, epoch)` is accepted
//! for a job. It must never apply an item whose epoch is not the job's
//! current one, and never apply a status version twice.

use meridian_proto::v1::{
    ItemResult, Job, JobEpoch, JobEventKind, JobRelease, JobState, JobStatusUpdate, TaskCounts,
    Verdict,
};
use meridian_store::{Transaction, tuple};
use prost::Message;

use crate::error::{GlobalError, Result};
use crate::events::EventWriter;
use crate::handoff::{self, read_moving};
use crate::jobs::{change_state, job_event, read_job, write_job};
use crate::keys::Keys;
use crate::lifecycle::{self, state_of};
use crate::usage;

fn result(verdict: Verdict, current_epoch: u64, message: impl Into<String>) -> ItemResult {
    ItemResult {
        verdict: verdict as i32,
        current_epoch,
        message: message.into(),
    }
}

/// Judges `(region, epoch)` against the job's current hold: `Ok(job)` when
/// it is the current holder and no hand-off is in progress.
async fn current_hold(
    tx: &Transaction,
    keys: &Keys,
    region: &str,
    job_id: &str,
    epoch: u64,
) -> Result<Result<Job, ItemResult>> {
    let Some(job) = read_job(tx, keys, job_id).await? else {
        return Ok(Err(result(
            Verdict::NotFound,
            0,
            format!("unknown job {job_id}"),
        )));
    };
    let current = job.assignment_epoch;
    if epoch > current {
        return Ok(Err(result(Verdict::Invalid, current, "epoch never issued")));
    }
    if epoch < current || job.region != region {
        return Ok(Err(result(
            Verdict::StaleEpoch,
            current,
            "the job was revoked or reassigned",
        )));
    }
    if read_moving(tx, keys, job_id).await?.is_some() {
        return Ok(Err(result(
            Verdict::StaleEpoch,
            current,
            "the job is being revoked",
        )));
    }
    Ok(Ok(job))
}

/// Applies one acknowledgement.
pub async fn ack(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    region: &str,
    item: &JobEpoch,
    now: u64,
) -> Result<ItemResult> {
    let mut job = match current_hold(tx, keys, region, &item.job_id, item.assignment_epoch).await? {
        Ok(job) => job,
        Err(rejected) => return Ok(rejected),
    };
    if !job.region_acknowledged {
        job.region_acknowledged = true;
        job.updated_at_unix_ms = now;
        events.job(tx, keys, &job_event(JobEventKind::Updated, &job, None, now))?;
        write_job(tx, keys, &job).await?;
    }
    Ok(result(Verdict::Accepted, job.assignment_epoch, ""))
}

/// Applies one status update (ignored, but accepted, when its version is
/// not above the last applied one for the same epoch).
pub async fn status(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    region: &str,
    update: &JobStatusUpdate,
    now: u64,
) -> Result<ItemResult> {
    let mut job =
        match current_hold(tx, keys, region, &update.job_id, update.assignment_epoch).await? {
            Ok(job) => job,
            Err(rejected) => return Ok(rejected),
        };
    let epoch = job.assignment_epoch;
    let version_key = keys.status_version(&job.job_id);
    if let Some(replayed) = replayed(tx, &version_key, &job, update).await? {
        return Ok(replayed);
    }
    let (counts, to) = match judge(&job, update) {
        Ok(judged) => judged,
        Err(rejected) => return Ok(rejected),
    };
    tx.set(&version_key, &tuple::pack(&(epoch, update.status_version)))?;
    for task in &update.tasks {
        let mut task = task.clone();
        task.region = region.to_string();
        tx.set(&keys.task(&job.job_id, task.index), &task.encode_to_vec())?;
        let mut event = job_event(JobEventKind::TaskChanged, &job, None, now);
        event.task = Some(task);
        events.job(tx, keys, &event)?;
    }
    job.task_counts = Some(counts);
    job.updated_at_unix_ms = now;
    job.waiting_reason = if lifecycle::is_terminal(to) {
        String::new()
    } else {
        update.waiting_reason.clone()
    };
    if to == JobState::Failed {
        job.failure_reason = update.failure_reason.clone();
    }
    let reason = match to {
        JobState::Failed => format!("failed: {}", update.failure_reason),
        JobState::Cancelled => format!("cancelled: {}", job.cancel_reason),
        _ => format!("reported by {region}"),
    };
    let ran = usage::Ran {
        epoch,
        run_ms: update.task_run_ms,
        runs: update.tasks_run,
    };
    usage::count(tx, keys, &job, region, ran, to, now).await?;
    let changed = change_state(tx, keys, events, &mut job, to, &reason, now)?;
    if !changed && update.tasks.is_empty() {
        events.job(tx, keys, &job_event(JobEventKind::Updated, &job, None, now))?;
    }
    if lifecycle::is_terminal(to) {
        handoff::unhold(tx, keys, &job)?;
    }
    write_job(tx, keys, &job).await?;
    Ok(result(Verdict::Accepted, epoch, ""))
}

/// The verdict on an update whose version was already passed for this
/// epoch; `None` when it is new.
async fn replayed(
    tx: &Transaction,
    version_key: &[u8],
    job: &Job,
    update: &JobStatusUpdate,
) -> Result<Option<ItemResult>> {
    let epoch = job.assignment_epoch;
    if let Some(raw) = tx.get(version_key).await? {
        let (seen_epoch, seen_version): (u64, u64) = tuple::unpack(&raw)
            .map_err(|e| GlobalError::Corrupt(format!("status version: {e}")))?;
        if seen_epoch == epoch && update.status_version <= seen_version {
            // Already applied only if it says what the job says now; an
            // older version with another state is out of date, and the
            // region must not take ACCEPTED as "the global tier has this
            // state" (it forgets jobs whose final state was accepted).
            let same = JobState::try_from(update.state).ok() == Some(state_of(job));
            return Ok(Some(if same {
                result(Verdict::Accepted, epoch, "")
            } else {
                result(
                    Verdict::Invalid,
                    epoch,
                    format!(
                        "status_version {} is not newer than the last applied ({seen_version})",
                        update.status_version
                    ),
                )
            }));
        }
    }
    Ok(None)
}

/// The task counts and the state an update brings the job to, or why it is
/// invalid.
fn judge(
    job: &Job,
    update: &JobStatusUpdate,
) -> std::result::Result<(TaskCounts, JobState), ItemResult> {
    let epoch = job.assignment_epoch;
    let task_count = job.spec.as_ref().map_or(0, |s| s.task_count);
    for task in &update.tasks {
        if task.index >= task_count {
            return Err(result(
                Verdict::Invalid,
                epoch,
                format!("task index {} out of range", task.index),
            ));
        }
    }
    let counts = update
        .task_counts
        .unwrap_or_else(|| job.task_counts.unwrap_or_default());
    let reported = JobState::try_from(update.state).unwrap_or(JobState::Unspecified);
    let to = match reported {
        JobState::Unspecified => {
            lifecycle::state_from_counts(&counts, task_count, job.cancel_requested)
        }
        JobState::Pending => {
            return Err(result(
                Verdict::Invalid,
                epoch,
                "a region never reports PENDING",
            ));
        }
        s => s,
    };
    let from = state_of(job);
    if from != to && !lifecycle::allowed(from, to) {
        return Err(result(
            Verdict::Invalid,
            epoch,
            format!("illegal transition {from:?} -> {to:?}"),
        ));
    }
    Ok((counts, to))
}

/// Applies one release confirmation.
pub async fn release(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    region: &str,
    item: &JobRelease,
    now: u64,
) -> Result<ItemResult> {
    let Some(mut job) = read_job(tx, keys, &item.job_id).await? else {
        return Ok(result(
            Verdict::NotFound,
            0,
            format!("unknown job {}", item.job_id),
        ));
    };
    let current = job.assignment_epoch;
    match read_moving(tx, keys, &item.job_id).await? {
        Some(moving) if moving.from == region && moving.epoch == item.assignment_epoch => {
            for task in &item.final_tasks {
                if task.index < job.spec.as_ref().map_or(0, |s| s.task_count) {
                    let mut task = task.clone();
                    task.region = region.to_string();
                    tx.set(&keys.task(&job.job_id, task.index), &task.encode_to_vec())?;
                }
            }
            // The totals are those of the hold being released, which the
            // revocation fenced by adding one to its epoch
            // (`handoff::revoke`): compared with that hold's reports.
            let ran = usage::Ran {
                epoch: item.assignment_epoch.saturating_sub(1),
                run_ms: item.task_run_ms,
                runs: item.tasks_run,
            };
            usage::count(tx, keys, &job, region, ran, state_of(&job), now).await?;
            let reason = format!("released by {region}");
            handoff::release(tx, keys, events, &mut job, &reason, now).await?;
            Ok(result(Verdict::Accepted, current, ""))
        }
        _ if item.assignment_epoch < current => Ok(result(
            Verdict::StaleEpoch,
            current,
            "the job has moved on past that revocation",
        )),
        // Released before, and not reassigned since: the retry is accepted.
        None if item.assignment_epoch == current && job.region.is_empty() => {
            Ok(result(Verdict::Accepted, current, ""))
        }
        _ => Ok(result(
            Verdict::Invalid,
            current,
            "no revocation under that epoch",
        )),
    }
}
