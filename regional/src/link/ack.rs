//! Acknowledging stored ASSIGNs to the global tier, beside the intake.
//!
//! Owns the acknowledgement calls of one session: the intake hands over the
//! ASSIGNs of each batch it has stored and goes on with the next batch at
//! once; one call is in flight at a time and takes every batch queued
//! meanwhile (up to the call's limit), so a slow acknowledgement (it commits
//! to the global store) delays no later job's intake and placement. A job
//! whose hold moved on before its acknowledgement is revoked here at the
//! newer epoch (idempotent, and ignored when a newer event already reached
//! the job). Must never acknowledge an ASSIGN before the intake has stored
//! it, and never run past its session: a session that ends lets it send
//! what is queued within a grace, then drops the rest, as a crash would
//! (placement never waited for the acknowledgement).

use meridian_control::lease::Fence;
use meridian_control::rpc;
use meridian_control::trace;
use meridian_proto::limits::MAX_BATCH_ITEMS;
use meridian_proto::v1;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::session::{End, authority};
use super::{LinkConfig, LinkCtx};
use crate::pipeline::Intent;
use crate::pipeline::intake::Intake;

/// Batches queued for acknowledgement at most before the intake waits.
const QUEUED_BATCHES: usize = 64;

/// The intake's end of the acknowledgements.
pub(super) struct Acks {
    queue: mpsc::Sender<Vec<v1::AssignmentEvent>>,
}

impl Acks {
    /// Starts acknowledging for one session; the task ends with the first
    /// error (the session then ends too) or when the intake drops `Acks`.
    pub(super) fn start(
        ctx: LinkCtx,
        client: RegionLinkClient<tonic::transport::Channel>,
        config: LinkConfig,
        fence: Fence,
        epoch: u64,
    ) -> (Acks, tokio::task::JoinHandle<Result<(), End>>) {
        let (queue, rx) = mpsc::channel(QUEUED_BATCHES);
        let task = tokio::spawn(run(ctx, client, config, fence, epoch, rx));
        (Acks { queue }, task)
    }

    /// Queues the stored ASSIGNs of one batch; waits only when
    /// [`QUEUED_BATCHES`] are already queued.
    pub(super) async fn send(&self, assigned: Vec<v1::AssignmentEvent>) -> Result<(), End> {
        if assigned.is_empty() {
            return Ok(());
        }
        self.queue
            .send(assigned)
            .await
            .map_err(|_| End::retry("acknowledgements stopped"))
    }
}

async fn run(
    ctx: LinkCtx,
    mut client: RegionLinkClient<tonic::transport::Channel>,
    config: LinkConfig,
    fence: Fence,
    epoch: u64,
    mut rx: mpsc::Receiver<Vec<v1::AssignmentEvent>>,
) -> Result<(), End> {
    let mut carried: Option<Vec<v1::AssignmentEvent>> = None;
    loop {
        let mut call = match carried.take() {
            Some(batch) => batch,
            None => match rx.recv().await {
                Some(batch) => batch,
                None => return Ok(()),
            },
        };
        while call.len() < MAX_BATCH_ITEMS {
            let Ok(more) = rx.try_recv() else { break };
            if call.len() + more.len() > MAX_BATCH_ITEMS {
                carried = Some(more);
                break;
            }
            call.extend(more);
        }
        let stale = acknowledge(&ctx, &mut client, &config, epoch, &call).await?;
        if !stale.is_empty() {
            drop_moved(&ctx, &fence, stale, ctx.clock.now_unix_ms()).await?;
        }
    }
}

/// Acknowledges the stored ASSIGNs in one call; the jobs whose hold moved
/// on meanwhile, each with an epoch newer than the one acknowledged.
async fn acknowledge(
    ctx: &LinkCtx,
    client: &mut RegionLinkClient<tonic::transport::Channel>,
    config: &LinkConfig,
    epoch: u64,
    assigned: &[v1::AssignmentEvent],
) -> Result<Vec<(String, u64)>, End> {
    let spans: Vec<tracing::Span> = assigned
        .iter()
        .map(|e| super::session::intake_span(&config.region, e))
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
    if let [event] = assigned
        && let Some(value) = trace::stored(&event.trace_id)
            .and_then(|t| tonic::metadata::MetadataValue::try_from(t.traceparent()).ok())
    {
        request.metadata_mut().insert(trace::TRACEPARENT, value);
    }
    let call = rpc::attempt(
        ctx.clock.as_ref(),
        rpc::DEFAULT_ATTEMPT_DEADLINE,
        client.ack_assignments(request),
    );
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
    let stale = assigned
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
    Ok(stale)
}

/// Revokes, at the newer epoch, the jobs whose hold moved on.
async fn drop_moved(
    ctx: &LinkCtx,
    fence: &Fence,
    stale: Vec<(String, u64)>,
    now_unix_ms: u64,
) -> Result<(), End> {
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
