//! The audit log: who changed what, when, and how it ended.
//!
//! Owns the audit records in the global store, under
//! `("audit", at_unix_ms, suffix)`, so a range read pages them in time
//! order: writing them ([`Audit::ride`] puts the record of a successful
//! fenced write into that write's own transaction, through the fence's
//! rider, so a crash can neither record an action that did not commit nor
//! lose one that did; [`Audit::record`] writes the record of a refusal, a
//! failure, or an action with no global transaction of its own, such as a
//! node call forwarded to a region), listing them with filters, and
//! trimming those older than the retention ([`Audit::trim`], run by the
//! leader's history trimmer). It must never record a token's secret, and
//! never fail a call because its record of a refusal could not be written
//! (that is logged instead).

use meridian_control::SharedClock;
use meridian_control::lease::Fence;
use meridian_proto::v1::{AuditRecord, ListAuditRecordsRequest, ListAuditRecordsResponse};
use meridian_store::{Database, RangeOption, Subspace};
use prost::Message;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::error::{GlobalError, Result};
use crate::keys::Keys;

/// Default page size of ListAuditRecords.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of ListAuditRecords.
pub const MAX_LIMIT: u32 = 1000;
/// Records read per ListAuditRecords call at most while filtering: a page
/// of a rare filter may come back short, with a token to read on.
pub const SCAN_LIMIT: usize = 10_000;
/// Records removed per trimming transaction.
const TRIM_BATCH: usize = 1000;

/// The outcome recorded for a call that succeeded.
pub const OK: &str = "OK";

/// The audit log of one deployment.
#[derive(Clone)]
pub struct Audit {
    db: Database,
    space: Subspace,
    clock: SharedClock,
    writer: mpsc::Sender<Pending>,
}

/// A record waiting for the group writer, and who waits for its commit.
type Pending = ((Vec<u8>, Vec<u8>), oneshot::Sender<()>);

/// A record of its own, made at the outcome and not yet written
/// ([`Audit::write_all`]).
pub struct Record((Vec<u8>, Vec<u8>));

/// Records written per group-writer transaction at most.
const WRITE_GROUP: usize = 500;

/// The group writer: records of their own (not riding a fenced write) are
/// written many per transaction, as submits are, so that recording every
/// submit does not double the store's write load. Each caller still waits
/// for its record's commit.
async fn write_groups(db: Database, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < WRITE_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let (records, waiters): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let written = db
            .run(|tx, _| {
                let records = &records;
                async move {
                    for (key, value) in records {
                        tx.set(key, value)?;
                    }
                    Ok::<_, GlobalError>(())
                }
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, records = records.len(), "audit records not written");
        }
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

/// The outcome name of a failure: its gRPC code's name, as in the
/// protocol (`PERMISSION_DENIED`).
pub fn outcome_of(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => OK.to_string(),
        tonic::Code::Cancelled => "CANCELLED".into(),
        tonic::Code::Unknown => "UNKNOWN".into(),
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT".into(),
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED".into(),
        tonic::Code::NotFound => "NOT_FOUND".into(),
        tonic::Code::AlreadyExists => "ALREADY_EXISTS".into(),
        tonic::Code::PermissionDenied => "PERMISSION_DENIED".into(),
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED".into(),
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION".into(),
        tonic::Code::Aborted => "ABORTED".into(),
        tonic::Code::OutOfRange => "OUT_OF_RANGE".into(),
        tonic::Code::Unimplemented => "UNIMPLEMENTED".into(),
        tonic::Code::Internal => "INTERNAL".into(),
        tonic::Code::Unavailable => "UNAVAILABLE".into(),
        tonic::Code::DataLoss => "DATA_LOSS".into(),
        tonic::Code::Unauthenticated => "UNAUTHENTICATED".into(),
    }
}

impl Audit {
    /// The audit log under `keys`.
    /// Must be called on a Tokio runtime: it starts the group writer,
    /// which ends when the last handle is dropped.
    pub fn new(db: Database, keys: &Keys, clock: SharedClock) -> Audit {
        let (writer, rx) = mpsc::channel(4 * WRITE_GROUP);
        tokio::spawn(write_groups(db.clone(), rx));
        Audit {
            db,
            space: keys.root().subspace(&("audit",)),
            clock,
            writer,
        }
    }

