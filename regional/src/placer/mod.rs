//! The shard leader's placement loop.
//!
//! Owns what a replica does while it leads a shard: keep the jobs with
//! pending tasks that the shard is responsible for in a [`WorkQueue`] (one
//! key per job), and in rounds take the ready jobs, read the region, solve
//! ([`crate::placement::solve`]) and commit the decisions in batches
//! ([`commit::commit_batch`]: shard fence, layout generation and node
//! versions checked in the same transaction). Stale decisions go back to the
//! queue at once; jobs with unschedulable tasks are retried with backoff (and,
//! with several shards, offered to the next shard), without blocking the
//! others. Between rounds it runs the node [`sweep`].
//!
//! Must never: act after its term ended (every write checks the fence, and a
//! fenced write ends the loop), or wait on a job's backoff with other work
//! ready.

pub mod commit;
pub mod round;
pub mod sweep;
pub mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use meridian_control::{Backoff, BackoffConfig, Lane, QueueConfig, SharedClock, WorkQueue};
use meridian_store::Database;
use tokio::sync::watch;

use crate::error::{RegionalError, Result};
use crate::metrics as m;
use crate::model::{Keys, RegionView, encode};
use crate::placement::{SolverConfig, solve};
use crate::shard::{ShardTerm, ShardWork, shard_of_job};
use commit::{BatchOutcome, commit_batch};
use round::{batches, build_input};
use sweep::{LivenessConfig, sweep};
use views::SharedViews;

/// Tuning of the placement loop.
#[derive(Debug, Clone)]
pub struct PlacerConfig {
    /// Bindings per commit transaction (a job's bindings are never split).
    pub batch_size: usize,
    /// Most jobs taken from the queue per round.
    pub max_jobs_per_round: usize,
    /// Most jobs waiting in the queue.
    pub queue_capacity: usize,
    pub solver: SolverConfig,
    /// Retry delays of jobs with unschedulable tasks.
    pub backoff: BackoffConfig,
    /// How often the pending index is re-listed even without a wake-up.
    pub resync_every: Duration,
    /// How often the node sweep runs.
    pub sweep_every: Duration,
    pub liveness: LivenessConfig,
    /// Seed of the backoff jitter.
    pub seed: u64,
}

impl Default for PlacerConfig {
    fn default() -> Self {
        PlacerConfig {
            batch_size: 50_000,
            max_jobs_per_round: 100_000,
            queue_capacity: 200_000,
            solver: SolverConfig::default(),
            backoff: BackoffConfig {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
            },
            resync_every: Duration::from_secs(1),
            sweep_every: Duration::from_millis(500),
            liveness: LivenessConfig::default(),
            seed: 0,
        }
    }
}

/// The [`ShardWork`] of a region scheduler replica.
pub struct Placer {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    config: PlacerConfig,
    /// Shared by the loops of every shard this replica leads.
    views: Arc<SharedViews>,
}

impl Placer {
    pub fn new(db: Database, keys: Keys, clock: SharedClock, config: PlacerConfig) -> Arc<Self> {
        let views = SharedViews::new(db.clone(), keys.clone());
        Arc::new(Placer {
            db,
            keys,
            clock,
            config,
            views,
        })
    }
}

impl ShardWork for Placer {
    fn lead(&self, term: ShardTerm, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        let db = self.db.clone();
        let keys = self.keys.clone();
        let clock = self.clock.clone();
        let config = self.config.clone();
        let views = self.views.clone();
        Box::pin(async move {
            let shard = term.shard;
            match ShardLoop::with_views(db, keys, clock, config, term, views) {
                Ok(mut lp) => {
                    if let Err(err) = lp.run(stop).await {
                        tracing::warn!(shard, error = %err, "placement loop ended");
                    }
                }
                Err(err) => tracing::error!(shard, error = %err, "placement loop could not start"),
            }
        })
    }
}

/// What one round did, for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub jobs: usize,
    pub tasks: usize,
    pub outcome: BatchOutcome,
    pub unschedulable: usize,
}

/// One term of one shard's placement.
pub struct ShardLoop {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    config: PlacerConfig,
    term: ShardTerm,
    queue: WorkQueue<String>,
    backoff: Backoff,
    retries: BTreeMap<String, u32>,
    last_sweep: Option<meridian_control::Instant>,
    last_resync: Option<meridian_control::Instant>,
    views: Arc<SharedViews>,
}

