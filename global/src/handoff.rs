//! Ownership of jobs by regions: assign, revoke (fence first), release.
//!
//! Owns the three steps of the fence-first hand-off (docs/architecture.md) as functions over one
//! transaction: [`assign`] gives a pending job to a region under a new
//! assignment epoch; [`revoke`] bumps the epoch first, so the old region's
//! acknowledgements and status writes fail from that commit on, and records
//! the hand-off as in progress; [`release`] ends it (the old region
//! confirmed, or its lease expired plus the skew margin) and returns the job
//! to PENDING. It must never offer a job to another region before the
//! release, and never let two regions hold the same epoch.

use meridian_proto::v1::{
    AssignmentEvent, AssignmentEventKind, Job, JobEventKind, JobState, RegionLossPolicy,
};
use meridian_store::{Transaction, tuple};

use crate::error::{GlobalError, Result};
use crate::events::EventWriter;
use crate::jobs::{change_state, job_event, write_job};
use crate::keys::Keys;
use crate::lifecycle;

/// A hand-off in progress: the job was revoked from `from` under `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moving {
    /// The region that held the job.
    pub from: String,
    /// The epoch that fenced its hold (carried by the REVOKE event).
    pub epoch: u64,
    /// When the revocation committed (global clock).
    pub since_unix_ms: u64,
}

/// Reads the hand-off in progress for a job, if any.
pub async fn read_moving(tx: &Transaction, keys: &Keys, job_id: &str) -> Result<Option<Moving>> {
    let Some(raw) = tx.get(&keys.moving(job_id)).await? else {
        return Ok(None);
    };
    let (from, epoch, since_unix_ms): (String, u64, u64) =
        tuple::unpack(&raw).map_err(|e| GlobalError::Corrupt(format!("moving record: {e}")))?;
    Ok(Some(Moving {
        from,
        epoch,
        since_unix_ms,
    }))
}

/// CPU millis a job holds while routed (all the tasks it may run at once).
pub fn cpu_of(job: &Job) -> i64 {
    let spec = job.spec.clone().unwrap_or_default();
    let per = spec.resources.as_ref().map_or(0, |r| r.cpu_millis);
    i64::try_from(per.saturating_mul(u64::from(tasks_at_once(&spec)))).unwrap_or(i64::MAX)
}

/// How many of a job's tasks can run at once: all of them, or its
/// parallelism (an array of 100,000 tasks capped at 1,000 needs room for
/// 1,000, in the router's fit and in the tenant's quota alike).
pub fn tasks_at_once(spec: &meridian_proto::v1::JobSpec) -> u32 {
    match spec.parallelism {
        0 => spec.task_count,
        cap => cap.min(spec.task_count),
    }
}

/// True when a job follows FAILOVER on region loss (the default).
pub fn fails_over(job: &Job) -> bool {
    let policy = job.spec.as_ref().map_or(0, |s| s.on_region_loss);
    RegionLossPolicy::try_from(policy).unwrap_or(RegionLossPolicy::Failover)
        != RegionLossPolicy::KeepRunning
}

/// Clears a job from its region's held index and its tenant's usage.
pub fn unhold(tx: &Transaction, keys: &Keys, job: &Job) -> Result<()> {
    if job.region.is_empty() {
        return Ok(());
    }
    tx.clear(&keys.held(&job.region, &job.job_id))?;
    let tenant = job.spec.as_ref().map(|s| s.tenant.as_str()).unwrap_or("");
    tx.add_i64(&keys.tenant_usage(tenant), -cpu_of(job))?;
    Ok(())
}

