//! The task attempts of one node and the status reports not yet accepted by
//! the region.
//!
//! Owns: which attempts are live (with their stop handles), which finished
//! recently (so RUN and STOP stay idempotent), the mapping from an exit to
//! a terminal state, and the outbox (latest report per attempt, in attempt
//! order, coalesced). Must never do I/O or read a clock: callers pass times.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use meridian_proto::v1::{RegionLossPolicy, TaskAttempt, TaskReport, TaskState};

use crate::exec::{Exit, ProcessIds, TaskControl};

/// Why the agent asked an attempt to stop; decides its terminal state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A STOP command (cancel, drain, preemption, ...).
    Command(String),
    /// The region lease ran out and the job fails over.
    RegionLoss,
    /// The node epoch was bumped: the region wrote the attempt off.
    Fenced,
    /// The region says the attempt is not bound to this node.
    Orphan,
    /// A newer attempt of the same task arrived.
    Replaced,
    /// The agent is shutting down.
    Shutdown,
}

impl StopReason {
    fn message(&self) -> String {
        match self {
            StopReason::Command(r) if r.is_empty() => "stopped on request".into(),
            StopReason::Command(r) => format!("stopped: {r}"),
            StopReason::RegionLoss => "stopped: region lease ran out (failover)".into(),
            StopReason::Fenced => "stopped: node epoch fenced".into(),
            StopReason::Orphan => "stopped: not bound to this node".into(),
            StopReason::Replaced => "stopped: replaced by a newer attempt".into(),
            StopReason::Shutdown => "stopped: agent shutdown".into(),
        }
    }
}

/// One attempt that runs (or is stopping) on this node.
#[derive(Debug)]
pub struct LiveTask {
    /// Node epoch the attempt was started under.
    pub node_epoch: u64,
    pub policy: RegionLossPolicy,
    /// Grace period for stops not driven by a STOP command.
    pub grace: Duration,
    pub control: TaskControl,
    pub process: Option<ProcessIds>,
    pub started_at_unix_ms: u64,
    pub stop_reason: Option<StopReason>,
}

/// Attempts of one node plus their unsent reports.
#[derive(Debug, Default)]
pub struct TaskTable {
    live: BTreeMap<TaskAttempt, LiveTask>,
    finished: BTreeMap<TaskAttempt, TaskReport>,
    finished_order: VecDeque<TaskAttempt>,
    finished_cap: usize,
    outbox: BTreeMap<TaskAttempt, TaskReport>,
}

impl TaskTable {
    /// A table that remembers up to `finished_cap` finished attempts.
    pub fn new(finished_cap: usize) -> Self {
        TaskTable {
            finished_cap: finished_cap.max(1),
            ..TaskTable::default()
        }
    }

    /// The attempt is live or finished recently.
    pub fn knows(&self, attempt: &TaskAttempt) -> bool {
        self.live.contains_key(attempt) || self.finished.contains_key(attempt)
    }

    pub fn live(&self) -> &BTreeMap<TaskAttempt, LiveTask> {
        &self.live
    }

    pub fn live_mut(&mut self, attempt: &TaskAttempt) -> Option<&mut LiveTask> {
        self.live.get_mut(attempt)
    }

    /// Live attempts of the same task with a lower attempt number.
    pub fn older_attempts(&self, attempt: &TaskAttempt) -> Vec<TaskAttempt> {
        self.live
            .keys()
            .filter(|a| a.task == attempt.task && *a < attempt)
            .cloned()
            .collect()
    }

    /// Last report of a finished attempt.
    pub fn finished_report(&self, attempt: &TaskAttempt) -> Option<&TaskReport> {
        self.finished.get(attempt)
    }

    pub fn insert_live(&mut self, attempt: TaskAttempt, task: LiveTask) {
        self.live.insert(attempt, task);
    }

    /// Asks a live attempt to stop (once; later reasons do not override
    /// the first). Returns whether the attempt was live.
    pub fn stop(&mut self, attempt: &TaskAttempt, reason: StopReason, grace: Duration) -> bool {
        match self.live.get_mut(attempt) {
            Some(t) => {
                if t.stop_reason.is_none() {
                    t.stop_reason = Some(reason);
                }
                t.control.stop(grace);
                true
            }
            None => false,
        }
    }

    /// Records where a live attempt's process is; returns when the attempt
    /// started (`None` when it is not live any more).
    pub fn set_process(
        &mut self,
        attempt: &TaskAttempt,
        process: crate::exec::ProcessIds,
    ) -> Option<u64> {
        let task = self.live.get_mut(attempt)?;
        task.process = Some(process);
        Some(task.started_at_unix_ms)
    }

    /// Queues a report; it replaces any unsent report of the same attempt.
    pub fn queue(&mut self, report: TaskReport) {
        if let Some(attempt) = report.task.clone() {
            self.outbox.insert(attempt, report);
        }
    }

