//! What the region tells the global tier about its work: capacity, job
//! status, releases, and the forgetting of finished jobs.
//!
//! Owns two paths to the same per-job status rule ([`job_update`]): a full
//! report on a timer (capacity, the status of every job whose task counts
//! changed, releases of revoked jobs), which repairs anything missed, and a
//! fast report of only the jobs whose task blocks changed since
//! ([`Keys::status_dirty`]), run as soon as a change commits, so a task seen
//! running reaches the global tier in milliseconds rather than at the next
//! tick. A job whose final state the global tier accepted is retired
//! (`jobs::retire`). Must never report under a region lease epoch the
//! global tier refused, and never retire a job the global tier has not
//! acknowledged in exactly its final state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_control::SharedClock;
use meridian_control::lease::Fence;
use meridian_proto::v1;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_store::{Database, RangeOption};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::LinkConfig;
use super::session::End;
use crate::error::RegionalError;
use crate::model::view::{read_blocks, read_job};
use crate::model::{
    JobPhase, JobRecord, Keys, NodeLiveness, RegionView, Res, TaskBlock, TaskRecord, decode, encode,
};

type Client = RegionLinkClient<tonic::transport::Channel>;

/// Per-job status digest last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Reported {
    version: u64,
    digest: Vec<u32>,
}

crate::model::codec::json_record!(Reported);

/// Jobs with at most this many tasks carry every task's status in each update
/// (so exit codes and nodes reach the global tier); larger jobs report counts
/// only, which keeps an update of a 100,000-task job small.
const MAX_TASKS_PER_UPDATE: u32 = 256;

/// How long the fast status report waits after a change, so that one
/// report carries the changes of a burst (a placement round, an agent's
/// batch) rather than one call each.
const STATUS_COALESCE: Duration = Duration::from_millis(2);

/// What one link session's reporter works with.
pub(super) struct Reporter {
    pub db: Database,
    pub keys: Keys,
    pub fence: Fence,
    pub client: Client,
    pub config: LinkConfig,
    /// The region lease epoch every report is sent under.
    pub epoch: u64,
    pub clock: SharedClock,
}

