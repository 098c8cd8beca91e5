//! The report intent: task state changes an agent observed, applied.
//!
//! Owns the task state machine on the agent's word: under a current node
//! epoch, a report for an attempt bound to the reporting node moves it to
//! STARTING or RUNNING, or ends it; an ended attempt goes back to pending
//! (the next attempt) when it was stopped to move it (drain, preemption, the
//! agent's own stop during a failover) or failed with retries left; captured
//! output is kept per attempt. A report repeated after its commit was
//! uncertain is accepted again without change. A final report the agent
//! carried across a fence (its node epoch superseded before the report was
//! acknowledged) names the epoch its attempt ran under; it ends the task
//! while that attempt is still the task's latest, bound or written off and
//! not yet placed again, so an attempt that finished is never run twice
//! for want of its report. Must never accept a call under a superseded
//! node epoch, a carried report that is not an end, or a report for an
//! attempt that is not the task's latest on this node.

use meridian_control::planted::{Bug, on};
use meridian_proto::v1;

use super::overlay::{Missing, ReadSet, Tx};
use crate::agent::admin::StoredLogs;
use crate::model::{JobPhase, Keys, NodeLiveness, TASK_BLOCK, TaskRecord, encode};

/// Whether a node's epoch is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochCheck {
    Current,
    Stale { current: u64 },
    Unknown,
}

/// What a report intent did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportOutcome {
    pub check: EpochCheck,
    pub results: Vec<v1::ItemResult>,
}

/// The reports of one node's call.
#[derive(Debug, Clone)]
pub struct Report {
    pub request: v1::ReportTaskStatusRequest,
    pub now_unix_ms: u64,
}

fn item(verdict: v1::Verdict, message: &str) -> v1::ItemResult {
    v1::ItemResult {
        verdict: verdict as i32,
        current_epoch: 0,
        message: message.to_string(),
    }
}

/// The epoch check of `node` against a presented `epoch`.
pub fn check_epoch(node: Option<&crate::model::NodeRecord>, epoch: u64) -> EpochCheck {
    match node {
        None => EpochCheck::Unknown,
        Some(n) if n.epoch != epoch || n.liveness == NodeLiveness::Down => {
            EpochCheck::Stale { current: n.epoch }
        }
        Some(_) => EpochCheck::Current,
    }
}

impl Report {
    pub(super) fn reads(&self, want: &mut ReadSet) {
        want.nodes.insert(self.request.node_id.clone());
        for r in &self.request.reports {
            if let Some(t) = r.task.as_ref().and_then(|a| a.task.as_ref()) {
                want.blocks.insert((t.job_id.clone(), t.index / TASK_BLOCK));
                want.jobs.insert(t.job_id.clone());
            }
        }
    }

    pub(super) fn weight(&self) -> usize {
        self.request
            .reports
            .iter()
            .map(|r| 200 + r.stdout_tail.len() + r.stderr_tail.len())
            .sum()
    }

    pub(super) fn apply(&self, tx: &mut Tx<'_>, keys: &Keys) -> Result<ReportOutcome, Missing> {
        let req = &self.request;
        let check = check_epoch(tx.node(&req.node_id)?, req.node_epoch);
        if check != EpochCheck::Current {
            return Ok(ReportOutcome {
                check,
                results: Vec::new(),
            });
        }
        let mut results = Vec::with_capacity(req.reports.len());
        for r in &req.reports {
            let Some(a) = &r.task else {
                results.push(item(v1::Verdict::Invalid, "task is required"));
                continue;
            };
            let Some(t) = &a.task else {
                results.push(item(v1::Verdict::Invalid, "task.task is required"));
                continue;
            };
            let job = tx.job(&t.job_id)?.map(JobFacts::of);
            let Some(rec) = tx.task_mut(&t.job_id, t.index)? else {
                results.push(item(v1::Verdict::NotFound, "unknown task"));
                continue;
            };
            let state = v1::TaskState::try_from(r.state).unwrap_or(v1::TaskState::Unspecified);
            // A report carried across a fence names the epoch its attempt
            // ran under; the call itself is under the current one.
            let carried = r.node_epoch != 0 && r.node_epoch != req.node_epoch;
            let epoch = if carried {
                r.node_epoch
            } else {
                req.node_epoch
            };
            // An attempt of an earlier hold of the job here (taken away and
            // given back since) is not this task's, whatever its number.
            let ours = rec.node == req.node_id
                && rec.attempt == a.attempt
                && rec.node_epoch == epoch
                && rec.of_hold(a.assignment_epoch);
            if ours && rec.is_terminal() && rec.state == state as i32 {
                // A repeat of an end already applied (the agent resent it,
                // or our commit of it was uncertain): nothing to change.
                results.push(item(v1::Verdict::Accepted, ""));
                continue;
            }
            if carried {
                // Only how the attempt ended can outlive its epoch: the
                // agent stopped everything else at the fence. It ends the
                // task while the attempt is still the task's latest, bound
                // or written off and not yet placed again.
                let ended = matches!(state, v1::TaskState::Succeeded | v1::TaskState::Failed);
                let written_off = rec.awaits_report_of(&req.node_id, a.attempt, r.node_epoch)
                    && rec.of_hold(a.assignment_epoch);
                if !ended || !((ours && rec.is_bound()) || written_off) {
                    results.push(item(
                        v1::Verdict::NotFound,
                        "the attempt's node epoch was superseded and the task has moved on",
                    ));
                    continue;
                }
                if written_off {
                    rec.node = std::mem::take(&mut rec.lost_node);
                    rec.node_epoch = std::mem::take(&mut rec.lost_node_epoch);
                }
            } else if !rec.is_bound() || !ours {
                results.push(item(
                    v1::Verdict::NotFound,
                    "attempt not bound to this node",
                ));
                continue;
            }
            match state {
                v1::TaskState::Starting | v1::TaskState::Running => {
                    rec.state = state as i32;
                    if r.started_at_unix_ms > 0 {
                        rec.started_at = r.started_at_unix_ms;
                    }
                }
                v1::TaskState::Succeeded
                | v1::TaskState::Failed
                | v1::TaskState::Killed
                | v1::TaskState::Lost => {
                    end(rec, state, r, job, (&t.job_id, t.index), self.now_unix_ms);
                    if carried && rec.is_terminal() && rec.message.is_empty() {
                        rec.message = format!(
                            "ended under node epoch {}, reported after that epoch was superseded",
                            r.node_epoch
                        );
                    }
                    if !r.stdout_tail.is_empty() || !r.stderr_tail.is_empty() {
                        let logs = StoredLogs {
                            node: req.node_id.clone(),
                            stdout: r.stdout_tail.clone(),
                            stderr: r.stderr_tail.clone(),
                            stdout_truncated: r.stdout_truncated,
                            stderr_truncated: r.stderr_truncated,
                            stdout_bytes: r.stdout_bytes,
                            stderr_bytes: r.stderr_bytes,
                            at: r.observed_at_unix_ms.max(self.now_unix_ms),
                        };
                        tx.set_raw(keys.logs(&t.job_id, t.index, a.attempt), encode(&logs));
                    }
                }
                _ => {
                    results.push(item(
                        v1::Verdict::Invalid,
                        "state must be STARTING, RUNNING or terminal",
                    ));
                    continue;
                }
            }
            results.push(item(v1::Verdict::Accepted, ""));
        }
        Ok(ReportOutcome { check, results })
    }
}

