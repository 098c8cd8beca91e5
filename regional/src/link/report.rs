//! What the region tells the global tier about its work: capacity, job
//! status, releases, and the forgetting of finished jobs.
//!
//! Owns two paths to the same per-job status rule ([`job_update`]), both
//! read from the replica's memory: a fast report of only the jobs that
//! changed, run as soon as memory shows the change (a commit of this
//! process, or the change feed for another's), so a task seen running
//! reaches the global tier in milliseconds rather than at the next tick; and
//! a catch-up on a timer that repairs anything the fast one missed. Capacity
//! and the releases of revoked jobs go on a timer of their own beside them,
//! so they never delay a status. A job whose final state the global tier
//! accepted is retired (`jobs::retire`). Must never report under a region
//! lease epoch the global tier refused, and never retire a job the global
//! tier has not acknowledged in exactly its final state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_control::SharedClock;
use meridian_control::lease::Fence;
use meridian_proto::v1;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_store::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::LinkConfig;
use super::session::End;
use crate::error::RegionalError;
use crate::model::view::scan;
use crate::model::{JobPhase, JobRecord, Keys, NodeLiveness, Res, TaskBlock, TaskRecord, decode};
use crate::pipeline::upward::{Accepted, RecordStatus, Release};
use crate::pipeline::{Authority, Intent, Outcome, Pipeline};
use crate::state::{RegionState, SharedState};

type Client = RegionLinkClient<tonic::transport::Channel>;

/// Per-job status digest last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub version: u64,
    pub digest: Vec<u32>,
    /// The waiting reason reported with it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting: String,
}

crate::model::codec::json_record!(Reported);

/// How long the fast status report waits after a change, so that one
/// report carries the changes of a burst (a placement round, an agent's
/// batch) rather than one call each.
const STATUS_COALESCE: Duration = Duration::from_millis(2);

/// How long a capacity report may wait for its answer before it is given up
/// (the next one follows `report_every` later).
const CAPACITY_DEADLINE: Duration = meridian_control::rpc::DEFAULT_ATTEMPT_DEADLINE;

/// What one link session's reporter works with.
#[derive(Clone)]
pub(super) struct Reporter {
    pub db: Database,
    pub keys: Keys,
    pub fence: Fence,
    pub client: Client,
    pub config: LinkConfig,
    /// The region lease epoch every report is sent under.
    pub epoch: u64,
    pub clock: SharedClock,
    pub pipeline: Pipeline,
    pub state: SharedState,
}

impl Reporter {
    /// Reports until a report fails or `stop` flips (checked between status
    /// reports, never inside one; a capacity call in flight is cut short).
    /// If one loop fails, the other is dropped where it stands: an answer it
    /// did not record is sent again by the next session with a newer
    /// version, which the global tier accepts as the state it has. Two loops run side by side: job status
    /// (the fast report at every task state change, and a catch-up from
    /// memory every `report_every`), and capacity with releases every
    /// `report_every`. Status reports stay one at a time, so versions reach
    /// the global tier in order; capacity and releases never touch a job's
    /// status, so a capacity call that is slow to answer does not hold back
    /// a task's change.
    pub(super) async fn run(self, stop: watch::Receiver<bool>) -> Result<(), End> {
        let mut capacity = self.clone();
        let mut status = self;
        tokio::try_join!(
            status.status_loop(stop.clone()),
            capacity.capacity_loop(stop)
        )?;
        Ok(())
    }

