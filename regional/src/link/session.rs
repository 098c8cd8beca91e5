//! One link leader's conversation with the global tier.
//!
//! Owns the region lease epoch obtained from RegisterRegion, its renewal, the
//! assignment stream and the upward reports. A session ends when the stream
//! breaks or the lease is refused, and is started again where and when
//! control's retry rule says (the hinted global leader at once, otherwise
//! the next global endpoint after a backoff); registration and lease calls
//! have the rule's per-attempt deadline, a capacity report is skipped when
//! not answered within it, and status reports and releases wait for their
//! answer (the HTTP/2 keep-alive ends a session whose global replica
//! vanished). It returns for good when the link
//! lease is lost. Must never send a call with an epoch the global tier has
//! called stale, nor classify a status itself.

use meridian_control::tls::Security;
use std::time::Duration;

use futures::FutureExt;
use meridian_control::BackoffConfig;
use meridian_control::lease::Fence;
use meridian_control::rpc::{self, Refusal, Replicas, RpcVerdict};
use meridian_control::trace;
use meridian_proto::v1;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::ack::Acks;
use super::apply::read_cursor;
use super::refuse;
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
    /// Anything else: start again where and when the retry rule says.
    Retry { why: String, verdict: RpcVerdict },
}

impl End {
    /// A session end that is not a failed call (a refusal in an answer, a
    /// stream that ended): the next endpoint, after a backoff.
    pub(super) fn retry(why: impl Into<String>) -> Self {
        End::Retry {
            why: why.into(),
            verdict: RpcVerdict::Backoff { move_on: true },
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
        End::Retry {
            why: format!("{}: {}", s.code(), s.message()),
            verdict: RpcVerdict::of(&s),
        }
    }
}

impl From<tonic::transport::Error> for End {
    fn from(e: tonic::transport::Error) -> Self {
        End::Retry {
            why: e.to_string(),
            verdict: RpcVerdict::of_transport(&e),
        }
    }
}

/// Pauses between sessions: from 100 ms doubling up to 5 s.
const LINK_BACKOFF: BackoffConfig = BackoffConfig {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
};

pub(super) async fn run(
    ctx: LinkCtx,
    config: LinkConfig,
    fence: Fence,
    mut stop: oneshot::Receiver<()>,
) {
    let clock = ctx.clock.clone();
    let given = rpc::parse_endpoints(&config.global);
    let mut replicas = match Replicas::new(given, 0, LINK_BACKOFF, fence.epoch()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(global = %config.global, error = %e, "no usable global endpoint; the link stays idle");
            let _ = stop.await;
            return;
        }
    };
    loop {
        let mut registered = false;
        let global = replicas.current().to_string();
        let result = tokio::select! {
            _ = &mut stop => return,
            r = session(&ctx, &config, &fence, &global, &mut registered) => r,
        };
        if registered {
            // The session got going: the next failure starts the rule over.
            replicas.answered();
        }
        let delay = match result {
            Err(End::Fenced) => {
                tracing::warn!("link lease lost; the link session ends");
                return;
            }
            Err(End::Retry { why, verdict }) => {
                let delay = match replicas.after(&verdict) {
                    Some(step) => step.wait,
                    // A refusal the rule fails: the link must not stop while
                    // it holds its lease, so it tries the next endpoint, no
                    // sooner than a full backoff.
                    None => {
                        replicas.move_for(&RpcVerdict::Backoff { move_on: true });
                        replicas.pause_at_cap()
                    }
                };
                tracing::warn!(
                    reason = %why,
                    endpoint = %global,
                    ?verdict,
                    next = replicas.current(),
                    ?delay,
                    "link session ended; reconnecting"
                );
                delay
            }
            Ok(()) => replicas.back_off(),
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = clock.sleep(delay) => {}
        }
    }
}

