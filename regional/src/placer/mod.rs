//! The shard leader's placement loop.
//!
//! Owns what a replica does while it leads a shard. At the start of a term
//! it follows the change feed to its end (so it decides on everything its
//! predecessor wrote) and queues every job its shard owns that has pending
//! tasks. From then on it is driven by changes to memory, not by timers: a
//! new or changed job of its shard is queued; a node with more room wakes
//! exactly the waiting jobs it can take ([`hints`]), and a job that waits
//! for room that another shard has is handed to that shard at once. A round
//! takes the ready jobs, builds the solver's input from memory
//! ([`round::build_input`]), solves, and submits the decisions to the write
//! pipeline, which checks them against the store under the shard's fence.
//! Decisions made on a view that changed go back to the queue at once; jobs
//! that fit nowhere wait for a change (or, as a repair path, their backoff).
//! Between rounds it runs the node [`sweep`].
//!
//! Must never: act after its term ended (every intent carries the shard's
//! fence, and a fenced intent ends the loop), or wait on one job's backoff
//! with other work ready.

pub mod hints;
pub mod round;
pub mod sweep;
mod why;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use meridian_control::{
    Backoff, BackoffConfig, Instant, Lane, QueueConfig, SharedClock, WorkGuard, WorkQueue,
};
use tokio::sync::watch;

use crate::error::{RegionalError, Result};
use crate::liveness::Beats;
use crate::metrics as m;
use crate::model::JobPhase;
use crate::pipeline::bind::{BatchOutcome, Bind};
use crate::pipeline::node::Liveness;
use crate::pipeline::upward::{Explain, Handoff};
use crate::pipeline::{Authority, Intent, Outcome, Pipeline};
use crate::placement::{Solve, SolverConfig};
use crate::shard::{ShardTerm, ShardWork};
use crate::state::tail::Tailer;
use crate::state::{Delta, SharedState, Watcher};
use hints::Waiting;
use round::{NodeView, RoundInput, batches, build_input};
use sweep::{LivenessConfig, SweepOutcome, SweepScope, liveness_changes, task_changes};
use why::{Reasons, RoundWhy};

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
    /// Retry delays of jobs that fit nowhere when no change wakes them.
    pub backoff: BackoffConfig,
    /// How often every pending job is queued again even without a change:
    /// a repair path, not the way work is found.
    pub resync_every: Duration,
    /// How often the node sweep runs.
    pub sweep_every: Duration,
    pub liveness: LivenessConfig,
    /// Seed of the backoff jitter.
    pub seed: u64,
    /// Start new attempts only while the region holds its lease at the
    /// global tier and has caught up with its assignment stream
    /// ([`crate::link::LinkState::may_place`]). Set for a region under a
    /// global tier; a standalone region (no global tier, the fixture of
    /// tests) is its own authority.
    pub requires_region_lease: bool,
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
            resync_every: Duration::from_secs(10),
            sweep_every: Duration::from_millis(500),
            liveness: LivenessConfig::default(),
            seed: 0,
            requires_region_lease: false,
        }
    }
}

/// What the shard loops of a replica share.
#[derive(Clone)]
pub struct PlacerCtx {
    pub pipeline: Pipeline,
    pub state: SharedState,
    pub tailer: Tailer,
    pub beats: Arc<Beats>,
    pub clock: SharedClock,
    pub config: PlacerConfig,
    /// What decides placements ([`crate::placement::solve`]).
    pub solver: Arc<dyn Solve>,
}

/// The [`ShardWork`] of a region scheduler replica.
pub struct Placer {
    ctx: PlacerCtx,
}

impl Placer {
    pub fn new(ctx: PlacerCtx) -> Arc<Self> {
        Arc::new(Placer { ctx })
    }
}