impl ShardLoop {
    /// A loop that reads the region on its own.
    pub fn new(
        db: Database,
        keys: Keys,
        clock: SharedClock,
        config: PlacerConfig,
        term: ShardTerm,
    ) -> Result<Self> {
        let views = SharedViews::new(db.clone(), keys.clone());
        ShardLoop::with_views(db, keys, clock, config, term, views)
    }

    /// A loop sharing its region reads with the replica's other shards.
    pub fn with_views(
        db: Database,
        keys: Keys,
        clock: SharedClock,
        config: PlacerConfig,
        term: ShardTerm,
        views: Arc<SharedViews>,
    ) -> Result<Self> {
        let queue = WorkQueue::new(
            QueueConfig {
                name: format!("placement-shard-{}", term.shard),
                capacity: config.queue_capacity,
                min_interval: Duration::ZERO,
            },
            clock.clone(),
        )
        .map_err(|e| RegionalError::invalid("queue_capacity", e.to_string()))?;
        let backoff = Backoff::new(config.backoff, config.seed ^ u64::from(term.shard))
            .map_err(|e| RegionalError::invalid("backoff", e.to_string()))?;
        Ok(ShardLoop {
            db,
            keys,
            clock,
            config,
            term,
            queue,
            backoff,
            retries: BTreeMap::new(),
            last_sweep: None,
            last_resync: None,
            views,
        })
    }

