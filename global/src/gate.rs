//! The gate in front of the router: jobs that are PENDING at the global tier
//! but must not be routed yet (held, or waiting for their dependencies), and
//! the changes a user may make to a job while it is still queued there
//! (hold, release, priority).
//!
//! Owns where a pending job sits besides the router's pending index: held
//! (`Job.held`, in no index, released only by ReleaseJob) or `blocked`
//! (waiting for dependencies); the `dependency -> dependent` edges and the
//! settled queue through which the end of a job reaches the jobs waiting on
//! it ([`unblock`], at the start of every controller pass). A job is in at
//! most one of the pending and blocked indexes, and in the pending index
//! only when it is neither held nor waiting for a dependency. Every write
//! checks the leader fence in its own transaction and records an UPDATED
//! (or STATE_CHANGED) event, so watches see it and a new leader finds the
//! same state. It must never change a job that has left PENDING: a
//! region's queue never hears of a hold or a priority change after the
//! assignment, so those are refused with FAILED_PRECONDITION once the job
//! was routed.

use std::sync::Arc;

use meridian_control::SharedClock;
use meridian_control::lease::Fence;
use meridian_proto::v1::{Job, JobEventKind, JobSpec, JobState};
use meridian_store::{Database, RangeOption, Transaction};
use tokio::sync::Notify;

use crate::dependencies;
pub use crate::dependencies::Verdict;
use crate::error::{GlobalError, Result};
use crate::events::EventWriter;
use crate::handoff::read_moving;
use crate::jobs::{change_state, job_event, read_job, write_job};
use crate::keys::Keys;
use crate::lifecycle::{self, state_of};
use crate::validate;

/// Ended jobs whose dependents are judged per controller pass at most.
pub const SETTLED_BATCH: usize = 256;

/// The waiting reason of a held job.
pub const HELD: &str = "held";

/// The priority the router orders `job` by: the one set by SetJobPriority,
/// else the spec's.
pub fn priority_of(job: &Job) -> i32 {
    job.priority
        .unwrap_or_else(|| job.spec.as_ref().map_or(0, |s| s.priority))
}

/// The spec a region is given with the job (ASSIGN events): the submitted
/// spec, with the priority the router ordered the job by, so the region's
/// queue orders it the same way.
pub fn spec_for_region(job: &Job) -> Option<JobSpec> {
    let mut spec = job.spec.clone()?;
    spec.priority = priority_of(job);
    Some(spec)
}

/// The judgement of a pending job's dependencies (already resolved into
/// `job.dependencies`), read in `tx`; a job without any is [`Verdict::Met`].
pub async fn verdict_for(tx: &Transaction, keys: &Keys, job: &Job) -> Result<Verdict> {
    if job.dependencies.is_empty() {
        return Ok(Verdict::Met);
    }
    dependencies::judge_in(tx, keys, &job.dependencies).await
}

/// Places a pending, unheld job by its verdict: met, it enters the pending
/// index; waiting, the blocked index with its reason; never met, it ends
/// FAILED naming the dependency (with its STATE_CHANGED event). The caller
/// writes the job record afterwards.
pub fn place(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job: &mut Job,
    verdict: Verdict,
    now: u64,
) -> Result<()> {
    match verdict {
        Verdict::Met => tx.set(&keys.pending(&job.job_id), b"")?,
        Verdict::Wait(reason) => {
            job.waiting_reason = reason;
            tx.set(&keys.blocked(&job.job_id), b"")?;
        }
        Verdict::Never(reason) => fail(tx, keys, events, job, &reason, now)?,
    }
    Ok(())
}

/// Ends a pending job FAILED because of a dependency.
fn fail(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job: &mut Job,
    reason: &str,
    now: u64,
) -> Result<()> {
    tx.clear(&keys.blocked(&job.job_id))?;
    tx.clear(&keys.pending(&job.job_id))?;
    job.failure_reason = reason.to_string();
    job.waiting_reason.clear();
    change_state(tx, keys, events, job, JobState::Failed, reason, now)?;
    Ok(())
}

