//! Following one job to its end (`job submit --wait`).
//!
//! Owns the follow loop and its two bounds. The loop opens a watch on the
//! job, then reads the job (so no change between the two is missed), then
//! reads events until the job is final. The watch is opened again, from the
//! last cursor, whenever it ends, fails, or stays silent for longer than
//! [`WaitOptions::silence`]: the global tier sends a bookmark after every
//! few seconds of quiet, so a silent stream means a stuck or deposed
//! replica, not a quiet job. A failure moves where control's retry rule
//! says (the hinted leader, else the next known endpoint) after the one
//! full-jitter backoff, seeded from the job id and waited out on the
//! client's clock. [`WaitOptions::deadline`] bounds the whole wait. A
//! cursor the server no longer holds events after (OUT_OF_RANGE, at open or
//! mid-stream) is dropped: the watch opens again from now and the job read
//! that follows stands in for the trimmed events, as a Kubernetes client
//! re-lists on 410 Gone; a state already printed is not printed again.
//!
//! Must never submit, cancel or change anything, and never give up on a job
//! because one replica failed while the deadline still allows another try.

use std::time::Duration;

use meridian_control::rpc::{Refusal, seed_of};
use meridian_control::{Backoff, BackoffConfig, Retryable};
use meridian_proto::v1::{Job, JobEvent, JobEventKind, JobState, WatchJobsRequest};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::job::get;
use crate::render;

/// Default silence bound: three bookmark periods of the global tier's
/// default (5 s), so one late bookmark never causes a re-subscription.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(15);

/// How long to follow, and when to stop trusting a quiet stream.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// A watch with no message (event or bookmark) for this long is opened
    /// again.
    pub silence: Duration,
    /// Give up (with [`CliError::TimedOut`]) at this instant.
    pub deadline: Option<Instant>,
    /// Print each state change to standard error.
    pub progress: bool,
}

impl Default for WaitOptions {
    fn default() -> Self {
        WaitOptions {
            silence: DEFAULT_SILENCE,
            deadline: None,
            progress: true,
        }
    }
}

/// What the wait has seen so far, kept outside the bounded future so the
/// timeout message can say where the job was.
#[derive(Debug, Default)]
struct Seen {
    state: i32,
    resubscriptions: u32,
}

impl Seen {
    fn job(&mut self, job_id: &str, state: i32, progress: bool) {
        if progress && state != self.state {
            eprintln!("{job_id}: {}", render::job_state(state));
        }
        self.state = state;
    }
}

/// Whether a job state is final.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

/// Follows `job_id` until it is final and returns its full view, or fails
/// with [`CliError::TimedOut`] at the deadline.
pub async fn follow(client: &mut Client, job_id: &str, opts: WaitOptions) -> Result<Job> {
    let mut seen = Seen::default();
    let started = Instant::now();
    let outcome = match opts.deadline {
        None => Ok(follow_unbounded(client, job_id, opts, &mut seen).await),
        Some(at) => {
            tokio::time::timeout_at(at, follow_unbounded(client, job_id, opts, &mut seen)).await
        }
    };
    match outcome {
        Ok(result) => result,
        Err(_) => Err(CliError::TimedOut(format!(
            "job {job_id} did not finish within {:.1} s (last seen {}, watch opened {} times); \
             it goes on: `meridian job watch {job_id}`",
            started.elapsed().as_secs_f64(),
            if seen.state == 0 {
                "before its first state".to_string()
            } else {
                render::job_state(seen.state)
            },
            seen.resubscriptions + 1,
        ))),
    }
}

/// Pauses before opening the watch again: from 100 ms doubling up to 2 s,
/// so many waiting clients never retry in step.
const RESUBSCRIBE: BackoffConfig = BackoffConfig {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(2),
};