    /// The jobs waiting in this term's queue.
    pub fn queue(&self) -> &WorkQueue<String> {
        &self.queue
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let head = self.keys.pending_head();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            // Arm the wake-up before reading, so no change is missed.
            let wake = self
                .db
                .run(|tx, _| {
                    let head = head.clone();
                    async move { tx.watch(&head) }
                })
                .await?;
            match self.round().await {
                Ok(_) => {}
                Err(err) if err.is_fenced() => return Err(err),
                Err(err) => {
                    tracing::warn!(shard = self.term.shard, error = %err, "placement round failed");
                }
            }
            if self.queue.ready_len() > 0 {
                continue;
            }
            let now = self.clock.now();
            let mut wait = self.config.resync_every.min(self.config.sweep_every);
            if let Some(at) = self.queue.next_eligible_at() {
                wait = wait.min(at.saturating_duration_since(now));
            }
            let sleep = self.clock.sleep(wait);
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = sleep => {}
                _ = wake => { self.last_resync = None; }
            }
        }
    }

    /// One round: resync and sweep when due, then place the ready jobs.
    pub async fn round(&mut self) -> Result<RoundReport> {
        let ticket = self.views.ticket();
        let now = self.clock.now();
        let now_ms = self.clock.now_unix_ms();
        let view = self.views.read_after(ticket).await?;
        let count = view.layout.map_or(1, |l| l.count);
        let due = |last: Option<meridian_control::Instant>, every: Duration| {
            last.is_none_or(|t| now.saturating_duration_since(t) >= every)
        };
        if due(self.last_sweep, self.config.sweep_every) {
            self.last_sweep = Some(now);
            let out = sweep(
                &self.db,
                &self.keys,
                &self.term.fence,
                self.term.shard,
                &view,
                &self.config.liveness,
                now_ms,
            )
            .await?;
            m::sweep(&out);
        }
        if due(self.last_resync, self.config.resync_every) {
            self.last_resync = Some(now);
            for (job, spill) in &view.pending {
                if shard_of_job(job, *spill, count) == self.term.shard {
                    self.queue.add(job.clone(), Lane::Normal);
                }
            }
        }
        m::queue_depth(self.term.shard, self.queue.len());

        let mut guards = Vec::new();
        while guards.len() < self.config.max_jobs_per_round {
            match self.queue.try_get() {
                Some(g) => guards.push(g),
                None => break,
            }
        }
        if guards.is_empty() {
            return Ok(RoundReport::default());
        }
        let jobs: BTreeSet<String> = guards.iter().map(|g| g.key().clone()).collect();
        let input = build_input(&view, self.term.shard, &jobs, now_ms);
        let started = std::time::Instant::now();
        let solution = solve(&input.snapshot, &input.pending, &self.config.solver);
        m::solve_seconds(started.elapsed());
        let mut report = RoundReport {
            jobs: jobs.len(),
            tasks: input.pending.len(),
            unschedulable: solution.unschedulable.len(),
            ..RoundReport::default()
        };
        let mut stale_jobs: BTreeSet<String> = BTreeSet::new();
        for batch in batches(&input, &solution, self.config.batch_size) {
            let out = commit_batch(
                &self.db,
                &self.keys,
                &self.term.fence,
                self.term.shard,
                input.generation,
                &batch.bindings,
                &batch.stops,
                self.clock.now_unix_ms(),
            )
            .await;
            let out = match out {
                Ok(out) => out,
                Err(err) if err.is_fenced() => return Err(err),
                Err(err) => {
                    // The whole batch failed: its jobs go back to the queue.
                    tracing::warn!(shard = self.term.shard, error = %err, "binding batch failed");
                    stale_jobs.extend(batch.bindings.iter().map(|b| b.task.job_id.clone()));
                    continue;
                }
            };
            m::bound(self.term.shard, out.bound.len(), out.stale.len());
            trace_place(&view, self.term.shard, &out.bound);
            stale_jobs.extend(out.stale.iter().map(|(t, _)| t.job_id.clone()));
            report.outcome.bound.extend(out.bound);
            report.outcome.stale.extend(out.stale);
            report.outcome.stopped += out.stopped;
        }
        let unschedulable: BTreeSet<String> = solution
            .unschedulable
            .iter()
            .map(|(t, _)| t.job_id.clone())
            .collect();
        let mut spill = Vec::new();
        for guard in guards {
            let job = guard.key().clone();
            guard.done();
            if stale_jobs.contains(&job) {
                // Decided on a view that changed: decide again right away.
                self.queue.add(job, Lane::High);
            } else if unschedulable.contains(&job) {
                let retry = self.retries.entry(job.clone()).or_insert(0);
                let delay = self.backoff.delay(*retry);
                *retry = retry.saturating_add(1);
                if count > 1 {
                    spill.push(job);
                } else {
                    self.queue.add_after(job, Lane::Low, delay);
                }
            } else {
                self.retries.remove(&job);
                if let Some(at) = input.next_retry_unix_ms {
                    let delay = Duration::from_millis(at.saturating_sub(now_ms));
                    self.queue.add_after(job, Lane::Normal, delay);
                }
            }
        }
        if !spill.is_empty() {
            self.spill(&spill, &view).await?;
        }
        Ok(report)
    }

    /// Offers jobs this shard could not place to the next shard.
    async fn spill(&self, jobs: &[String], view: &RegionView) -> Result<()> {
        let fence = self.term.fence.clone();
        self.db
            .run(|tx, _| {
                let keys = self.keys.clone();
                let fence = fence.clone();
                let jobs = jobs.to_vec();
                let seen: Vec<u32> = jobs
                    .iter()
                    .map(|j| view.pending.get(j).copied().unwrap_or(0))
                    .collect();
                async move {
                    fence.check(&tx).await?;
                    for (job, seen) in jobs.iter().zip(seen) {
                        let key = keys.pending(job);
                        if let Some(bytes) = tx.get(&key).await? {
                            let now: u32 = crate::model::decode("pending", &bytes)?;
                            if now == seen {
                                tx.set(&key, &encode(&seen.wrapping_add(1)))?;
                            }
                        }
                    }
                    Ok::<_, RegionalError>(())
                }
            })
            .await
    }
}

/// The `place` step of the traces of the jobs whose bindings just committed:
/// one span per job and batch (not per task, to stay cheap at high binding
/// rates).
fn trace_place(view: &RegionView, shard: u32, bound: &[crate::placement::TaskRef]) {
    let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
    for task in bound {
        *per_job.entry(task.job_id.as_str()).or_default() += 1;
    }
    for (job_id, tasks) in per_job {
        let trace_id = view.jobs.get(job_id).map_or("", |j| j.trace_id.as_str());
        let span =
            tracing::info_span!("place", trace_id = %trace_id, job_id = %job_id, shard, tasks);
        meridian_control::trace::link(&span, meridian_control::trace::stored(trace_id));
        span.in_scope(|| {
            tracing::debug!(
                target: meridian_control::trace::TARGET,
                trace_id = %trace_id,
                job_id = %job_id,
                shard,
                tasks,
                "place: tasks bound to nodes"
            );
        });
    }
}
