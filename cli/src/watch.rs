//! `meridian job watch`: print job events as they happen.
//!
//! Owns the watch loop and what it prints. The watch resumes from its
//! cursor whenever the stream ends or fails, and answers OUT_OF_RANGE (the
//! server trimmed the events after the cursor) the way Kubernetes clients
//! answer 410 Gone: watch again from now, read the jobs again, print what
//! changed meanwhile. Must never print one change twice, and never end a
//! watch of named jobs before each was seen final, whatever was trimmed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use meridian_control::rpc::Refusal;
use meridian_proto::v1::{Job, JobEvent, JobEventKind, ListJobsRequest, WatchJobsRequest};

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::job::{WatchArgs, get, is_terminal};
use crate::render::{self, Output};

/// What `job watch` has shown, so that a re-read prints only what changed
/// and the events that follow it print nothing twice.
#[derive(Debug, Default)]
struct Shown {
    /// The last state shown per job, with the job's `updated_at_unix_ms`
    /// then and whether a re-read showed it. Jobs leave once an event showed
    /// them final, so this holds live jobs (and what re-reads showed), not
    /// history.
    jobs: BTreeMap<String, (i32, u64, bool)>,
    /// Server time of the newest message (event or bookmark) received.
    last_at: u64,
}

impl Shown {
    /// Whether an event's job view adds to what was shown: an event no
    /// newer than the re-read that showed the same state was already
    /// reflected in it (the watch is opened before the re-read, so such
    /// events can arrive after it).
    fn is_news(&self, job: &Job) -> bool {
        match self.jobs.get(&job.job_id) {
            Some(&(state, updated_at, true)) => {
                state != job.state || job.updated_at_unix_ms > updated_at
            }
            _ => true,
        }
    }

    /// Notes an event shown.
    fn event(&mut self, job: &Job) {
        if is_terminal(job.state) {
            self.jobs.remove(&job.job_id);
        } else {
            self.jobs.insert(
                job.job_id.clone(),
                (job.state, job.updated_at_unix_ms, false),
            );
        }
    }

    /// Notes a job read again; true when it changed since it was last
    /// shown (for a job never shown: since the last message received).
    fn reread(&mut self, job: &Job) -> bool {
        let changed = match self.jobs.get(&job.job_id) {
            Some(&(state, _, _)) => state != job.state,
            None => job.updated_at_unix_ms >= self.last_at,
        };
        if changed || self.jobs.contains_key(&job.job_id) {
            self.jobs.insert(
                job.job_id.clone(),
                (job.state, job.updated_at_unix_ms, true),
            );
        }
        changed
    }
}

/// When the watch reads the jobs themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reread {
    /// Not now.
    No,
    /// At the start: the named jobs, to know which are final already;
    /// nothing is printed, this is where the watch starts.
    Start,
    /// After OUT_OF_RANGE: what the trimmed events would have said.
    Resync,
}

