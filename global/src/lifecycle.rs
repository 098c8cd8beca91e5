//! The job lifecycle as a state machine over the stored `Job` view.
//!
//! Owns which state changes are legal (pending -> routed -> placed ->
//! running -> succeeded | failed | cancelled, and back to pending only when a
//! job is taken back from a region), the history of transitions with their
//! timestamps, and the roll-up of task states into counts. It must never
//! touch the store or the clock: callers pass the time in.

use meridian_proto::v1::{
    Job, JobSpec, JobState, JobTransition, TaskCounts, TaskState, TaskStatus,
};

/// Transitions kept per job (oldest dropped first).
pub const HISTORY_KEPT: usize = 100;

/// A state change the machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal job transition {from:?} -> {to:?}")]
pub struct IllegalTransition {
    /// State the job was in.
    pub from: JobState,
    /// State asked for.
    pub to: JobState,
}

/// True for SUCCEEDED, FAILED and CANCELLED.
pub fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Whether `from -> to` is a legal change (staying put is not a change).
pub fn allowed(from: JobState, to: JobState) -> bool {
    if from == to || is_terminal(from) || to == JobState::Unspecified {
        return false;
    }
    match from {
        JobState::Unspecified => to == JobState::Pending,
        // Nothing but routing, a cancel or a permanent failure leaves PENDING.
        JobState::Pending => matches!(
            to,
            JobState::Routed | JobState::Failed | JobState::Cancelled
        ),
        // Held by a region: the region reports progress in any direction
        // (a retry sends tasks back to unbound), and a hand-off returns the
        // job to PENDING.
        _ => true,
    }
}

/// A fresh job in PENDING, with its first history entry.
pub fn new_job(job_id: String, request_id: String, spec: JobSpec, now_ms: u64) -> Job {
    let task_count = spec.task_count;
    let mut job = Job {
        job_id,
        request_id,
        spec: Some(spec),
        state: JobState::Unspecified as i32,
        task_counts: Some(TaskCounts {
            pending: task_count,
            ..TaskCounts::default()
        }),
        created_at_unix_ms: now_ms,
        updated_at_unix_ms: now_ms,
        ..Job::default()
    };
    // Unspecified -> Pending is always allowed.
    let _ = transition(&mut job, JobState::Pending, "submitted", now_ms);
    job
}

/// The job's state, with unknown numbers read as UNSPECIFIED.
pub fn state_of(job: &Job) -> JobState {
    JobState::try_from(job.state).unwrap_or(JobState::Unspecified)
}

/// Moves `job` to `to`, recording the transition (with the job's region and
/// epoch after the change) in its history. Returns `Ok(false)` when the job
/// is already in `to`.
pub fn transition(
    job: &mut Job,
    to: JobState,
    reason: &str,
    now_ms: u64,
) -> Result<bool, IllegalTransition> {
    let from = state_of(job);
    if from == to {
        return Ok(false);
    }
    if !allowed(from, to) {
        return Err(IllegalTransition { from, to });
    }
    job.state = to as i32;
    job.updated_at_unix_ms = now_ms;
    job.history.push(JobTransition {
        from: from as i32,
        to: to as i32,
        at_unix_ms: now_ms,
        reason: reason.to_string(),
        region: job.region.clone(),
        assignment_epoch: job.assignment_epoch,
    });
    if job.history.len() > HISTORY_KEPT {
        let extra = job.history.len() - HISTORY_KEPT;
        job.history.drain(..extra);
    }
    Ok(true)
}

/// The last transition recorded, if any.
pub fn last_transition(job: &Job) -> Option<JobTransition> {
    job.history.last().cloned()
}

/// Counts tasks by state.
pub fn roll_up<'a>(tasks: impl IntoIterator<Item = &'a TaskStatus>) -> TaskCounts {
    let mut counts = TaskCounts::default();
    for task in tasks {
        match TaskState::try_from(task.state).unwrap_or(TaskState::Unspecified) {
            TaskState::Pending | TaskState::Unspecified => counts.pending += 1,
            TaskState::Placed => counts.placed += 1,
            TaskState::Starting => counts.starting += 1,
            TaskState::Running => counts.running += 1,
            TaskState::Succeeded => counts.succeeded += 1,
            TaskState::Failed => counts.failed += 1,
            TaskState::Killed => counts.killed += 1,
            TaskState::Lost => counts.lost += 1,
        }
    }
    counts
}

/// The job state implied by task counts of a job held by a region, for a
/// region that reports counts but no job state.
pub fn state_from_counts(counts: &TaskCounts, task_count: u32, cancel_requested: bool) -> JobState {
    let finished = counts.succeeded + counts.failed + counts.killed + counts.lost;
    if task_count > 0 && finished >= task_count {
        if counts.succeeded == task_count {
            return JobState::Succeeded;
        }
        if cancel_requested {
            return JobState::Cancelled;
        }
        return JobState::Failed;
    }
    if counts.running + counts.starting > 0 {
        JobState::Running
    } else if counts.placed > 0 {
        JobState::Placed
    } else {
        JobState::Routed
    }
}

/// A copy of the job without tasks and history (the summary view).
pub fn summary(job: &Job) -> Job {
    Job {
        tasks: Vec::new(),
        history: Vec::new(),
        ..job.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            name: "n".into(),
            tenant: "t".into(),
            task_count: 2,
            ..JobSpec::default()
        }
    }

    #[test]
    fn a_new_job_is_pending_with_one_history_entry() {
        let job = new_job("j".into(), "r".into(), spec(), 5);
        assert_eq!(state_of(&job), JobState::Pending);
        assert_eq!(job.history.len(), 1);
        assert_eq!(job.history[0].at_unix_ms, 5);
        assert_eq!(job.task_counts.unwrap().pending, 2);
    }

    #[test]
    fn a_pending_job_cannot_be_running_before_it_is_routed() {
        let mut job = new_job("j".into(), "r".into(), spec(), 0);
        assert!(transition(&mut job, JobState::Running, "x", 1).is_err());
        assert!(transition(&mut job, JobState::Routed, "routed", 1).unwrap());
        assert!(transition(&mut job, JobState::Running, "x", 2).unwrap());
    }

    #[test]
    fn terminal_states_are_final() {
        for terminal in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
            for to in [JobState::Pending, JobState::Routed, JobState::Running] {
                assert!(!allowed(terminal, to));
            }
        }
    }

    #[test]
    fn history_keeps_the_latest_hundred_transitions() {
        let mut job = new_job("j".into(), "r".into(), spec(), 0);
        transition(&mut job, JobState::Routed, "r", 1).unwrap();
        for i in 0..200u64 {
            let to = if i % 2 == 0 {
                JobState::Running
            } else {
                JobState::Placed
            };
            transition(&mut job, to, "flap", i + 2).unwrap();
        }
        assert_eq!(job.history.len(), HISTORY_KEPT);
        assert_eq!(job.history.last().unwrap().at_unix_ms, 201);
    }

    #[test]
    fn counts_imply_the_job_state() {
        let c = |running, succeeded, failed| TaskCounts {
            running,
            succeeded,
            failed,
            ..TaskCounts::default()
        };
        assert_eq!(state_from_counts(&c(1, 0, 0), 2, false), JobState::Running);
        assert_eq!(
            state_from_counts(&c(0, 2, 0), 2, false),
            JobState::Succeeded
        );
        assert_eq!(state_from_counts(&c(0, 1, 1), 2, false), JobState::Failed);
        assert_eq!(state_from_counts(&c(0, 0, 0), 2, false), JobState::Routed);
    }
}