pub(super) fn authority(fence: &Fence) -> Option<Authority> {
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
    let (db, keys, clock) = (&ctx.db, &ctx.keys, &ctx.clock);
    let mut client = connect(global, &config.security).await?;
    let (epoch, renew_every) = register(ctx, config, fence, &mut client, registered).await?;
    let cursor = read_cursor(db, keys).await?;
    let open = client.assignments(v1::AssignmentsRequest {
        region: config.region.clone(),
        region_lease_epoch: epoch,
        cursor,
    });
    let mut stream = rpc::attempt(clock.as_ref(), rpc::DEFAULT_ATTEMPT_DEADLINE, open)
        .await?
        .into_inner();
    // The region lease is renewed where the other leases are: on a thread
    // of its own, with a connection of its own, so a busy data path never
    // costs the region its lease at the global tier.
    let (renewed, mut renewals) = mpsc::unbounded_channel();
    let _renewer = AbortOnDrop(ctx.leases.spawn(renew_region_lease(
        global.to_string(),
        config.security.clone(),
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
    let reporter = AbortOnDrop(tokio::spawn(
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
    let (acks, acker) = Acks::start(
        ctx.clone(),
        client.clone(),
        config.clone(),
        fence.clone(),
        epoch,
    );
    let mut beside = Beside {
        reporter,
        acks,
        acker: AbortOnDrop(acker),
    };
    let ended = intake_loop(
        ctx,
        config,
        fence,
        &mut client,
        &mut stream,
        epoch,
        &mut renewals,
        &mut beside,
    )
    .await;
    stop_reporter_in_time(&stop_reporter, &mut beside.reporter, clock).await;
    let Beside { acks, acker, .. } = beside;
    finish_acks(acks, acker, clock).await;
    ended
}

/// A connection to the global replica at `global`.
async fn connect(
    global: &str,
    security: &Security,
) -> Result<RegionLinkClient<tonic::transport::Channel>, End> {
    // Through the network seam when plain, so the simulation's network
    // carries it; over TLS with this region's certificate otherwise.
    // HTTP/2 keep-alives: a global replica that vanished without closing
    // the connection (a partition, a frozen host) must end the assignment
    // stream within seconds, not when TCP gives up minutes later.
    let endpoint = tonic::transport::Endpoint::from_shared(global.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(RegionLinkClient::new(
        meridian_control::tls::stream::connect(endpoint, security).await?,
    ))
}

/// Registers this replica as the region's link and records the region lease
/// it got; its epoch and how often to renew it.
async fn register(
    ctx: &LinkCtx,
    config: &LinkConfig,
    fence: &Fence,
    client: &mut RegionLinkClient<tonic::transport::Channel>,
    registered: &mut bool,
) -> Result<(u64, Duration), End> {
    let (clock, identity) = (&ctx.clock, &ctx.identity);
    let sent_at = clock.now_unix_ms();
    let register = client.register_region(v1::RegisterRegionRequest {
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
    });
    let reg = rpc::attempt(clock.as_ref(), rpc::DEFAULT_ATTEMPT_DEADLINE, register)
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
    let prev = ctx.state.read().link;
    store_state(
        ctx,
        fence,
        // Not caught up with this epoch's stream yet: agents go on being
        // told the last caught-up lease.
        LinkState {
            region_lease_epoch: epoch,
            lease_expires_unix_ms: sent_at.saturating_add(reg.lease_duration_ms),
            synced_epoch: 0,
            synced_expires_unix_ms: 0,
        }
        .marked(false, prev),
    )
    .await?;
    Ok((epoch, renew_every))
}

/// Tells the reporter to stop and waits a bounded time for it.
async fn stop_reporter_in_time(
    stop_reporter: &watch::Sender<bool>,
    reporter: &mut AbortOnDrop<Result<(), End>>,
    clock: &meridian_control::SharedClock,
) {
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
}

/// Lets the acknowledgements of a session that ends send what is queued:
/// the intake stored those ASSIGNs, and the stream may have ended right
/// after (a global failover) while the global tier still answers. Bounded
/// by the reporter's grace; what is left then is dropped, as a crash would.
async fn finish_acks(
    acks: Acks,
    mut acker: AbortOnDrop<Result<(), End>>,
    clock: &meridian_control::SharedClock,
) {
    drop(acks);
    if !acker.0.is_finished() {
        tokio::select! {
            _ = &mut acker.0 => {}
            _ = clock.sleep(REPORTER_GRACE) => {
                tracing::warn!("acknowledgements did not finish in time; dropping them");
            }
        }
    }
}

/// Renews the region lease every `every` until refused; hands each renewed
/// expiry (or the refusal) to the session. Runs on the lease runtime, with
/// a connection made there.
async fn renew_region_lease(
    global: String,
    security: Security,
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
    let mut client =
        RegionLinkClient::new(meridian_control::tls::stream::channel(endpoint, &security));
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
                    // The intake loop sets these from what it knows.
                    synced_epoch: 0,
                    synced_expires_unix_ms: 0,
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

/// What runs beside a session's intake: the reporter and the
/// acknowledgements; either failing ends the session.
struct Beside {
    reporter: AbortOnDrop<Result<(), End>>,
    acks: Acks,
    acker: AbortOnDrop<Result<(), End>>,
}

/// How a task beside the intake ended, as the session's end.
fn ended_beside(
    what: &str,
    ended: Result<Result<(), End>, tokio::task::JoinError>,
) -> Result<(), End> {
    match ended {
        Ok(Err(end)) => Err(end),
        Ok(Ok(())) => Err(End::retry(format!("{what} ended"))),
        Err(e) => Err(End::retry(format!("{what} failed: {e}"))),
    }
}

/// The intake half of a session: assignments in, lease renewals, until a
/// failure (of its own or of what runs beside it) ends the session.
#[allow(clippy::too_many_arguments)]
async fn intake_loop(
    ctx: &LinkCtx,
    config: &LinkConfig,
    fence: &Fence,
    client: &mut RegionLinkClient<tonic::transport::Channel>,
    stream: &mut tonic::Streaming<v1::AssignmentEvent>,
    epoch: u64,
    renewals: &mut mpsc::UnboundedReceiver<Result<LinkState, End>>,
    beside: &mut Beside,
) -> Result<(), End> {
    let clock = &ctx.clock;
    // The last lease state stored, and whether the stream has caught up
    // (its first bookmark applied): from then on shard leaders may place.
    let mut last: Option<LinkState> = None;
    let mut synced = false;
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
                    let caught_up = events
                        .iter()
                        .any(|e| e.kind == v1::AssignmentEventKind::Bookmark as i32);
                    let assigned =
                        intake(ctx, fence, client, config, epoch, &events, clock.now_unix_ms())
                            .await?;
                    beside.acks.send(assigned).await?;
                    if caught_up && !synced {
                        // Every change written before the stream caught up
                        // (a revocation while the lease had run out among
                        // them) is applied: placing is safe again.
                        synced = true;
                        // The lease as last stored (registration's state
                        // is in memory by now); without one, the next
                        // renewal records the catch-up.
                        let stored = last.or_else(|| ctx.state.read().link);
                        if let Some(state) = stored.filter(|s| s.region_lease_epoch == epoch) {
                            let state = state.marked(true, None);
                            store_state(ctx, fence, state).await?;
                            last = Some(state);
                        }
                    }
                }
                match end {
                    None => {}
                    Some(Ok(())) => return Err(End::retry("assignment stream ended")),
                    Some(Err(s)) if Refusal::of(&s) == Refusal::CursorExpired => {
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
                Some(Ok(state)) => {
                    let prev = last.or_else(|| ctx.state.read().link);
                    let state = state.marked(synced, prev);
                    store_state(ctx, fence, state).await?;
                    last = Some(state);
                }
                Some(Err(end)) => return Err(end),
                None => return Err(End::retry("region lease renewal stopped")),
            },
            ended = &mut beside.reporter.0 => return ended_beside("status reporter", ended),
            ended = &mut beside.acker.0 => return ended_beside("acknowledgements", ended),
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
pub(super) fn intake_span(region: &str, event: &v1::AssignmentEvent) -> tracing::Span {
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

/// Stores a batch of events (refusals reported first); returns its ASSIGNs,
/// stored, for acknowledgement.
async fn intake(
    ctx: &LinkCtx,
    fence: &Fence,
    client: &mut RegionLinkClient<tonic::transport::Channel>,
    config: &LinkConfig,
    epoch: u64,
    events: &[v1::AssignmentEvent],
    now_unix_ms: u64,
) -> Result<Vec<v1::AssignmentEvent>, End> {
    // Refusals go up first: only then may the cursor pass them.
    let refused: Vec<(&v1::AssignmentEvent, String)> = events
        .iter()
        .filter_map(|e| refuse::refusal(e).map(|why| (e, why)))
        .collect();
    refuse::fail_upward(client, config, epoch, &refused).await?;
    let cursor = events
        .iter()
        .rev()
        .find(|e| !e.cursor.is_empty())
        .map(|e| e.cursor.clone());
    let events: Vec<v1::AssignmentEvent> = events
        .iter()
        .filter(|e| !refused.iter().any(|(r, _)| std::ptr::eq(*r, *e)))
        .cloned()
        .collect();
    let applied = store_events(ctx, fence, &events, cursor, now_unix_ms).await?;
    let mut assigned = Vec::new();
    for (event, applied) in events.into_iter().zip(applied) {
        count_event(&event, applied);
        if event.kind == v1::AssignmentEventKind::Assign as i32 {
            assigned.push(event);
        }
    }
    Ok(assigned)
}

/// Stores a batch of events in one intent; what each did.
async fn store_events(
    ctx: &LinkCtx,
    fence: &Fence,
    events: &[v1::AssignmentEvent],
    cursor: Option<Vec<u8>>,
    now_unix_ms: u64,
) -> Result<Vec<crate::jobs::Applied>, End> {
    match ctx
        .pipeline
        .submit(
            authority(fence),
            Intent::Intake(Intake {
                events: events.to_vec(),
                cursor,
                now_unix_ms,
            }),
        )
        .await?
    {
        Outcome::Intake(applied) => Ok(applied),
        other => Err(End::from(RegionalError::Internal(format!(
            "an intake answered {other:?}"
        )))),
    }
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
    fn an_unavailable_answer_naming_the_leader_ends_the_session_towards_it() {
        let mut s = tonic::Status::unavailable("not the leader");
        s.metadata_mut().insert(
            meridian_proto::LEADER_METADATA_KEY,
            "127.0.0.1:9/".parse().expect("metadata"),
        );
        match End::from(s) {
            End::Retry { verdict, .. } => {
                assert_eq!(verdict, RpcVerdict::RetryAt("http://127.0.0.1:9".into()));
            }
            End::Fenced => panic!("not fenced"),
        }
    }

    #[test]
    fn a_refused_call_is_not_retried_as_if_it_were_a_lost_connection() {
        match End::from(tonic::Status::invalid_argument("region: unknown")) {
            End::Retry { verdict, .. } => assert_eq!(verdict, RpcVerdict::Fail),
            End::Fenced => panic!("not fenced"),
        }
    }
}
