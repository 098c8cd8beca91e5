//! One link leader's conversation with the global tier.
//!
//! Owns the region lease epoch obtained from RegisterRegion, its renewal, the
//! assignment stream and the upward reports. A session ends (and is started
//! again with backoff) when the stream breaks or the lease is refused; it
//! returns for good when the link lease is lost. Must never send a call with
//! an epoch the global tier has called stale.

use std::time::Duration;

use futures::FutureExt;
use meridian_control::lease::Fence;
use meridian_control::trace;
use meridian_control::{Backoff, BackoffConfig};
use meridian_proto::v1;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::apply::read_cursor;
use super::report::Reporter;
use super::{LinkConfig, LinkCtx, LinkState};
use crate::error::RegionalError;
use crate::pipeline::intake::Intake;
use crate::pipeline::upward::SetLink;
use crate::pipeline::{Authority, Intent, Outcome};

#[derive(Debug)]
pub(super) enum End {
    /// The link lease moved on: stop for good.
    Fenced,
    /// Anything else: reconnect after a backoff, to `leader` when the
    /// answer named one (`meridian-leader`), otherwise to the next endpoint.
    Retry { why: String, leader: Option<String> },
}

impl End {
    pub(super) fn retry(why: impl Into<String>) -> Self {
        End::Retry {
            why: why.into(),
            leader: None,
        }
    }
}

impl From<RegionalError> for End {
    fn from(e: RegionalError) -> Self {
        if e.is_fenced() {
            End::Fenced
        } else {
            End::retry(e.to_string())
        }
    }
}

impl From<tonic::Status> for End {
    fn from(s: tonic::Status) -> Self {
        let leader = (s.code() == tonic::Code::Unavailable)
            .then(|| s.metadata().get(meridian_proto::LEADER_METADATA_KEY))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(normalize);
        End::Retry {
            why: format!("{}: {}", s.code(), s.message()),
            leader,
        }
    }
}

impl From<tonic::transport::Error> for End {
    fn from(e: tonic::transport::Error) -> Self {
        End::retry(e.to_string())
    }
}

fn normalize(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// The global endpoints a link leader may talk to (`--global`, comma
/// separated) and the one it tries next.
#[derive(Debug, Clone)]
pub(super) struct Endpoints {
    list: Vec<String>,
    next: String,
}

impl Endpoints {
    pub(super) fn parse(global: &str) -> Self {
        let list: Vec<String> = global
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(normalize)
            .collect();
        let next = list.first().cloned().unwrap_or_default();
        Endpoints { list, next }
    }

    fn current(&self) -> &str {
        &self.next
    }

    /// After a failure: the hinted leader if there is one, otherwise the
    /// listed endpoint after the current one.
    fn advance(&mut self, leader: Option<String>) {
        if let Some(leader) = leader {
            self.next = leader;
            return;
        }
        if self.list.is_empty() {
            return;
        }
        let at = self.list.iter().position(|e| *e == self.next);
        let i = at.map_or(0, |i| (i + 1) % self.list.len());
        self.next = self.list[i].clone();
    }
}

pub(super) async fn run(
    ctx: LinkCtx,
    config: LinkConfig,
    fence: Fence,
    mut stop: oneshot::Receiver<()>,
) {
    let clock = ctx.clock.clone();
    let mut backoff = match Backoff::new(
        BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        },
        fence.epoch(),
    ) {
        Ok(b) => b,
        Err(_) => return,
    };
    let mut retry = 0;
    let mut endpoints = Endpoints::parse(&config.global);
    loop {
        let mut registered = false;
        let result = tokio::select! {
            _ = &mut stop => return,
            r = session(&ctx, &config, &fence, endpoints.current(), &mut registered) => r,
        };
        if registered {
            // The session got going: the next failure starts a fresh backoff.
            retry = 0;
        }
        match result {
            Err(End::Fenced) => {
                tracing::warn!("link lease lost; the link session ends");
                return;
            }
            Err(End::Retry { why, leader }) => {
                tracing::warn!(
                    reason = %why,
                    endpoint = endpoints.current(),
                    leader = leader.as_deref().unwrap_or("-"),
                    "link session ended; reconnecting"
                );
                if leader.is_some() {
                    // A replica named the leader: go there after a short
                    // jittered pause, without growing the backoff.
                    retry = 0;
                }
                endpoints.advance(leader);
            }
            Ok(()) => {}
        }
        let delay = backoff.delay(retry);
        retry = retry.saturating_add(1);
        tokio::select! {
            _ = &mut stop => return,
            _ = clock.sleep(delay) => {}
        }
    }
}

