//! The regional tier's metrics (Prometheus names, kinds and labels).
//!
//! Owns the names below; every recording goes through these functions so
//! the table in docs/regional.md stays true. Must never block or fail.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `meridian_regional_bindings_total` | counter | `shard` |
//! | `meridian_regional_stale_bindings_total` | counter | `shard` |
//! | `meridian_regional_solve_seconds` | histogram | |
//! | `meridian_regional_queue_depth` | gauge | `shard` |
//! | `meridian_regional_nodes_declared_dead_total` | counter | |
//! | `meridian_regional_nodes_suspected_total` | counter | |
//! | `meridian_regional_tasks_lost_total` | counter | |
//! | `meridian_regional_stops_total` | counter | |
//! | `meridian_regional_agent_calls_total` | counter | `call`, `outcome` |
//! | `meridian_regional_shards_led` | gauge | |
//! | `meridian_regional_assignments_total` | counter | `kind`, `outcome` |
//! | `meridian_regional_task_reports_total` | counter | `state` |
//! | `meridian_regional_fencing_rejections_total` | counter | `epoch` |
//! | `meridian_regional_jobs_retired_total` | counter | |
//! | `meridian_regional_overcommit_refused_total` | counter | |
//! | `meridian_regional_solves_refused_total` | counter | `shard` |
//! | `meridian_regional_placement_gated_total` | counter | `shard` |
//! | `meridian_regional_round_failures_total` | counter | `shard` |
//! | `meridian_regional_assignments_refused_total` | counter | |
//! | `meridian_regional_handoffs_total` | counter | `shard` |
//! | `meridian_regional_pipeline_group_size` | histogram | |
//! | `meridian_regional_pipeline_commit_seconds` | histogram | |
//! | `meridian_regional_pipeline_abandoned_total` | counter | |
//!
//! `shard` takes the configured shard numbers only; no label takes a node,
//! job or task id. `assignments_total` counts the global tier's events the
//! region applied (`kind` `assign`, `cancel`, `revoke`; `outcome` `changed`
//! or `unchanged`); `task_reports_total` counts agents' accepted task
//! reports by the state they report (`running` is a start, `succeeded`,
//! `failed`, `killed` and `lost` are finishes); `fencing_rejections_total`
//! counts writes the region refused or lost as stale: `node` (an agent
//! call under a superseded node epoch), `region_lease` and `assignment`
//! (the global tier refused the region's write). The lease, fence, queue
//! and store series of `meridian-control` and `meridian-store` are served
//! on the same endpoint.

use std::time::Duration;

use crate::placer::sweep::SweepOutcome;

pub(crate) fn bound(shard: u32, bound: usize, stale: usize) {
    metrics::counter!("meridian_regional_bindings_total", "shard" => shard.to_string())
        .increment(bound as u64);
    metrics::counter!("meridian_regional_stale_bindings_total", "shard" => shard.to_string())
        .increment(stale as u64);
}

pub(crate) fn solve_seconds(d: Duration) {
    metrics::histogram!("meridian_regional_solve_seconds").record(d.as_secs_f64());
}

pub(crate) fn queue_depth(shard: u32, depth: usize) {
    metrics::gauge!("meridian_regional_queue_depth", "shard" => shard.to_string())
        .set(depth as f64);
}

pub(crate) fn sweep(out: &SweepOutcome) {
    metrics::counter!("meridian_regional_nodes_declared_dead_total")
        .increment(out.declared_dead.len() as u64);
    metrics::counter!("meridian_regional_nodes_suspected_total")
        .increment(out.suspected.len() as u64);
    metrics::counter!("meridian_regional_tasks_lost_total").increment(out.lost_tasks as u64);
    metrics::counter!("meridian_regional_stops_total").increment(out.stops as u64);
}

pub(crate) fn agent_call(call: &'static str, outcome: &'static str) {
    metrics::counter!("meridian_regional_agent_calls_total", "call" => call, "outcome" => outcome)
        .increment(1);
}

pub(crate) fn shards_led(n: usize) {
    metrics::gauge!("meridian_regional_shards_led").set(n as f64);
}

