//! `RegionAdmin.FollowTaskLogs`: a task's output as it is written, read
//! from the agent of the node that runs the attempt, on any replica.
//!
//! Owns the follow of one client: which attempt (the one asked for, or the
//! latest and then each next one until the task ends), the connection to
//! the node's log server (again, from the offsets reached, when it breaks
//! while the attempt runs), the stored tail of an attempt that has ended,
//! and the `end` chunk with the attempt's final state. Holds at most
//! [`CHANNEL_CHUNKS`] chunks per follower: waiting to send is what slows
//! the reading of the agent's stream, and the agent skips, never queues.
//!
//! Must never write to the store or change a task: it only reads.

use std::time::Duration;

use meridian_proto::v1;
use meridian_proto::v1::agent_logs_client::AgentLogsClient;
use meridian_proto::v1::{FollowTaskLogsRequest, LogStream, TaskLogChunk};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::RegionApi;
use super::admin::StoredLogs;
use crate::model::decode;
use crate::model::view::scan;

/// Chunks waiting for the client, per follower.
pub const CHANNEL_CHUNKS: usize = 2;
/// Largest `data` of a chunk served from a stored tail.
const MAX_CHUNK_BYTES: usize = 32 * 1024;
/// Trailing bytes a follower without offsets starts with by default.
const DEFAULT_TAIL_BYTES: u64 = 4096;
/// Wait before dialing a node's log server again (it restarted, or has not
/// opened the attempt's output yet).
const REDIAL_AFTER: Duration = Duration::from_millis(200);
/// How long a follow waits for a job unknown here to arrive (the global
/// tier routed it, the region has not taken it in yet).
const ARRIVAL_WAIT: Duration = Duration::from_secs(10);
/// Bound on connecting to a node's log server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type Tx = mpsc::Sender<Result<TaskLogChunk, Status>>;

/// What this replica knows of one task now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    attempt: u32,
    state: v1::TaskState,
    node: String,
    /// The node's log server, empty when it serves none.
    endpoint: String,
}

impl Seen {
    /// Attempt `a` has ended (final, or the task waits for its next one).
    fn ended(&self, a: u32) -> bool {
        self.attempt > a || (self.attempt == a && !self.bound())
    }

    fn bound(&self) -> bool {
        matches!(
            self.state,
            v1::TaskState::Placed | v1::TaskState::Starting | v1::TaskState::Running
        )
    }

    fn terminal(&self) -> bool {
        matches!(
            self.state,
            v1::TaskState::Succeeded
                | v1::TaskState::Failed
                | v1::TaskState::Killed
                | v1::TaskState::Lost
        )
    }
}

/// Where the client is in each stream of the attempt it follows.
#[derive(Debug, Clone, Copy, Default)]
struct Offsets {
    stdout: Option<u64>,
    stderr: Option<u64>,
}

impl Offsets {
    fn advance(&mut self, chunk: &TaskLogChunk) {
        let next = Some(chunk.offset + chunk.data.len() as u64);
        match LogStream::try_from(chunk.stream) {
            Ok(LogStream::Stdout) => self.stdout = next,
            Ok(LogStream::Stderr) => self.stderr = next,
            _ => {}
        }
    }
}

fn seen(api: &RegionApi, task: &v1::TaskId) -> Option<Seen> {
    let state = api.state.read();
    let job = state.jobs.get(&task.job_id)?;
    let rec = job.task(task.index)?;
    let endpoint = state
        .nodes
        .get(&rec.node)
        .and_then(|n| n.record.as_ref())
        .map(|n| n.logs_endpoint.clone())
        .unwrap_or_default();
    Some(Seen {
        attempt: rec.attempt,
        state: rec.state(),
        node: rec.node.clone(),
        endpoint,
    })
}

