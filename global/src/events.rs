//! Event logs: the job events clients watch and the assignment events
//! regions pull, both keyed by versionstamp so that a cursor is a commit
//! position.
//!
//! Owns appending events inside the caller's transaction, tailing a log
//! from a cursor (waiting on a store watch when caught up), and the
//! `WatchJobs` stream with its filters, its check that a cursor is one the
//! server issued, each watcher's own bookmark timer, and the reading of a
//! log's trim record ([`Trim`], written by [`crate::retention`]). It must
//! never write an event outside the transaction that made the change it
//! describes, never re-list state on resume (a resumed stream starts right
//! after the cursor), never follow a cursor that names no position the job
//! log ever had, and never skip over trimmed events: a reader whose next
//! position was trimmed ends with OUT_OF_RANGE.

use std::time::Duration;

use meridian_control::SharedClock;
use meridian_proto::v1::{AssignmentEvent, JobEvent, JobEventKind, WatchJobsRequest};
use meridian_store::tuple::Versionstamp;
use meridian_store::{Database, RangeOption, Subspace, Transaction, WatchFuture};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::{GlobalError, Result};
use crate::keys::{self, Keys};
use crate::validate;

/// Appends events within one transaction attempt (numbering them so that
/// several events of one commit keep their order).
#[derive(Debug, Default)]
pub struct EventWriter {
    n: u16,
}

impl EventWriter {
    /// A writer for a fresh transaction attempt.
    pub fn new() -> Self {
        EventWriter { n: 0 }
    }

    /// Appends a job event (its cursor is filled in when read).
    pub fn job(&mut self, tx: &Transaction, keys: &Keys, event: &JobEvent) -> Result<()> {
        let key = keys::event_key(&keys.job_events(), self.bump()?);
        tx.set_versionstamped_key(&key, &event.encode_to_vec())?;
        tx.add_i64(&keys.job_events_head(), 1)?;
        Ok(())
    }

    /// Appends an assignment event to `region`'s log.
    pub fn region(
        &mut self,
        tx: &Transaction,
        keys: &Keys,
        region: &str,
        event: &AssignmentEvent,
    ) -> Result<()> {
        let key = keys::event_key(&keys.region_events(region), self.bump()?);
        tx.set_versionstamped_key(&key, &event.encode_to_vec())?;
        tx.add_i64(&keys.region_events_head(region), 1)?;
        Ok(())
    }

    fn bump(&mut self) -> Result<u16> {
        let n = self.n;
        self.n = n
            .checked_add(1)
            .ok_or_else(|| GlobalError::Corrupt("more than 65535 events in one commit".into()))?;
        Ok(n)
    }
}

/// How far a log has been trimmed: stored at [`keys::trim_of`] its head,
/// written in the same transaction as each delete.
///
/// `through` is the cursor of the last event deleted: every event at or
/// before it is gone, every event after it is kept, so the first retained
/// position is the one right after `through`. `first` is the first position
/// the log ever had (the first event the first trim deleted), which tells a
/// cursor from below the trim point (once issued, now expired) from one
/// below anything the log ever held (never issued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trim {
    /// The first position the log ever had.
    pub first: [u8; keys::CURSOR_BYTES],
    /// The last position deleted.
    pub through: [u8; keys::CURSOR_BYTES],
}

impl Trim {
    /// The stored form: `first` then `through`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * keys::CURSOR_BYTES);
        out.extend_from_slice(&self.first);
        out.extend_from_slice(&self.through);
        out
    }

    /// Reads the stored form.
    pub fn decode(raw: &[u8]) -> Result<Self> {
        let corrupt = || GlobalError::Corrupt(format!("trim record of {} bytes", raw.len()));
        if raw.len() != 2 * keys::CURSOR_BYTES {
            return Err(corrupt());
        }
        let (first, through) = raw.split_at(keys::CURSOR_BYTES);
        Ok(Trim {
            first: first.try_into().map_err(|_| corrupt())?,
            through: through.try_into().map_err(|_| corrupt())?,
        })
    }

    /// The trim record at `key`, if the log was ever trimmed.
    pub async fn read(tx: &Transaction, key: &[u8]) -> Result<Option<Self>> {
        tx.get(key).await?.as_deref().map(Trim::decode).transpose()
    }

    /// Whether a reader that has seen everything up to `seen` (empty: from
    /// before the first event) has lost events to this trim.
    fn overtook(&self, seen: &[u8]) -> bool {
        seen < self.through.as_slice()
    }
}