pub(crate) fn assignment(kind: &'static str, changed: bool) {
    let outcome = if changed { "changed" } else { "unchanged" };
    metrics::counter!("meridian_regional_assignments_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

pub(crate) fn task_report(state: i32) {
    use meridian_proto::v1::TaskState;
    let state = match TaskState::try_from(state) {
        Ok(TaskState::Running) => "running",
        Ok(TaskState::Succeeded) => "succeeded",
        Ok(TaskState::Failed) => "failed",
        Ok(TaskState::Killed) => "killed",
        Ok(TaskState::Lost) => "lost",
        _ => "other",
    };
    metrics::counter!("meridian_regional_task_reports_total", "state" => state).increment(1);
}

/// Finished jobs the region forgot after the global tier accepted their
/// final state.
pub(crate) fn jobs_retired(n: u64) {
    metrics::counter!("meridian_regional_jobs_retired_total").increment(n);
}

/// An assignment stream resumed from a cursor the compaction had trimmed
/// past, answered with a snapshot of the node's bound tasks.
pub(crate) fn stream_snapshot_after_trim() {
    metrics::counter!("meridian_regional_stream_snapshots_after_trim_total").increment(1);
}

/// Command-log entries cleared (counted in nodes touched) and tombstones
/// forgotten by the link leader's compaction.
pub(crate) fn compacted(nodes: usize, tombstones: usize) {
    metrics::counter!("meridian_regional_compacted_command_logs_total").increment(nodes as u64);
    metrics::counter!("meridian_regional_forgotten_tombstones_total").increment(tombstones as u64);
}

/// A binding refused at commit because its node had no room left for it
/// (a wrong or stale decision; the task is placed again).
pub(crate) fn overcommit_refused() {
    metrics::counter!("meridian_regional_overcommit_refused_total").increment(1);
}

/// A solve whose decisions broke one of the solver's own safety rules and
/// were thrown away (a solver bug; the jobs wait with the rule as reason).
pub(crate) fn solve_refused(shard: u32) {
    metrics::counter!("meridian_regional_solves_refused_total", "shard" => shard.to_string())
        .increment(1);
}

/// A round that placed nothing because the region did not hold its lease
/// at the global tier, or had not caught up with its assignment stream.
pub(crate) fn placement_gated(shard: u32) {
    metrics::counter!("meridian_regional_placement_gated_total", "shard" => shard.to_string())
        .increment(1);
}

/// A placement round that failed (then retried after a backoff).
pub(crate) fn round_failed(shard: u32) {
    metrics::counter!("meridian_regional_round_failures_total", "shard" => shard.to_string())
        .increment(1);
}

/// An ASSIGN the region could not take, reported FAILED upward.
pub(crate) fn assignment_refused() {
    metrics::counter!("meridian_regional_assignments_refused_total").increment(1);
}

/// Jobs a shard leader handed to another shard with room for them.
pub(crate) fn handed_off(shard: u32, n: usize) {
    metrics::counter!("meridian_regional_handoffs_total", "shard" => shard.to_string())
        .increment(n as u64);
}

/// Intents committed together in one write-pipeline transaction.
pub(crate) fn pipeline_group(n: usize) {
    metrics::histogram!("meridian_regional_pipeline_group_size").record(n as f64);
}

/// An agent's registration or report dropped from the write pipeline
/// because its caller had stopped waiting.
pub(crate) fn pipeline_abandoned() {
    metrics::counter!("meridian_regional_pipeline_abandoned_total").increment(1);
}

/// Time of one write-pipeline transaction (reads, decisions, commit).
pub(crate) fn pipeline_commit(d: Duration) {
    metrics::histogram!("meridian_regional_pipeline_commit_seconds").record(d.as_secs_f64());
}

pub(crate) fn fencing_rejection(epoch: &'static str) {
    metrics::counter!("meridian_regional_fencing_rejections_total", "epoch" => epoch).increment(1);
}

/// Shows the series that count rare events (fencing, retries) at zero from
/// the start; called once the process's recorder is installed.
pub(crate) fn register_series() {
    let _ = metrics::counter!("meridian_regional_overcommit_refused_total");
    let _ = metrics::counter!("meridian_regional_pipeline_abandoned_total");
    let _ = metrics::counter!("meridian_regional_assignments_refused_total");
    for epoch in ["node", "region_lease", "assignment"] {
        let _ = metrics::counter!("meridian_regional_fencing_rejections_total", "epoch" => epoch);
    }
    meridian_control::telemetry::register_series();
    meridian_store::database::register_metrics();
}
