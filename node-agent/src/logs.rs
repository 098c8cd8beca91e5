//! The agent's log server: `AgentLogs.FollowTaskLogs` over the live output
//! of this node's attempts ([`crate::exec::live`]), served on the endpoint
//! the node advertises at registration.
//!
//! Owns the follow loop of one follower: the tail first (or the offsets it
//! resumes from), then each write as it lands, chunks of at most
//! [`MAX_CHUNK_BYTES`], a skip count when the follower fell behind the
//! ring, and the end once the attempt's process has exited and its pipes
//! are drained. Must never hold more than [`CHANNEL_CHUNKS`] chunks for a
//! follower: a slow one is not queued for, it skips.

use std::net::SocketAddr;
use std::sync::Arc;

use meridian_control::tls::Security;
use meridian_control::tls::identity::{RoleKind, only};
use meridian_control::tls::stream::secure_listener;
use meridian_proto::v1::agent_logs_server::{AgentLogs, AgentLogsServer};
use meridian_proto::v1::{FollowTaskLogsRequest, LogStream, TaskLogChunk};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::AgentError;
use crate::exec::live::{AttemptOutput, LiveLogs, RING_BYTES};

/// Largest `data` of one chunk.
pub const MAX_CHUNK_BYTES: usize = 32 * 1024;
/// Trailing bytes a follower without offsets starts with, unless it asks.
pub const DEFAULT_TAIL_BYTES: u64 = 4096;
/// Chunks waiting for the transport, per follower.
pub const CHANNEL_CHUNKS: usize = 2;

/// Serves the live output of one node's attempts.
#[derive(Clone)]
pub struct LogServer {
    live: Arc<LiveLogs>,
    node_id: String,
}

impl LogServer {
    pub fn new(live: Arc<LiveLogs>, node_id: String) -> Self {
        LogServer { live, node_id }
    }

    /// Binds `addr` and serves until `stop` becomes true; returns the
    /// address bound.
    pub async fn serve(
        self,
        addr: SocketAddr,
        security: &Security,
        mut stop: watch::Receiver<bool>,
    ) -> Result<SocketAddr, AgentError> {
        let listener = meridian_control::net::listen(addr)
            .await
            .map_err(|e| AgentError::Config(format!("cannot listen on {addr} for logs: {e}")))?;
        let bound = listener.local_addr;
        let listener = secure_listener(listener, security);
        // A task's output is for the region that runs it: under TLS only a
        // region's certificate may follow it (docs/security.md).
        let server = tonic::transport::Server::builder()
            .add_service(AgentLogsServer::with_interceptor(
                self,
                only(&[RoleKind::Region], "AgentLogs"),
            ))
            .serve_with_incoming_shutdown(listener.incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "log server ended with an error");
            }
        });
        Ok(bound)
    }
}

/// Where a follow starts in one stream: `offset` when resuming, otherwise
/// `tail` bytes before the end.
fn start(output: &AttemptOutput, stream: LogStream, offset: Option<u64>, tail: u64) -> u64 {
    offset.unwrap_or_else(|| output.bounds(stream).1.saturating_sub(tail))
}

/// The tail a request asks for, bounded by what the ring holds.
pub fn tail_bytes(asked: u32) -> u64 {
    match u64::from(asked) {
        0 => DEFAULT_TAIL_BYTES,
        n => n.min(RING_BYTES as u64),
    }
}

