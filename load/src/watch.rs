//! Following job events to see when jobs run and whether a task ran twice.
//!
//! Owns one `WatchJobs` stream over every job (reopened from its last
//! cursor on another replica when it breaks, as in a failover) and what it
//! learns: when each job was first seen running, its last state, and every
//! `(job, task, attempt)` seen on more than one node. Must never decide
//! what counts as a violation beyond recording the facts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::v1;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::client;
use crate::error::{LoadError, Result};

/// What the watcher learnt so far.
#[derive(Debug, Default)]
pub struct Seen {
    /// When each job was first seen running (or already past running).
    pub running_at: HashMap<String, Instant>,
    /// When each job was first seen ROUTED (assigned to a region).
    pub routed_at: HashMap<String, Instant>,
    /// When each job was first seen PLACED (a task bound to a node).
    pub placed_at: HashMap<String, Instant>,
    /// Last state seen of each job.
    pub state: HashMap<String, i32>,
    /// When each job was first seen in a final state.
    pub finished_at: HashMap<String, Instant>,
    /// Node of each `(job, task index, attempt)` once placed.
    pub placements: HashMap<(String, u32, u32), String>,
    /// `(job, task, attempt, first node, second node)` bound twice.
    pub duplicates: Vec<(String, u32, u32, String, String)>,
    /// Events received.
    pub events: u64,
    /// Times the stream had to be reopened.
    pub reopened: u64,
}

