//! `job submit --wait` against fake global replicas that misbehave the way a
//! deposed or stuck replica does: a watch that never says anything, a watch
//! that fails naming another replica as leader, a job that never ends.
//!
//! Each fake is a real tonic `Federation` server on 127.0.0.1 (`support`). Nothing
//! sleeps to wait for a condition; the guard only stops a hang.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use meridian_cli::client::{Client, ConnectArgs};
use meridian_cli::error::exit;
use meridian_cli::wait::{WaitOptions, follow};
use meridian_cli::{CliError, JobArgs};
use meridian_proto::v1::*;
use support::{Events, Script};
use tonic::Status;

const GUARD: Duration = Duration::from_secs(30);

/// How a fake replica's WatchJobs behaves.
#[derive(Clone)]
enum Watch {
    /// Opens, then never sends anything (no events, no bookmarks).
    Silent,
    /// Opens, then fails with UNAVAILABLE naming this replica as leader.
    FailsNaming(String),
}

/// A fake replica: GetJob answers RUNNING for the first `running_reads`
/// reads, SUCCEEDED after (never, when `None`).
struct Fake {
    watch: Watch,
    running_reads: Option<usize>,
    reads: AtomicUsize,
    watches: AtomicUsize,
}

fn job(state: JobState) -> Job {
    Job {
        job_id: "j1-1".into(),
        state: state as i32,
        ..Job::default()
    }
}

#[tonic::async_trait]
impl Script for Fake {
    async fn submit_job(&self, _: SubmitJobRequest) -> Result<SubmitJobResponse, Status> {
        Ok(SubmitJobResponse {
            job_id: "j1-1".into(),
            created: true,
            created_at_unix_ms: 1,
        })
    }
    async fn get_job(&self, _: GetJobRequest) -> Result<GetJobResponse, Status> {
        let n = self.reads.fetch_add(1, Ordering::SeqCst);
        let state = match self.running_reads {
            Some(limit) if n >= limit => JobState::Succeeded,
            _ => JobState::Running,
        };
        Ok(GetJobResponse {
            job: Some(job(state)),
        })
    }
    async fn watch_jobs(&self, _: WatchJobsRequest) -> Result<Events, Status> {
        self.watches.fetch_add(1, Ordering::SeqCst);
        Ok(match &self.watch {
            Watch::Silent => Box::pin(tokio_stream::pending()),
            Watch::FailsNaming(leader) => {
                let mut status = Status::unavailable("this replica lost leadership");
                status.metadata_mut().insert(
                    meridian_proto::LEADER_METADATA_KEY,
                    leader.parse().expect("ascii url"),
                );
                Box::pin(tokio_stream::iter(vec![Err(status)]))
            }
        })
    }
    async fn get_task_logs(&self, _: GetTaskLogsRequest) -> Result<GetTaskLogsResponse, Status> {
        Ok(GetTaskLogsResponse::default())
    }
}

/// Serves `fake` on a free loopback port; returns its URL.
async fn serve(fake: Arc<Fake>) -> String {
    support::serve(fake).await
}

fn fake(watch: Watch, running_reads: Option<usize>) -> Arc<Fake> {
    Arc::new(Fake {
        watch,
        running_reads,
        reads: AtomicUsize::new(0),
        watches: AtomicUsize::new(0),
    })
}

fn client(endpoint: &str) -> Client {
    Client::new(&ConnectArgs::new(endpoint, Duration::from_secs(5))).expect("client")
}

#[tokio::test]
async fn wait_watches_again_when_the_stream_goes_silent_and_sees_the_job_finish() {
    // RUNNING at the first read; the silent watch never tells of the end.
    let replica = fake(Watch::Silent, Some(1));
    let url = serve(replica.clone()).await;
    let opts = WaitOptions {
        silence: Duration::from_millis(200),
        deadline: None,
        progress: false,
    };
    let job = tokio::time::timeout(GUARD, follow(&mut client(&url), "j1-1", opts))
        .await
        .expect("the wait ended")
        .expect("the job was followed");
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert!(replica.watches.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn wait_follows_the_leader_hint_of_a_failed_stream_to_the_replica_that_reports_the_end() {
    // The leader knows the job has ended; the deposed replica only knows it
    // runs, and its watch fails naming the leader.
    let leader = fake(Watch::Silent, Some(0));
    let leader_url = serve(leader.clone()).await;
    let deposed = fake(Watch::FailsNaming(leader_url.clone()), None);
    let deposed_url = serve(deposed.clone()).await;
    let opts = WaitOptions {
        silence: Duration::from_secs(60),
        deadline: None,
        progress: false,
    };
    let job = tokio::time::timeout(GUARD, follow(&mut client(&deposed_url), "j1-1", opts))
        .await
        .expect("the wait ended")
        .expect("the job was followed");
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert_eq!(deposed.watches.load(Ordering::SeqCst), 1);
    assert!(leader.reads.load(Ordering::SeqCst) >= 1);
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    job: JobArgs,
}

#[tokio::test]
async fn submit_wait_with_a_timeout_gives_up_with_exit_code_7_and_says_where_the_job_was() {
    let replica = fake(Watch::Silent, None);
    let url = serve(replica).await;
    let args = Cli::try_parse_from([
        "job",
        "--endpoint",
        &url,
        // The fake replica serves plain text.
        "--insecure",
        "submit",
        "--wait",
        "--timeout",
        "500ms",
        "--simulate",
        "10",
    ]);
    let args = match args {
        Ok(a) => a,
        Err(e) => panic!("arguments: {e}"),
    };
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(GUARD, meridian_cli::job::run(args.job))
        .await
        .expect("the command ended");
    let err = result.expect_err("the job never ends, so the wait times out");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, CliError::TimedOut(_)), "{err:?}");
    assert_eq!(err.exit_code(), exit::TIMED_OUT);
    let message = err.to_string();
    assert!(
        message.contains("j1-1 did not finish within") && message.contains("RUNNING"),
        "{message}"
    );
}
