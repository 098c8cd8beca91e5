//! Retention of the event logs: the leader trims job events and each
//! region's assignment events once they are older than
//! [`GlobalConfig::event_retention`](crate::GlobalConfig).
//!
//! Owns the trim loop and its passes. A pass deletes a prefix of each log in
//! batches of [`BATCH`] events, one fenced transaction per batch that also
//! records the log's trim point ([`Trim`]), so a reader can always tell a
//! cursor that was trimmed (OUT_OF_RANGE: re-list, then watch from an empty
//! cursor) from one that was never issued. Passes run every
//! [`Retention::every`] on the replica's clock, only while this replica
//! leads, and every delete checks the leader fence in its own transaction,
//! so a deposed leader's pass deletes nothing.
//!
//! Event time: the `at_unix_ms` every job and assignment event already
//! carries (the leader's wall clock when the change committed). No time
//! index is kept: the log is in commit order, so a pass reads from the
//! front and stops at the first event younger than the cutoff. Stopping
//! there keeps the trimmed part a prefix even when wall clocks of
//! successive leaders disagree; skew between them only makes an event live
//! a little longer or shorter than the retention, never opens a hole in
//! the log.
//!
//! Assignment logs are trimmed by the same age rule. The global tier does
//! not know how far a region has read (acks name jobs, not positions), and
//! it does not need to: a region whose cursor was trimmed gets OUT_OF_RANGE
//! from the stream and starts again from an empty cursor, whose snapshot
//! holds every live ASSIGN, CANCEL and REVOKE of the region (the region's
//! link does this on `Refusal::CursorExpired`). A region link is connected
//! whenever the region is up, so with the default of 7 days only a region
//! down for longer resyncs that way.
//!
//! Must never: delete an event younger than the retention, delete anything
//! but a prefix of a log, delete without recording the trim point in the
//! same transaction, or delete without the leader fence.

use std::sync::Arc;
use std::time::Duration;

use meridian_control::{Instant, SharedClock};
use meridian_proto::v1::{AssignmentEvent, JobEvent};
use meridian_store::{Database, RangeOption, Subspace};
use prost::Message;
use tokio::sync::watch;

use crate::error::{GlobalError, Result};
use crate::events::Trim;
use crate::keys::{self, Keys};
use crate::leader::Leadership;

/// Events deleted per transaction at most: the same bound as a reader's
/// batch, so a trim transaction reads no more than one watcher's read.
pub const BATCH: usize = 256;

/// What one pass trimmed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Job events deleted.
    pub job_events: usize,
    /// Assignment events deleted, over all regions.
    pub region_events: usize,
}

/// The leader's trimmer of the event logs.
pub struct Retention {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    leadership: Arc<Leadership>,
    retention: Duration,
    /// When the first pass is due, fixed when the trimmer is made so that a
    /// clock moved before the loop first runs still makes that pass due.
    first_pass: Instant,
}

impl Retention {
    /// A trimmer keeping events for `retention`.
    pub fn new(
        db: Database,
        keys: Keys,
        clock: SharedClock,
        leadership: Arc<Leadership>,
        retention: Duration,
    ) -> Self {
        let first_pass = clock.now().saturating_add(Self::period(retention));
        Retention {
            db,
            keys,
            clock,
            leadership,
            retention,
            first_pass,
        }
    }

    /// Time between passes: a tenth of the retention, between 1 s and 60 s,
    /// so an event outlives its retention by at most a tenth of it and an
    /// idle pass (one short read per log) stays rare.
    pub fn every(&self) -> Duration {
        Self::period(self.retention)
    }