    async fn capacity_loop(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), End> {
        let clock = self.clock.clone();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let (cap, releases) = {
                let s = self.state.read();
                (capacity(&s, clock.now_unix_ms()), releasable(&s))
            };
            // A capacity figure is replaced by the next one whole, so a stop
            // may cut its call short, and one the global tier does not answer
            // in time is skipped rather than left to hold back the releases;
            // releases are recorded once answered, so they finish.
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                sent = self.report_capacity(cap) => sent?,
                () = clock.sleep(CAPACITY_DEADLINE) => {
                    tracing::warn!(region = %self.config.region, "capacity report not answered in time; skipped");
                }
            }
            self.release(releases).await?;
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = clock.sleep(self.config.report_every) => {}
            }
        }
    }

    async fn report_capacity(&mut self, cap: v1::RegionCapacity) -> Result<(), End> {
        let r = self
            .client
            .report_capacity(v1::ReportCapacityRequest {
                region: self.config.region.clone(),
                region_lease_epoch: self.epoch,
                capacity: Some(cap),
            })
            .await?
            .into_inner();
        if r.verdict != v1::Verdict::Accepted as i32 {
            return Err(End::retry("capacity report refused: stale region lease"));
        }
        Ok(())
    }

    async fn status_loop(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), End> {
        let clock = self.clock.clone();
        let watcher = self.state.subscribe();
        let mut reported = self.load_reported().await?;
        let mut full = clock.sleep(Duration::ZERO);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = &mut full => {
                    // Anything the fast path missed is found here.
                    let _ = watcher.take();
                    self.catch_up(&mut reported, clock.now_unix_ms()).await?;
                    full = clock.sleep(self.config.report_every);
                }
                delta = watcher.changed() => {
                    // A reload may have changed anything: catch up at once.
                    if delta.reload {
                        full = clock.sleep(Duration::ZERO);
                        continue;
                    }
                    // Node liveness and epochs change memory too, many times
                    // a second; only job changes concern this report.
                    if delta.jobs.is_empty() {
                        continue;
                    }
                    // A short pause lets one report carry a burst.
                    clock.sleep(STATUS_COALESCE).await;
                    let mut jobs = delta.jobs;
                    jobs.extend(watcher.take().jobs);
                    self.changed(&mut reported, jobs, clock.now_unix_ms()).await?;
                }
            }
        }
    }

    /// The digests the global tier accepted, as stored.
    async fn load_reported(&self) -> Result<BTreeMap<String, Reported>, End> {
        let keys = self.keys.clone();
        Ok(self
            .db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let mut out = BTreeMap::new();
                    let (begin, end) = keys.job_statuses();
                    for (k, v) in scan(&tx, (begin, end), true).await? {
                        if let Some(job) = keys.second_of(&k) {
                            out.insert(job, decode::<Reported>("job status", &v)?);
                        }
                    }
                    Ok::<_, RegionalError>(out)
                }
            })
            .await?)
    }

    /// The status catch-up: every job whose counts differ from what the
    /// global tier last accepted.
    async fn catch_up(
        &mut self,
        reported: &mut BTreeMap<String, Reported>,
        now: u64,
    ) -> Result<(), End> {
        let updates = {
            let s = self.state.read();
            let mut updates = Vec::new();
            for (job_id, job) in &s.jobs {
                let blocks: Vec<&TaskBlock> = job.blocks.values().map(|b| &b.block).collect();
                let prev = reported.get(job_id).cloned().unwrap_or_default();
                if let Some(u) = job_update(
                    &self.config.region,
                    &job.record,
                    job.counts,
                    job.ran,
                    &blocks,
                    &prev,
                    now,
                ) {
                    updates.push(u);
                    if updates.len() == meridian_proto::limits::MAX_BATCH_ITEMS {
                        break;
                    }
                }
            }
            updates
        };
        self.send_status(reported, updates).await
    }

    /// The fast report: the jobs that changed, as memory has them now.
    async fn changed(
        &mut self,
        reported: &mut BTreeMap<String, Reported>,
        jobs: BTreeSet<String>,
        now: u64,
    ) -> Result<(), End> {
        let updates: Vec<_> = {
            let s = self.state.read();
            jobs.iter()
                .filter_map(|id| {
                    let job = s.jobs.get(id)?;
                    let blocks: Vec<&TaskBlock> = job.blocks.values().map(|b| &b.block).collect();
                    let prev = reported.get(id).cloned().unwrap_or_default();
                    job_update(
                        &self.config.region,
                        &job.record,
                        job.counts,
                        job.ran,
                        &blocks,
                        &prev,
                        now,
                    )
                })
                .collect()
        };
        for chunk in updates.chunks(meridian_proto::limits::MAX_BATCH_ITEMS) {
            self.send_status(reported, chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Sends `updates`, then records what was accepted and retires the jobs
    /// accepted in a final state.
    async fn send_status(
        &mut self,
        reported: &mut BTreeMap<String, Reported>,
        updates: Vec<(v1::JobStatusUpdate, Reported)>,
    ) -> Result<(), End> {
        if updates.is_empty() {
            return Ok(());
        }
        let (updates, digests): (Vec<_>, Vec<_>) = updates.into_iter().unzip();
        let finals: Vec<(String, u64, bool)> = updates
            .iter()
            .map(|u| (u.job_id.clone(), u.assignment_epoch, is_final(u.state)))
            .collect();
        let r = self
            .client
            .report_status(v1::ReportStatusRequest {
                region: self.config.region.clone(),
                region_lease_epoch: self.epoch,
                updates,
            })
            .await?
            .into_inner();
        if r.verdict != v1::Verdict::Accepted as i32 {
            return Err(End::retry("status report refused: stale region lease"));
        }
        // A refused item stays unrecorded, so the next catch-up sends the
        // job's state again with a newer version (a job moved away stops
        // being reported once its REVOKE arrives).
        let accepted: Vec<Accepted> = finals
            .into_iter()
            .zip(digests)
            .enumerate()
            .filter(|(i, _)| {
                r.results
                    .get(*i)
                    .is_some_and(|item| item.verdict == v1::Verdict::Accepted as i32)
            })
            .map(|(_, ((job, epoch, last), rep))| Accepted {
                job,
                epoch,
                reported: rep,
                last,
            })
            .collect();
        if accepted.is_empty() {
            return Ok(());
        }
        for a in &accepted {
            reported.insert(a.job.clone(), a.reported.clone());
        }
        let out = self
            .pipeline
            .submit(
                Some(self.authority()),
                Intent::Status(RecordStatus {
                    accepted,
                    now_unix_ms: self.clock.now_unix_ms(),
                }),
            )
            .await?;
        if let Outcome::Retired(n) = out {
            crate::metrics::jobs_retired(n);
        }
        // Retired jobs are gone from memory; their digests with them.
        let s = self.state.read();
        reported.retain(|job, _| s.jobs.contains_key(job));
        Ok(())
    }

    fn authority(&self) -> Authority {
        Authority {
            fence: self.fence.clone(),
            generation: None,
        }
    }

    /// Releases revoked jobs with nothing bound any more.
    async fn release(&mut self, releases: Vec<v1::JobRelease>) -> Result<(), End> {
        if releases.is_empty() {
            return Ok(());
        }
        let r = self
            .client
            .release_jobs(v1::ReleaseJobsRequest {
                region: self.config.region.clone(),
                region_lease_epoch: self.epoch,
                releases: releases.clone(),
            })
            .await?
            .into_inner();
        if r.verdict != v1::Verdict::Accepted as i32 {
            return Err(End::retry("release refused: stale region lease"));
        }
        let jobs = releases
            .into_iter()
            .map(|r| (r.job_id, r.assignment_epoch))
            .collect();
        self.pipeline
            .submit(Some(self.authority()), Intent::Release(Release { jobs }))
            .await?;
        Ok(())
    }
}

/// Revoked jobs with no task bound any more.
fn releasable(s: &RegionState) -> Vec<v1::JobRelease> {
    let mut out = Vec::new();
    for (job_id, job) in &s.jobs {
        if let JobPhase::Revoked(e) = job.record.state
            && job.bound() == 0
        {
            let (task_run_ms, tasks_run) = job.ran;
            out.push(v1::JobRelease {
                job_id: job_id.clone(),
                assignment_epoch: e,
                final_tasks: Vec::new(),
                task_run_ms,
                tasks_run,
            });
        }
    }
    out
}

/// The region's capacity as the router sees it.
fn capacity(s: &RegionState, now: u64) -> v1::RegionCapacity {
    let mut cap = v1::RegionCapacity {
        computed_at_unix_ms: now,
        nodes_total: s.node_records().count() as u32,
        ..Default::default()
    };
    // From each job's kept counts: a second's report must not walk every
    // task of a 100,000-task array.
    for job in s.jobs.values() {
        cap.running_tasks += u64::from(job.bound());
        cap.pending_tasks += u64::from(job.pending);
    }
    cap.pending_jobs = s.pending_jobs.len() as u64;
    let mut max_free = Res::default();
    for (entry, n) in s.node_records() {
        let u = &entry.allocated;
        if n.liveness == NodeLiveness::Ready && !n.cordoned {
            cap.nodes_ready += 1;
            cap.cpu_millis_allocatable += n.allocatable.cpu;
            cap.memory_bytes_allocatable += n.allocatable.mem;
            cap.gpu_allocatable += n.allocatable.gpus;
            max_free.cpu = max_free.cpu.max(n.allocatable.cpu.saturating_sub(u.cpu));
            max_free.mem = max_free.mem.max(n.allocatable.mem.saturating_sub(u.mem));
            max_free.gpus = max_free.gpus.max(n.allocatable.gpus.saturating_sub(u.gpus));
        }
        cap.cpu_millis_allocated += u.cpu;
        cap.memory_bytes_allocated += u.mem;
        cap.gpu_allocated += u.gpus;
    }
    cap.max_node_free = Some(max_free.to_proto());
    (cap.node_classes, cap.node_classes_truncated) = node_classes(s);
    cap
}

/// Most node classes in one capacity report.
const MAX_NODE_CLASSES: usize = 256;

/// The region's nodes grouped by label set, largest groups first (ties by
/// labels, so the report is the same for the same nodes); whether some
/// were left out.
fn node_classes(s: &RegionState) -> (Vec<v1::NodeClass>, bool) {
    let mut classes: BTreeMap<&BTreeMap<String, String>, v1::NodeClass> = BTreeMap::new();
    for (_, n) in s.node_records() {
        let class = classes.entry(&n.labels).or_insert_with(|| v1::NodeClass {
            labels: n
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_allocatable: Some(v1::Resources::default()),
            ..Default::default()
        });
        class.nodes += 1;
        if let Some(max) = class.max_allocatable.as_mut() {
            max.cpu_millis = max.cpu_millis.max(n.allocatable.cpu);
            max.memory_bytes = max.memory_bytes.max(n.allocatable.mem);
            max.gpu_count = max.gpu_count.max(n.allocatable.gpus);
        }
        let gpu_type = &n.allocatable.gpu_type;
        if !gpu_type.is_empty() && !class.gpu_types.contains(gpu_type) {
            class.gpu_types.push(gpu_type.clone());
            class.gpu_types.sort();
        }
    }
    let mut classes: Vec<v1::NodeClass> = classes.into_values().collect();
    // Stable: equal sizes keep label order.
    classes.sort_by_key(|c| std::cmp::Reverse(c.nodes));
    let truncated = classes.len() > MAX_NODE_CLASSES;
    classes.truncate(MAX_NODE_CLASSES);
    (classes, truncated)
}

/// One job's status update, when its task counts differ from what was last
/// reported (`prev`) and the region still answers for it.
fn job_update(
    region: &str,
    job: &JobRecord,
    counts: crate::state::TaskCounts,
    ran: crate::state::Ran,
    blocks: &[&TaskBlock],
    prev: &Reported,
    now: u64,
) -> Option<(v1::JobStatusUpdate, Reported)> {
    if job.state != JobPhase::Active && job.state != JobPhase::Cancelled {
        return None;
    }
    // A reason holds only while some task waits for a node.
    let waiting = if counts[v1::TaskState::Pending as usize] > 0 {
        job.waiting_reason.as_str()
    } else {
        ""
    };
    if prev.digest == counts && prev.waiting == waiting {
        return None;
    }
    // Kept per block as blocks change: an update of a 100,000-task job
    // walks none of its tasks.
    let (task_run_ms, tasks_run) = ran;
    let mut tasks = Vec::new();
    // Jobs of at most this many tasks carry every task's status in each
    // update (so exit codes and nodes reach the global tier); larger jobs
    // report counts only, which keeps an update of a 100,000-task job small.
    if job.task_count <= meridian_proto::limits::MAX_TASKS_REPORTED {
        for block in blocks {
            for (offset, t) in block.tasks.iter().enumerate() {
                tasks.push(task_status(region, block.first + offset as u32, t, now));
            }
        }
    }
    let c = |s: v1::TaskState| counts[s as usize];
    let state = if c(v1::TaskState::Running) + c(v1::TaskState::Starting) > 0 {
        v1::JobState::Running
    } else if c(v1::TaskState::Succeeded) == job.task_count {
        v1::JobState::Succeeded
    } else if job.state == JobPhase::Cancelled && c(v1::TaskState::Placed) == 0 {
        v1::JobState::Cancelled
    } else if c(v1::TaskState::Failed) > 0
        && c(v1::TaskState::Pending) + c(v1::TaskState::Placed) == 0
    {
        v1::JobState::Failed
    } else if c(v1::TaskState::Placed) > 0 {
        v1::JobState::Placed
    } else {
        v1::JobState::Routed
    };
    let version = prev.version.max(now).saturating_add(1);
    let update = v1::JobStatusUpdate {
        job_id: job.job_id.clone(),
        assignment_epoch: job.assignment_epoch,
        status_version: version,
        state: state as i32,
        task_counts: Some(v1::TaskCounts {
            pending: c(v1::TaskState::Pending),
            placed: c(v1::TaskState::Placed),
            starting: c(v1::TaskState::Starting),
            running: c(v1::TaskState::Running),
            succeeded: c(v1::TaskState::Succeeded),
            failed: c(v1::TaskState::Failed),
            killed: c(v1::TaskState::Killed),
            lost: c(v1::TaskState::Lost),
        }),
        failure_reason: if state == v1::JobState::Failed {
            failure_reason(&tasks)
        } else {
            String::new()
        },
        tasks,
        observed_at_unix_ms: now,
        waiting_reason: waiting.to_string(),
        task_run_ms,
        tasks_run,
    };
    Some((
        update,
        Reported {
            version,
            digest: counts.to_vec(),
            waiting: waiting.to_string(),
        },
    ))
}

/// Whether the global tier, once it accepts `state`, is done with the job.
fn is_final(state: i32) -> bool {
    [
        v1::JobState::Succeeded,
        v1::JobState::Failed,
        v1::JobState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

fn task_status(region: &str, index: u32, t: &TaskRecord, now: u64) -> v1::TaskStatus {
    v1::TaskStatus {
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
        updated_at_unix_ms: now,
        ..Default::default()
    }
}

/// The first failed task's message, or its exit code, as the job's reason.
fn failure_reason(tasks: &[v1::TaskStatus]) -> String {
    tasks
        .iter()
        .find(|t| t.state == v1::TaskState::Failed as i32)
        .map(|t| match (t.message.is_empty(), t.exit_code) {
            (false, _) => format!("task {}: {}", t.index, t.message),
            (true, Some(code)) => format!("task {} exited with code {code}", t.index),
            (true, None) => format!("task {} failed", t.index),
        })
        .unwrap_or_default()
}