/// The error of a cursor, or a reader, whose next events were trimmed.
/// Not retryable: the same cursor can only fail again.
pub fn expired() -> GlobalError {
    GlobalError::OutOfRange(
        "cursor: the events after this cursor are no longer kept (they passed the retention \
         period and were trimmed); read the current state again (ListJobs or GetJob), then \
         watch from an empty cursor"
            .into(),
    )
}

/// A reader that follows one log from a position.
#[derive(Debug, Clone)]
pub struct Tail {
    db: Database,
    log: Subspace,
    head: Vec<u8>,
    trim: Vec<u8>,
    from: Vec<u8>,
    /// The last position this reader has passed (`None`: it starts from
    /// the log's beginning, whatever that is at its first read).
    seen: Option<Vec<u8>>,
}

/// One batch read from a log: `(cursor, value)` pairs, and, when the batch
/// reached the end of the log, a watch that fires on the next append.
pub type Batch = (Vec<(Vec<u8>, Vec<u8>)>, Option<WatchFuture>);

impl Tail {
    /// Follows `log` (whose appends bump `head`) from just after `cursor`
    /// (from the start when empty). `field` names the cursor in errors.
    pub fn new(
        db: Database,
        log: Subspace,
        head: Vec<u8>,
        cursor: &[u8],
        field: &str,
    ) -> Result<Self> {
        let from = keys::after_cursor(&log, cursor, field)?;
        let trim = keys::trim_of(&head);
        Ok(Tail {
            db,
            log,
            head,
            trim,
            from,
            seen: (!cursor.is_empty()).then(|| cursor.to_vec()),
        })
    }

    /// Follows `log` from its current end; returns the cursor of the last
    /// event (empty when the log is empty).
    pub async fn at_end(db: Database, log: Subspace, head: Vec<u8>) -> Result<(Self, Vec<u8>)> {
        let range = log.range();
        let trim_key = keys::trim_of(&head);
        let (last, trim) = db
            .run(|tx, _| {
                let (range, trim_key) = (range.clone(), trim_key.clone());
                async move {
                    let last = tx
                        .get_range(RangeOption::new(range.0, range.1).limit(1).reverse(true))
                        .await?;
                    Ok::<_, GlobalError>((last, Trim::read(&tx, &trim_key).await?))
                }
            })
            .await?;
        // A log trimmed empty still has a position: its trim point, which
        // is a cursor the server accepts. An empty cursor instead would send
        // a client resuming from a bookmark to "now", past whatever was
        // appended while it was away.
        let cursor = match (last.first(), trim) {
            (Some(kv), _) => keys::cursor_of(&log, &kv.key)?,
            (None, Some(trim)) => trim.through.to_vec(),
            (None, None) => Vec::new(),
        };
        let mut tail = Tail::new(db, log, head, &cursor, "cursor")?;
        // Never trimmed at this read: a trim before the first `next` took
        // events this reader never saw.
        if cursor.is_empty() {
            tail.seen = Some(Vec::new());
        }
        Ok((tail, cursor))
    }