/// Sends `output` from `pos` to `tx` until the attempt ends (then a chunk
/// with `end`) or the receiver goes away.
pub async fn follow(
    output: Arc<AttemptOutput>,
    attempt: u32,
    node_id: String,
    mut pos: [u64; 2],
    tx: mpsc::Sender<Result<TaskLogChunk, Status>>,
) {
    let streams = [LogStream::Stdout, LogStream::Stderr];
    let mut changed = output.subscribe();
    loop {
        changed.borrow_and_update();
        // Read before the bytes: once ended, nothing is written after, so
        // the reads below see everything.
        let ended = output.ended();
        let mut sent = false;
        for (i, stream) in streams.into_iter().enumerate() {
            let read = output.read(stream, pos[i], MAX_CHUNK_BYTES);
            if read.data.is_empty() && read.skipped == 0 {
                continue;
            }
            pos[i] = read.offset + read.data.len() as u64;
            let chunk = TaskLogChunk {
                attempt,
                node_id: node_id.clone(),
                stream: stream as i32,
                offset: read.offset,
                data: read.data,
                skipped_bytes: read.skipped,
                ..TaskLogChunk::default()
            };
            // Waiting here is the backpressure: meanwhile the ring moves on
            // and the next read reports what was skipped.
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            sent = true;
        }
        if sent {
            continue;
        }
        if ended {
            let end = TaskLogChunk {
                attempt,
                node_id,
                end: true,
                ..TaskLogChunk::default()
            };
            let _ = tx.send(Ok(end)).await;
            return;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

#[tonic::async_trait]
impl AgentLogs for LogServer {
    type FollowTaskLogsStream = ReceiverStream<Result<TaskLogChunk, Status>>;

    async fn follow_task_logs(
        &self,
        request: Request<FollowTaskLogsRequest>,
    ) -> Result<Response<Self::FollowTaskLogsStream>, Status> {
        let req = request.into_inner();
        let task = req
            .task
            .ok_or_else(|| Status::invalid_argument("task: required"))?;
        let (attempt, output) = self.live.get(&task, req.attempt).ok_or_else(|| {
            Status::not_found(format!(
                "node {} has no output of task {}/{} attempt {}",
                self.node_id, task.job_id, task.index, req.attempt
            ))
        })?;
        // Offsets of another attempt (the client followed an older one)
        // mean nothing here: start that stream from the beginning.
        let same = req.offsets_attempt == 0 || req.offsets_attempt == attempt;
        let (out_at, err_at) = if same {
            (req.stdout_offset, req.stderr_offset)
        } else {
            (Some(0), Some(0))
        };
        let tail = tail_bytes(req.tail_bytes);
        let pos = [
            start(&output, LogStream::Stdout, out_at, tail),
            start(&output, LogStream::Stderr, err_at, tail),
        ];
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::spawn(follow(output, attempt, self.node_id.clone(), pos, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(rx: &mut mpsc::Receiver<Result<TaskLogChunk, Status>>) -> TaskLogChunk {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a chunk within 5 s")
            .expect("stream open")
            .expect("not an error")
    }

    #[tokio::test]
    async fn a_follower_gets_each_write_as_it_lands_and_the_end_after_the_last_byte() {
        let output = Arc::new(AttemptOutput::default());
        output.write(LogStream::Stdout, b"one\n");
        let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::spawn(follow(output.clone(), 1, "n".into(), [0, 0], tx));
        let c = next(&mut rx).await;
        assert_eq!((c.offset, c.data.as_slice()), (0, &b"one\n"[..]));
        output.write(LogStream::Stderr, b"oops\n");
        let c = next(&mut rx).await;
        assert_eq!(c.stream, LogStream::Stderr as i32);
        assert_eq!(c.data, b"oops\n");
        output.write(LogStream::Stdout, b"two\n");
        output.end();
        let c = next(&mut rx).await;
        assert_eq!((c.offset, c.data.as_slice()), (4, &b"two\n"[..]));
        let c = next(&mut rx).await;
        assert!(c.end && c.data.is_empty());
        assert!(rx.recv().await.is_none(), "nothing after the end");
    }

    #[tokio::test]
    async fn a_follower_that_does_not_read_skips_ahead_with_the_count_of_bytes_it_missed() {
        let output = Arc::new(AttemptOutput::default());
        let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::spawn(follow(output.clone(), 1, "n".into(), [0, 0], tx));
        // Far more than the ring and the channel hold, while nobody reads.
        let line = [b'x'; 1000];
        for _ in 0..1000 {
            output.write(LogStream::Stdout, &line);
        }
        output.end();
        let mut received = 0u64;
        let mut skipped = 0u64;
        let mut next_offset = 0u64;
        loop {
            let c = next(&mut rx).await;
            if c.end {
                break;
            }
            assert_eq!(
                c.offset,
                next_offset + c.skipped_bytes,
                "offsets are contiguous bar skips"
            );
            next_offset = c.offset + c.data.len() as u64;
            received += c.data.len() as u64;
            skipped += c.skipped_bytes;
        }
        assert_eq!(
            received + skipped,
            1_000_000,
            "every byte is either sent or counted as skipped"
        );
        assert!(skipped > 0, "a reader that did not keep up skipped");
        assert!(
            received <= (RING_BYTES + CHANNEL_CHUNKS * MAX_CHUNK_BYTES + MAX_CHUNK_BYTES) as u64
        );
    }
}