/// Records, in `tx`, that `job` waits on each of its unfinished
/// dependencies: the edge `dependency -> job`, and `has_dependents` on the
/// dependency, so the commit that ends it queues it as settled.
pub async fn link(tx: &Transaction, keys: &Keys, job: &Job) -> Result<()> {
    for dep in &job.dependencies {
        let id = dependencies::target_id(dep);
        let Some(mut named) = read_job(tx, keys, id).await? else {
            continue;
        };
        // An ended job never changes again: the judgement that read its
        // final state is the last one it needs.
        if lifecycle::is_terminal(state_of(&named)) {
            continue;
        }
        tx.set(&keys.dependent(id, &job.job_id), b"")?;
        if !named.has_dependents {
            named.has_dependents = true;
            write_job(tx, keys, &named).await?;
        }
    }
    Ok(())
}

/// What one [`unblock`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unblocked {
    /// Jobs moved to the pending index, failed, or given a new reason.
    pub changed: usize,
    /// The pass stopped at [`SETTLED_BATCH`] with ended jobs left to
    /// handle.
    pub more: bool,
}

/// Judges the dependents of the jobs that ended since the last pass (the
/// settled queue), in one fenced transaction: a dependent whose
/// dependencies are all met moves to the pending index (routed in the same
/// controller pass), one with a dependency that can never be met ends
/// FAILED naming it, and one that still waits gets its reason updated. A
/// dependent failed here is queued as settled in turn and handled in the
/// same transaction, so a chain fails in one commit. The work is
/// proportional to the jobs that ended, not to the jobs waiting.
pub async fn unblock(db: &Database, keys: &Keys, fence: &Fence, now: u64) -> Result<Unblocked> {
    db.run(|tx, _| {
        let (keys, fence) = (keys.clone(), fence.clone());
        async move {
            let mut out = Unblocked::default();
            let mut fenced = false;
            let mut handled = 0;
            let mut events = EventWriter::new();
            loop {
                let rows = tx
                    .get_range(RangeOption::from(keys.settleds().range()).limit(SETTLED_BATCH))
                    .await?;
                if rows.is_empty() {
                    break;
                }
                if handled >= SETTLED_BATCH {
                    out.more = true;
                    break;
                }
                // Nothing is written before there is something to judge.
                if !fenced {
                    fence.check(&tx).await?;
                    fenced = true;
                }
                for kv in rows.into_iter().take(SETTLED_BATCH - handled) {
                    let (ended,): (String,) = keys
                        .settleds()
                        .unpack(&kv.key)
                        .map_err(|e| GlobalError::Corrupt(format!("settled key: {e}")))?;
                    out.changed += settle(&tx, &keys, &mut events, &ended, now).await?;
                    handled += 1;
                }
            }
            Ok::<_, GlobalError>(out)
        }
    })
    .await
}

/// Judges the dependents of one ended job still waiting in the blocked
/// index, then forgets its edges and its settled entry. Returns how many
/// dependents changed.
async fn settle(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    ended: &str,
    now: u64,
) -> Result<usize> {
    let edges = keys.dependents(ended);
    let (begin, end) = edges.range();
    let mut changed = 0;
    for kv in tx
        .get_range(RangeOption::new(begin.clone(), end.clone()))
        .await?
    {
        let (dependent,): (String,) = edges
            .unpack(&kv.key)
            .map_err(|e| GlobalError::Corrupt(format!("dependent key: {e}")))?;
        // A held dependent is judged when released; one routed or ended
        // needs nothing.
        if tx.get(&keys.blocked(&dependent)).await?.is_some()
            && judge_one(tx, keys, events, &dependent, now).await?
        {
            changed += 1;
        }
    }
    tx.clear_range(&begin, &end)?;
    tx.clear(&keys.settled(ended))?;
    Ok(changed)
}

/// Judges one blocked job inside `tx`; returns whether anything changed.
async fn judge_one(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job_id: &str,
    now: u64,
) -> Result<bool> {
    let Some(mut job) = read_job(tx, keys, job_id).await? else {
        tx.clear(&keys.blocked(job_id))?;
        return Ok(true);
    };
    // Only a pending, unheld job belongs here; anything else is an entry
    // left behind and goes.
    if state_of(&job) != JobState::Pending || job.held {
        tx.clear(&keys.blocked(job_id))?;
        return Ok(true);
    }
    match dependencies::judge_in(tx, keys, &job.dependencies).await? {
        Verdict::Met => {
            tx.clear(&keys.blocked(job_id))?;
            tx.set(&keys.pending(job_id), b"")?;
            job.waiting_reason.clear();
            updated(tx, keys, events, &mut job, now).await?;
        }
        Verdict::Wait(reason) => {
            if job.waiting_reason == reason {
                return Ok(false);
            }
            job.waiting_reason = reason;
            updated(tx, keys, events, &mut job, now).await?;
        }
        Verdict::Never(reason) => {
            fail(tx, keys, events, &mut job, &reason, now)?;
            write_job(tx, keys, &job).await?;
        }
    }
    Ok(true)
}