    /// Reads up to `limit` events after the position and advances past them.
    /// Fails with OUT_OF_RANGE when events after the position were trimmed
    /// (a reader that fell behind the retention), rather than skip them.
    pub async fn next(&mut self, limit: usize) -> Result<Batch> {
        let end = self.log.range().1;
        // The last event this reader passed, when it has passed one. While
        // that event is still in the log nothing after it was trimmed (a trim
        // removes a prefix of the log, with its trim record, in one
        // transaction), so the read starts at it and the trim record is read
        // only when it is gone: one round trip instead of two per batch.
        let anchor = match &self.seen {
            Some(seen) if !seen.is_empty() => {
                let mut key = keys::after_cursor(&self.log, seen, "cursor")?;
                key.pop();
                Some(key)
            }
            _ => None,
        };
        let (from, head, trim_key) = (self.from.clone(), self.head.clone(), self.trim.clone());
        let (rows, watch, trim) = self
            .db
            .run(|tx, _| {
                let (from, end, anchor) = (from.clone(), end.clone(), anchor.clone());
                let (head, trim_key) = (head.clone(), trim_key.clone());
                async move {
                    let (rows, trim) = match anchor {
                        Some(anchor) => {
                            let mut rows = tx
                                .get_range(RangeOption::new(anchor.clone(), end).limit(limit + 1))
                                .await?;
                            if rows.first().is_some_and(|kv| kv.key == anchor) {
                                rows.remove(0);
                                (rows, None)
                            } else {
                                rows.truncate(limit);
                                (rows, Trim::read(&tx, &trim_key).await?)
                            }
                        }
                        None => {
                            // Read with the rows, so the check and the rows
                            // agree.
                            let trim = Trim::read(&tx, &trim_key).await?;
                            let rows = tx
                                .get_range(RangeOption::new(from, end).limit(limit))
                                .await?;
                            (rows, trim)
                        }
                    };
                    // A short page reached the end of the log as of this
                    // read: the watch, set in the same transaction, fires on
                    // the next append after it, so the caller waits on it
                    // instead of reading an empty page first.
                    let watch = if rows.len() < limit {
                        Some(tx.watch(&head)?)
                    } else {
                        None
                    };
                    Ok::<_, GlobalError>((rows, watch, trim))
                }
            })
            .await?;
        match (&self.seen, trim) {
            // From the beginning: whatever was trimmed before this read was
            // never this reader's to see.
            (None, trim) => {
                self.seen = Some(trim.map(|t| t.through.to_vec()).unwrap_or_default());
            }
            (Some(seen), Some(trim)) if trim.overtook(seen) => {
                return Err(expired());
            }
            _ => {}
        }
        let mut out = Vec::with_capacity(rows.len());
        for kv in rows {
            let cursor = keys::cursor_of(&self.log, &kv.key)?;
            self.seen = Some(cursor.clone());
            out.push((cursor, kv.value));
            let mut next = kv.key;
            next.push(0);
            self.from = next;
        }
        Ok((out, watch))
    }
}

/// Whether a job event passes a watch request's filters.
pub fn job_event_matches(req: &WatchJobsRequest, event: &JobEvent) -> bool {
    if event.kind == JobEventKind::TaskChanged as i32 && !req.include_task_events {
        return false;
    }
    let Some(job) = &event.job else { return true };
    let spec = job.spec.clone().unwrap_or_default();
    (req.tenant.is_empty() || spec.tenant == req.tenant)
        && (req.job_ids.is_empty() || req.job_ids.contains(&job.job_id))
        && (req.region.is_empty() || job.region == req.region)
        && validate::matches(&spec.labels, &req.label_selector)
}

/// Checks a watch request.
pub fn validate_watch(req: &WatchJobsRequest) -> Result<()> {
    if req.job_ids.len() > 1000 {
        return Err(GlobalError::invalid("job_ids", "at most 1000 entries"));
    }
    validate::selector("label_selector", &req.label_selector)?;
    if !req.cursor.is_empty() && req.cursor.len() != keys::CURSOR_BYTES {
        return Err(not_issued());
    }
    Ok(())
}

fn not_issued() -> GlobalError {
    GlobalError::invalid("cursor", "not a cursor issued by this server")
}

/// Checks that a `WatchJobs` cursor names an event of the job log, or a
/// position the log held before it was trimmed.
///
/// Every cursor the server hands out is the position of an event it read
/// from the log (an event's own, or the last one a bookmark's scan passed),
/// so a cursor whose event is not there was never issued: following it
/// would silently skip or replay events (an all-zero one replays the whole
/// log, one past the end receives only bookmarks). The check reads the
/// shared store, so a cursor issued by one replica is accepted by every
/// other, across leader failovers, with no secret to keep.
///
/// The log is trimmed by age ([`crate::retention`]), and the trim record
/// says where: a cursor from the first position the log ever had up to
/// the last trimmed one answers OUT_OF_RANGE (the client re-lists and
/// watches from an empty cursor), except the last trimmed position itself,
/// after which nothing is missing. Below the first position, or after the
/// trim point without an event, the cursor was never issued:
/// INVALID_ARGUMENT. A forged cursor that falls inside the trimmed range
/// cannot be told from an expired one and is answered OUT_OF_RANGE, which
/// only sends its client to re-list.
pub async fn verify_cursor(db: &Database, keys: &Keys, cursor: &[u8]) -> Result<()> {
    if cursor.is_empty() {
        return Ok(());
    }
    let bytes: [u8; keys::CURSOR_BYTES] = cursor.try_into().map_err(|_| not_issued())?;
    let mut tr = [0u8; 10];
    tr.copy_from_slice(&bytes[..10]);
    let user = u16::from_be_bytes([bytes[10], bytes[11]]);
    let key = keys.job_events().pack(&(Versionstamp::complete(tr, user),));
    let trim_key = keys.job_events_trim();
    let (found, trim) = db
        .run(|tx, _| {
            let (key, trim_key) = (key.clone(), trim_key.clone());
            async move {
                let found = tx.get(&key).await?.is_some();
                Ok::<_, GlobalError>((found, Trim::read(&tx, &trim_key).await?))
            }
        })
        .await?;
    match trim {
        _ if found => Ok(()),
        Some(trim) if bytes == trim.through => Ok(()),
        Some(trim) if trim.first <= bytes && bytes < trim.through => Err(expired()),
        _ => Err(not_issued()),
    }
}