impl ShardWork for Placer {
    fn lead(&self, term: ShardTerm, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        let ctx = self.ctx.clone();
        Box::pin(async move {
            let shard = term.shard;
            // A term whose loop cannot start (the feed cannot be read yet)
            // must not hold its shard idle: it tries again until it starts
            // or the term ends.
            let mut failures = 0u32;
            let mut backoff = start_backoff(ctx.config.seed ^ u64::from(shard));
            let mut stop_wait = stop.clone();
            loop {
                if *stop.borrow() {
                    return;
                }
                match ShardLoop::start(ctx.clone(), term.clone()).await {
                    Ok(mut lp) => {
                        if let Err(err) = lp.run(stop).await {
                            tracing::warn!(shard, error = %err, "placement loop ended");
                        }
                        return;
                    }
                    Err(err) if err.is_fenced() => {
                        tracing::warn!(shard, error = %err, "placement loop fenced at start");
                        return;
                    }
                    Err(err) => {
                        let wait = backoff.delay(failures);
                        failures = failures.saturating_add(1);
                        tracing::error!(shard, error = %err, failures, retry_in_ms = wait.as_millis() as u64, "placement loop could not start; retrying");
                        tokio::select! {
                            _ = ctx.clock.sleep(wait) => {}
                            _ = stop_wait.changed() => {}
                        }
                    }
                }
            }
        })
    }
}

/// Waits between attempts to start a term's loop, and after a failed
/// round: 50 ms doubling to 2 s, so a store outage is not retried hot.
fn start_backoff(seed: u64) -> Backoff {
    Backoff::between(Duration::from_millis(50), Duration::from_secs(2), seed)
}

/// What one round did, for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub jobs: usize,
    pub tasks: usize,
    pub outcome: BatchOutcome,
    pub unschedulable: usize,
    /// Jobs handed to another shard in this round.
    pub handed_off: usize,
    /// Nothing was placed: the region may not place now
    /// ([`PlacerConfig::requires_region_lease`]).
    pub gated: bool,
}

/// One term of one shard's placement.
pub struct ShardLoop {
    ctx: PlacerCtx,
    term: ShardTerm,
    queue: WorkQueue<String>,
    backoff: Backoff,
    retries: BTreeMap<String, u32>,
    waiting: Waiting,
    watcher: Watcher,
    /// Nodes count as heard from at least this late.
    heard_from: Instant,
    last_sweep: Option<Instant>,
    last_resync: Option<Instant>,
    handoffs: Vec<(String, u32)>,
    /// Waiting reasons found and not yet recorded.
    reasons: Reasons,
    /// What the next task sweep must look at.
    sweep_scope: SweepScope,
    /// The solver's copies of the shard's nodes, kept between rounds.
    view: NodeView,
}

impl ShardLoop {
    /// Starts a term: subscribes to changes, follows the feed to its end,
    /// and queues the shard's pending jobs.
    pub async fn start(ctx: PlacerCtx, term: ShardTerm) -> Result<Self> {
        let watcher = ctx.state.subscribe();
        ctx.tailer.catch_up().await?;
        let queue = WorkQueue::new(
            QueueConfig {
                name: format!("placement-shard-{}", term.shard),
                capacity: ctx.config.queue_capacity,
                min_interval: Duration::ZERO,
            },
            ctx.clock.clone(),
        )
        .map_err(|e| RegionalError::invalid("queue_capacity", e.to_string()))?;
        let backoff = Backoff::new(ctx.config.backoff, ctx.config.seed ^ u64::from(term.shard))
            .map_err(|e| RegionalError::invalid("backoff", e.to_string()))?;
        let heard_from = ctx.clock.now();
        let mut lp = ShardLoop {
            ctx,
            term,
            queue,
            backoff,
            retries: BTreeMap::new(),
            waiting: Waiting::default(),
            watcher,
            heard_from,
            last_sweep: None,
            last_resync: None,
            handoffs: Vec::new(),
            reasons: Reasons::default(),
            sweep_scope: SweepScope::everything(),
            view: NodeView::default(),
        };
        lp.resync();
        Ok(lp)
    }

    /// The jobs waiting in this term's queue.
    pub fn queue(&self) -> &WorkQueue<String> {
        &self.queue
    }

