//! The RegionLink service: what region link leaders call on the global
//! leader.
//!
//! Owns the gRPC surface of `region.proto`: region leases (through the
//! [`Registry`]), the resumable assignment stream, and the epoch-checked
//! batches (acks, status, releases, through [`crate::reports`]). Every call
//! is served by the leader only. It must never accept a batch under a stale
//! region lease epoch, and never keep a stream open once its region lease
//! epoch is superseded (it ends with FAILED_PRECONDITION, the only use of
//! that code here).

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use meridian_control::SharedClock;
use meridian_control::lease::{LeaderStatus, Role};
use meridian_control::tls::Peer;
use meridian_control::trace::{self, TraceId};
use meridian_proto::limits::MAX_BATCH_ITEMS;
use meridian_proto::v1::region_link_server::RegionLink;
use meridian_proto::v1::{
    AckAssignmentsRequest, AckAssignmentsResponse, AssignmentEvent, AssignmentEventKind,
    AssignmentsRequest, CheckConsoleTokenRequest, CheckConsoleTokenResponse, ItemResult, JobEpoch,
    JobRelease, JobStatusUpdate, RegisterRegionRequest, RegisterRegionResponse, ReleaseJobsRequest,
    ReleaseJobsResponse, RenewRegionLeaseRequest, RenewRegionLeaseResponse, ReportCapacityRequest,
    ReportCapacityResponse, ReportStatusRequest, ReportStatusResponse, Verdict,
};
use meridian_store::{Database, RangeOption, Transaction};
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{GlobalError, Result};
use crate::events::{EventWriter, Tail};
use crate::handoff::read_moving;
use crate::jobs::read_job;
use crate::keys::{self, Keys};
use crate::leader::Leadership;
use crate::metrics_endpoint;
use crate::registry::{self, Registry, check_lease};
use crate::usage::UsageKeys;
use crate::{lifecycle, reports, validate};

/// The RegionLink service of one replica.
#[derive(Clone)]
pub struct LinkService {
    /// The store.
    pub db: Database,
    /// Key layout.
    pub keys: Keys,
    /// Time.
    pub clock: SharedClock,
    /// Leadership (every call needs the leader).
    pub leadership: Arc<Leadership>,
    /// Region records and leases.
    pub registry: Registry,
    /// Wakes the controller (a release makes routing work).
    pub kick: Arc<Notify>,
    /// Quiet time before a bookmark on the stream.
    pub bookmark_every: Duration,
    /// Flips to true on shutdown; open streams end.
    pub shutdown: watch::Receiver<bool>,
    /// Tokens, for the regions' console sign-in.
    pub auth: crate::auth::Auth,
}

/// Applies one item of an epoch-checked batch inside the transaction.
type ApplyItem<T> = for<'a> fn(
    &'a Transaction,
    &'a Keys,
    &'a mut EventWriter,
    &'a str,
    &'a T,
    u64,
) -> futures::future::BoxFuture<'a, Result<ItemResult>>;

/// An item of an epoch-checked batch names one job.
trait BatchItem {
    fn job_id(&self) -> &str;
}

impl BatchItem for JobEpoch {
    fn job_id(&self) -> &str {
        &self.job_id
    }
}

impl BatchItem for JobStatusUpdate {
    fn job_id(&self) -> &str {
        &self.job_id
    }
}

impl BatchItem for JobRelease {
    fn job_id(&self) -> &str {
        &self.job_id
    }
}

/// Which batch a generic epoch-checked call applies.
#[derive(Clone, Copy)]
enum BatchKind {
    Ack,
    Status,
    Release,
}

