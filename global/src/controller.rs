//! The leader's control loop: route pending jobs, move jobs off lost or
//! evacuating regions.
//!
//! Owns when the global tier acts on its own: every pass (on a timer, or
//! woken by a submit, release or capacity report) moves the jobs of regions
//! whose lease expired more than the skew margin ago (FAILOVER jobs only;
//! KEEP_RUNNING jobs stay), revokes the jobs of evacuating regions, and
//! feeds a snapshot to the pure [`router`]. Every decision is re-checked
//! inside the fenced transaction that applies it. Errors are isolated: a job
//! that cannot be handled (its record does not decode) is parked with a
//! backoff of its own ([`Parking`]) while the others are routed, and a pass
//! that fails as a whole (the store is unavailable) is retried after a
//! full-jitter backoff, not at once. It must never act while not leading,
//! and never offer a job to a region before its previous hold was released.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::lease::{Fence, Role};
use meridian_control::trace;
use meridian_control::{Backoff, SharedClock};
use meridian_proto::v1::{Job, JobEventKind, JobState, RegionInfo};
use meridian_store::{Database, RangeOption, Transaction};
use prost::Message;
use tokio::sync::{Notify, watch};

use crate::error::{GlobalError, Result};
use crate::events::EventWriter;
use crate::gate;
use crate::handoff::{self, read_moving};
use crate::jobs::{job_event, read_job, write_job};
use crate::keys::Keys;
use crate::leader::Leadership;
use crate::lifecycle::{self, state_of};
use crate::parking::Parking;
use crate::reach::ClassView;
use crate::registry::{self, lease_live, read_region};
use crate::router::{
    self, Amount, Decision, JobRequest, RegionSpread, RegionView, Snapshot, TenantQuota,
};

/// A routing pass's reading: pending jobs, usage by tenant, and the jobs
/// whose records failed on their own (with why).
type Pending = (Vec<Job>, BTreeMap<String, u64>, Vec<(String, String)>);

/// Jobs routed per pass at most.
const ROUTE_BATCH: usize = 1000;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Jobs assigned to a region.
    pub assigned: usize,
    /// Jobs revoked from a region (hand-off started).
    pub revoked: usize,
    /// Hand-offs ended without the old region's confirmation (lost region).
    pub force_released: usize,
}

/// The leader's controller.
pub struct Controller {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    leadership: Arc<Leadership>,
    kick: Arc<Notify>,
    skew_margin: Duration,
    every: Duration,
    spread: RegionSpread,
    quotas: BTreeMap<String, TenantQuota>,
    /// Resources routed to a region since its last capacity report
    /// (keyed by region; reset when a newer report arrives).
    reserved: BTreeMap<String, (u64, Amount)>,
    /// Jobs set aside after failing on their own.
    parking: Parking,
    /// Delay after a failed pass.
    retry: Backoff,
}

/// Waits after a pass that failed as a whole: 50 ms doubling to 5 s.
fn pass_backoff(seed: u64) -> Backoff {
    Backoff::between(Duration::from_millis(50), Duration::from_secs(5), seed)
}

