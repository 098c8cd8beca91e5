//! A job's tasks for its console page: counts by state, task rows, and one
//! page of `ListJobTasks`.
//!
//! Owns turning the API's task statuses and counts into the console's
//! views. Must never list a job's tasks any other way than through
//! [`FederationService`]'s `ListJobTasks` (forwarded to the job's region,
//! which answers from memory), so a page of a 100,000-task job costs a page.

use meridian_console::ConsoleError;
use meridian_console::view::{TaskPage, TaskPageQuery, TaskRow};
use meridian_proto::v1::federation_server::Federation;
use meridian_proto::v1::{ListJobTasksRequest, TaskCounts, TaskState, TaskStatus};
use tonic::{Code, Status};

use crate::federation::FederationService;

/// `(state, count)` in lifecycle order, the names the console filters by.
pub(super) fn counts(c: &TaskCounts) -> Vec<(String, u32)> {
    c.by_state()
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect()
}

pub(super) fn task_row(t: &TaskStatus) -> TaskRow {
    TaskRow {
        index: t.index,
        state: super::task_state_name(t.state),
        region: t.region.clone(),
        node: t.node_id.clone(),
        attempt: t.attempt,
        placed_at_unix_ms: t.placed_at_unix_ms,
        started_at_unix_ms: t.started_at_unix_ms,
        finished_at_unix_ms: t.finished_at_unix_ms,
        exit_code: t.exit_code,
        message: t.message.clone(),
    }
}

/// The task state a console filter names; `Invalid` naming `state`.
fn state(name: &str) -> Result<i32, ConsoleError> {
    TaskState::from_str_name(&format!("TASK_STATE_{}", name.to_ascii_uppercase()))
        .filter(|s| *s != TaskState::Unspecified)
        .map(|s| s as i32)
        .ok_or_else(|| ConsoleError::Invalid(format!("state: unknown task state {name:?}")))
}

fn status_error(s: Status) -> ConsoleError {
    let text = s.message().to_string();
    match s.code() {
        // Not routed yet, or ended and forgotten by its region.
        Code::NotFound | Code::FailedPrecondition => ConsoleError::NotFound(text),
        Code::InvalidArgument => ConsoleError::Invalid(text),
        Code::Unavailable => ConsoleError::Unavailable(text),
        _ => ConsoleError::Failed(text),
    }
}

/// One page of job `job_id`'s tasks, through the API's `ListJobTasks`.
pub(super) async fn page(
    api: &FederationService,
    job_id: &str,
    query: &TaskPageQuery,
) -> Result<TaskPage, ConsoleError> {
    let req = ListJobTasksRequest {
        job_id: job_id.to_string(),
        states: query
            .states
            .iter()
            .map(|s| state(s))
            .collect::<Result<_, _>>()?,
        page_size: query.page_size,
        page_token: query.page_token.clone(),
    };
    let resp = api
        .list_job_tasks(tonic::Request::new(req))
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(TaskPage {
        tasks: resp.tasks.iter().map(task_row).collect(),
        next_page_token: resp.next_page_token,
    })
}
