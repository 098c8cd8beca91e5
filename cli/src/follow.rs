//! `meridian job logs -f`: a task's output as it is written.
//!
//! Owns the follow loop on the client side: what it asks for (the attempt,
//! the tail, the offsets it has), what it prints (stdout bytes to `out`,
//! stderr bytes and the follow's own notes to `err`), and resuming: when the
//! stream breaks (a replica went away, a leader changed) it opens the
//! follow again through the leader-following client from the offsets it
//! has, so nothing is printed twice and nothing is lost that the agent
//! still holds. Must never print a byte twice, and never end before the
//! server said the attempt (or, following the latest, the task) ended.

use std::io::Write;

use meridian_proto::v1::{FollowTaskLogsRequest, LogStream, TaskId, TaskLogChunk};
use std::time::Duration;
use tonic::Code;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::render::{self, Output};

/// Pause before reopening a follow that broke before its first chunk.
const REOPEN_PAUSE: Duration = Duration::from_millis(250);

/// First pause between two reads of a job not routed yet; it doubles up to
/// [`PLACEMENT_POLL_MAX`]. Short at first: a job submitted just before is
/// routed within a few hundred milliseconds, and a follow that starts late
/// opens with a tail of lines instead of each as it comes.
const PLACEMENT_POLL: Duration = Duration::from_millis(50);
const PLACEMENT_POLL_MAX: Duration = Duration::from_secs(1);

/// What to follow.
#[derive(Debug, Clone)]
pub struct Follow {
    pub task: TaskId,
    /// 0: the latest attempt, then each next one until the task ends.
    pub attempt: u32,
    /// Trailing bytes per stream to start with (0: the server's default).
    pub tail_bytes: u32,
}

/// Where the follow stands.
#[derive(Debug, Default)]
struct Position {
    /// Attempt of the last chunk received; 0 before the first.
    attempt: u32,
    /// The end of that attempt was received.
    ended: bool,
    stdout: Option<u64>,
    stderr: Option<u64>,
}

impl Position {
    /// The request that resumes from here.
    fn request(&self, follow: &Follow) -> FollowTaskLogsRequest {
        // Following the latest, an attempt whose end was not seen is asked
        // for by number, so its last bytes are not skipped if the task has
        // moved on meanwhile; the latest is asked for again after its end.
        let attempt = match (follow.attempt, self.attempt, self.ended) {
            (0, 0, _) | (0, _, true) => 0,
            (0, a, false) => a,
            (pinned, _, _) => pinned,
        };
        FollowTaskLogsRequest {
            task: Some(follow.task.clone()),
            attempt,
            stdout_offset: self.stdout,
            stderr_offset: self.stderr,
            tail_bytes: follow.tail_bytes,
            offsets_attempt: self.attempt,
        }
    }
}

/// Follows until the server ends the follow; prints as it receives.
pub async fn follow_into(
    client: &mut Client,
    follow: &Follow,
    output: Output,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<()> {
    await_placed(client, &follow.task, err).await?;
    let mut at = Position::default();
    loop {
        let request = at.request(follow);
        let asked_latest = request.attempt == 0;
        let mut stream = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.follow_task_logs(r).await }
            })
            .await?;
        let mut received = false;
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    received = true;
                    take(&mut at, &chunk, output, out, err)?;
                    if chunk.end && follow.attempt != 0 {
                        return Ok(());
                    }
                }
                Ok(None) => {
                    // Following the latest, the server closes after the end
                    // of the task's last attempt; any other close is a
                    // break, and so is the close after an attempt asked
                    // for by number to catch up on.
                    if at.ended && asked_latest {
                        return Ok(());
                    }
                    break;
                }
                Err(status) if gives_up(status.code()) => return Err(status.into()),
                Err(status) => {
                    client.move_after(&status);
                    break;
                }
            }
        }
        if !received {
            // A replica that closes at once is not asked again at once.
            client.clock().sleep(REOPEN_PAUSE).await;
        }
    }
}