/// The follow loop without a deadline; failures that another try may fix
/// are retried forever (the caller bounds it).
async fn follow_unbounded(
    client: &mut Client,
    job_id: &str,
    opts: WaitOptions,
    seen: &mut Seen,
) -> Result<Job> {
    let mut cursor = Vec::new();
    let mut failures: u32 = 0;
    let mut backoff = Backoff::new(RESUBSCRIBE, seed_of(job_id))
        .map_err(|e| CliError::other(format!("resubscription backoff: {e}")))?;
    loop {
        if failures > 0 {
            seen.resubscriptions += 1;
            let pause = backoff.delay(failures - 1);
            client.clock().sleep(pause).await;
        }
        let request = WatchJobsRequest {
            cursor: cursor.clone(),
            job_ids: vec![job_id.to_string()],
            ..WatchJobsRequest::default()
        };
        let opened = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.watch_jobs(r).await }
            })
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) if e.is_retryable() => {
                eprintln!("warning: cannot watch {job_id} yet ({e}); trying again");
                failures = failures.saturating_add(1);
                continue;
            }
            Err(CliError::Status(s)) if Refusal::of(&s) == Refusal::CursorExpired => {
                // The cursor is older than the server retains: the job
                // read below covers what was missed.
                cursor.clear();
                failures = failures.saturating_add(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        let job = match get(client, job_id).await {
            Ok(j) => j,
            Err(e) if e.is_retryable() => {
                failures = failures.saturating_add(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        seen.job(job_id, job.state, opts.progress);
        if is_terminal(job.state) {
            return Ok(job);
        }
        let watched = read_events(
            client,
            job_id,
            opts,
            seen,
            &mut stream,
            &mut cursor,
            &mut failures,
        )
        .await?;
        if let Some(job) = watched {
            return Ok(job);
        }
    }
}

/// Reads the open watch until the job is final (its full view) or the watch
/// must be opened again (`None`, with the failure counted).
async fn read_events(
    client: &mut Client,
    job_id: &str,
    opts: WaitOptions,
    seen: &mut Seen,
    stream: &mut tonic::Streaming<JobEvent>,
    cursor: &mut Vec<u8>,
    failures: &mut u32,
) -> Result<Option<Job>> {
    loop {
        let silence = client.clock().sleep(opts.silence);
        let message = tokio::select! {
            m = stream.message() => Ok(m),
            () = silence => Err(()),
        };
        match message {
            Ok(Ok(Some(event))) => {
                *failures = 0;
                *cursor = event.cursor.clone();
                if event.kind == JobEventKind::Bookmark as i32 {
                    continue;
                }
                let Some(j) = event.job else { continue };
                seen.job(job_id, j.state, opts.progress);
                if is_terminal(j.state) {
                    // The final view (tasks, history) comes from a read;
                    // a failed read is retried through a fresh watch.
                    match get(client, job_id).await {
                        Ok(full) => return Ok(Some(full)),
                        Err(e) if e.is_retryable() => {
                            *failures = failures.saturating_add(1);
                            return Ok(None);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(Ok(None)) => {
                // The replica ended the stream (shutting down, or no
                // longer serving): try the next one.
                client.move_on();
                *failures = failures.saturating_add(1);
                return Ok(None);
            }
            Ok(Err(status)) if Refusal::of(&status) == Refusal::CursorExpired => {
                // The stream fell behind what the server keeps. Every
                // replica shares that history, so the watch opens again
                // here, from now, and the job read after it covers what was
                // missed.
                cursor.clear();
                *failures = failures.saturating_add(1);
                return Ok(None);
            }
            Ok(Err(status)) => {
                client.move_after(&status);
                *failures = failures.saturating_add(1);
                return Ok(None);
            }
            Err(_) => {
                eprintln!(
                    "warning: no news about {job_id} from {} for {} s; watching again",
                    client.endpoint(),
                    opts.silence.as_secs_f64()
                );
                client.move_from_silent();
                *failures = failures.saturating_add(1);
                return Ok(None);
            }
        }
    }
}
