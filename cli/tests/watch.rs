//! `job watch` and `job submit --wait` against a fake global replica whose
//! history was trimmed: the watch fails OUT_OF_RANGE (mid-stream, or at
//! open for a cursor it no longer holds), and the CLI reads the jobs again
//! and watches from an empty cursor, printing each change once and never
//! losing the final outcome.
//!
//! The fake is a real tonic `Federation` server on 127.0.0.1 answering from
//! a script. Nothing sleeps to wait for a condition; the guard only stops a
//! hang.

use crate::support;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_cli::client::{Client, ConnectArgs};
use meridian_cli::job::WatchArgs;
use meridian_cli::render::Output;
use meridian_cli::wait::{WaitOptions, follow};
use meridian_cli::watch::watch_into;
use meridian_proto::v1::*;
use support::{Events, Script as Scripted};
use tonic::Status;

const GUARD: Duration = Duration::from_secs(30);

/// One WatchJobs answer: what the stream carries, and whether it then
/// stays open (silent) or ends.
struct Script {
    items: Vec<Result<JobEvent, Status>>,
    then_open: bool,
}

/// A fake replica answering from scripts.
#[derive(Default)]
struct Fake {
    /// GetJob answers per job, in order; the last one repeats.
    gets: Mutex<BTreeMap<String, VecDeque<Job>>>,
    /// ListJobs answers (one page each), in order; the last one repeats.
    lists: Mutex<VecDeque<Vec<Job>>>,
    /// WatchJobs answers, in order; once used up, streams stay silent.
    streams: Mutex<VecDeque<Script>>,
    /// Answer OUT_OF_RANGE to every watch opened with a cursor.
    refuse_cursors: bool,
    /// The cursor of every watch opened.
    cursors: Mutex<Vec<Vec<u8>>>,
}

fn out_of_range() -> Status {
    Status::out_of_range("cursor: the events after this cursor are no longer kept")
}

fn take_or_repeat<T: Clone>(queue: &mut VecDeque<T>) -> Option<T> {
    if queue.len() > 1 {
        queue.pop_front()
    } else {
        queue.front().cloned()
    }
}

#[tonic::async_trait]
impl Scripted for Fake {
    async fn get_job(&self, request: GetJobRequest) -> Result<GetJobResponse, Status> {
        let id = request.job_id;
        let mut gets = self.gets.lock().expect("lock");
        let job = gets
            .get_mut(&id)
            .and_then(take_or_repeat)
            .ok_or_else(|| Status::not_found(format!("job {id}")))?;
        Ok(GetJobResponse { job: Some(job) })
    }
    async fn list_jobs(&self, _: ListJobsRequest) -> Result<ListJobsResponse, Status> {
        let jobs = take_or_repeat(&mut self.lists.lock().expect("lock")).unwrap_or_default();
        Ok(ListJobsResponse {
            jobs,
            next_page_token: String::new(),
        })
    }
    async fn watch_jobs(&self, request: WatchJobsRequest) -> Result<Events, Status> {
        let cursor = request.cursor;
        self.cursors.lock().expect("lock").push(cursor.clone());
        if self.refuse_cursors && !cursor.is_empty() {
            return Err(out_of_range());
        }
        let script = self.streams.lock().expect("lock").pop_front();
        Ok(match script {
            None => Box::pin(tokio_stream::pending()),
            Some(Script { items, then_open }) => {
                let items = tokio_stream::iter(items);
                if then_open {
                    Box::pin(tokio_stream::StreamExt::chain(
                        items,
                        tokio_stream::pending(),
                    ))
                } else {
                    Box::pin(items)
                }
            }
        })
    }
}

/// Serves `fake` on a free loopback port; returns its URL.
async fn serve(fake: Arc<Fake>) -> String {
    support::serve(fake).await
}

fn client(endpoint: &str) -> Client {
    Client::new(&ConnectArgs::new(endpoint, Duration::from_secs(5))).expect("client")
}

fn job(id: &str, state: JobState, updated_at: u64) -> Job {
    Job {
        job_id: id.into(),
        state: state as i32,
        updated_at_unix_ms: updated_at,
        ..Job::default()
    }
}