/// Starts following; the first checks (the task exists, the attempt asked
/// for has started) fail the call itself.
pub async fn start(
    api: RegionApi,
    req: FollowTaskLogsRequest,
) -> Result<ReceiverStream<Result<TaskLogChunk, Status>>, Status> {
    let task = req
        .task
        .clone()
        .ok_or_else(|| Status::invalid_argument("task: required"))?;
    if task.job_id.is_empty() {
        return Err(Status::invalid_argument("task.job_id: required"));
    }
    if req.tail_bytes as usize > meridian_proto::limits::MAX_OUTPUT_TAIL_BYTES {
        return Err(Status::invalid_argument(format!(
            "tail_bytes: at most {}",
            meridian_proto::limits::MAX_OUTPUT_TAIL_BYTES
        )));
    }
    match seen(&api, &task) {
        Some(s) if req.attempt > s.attempt => {
            return Err(Status::not_found(format!(
                "task {}/{} has no attempt {} (latest: {})",
                task.job_id, task.index, req.attempt, s.attempt
            )));
        }
        _ => {}
    }
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        if let Err(status) = run(&api, &task, &req, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// The whole follow: one attempt after another until done.
async fn run(
    api: &RegionApi,
    task: &v1::TaskId,
    req: &FollowTaskLogsRequest,
    tx: &Tx,
) -> Result<(), Status> {
    let pinned = req.attempt > 0;
    let watcher = api.state.subscribe();
    let mut target = req.attempt;
    let mut at = Offsets {
        stdout: req.stdout_offset,
        stderr: req.stderr_offset,
    };
    let mut offsets_attempt = req.offsets_attempt;
    let tail = match u64::from(req.tail_bytes) {
        0 => DEFAULT_TAIL_BYTES,
        n => n,
    };
    let mut moved_on = false;
    arrived(api, task, req.attempt, &watcher, tx).await?;
    loop {
        // Wait for the attempt to follow to be placed (or to be over).
        let now = loop {
            match seen(api, task) {
                None if moved_on => return Ok(()),
                None => break None,
                Some(s) if target == 0 && s.attempt == 0 && !s.terminal() => {}
                Some(s) if target == 0 || s.attempt >= target => break Some(s),
                // The task ended without starting the attempt waited for.
                Some(s) if s.terminal() => return Ok(()),
                Some(_) => {}
            }
            tokio::select! {
                _ = watcher.changed() => {}
                () = tx.closed() => return Ok(()),
            }
        };
        if target == 0 {
            target = now.as_ref().map_or(0, |s| s.attempt);
        }
        if offsets_attempt != 0 && offsets_attempt != target {
            // Offsets of an earlier attempt: this one is new to the client.
            at = Offsets {
                stdout: Some(0),
                stderr: Some(0),
            };
        }
        offsets_attempt = target;
        let node = now.as_ref().map(|s| s.node.clone()).unwrap_or_default();
        if let Some(s) = now.as_ref().filter(|s| !s.ended(target)) {
            live(api, task, target, s, &mut at, tail, tx, &watcher).await?;
        }
        if tx.is_closed() {
            return Ok(());
        }
        // The attempt is over: whatever the agent did not hand over comes
        // from the stored tail, then the end.
        let now = settled(api, task, target, &watcher, tx).await;
        let state = now
            .as_ref()
            .filter(|s| s.attempt == target && s.terminal())
            .map_or(v1::TaskState::Unspecified, |s| s.state);
        let logs = stored(api, task, target).await?;
        let node = logs.as_ref().map_or(node, |l| l.node.clone());
        if let Some(logs) = logs {
            send_stored(&logs, target, &mut at, tail, tx).await?;
        }
        let end = TaskLogChunk {
            attempt: target,
            node_id: node,
            end: true,
            state: state as i32,
            ..TaskLogChunk::default()
        };
        if tx.send(Ok(end)).await.is_err() {
            return Ok(());
        }
        let finished = now
            .as_ref()
            .is_none_or(|s| s.attempt == target && s.terminal());
        if pinned || finished {
            return Ok(());
        }
        target += 1;
        moved_on = true;
        at = Offsets {
            stdout: Some(0),
            stderr: Some(0),
        };
    }
}

/// Waits for a job the global tier routed here just now to reach this
/// replica (for at most [`ARRIVAL_WAIT`]); NOT_FOUND when it does not and
/// no output of it is stored either.
async fn arrived(
    api: &RegionApi,
    task: &v1::TaskId,
    attempt: u32,
    watcher: &crate::state::delta::Watcher,
    tx: &Tx,
) -> Result<(), Status> {
    if seen(api, task).is_some() || stored(api, task, attempt).await?.is_some() {
        return Ok(());
    }
    let deadline = api.clock.sleep(ARRIVAL_WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = watcher.changed() => {
                if seen(api, task).is_some() {
                    return Ok(());
                }
            }
            () = &mut deadline => break,
            () = tx.closed() => return Ok(()),
        }
    }
    Err(Status::not_found(format!(
        "task {}/{} is not known to region {}",
        task.job_id, task.index, api.region
    )))
}

/// Waits until this replica has applied the end of attempt `target` (the
/// agent may hand over its last bytes just before the report lands).
async fn settled(
    api: &RegionApi,
    task: &v1::TaskId,
    target: u32,
    watcher: &crate::state::delta::Watcher,
    tx: &Tx,
) -> Option<Seen> {
    loop {
        let now = seen(api, task);
        if now.as_ref().is_none_or(|s| s.ended(target)) {
            return now;
        }
        tokio::select! {
            _ = watcher.changed() => {}
            () = tx.closed() => return now,
        }
    }
}

/// Relays the agent's stream of a running attempt until it ends (or the
/// attempt is over here and the agent cannot be reached).
#[allow(clippy::too_many_arguments)]
async fn live(
    api: &RegionApi,
    task: &v1::TaskId,
    target: u32,
    first: &Seen,
    at: &mut Offsets,
    tail: u64,
    tx: &Tx,
    watcher: &crate::state::delta::Watcher,
) -> Result<(), Status> {
    let mut now = first.clone();
    loop {
        if now.endpoint.is_empty() {
            if now.state == v1::TaskState::Placed {
                // Not started yet: no output to follow.
            } else {
                return Err(Status::failed_precondition(format!(
                    "node {} serves no live output (a simulated node, or an agent started \
                     with --logs-listen none); its output is kept once the attempt ends",
                    now.node
                )));
            }
        } else {
            match relay(&api.security, &now, task, target, at, tail, tx).await {
                Relay::Ended | Relay::ClientGone => return Ok(()),
                Relay::Broken(why) => {
                    tracing::debug!(task = ?task, attempt = target, %why, "log server stream broke; dialing again");
                }
            }
        }
        // Dial again after a pause, or stop once the attempt is over here.
        let pause = api.clock.sleep(REDIAL_AFTER);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                () = &mut pause => break,
                _ = watcher.changed() => {}
                () = tx.closed() => return Ok(()),
            }
            if seen(api, task).is_none_or(|s| s.ended(target)) {
                return Ok(());
            }
        }
        match seen(api, task) {
            Some(s) if !s.ended(target) => now = s,
            _ => return Ok(()),
        }
    }
}

