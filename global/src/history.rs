//! Retention of finished jobs: the leader removes a job that finished
//! (SUCCEEDED, FAILED, CANCELLED) longer than
//! [`GlobalConfig::job_retention`](crate::GlobalConfig) ago, with its task
//! records, status version, request record, index entries and dependency
//! edges, and leaves a small tombstone ([`Removed`]) in its place.
//!
//! Owns the removal loop and its passes, the tombstones, and the start of
//! the index backfill on a new leader (`job_index::backfill`, which must
//! finish before `ListJobs` reads the indexes). A pass reads the finished
//! index (`("finished", at, job_id)`, written in the commit that ends a
//! job) from its oldest entry up to the cutoff, a batch of [`BATCH`] jobs
//! per fenced transaction, so it costs what it removes, not what is
//! stored. Tombstones are forgotten one retention period after they were
//! written, by the same pass and the same rule, so they are bounded by the
//! jobs that finish in one retention period, as the jobs kept are.
//!
//! Dependencies: a job whose end has not been judged for its dependents
//! yet (its `settled` entry is still queued) is not removed in that pass.
//! A dependent judged later (one held, or waiting on another dependency
//! too) reads a removed dependency's final state from its tombstone
//! (`dependencies::judge_in`), so it runs or fails as it would have; only
//! one still waiting a whole retention period after the tombstone was
//! written finds nothing and fails, naming the dependency as gone. A new
//! submit may not name a removed job (INVALID_ARGUMENT saying it was
//! removed). The job's events are not touched here: the event retention
//! trims them by age, and with the default periods (7 days each) they are
//! gone before the job is.
//!
//! Must never: remove a job that has not finished, remove one younger than
//! the retention, write without the leader fence in the same transaction,
//! or keep a tombstone longer than a retention period.

use std::sync::Arc;
use std::time::Duration;

use meridian_control::lease::Fence;
use meridian_control::{Instant, SharedClock};
use meridian_proto::v1::{Job, JobState};
use meridian_store::{Database, RangeOption, Transaction, tuple};
use tokio::sync::watch;

use crate::error::{GlobalError, Result};
use crate::job_index;
use crate::jobs::read_job;
use crate::keys::Keys;
use crate::leader::Leadership;
use crate::lifecycle::{self, state_of};

/// Jobs removed (or tombstones forgotten) per transaction at most.
pub const BATCH: usize = 64;

/// Longest failure reason a tombstone keeps, in bytes.
const MAX_REASON_BYTES: usize = 1024;

/// What is kept of a job removed after the retention period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Its tenant (a tombstone answers only for the tenant's own job).
    pub tenant: String,
    /// The state it ended in.
    pub state: JobState,
    /// When it finished.
    pub finished_at_unix_ms: u64,
    /// When it was removed.
    pub removed_at_unix_ms: u64,
    /// Its failure reason, cut to 1 KiB.
    pub failure_reason: String,
}

impl Removed {
    fn of(job: &Job, finished_at: u64, now: u64) -> Self {
        let mut reason = job.failure_reason.clone();
        if reason.len() > MAX_REASON_BYTES {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Removed {
            tenant: job
                .spec
                .as_ref()
                .map(|s| s.tenant.clone())
                .unwrap_or_default(),
            state: state_of(job),
            finished_at_unix_ms: finished_at,
            removed_at_unix_ms: now,
            failure_reason: reason,
        }
    }

    fn encode(&self) -> Vec<u8> {
        tuple::pack(&(
            self.tenant.as_str(),
            i64::from(self.state as i32),
            self.finished_at_unix_ms,
            self.removed_at_unix_ms,
            self.failure_reason.as_str(),
        ))
    }

    fn decode(raw: &[u8]) -> Result<Self> {
        let (tenant, state, finished_at_unix_ms, removed_at_unix_ms, failure_reason): (
            String,
            i64,
            u64,
            u64,
            String,
        ) = tuple::unpack(raw).map_err(|e| GlobalError::Corrupt(format!("tombstone: {e}")))?;
        let state = i32::try_from(state)
            .ok()
            .and_then(|s| JobState::try_from(s).ok())
            .unwrap_or(JobState::Unspecified);
        Ok(Removed {
            tenant,
            state,
            finished_at_unix_ms,
            removed_at_unix_ms,
            failure_reason,
        })
    }

    /// The tombstone of `job_id`, read in `tx`, if it was removed within
    /// the last retention period.
    pub async fn read(tx: &Transaction, keys: &Keys, job_id: &str) -> Result<Option<Removed>> {
        match tx.get(&keys.removed(job_id)).await? {
            Some(raw) => Ok(Some(Removed::decode(&raw)?)),
            None => Ok(None),
        }
    }

    /// The sentence of a lookup of this removed job.
    pub fn sentence(&self, job_id: &str) -> String {
        let state = self.state.as_str_name().trim_start_matches("JOB_STATE_");
        format!(
            "job {job_id} finished {state} at {} and was removed after the retention period \
             (at {})",
            utc(self.finished_at_unix_ms),
            utc(self.removed_at_unix_ms)
        )
    }
}

/// The NOT_FOUND of a job absent from the store, read in `tx`: saying it
/// finished and was removed when its tombstone is still kept.
pub async fn not_found(tx: &Transaction, keys: &Keys, job_id: &str) -> Result<GlobalError> {
    Ok(match Removed::read(tx, keys, job_id).await? {
        Some(removed) => GlobalError::NotFound(removed.sentence(job_id)),
        None => GlobalError::NotFound(format!("job {job_id}")),
    })
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Jobs removed.
    pub removed: usize,
    /// Finished jobs past the retention left for a later pass because
    /// their dependents are still to be judged.
    pub deferred: usize,
    /// Tombstones forgotten.
    pub forgotten: usize,
}

/// The leader's remover of finished jobs.
pub struct History {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    leadership: Arc<Leadership>,
    retention: Duration,
    first_pass: Instant,
}

impl History {
    /// A remover keeping finished jobs for `retention`.
    pub fn new(
        db: Database,
        keys: Keys,
        clock: SharedClock,
        leadership: Arc<Leadership>,
        retention: Duration,
    ) -> Self {
        let first_pass = clock.now().saturating_add(Self::period(retention));
        History {
            db,
            keys,
            clock,
            leadership,
            retention,
            first_pass,
        }
    }