impl Controller {
    /// A controller; `every` is the period of passes when nothing wakes it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Database,
        keys: Keys,
        clock: SharedClock,
        leadership: Arc<Leadership>,
        kick: Arc<Notify>,
        skew_margin: Duration,
        every: Duration,
        spread: RegionSpread,
        quotas: BTreeMap<String, TenantQuota>,
        seed: u64,
    ) -> Self {
        Controller {
            parking: Parking::new(seed),
            retry: pass_backoff(seed.wrapping_add(1)),
            db,
            keys,
            clock,
            leadership,
            kick,
            skew_margin,
            every,
            spread,
            quotas,
            reserved: BTreeMap::new(),
        }
    }

    /// Runs passes while leading, until `shutdown` flips.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut status = self.leadership.subscribe();
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut wait = self.every;
            if status.borrow().role == Role::Leader {
                match self.pass().await {
                    Ok(report) => {
                        failures = 0;
                        if report != PassReport::default() {
                            tracing::debug!(?report, "controller pass");
                        }
                    }
                    Err(err) => {
                        wait = self.retry.delay(failures);
                        failures = failures.saturating_add(1);
                        metrics::counter!("meridian_global_controller_pass_failures_total")
                            .increment(1);
                        tracing::warn!(error = %err, failures, retry_in_ms = wait.as_millis() as u64, "controller pass failed");
                    }
                }
            } else {
                self.reserved.clear();
                self.parking.clear();
                failures = 0;
            }
            // After a failure only the backoff (or a change of role) ends
            // the wait: kicks would retry a failing store at the rate of
            // submits.
            let kicked = async {
                if failures == 0 {
                    self.kick.notified().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = kicked => {}
                _ = self.clock.sleep(wait) => {}
                _ = status.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One pass: hand-offs first (they free jobs to route), then routing.
    pub async fn pass(&mut self) -> Result<PassReport> {
        let fence = self.leadership.fence().await?;
        let now = self.clock.now_unix_ms();
        let regions = self.regions().await?;
        let mut report = PassReport::default();
        let skew = u64::try_from(self.skew_margin.as_millis()).unwrap_or(u64::MAX);
        for region in &regions {
            let lost = region.lease_epoch > 0
                && now >= region.lease_expires_at_unix_ms.saturating_add(skew);
            if lost || region.evacuating {
                let (revoked, released) = self.move_jobs(&fence, &region.name, skew).await?;
                report.revoked += revoked;
                report.force_released += released;
            }
        }
        // Jobs whose dependencies are met join the pending index before
        // routing, so they are routed in this same pass.
        let gated = gate::unblock(&self.db, &self.keys, &fence, now).await?;
        if gated.more {
            self.kick.notify_one();
        }
        report.assigned = self.route(&fence, &regions, now).await?;
        metrics::counter!("meridian_global_jobs_routed_total").increment(report.assigned as u64);
        Ok(report)
    }

    async fn regions(&self) -> Result<Vec<RegionInfo>> {
        let keys = self.keys.clone();
        self.db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let rows = tx
                        .get_range(RangeOption::from(keys.regions().range()))
                        .await?;
                    rows.iter()
                        .map(|kv| {
                            RegionInfo::decode(kv.value.as_slice()).map_err(GlobalError::from)
                        })
                        .collect::<Result<Vec<_>>>()
                }
            })
            .await
    }

    /// Moves the jobs of a lost or evacuating region (judged again inside
    /// the transaction). Returns (revoked, force-released).
    async fn move_jobs(
        &mut self,
        fence: &Fence,
        region: &str,
        skew: u64,
    ) -> Result<(usize, usize)> {
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        let blocked = self.parking.blocked(self.clock.now());
        let blocked = &blocked;
        let (revoked, released, broken) = self
            .db
            .run_locked(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let Some(info) = read_region(&tx, &keys, region).await? else {
                        return Ok((0, 0, Vec::new()));
                    };
                    let lost = info.lease_epoch > 0
                        && now >= info.lease_expires_at_unix_ms.saturating_add(skew);
                    if !lost && !info.evacuating {
                        return Ok((0, 0, Vec::new()));
                    }
                    let loss = Loss {
                        lost,
                        evacuating: info.evacuating,
                        now,
                    };
                    let held = tx
                        .get_range(RangeOption::from(keys.helds(region).range()))
                        .await?;
                    let mut events = EventWriter::new();
                    let (mut revoked, mut released) = (0, 0);
                    let mut broken = Vec::new();
                    for kv in held {
                        let (job_id,): (String,) = keys
                            .helds(region)
                            .unpack(&kv.key)
                            .map_err(|e| GlobalError::Corrupt(format!("held key: {e}")))?;
                        if blocked.contains(&job_id) {
                            continue;
                        }
                        let mut job = match read_job(&tx, &keys, &job_id).await {
                            Ok(Some(job)) => job,
                            Ok(None) => continue,
                            Err(GlobalError::Corrupt(why)) => {
                                broken.push((job_id, why));
                                continue;
                            }
                            Err(err) => return Err(err),
                        };
                        let (r, l) =
                            move_held_job(&tx, &keys, &mut events, &job_id, &mut job, loss).await?;
                        revoked += r;
                        released += l;
                    }
                    Ok::<_, GlobalError>((revoked, released, broken))
                }
            })
            .await?;
        self.park(broken);
        Ok((revoked, released))
    }

    /// Parks each job that failed on its own in the last transaction.
    fn park(&mut self, broken: Vec<(String, String)>) {
        let now = self.clock.now();
        for (job_id, why) in broken {
            self.parking.fail(&job_id, now, &why);
        }
    }

    async fn route(&mut self, fence: &Fence, regions: &[RegionInfo], now: u64) -> Result<usize> {
        let (pending, usage, broken) = self.read_pending().await?;
        self.park(broken);
        if !self.parking.is_empty() {
            for job in &pending {
                self.parking.handled(&job.job_id);
            }
        }
        metrics::gauge!("meridian_global_route_pending_jobs").set(pending.len() as f64);
        if pending.is_empty() {
            return Ok(0);
        }
        let snapshot = Snapshot {
            regions: regions.iter().map(|r| self.view(r, now)).collect(),
            tenant_usage: usage,
            quotas: self.quotas.clone(),
            spread: self.spread,
        };
        let requests: Vec<JobRequest> = pending.iter().map(request_of).collect();
        let told: BTreeMap<&str, &str> = pending
            .iter()
            .map(|j| (j.job_id.as_str(), j.waiting_reason.as_str()))
            .collect();
        let mut assignments = BTreeMap::new();
        let mut reasons = BTreeMap::new();
        for decision in router::route(&snapshot, &requests) {
            match decision {
                Decision::Assign { job_id, region } => {
                    assignments.insert(job_id, region);
                }
                Decision::Wait { job_id, reason } => {
                    let reason = reason.to_string();
                    if told.get(job_id.as_str()) != Some(&reason.as_str()) {
                        reasons.insert(job_id, reason);
                    }
                }
            }
        }
        // Routing first: a reason is for a user to read, an assignment is
        // a job on its way.
        let mut routed = 0;
        if !assignments.is_empty() {
            let done = self.commit_assignments(fence, assignments, now).await?;
            self.note_routed(&done);
            routed = done.len();
        }
        if !reasons.is_empty() {
            self.commit_reasons(fence, reasons, now).await?;
        }
        Ok(routed)
    }

    /// Up to a batch of pending jobs that are not parked, the tenants' usage,
    /// and the jobs whose records failed on their own.
    async fn read_pending(&self) -> Result<Pending> {
        let keys = self.keys.clone();
        let blocked = self.parking.blocked(self.clock.now());
        // Parked jobs do not take the places of others in the batch.
        let scan = ROUTE_BATCH.saturating_add(blocked.len());
        self.db
            .run(|tx, _| {
                let (keys, blocked) = (keys.clone(), &blocked);
                async move {
                    let ids = tx
                        .get_range(RangeOption::from(keys.pendings().range()).limit(scan))
                        .await?;
                    let mut job_ids = Vec::with_capacity(ids.len());
                    for kv in ids {
                        let (job_id,): (String,) = keys
                            .pendings()
                            .unpack(&kv.key)
                            .map_err(|e| GlobalError::Corrupt(format!("pending key: {e}")))?;
                        if !blocked.contains(&job_id) && job_ids.len() < ROUTE_BATCH {
                            job_ids.push(job_id);
                        }
                    }
                    // All the jobs in one round trip.
                    let wanted: Vec<Vec<u8>> = job_ids.iter().map(|j| keys.job(j)).collect();
                    tx.prefetch(&wanted).await?;
                    let mut jobs = Vec::with_capacity(job_ids.len());
                    let mut broken = Vec::new();
                    for job_id in job_ids {
                        match read_job(&tx, &keys, &job_id).await {
                            Ok(Some(job)) => jobs.push(job),
                            Ok(None) => {}
                            // One bad record must not stop the others.
                            Err(GlobalError::Corrupt(why)) => broken.push((job_id, why)),
                            Err(err) => return Err(err),
                        }
                    }
                    let mut usage = BTreeMap::new();
                    for kv in tx
                        .get_range(RangeOption::from(keys.tenant_usages().range()))
                        .await?
                    {
                        let (tenant,): (String,) = keys
                            .tenant_usages()
                            .unpack(&kv.key)
                            .map_err(|e| GlobalError::Corrupt(format!("usage key: {e}")))?;
                        let raw: [u8; 8] = kv.value.as_slice().try_into().unwrap_or([0; 8]);
                        usage.insert(tenant, u64::try_from(i64::from_le_bytes(raw)).unwrap_or(0));
                    }
                    Ok::<_, GlobalError>((jobs, usage, broken))
                }
            })
            .await
    }

    /// Applies the router's assignments in one fenced transaction, each
    /// re-checked there (the job still pending, the region live and not
    /// draining). Returns the jobs assigned, with their regions.
    async fn commit_assignments(
        &self,
        fence: &Fence,
        assignments: BTreeMap<String, String>,
        now: u64,
    ) -> Result<Vec<(String, Job)>> {
        let keys = self.keys.clone();
        self.db
            .run_locked(|tx, _| {
                let (keys, fence, assignments) = (keys.clone(), fence.clone(), assignments.clone());
                async move {
                    let mut wanted = vec![fence.key().to_vec()];
                    for (job_id, region) in &assignments {
                        wanted.push(keys.job(job_id));
                        wanted.push(keys.pending(job_id));
                        wanted.push(keys.region(region));
                    }
                    tx.prefetch(&wanted).await?;
                    fence.check(&tx).await?;
                    let mut events = EventWriter::new();
                    let mut done = Vec::new();
                    for (job_id, region) in assignments {
                        let Some(mut job) = read_job(&tx, &keys, &job_id).await? else {
                            continue;
                        };
                        let still_pending = state_of(&job) == JobState::Pending
                            && !job.cancel_requested
                            && tx.get(&keys.pending(&job_id)).await?.is_some();
                        let region_ok = read_region(&tx, &keys, &region)
                            .await?
                            .is_some_and(|r| lease_live(&r, now) && !r.draining);
                        if still_pending && region_ok {
                            handoff::assign(&tx, &keys, &mut events, &mut job, &region, now)
                                .await?;
                            done.push((region, job));
                        }
                    }
                    Ok::<_, GlobalError>(done)
                }
            })
            .await
    }

    /// Records why jobs still wait, each re-checked in the fenced
    /// transaction (a job routed or cancelled meanwhile is left alone).
    async fn commit_reasons(
        &self,
        fence: &Fence,
        reasons: BTreeMap<String, String>,
        now: u64,
    ) -> Result<()> {
        let keys = self.keys.clone();
        self.db
            .run_locked(|tx, _| {
                let (keys, fence, reasons) = (keys.clone(), fence.clone(), &reasons);
                async move {
                    let mut wanted = vec![fence.key().to_vec()];
                    for job_id in reasons.keys() {
                        wanted.push(keys.job(job_id));
                        wanted.push(keys.pending(job_id));
                    }
                    tx.prefetch(&wanted).await?;
                    fence.check(&tx).await?;
                    let mut events = EventWriter::new();
                    for (job_id, reason) in reasons {
                        let Some(mut job) = read_job(&tx, &keys, job_id).await? else {
                            continue;
                        };
                        // A job held, or sent back to wait for a dependency,
                        // since the pass read it has left the router's queue:
                        // its own reason ("held", the dependency) stands.
                        let queued = tx.get(&keys.pending(job_id)).await?.is_some();
                        if !queued
                            || state_of(&job) != JobState::Pending
                            || job.waiting_reason == *reason
                        {
                            continue;
                        }
                        job.waiting_reason.clone_from(reason);
                        job.updated_at_unix_ms = now;
                        let event = job_event(JobEventKind::Updated, &job, None, now);
                        events.job(&tx, &keys, &event)?;
                        write_job(&tx, &keys, &job).await?;
                    }
                    Ok::<_, GlobalError>(())
                }
            })
            .await
    }

    /// Traces each routed job and counts its resources against its region
    /// until a newer capacity report covers them.
    fn note_routed(&mut self, done: &[(String, Job)]) {
        for (region, job) in done {
            trace_route(job, region);
            let need = request_of(job).per_task;
            let tasks = job
                .spec
                .as_ref()
                .map_or(0, |s| u64::from(crate::handoff::tasks_at_once(s)));
            if let Some((_, amount)) = self.reserved.get_mut(region) {
                amount.cpu_millis += need.cpu_millis * tasks;
                amount.memory_bytes += need.memory_bytes * tasks;
                amount.gpus += need.gpus * tasks;
            }
        }
    }

    fn view(&mut self, info: &RegionInfo, now: u64) -> RegionView {
        let cap = info.capacity.clone().unwrap_or_default();
        let reserved = self
            .reserved
            .entry(info.name.clone())
            .or_insert((info.capacity_reported_at_unix_ms, Amount::default()));
        if reserved.0 != info.capacity_reported_at_unix_ms {
            *reserved = (info.capacity_reported_at_unix_ms, Amount::default());
        }
        let reserved = reserved.1;
        let free = Amount {
            cpu_millis: cap
                .cpu_millis_allocatable
                .saturating_sub(cap.cpu_millis_allocated)
                .saturating_sub(reserved.cpu_millis),
            memory_bytes: cap
                .memory_bytes_allocatable
                .saturating_sub(cap.memory_bytes_allocated)
                .saturating_sub(reserved.memory_bytes),
            gpus: u64::from(cap.gpu_allocatable.saturating_sub(cap.gpu_allocated))
                .saturating_sub(reserved.gpus),
        };
        let node = cap.max_node_free.unwrap_or_default();
        RegionView {
            name: info.name.clone(),
            ready: registry::lease_live(info, now),
            draining: info.draining,
            free,
            free_gpus_by_type: cap
                .gpus
                .iter()
                .map(|g| {
                    (
                        g.gpu_type.clone(),
                        u64::from(g.allocatable.saturating_sub(g.allocated)),
                    )
                })
                .collect(),
            max_node_free: Amount {
                cpu_millis: node.cpu_millis,
                memory_bytes: node.memory_bytes,
                gpus: u64::from(node.gpu_count),
            },
            // Unknown without a report, when truncated, or when a region
            // with nodes reports no class (it predates class reports).
            classes: (info.capacity.is_some()
                && !cap.node_classes_truncated
                && (cap.nodes_total == 0 || !cap.node_classes.is_empty()))
            .then(|| cap.node_classes.iter().map(ClassView::of).collect()),
        }
    }
}