impl LinkService {
    /// Applies a batch of items under the region lease epoch in one
    /// transaction: `(verdict, current lease epoch, per-item results)`.
    async fn batch<T: BatchItem + Clone + Send + Sync>(
        &self,
        region: &str,
        lease_epoch: u64,
        items: &[T],
        field: &str,
        kind: BatchKind,
        apply: ApplyItem<T>,
    ) -> Result<(Verdict, u64, Vec<ItemResult>)> {
        validate::region_name("region", region)?;
        if items.len() > MAX_BATCH_ITEMS {
            return Err(GlobalError::invalid(
                field,
                format!("at most {MAX_BATCH_ITEMS} items"),
            ));
        }
        let fence = self.leadership.fence().await?;
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        let outcome = self
            .db
            .run_locked(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    // Every record the items read, in one round trip: the
                    // fence, the region's lease, each item's job and, for
                    // the items that count usage, what was counted. A read
                    // left to the item would cost a round trip per item,
                    // each with this process's write turn held (the items
                    // before it wrote), so every other writer would wait
                    // out the whole batch.
                    let mut wanted = vec![fence.key().to_vec(), keys.region(region)];
                    let usage = UsageKeys::new(&keys);
                    for item in items {
                        let job = item.job_id();
                        wanted.push(keys.job(job));
                        wanted.push(keys.moving(job));
                        wanted.push(keys.status_version(job));
                        if matches!(kind, BatchKind::Status | BatchKind::Release) {
                            wanted.push(usage.counted(job));
                        }
                    }
                    tx.prefetch(&wanted).await?;
                    fence.check(&tx).await?;
                    if let Some(current) = check_lease(&tx, &keys, region, lease_epoch).await? {
                        return Ok((Verdict::StaleEpoch, current, Vec::new()));
                    }
                    let mut events = EventWriter::new();
                    let mut results = Vec::with_capacity(items.len());
                    for item in items {
                        results.push(apply(&tx, &keys, &mut events, region, item, now).await?);
                    }
                    Ok::<_, GlobalError>((Verdict::Accepted, lease_epoch, results))
                }
            })
            .await?;
        let accepted = outcome
            .2
            .iter()
            .any(|r| r.verdict == Verdict::Accepted as i32);
        if matches!(kind, BatchKind::Release | BatchKind::Status) && accepted {
            self.kick.notify_one();
        }
        if outcome.0 == Verdict::StaleEpoch {
            metrics_endpoint::fencing_rejection("region_lease");
        }
        for r in &outcome.2 {
            if r.verdict == Verdict::StaleEpoch as i32 {
                metrics_endpoint::fencing_rejection("assignment");
            }
            let verdict = Verdict::try_from(r.verdict).map_or("unknown", |v| v.as_str_name());
            let kind = match kind {
                BatchKind::Ack => "ack",
                BatchKind::Status => "status",
                BatchKind::Release => "release",
            };
            metrics::counter!("meridian_global_region_items_total", "kind" => kind, "verdict" => verdict)
                .increment(1);
        }
        Ok(outcome)
    }

    /// The snapshot a stream opened without a cursor starts with, and the
    /// cursor it continues from, read in one transaction.
    async fn snapshot(&self, region: &str) -> Result<(Vec<AssignmentEvent>, Vec<u8>)> {
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        self.db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let log = keys.region_events(region);
                    let (begin, end) = log.range();
                    let last = tx
                        .get_range(RangeOption::new(begin, end).limit(1).reverse(true))
                        .await?;
                    let cursor = match last.first() {
                        Some(kv) => keys::cursor_of(&log, &kv.key)?,
                        None => Vec::new(),
                    };
                    let held = tx
                        .get_range(RangeOption::from(keys.helds(region).range()))
                        .await?;
                    let mut events = Vec::new();
                    for kv in held {
                        let (job_id,): (String,) = keys
                            .helds(region)
                            .unpack(&kv.key)
                            .map_err(|e| GlobalError::Corrupt(format!("held key: {e}")))?;
                        let Some(job) = read_job(&tx, &keys, &job_id).await? else {
                            continue;
                        };
                        let base = AssignmentEvent {
                            cursor: cursor.clone(),
                            job_id: job.job_id.clone(),
                            at_unix_ms: now,
                            ..AssignmentEvent::default()
                        };
                        if let Some(moving) = read_moving(&tx, &keys, &job_id).await? {
                            events.push(AssignmentEvent {
                                kind: AssignmentEventKind::Revoke as i32,
                                assignment_epoch: moving.epoch,
                                reason: "revoked".into(),
                                ..base
                            });
                            continue;
                        }
                        events.push(AssignmentEvent {
                            kind: AssignmentEventKind::Assign as i32,
                            assignment_epoch: job.assignment_epoch,
                            spec: crate::gate::spec_for_region(&job),
                            request_id: job.request_id.clone(),
                            job_created_at_unix_ms: job.created_at_unix_ms,
                            trace_id: job.trace_id.clone(),
                            ..base.clone()
                        });
                        if job.cancel_requested
                            && !lifecycle::is_terminal(lifecycle::state_of(&job))
                        {
                            events.push(AssignmentEvent {
                                kind: AssignmentEventKind::Cancel as i32,
                                assignment_epoch: job.assignment_epoch,
                                reason: job.cancel_reason.clone(),
                                ..base
                            });
                        }
                    }
                    Ok::<_, GlobalError>((events, cursor))
                }
            })
            .await
    }

    /// The region's current lease epoch and a watch on its record.
    async fn lease_epoch_watch(&self, region: &str) -> Result<(u64, meridian_store::WatchFuture)> {
        let keys = self.keys.clone();
        self.db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let epoch = registry::read_region(&tx, &keys, region)
                        .await?
                        .map_or(0, |r| r.lease_epoch);
                    Ok::<_, GlobalError>((epoch, tx.watch(&keys.region(region))?))
                }
            })
            .await
    }

    /// Streams the region's events after `last`, with a bookmark as soon as
    /// it first caught up (the region places only after that one) and after
    /// each quiet period, until the region's lease epoch changes, this replica
    /// stops leading or shuts down, a read fails, or the receiver goes away.
    async fn follow_events(
        &self,
        req: &AssignmentsRequest,
        mut last: Vec<u8>,
        mut tail: Tail,
        out: mpsc::Sender<Result<AssignmentEvent, Status>>,
        mut leader: watch::Receiver<LeaderStatus>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // The region's lease is read again only when its record changed (a
        // renewal, a new epoch), not before every batch: the watch set by
        // the last read says when.
        let mut lease_watch: Option<meridian_store::WatchFuture> = None;
        let mut caught_up = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if leader.borrow().role != Role::Leader {
                let _ = out.send(Err(Status::unavailable("leadership lost"))).await;
                return;
            }
            // A stream that never goes quiet must still see a new epoch.
            if lease_watch
                .as_mut()
                .is_some_and(|w| w.now_or_never().is_some())
            {
                lease_watch = None;
            }
            if lease_watch.is_none() {
                let (current, changed) = match self.lease_epoch_watch(&req.region).await {
                    Ok(w) => w,
                    Err(err) => {
                        let _ = out.send(Err(err.into())).await;
                        return;
                    }
                };
                if current != req.region_lease_epoch {
                    let _ = out
                        .send(Err(superseded(
                            &req.region,
                            req.region_lease_epoch,
                            current,
                        )))
                        .await;
                    return;
                }
                lease_watch = Some(changed);
            }
            let Some(lease_changed) = lease_watch.as_mut() else {
                continue;
            };
            let (batch, wake) = match tail.next(256).await {
                Ok(b) => b,
                Err(err) => {
                    let _ = out.send(Err(err.into())).await;
                    return;
                }
            };
            for (cursor, raw) in batch {
                let mut event = match AssignmentEvent::decode(raw.as_slice()) {
                    Ok(e) => e,
                    Err(err) => {
                        let _ = out.send(Err(GlobalError::from(err).into())).await;
                        return;
                    }
                };
                event.cursor = cursor.clone();
                last = cursor;
                if out.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            let Some(wake) = wake else { continue };
            if !caught_up {
                // The stream has delivered everything written before it
                // caught up: a bookmark says so at once, and the region
                // starts placing only after it (a revocation written while
                // its lease had run out is applied first).
                caught_up = true;
                let bookmark = AssignmentEvent {
                    cursor: last.clone(),
                    kind: AssignmentEventKind::Bookmark as i32,
                    at_unix_ms: self.clock.now_unix_ms(),
                    ..AssignmentEvent::default()
                };
                if out.send(Ok(bookmark)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = wake => {}
                _ = lease_changed => lease_watch = None,
                _ = self.clock.sleep(self.bookmark_every) => {
                    let bookmark = AssignmentEvent {
                        cursor: last.clone(),
                        kind: AssignmentEventKind::Bookmark as i32,
                        at_unix_ms: self.clock.now_unix_ms(),
                        ..AssignmentEvent::default()
                    };
                    if out.send(Ok(bookmark)).await.is_err() {
                        return;
                    }
                }
                _ = leader.changed() => {}
                _ = shutdown.changed() => return,
                _ = out.closed() => return,
            }
        }
    }
}