    /// Time between passes: a tenth of the retention, between 1 s and
    /// 60 s (as for the event retention).
    pub fn every(&self) -> Duration {
        Self::period(self.retention)
    }

    fn period(retention: Duration) -> Duration {
        (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Runs while this replica leads, until `shutdown` flips: the index
    /// backfill as soon as it leads (once per process, tried again each
    /// period until it succeeds), then a removal pass every period. A
    /// failed pass is logged and tried again at the next period: removing
    /// late is safe.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut status = self.leadership.subscribe();
        let mut watching = true;
        let mut indexed = false;
        let mut next = self.first_pass;
        loop {
            if !indexed && self.leadership.is_leader() {
                indexed = self.backfill().await;
            }
            tokio::select! {
                _ = self.clock.sleep_until(next) => {}
                changed = status.changed(), if watching => {
                    watching = changed.is_ok();
                    continue;
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
            }
            if *shutdown.borrow() {
                return;
            }
            next = self.clock.now().saturating_add(self.every());
            if self.leadership.is_leader() {
                match self.pass().await {
                    Ok(pass) if pass != Pass::default() => {
                        tracing::debug!(?pass, "finished jobs removed");
                    }
                    Ok(_) => {}
                    Err(err @ (GlobalError::NotLeader { .. } | GlobalError::Fenced(_))) => {
                        tracing::debug!(error = %err, "removal pass stopped: not leading");
                    }
                    Err(err) => {
                        metrics::counter!("meridian_global_job_removal_failures_total")
                            .increment(1);
                        tracing::warn!(error = %err, "removing finished jobs failed");
                    }
                }
            }
        }
    }

    /// Builds the job indexes of a store written before them; true once
    /// they are complete.
    async fn backfill(&self) -> bool {
        let fence = match self.leadership.fence().await {
            Ok(fence) => fence,
            Err(_) => return false,
        };
        match job_index::backfill(&self.db, &self.keys, &fence).await {
            Ok(indexed) => {
                if indexed > 0 {
                    tracing::info!(indexed, "job indexes built for the stored jobs");
                }
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "building the job indexes failed");
                false
            }
        }
    }

    /// One pass: removes every finished job older than the retention (but
    /// those whose dependents are still to be judged) and forgets every
    /// tombstone older than it. Fails with `NotLeader` on a replica that
    /// does not lead, removing nothing.
    pub async fn pass(&self) -> Result<Pass> {
        let fence = self.leadership.fence().await?;
        let retention_ms = u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX);
        let now = self.clock.now_unix_ms();
        let cutoff = now.saturating_sub(retention_ms);
        let mut pass = Pass::default();
        let finished = self.keys.finisheds();
        let end = finished.pack(&(cutoff,));
        let mut from = finished.range().0;
        loop {
            let (removed, deferred, next) = self
                .db
                .run(|tx, _| {
                    let (fence, from, end) = (fence.clone(), from.clone(), end.clone());
                    let keys = self.keys.clone();
                    async move { remove_batch(&tx, &keys, &fence, from, end, now).await }
                })
                .await?;
            pass.removed += removed;
            pass.deferred += deferred;
            match next {
                Some(key) => from = key,
                None => break,
            }
        }
        metrics::counter!("meridian_global_jobs_removed_total").increment(pass.removed as u64);
        pass.forgotten = self.forget(&fence, cutoff).await?;
        Ok(pass)
    }

