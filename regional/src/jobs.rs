//! Jobs entering the region, and the counts that describe them.
//!
//! Owns [`insert_job`], the entry point tests and tools use to give the
//! region work directly (an ASSIGN as the global tier would send it,
//! through the write pipeline's intake), the task counts by state the link
//! reports and compares, and [`simple_spec`]. Applying the global tier's
//! events is the pipeline's intake intent (`pipeline::intake`). Must never
//! write the store itself.

use meridian_proto::v1;

use crate::error::{RegionalError, Result};
use crate::model::TaskBlock;
use crate::pipeline::intake::Intake;
use crate::pipeline::{Intent, Outcome, Pipeline};

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The store changed.
    Changed,
    /// Already applied, or superseded by a newer epoch: nothing changed.
    Unchanged,
}

/// A job's tasks counted by state, indexed by `TaskState` (the digest the
/// link reports and compares).
pub fn task_counts<'a>(blocks: impl Iterator<Item = &'a TaskBlock>) -> [u32; 9] {
    let mut counts = [0u32; 9];
    for t in blocks.flat_map(|b| b.tasks.iter()) {
        counts[t.state.clamp(0, 8) as usize] += 1;
    }
    counts
}

/// Gives the region job `job_id` directly (as an ASSIGN from the global tier
/// would), through `pipeline`. Returns whether anything changed.
pub async fn insert_job(
    pipeline: &Pipeline,
    job_id: &str,
    epoch: u64,
    spec: &v1::JobSpec,
    now_unix_ms: u64,
) -> Result<Applied> {
    let event = v1::AssignmentEvent {
        kind: v1::AssignmentEventKind::Assign as i32,
        job_id: job_id.to_string(),
        assignment_epoch: epoch,
        spec: Some(spec.clone()),
        job_created_at_unix_ms: now_unix_ms,
        ..Default::default()
    };
    let out = pipeline
        .submit(
            None,
            Intent::Intake(Intake {
                events: vec![event],
                cursor: None,
                now_unix_ms,
            }),
        )
        .await?;
    match out {
        Outcome::Intake(applied) => Ok(applied.into_iter().next().unwrap_or(Applied::Unchanged)),
        other => Err(RegionalError::Internal(format!(
            "an intake answered {other:?}"
        ))),
    }
}

/// A minimal valid spec: `tasks` simulated tasks of `cpu_millis` and
/// `memory_bytes` each, for tests, tools and benchmarks.
pub fn simple_spec(tenant: &str, tasks: u32, cpu_millis: u64, memory_bytes: u64) -> v1::JobSpec {
    v1::JobSpec {
        name: "job".into(),
        tenant: tenant.into(),
        task_count: tasks,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                duration_ms: 60_000,
                exit_code: 0,
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis,
            memory_bytes,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        ..Default::default()
    }
}