/// Runs `meridian job watch`, printing to `out`.
///
/// Follows the Kubernetes clients' answer to 410 Gone: when the server no
/// longer holds the events after the cursor (OUT_OF_RANGE), the watch is
/// opened again from an empty cursor (now) and the jobs are read again
/// (GetJob for named jobs, ListJobs otherwise), printing each job whose
/// state changed meanwhile as an UPDATED line. The watch opens before the
/// read, so nothing between the two is missed, and events the read already
/// showed are not printed again.
pub async fn watch_into(
    client: &mut Client,
    output: Output,
    args: WatchArgs,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let mut remaining: BTreeSet<String> = args.job_ids.iter().cloned().collect();
    let named = !remaining.is_empty();
    let mut shown = Shown::default();
    let mut cursor = Vec::new();
    let mut reread = if named { Reread::Start } else { Reread::No };
    loop {
        let request = WatchJobsRequest {
            cursor: cursor.clone(),
            tenant: args.tenant.clone().unwrap_or_default(),
            job_ids: args.job_ids.clone(),
            region: args.region.clone().unwrap_or_default(),
            include_task_events: args.tasks,
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
            Err(CliError::Status(s)) if Refusal::of(&s) == Refusal::CursorExpired => {
                expired_warning();
                cursor.clear();
                reread = Reread::Resync;
                continue;
            }
            Err(e) => return Err(e),
        };
        if reread != Reread::No {
            let jobs = reread_jobs(client, &args, &remaining, reread).await?;
            for job in jobs {
                if shown.reread(&job) && reread == Reread::Resync {
                    let event = JobEvent {
                        kind: JobEventKind::Updated as i32,
                        at_unix_ms: job.updated_at_unix_ms,
                        job: Some(job.clone()),
                        ..JobEvent::default()
                    };
                    print_event(out, output, &event)?;
                }
                if is_terminal(job.state) {
                    remaining.remove(&job.job_id);
                }
            }
            reread = Reread::No;
        }
        if named && remaining.is_empty() {
            return Ok(());
        }
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    cursor = event.cursor.clone();
                    shown.last_at = shown.last_at.max(event.at_unix_ms);
                    if event.kind == JobEventKind::Bookmark as i32 {
                        continue;
                    }
                    if let Some(j) = &event.job {
                        if !shown.is_news(j) {
                            continue;
                        }
                        shown.event(j);
                    }
                    print_event(out, output, &event)?;
                    if let Some(j) = &event.job
                        && is_terminal(j.state)
                    {
                        remaining.remove(&j.job_id);
                        if named && remaining.is_empty() {
                            return Ok(());
                        }
                    }
                }
                Err(status) if Refusal::of(&status) == Refusal::CursorExpired => {
                    expired_warning();
                    cursor.clear();
                    reread = Reread::Resync;
                    break;
                }
                // Ended or failed: opened again from the cursor.
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn expired_warning() {
    eprintln!(
        "warning: the server no longer holds the events after this watch's position; \
         reading the jobs again and watching from now"
    );
}

/// The jobs a re-read covers: the named ones not yet final, or (after
/// OUT_OF_RANGE, for a watch without names) every job its filters match.
async fn reread_jobs(
    client: &mut Client,
    args: &WatchArgs,
    remaining: &BTreeSet<String>,
    reread: Reread,
) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    if !args.job_ids.is_empty() {
        for id in remaining {
            // A typo'd id is NOT_FOUND here.
            jobs.push(get(client, id).await?);
        }
        return Ok(jobs);
    }
    if reread != Reread::Resync {
        return Ok(jobs);
    }
    let mut page_token = String::new();
    loop {
        let request = ListJobsRequest {
            tenant: args.tenant.clone().unwrap_or_default(),
            region: args.region.clone().unwrap_or_default(),
            page_size: 1000,
            page_token: page_token.clone(),
            ..ListJobsRequest::default()
        };
        let page = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.list_jobs(r).await }
            })
            .await?;
        jobs.extend(page.jobs);
        page_token = page.next_page_token;
        if page_token.is_empty() {
            return Ok(jobs);
        }
    }
}

fn print_event(out: &mut (dyn Write + Send), output: Output, event: &JobEvent) -> Result<()> {
    let written = if output == Output::Json {
        let value = render::to_json("JobEvent", event)?;
        writeln!(out, "{value}")
    } else {
        let job = event.job.clone().unwrap_or_default();
        let kind = JobEventKind::try_from(event.kind)
            .map(|k| render::short(k.as_str_name(), "JOB_EVENT_KIND_"))
            .unwrap_or_else(|_| event.kind.to_string());
        let detail = match (&event.transition, &event.task) {
            (_, Some(task)) => format!(
                "task {} {} {}",
                task.index,
                render::task_state(task.state),
                task.node_id
            ),
            (Some(t), None) => format!(
                "{} -> {} {}",
                render::job_state(t.from),
                render::job_state(t.to),
                t.reason
            ),
            (None, None) => render::job_state(job.state),
        };
        writeln!(out, "{:<14} {:<14} {}", kind, job.job_id, detail.trim_end())
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| CliError::other(format!("writing the watch's output: {e}")))
}