    fn period(retention: Duration) -> Duration {
        (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Runs passes while leading, until `shutdown` flips. A failed pass is
    /// logged and tried again at the next period: trimming late is safe.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut next = self.first_pass;
        loop {
            tokio::select! {
                _ = self.clock.sleep_until(next) => {}
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
            // The next pass is due a period after this one started, so time
            // that passes while it runs is not added to the wait (a clock
            // that jumped meanwhile makes the next pass due at once).
            next = self.clock.now().saturating_add(self.every());
            if self.leadership.is_leader() {
                match self.pass().await {
                    Ok(trimmed) if trimmed != Trimmed::default() => {
                        tracing::debug!(?trimmed, "event logs trimmed");
                    }
                    Ok(_) => {}
                    Err(err @ (GlobalError::NotLeader { .. } | GlobalError::Fenced(_))) => {
                        tracing::debug!(error = %err, "trim pass stopped: not leading");
                    }
                    Err(err) => {
                        metrics::counter!("meridian_global_trim_failures_total").increment(1);
                        tracing::warn!(error = %err, "trimming the event logs failed");
                    }
                }
            }
        }
    }

    /// One pass: trims every log of events older than the retention. Fails
    /// with `NotLeader` on a replica that does not lead, deleting nothing.
    pub async fn pass(&self) -> Result<Trimmed> {
        let fence = self.leadership.fence().await?;
        let retention_ms = u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = self.clock.now_unix_ms().saturating_sub(retention_ms);
        let mut trimmed = Trimmed::default();
        let job_log = Log {
            events: self.keys.job_events(),
            trim: self.keys.job_events_trim(),
            at: job_event_at,
        };
        trimmed.job_events = self.trim(&fence, &job_log, cutoff).await?;
        metrics::counter!("meridian_global_events_trimmed_total", "log" => "job")
            .increment(trimmed.job_events as u64);
        // One region's failure (an event that does not decode) must not stop
        // the others' trimming; it is reported after they are done.
        let mut failed = None;
        for region in self.regions().await? {
            let log = Log {
                events: self.keys.region_events(&region),
                trim: self.keys.region_events_trim(&region),
                at: assignment_event_at,
            };
            match self.trim(&fence, &log, cutoff).await {
                Ok(n) => trimmed.region_events += n,
                Err(err @ (GlobalError::NotLeader { .. } | GlobalError::Fenced(_))) => {
                    return Err(err);
                }
                Err(err) => failed = Some(err),
            }
        }
        metrics::counter!("meridian_global_events_trimmed_total", "log" => "region")
            .increment(trimmed.region_events as u64);
        match failed {
            Some(err) => Err(err),
            None => Ok(trimmed),
        }
    }

    /// Deletes the events of `log` older than `cutoff`, a batch per
    /// transaction, until the first younger event or the end.
    async fn trim(
        &self,
        fence: &meridian_control::lease::Fence,
        log: &Log,
        cutoff: u64,
    ) -> Result<usize> {
        let mut total = 0;
        loop {
            let deleted = self
                .db
                .run(|tx, _| {
                    let fence = fence.clone();
                    async move {
                        fence.check(&tx).await?;
                        let (begin, end) = log.events.range();
                        let rows = tx
                            .get_range(RangeOption::new(begin.clone(), end).limit(BATCH))
                            .await?;
                        let mut old: usize = 0;
                        for kv in &rows {
                            if (log.at)(&kv.value)? >= cutoff {
                                break;
                            }
                            old += 1;
                        }
                        let Some(last) = old.checked_sub(1).map(|i| &rows[i]) else {
                            return Ok::<_, GlobalError>(0);
                        };
                        let through = stamp(&log.events, &last.key)?;
                        let first = match Trim::read(&tx, &log.trim).await? {
                            Some(previous) => previous.first,
                            // Never trimmed: this is the log's first event.
                            None => stamp(&log.events, &rows[0].key)?,
                        };
                        let mut after_last = last.key.clone();
                        after_last.push(0);
                        tx.clear_range(&begin, &after_last)?;
                        tx.set(&log.trim, &Trim { first, through }.encode())?;
                        Ok(old)
                    }
                })
                .await?;
            total += deleted;
            if deleted < BATCH {
                return Ok(total);
            }
        }
    }

    /// The names of the regions in the registry (every region with a log).
    async fn regions(&self) -> Result<Vec<String>> {
        let regions = self.keys.regions();
        self.db
            .run(|tx, _| {
                let regions = regions.clone();
                async move {
                    let rows = tx.get_range(RangeOption::from(regions.range())).await?;
                    rows.iter()
                        .map(|kv| {
                            let (name,): (String,) = regions
                                .unpack(&kv.key)
                                .map_err(|e| GlobalError::Corrupt(format!("region key: {e}")))?;
                            Ok(name)
                        })
                        .collect::<Result<Vec<_>>>()
                }
            })
            .await
    }
}

/// One log and how to read an event's time.
struct Log {
    events: Subspace,
    trim: Vec<u8>,
    at: fn(&[u8]) -> Result<u64>,
}

fn job_event_at(raw: &[u8]) -> Result<u64> {
    Ok(JobEvent::decode(raw)?.at_unix_ms)
}

fn assignment_event_at(raw: &[u8]) -> Result<u64> {
    Ok(AssignmentEvent::decode(raw)?.at_unix_ms)
}

/// The position of the event at `key`, as a fixed-size cursor.
fn stamp(log: &Subspace, key: &[u8]) -> Result<[u8; keys::CURSOR_BYTES]> {
    let cursor = keys::cursor_of(log, key)?;
    cursor
        .as_slice()
        .try_into()
        .map_err(|_| GlobalError::Corrupt(format!("event key of {} bytes", cursor.len())))
}