/// A running watcher.
pub struct Watcher {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

fn running_job(state: i32) -> bool {
    state == v1::JobState::Running as i32 || state == v1::JobState::Succeeded as i32
}

fn final_job(state: i32) -> bool {
    [
        v1::JobState::Succeeded,
        v1::JobState::Failed,
        v1::JobState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

fn running_task(state: i32) -> bool {
    state == v1::TaskState::Running as i32 || state == v1::TaskState::Succeeded as i32
}

fn record(seen: &mut Seen, ev: &v1::JobEvent, now: Instant) {
    seen.events += 1;
    let job = ev.job.as_ref();
    let job_id = job.map(|j| j.job_id.clone()).unwrap_or_default();
    if let Some(j) = job {
        seen.state.insert(j.job_id.clone(), j.state);
        if j.state == v1::JobState::Routed as i32 {
            seen.routed_at.entry(j.job_id.clone()).or_insert(now);
        }
        if j.state == v1::JobState::Placed as i32 {
            seen.placed_at.entry(j.job_id.clone()).or_insert(now);
        }
        if running_job(j.state) {
            seen.running_at.entry(j.job_id.clone()).or_insert(now);
        }
        if final_job(j.state) {
            seen.finished_at.entry(j.job_id.clone()).or_insert(now);
        }
        for t in &j.tasks {
            note_task(seen, &j.job_id, t, now);
        }
    }
    if let Some(t) = ev.task.as_ref()
        && !job_id.is_empty()
    {
        note_task(seen, &job_id, t, now);
    }
}

fn note_task(seen: &mut Seen, job_id: &str, t: &v1::TaskStatus, now: Instant) {
    if running_task(t.state) {
        seen.running_at.entry(job_id.to_string()).or_insert(now);
    }
    if t.node_id.is_empty() || t.attempt == 0 {
        return;
    }
    let key = (job_id.to_string(), t.index, t.attempt);
    match seen.placements.get(&key) {
        None => {
            seen.placements.insert(key, t.node_id.clone());
        }
        Some(first) if *first != t.node_id => {
            let first = first.clone();
            seen.duplicates
                .push((key.0, key.1, key.2, first, t.node_id.clone()));
        }
        Some(_) => {}
    }
}

impl Watcher {
    /// Opens the stream on one of `endpoints` (comma-separated) and returns
    /// once it is positioned, so every later submit is seen.
    pub async fn start(endpoints: &str) -> Result<Watcher> {
        let urls: Vec<String> = endpoints.split(',').map(str::to_string).collect();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let req = |cursor: Vec<u8>| v1::WatchJobsRequest {
            cursor,
            include_task_events: true,
            ..Default::default()
        };
        let mut first = None;
        let started = Instant::now();
        let mut i = 0usize;
        while first.is_none() {
            let url = &urls[i % urls.len()];
            let mut c = client::federation(url, Duration::from_secs(3600))?;
            match c.watch_jobs(req(Vec::new())).await {
                Ok(s) => first = Some((s.into_inner(), i)),
                Err(status) if started.elapsed() > Duration::from_secs(30) => {
                    return Err(LoadError::rpc("WatchJobs", status));
                }
                Err(_) => {
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let Some((mut stream, mut i)) = first else {
            return Err(LoadError::Federation("no watch stream".into()));
        };
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut cursor = Vec::new();
            loop {
                while let Some(item) = stream.next().await {
                    let Ok(ev) = item else { break };
                    if !ev.cursor.is_empty() {
                        cursor = ev.cursor.clone();
                    }
                    if let Ok(mut s) = shared.lock() {
                        record(&mut s, &ev, Instant::now());
                    }
                }
                // Broken (its replica died or lost leadership): reopen on
                // the next replica from the last cursor.
                loop {
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let url = &urls[i % urls.len()];
                    let Ok(mut c) = client::federation(url, Duration::from_secs(3600)) else {
                        continue;
                    };
                    if let Ok(s) = c.watch_jobs(req(cursor.clone())).await {
                        stream = s.into_inner();
                        if let Ok(mut s) = shared.lock() {
                            s.reopened += 1;
                        }
                        break;
                    }
                }
            }
        });
        Ok(Watcher { seen, task })
    }

    /// Runs `f` on what was seen so far.
    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        match self.seen.lock() {
            Ok(s) => f(&s),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// Waits until every job of `jobs` was seen running, polling under the
    /// `guard` (which only keeps a broken run from hanging); returns the
    /// jobs never seen running.
    pub async fn await_running(&self, jobs: &[String], guard: Duration) -> Vec<String> {
        let until = Instant::now() + guard;
        loop {
            let missing: Vec<String> = self.with(|s| {
                jobs.iter()
                    .filter(|j| !s.running_at.contains_key(*j))
                    .cloned()
                    .collect()
            });
            if missing.is_empty() || Instant::now() >= until {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every job of `jobs` was seen in a final state (polling
    /// under `guard`, as [`Watcher::await_running`]); returns the jobs never
    /// seen finished. The times recorded are those of the events, not of
    /// the polls.
    pub async fn await_finished(&self, jobs: &[String], guard: Duration) -> Vec<String> {
        let until = Instant::now() + guard;
        loop {
            let missing: Vec<String> = self.with(|s| {
                jobs.iter()
                    .filter(|j| !s.finished_at.contains_key(*j))
                    .cloned()
                    .collect()
            });
            if missing.is_empty() || Instant::now() >= until {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops following.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The duplicates as report lines, in a stable order.
pub fn duplicate_lines(seen: &Seen) -> Vec<String> {
    let mut set = BTreeMap::new();
    for (job, index, attempt, a, b) in &seen.duplicates {
        set.insert(
            (job.clone(), *index, *attempt),
            format!("task {job}/{index} attempt {attempt} placed on both {a} and {b}"),
        );
    }
    set.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(index: u32, attempt: u32, node: &str, state: v1::TaskState) -> v1::TaskStatus {
        v1::TaskStatus {
            index,
            attempt,
            node_id: node.into(),
            state: state as i32,
            ..Default::default()
        }
    }

    fn event(job: &str, t: v1::TaskStatus) -> v1::JobEvent {
        v1::JobEvent {
            job: Some(v1::Job {
                job_id: job.into(),
                state: v1::JobState::Placed as i32,
                ..Default::default()
            }),
            task: Some(t),
            ..Default::default()
        }
    }

    #[test]
    fn one_attempt_on_two_nodes_is_a_duplicate_but_a_new_attempt_is_not() {
        let mut s = Seen::default();
        let now = Instant::now();
        record(
            &mut s,
            &event("j", task(0, 1, "a", v1::TaskState::Placed)),
            now,
        );
        record(
            &mut s,
            &event("j", task(0, 2, "b", v1::TaskState::Placed)),
            now,
        );
        assert!(s.duplicates.is_empty());
        record(
            &mut s,
            &event("j", task(0, 2, "c", v1::TaskState::Running)),
            now,
        );
        assert_eq!(duplicate_lines(&s).len(), 1);
        assert!(s.running_at.contains_key("j"));
    }
}