/// Waits while the task's job has not been routed to a region yet (a
/// follow started right after the submit), reading the job every
/// [`PLACEMENT_POLL`] and then less often; a job that ended unrouted goes on to the follow,
/// whose answer says so.
async fn await_placed(
    client: &mut Client,
    task: &TaskId,
    err: &mut (dyn Write + Send),
) -> Result<()> {
    let mut told = false;
    let mut pause = PLACEMENT_POLL;
    loop {
        let job = crate::job::get(client, &task.job_id).await?;
        let placed = !job.region.is_empty()
            || job
                .tasks
                .get(task.index as usize)
                .is_some_and(|t| !t.region.is_empty());
        if placed || crate::wait::is_terminal(job.state) {
            return Ok(());
        }
        if !told {
            note(
                err,
                &format!(
                    "waiting for job {} to be routed to a region ...",
                    task.job_id
                ),
            )?;
            told = true;
        }
        client.clock().sleep(pause).await;
        pause = (pause * 2).min(PLACEMENT_POLL_MAX);
    }
}

/// Codes a reopened follow would get again.
fn gives_up(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

/// Prints one chunk and moves the position past it.
fn take(
    at: &mut Position,
    chunk: &TaskLogChunk,
    output: Output,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<()> {
    let fresh = chunk.attempt != at.attempt;
    if fresh {
        if at.attempt != 0 && output == Output::Table {
            note(
                err,
                &format!(
                    "--- attempt {} on node {} ---",
                    chunk.attempt,
                    if chunk.node_id.is_empty() {
                        "?"
                    } else {
                        &chunk.node_id
                    }
                ),
            )?;
        }
        *at = Position {
            attempt: chunk.attempt,
            ..Position::default()
        };
    }
    if chunk.end {
        // A repeated end (the catch-up of an attempt, then the latest,
        // which is that same attempt) says nothing new.
        let repeat = at.ended && !fresh;
        at.ended = true;
        if output == Output::Json && !repeat {
            write_line(out, &render::to_json("TaskLogChunk", chunk)?.to_string())?;
        }
        return Ok(());
    }
    let stream = LogStream::try_from(chunk.stream).unwrap_or(LogStream::Unspecified);
    let next = chunk.offset + chunk.data.len() as u64;
    let seen = match stream {
        LogStream::Stdout => &mut at.stdout,
        LogStream::Stderr => &mut at.stderr,
        LogStream::Unspecified => return Ok(()),
    };
    // Bytes before what was printed already (a resumed stream that started
    // earlier) are cut off, so no byte is printed twice.
    let from = seen.unwrap_or(0).max(chunk.offset);
    if next <= from && seen.is_some() {
        return Ok(());
    }
    let data = &chunk.data[usize::try_from(from - chunk.offset).unwrap_or(0)..];
    *seen = Some(next);
    if output == Output::Json {
        return write_line(out, &render::to_json("TaskLogChunk", chunk)?.to_string());
    }
    if chunk.skipped_bytes > 0 {
        note(
            err,
            &format!(
                "[... {} bytes of {} skipped: the follow fell behind the task's output ...]",
                chunk.skipped_bytes,
                if stream == LogStream::Stderr {
                    "stderr"
                } else {
                    "stdout"
                }
            ),
        )?;
    }
    let sink: &mut (dyn Write + Send) = if stream == LogStream::Stderr {
        err
    } else {
        out
    };
    sink.write_all(data)
        .and_then(|()| sink.flush())
        .map_err(|e| CliError::other(format!("writing the task's output: {e}")))
}

fn note(err: &mut (dyn Write + Send), text: &str) -> Result<()> {
    writeln!(err, "{text}")
        .and_then(|()| err.flush())
        .map_err(|e| CliError::other(format!("writing to standard error: {e}")))
}

fn write_line(out: &mut (dyn Write + Send), line: &str) -> Result<()> {
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::other(format!("writing the follow's output: {e}")))
}
