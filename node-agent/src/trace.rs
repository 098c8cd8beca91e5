//! The agent's step of a job's trace: `run`.
//!
//! Owns the span a RUN command is carried out in, with the job's trace id
//! from the command (`AssignmentCommand.trace_id`) as its `trace_id` field,
//! and the per-job event that says the attempt started. Must never decide
//! anything or fail a launch: a missing or malformed trace id only leaves
//! the field empty.

use meridian_control::trace;
use meridian_proto::v1::TaskAttempt;

/// The span of starting `attempt` on `node` in the job's trace.
pub(crate) fn run_span(node: &str, attempt: &TaskAttempt, trace_id: &str) -> tracing::Span {
    let task = attempt.task.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "run",
        trace_id = %trace_id,
        job_id = %task.job_id,
        index = task.index,
        attempt = attempt.attempt,
        node = %node,
    );
    trace::link(&span, trace::stored(trace_id));
    span
}

/// The attempt started (inside its [`run_span`]).
pub(crate) fn started(trace_id: &str, attempt: &TaskAttempt) {
    let job_id = attempt.task.as_ref().map_or("", |t| t.job_id.as_str());
    tracing::debug!(
        target: trace::TARGET,
        trace_id = %trace_id,
        job_id = %job_id,
        "run: task attempt started"
    );
}