/// An UPDATED event of `job` at position `n`.
fn updated(job: Job, n: u8) -> Result<JobEvent, Status> {
    Ok(JobEvent {
        cursor: vec![n; 12],
        kind: JobEventKind::Updated as i32,
        at_unix_ms: job.updated_at_unix_ms,
        job: Some(job),
        ..JobEvent::default()
    })
}

fn bookmark(at: u64, n: u8) -> Result<JobEvent, Status> {
    Ok(JobEvent {
        cursor: vec![n; 12],
        kind: JobEventKind::Bookmark as i32,
        at_unix_ms: at,
        ..JobEvent::default()
    })
}

fn gets(answers: &[(&str, Vec<Job>)]) -> Mutex<BTreeMap<String, VecDeque<Job>>> {
    Mutex::new(
        answers
            .iter()
            .map(|(id, jobs)| (id.to_string(), jobs.iter().cloned().collect()))
            .collect(),
    )
}

fn watch_args(job_ids: &[&str]) -> WatchArgs {
    WatchArgs {
        job_ids: job_ids.iter().map(|s| s.to_string()).collect(),
        tenant: None,
        region: None,
        tasks: false,
    }
}

/// What the watch printed, shared with the test, which can await a number
/// of lines without polling.
#[derive(Clone)]
struct Printed {
    bytes: Arc<Mutex<Vec<u8>>>,
    lines: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Printed {
    fn new() -> Self {
        Printed {
            bytes: Arc::default(),
            lines: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// `(kind, job, detail)` of each line.
    fn rows(&self) -> Vec<(String, String, String)> {
        let bytes = self.bytes.lock().expect("lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|line| {
                let mut words = line.split_whitespace().map(str::to_string);
                let kind = words.next().unwrap_or_default();
                let job = words.next().unwrap_or_default();
                (kind, job, words.collect::<Vec<_>>().join(" "))
            })
            .collect()
    }
}

impl std::io::Write for Printed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.bytes.lock().expect("lock");
        bytes.extend_from_slice(buf);
        let lines = bytes.iter().filter(|b| **b == b'\n').count();
        self.lines.send_replace(lines);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn row(kind: &str, job: &str, detail: &str) -> (String, String, String) {
    (kind.into(), job.into(), detail.into())
}

#[tokio::test]
async fn job_watch_reads_the_jobs_again_when_its_stream_ends_out_of_range_and_prints_each_change_once()
 {
    let fake = Arc::new(Fake {
        gets: gets(&[
            (
                "j1-1",
                vec![
                    job("j1-1", JobState::Running, 10),
                    job("j1-1", JobState::Succeeded, 20),
                ],
            ),
            (
                "j1-2",
                vec![
                    job("j1-2", JobState::Running, 10),
                    job("j1-2", JobState::Running, 15),
                ],
            ),
        ]),
        streams: Mutex::new(VecDeque::from([
            Script {
                items: vec![
                    updated(job("j1-1", JobState::Running, 11), 1),
                    Err(out_of_range()),
                ],
                then_open: false,
            },
            // Opened before the re-read, so it also carries what the
            // re-read already showed.
            Script {
                items: vec![
                    updated(job("j1-1", JobState::Succeeded, 20), 2),
                    updated(job("j1-2", JobState::Running, 15), 3),
                    updated(job("j1-2", JobState::Failed, 30), 4),
                ],
                then_open: true,
            },
        ])),
        ..Fake::default()
    });
    let url = serve(fake.clone()).await;
    let printed = Printed::new();
    let mut out = printed.clone();
    let watched = tokio::time::timeout(
        GUARD,
        watch_into(
            &mut client(&url),
            Output::Table,
            watch_args(&["j1-1", "j1-2"]),
            &mut out,
        ),
    )
    .await
    .expect("the watch ended once both jobs were final");
    watched.expect("the watch succeeded");
    assert_eq!(
        printed.rows(),
        vec![
            row("UPDATED", "j1-1", "RUNNING"),
            row("UPDATED", "j1-1", "SUCCEEDED"),
            row("UPDATED", "j1-2", "FAILED"),
        ]
    );
    assert_eq!(
        *fake.cursors.lock().expect("lock"),
        vec![Vec::<u8>::new(), Vec::new()],
        "watched again from an empty cursor"
    );
}

#[tokio::test]
async fn job_watch_reads_the_jobs_again_when_its_cursor_is_refused_out_of_range_at_open() {
    let fake = Arc::new(Fake {
        gets: gets(&[(
            "j1-1",
            vec![
                job("j1-1", JobState::Running, 10),
                job("j1-1", JobState::Succeeded, 20),
            ],
        )]),
        streams: Mutex::new(VecDeque::from([Script {
            // The replica ends the stream; the cursor it left is refused.
            items: vec![updated(job("j1-1", JobState::Running, 11), 1)],
            then_open: false,
        }])),
        refuse_cursors: true,
        ..Fake::default()
    });
    let url = serve(fake.clone()).await;
    let printed = Printed::new();
    let mut out = printed.clone();
    tokio::time::timeout(
        GUARD,
        watch_into(
            &mut client(&url),
            Output::Table,
            watch_args(&["j1-1"]),
            &mut out,
        ),
    )
    .await
    .expect("the watch ended once the job was final")
    .expect("the watch succeeded");
    assert_eq!(
        printed.rows(),
        vec![
            row("UPDATED", "j1-1", "RUNNING"),
            row("UPDATED", "j1-1", "SUCCEEDED"),
        ]
    );
    assert_eq!(
        *fake.cursors.lock().expect("lock"),
        vec![Vec::new(), vec![1u8; 12], Vec::new()]
    );
}

#[tokio::test]
async fn job_watch_of_all_jobs_lists_them_again_on_out_of_range_and_prints_only_what_changed_since_its_last_news()
 {
    let fake = Arc::new(Fake {
        lists: Mutex::new(VecDeque::from([vec![
            // Shown RUNNING before; final now.
            job("j1-1", JobState::Succeeded, 20),
            // Created while the watch was behind.
            job("j1-2", JobState::Running, 15),
            // Final before the watch's last news: nothing to say.
            job("j1-3", JobState::Succeeded, 5),
        ]])),
        streams: Mutex::new(VecDeque::from([
            Script {
                items: vec![
                    updated(job("j1-1", JobState::Running, 11), 1),
                    bookmark(12, 2),
                    Err(out_of_range()),
                ],
                then_open: false,
            },
            Script {
                items: vec![
                    updated(job("j1-2", JobState::Running, 15), 3),
                    updated(job("j1-9", JobState::Running, 40), 4),
                ],
                then_open: true,
            },
        ])),
        ..Fake::default()
    });
    let url = serve(fake.clone()).await;
    let printed = Printed::new();
    let mut out = printed.clone();
    let mut lines = printed.lines.subscribe();
    let watch = tokio::spawn(async move {
        watch_into(&mut client(&url), Output::Table, watch_args(&[]), &mut out).await
    });
    // The last scripted event is j1-9's; the stream then stays open.
    tokio::time::timeout(GUARD, lines.wait_for(|n| *n >= 4))
        .await
        .expect("four lines printed")
        .expect("the printer lives");
    watch.abort();
    assert_eq!(
        printed.rows(),
        vec![
            row("UPDATED", "j1-1", "RUNNING"),
            row("UPDATED", "j1-1", "SUCCEEDED"),
            row("UPDATED", "j1-2", "RUNNING"),
            row("UPDATED", "j1-9", "RUNNING"),
        ]
    );
    assert_eq!(
        *fake.cursors.lock().expect("lock"),
        vec![Vec::<u8>::new(), Vec::new()]
    );
}

#[tokio::test]
async fn submit_wait_reads_the_job_again_after_out_of_range_and_returns_its_final_state() {
    let fake = Arc::new(Fake {
        gets: gets(&[(
            "j1-1",
            vec![
                job("j1-1", JobState::Running, 10),
                job("j1-1", JobState::Succeeded, 20),
            ],
        )]),
        streams: Mutex::new(VecDeque::from([Script {
            items: vec![
                updated(job("j1-1", JobState::Running, 11), 1),
                Err(out_of_range()),
            ],
            then_open: false,
        }])),
        ..Fake::default()
    });
    let url = serve(fake.clone()).await;
    let opts = WaitOptions {
        silence: Duration::from_secs(60),
        deadline: None,
        progress: false,
    };
    let job = tokio::time::timeout(GUARD, follow(&mut client(&url), "j1-1", opts))
        .await
        .expect("the wait ended")
        .expect("the job was followed");
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert_eq!(
        *fake.cursors.lock().expect("lock"),
        vec![Vec::<u8>::new(), Vec::new()],
        "watched again from an empty cursor on the same replica"
    );
}