    /// Turns an exit into the attempt's terminal report, moves it to the
    /// finished set and queues the report. `None` if it was not live.
    pub fn finish(
        &mut self,
        attempt: &TaskAttempt,
        exit: Exit,
        now_unix_ms: u64,
    ) -> Option<TaskReport> {
        let task = self.live.remove(attempt)?;
        let (state, mut message) = match (&task.stop_reason, exit.exit_code) {
            (Some(reason), _) => (TaskState::Killed, reason.message()),
            // Too late to start: as a RUN the node refused itself, the
            // region places it again without using a retry.
            (None, _) if exit.not_started => (TaskState::Killed, String::new()),
            (None, Some(0)) => (TaskState::Succeeded, String::new()),
            (None, Some(code)) => (TaskState::Failed, format!("exited with code {code}")),
            (None, None) => (
                TaskState::Failed,
                match exit.signal {
                    Some(sig) => format!("killed by signal {sig}"),
                    None => "ended without exit status".into(),
                },
            ),
        };
        let state = if exit.oom_killed && task.stop_reason.is_none() {
            // Even a leader that shrugged off its child's OOM kill did not
            // fit in its memory.
            TaskState::Failed
        } else {
            state
        };
        if exit.oom_killed && !exit.message.is_empty() {
            // The OOM kill is the news; the exit status is its symptom.
            message = if message.is_empty() {
                exit.message.clone()
            } else {
                format!("{}; {message}", exit.message)
            };
        } else if !exit.message.is_empty() {
            if !message.is_empty() {
                message.push_str("; ");
            }
            message.push_str(&exit.message);
        }
        let report = TaskReport {
            task: Some(attempt.clone()),
            state: state as i32,
            exit_code: exit.exit_code,
            signal: exit.signal,
            message: truncate(message),
            stdout_tail: exit.stdout.bytes,
            stderr_tail: exit.stderr.bytes,
            stdout_truncated: exit.stdout.truncated,
            stderr_truncated: exit.stderr.truncated,
            stdout_bytes: exit.stdout.total,
            stderr_bytes: exit.stderr.total,
            node_epoch: 0,
            started_at_unix_ms: task.started_at_unix_ms,
            finished_at_unix_ms: now_unix_ms,
            observed_at_unix_ms: now_unix_ms,
        };
        self.remember_finished(attempt.clone(), report.clone());
        self.queue(report.clone());
        Some(report)
    }

    /// Records an attempt that ended without ever being live here.
    pub fn remember_finished(&mut self, attempt: TaskAttempt, report: TaskReport) {
        if self.finished.insert(attempt.clone(), report).is_none() {
            self.finished_order.push_back(attempt);
        }
        while self.finished_order.len() > self.finished_cap {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Up to `max` unsent reports, oldest attempt first (copies: they stay
    /// queued until [`TaskTable::acknowledge`]).
    pub fn pending_reports(&self, max: usize) -> Vec<TaskReport> {
        let mut v: Vec<TaskReport> = self.outbox.values().take(max).cloned().collect();
        v.sort_by_key(|r| r.observed_at_unix_ms);
        v
    }

    /// Drops a sent report unless a newer one replaced it meanwhile.
    pub fn acknowledge(&mut self, sent: &TaskReport) {
        if let Some(attempt) = &sent.task
            && self.outbox.get(attempt) == Some(sent)
        {
            self.outbox.remove(attempt);
        }
    }

    /// After a fence of `epoch`: keeps the unsent ends of attempts that
    /// finished on their own (SUCCEEDED or FAILED), marked with the epoch
    /// they ran under, and forgets every other unsent report (the region
    /// wrote those attempts off; a stop the fence caused tells it nothing).
    /// An attempt that finished must not run again for want of its report:
    /// the region accepts a carried end until it places the task again.
    /// Returns (carried, dropped).
    pub fn carry_outbox(&mut self, epoch: u64) -> (usize, usize) {
        let before = self.outbox.len();
        self.outbox.retain(|_, r| carries(r));
        for r in self.outbox.values_mut() {
            if r.node_epoch == 0 {
                r.node_epoch = epoch;
            }
        }
        (self.outbox.len(), before - self.outbox.len())
    }

    /// The unsent ends of finished attempts (what a restarted agent must
    /// still deliver), each with the node epoch it ran under (`epoch` for
    /// those not carried yet).
    pub fn unsent_ends(&self, epoch: u64) -> Vec<TaskReport> {
        self.outbox
            .values()
            .filter(|r| carries(r))
            .map(|r| {
                let mut r = r.clone();
                if r.node_epoch == 0 {
                    r.node_epoch = epoch;
                }
                r
            })
            .collect()
    }
}

/// A report that outlives its node epoch: how an attempt ended on its own.
fn carries(r: &TaskReport) -> bool {
    matches!(
        TaskState::try_from(r.state),
        Ok(TaskState::Succeeded | TaskState::Failed)
    )
}

fn truncate(mut s: String) -> String {
    const MAX: usize = 1024;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_proto::v1::TaskId;

    fn live() -> LiveTask {
        LiveTask {
            node_epoch: 1,
            policy: RegionLossPolicy::Failover,
            grace: Duration::from_secs(1),
            control: TaskControl::new().0,
            process: None,
            started_at_unix_ms: 10,
            stop_reason: None,
        }
    }

    #[test]
    fn an_attempt_started_too_late_ends_killed_with_the_executors_reason_not_failed() {
        let attempt = TaskAttempt {
            task: Some(TaskId {
                job_id: "j".into(),
                index: 0,
            }),
            assignment_epoch: 1,
            attempt: 1,
        };
        let mut table = TaskTable::new(16);
        table.insert_live(attempt.clone(), live());
        let exit = Exit {
            message: "not started: its start deadline passed".into(),
            not_started: true,
            ..Exit::default()
        };
        let report = table.finish(&attempt, exit, 20).expect("it was live");
        assert_eq!(report.state, TaskState::Killed as i32);
        assert_eq!(report.message, "not started: its start deadline passed");

        // The same exit without the flag is a failure to start.
        table.insert_live(attempt.clone(), live());
        let report = table
            .finish(&attempt, Exit::default(), 30)
            .expect("it was live");
        assert_eq!(report.state, TaskState::Failed as i32);
    }
}