/// Writes `job` with an UPDATED event.
async fn updated(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job: &mut Job,
    now: u64,
) -> Result<()> {
    job.updated_at_unix_ms = now;
    events.job(tx, keys, &job_event(JobEventKind::Updated, job, None, now))?;
    write_job(tx, keys, job).await
}

/// One dependency of a job as judged now, for reading (the console).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyState {
    /// The dependency as stored (its target resolved to a job id).
    pub dependency: meridian_proto::v1::JobDependency,
    /// The named job's state: from its record, or from its tombstone once
    /// removed after the retention period; `None` when neither is left.
    pub state: Option<JobState>,
    /// True when the state comes from the tombstone.
    pub removed: bool,
    /// The judgement of this dependency alone.
    pub verdict: Verdict,
}

/// What a job waits for and what waits for it, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependencyReport {
    /// The job's dependencies, in the spec's order.
    pub dependencies: Vec<DependencyState>,
    /// Jobs waiting on this one (edges exist only until its end has been
    /// judged for them), in id order.
    pub dependents: Vec<String>,
    /// More dependents than `limit`.
    pub dependents_truncated: bool,
}

/// Hold, release and priority changes of queued jobs.
#[derive(Clone)]
pub struct Gate {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    kick: Arc<Notify>,
}

impl Gate {
    /// The gate over `db`; `kick` wakes the controller after a change it
    /// should act on.
    pub fn new(db: Database, keys: Keys, clock: SharedClock, kick: Arc<Notify>) -> Self {
        Gate {
            db,
            keys,
            clock,
            kick,
        }
    }