    /// Forgets tombstones written before `cutoff`.
    async fn forget(&self, fence: &Fence, cutoff: u64) -> Result<usize> {
        let mut total = 0;
        loop {
            let forgotten = self
                .db
                .run(|tx, _| {
                    let (fence, keys) = (fence.clone(), self.keys.clone());
                    async move {
                        fence.check(&tx).await?;
                        let at = keys.removeds_at();
                        let (begin, _) = at.range();
                        let rows = tx
                            .get_range(RangeOption::new(begin, at.pack(&(cutoff,))).limit(BATCH))
                            .await?;
                        for kv in &rows {
                            let (_, job_id): (u64, String) = at.unpack(&kv.key).map_err(|e| {
                                GlobalError::Corrupt(format!("tombstone time key: {e}"))
                            })?;
                            tx.clear(&keys.removed(&job_id))?;
                            tx.clear(&kv.key)?;
                        }
                        Ok::<_, GlobalError>(rows.len())
                    }
                })
                .await?;
            total += forgotten;
            if forgotten < BATCH {
                return Ok(total);
            }
        }
    }
}

/// Removes up to [`BATCH`] finished jobs listed in `[from, end)` of the
/// finished index. Returns (removed, deferred, where the next batch
/// starts, `None` when the range is done).
async fn remove_batch(
    tx: &Transaction,
    keys: &Keys,
    fence: &Fence,
    from: Vec<u8>,
    end: Vec<u8>,
    now: u64,
) -> Result<(usize, usize, Option<Vec<u8>>)> {
    fence.check(tx).await?;
    let finished = keys.finisheds();
    let rows = tx
        .get_range(RangeOption::new(from, end).limit(BATCH))
        .await?;
    let (mut removed, mut deferred) = (0, 0);
    for kv in &rows {
        let (at, job_id): (u64, String) = finished
            .unpack(&kv.key)
            .map_err(|e| GlobalError::Corrupt(format!("finished key: {e}")))?;
        // Its end is still to reach its dependents (`gate::unblock` runs
        // at the start of every controller pass): removed next time.
        if tx.get(&keys.settled(&job_id)).await?.is_some() {
            deferred += 1;
            continue;
        }
        tx.clear(&kv.key)?;
        let Some(job) = read_job(tx, keys, &job_id).await? else {
            continue;
        };
        if !lifecycle::is_terminal(state_of(&job)) {
            // Terminal states are final, so this entry is not the job's.
            continue;
        }
        remove(tx, keys, &job).await?;
        tx.set(&keys.removed(&job_id), &Removed::of(&job, at, now).encode())?;
        tx.set(&keys.removed_at(now, &job_id), b"")?;
        removed += 1;
    }
    let next = (rows.len() == BATCH)
        .then(|| rows.last().map(|kv| [kv.key.as_slice(), &[0]].concat()))
        .flatten();
    Ok((removed, deferred, next))
}

/// Clears every record of a finished job: the job, its tasks and status
/// version, its request record (when it still names this job), its index
/// entries, the entries of the job queues it might still be in, and the
/// edges to the jobs that waited on it (judged already: its settled entry
/// is gone).
async fn remove(tx: &Transaction, keys: &Keys, job: &Job) -> Result<()> {
    let id = job.job_id.as_str();
    tx.clear(&keys.job(id))?;
    let (begin, end) = keys.tasks(id).range();
    tx.clear_range(&begin, &end)?;
    tx.clear(&keys.status_version(id))?;
    // What was counted of it; its usage stays in the hourly records.
    crate::usage::forget(tx, keys, id)?;
    if let Some(spec) = &job.spec {
        // Cleared only while it names this job: clearing another job's
        // record would let its request id make a second job.
        let request = keys.request(&spec.tenant, &job.request_id);
        if tx
            .get(&request)
            .await?
            .is_some_and(|named| named == id.as_bytes())
        {
            tx.clear(&request)?;
        }
    }
    tx.clear(&keys.pending(id))?;
    tx.clear(&keys.blocked(id))?;
    tx.clear(&keys.moving(id))?;
    if !job.region.is_empty() {
        tx.clear(&keys.held(&job.region, id))?;
    }
    let (begin, end) = keys.dependents(id).range();
    tx.clear_range(&begin, &end)?;
    job_index::clear_entries(tx, keys, job)
}

/// `unix_ms` as an RFC 3339 UTC time with seconds.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc3339_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_544_145_546), "2026-12-06T08:02:25Z");
    }

    #[test]
    fn a_tombstone_reads_back_as_written() {
        let removed = Removed {
            tenant: "acme".into(),
            state: JobState::Failed,
            finished_at_unix_ms: 5,
            removed_at_unix_ms: 9,
            failure_reason: "task 0 exited 3".into(),
        };
        assert_eq!(Removed::decode(&removed.encode()).unwrap(), removed);
    }
}