/// Ends attempt `rec` in `state`: placed again (next attempt) when it was
/// moved or may retry, otherwise final.
/// What an ending task needs to know of its job.
#[derive(Clone, Copy)]
struct JobFacts {
    active: bool,
    max_attempts: u32,
    retry_base_ms: u64,
    retry_cap_ms: u64,
}

impl JobFacts {
    fn of(job: &crate::model::JobRecord) -> Self {
        JobFacts {
            active: job.state == JobPhase::Active,
            max_attempts: job.max_attempts,
            retry_base_ms: job.retry_base_ms,
            retry_cap_ms: job.retry_cap_ms,
        }
    }
}

fn end(
    rec: &mut TaskRecord,
    state: v1::TaskState,
    r: &v1::TaskReport,
    job: Option<JobFacts>,
    (job_id, index): (&str, u32),
    now_unix_ms: u64,
) {
    account(rec, r);
    rec.exit_code = r.exit_code;
    rec.message = r.message.clone();
    let active = job.is_some_and(|j| j.active);
    let attempts_left = job.is_some_and(|j| rec.attempt < j.max_attempts);
    let again = active
        && match state {
            // Stopped by the region to move it (drain, preemption): placed
            // again.
            v1::TaskState::Killed if rec.stopping == "drain" || rec.stopping == "preempted" => true,
            // Stopped by the agent on its own (its region lease ran out
            // during a scheduler failover, or it shut down) while the job
            // stays here: nobody else will run it, so it is placed again,
            // and like a drain it costs the job none of its retries: the
            // task did not fail. The node epoch check already fenced stale
            // reports.
            v1::TaskState::Killed => rec.stopping.is_empty() && !on(Bug::AgentStopTakenAsFinal),
            v1::TaskState::Failed | v1::TaskState::Lost => attempts_left,
            _ => false,
        };
    if again {
        // A failure waits out the spec's backoff, this index alone; a task
        // moved (drain, preemption, the agent's own stop) did not fail.
        let wait = match (state, job) {
            (v1::TaskState::Failed | v1::TaskState::Lost, Some(j)) => {
                super::retry::delay_ms(j.retry_base_ms, j.retry_cap_ms, job_id, index, rec.attempt)
            }
            _ => 0,
        };
        let not_before = if wait == 0 {
            0
        } else {
            now_unix_ms.saturating_add(wait)
        };
        rec.repend(
            not_before,
            &format!("attempt {} ended {}", rec.attempt, state.as_str_name()),
        );
    } else {
        rec.state = state as i32;
        rec.stopping.clear();
    }
}

/// Adds an ending attempt's run time to the task's accounting and keeps
/// its start and end on the record (an attempt that never started running
/// adds nothing). Called once per attempt: a
/// repeated end is answered before it reaches [`end`], and an end of an
/// earlier attempt is refused as not bound.
fn account(rec: &mut TaskRecord, r: &v1::TaskReport) {
    if r.started_at_unix_ms == 0 {
        return;
    }
    // An agent that leaves the end out is taken to have ended it when it
    // observed the end.
    let finished = if r.finished_at_unix_ms > 0 {
        r.finished_at_unix_ms
    } else {
        r.observed_at_unix_ms
    };
    rec.ran_ms = rec
        .ran_ms
        .saturating_add(finished.saturating_sub(r.started_at_unix_ms));
    rec.runs = rec.runs.saturating_add(1);
    rec.started_at = r.started_at_unix_ms;
    rec.finished_at = finished;
}