    /// Reads `job`'s dependencies, each judged alone against the named
    /// job's record or tombstone (the same judgement the controller makes),
    /// and at most `limit` of the jobs waiting on it. Writes nothing.
    pub async fn dependency_report(&self, job: &Job, limit: usize) -> Result<DependencyReport> {
        let keys = self.keys.clone();
        self.db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let mut report = DependencyReport::default();
                    for dep in &job.dependencies {
                        let id = dependencies::target_id(dep);
                        let mut named = std::collections::BTreeMap::new();
                        let mut removed = false;
                        if let Some(found) = read_job(&tx, &keys, id).await? {
                            named.insert(id.to_string(), dependencies::named_of(&found));
                        } else if let Some(gone) =
                            crate::history::Removed::read(&tx, &keys, id).await?
                        {
                            removed = true;
                            named.insert(
                                id.to_string(),
                                dependencies::Named {
                                    state: gone.state,
                                    failure_reason: gone.failure_reason,
                                },
                            );
                        }
                        report.dependencies.push(DependencyState {
                            dependency: dep.clone(),
                            state: named.get(id).map(|n| n.state),
                            removed,
                            verdict: dependencies::judge(std::slice::from_ref(dep), &named),
                        });
                    }
                    let edges = keys.dependents(&job.job_id);
                    let rows = tx
                        .get_range(RangeOption::from(edges.range()).limit(limit + 1))
                        .await?;
                    report.dependents_truncated = rows.len() > limit;
                    for kv in rows.into_iter().take(limit) {
                        let (dependent,): (String,) = edges
                            .unpack(&kv.key)
                            .map_err(|e| GlobalError::Corrupt(format!("dependent key: {e}")))?;
                        report.dependents.push(dependent);
                    }
                    Ok::<_, GlobalError>(report)
                }
            })
            .await
    }

    /// Holds a job still pending at the global tier: it leaves the pending
    /// and blocked indexes and waits with the reason "held". Idempotent.
    pub async fn hold(&self, fence: &Fence, job_id: &str, reason: &str) -> Result<Job> {
        validate::job_id("job_id", job_id)?;
        validate::reason("reason", reason)?;
        let now = self.clock.now_unix_ms();
        let keys = self.keys.clone();
        self.db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    let mut job = queued(&tx, &keys, &fence, job_id, "a hold").await?;
                    if !job.held {
                        job.held = true;
                        job.hold_reason = reason.to_string();
                        job.waiting_reason = HELD.to_string();
                        tx.clear(&keys.pending(job_id))?;
                        tx.clear(&keys.blocked(job_id))?;
                        updated(&tx, &keys, &mut EventWriter::new(), &mut job, now).await?;
                    }
                    Ok::<_, GlobalError>(lifecycle::summary(&job))
                }
            })
            .await
    }

    /// Releases a held job: it goes back to the pending index, or to the
    /// blocked one while a dependency is unmet (or fails if one never can
    /// be). A no-op on a job not held.
    pub async fn release(&self, fence: &Fence, job_id: &str) -> Result<Job> {
        validate::job_id("job_id", job_id)?;
        let now = self.clock.now_unix_ms();
        let keys = self.keys.clone();
        let job = self
            .db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let Some(mut job) = read_job(&tx, &keys, job_id).await? else {
                        return Err(GlobalError::NotFound(format!("job {job_id}")));
                    };
                    // Only a pending job can be held, and a held one stays
                    // pending until released or cancelled.
                    if !job.held || state_of(&job) != JobState::Pending {
                        return Ok(lifecycle::summary(&job));
                    }
                    job.held = false;
                    job.hold_reason.clear();
                    job.waiting_reason.clear();
                    let mut events = EventWriter::new();
                    let verdict = verdict_for(&tx, &keys, &job).await?;
                    if matches!(verdict, Verdict::Wait(_)) {
                        link(&tx, &keys, &job).await?;
                    }
                    place(&tx, &keys, &mut events, &mut job, verdict, now)?;
                    if state_of(&job) == JobState::Pending {
                        updated(&tx, &keys, &mut events, &mut job, now).await?;
                    } else {
                        write_job(&tx, &keys, &job).await?;
                    }
                    Ok::<_, GlobalError>(lifecycle::summary(&job))
                }
            })
            .await?;
        self.kick.notify_one();
        Ok(job)
    }

    /// Sets the priority the router orders a pending job by.
    pub async fn set_priority(&self, fence: &Fence, job_id: &str, priority: i32) -> Result<Job> {
        validate::job_id("job_id", job_id)?;
        let now = self.clock.now_unix_ms();
        let keys = self.keys.clone();
        let job = self
            .db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    let mut job = queued(&tx, &keys, &fence, job_id, "a priority change").await?;
                    if priority_of(&job) != priority {
                        job.priority = Some(priority);
                        updated(&tx, &keys, &mut EventWriter::new(), &mut job, now).await?;
                    }
                    Ok::<_, GlobalError>(lifecycle::summary(&job))
                }
            })
            .await?;
        self.kick.notify_one();
        Ok(job)
    }
}

/// Checks the fence and reads `job_id`, refusing it unless it is still
/// pending at the global tier (not being moved between regions, no cancel
/// requested).
async fn queued(
    tx: &Transaction,
    keys: &Keys,
    fence: &Fence,
    job_id: &str,
    what: &str,
) -> Result<Job> {
    fence.check(tx).await?;
    let Some(job) = read_job(tx, keys, job_id).await? else {
        return Err(GlobalError::NotFound(format!("job {job_id}")));
    };
    let state = state_of(&job);
    let moving = read_moving(tx, keys, job_id).await?.is_some();
    if state != JobState::Pending || moving || job.cancel_requested {
        return Err(not_queued(&job, state, what));
    }
    Ok(job)
}

/// The refusal of a change to a job that is no longer queued at the global
/// tier.
fn not_queued(job: &Job, state: JobState, what: &str) -> GlobalError {
    let state = state.as_str_name().trim_start_matches("JOB_STATE_");
    let place = if job.region.is_empty() {
        String::new()
    } else {
        format!(" in region {}", job.region)
    };
    GlobalError::FailedPrecondition(format!(
        "job {} is {state}{place}: {what} applies only to a job still pending at the \
         global tier (not routed to a region, not being cancelled)",
        job.job_id
    ))
}