/// A bookmark at `cursor`.
fn bookmark(clock: &SharedClock, cursor: &[u8]) -> JobEvent {
    JobEvent {
        cursor: cursor.to_vec(),
        kind: JobEventKind::Bookmark as i32,
        at_unix_ms: clock.now_unix_ms(),
        ..JobEvent::default()
    }
}

/// The `WatchJobs` stream: events after the cursor (or from now), filtered,
/// with a bookmark whenever this watcher was sent nothing for
/// `bookmark_every`. Ends when `shutdown` flips or the client goes away.
pub async fn watch_jobs(
    db: Database,
    keys: Keys,
    req: WatchJobsRequest,
    clock: SharedClock,
    bookmark_every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ReceiverStream<Result<JobEvent, Status>>> {
    validate_watch(&req)?;
    verify_cursor(&db, &keys, &req.cursor).await?;
    let (mut tail, mut last) = if req.cursor.is_empty() {
        Tail::at_end(db, keys.job_events(), keys.job_events_head()).await?
    } else {
        let tail = Tail::new(
            db,
            keys.job_events(),
            keys.job_events_head(),
            &req.cursor,
            "cursor",
        )?;
        (tail, req.cursor.clone())
    };
    let (out, rx) = mpsc::channel(256);
    // Fixed at the call, as the filters are: the caller sees its tenants'
    // jobs only (`auth`).
    let visible = crate::auth::current().visible_tenants().cloned();
    // The timer runs on what this watcher was sent, not on appends to the
    // log: on a busy federation the log never goes quiet, and a watcher of
    // one quiet job would otherwise get no resume point (nor sign of life)
    // for as long as other jobs keep changing. It starts when the call is
    // answered, not when the task first runs.
    let mut bookmark_at = clock.now().saturating_add(bookmark_every);
    tokio::spawn(async move {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let (batch, wake) = match tail.next(256).await {
                Ok(b) => b,
                Err(err) => {
                    let _ = out.send(Err(err.into())).await;
                    return;
                }
            };
            for (cursor, raw) in batch {
                last = cursor.clone();
                let mut event = match JobEvent::decode(raw.as_slice()) {
                    Ok(e) => e,
                    Err(err) => {
                        let _ = out.send(Err(GlobalError::from(err).into())).await;
                        return;
                    }
                };
                if !job_event_matches(&req, &event) {
                    continue;
                }
                if let (Some(visible), Some(job)) = (&visible, &event.job)
                    && !visible.contains(job.spec.as_ref().map_or("", |s| s.tenant.as_str()))
                {
                    continue;
                }
                event.cursor = cursor;
                // Each deadline is taken before the send it follows, so it
                // never depends on how soon this task runs after the
                // client has the message.
                bookmark_at = clock.now().saturating_add(bookmark_every);
                if out.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            // Checked after every batch, caught up or not, so that a scan
            // through many non-matching events still yields bookmarks; the
            // bookmark carries the last position scanned, so a resume from
            // it skips what was already passed over.
            let now = clock.now();
            if now >= bookmark_at {
                bookmark_at = now.saturating_add(bookmark_every);
                if out.send(Ok(bookmark(&clock, &last))).await.is_err() {
                    return;
                }
            }
            let Some(wake) = wake else { continue };
            tokio::select! {
                _ = wake => {}
                // The bookmark itself is sent by the check above, on the
                // next pass.
                _ = clock.sleep_until(bookmark_at) => {}
                _ = shutdown.changed() => return,
                _ = out.closed() => return,
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