impl Reporter {
    /// Reports until a report fails or `stop` flips (checked between
    /// reports, never inside one): the full report at once and then every
    /// `report_every`, the fast one at every task state change.
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), End> {
        let clock = self.clock.clone();
        let mut full = clock.sleep(Duration::ZERO);
        let mut changed = status_watch(&self.db, &self.keys).await?;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = &mut full => {
                    self.full(clock.now_unix_ms()).await?;
                    full = clock.sleep(self.config.report_every);
                }
                _ = &mut changed => {
                    // Arm the next wake-up before reading, so no change is
                    // missed; a short pause lets one report carry a burst.
                    changed = status_watch(&self.db, &self.keys).await?;
                    clock.sleep(STATUS_COALESCE).await;
                    while self.changed(clock.now_unix_ms()).await? {}
                }
            }
        }
    }
    /// The full report: capacity, every job whose counts changed, releases.
    async fn full(&mut self, now: u64) -> Result<(), End> {
        let Reporter {
            db,
            keys,
            client,
            config,
            epoch,
            ..
        } = self;
        let epoch = *epoch;
        let (view, reported) = db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let view = RegionView::read(&tx, &keys).await?;
                    let mut reported = BTreeMap::new();
                    for job in view.jobs.keys() {
                        if let Some(b) = tx.get(&keys.job_status(job)).await? {
                            reported.insert(job.clone(), decode::<Reported>("job status", &b)?);
                        }
                    }
                    Ok::<_, RegionalError>((view, reported))
                }
            })
            .await?;

        let r = client
            .report_capacity(v1::ReportCapacityRequest {
                region: config.region.clone(),
                region_lease_epoch: epoch,
                capacity: Some(capacity(&view, now)),
            })
            .await?
            .into_inner();
        if r.verdict != v1::Verdict::Accepted as i32 {
            return Err(End::retry("capacity report refused: stale region lease"));
        }

        let mut updates = Vec::new();
        for (job_id, job) in &view.jobs {
            let blocks: Vec<&TaskBlock> = view
                .blocks
                .range((job_id.clone(), 0)..=(job_id.clone(), u32::MAX))
                .map(|(_, b)| b)
                .collect();
            let prev = reported.get(job_id).cloned().unwrap_or_default();
            if let Some(u) = job_update(&config.region, job, &blocks, &prev, now) {
                updates.push(u);
                if updates.len() == meridian_proto::limits::MAX_BATCH_ITEMS {
                    break;
                }
            }
        }
        self.send_status(updates).await?;
        self.release_revoked(&view).await
    }

    /// The fast report: the jobs marked changed (up to one batch), their
    /// markers cleared in the same transaction that reads them. Returns whether
    /// more may be marked. A report lost on the way is repaired by the next full
    /// report, which compares against the stored digests.
    async fn changed(&mut self, now: u64) -> Result<bool, End> {
        let Reporter {
            db,
            keys,
            fence,
            config,
            ..
        } = self;
        let limit = meridian_proto::limits::MAX_BATCH_ITEMS;
        type Changed = Vec<(JobRecord, Vec<TaskBlock>, Reported)>;
        let (changed, marked) = db
            .run(|tx, _| {
                let keys = keys.clone();
                let fence = fence.clone();
                async move {
                    fence.check(&tx).await?;
                    let marks = tx
                        .get_range(RangeOption::from(keys.status_dirties()).limit(limit))
                        .await?;
                    let mut out: Changed = Vec::with_capacity(marks.len());
                    for kv in &marks {
                        tx.clear(&kv.key)?;
                        let Some(job_id) = keys.second_of(&kv.key) else {
                            continue;
                        };
                        let Some(job) = read_job(&tx, &keys, &job_id).await? else {
                            continue;
                        };
                        let blocks = read_blocks(&tx, &keys, &job_id).await?;
                        let prev = match tx.get(&keys.job_status(&job_id)).await? {
                            Some(b) => decode::<Reported>("job status", &b)?,
                            None => Reported::default(),
                        };
                        out.push((job, blocks, prev));
                    }
                    Ok::<_, RegionalError>((out, marks.len()))
                }
            })
            .await?;
        let updates = changed
            .iter()
            .filter_map(|(job, blocks, prev)| {
                let blocks: Vec<&TaskBlock> = blocks.iter().collect();
                job_update(&config.region, job, &blocks, prev, now)
            })
            .collect();
        self.send_status(updates).await?;
        Ok(marked == limit)
    }

    /// Sends `updates`, then records what was accepted and retires the jobs
    /// accepted in a final state.
    async fn send_status(
        &mut self,
        updates: Vec<(v1::JobStatusUpdate, Reported)>,
    ) -> Result<(), End> {
        let Reporter {
            db,
            keys,
            fence,
            client,
            config,
            epoch,
            ..
        } = self;
        let epoch = *epoch;
        if updates.is_empty() {
            return Ok(());
        }
        let (updates, reported): (Vec<_>, Vec<_>) = updates.into_iter().unzip();
        let finals: Vec<(String, u64, bool)> = updates
            .iter()
            .map(|u| (u.job_id.clone(), u.assignment_epoch, is_final(u.state)))
            .collect();
        let r = client
            .report_status(v1::ReportStatusRequest {
                region: config.region.clone(),
                region_lease_epoch: epoch,
                updates,
            })
            .await?
            .into_inner();
        if r.verdict != v1::Verdict::Accepted as i32 {
            return Err(End::retry("status report refused: stale region lease"));
        }
        let accepted: Vec<bool> = (0..finals.len())
            .map(|i| {
                r.results
                    .get(i)
                    .is_some_and(|item| item.verdict == v1::Verdict::Accepted as i32)
            })
            .collect();
        let retired = db
            .run(|tx, _| {
                let keys = keys.clone();
                let fence = fence.clone();
                let (finals, reported, accepted) = (&finals, &reported, &accepted);
                async move {
                    fence.check(&tx).await?;
                    let mut retired = 0u64;
                    for (((job, job_epoch, last), rep), ok) in
                        finals.iter().zip(reported).zip(accepted)
                    {
                        // A refused item stays unrecorded, so the next full
                        // report sends the job's state again with a newer
                        // version (a job moved away stops being reported once
                        // its REVOKE arrives).
                        if !*ok {
                            continue;
                        }
                        tx.set(&keys.job_status(job), &encode(rep))?;
                        if *last
                            && crate::jobs::retire(&tx, &keys, job, *job_epoch, &rep.digest).await?
                        {
                            retired += 1;
                        }
                    }
                    Ok::<_, RegionalError>(retired)
                }
            })
            .await?;
        crate::metrics::jobs_retired(retired);
        Ok(())
    }

    /// Releases revoked jobs with nothing bound any more.
    async fn release_revoked(&mut self, view: &RegionView) -> Result<(), End> {
        let Reporter {
            db,
            keys,
            fence,
            client,
            config,
            epoch,
            ..
        } = self;
        let epoch = *epoch;
        let mut releases = Vec::new();
        for (job_id, job) in &view.jobs {
            if let JobPhase::Revoked(e) = job.state {
                let bound = view
                    .blocks
                    .range((job_id.clone(), 0)..=(job_id.clone(), u32::MAX))
                    .any(|(_, b)| b.tasks.iter().any(|t| t.is_bound()));
                if !bound {
                    releases.push(v1::JobRelease {
                        job_id: job_id.clone(),
                        assignment_epoch: e,
                        final_tasks: Vec::new(),
                    });
                }
            }
        }
        if releases.is_empty() {
            return Ok(());
        }
        let r = client
            .release_jobs(v1::ReleaseJobsRequest {
                region: config.region.clone(),
                region_lease_epoch: epoch,
                releases: releases.clone(),
            })
            .await?
            .into_inner();
        if r.verdict != v1::Verdict::Accepted as i32 {
            return Err(End::retry("release refused: stale region lease"));
        }
        db.run(|tx, _| {
            let keys = keys.clone();
            let fence = fence.clone();
            let releases = releases.clone();
            async move {
                fence.check(&tx).await?;
                for rel in &releases {
                    if let Some(mut job) = read_job(&tx, &keys, &rel.job_id).await?
                        && job.state == JobPhase::Revoked(rel.assignment_epoch)
                    {
                        job.state = JobPhase::Released(rel.assignment_epoch);
                        tx.set(&keys.job(&rel.job_id), &encode(&job))?;
                    }
                }
                Ok::<_, RegionalError>(())
            }
        })
        .await?;
        Ok(())
    }
}