enum Relay {
    /// The agent sent the attempt's end.
    Ended,
    ClientGone,
    /// Could not dial, the agent does not have the attempt (yet), or the
    /// stream broke.
    Broken(String),
}

async fn relay(
    security: &meridian_control::tls::Security,
    now: &Seen,
    task: &v1::TaskId,
    target: u32,
    at: &mut Offsets,
    tail: u64,
    tx: &Tx,
) -> Relay {
    let endpoint = match tonic::transport::Endpoint::from_shared(now.endpoint.clone()) {
        Ok(e) => e.connect_timeout(CONNECT_TIMEOUT),
        Err(e) => return Relay::Broken(format!("bad endpoint {}: {e}", now.endpoint)),
    };
    let channel = match meridian_control::tls::stream::connect(endpoint, security).await {
        Ok(c) => c,
        Err(e) => return Relay::Broken(format!("dialing {}: {e}", now.endpoint)),
    };
    let request = FollowTaskLogsRequest {
        task: Some(task.clone()),
        attempt: target,
        stdout_offset: at.stdout,
        stderr_offset: at.stderr,
        tail_bytes: u32::try_from(tail).unwrap_or(u32::MAX),
        offsets_attempt: target,
    };
    let mut stream = match AgentLogsClient::new(channel)
        .follow_task_logs(request)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Relay::Broken(format!("{}: {}", s.code(), s.message())),
    };
    loop {
        let next = tokio::select! {
            m = stream.message() => m,
            () = tx.closed() => return Relay::ClientGone,
        };
        match next {
            Ok(Some(chunk)) if chunk.end => return Relay::Ended,
            Ok(Some(chunk)) => {
                at.advance(&chunk);
                if tx.send(Ok(chunk)).await.is_err() {
                    return Relay::ClientGone;
                }
            }
            Ok(None) => return Relay::Broken("stream ended without the end".into()),
            Err(s) => return Relay::Broken(format!("{}: {}", s.code(), s.message())),
        }
    }
}

/// The stored output of attempt `attempt` (0: the latest stored).
async fn stored(
    api: &RegionApi,
    task: &v1::TaskId,
    attempt: u32,
) -> Result<Option<StoredLogs>, Status> {
    let keys = api.keys.clone();
    let task = task.clone();
    let found = api
        .db
        .run(|tx, _| {
            let keys = keys.clone();
            let task = task.clone();
            async move {
                let mut best: Option<StoredLogs> = None;
                for (k, v) in scan(&tx, keys.task_logs(&task.job_id, task.index), true).await? {
                    let a = keys.attempt_of_logs(&k).unwrap_or(0);
                    if attempt == 0 || attempt == a {
                        best = Some(decode("logs", &v)?);
                    }
                }
                Ok::<_, crate::error::RegionalError>(best)
            }
        })
        .await?;
    Ok(found)
}

/// Sends what `logs` holds past the client's offsets (the tail when it has
/// none), in chunks, with the skip before the tail when it has less.
async fn send_stored(
    logs: &StoredLogs,
    attempt: u32,
    at: &mut Offsets,
    tail: u64,
    tx: &Tx,
) -> Result<(), Status> {
    for (stream, bytes, total, from) in [
        (
            LogStream::Stdout,
            &logs.stdout,
            logs.stdout_bytes,
            at.stdout,
        ),
        (
            LogStream::Stderr,
            &logs.stderr,
            logs.stderr_bytes,
            at.stderr,
        ),
    ] {
        // A record of an agent that did not send totals: the tail is all.
        let end = total.max(bytes.len() as u64);
        let first = end - bytes.len() as u64;
        let mut pos = from.unwrap_or_else(|| end.saturating_sub(tail));
        let mut skipped = first.saturating_sub(pos);
        pos = pos.clamp(first, end);
        while pos < end || skipped > 0 {
            let i = usize::try_from(pos - first).unwrap_or(usize::MAX);
            let data: Vec<u8> = bytes
                .iter()
                .skip(i)
                .take(MAX_CHUNK_BYTES)
                .copied()
                .collect();
            let chunk = TaskLogChunk {
                attempt,
                node_id: logs.node.clone(),
                stream: stream as i32,
                offset: pos,
                skipped_bytes: skipped,
                data,
                ..TaskLogChunk::default()
            };
            at.advance(&chunk);
            pos += chunk.data.len() as u64;
            skipped = 0;
            if tx.send(Ok(chunk)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}