fn superseded(region: &str, epoch: u64, current: u64) -> Status {
    metrics_endpoint::fencing_rejection("region_lease");
    Status::failed_precondition(format!(
        "region lease epoch {epoch} of {region} is not current (current {current}): register again"
    ))
}

#[tonic::async_trait]
impl RegionLink for LinkService {
    async fn check_console_token(
        &self,
        request: Request<CheckConsoleTokenRequest>,
    ) -> Result<Response<CheckConsoleTokenResponse>, Status> {
        Peer::of(&request).check_region(&request.get_ref().region)?;
        // Any replica can answer (a read of one token record): a region's
        // sign-in does not wait for the global leader.
        let answer = crate::auth::console::check(&self.auth, &request.get_ref().token).await?;
        Ok(Response::new(answer))
    }

    async fn register_region(
        &self,
        request: Request<RegisterRegionRequest>,
    ) -> Result<Response<RegisterRegionResponse>, Status> {
        // A region speaks only for itself: the id it names must be the
        // one its certificate names (docs/security.md).
        Peer::of(&request).check_region(&request.get_ref().region)?;
        let fence = self.leadership.fence().await?;
        Ok(Response::new(
            self.registry.register(&fence, request.get_ref()).await?,
        ))
    }

    async fn renew_region_lease(
        &self,
        request: Request<RenewRegionLeaseRequest>,
    ) -> Result<Response<RenewRegionLeaseResponse>, Status> {
        Peer::of(&request).check_region(&request.get_ref().region)?;
        let fence = self.leadership.fence().await?;
        let renewed = self.registry.renew(&fence, request.get_ref()).await?;
        if renewed.verdict == Verdict::StaleEpoch as i32 {
            metrics_endpoint::fencing_rejection("region_lease");
        }
        Ok(Response::new(renewed))
    }