/// Gives a PENDING job to `region` under a new epoch: held index, tenant
/// usage, the ASSIGN event on the region's stream and the state change.
pub async fn assign(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job: &mut Job,
    region: &str,
    now: u64,
) -> Result<()> {
    job.assignment_epoch += 1;
    job.region = region.to_string();
    job.region_acknowledged = false;
    // The region explains its own waits from here on.
    job.waiting_reason.clear();
    tx.clear(&keys.pending(&job.job_id))?;
    tx.set(
        &keys.held(region, &job.job_id),
        &job.assignment_epoch.to_be_bytes(),
    )?;
    let tenant = job
        .spec
        .as_ref()
        .map(|s| s.tenant.clone())
        .unwrap_or_default();
    tx.add_i64(&keys.tenant_usage(&tenant), cpu_of(job))?;
    let event = AssignmentEvent {
        kind: AssignmentEventKind::Assign as i32,
        job_id: job.job_id.clone(),
        assignment_epoch: job.assignment_epoch,
        spec: crate::gate::spec_for_region(job),
        request_id: job.request_id.clone(),
        reason: "routed".to_string(),
        at_unix_ms: now,
        job_created_at_unix_ms: job.created_at_unix_ms,
        trace_id: job.trace_id.clone(),
        ..AssignmentEvent::default()
    };
    events.region(tx, keys, region, &event)?;
    let reason = format!("routed to {region}");
    change_state(tx, keys, events, job, JobState::Routed, &reason, now)?;
    write_job(tx, keys, job).await
}

/// Revokes a job from its region, fence first: the epoch grows in this
/// commit, so from now on only the new epoch is accepted, and the region is
/// told (REVOKE, carrying the new epoch) to stop the job and release it.
pub async fn revoke(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job: &mut Job,
    reason: &str,
    now: u64,
) -> Result<()> {
    let from = job.region.clone();
    // Exactly one: the release's usage totals are judged against the
    // hold's epoch, one below the revocation's (`reports::release`).
    job.assignment_epoch += 1;
    job.region_acknowledged = false;
    job.updated_at_unix_ms = now;
    tx.set(
        &keys.moving(&job.job_id),
        &tuple::pack(&(from.as_str(), job.assignment_epoch, now)),
    )?;
    let event = AssignmentEvent {
        kind: AssignmentEventKind::Revoke as i32,
        job_id: job.job_id.clone(),
        assignment_epoch: job.assignment_epoch,
        reason: reason.to_string(),
        at_unix_ms: now,
        ..AssignmentEvent::default()
    };
    events.region(tx, keys, &from, &event)?;
    events.job(tx, keys, &job_event(JobEventKind::Updated, job, None, now))?;
    write_job(tx, keys, job).await
}

/// Ends a hand-off: the old region released the job (or is presumed to
/// have stopped it). The job returns to PENDING to be routed again, or ends
/// CANCELLED when a cancel was requested meanwhile.
pub async fn release(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job: &mut Job,
    reason: &str,
    now: u64,
) -> Result<()> {
    tx.clear(&keys.moving(&job.job_id))?;
    unhold(tx, keys, job)?;
    job.region.clear();
    job.region_acknowledged = false;
    if lifecycle::is_terminal(lifecycle::state_of(job)) {
        return write_job(tx, keys, job).await;
    }
    if job.cancel_requested {
        let why = format!("cancelled: {}", job.cancel_reason);
        change_state(tx, keys, events, job, JobState::Cancelled, &why, now)?;
    } else {
        change_state(tx, keys, events, job, JobState::Pending, reason, now)?;
        tx.set(&keys.pending(&job.job_id), b"")?;
    }
    write_job(tx, keys, job).await
}

#[cfg(test)]
mod tests {
    use meridian_proto::v1::{JobSpec, Resources};

    use super::*;

    #[test]
    fn an_array_holds_the_cpu_of_its_parallelism_not_of_all_its_tasks() {
        let spec = |task_count, parallelism| JobSpec {
            task_count,
            parallelism,
            resources: Some(Resources {
                cpu_millis: 1_000,
                ..Resources::default()
            }),
            ..JobSpec::default()
        };
        let job = |s: JobSpec| Job {
            spec: Some(s),
            ..Job::default()
        };
        assert_eq!(cpu_of(&job(spec(100_000, 1_000))), 1_000_000);
        assert_eq!(cpu_of(&job(spec(100_000, 0))), 100_000_000);
        assert_eq!(tasks_at_once(&spec(10, 0)), 10);
        assert_eq!(tasks_at_once(&spec(10, 4)), 4);
    }
}