    /// A record of `principal` doing `action` on `target`, now, with its
    /// key.
    fn entry(
        &self,
        principal: &Principal,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> (Vec<u8>, Vec<u8>) {
        let at = self.clock.now_unix_ms();
        let suffix = rand::rng().next_u64();
        let record = AuditRecord {
            record_id: format!("{at:013}-{suffix:016x}"),
            at_unix_ms: at,
            principal: principal.id.clone(),
            principal_name: principal.name.clone(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        };
        (self.space.pack(&(at, suffix)), record.encode_to_vec())
    }

    /// `fence`, carrying the OK record of `action` on `target` by the
    /// current principal: the record commits exactly when the fenced write
    /// does.
    pub fn ride(&self, fence: Fence, action: &str, target: &str) -> Fence {
        let principal = crate::auth::current();
        let (key, value) = self.entry(&principal, action, target, OK, "");
        fence.with_rider(key, value)
    }

    /// Writes a record of its own (a refusal, a failure, or an action with
    /// no global transaction). A failure to write is logged, not returned:
    /// the call's answer does not depend on it.
    pub async fn record(
        &self,
        principal: &Principal,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) {
        let entry = self.entry(principal, action, target, outcome, detail);
        self.write_all(vec![Record(entry)]).await;
    }

    /// Writes records of their own together: all are handed to the group
    /// writer before any commit is awaited, so the items of a batched call
    /// (a thousand submits) cost a transaction per [`WRITE_GROUP`] records
    /// rather than one each, one after another. Returns once all have
    /// committed (or failed to, which is logged).
    pub async fn write_all(&self, records: Vec<Record>) {
        let mut committed = Vec::with_capacity(records.len());
        for Record(entry) in records {
            let (done, commit) = oneshot::channel();
            if self.writer.send((entry, done)).await.is_err() {
                tracing::warn!("audit writer stopped; record not written");
                break;
            }
            committed.push(commit);
        }
        for commit in committed {
            let _ = commit.await;
        }
    }

    /// The record of the current principal's failed `action` on `target`,
    /// if it gets one. A replica that does not lead records nothing of a
    /// write it sent to the leader (the client retries there, which records
    /// it), and an invalid request (INVALID_ARGUMENT) records nothing.
    pub fn failure(&self, action: &str, target: &str, error: &GlobalError) -> Option<Record> {
        // A request refused by validation was neither read nor acted on,
        // and writes nothing (the API's rule for bad requests).
        if matches!(
            error,
            GlobalError::NotLeader { .. } | GlobalError::Fenced(_) | GlobalError::Invalid { .. }
        ) {
            return None;
        }
        let principal = crate::auth::current();
        Some(Record(self.entry(
            &principal,
            action,
            target,
            &outcome_of(error.code()),
            &error.to_string(),
        )))
    }

    /// The record of the outcome of the current principal's `action` on
    /// `target`, for a call with no fenced write of the global tier to
    /// ride: OK, or the failure's (see [`Audit::failure`]).
    pub fn outcome_record<T>(
        &self,
        action: &str,
        target: &str,
        result: &Result<T>,
    ) -> Option<Record> {
        match result {
            Ok(_) => {
                let principal = crate::auth::current();
                Some(Record(self.entry(&principal, action, target, OK, "")))
            }
            Err(e) => self.failure(action, target, e),
        }
    }

    /// Records the failure of the current principal's `action` on
    /// `target` (see [`Audit::failure`] for what gets no record).
    pub async fn failed(&self, action: &str, target: &str, error: &GlobalError) {
        if let Some(record) = self.failure(action, target, error) {
            self.write_all(vec![record]).await;
        }
    }

    /// The outcome of a call with its own record (no fenced write of the
    /// global tier): recorded OK or failed.
    pub async fn outcome<T>(&self, action: &str, target: &str, result: &Result<T>) {
        if let Some(record) = self.outcome_record(action, target, result) {
            self.write_all(vec![record]).await;
        }
    }

    /// One page of records, oldest first, matching `req`'s filters.
    pub async fn list(&self, req: &ListAuditRecordsRequest) -> Result<ListAuditRecordsResponse> {
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            n if n <= MAX_LIMIT => n,
            _ => {
                return Err(GlobalError::invalid(
                    "limit",
                    format!("at most {MAX_LIMIT}"),
                ));
            }
        } as usize;
        let (start, end) = self.space.range();
        let begin = if req.page_token.is_empty() {
            self.space.pack(&(req.since_unix_ms,))
        } else {
            let (at, suffix) = parse_record_id(&req.page_token)
                .ok_or_else(|| GlobalError::invalid("page_token", "not a page token"))?;
            let mut after = self.space.pack(&(at.max(req.since_unix_ms), suffix));
            after.push(0);
            after
        };
        let begin = begin.max(start);
        let range = RangeOption::new(begin, end).limit(SCAN_LIMIT);
        let rows = self
            .db
            .run(|tx, _| {
                let range = range.clone();
                async move { Ok::<_, GlobalError>(tx.get_range(range).await?) }
            })
            .await?;
        let scanned = rows.len();
        let mut records = Vec::new();
        let mut last_seen = None;
        for row in rows {
            let record = AuditRecord::decode(row.value.as_slice())?;
            last_seen = Some(record.record_id.clone());
            let keep = (req.principal.is_empty() || record.principal == req.principal)
                && (req.action.is_empty() || record.action == req.action)
                && (req.target.is_empty() || record.target == req.target);
            if keep {
                records.push(record);
                if records.len() == limit {
                    break;
                }
            }
        }
        let next_page_token = if records.len() == limit || scanned == SCAN_LIMIT {
            last_seen.unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListAuditRecordsResponse {
            records,
            next_page_token,
        })
    }

    /// Removes records older than `before_unix_ms` under `fence`, in
    /// batches; returns how many.
    pub async fn trim(&self, fence: &Fence, before_unix_ms: u64) -> Result<usize> {
        let (start, _) = self.space.range();
        let end = self.space.pack(&(before_unix_ms,));
        let mut removed = 0;
        loop {
            let range = RangeOption::new(start.clone(), end.clone()).limit(TRIM_BATCH);
            let n = self
                .db
                .run(|tx, _| {
                    let range = range.clone();
                    async move {
                        fence.check(&tx).await?;
                        let rows = tx.get_range(range).await?;
                        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
                            let mut past = last.key.clone();
                            past.push(0);
                            tx.clear_range(&first.key, &past)?;
                        }
                        Ok::<_, GlobalError>(rows.len())
                    }
                })
                .await?;
            removed += n;
            if n < TRIM_BATCH {
                return Ok(removed);
            }
        }
    }
}

/// The leader's trimming of the audit log: every tenth of `retention`
/// (between 1 s and 60 s, as the other retentions), while this replica
/// leads, records older than `retention` are removed. A failed pass is
/// logged and tried again next period: trimming late is safe.
pub async fn trim_loop(
    audit: Audit,
    leadership: std::sync::Arc<crate::leader::Leadership>,
    retention: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = (retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    loop {
        let next = audit.clock.now().saturating_add(every);
        tokio::select! {
            _ = audit.clock.sleep_until(next) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        }
        if !leadership.is_leader() {
            continue;
        }
        let Ok(fence) = leadership.fence().await else {
            continue;
        };
        let cutoff = audit
            .clock
            .now_unix_ms()
            .saturating_sub(retention.as_millis() as u64);
        match audit.trim(&fence, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "audit records trimmed"),
            Err(e) => tracing::warn!(error = %e, "trimming audit records failed"),
        }
    }
}

fn parse_record_id(id: &str) -> Option<(u64, u64)> {
    let (at, suffix) = id.split_once('-')?;
    Some((at.parse().ok()?, u64::from_str_radix(suffix, 16).ok()?))
}