/// Resolves at the next task state change in the region.
async fn status_watch(db: &Database, keys: &Keys) -> Result<meridian_store::WatchFuture, End> {
    let head = keys.status_head();
    Ok(db
        .run(|tx, _| {
            let head = head.clone();
            async move { Ok::<_, RegionalError>(tx.watch(&head)?) }
        })
        .await?)
}

/// The region's capacity as the router sees it.
fn capacity(view: &RegionView, now: u64) -> v1::RegionCapacity {
    let mut cap = v1::RegionCapacity {
        computed_at_unix_ms: now,
        nodes_total: view.nodes.len() as u32,
        ..Default::default()
    };
    let mut used: BTreeMap<&str, Res> = BTreeMap::new();
    let mut pending_jobs = BTreeSet::new();
    for ((job_id, _), block) in &view.blocks {
        let Some(job) = view.jobs.get(job_id) else {
            continue;
        };
        for t in &block.tasks {
            if t.is_bound() {
                used.entry(t.node.as_str()).or_default().add(&job.resources);
                cap.running_tasks += 1;
            } else if t.is_pending() {
                cap.pending_tasks += 1;
                pending_jobs.insert(job_id.as_str());
            }
        }
    }
    cap.pending_jobs = pending_jobs.len() as u64;
    let mut max_free = Res::default();
    for n in view.nodes.values() {
        let u = used.get(n.node_id.as_str()).cloned().unwrap_or_default();
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
    cap
}

/// One job's status update, when its task counts differ from what was last
/// reported (`prev`) and the region still answers for it.
fn job_update(
    region: &str,
    job: &JobRecord,
    blocks: &[&TaskBlock],
    prev: &Reported,
    now: u64,
) -> Option<(v1::JobStatusUpdate, Reported)> {
    if job.state != JobPhase::Active && job.state != JobPhase::Cancelled {
        return None;
    }
    let counts = crate::jobs::task_counts(blocks.iter().copied());
    if prev.digest == counts {
        return None;
    }
    let mut tasks = Vec::new();
    if job.task_count <= MAX_TASKS_PER_UPDATE {
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
    };
    Some((
        update,
        Reported {
            version,
            digest: counts.to_vec(),
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
