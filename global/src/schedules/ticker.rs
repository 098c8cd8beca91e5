//! The leader's loop that acts on due ticks of schedules.
//!
//! Owns when ticks happen: while this replica leads, a pass reads every
//! schedule, plans each one at the clock's time (`cadence::plan`), applies
//! the overlap policy to its previous run, submits the tick's job through
//! [`Jobs::submit`] (the API's submit path, fenced) under the tick's
//! deterministic request id, and then records the tick on the schedule in
//! a second fenced transaction. It sleeps until the earliest next tick, or
//! until a schedule is created, resumed or deleted, or leadership changes.
//!
//! Why two commits are safe: the job of a tick is named by its request id
//! alone, so a leader that dies between the job's commit and the record's
//! leaves the tick unrecorded, and the next leader's submit of the same
//! tick finds the job by its request id (`created = false`) and records it.
//! A leader that dies before the job's commit leaves nothing, and the next
//! one creates the job. Either way one job per tick.
//!
//! Must never: create a job by any other path than the request-id-checked
//! submit, act while not leading, or record a tick before its job is
//! committed (a record first and a death after it would lose the tick).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use meridian_control::SharedClock;
use meridian_control::lease::{Fence, Role};
use meridian_control::trace::TraceId;
use meridian_proto::v1::{MissedTickPolicy, OverlapPolicy, Schedule};
use tokio::sync::watch;

use super::cadence::{self, Overlap};
use super::{Schedules, TickRecord, cadence_of, rules};
use crate::error::{GlobalError, Result};
use crate::jobs::Jobs;
use crate::leader::Leadership;
use crate::lifecycle::state_of;
use crate::submitter;

/// Longest sleep between passes when no tick is nearer: a clock that was
/// moved by hand, or a schedule written by another replica, is noticed
/// within it.
pub const IDLE: Duration = Duration::from_secs(60);

/// Wait after a pass that failed as a whole.
const RETRY: Duration = Duration::from_secs(1);

/// A point in the handling of a tick, where a fault-injection test may
/// stop this replica ([`StageHook`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// The tick is due and about to be acted on; nothing is written yet.
    Due {
        /// The schedule.
        schedule_id: String,
        /// The tick (unix ms).
        tick: u64,
    },
    /// The tick's job is committed; the schedule's record of the tick is
    /// not.
    Submitted {
        /// The schedule.
        schedule_id: String,
        /// The tick (unix ms).
        tick: u64,
        /// The job.
        job_id: String,
    },
}

/// Awaited at each [`Stage`]: a test's way to stop a replica at an exact
/// point of a tick (its future never resolves, then the test kills the
/// replica). Production replicas have none.
#[derive(Clone)]
pub struct StageHook(pub Arc<dyn Fn(Stage) -> BoxFuture<'static, ()> + Send + Sync>);

impl std::fmt::Debug for StageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StageHook")
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Ticks acted on (run, skipped or missed), over all schedules.
    pub ticks: usize,
    /// Jobs created by this pass (not those found created by a previous
    /// leader).
    pub created: usize,
    /// The earliest next tick of an active schedule (unix ms).
    pub next_tick: Option<u64>,
}

/// The leader's ticker.
pub struct Ticker {
    clock: SharedClock,
    leadership: Arc<Leadership>,
    jobs: Jobs,
    schedules: Schedules,
    hook: Option<StageHook>,
}

impl Ticker {
    /// A ticker submitting through `jobs`; `hook` is for fault-injection
    /// tests only.
    pub fn new(
        clock: SharedClock,
        leadership: Arc<Leadership>,
        jobs: Jobs,
        schedules: Schedules,
        hook: Option<StageHook>,
    ) -> Self {
        Ticker {
            clock,
            leadership,
            jobs,
            schedules,
            hook,
        }
    }