fn authority(fence: &Fence) -> Option<Authority> {
    Some(Authority {
        fence: fence.clone(),
        generation: None,
    })
}

async fn store_state(ctx: &LinkCtx, fence: &Fence, state: LinkState) -> Result<(), End> {
    ctx.pipeline
        .submit(authority(fence), Intent::SetLink(SetLink { state }))
        .await?;
    Ok(())
}

async fn session(
    ctx: &LinkCtx,
    config: &LinkConfig,
    fence: &Fence,
    global: &str,
    registered: &mut bool,
) -> Result<(), End> {
    let (db, keys, clock, identity) = (&ctx.db, &ctx.keys, &ctx.clock, &ctx.identity);
    // Through the network seam, so the simulation's network carries it.
    // HTTP/2 keep-alives: a global replica that vanished without closing
    // the connection (a partition, a frozen host) must end the assignment
    // stream within seconds, not when TCP gives up minutes later.
    let endpoint = tonic::transport::Endpoint::from_shared(global.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let mut client = RegionLinkClient::new(meridian_control::net::connect(endpoint).await?);
    let sent_at = clock.now_unix_ms();
    let reg = client
        .register_region(v1::RegisterRegionRequest {
            region: config.region.clone(),
            replica: Some(v1::ReplicaIdentity {
                replica_id: config.replica.clone(),
                boot_id: identity.boot_id.to_string(),
                endpoint: config.endpoint.clone(),
                zone: String::new(),
            }),
            leader_epoch: fence.epoch(),
            zones: Vec::new(),
            admin_endpoint: config.endpoint.clone(),
        })
        .await?
        .into_inner();
    if reg.verdict != v1::Verdict::Accepted as i32 {
        return Err(End::retry(format!(
            "RegisterRegion refused: leader epoch {} below {}",
            fence.epoch(),
            reg.current_leader_epoch
        )));
    }
    let epoch = reg.region_lease_epoch;
    *registered = true;
    let renew_every = Duration::from_millis(reg.renew_interval_ms.max(50));
    store_state(
        ctx,
        fence,
        LinkState {
            region_lease_epoch: epoch,
            lease_expires_unix_ms: sent_at.saturating_add(reg.lease_duration_ms),
        },
    )
    .await?;
    let cursor = read_cursor(db, keys).await?;
    let mut stream = client
        .assignments(v1::AssignmentsRequest {
            region: config.region.clone(),
            region_lease_epoch: epoch,
            cursor,
        })
        .await?
        .into_inner();
    // The region lease is renewed where the other leases are: on a thread
    // of its own, with a connection of its own, so a busy data path never
    // costs the region its lease at the global tier.
    let (renewed, mut renewals) = mpsc::unbounded_channel();
    let _renewer = AbortOnDrop(ctx.leases.spawn(renew_region_lease(
        global.to_string(),
        config.region.clone(),
        epoch,
        renew_every,
        clock.clone(),
        renewed,
    )));
    // Reports run beside the intake, never between two batches of it. The
    // reporter is stopped between two reports and awaited before the
    // session ends, so two reporters never overlap: a second one reading
    // what the first had not recorded yet could send an older version.
    let (stop_reporter, reporter_stopped) = watch::channel(false);
    let mut reporter = AbortOnDrop(tokio::spawn(
        Reporter {
            db: db.clone(),
            keys: keys.clone(),
            fence: fence.clone(),
            client: client.clone(),
            config: config.clone(),
            epoch,
            clock: clock.clone(),
            pipeline: ctx.pipeline.clone(),
            state: ctx.state.clone(),
        }
        .run(reporter_stopped),
    ));
    let ended = intake_loop(
        ctx,
        config,
        fence,
        &mut client,
        &mut stream,
        epoch,
        &mut renewals,
        &mut reporter,
    )
    .await;
    let _ = stop_reporter.send(true);
    // Finished already when its own end ended the session (a handle must not
    // be polled again after it answered).
    if !reporter.0.is_finished() {
        tokio::select! {
            _ = &mut reporter.0 => {}
            _ = clock.sleep(REPORTER_GRACE) => {
                tracing::warn!("status reporter did not stop in time; aborting it");
            }
        }
    }
    ended
}

/// Renews the region lease every `every` until refused; hands each renewed
/// expiry (or the refusal) to the session. Runs on the lease runtime, with
/// a connection made there.
async fn renew_region_lease(
    global: String,
    region: String,
    epoch: u64,
    every: Duration,
    clock: meridian_control::SharedClock,
    out: mpsc::UnboundedSender<Result<LinkState, End>>,
) {
    let endpoint = match tonic::transport::Endpoint::from_shared(global) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .timeout(every.max(Duration::from_millis(500)) * 2)
            .tcp_nodelay(true),
        Err(e) => {
            let _ = out.send(Err(End::retry(e.to_string())));
            return;
        }
    };
    let mut client = RegionLinkClient::new(meridian_control::net::connect_lazy(endpoint));
    loop {
        clock.sleep(every).await;
        let sent_at = clock.now_unix_ms();
        let answer = client
            .renew_region_lease(v1::RenewRegionLeaseRequest {
                region: region.clone(),
                region_lease_epoch: epoch,
            })
            .await;
        let sent = match answer {
            Ok(r) => {
                let r = r.into_inner();
                if r.verdict != v1::Verdict::Accepted as i32 {
                    let _ = out.send(Err(End::retry(format!(
                        "region lease renewal refused (verdict {})",
                        r.verdict
                    ))));
                    return;
                }
                out.send(Ok(LinkState {
                    region_lease_epoch: epoch,
                    lease_expires_unix_ms: sent_at.saturating_add(r.lease_duration_ms),
                }))
            }
            // A failed renewal is tried again at the next tick; the session
            // ends by itself when its stream breaks.
            Err(status) => {
                tracing::warn!(%status, "region lease renewal failed; retrying");
                Ok(())
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// How long a session's end waits for its reporter to finish its report.
const REPORTER_GRACE: Duration = Duration::from_secs(15);

/// The intake half of a session: assignments in, lease renewals, until a
/// failure (of its own or the reporter's) ends the session.
#[allow(clippy::too_many_arguments)]
async fn intake_loop(
    ctx: &LinkCtx,
    config: &LinkConfig,
    fence: &Fence,
    client: &mut RegionLinkClient<tonic::transport::Channel>,
    stream: &mut tonic::Streaming<v1::AssignmentEvent>,
    epoch: u64,
    renewals: &mut mpsc::UnboundedReceiver<Result<LinkState, End>>,
    reporter: &mut AbortOnDrop<Result<(), End>>,
) -> Result<(), End> {
    let clock = &ctx.clock;
    loop {
        tokio::select! {
            msg = stream.message() => {
                // Take what the stream already holds with it (up to a bound),
                // store it in one transaction and acknowledge it in one call.
                let mut events = Vec::new();
                let mut bytes = 0;
                let mut end = None;
                let mut next = Some(msg);
                while let Some(msg) = next.take() {
                    match msg {
                        Ok(Some(e)) => {
                            bytes += e.encoded_len();
                            events.push(e);
                        }
                        Ok(None) => {
                            end = Some(Ok(()));
                            break;
                        }
                        Err(s) => {
                            end = Some(Err(s));
                            break;
                        }
                    }
                    if events.len() < INTAKE_BATCH && bytes < INTAKE_BATCH_BYTES {
                        next = stream.message().now_or_never();
                    }
                }
                if !events.is_empty() {
                    intake(ctx, fence, client, config, epoch, &events, clock.now_unix_ms()).await?;
                }
                match end {
                    None => {}
                    Some(Ok(())) => return Err(End::retry("assignment stream ended")),
                    Some(Err(s)) if s.code() == tonic::Code::OutOfRange => {
                        // The cursor is too old: start again from a snapshot.
                        ctx.pipeline
                            .submit(
                                authority(fence),
                                Intent::Intake(Intake {
                                    events: Vec::new(),
                                    cursor: Some(Vec::new()),
                                    now_unix_ms: clock.now_unix_ms(),
                                }),
                            )
                            .await?;
                        return Err(End::retry("cursor out of range"));
                    }
                    Some(Err(s)) => return Err(s.into()),
                }
            }
            renewal = renewals.recv() => match renewal {
                Some(Ok(state)) => store_state(ctx, fence, state).await?,
                Some(Err(end)) => return Err(end),
                None => return Err(End::retry("region lease renewal stopped")),
            },
            ended = &mut reporter.0 => {
                return match ended {
                    Ok(Err(end)) => Err(end),
                    Ok(Ok(())) => Err(End::retry("status reporter ended")),
                    Err(e) => Err(End::retry(format!("status reporter failed: {e}"))),
                };
            }
        }
    }
}

fn count_event(event: &v1::AssignmentEvent, applied: crate::jobs::Applied) {
    let kind = match v1::AssignmentEventKind::try_from(event.kind) {
        Ok(v1::AssignmentEventKind::Assign) => "assign",
        Ok(v1::AssignmentEventKind::Cancel) => "cancel",
        Ok(v1::AssignmentEventKind::Revoke) => "revoke",
        _ => return,
    };
    crate::metrics::assignment(kind, applied == crate::jobs::Applied::Changed);
}

/// The region's step of a job's trace: the ASSIGN was stored and is being
/// acknowledged.
fn intake_span(region: &str, event: &v1::AssignmentEvent) -> tracing::Span {
    let span = tracing::info_span!(
        "intake",
        trace_id = %event.trace_id,
        job_id = %event.job_id,
        region = %region,
        assignment_epoch = event.assignment_epoch,
    );
    trace::link(&span, trace::stored(&event.trace_id));
    span.in_scope(|| {
        tracing::debug!(
            target: trace::TARGET,
            trace_id = %event.trace_id,
            job_id = %event.job_id,
            region = %region,
            "intake: assignment stored by the region"
        );
    });
    span
}

/// Stores a batch of events and acknowledges its ASSIGNs in one call; a job
/// whose hold moved on before the acknowledgement is dropped.
#[allow(clippy::too_many_arguments)]
async fn intake(
    ctx: &LinkCtx,
    fence: &Fence,
    client: &mut RegionLinkClient<tonic::transport::Channel>,
    config: &LinkConfig,
    epoch: u64,
    events: &[v1::AssignmentEvent],
    now_unix_ms: u64,
) -> Result<(), End> {
    let applied = match ctx
        .pipeline
        .submit(
            authority(fence),
            Intent::Intake(Intake {
                events: events.to_vec(),
                cursor: None,
                now_unix_ms,
            }),
        )
        .await?
    {
        Outcome::Intake(applied) => applied,
        other => {
            return Err(End::from(RegionalError::Internal(format!(
                "an intake answered {other:?}"
            ))));
        }
    };
    let mut assigned = Vec::new();
    for (event, applied) in events.iter().zip(applied) {
        count_event(event, applied);
        if event.kind == v1::AssignmentEventKind::Assign as i32 {
            assigned.push(event);
        }
    }
    if assigned.is_empty() {
        return Ok(());
    }
    let spans: Vec<tracing::Span> = assigned
        .iter()
        .map(|e| intake_span(&config.region, e))
        .collect();
    let mut request = tonic::Request::new(v1::AckAssignmentsRequest {
        region: config.region.clone(),
        region_lease_epoch: epoch,
        acks: assigned
            .iter()
            .map(|e| v1::JobEpoch {
                job_id: e.job_id.clone(),
                assignment_epoch: e.assignment_epoch,
            })
            .collect(),
    });
    // A call carries one trace: the one of a lone job. Batched jobs keep
    // their trace ids in their records and on their intake spans.
    if let [event] = assigned.as_slice()
        && let Some(value) = trace::stored(&event.trace_id)
            .and_then(|t| tonic::metadata::MetadataValue::try_from(t.traceparent()).ok())
    {
        request.metadata_mut().insert(trace::TRACEPARENT, value);
    }
    let call = client.ack_assignments(request);
    let r = match spans.first() {
        Some(span) => call.instrument(span.clone()).await?,
        None => call.await?,
    }
    .into_inner();
    drop(spans);
    if r.verdict != v1::Verdict::Accepted as i32 {
        crate::metrics::fencing_rejection("region_lease");
        return Err(End::retry("acknowledgement refused: stale region lease"));
    }
    let stale: Vec<(String, u64)> = assigned
        .iter()
        .zip(&r.results)
        .filter(|(_, item)| item.verdict == v1::Verdict::StaleEpoch as i32)
        .map(|(event, item)| {
            crate::metrics::fencing_rejection("assignment");
            (
                event.job_id.clone(),
                item.current_epoch.max(event.assignment_epoch + 1),
            )
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    // The hold moved on before we acknowledged it: drop those jobs.
    let revokes = stale
        .into_iter()
        .map(|(job, newer)| v1::AssignmentEvent {
            kind: v1::AssignmentEventKind::Revoke as i32,
            job_id: job,
            assignment_epoch: newer,
            ..Default::default()
        })
        .collect();
    ctx.pipeline
        .submit(
            authority(fence),
            Intent::Intake(Intake {
                events: revokes,
                cursor: None,
                now_unix_ms,
            }),
        )
        .await?;
    Ok(())
}

/// Aborts the task when the session that spawned it ends.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Most events taken from the assignment stream into one transaction.
const INTAKE_BATCH: usize = 256;
/// And at most about this many encoded bytes (far below the store's
/// transaction size limit, whatever the specs' sizes).
const INTAKE_BATCH_BYTES: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comma_separated_global_endpoints_are_tried_in_turn_unless_a_leader_is_named() {
        let mut e = Endpoints::parse("127.0.0.1:1, http://127.0.0.1:2");
        assert_eq!(e.current(), "http://127.0.0.1:1");
        e.advance(None);
        assert_eq!(e.current(), "http://127.0.0.1:2");
        e.advance(None);
        assert_eq!(e.current(), "http://127.0.0.1:1");
        e.advance(Some("http://127.0.0.1:2".into()));
        assert_eq!(e.current(), "http://127.0.0.1:2");
        e.advance(None);
        assert_eq!(e.current(), "http://127.0.0.1:1");
    }

    #[test]
    fn an_unavailable_answer_naming_the_leader_is_followed() {
        let mut s = tonic::Status::unavailable("not the leader");
        s.metadata_mut().insert(
            meridian_proto::LEADER_METADATA_KEY,
            "http://127.0.0.1:9".parse().expect("metadata"),
        );
        match End::from(s) {
            End::Retry { leader, .. } => assert_eq!(leader.as_deref(), Some("http://127.0.0.1:9")),
            End::Fenced => panic!("not fenced"),
        }
    }
}
