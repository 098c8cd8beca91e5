//! `job logs -f` against a fake global replica (a real tonic server on
//! 127.0.0.1) whose follow stream breaks: the CLI opens it again from the
//! offsets it has, prints no byte twice, names skipped bytes, and ends once
//! the server has said the task ended. Nothing sleeps; the guard only stops
//! a hang.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use meridian_cli::client::{Client, ConnectArgs};
use meridian_cli::follow::{Follow, follow_into};
use meridian_cli::render::Output;
use meridian_proto::v1::*;
use std::sync::Mutex;
use support::{LogChunks, Script};
use tonic::Status;

const GUARD: Duration = Duration::from_secs(30);

fn chunk(stream: LogStream, offset: u64, data: &[u8]) -> Result<TaskLogChunk, Status> {
    Ok(TaskLogChunk {
        attempt: 1,
        node_id: "n-1".into(),
        stream: stream as i32,
        offset,
        data: data.to_vec(),
        ..TaskLogChunk::default()
    })
}

fn end() -> Result<TaskLogChunk, Status> {
    Ok(TaskLogChunk {
        attempt: 1,
        node_id: "n-1".into(),
        end: true,
        state: TaskState::Succeeded as i32,
        ..TaskLogChunk::default()
    })
}

/// Answers the n-th follow with the n-th script, recording each request.
struct Fake {
    requests: Mutex<Vec<FollowTaskLogsRequest>>,
}

#[tonic::async_trait]
impl Script for Fake {
    async fn get_job(&self, _: GetJobRequest) -> Result<GetJobResponse, Status> {
        Ok(GetJobResponse {
            job: Some(Job {
                job_id: "j1".into(),
                region: "r1".into(),
                state: JobState::Running as i32,
                ..Job::default()
            }),
        })
    }

    async fn follow_task_logs(&self, req: FollowTaskLogsRequest) -> Result<LogChunks, Status> {
        let n = {
            let mut requests = self.requests.lock().expect("requests");
            requests.push(req);
            requests.len()
        };
        let items = match n {
            // Two lines, then the replica goes away mid-stream.
            1 => vec![
                chunk(LogStream::Stdout, 0, b"line 1\n"),
                chunk(LogStream::Stdout, 7, b"line 2\n"),
                Err(Status::unavailable("replica shutting down")),
            ],
            // Resumed, but starting earlier than asked (line 2 again), a
            // skip on stderr, then the attempt's end.
            2 => vec![
                chunk(LogStream::Stdout, 7, b"line 2\nline 3\n"),
                Ok(TaskLogChunk {
                    skipped_bytes: 5,
                    ..chunk(LogStream::Stderr, 5, b"oops\n").expect("chunk")
                }),
                end(),
            ],
            // The latest attempt again: the same end, nothing new.
            _ => vec![end()],
        };
        Ok(Box::pin(tokio_stream::iter(items)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_that_breaks_resumes_from_its_offsets_and_prints_no_byte_twice() {
    let fake = Arc::new(Fake {
        requests: Mutex::new(Vec::new()),
    });
    let endpoint = support::serve(fake.clone()).await;
    let mut client = Client::new(&ConnectArgs::new(endpoint, GUARD)).expect("client");
    let follow = Follow {
        task: TaskId {
            job_id: "j1".into(),
            index: 0,
        },
        attempt: 0,
        tail_bytes: 0,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    tokio::time::timeout(
        GUARD,
        follow_into(&mut client, &follow, Output::Table, &mut out, &mut err),
    )
    .await
    .expect("the follow ended")
    .expect("the follow succeeded");

    assert_eq!(String::from_utf8_lossy(&out), "line 1\nline 2\nline 3\n");
    let err = String::from_utf8_lossy(&err);
    assert!(
        err.contains("[... 5 bytes of stderr skipped"),
        "the skip is named: {err}"
    );
    assert!(err.ends_with("oops\n"), "{err}");

    let requests = fake.requests.lock().expect("requests").clone();
    assert_eq!(requests.len(), 3, "{requests:?}");
    // First: the latest attempt, from the tail.
    assert_eq!(
        (
            requests[0].attempt,
            requests[0].stdout_offset,
            requests[0].offsets_attempt
        ),
        (0, None, 0)
    );
    // After the break: the attempt it was in, from the byte after line 2.
    assert_eq!(
        (
            requests[1].attempt,
            requests[1].stdout_offset,
            requests[1].stderr_offset,
            requests[1].offsets_attempt
        ),
        (1, Some(14), None, 1)
    );
    // After that attempt's end: the latest again, from where it stood.
    assert_eq!(
        (
            requests[2].attempt,
            requests[2].stdout_offset,
            requests[2].stderr_offset,
            requests[2].offsets_attempt
        ),
        (0, Some(21), Some(10), 1)
    );
}