    /// Runs passes while leading, until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut status = self.leadership.subscribe();
        let wake = self.schedules.wake();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // The wait is measured from before the pass, so a clock that
            // moves while the pass runs cannot push the next tick back.
            let (started, wall) = (self.clock.now(), self.clock.now_unix_ms());
            let mut wait = IDLE;
            if status.borrow().role == Role::Leader {
                match self.pass().await {
                    Ok(report) => {
                        if let Some(next) = report.next_tick {
                            let ms = next.saturating_sub(wall);
                            wait = wait.min(Duration::from_millis(ms));
                        }
                    }
                    Err(err @ (GlobalError::NotLeader { .. } | GlobalError::Fenced(_))) => {
                        tracing::debug!(error = %err, "schedule pass stopped: not leading");
                    }
                    Err(err) => {
                        wait = RETRY;
                        metrics::counter!("meridian_global_schedule_pass_failures_total")
                            .increment(1);
                        tracing::warn!(error = %err, "schedule pass failed");
                    }
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = self.clock.sleep_until(started.saturating_add(wait)) => {}
                _ = status.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One pass over every schedule at the clock's time. Fails with
    /// `NotLeader` on a replica that does not lead, writing nothing. A
    /// schedule that fails on its own (a record that does not decode) is
    /// logged and the others go on.
    pub async fn pass(&self) -> Result<TickReport> {
        let fence = self.leadership.fence().await?;
        let now = self.clock.now_unix_ms();
        let mut report = TickReport::default();
        for schedule in self.schedules.all().await? {
            if schedule.paused {
                continue;
            }
            let next = match self.one(&fence, &schedule, now, &mut report).await {
                Ok(next) => next,
                Err(err @ (GlobalError::NotLeader { .. } | GlobalError::Fenced(_))) => {
                    return Err(err);
                }
                Err(err) => {
                    tracing::warn!(
                        schedule = %schedule.schedule_id,
                        error = %err,
                        "a schedule's tick failed; it is tried again at the next pass"
                    );
                    // Tried again soon rather than at its next tick.
                    Some(now.saturating_add(RETRY.as_millis() as u64))
                }
            };
            report.next_tick = match (report.next_tick, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(report)
    }

    /// Handles one schedule's due tick, if any; returns its next tick.
    async fn one(
        &self,
        fence: &Fence,
        schedule: &Schedule,
        now: u64,
        report: &mut TickReport,
    ) -> Result<Option<u64>> {
        let cadence = cadence_of(schedule)?;
        let spec = schedule.spec.clone().unwrap_or_default();
        let policy = MissedTickPolicy::try_from(spec.missed_tick_policy)
            .unwrap_or(MissedTickPolicy::RunOnce);
        let plan = cadence::plan(
            &cadence,
            schedule.handled_through_unix_ms,
            now,
            policy,
            rules::starting_deadline_ms(&spec),
        );
        let Some(tick) = plan.tick else {
            return Ok(plan.next_tick);
        };
        let mut record = TickRecord {
            created_at: schedule.created_at_unix_ms,
            handled_through: plan.handled_through,
            tick,
            job_id: None,
            outcome: String::new(),
            skipped: plan.missed,
        };
        match plan.run {
            None => {
                count("missed");
                record.outcome = format!(
                    "missed: tick {} was {} s late, past the starting deadline \
                     (missed tick policy SKIP)",
                    cadence::rfc3339(tick),
                    now.saturating_sub(tick) / 1000
                );
            }
            Some(tick) => {
                self.at(Stage::Due {
                    schedule_id: schedule.schedule_id.clone(),
                    tick,
                })
                .await;
                match self.overlap(&spec.overlap_policy, schedule).await? {
                    Overlap::Skip(reason) => {
                        count("skipped");
                        record.outcome = reason;
                        record.skipped += 1;
                    }
                    decision => {
                        if let Overlap::Replace(previous) = &decision {
                            let why = format!(
                                "replaced by the run of tick {} of schedule {}",
                                cadence::rfc3339(tick),
                                schedule.schedule_id
                            );
                            self.jobs.cancel(fence, previous, &why).await?;
                        }
                        let (job_id, created) = match self.submit(schedule, tick).await? {
                            Ok(accepted) => accepted,
                            Err(refused) => {
                                count("refused");
                                // The template no longer submits (a region
                                // it names was removed): the tick is handled,
                                // and the schedule says why it made no job.
                                record.outcome = format!("no job: {refused}");
                                record.skipped += 1;
                                return self.finish(fence, schedule, &record, &plan, report).await;
                            }
                        };
                        report.created += usize::from(created);
                        count(if created { "created" } else { "found" });
                        self.at(Stage::Submitted {
                            schedule_id: schedule.schedule_id.clone(),
                            tick,
                            job_id: job_id.clone(),
                        })
                        .await;
                        record.outcome = format!("created job {job_id}");
                        record.job_id = Some(job_id);
                    }
                }
            }
        }
        self.finish(fence, schedule, &record, &plan, report).await
    }

    async fn finish(
        &self,
        fence: &Fence,
        schedule: &Schedule,
        record: &TickRecord,
        plan: &cadence::Plan,
        report: &mut TickReport,
    ) -> Result<Option<u64>> {
        self.schedules
            .record(fence, &schedule.schedule_id, record)
            .await?;
        report.ticks += 1;
        Ok(plan.next_tick)
    }

    /// The overlap policy applied to the schedule's last run.
    async fn overlap(&self, policy: &i32, schedule: &Schedule) -> Result<Overlap> {
        let policy = OverlapPolicy::try_from(*policy).unwrap_or(OverlapPolicy::Allow);
        if schedule.last_job_id.is_empty() || policy == OverlapPolicy::Allow {
            return Ok(Overlap::Run);
        }
        let previous = match self.jobs.get(&schedule.last_job_id).await {
            Ok(job) => Some(state_of(&job)),
            // A previous run no longer stored cannot overlap.
            Err(GlobalError::NotFound(_)) => None,
            Err(err) => return Err(err),
        };
        Ok(cadence::overlap(
            policy,
            previous.map(|state| (schedule.last_job_id.as_str(), state)),
        ))
    }

    /// Submits the tick's job through the API's submit path; returns its id
    /// and whether this call created it, or the submit's refusal of the
    /// item (the outer error is the store's or the leadership's).
    async fn submit(&self, schedule: &Schedule, tick: u64) -> Result<Result<(String, bool)>> {
        let request = rules::tick_submit(schedule, tick)?;
        let trace = TraceId::generate();
        let results =
            submitter::submit_group(&self.jobs, &self.leadership, vec![(request, trace)]).await?;
        let item = results
            .into_iter()
            .next()
            .ok_or_else(|| GlobalError::Corrupt("a submit of one item answered none".into()))?;
        Ok(item.map(|accepted| (accepted.job_id, accepted.created)))
    }

    async fn at(&self, stage: Stage) {
        if let Some(hook) = &self.hook {
            (hook.0)(stage).await;
        }
    }
}

/// Counts a handled tick by what it did: `created` (this leader made the
/// job), `found` (the job of the tick existed already, made by a leader
/// that died before recording the tick), `skipped` (overlap policy
/// FORBID), `missed` (past the starting deadline under SKIP), `refused`
/// (the template no longer submits).
fn count(outcome: &'static str) {
    metrics::counter!("meridian_global_schedule_ticks_total", "outcome" => outcome).increment(1);
}