    /// How many jobs wait for room.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn authority(&self, generation: Option<u64>) -> Authority {
        Authority {
            fence: self.term.fence.clone(),
            generation,
        }
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut failures = 0u32;
        let mut backoff = start_backoff(self.ctx.config.seed ^ u64::from(self.term.shard));
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let mut gated = false;
            match self.round().await {
                Ok(report) => {
                    failures = 0;
                    gated = report.gated;
                }
                // The layout moved under a decision: the next round decides
                // under the new one (memory follows the layout change).
                Err(RegionalError::Resharded { .. }) => {}
                Err(err) if err.is_fenced() => return Err(err),
                Err(err) => {
                    // The next round waits out a backoff so a failing store
                    // is not retried hot (a job the round took and did not
                    // decide is queued again by the next resync).
                    let wait = backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    m::round_failed(self.term.shard);
                    tracing::warn!(shard = self.term.shard, error = %err, failures, retry_in_ms = wait.as_millis() as u64, "placement round failed");
                    tokio::select! {
                        _ = stop.changed() => return Ok(()),
                        _ = self.ctx.clock.sleep(wait) => {}
                    }
                    continue;
                }
            }
            // A gated round leaves its jobs queued: the loop waits for the
            // link's next state (a change of memory) or the next sweep
            // rather than spin on them.
            if self.queue.ready_len() > 0 && !gated {
                continue;
            }
            let now = self.ctx.clock.now();
            let next_sweep = self.last_sweep.map_or(Duration::ZERO, |t| {
                (t + self.ctx.config.sweep_every).saturating_duration_since(now)
            });
            let mut wait = next_sweep;
            if let Some(at) = self.queue.next_eligible_at().filter(|_| !gated) {
                wait = wait.min(at.saturating_duration_since(now));
            }
            let sleep = self.ctx.clock.sleep(wait);
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = sleep => {}
                delta = self.watcher.changed() => self.absorb(delta),
            }
        }
    }

    /// Reacts to changes of memory: queue what concerns this shard, wake
    /// waiting jobs a node's new room can help, hand over jobs another
    /// shard now has room for.
    pub fn absorb(&mut self, delta: Delta) {
        if delta.is_empty() {
            return;
        }
        self.sweep_scope.note(&delta);
        if delta.reload || delta.layout {
            self.resync();
        }
        let shard = self.term.shard;
        let state = self.ctx.state.clone();
        let s = state.read();
        let count = s.shard_count();
        for job_id in &delta.jobs {
            if self.waiting.contains(job_id) {
                continue;
            }
            if let Some(job) = s.jobs.get(job_id)
                && job.owner(count) == shard
                && job.pending > 0
                && job.record.state == JobPhase::Active
            {
                self.queue.add(job_id.clone(), Lane::Normal);
            }
        }
        for node_id in &delta.freed {
            let Some(node) = s.nodes.get(node_id) else {
                continue;
            };
            if self.waiting.is_empty() {
                break;
            }
            let woken = self.waiting.wake_for(node);
            for job in woken {
                if node.shard == shard {
                    self.queue.add(job, Lane::High);
                } else {
                    self.handoffs.push((job, node.shard));
                }
            }
        }
    }

    /// Queues every pending job this shard owns and owes a full task sweep
    /// (term start, reload, and now and then as a repair).
    fn resync(&mut self) {
        self.last_resync = Some(self.ctx.clock.now());
        self.sweep_scope = SweepScope::everything();
        let shard = self.term.shard;
        let state = self.ctx.state.clone();
        let s = state.read();
        let count = s.shard_count();
        for job_id in &s.pending_jobs {
            if let Some(job) = s.jobs.get(job_id)
                && job.owner(count) == shard
                && !self.waiting.contains(job_id)
            {
                self.queue.add(job_id.clone(), Lane::Normal);
            }
        }
    }

    /// One round: changes, sweep and resync when due, then place the ready
    /// jobs and hand over what another shard can take.
    pub async fn round(&mut self) -> Result<RoundReport> {
        let delta = self.watcher.take();
        self.absorb(delta);
        let now = self.ctx.clock.now();
        let due = |last: Option<Instant>, every: Duration| {
            last.is_none_or(|t| now.saturating_duration_since(t) >= every)
        };
        if due(self.last_sweep, self.ctx.config.sweep_every) {
            self.last_sweep = Some(now);
            let out = self.sweep().await?;
            m::sweep(&out);
        }
        if due(self.last_resync, self.ctx.config.resync_every) {
            self.resync();
        }
        m::queue_depth(self.term.shard, self.queue.len());
        let mut report = self.place().await?;
        report.handed_off = self.hand_off().await?;
        self.record_reasons().await?;
        Ok(report)
    }

    async fn place(&mut self) -> Result<RoundReport> {
        if self.ctx.config.requires_region_lease {
            let now_ms = self.ctx.clock.now_unix_ms();
            let link = self.ctx.state.read().link;
            if !link.is_some_and(|l| l.may_place(now_ms)) {
                // The jobs stay queued: the link's next state (a renewal,
                // the stream caught up) wakes the loop.
                m::placement_gated(self.term.shard);
                return Ok(RoundReport {
                    gated: true,
                    ..RoundReport::default()
                });
            }
        }
        let mut guards = Vec::new();
        while guards.len() < self.ctx.config.max_jobs_per_round {
            match self.queue.try_get() {
                Some(g) => guards.push(g),
                None => break,
            }
        }
        if guards.is_empty() {
            return Ok(RoundReport::default());
        }
        let jobs: BTreeSet<String> = guards.iter().map(|g| g.key().clone()).collect();
        for job in &jobs {
            self.waiting.unpark(job);
        }
        let now_ms = self.ctx.clock.now_unix_ms();
        let input = {
            let s = self.ctx.state.read();
            build_input(&s, self.term.shard, &jobs, now_ms, &mut self.view)
        };
        let solution = self.solve(&input, jobs.len());
        let mut report = RoundReport {
            jobs: jobs.len(),
            tasks: input.pending.len(),
            unschedulable: solution.unschedulable.len(),
            ..RoundReport::default()
        };
        let stale_jobs = self.commit(&input, &solution, &mut report).await?;
        let mut unschedulable: BTreeSet<String> = solution
            .unschedulable
            .iter()
            .map(|(t, _)| t.job_id.clone())
            .collect();
        unschedulable.extend(input.no_room.iter().cloned());
        report.unschedulable += input.no_room.len();
        let mut why = RoundWhy::of(&input, &solution);
        self.settle(
            guards,
            &stale_jobs,
            &unschedulable,
            &input,
            now_ms,
            &mut why,
        );
        self.view.restore(input);
        Ok(report)
    }

    /// Solves the round's input (nothing to solve when no task waits); a
    /// solution that broke a safety rule is counted and logged.
    fn solve(&self, input: &RoundInput, jobs: usize) -> crate::placement::Solution {
        if input.pending.is_empty() {
            crate::placement::Solution::default()
        } else {
            let started = std::time::Instant::now();
            let solution =
                self.ctx
                    .solver
                    .solve(&input.snapshot, &input.pending, &self.ctx.config.solver);
            m::solve_seconds(started.elapsed());
            if let Some(rule) = solution.refusal() {
                m::solve_refused(self.term.shard);
                tracing::error!(
                    shard = self.term.shard,
                    rule,
                    jobs,
                    "a placement solve broke a safety rule and was thrown away"
                );
            }
            solution
        }
    }

    /// Commits the solution batch by batch into `report`; the jobs to decide
    /// again because a batch failed or a binding went stale.
    async fn commit(
        &mut self,
        input: &RoundInput,
        solution: &crate::placement::Solution,
        report: &mut RoundReport,
    ) -> Result<BTreeSet<String>> {
        let mut stale_jobs: BTreeSet<String> = BTreeSet::new();
        for batch in batches(input, solution, self.ctx.config.batch_size) {
            let intent = Intent::Bind(Bind {
                shard: self.term.shard,
                bindings: batch.bindings.clone(),
                stops: batch.stops,
                now_unix_ms: self.ctx.clock.now_unix_ms(),
            });
            let out = self
                .ctx
                .pipeline
                .submit(Some(self.authority(Some(input.generation))), intent)
                .await;
            let out = match out {
                Ok(Outcome::Bound(out)) => out,
                Ok(other) => {
                    return Err(RegionalError::Internal(format!(
                        "a binding intent answered {other:?}"
                    )));
                }
                Err(err) if err.is_fenced() => return Err(err),
                Err(err) => {
                    // The whole batch failed: its jobs go back to the queue.
                    tracing::warn!(shard = self.term.shard, error = %err, "binding batch failed");
                    stale_jobs.extend(batch.bindings.iter().map(|b| b.task.job_id.clone()));
                    continue;
                }
            };
            m::bound(self.term.shard, out.bound.len(), out.stale.len());
            self.trace_place(&out.bound);
            stale_jobs.extend(out.stale.iter().map(|(t, _)| t.job_id.clone()));
            report.outcome.bound.extend(out.bound);
            report.outcome.stale.extend(out.stale);
            report.outcome.stopped += out.stopped;
        }
        Ok(stale_jobs)
    }

    /// Puts each job of the round back: at once when its view changed,
    /// waiting when it found no room, else at its next retry time.
    fn settle(
        &mut self,
        guards: Vec<WorkGuard<String>>,
        stale_jobs: &BTreeSet<String>,
        unschedulable: &BTreeSet<String>,
        input: &RoundInput,
        now_ms: u64,
        why: &mut RoundWhy,
    ) {
        for guard in guards {
            let job = guard.key().clone();
            guard.done();
            if stale_jobs.contains(&job) {
                // Decided on a view that changed: decide again right away.
                self.queue.add(job, Lane::High);
            } else if unschedulable.contains(&job) {
                self.wait_or_hand_over(&job, why);
            } else {
                self.reasons.settled(&self.ctx.state.read(), &job);
                self.retries.remove(&job);
                if let Some(at) = input.next_retry_unix_ms {
                    let delay = Duration::from_millis(at.saturating_sub(now_ms));
                    self.queue.add_after(job, Lane::Normal, delay);
                }
            }
        }
    }

    /// A job with tasks that found no room: another shard with room for it
    /// takes it now; otherwise it waits for a change that helps it, or its
    /// backoff.
    fn wait_or_hand_over(&mut self, job_id: &str, why: &mut RoundWhy) {
        let state = self.ctx.state.clone();
        let s = state.read();
        let Some(job) = s.jobs.get(job_id) else {
            return;
        };
        if job.pending == 0 || job.record.state != JobPhase::Active {
            return;
        }
        if let Some(to) =
            crate::state::fit::better_shard(&s, &job.record, job.pending, self.term.shard)
        {
            self.handoffs.push((job_id.to_string(), to));
            self.reasons.forget(job_id);
            return;
        }
        self.waiting.park(&job.record, job.pending);
        self.reasons.parked(why, &s, job_id);
        let retry = self.retries.entry(job_id.to_string()).or_insert(0);
        let delay = self.backoff.delay(*retry);
        *retry = retry.saturating_add(1);
        self.queue.add_after(job_id.to_string(), Lane::Low, delay);
    }

    /// Hands the collected jobs to the shards that have room for them.
    async fn hand_off(&mut self) -> Result<usize> {
        if self.handoffs.is_empty() {
            return Ok(0);
        }
        let moves = std::mem::take(&mut self.handoffs);
        for (job, _) in &moves {
            self.waiting.unpark(job);
            self.retries.remove(job);
        }
        let generation = self.ctx.state.read().layout.map_or(0, |l| l.generation);
        let out = self
            .ctx
            .pipeline
            .submit(
                Some(self.authority(Some(generation))),
                Intent::Handoff(Handoff {
                    from: self.term.shard,
                    moves,
                }),
            )
            .await?;
        Ok(match out {
            Outcome::Moved(moved) => {
                m::handed_off(self.term.shard, moved.len());
                moved.len()
            }
            _ => 0,
        })
    }

    /// Records the waiting reasons that changed this round (fenced like
    /// a hand-off: only the jobs' owner explains them).
    async fn record_reasons(&mut self) -> Result<()> {
        let reasons = self.reasons.take();
        if reasons.is_empty() {
            return Ok(());
        }
        let generation = self.ctx.state.read().layout.map_or(0, |l| l.generation);
        self.ctx
            .pipeline
            .submit(
                Some(self.authority(Some(generation))),
                Intent::Explain(Explain {
                    from: self.term.shard,
                    reasons,
                }),
            )
            .await?;
        Ok(())
    }

    /// Liveness first (an epoch bump commits alone), then lost tasks and
    /// stops, decided on memory that already holds the bumps.
    async fn sweep(&mut self) -> Result<SweepOutcome> {
        let shard = self.term.shard;
        let now = self.ctx.clock.now();
        let mut out = SweepOutcome::default();
        let changes = {
            let s = self.ctx.state.read();
            self.ctx.beats.with_all(|beats| {
                liveness_changes(
                    &s,
                    beats,
                    shard,
                    self.heard_from,
                    now,
                    &self.ctx.config.liveness,
                )
            })
        };
        // Taken now, owed again if the sweep fails.
        let mut scope = std::mem::take(&mut self.sweep_scope);
        match self.sweep_tasks(changes, &mut scope, &mut out).await {
            Ok(()) => Ok(out),
            Err(err) => {
                self.sweep_scope.merge(scope);
                Err(err)
            }
        }
    }

    /// Commits the liveness changes, then the lost tasks and stops among
    /// what `scope` covers (and on the nodes whose liveness just changed).
    async fn sweep_tasks(
        &mut self,
        changes: Vec<crate::pipeline::node::LivenessChange>,
        scope: &mut SweepScope,
        out: &mut SweepOutcome,
    ) -> Result<()> {
        let shard = self.term.shard;
        if !changes.is_empty() {
            let applied = self
                .ctx
                .pipeline
                .submit(
                    Some(self.authority(None)),
                    Intent::Liveness(Liveness { changes }),
                )
                .await?;
            if let Outcome::Liveness(applied) = applied {
                for c in applied {
                    if !scope.all {
                        scope.nodes.insert(c.node.clone());
                    }
                    match c.to {
                        crate::model::NodeLiveness::Suspect => out.suspected.push(c.node),
                        crate::model::NodeLiveness::Down => out.declared_dead.push(c.node),
                        crate::model::NodeLiveness::Ready => out.recovered.push(c.node),
                    }
                }
            }
        }
        if scope.is_empty() {
            return Ok(());
        }
        let tasks = {
            let s = self.ctx.state.read();
            let beats = &self.ctx.beats;
            let every_ms = |node: &str| beats.last(node).map_or(0, |b| b.every_ms);
            task_changes(
                &s,
                &every_ms,
                shard,
                scope,
                &self.ctx.config.liveness,
                self.ctx.clock.now_unix_ms(),
            )
        };
        if !tasks.is_empty() {
            let done = self
                .ctx
                .pipeline
                .submit(Some(self.authority(None)), Intent::Sweep(tasks))
                .await?;
            if let Outcome::Swept(done) = done {
                out.lost_tasks = done.lost;
                out.stops = done.stops;
            }
        }
        Ok(())
    }

    /// The `place` step of the traces of the jobs whose bindings just
    /// committed: one span per job and batch (not per task, to stay cheap at
    /// high binding rates).
    fn trace_place(&self, bound: &[crate::placement::TaskRef]) {
        let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
        for task in bound {
            *per_job.entry(task.job_id.as_str()).or_default() += 1;
        }
        if per_job.is_empty() {
            return;
        }
        let s = self.ctx.state.read();
        let shard = self.term.shard;
        for (job_id, tasks) in per_job {
            let trace_id = s
                .jobs
                .get(job_id)
                .map_or(String::new(), |j| j.record.trace_id.clone());
            let span =
                tracing::info_span!("place", trace_id = %trace_id, job_id = %job_id, shard, tasks);
            meridian_control::trace::link(&span, meridian_control::trace::stored(&trace_id));
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
}