/// How a region whose jobs move stands, judged inside the transaction.
#[derive(Debug, Clone, Copy)]
struct Loss {
    lost: bool,
    evacuating: bool,
    now: u64,
}

/// Starts the hand-off of one job held by a lost or evacuating region (unless
/// it is moving already, stays by its policy, or is final), and ends it at
/// once when the region is lost. Returns (revoked, released), each 0 or 1.
async fn move_held_job(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job_id: &str,
    job: &mut Job,
    loss: Loss,
) -> Result<(usize, usize)> {
    let Loss {
        lost,
        evacuating,
        now,
    } = loss;
    let (mut revoked, mut released) = (0, 0);
    let mut is_moving = read_moving(tx, keys, job_id).await?.is_some();
    let movable = evacuating || handoff::fails_over(job);
    if !is_moving && movable && !lifecycle::is_terminal(state_of(job)) {
        let why = if lost {
            "region lost"
        } else {
            "region drained"
        };
        handoff::revoke(tx, keys, events, job, why, now).await?;
        revoked = 1;
        is_moving = true;
    }
    // Unreachable past its lease and the skew margin: its agents have
    // stopped FAILOVER tasks by now, so the hand-off ends without the
    // region's confirmation.
    if lost && is_moving {
        handoff::release(tx, keys, events, job, "region lost", now).await?;
        released = 1;
    }
    Ok((revoked, released))
}

