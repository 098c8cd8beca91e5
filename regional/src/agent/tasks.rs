//! One page of a job's tasks (`RegionAdmin.ListJobTasks`), from memory.
//!
//! Owns the listing of a large job's tasks by index, optionally of some
//! states only, with page tokens: the blocks whose kept counts show none of
//! the wanted states are skipped whole, so a page of a 100,000-task job
//! costs its blocks' counts and the tasks it returns, not the job. Must
//! never read the store or change anything.

use meridian_proto::limits::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use meridian_proto::v1;
use tonic::Status;

use crate::model::TASK_BLOCK;
use crate::state::RegionState;

/// The page `req` asks for, as `state` holds the job now.
pub fn page(
    state: &RegionState,
    region: &str,
    req: &v1::ListJobTasksRequest,
    now_unix_ms: u64,
) -> Result<v1::ListJobTasksResponse, Status> {
    if req.job_id.is_empty() {
        return Err(Status::invalid_argument("job_id: required"));
    }
    let size = match req.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => {
            return Err(Status::invalid_argument(format!(
                "page_size: at most {MAX_PAGE_SIZE}"
            )));
        }
        n => n,
    } as usize;
    let mut wanted = [false; 9];
    for s in &req.states {
        match v1::TaskState::try_from(*s) {
            Ok(v1::TaskState::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "states: unknown task state {s}"
                )));
            }
            Ok(state) => wanted[state as usize] = true,
        }
    }
    if req.states.is_empty() {
        wanted = [true; 9];
    }
    let from = from_token(&req.page_token)?;
    let job = state.jobs.get(&req.job_id).ok_or_else(|| {
        Status::not_found(format!("job {} is not held by this region", req.job_id))
    })?;
    let mut out = v1::ListJobTasksResponse::default();
    let matching = |counts: &[u32; 9]| counts.iter().zip(wanted).any(|(n, w)| w && *n > 0);
    'blocks: for (_, b) in job.blocks.range(from / TASK_BLOCK..) {
        if !matching(&b.counts) {
            continue;
        }
        for (offset, t) in b.block.tasks.iter().enumerate() {
            let index = b.block.first + offset as u32;
            if index < from || !wanted[t.state.clamp(0, 8) as usize] {
                continue;
            }
            if out.tasks.len() == size {
                out.next_page_token = format!("i{index}");
                break 'blocks;
            }
            out.tasks.push(v1::TaskStatus {
                index,
                state: t.state,
                node_id: t.node.clone(),
                region: region.to_string(),
                attempt: t.attempt,
                exit_code: t.exit_code,
                message: t.message.clone(),
                placed_at_unix_ms: t.placed_at,
                started_at_unix_ms: t.started_at,
                finished_at_unix_ms: t.finished_at,
                updated_at_unix_ms: now_unix_ms,
                ..Default::default()
            });
        }
    }
    let c = |s: v1::TaskState| job.counts[s as usize];
    out.task_counts = Some(v1::TaskCounts {
        pending: c(v1::TaskState::Pending),
        placed: c(v1::TaskState::Placed),
        starting: c(v1::TaskState::Starting),
        running: c(v1::TaskState::Running),
        succeeded: c(v1::TaskState::Succeeded),
        failed: c(v1::TaskState::Failed),
        killed: c(v1::TaskState::Killed),
        lost: c(v1::TaskState::Lost),
    });
    Ok(out)
}

/// The first index a page token names (0 for none).
fn from_token(token: &str) -> Result<u32, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix('i')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Status::invalid_argument("page_token: not a token of this listing"))
}