    type AssignmentsStream = ReceiverStream<Result<AssignmentEvent, Status>>;

    async fn assignments(
        &self,
        request: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        Peer::of(&request).check_region(&request.get_ref().region)?;
        let req = request.into_inner();
        validate::region_name("region", &req.region).map_err(Status::from)?;
        self.leadership.fence().await?;
        let (current, _) = self.lease_epoch_watch(&req.region).await?;
        if current == 0 || current != req.region_lease_epoch {
            return Err(superseded(&req.region, req.region_lease_epoch, current));
        }
        let log = self.keys.region_events(&req.region);
        let head = self.keys.region_events_head(&req.region);
        let (snapshot, last) = if req.cursor.is_empty() {
            self.snapshot(&req.region).await?
        } else {
            (Vec::new(), req.cursor.clone())
        };
        let tail = Tail::new(self.db.clone(), log, head, &last, "cursor")?;
        let (out, rx) = mpsc::channel(256);
        let this = self.clone();
        let leader = self.leadership.subscribe();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            for event in snapshot {
                if out.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            this.follow_events(&req, last, tail, out, leader, shutdown)
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn ack_assignments(
        &self,
        request: Request<AckAssignmentsRequest>,
    ) -> Result<Response<AckAssignmentsResponse>, Status> {
        Peer::of(&request).check_region(&request.get_ref().region)?;
        let trace = request
            .metadata()
            .get(trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceId::from_traceparent);
        let req = request.into_inner();
        if let Some(trace) = trace {
            for ack in &req.acks {
                tracing::debug!(
                    target: trace::TARGET,
                    trace_id = %trace,
                    job_id = %ack.job_id,
                    region = %req.region,
                    "route: region acknowledged the assignment"
                );
            }
        }
        let (verdict, current_epoch, results) = self
            .batch(
                &req.region,
                req.region_lease_epoch,
                &req.acks,
                "acks",
                BatchKind::Ack,
                |tx, keys, ev, region, item, now| {
                    Box::pin(reports::ack(tx, keys, ev, region, item, now))
                },
            )
            .await?;
        Ok(Response::new(AckAssignmentsResponse {
            verdict: verdict as i32,
            current_epoch,
            results,
        }))
    }

    async fn report_status(
        &self,
        request: Request<ReportStatusRequest>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        Peer::of(&request).check_region(&request.get_ref().region)?;
        let req = request.into_inner();
        let (verdict, current_epoch, results) = self
            .batch(
                &req.region,
                req.region_lease_epoch,
                &req.updates,
                "updates",
                BatchKind::Status,
                |tx, keys, ev, region, item, now| {
                    Box::pin(reports::status(tx, keys, ev, region, item, now))
                },
            )
            .await?;
        Ok(Response::new(ReportStatusResponse {
            verdict: verdict as i32,
            current_epoch,
            results,
        }))
    }

    async fn report_capacity(
        &self,
        request: Request<ReportCapacityRequest>,
    ) -> Result<Response<ReportCapacityResponse>, Status> {
        Peer::of(&request).check_region(&request.get_ref().region)?;
        let fence = self.leadership.fence().await?;
        let response = self
            .registry
            .report_capacity(&fence, request.get_ref())
            .await?;
        self.kick.notify_one();
        Ok(Response::new(response))
    }

    async fn release_jobs(
        &self,
        request: Request<ReleaseJobsRequest>,
    ) -> Result<Response<ReleaseJobsResponse>, Status> {
        Peer::of(&request).check_region(&request.get_ref().region)?;
        let req = request.into_inner();
        let (verdict, current_epoch, results) = self
            .batch(
                &req.region,
                req.region_lease_epoch,
                &req.releases,
                "releases",
                BatchKind::Release,
                |tx, keys, ev, region, item, now| {
                    Box::pin(reports::release(tx, keys, ev, region, item, now))
                },
            )
            .await?;
        Ok(Response::new(ReleaseJobsResponse {
            verdict: verdict as i32,
            current_epoch,
            results,
        }))
    }
}