/// The `route` step of a job's trace: the hand-off to `region` committed.
fn trace_route(job: &Job, region: &str) {
    let trace = trace::stored(&job.trace_id);
    let span = tracing::info_span!(
        "route",
        trace_id = %job.trace_id,
        job_id = %job.job_id,
        region = %region,
        assignment_epoch = job.assignment_epoch,
    );
    trace::link(&span, trace);
    let _entered = span.enter();
    tracing::debug!(
        target: trace::TARGET,
        trace_id = %job.trace_id,
        job_id = %job.job_id,
        region = %region,
        "route: job assigned to region"
    );
}

fn request_of(job: &Job) -> JobRequest {
    let spec = job.spec.clone().unwrap_or_default();
    let tasks = crate::handoff::tasks_at_once(&spec);
    let res = spec.resources.unwrap_or_default();
    JobRequest {
        job_id: job.job_id.clone(),
        tenant: spec.tenant,
        priority: gate::priority_of(job),
        tasks,
        per_task: Amount {
            cpu_millis: res.cpu_millis,
            memory_bytes: res.memory_bytes,
            gpus: u64::from(res.gpu_count),
        },
        gpu_type: res.gpu_type,
        allowed: spec.allowed_regions,
        preferred: spec.preferred_regions,
        constraints: spec.node_constraints,
    }
}
