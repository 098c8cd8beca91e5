//! Assignments this region cannot take: failed upward, never a poison pill.
//!
//! Owns what the link does with an ASSIGN whose spec this region cannot turn
//! into a job (no spec, or one its conversion refuses: a form of affinity
//! the region does not support, or a spec from a newer global tier). The
//! job is reported FAILED to the global tier under the assignment's epoch,
//! with the region's reason, and left out of the intake, so the events
//! behind it are stored and acknowledged as usual. Before this, one such
//! event failed the whole intake, the session started again from the same
//! cursor, and the region took no assignment at all.
//!
//! Must never leave such an event behind the persisted cursor before the
//! global tier accepted the failure: the report goes first, and a failed
//! report ends the session, so the event is read again.

use meridian_proto::v1;
use meridian_proto::v1::region_link_client::RegionLinkClient;

use super::LinkConfig;
use super::session::End;
use crate::model::job_from_spec;

/// Why the region cannot take `event`, if it is an ASSIGN it cannot take.
pub(super) fn refusal(event: &v1::AssignmentEvent) -> Option<String> {
    if event.kind != v1::AssignmentEventKind::Assign as i32 {
        return None;
    }
    let Some(spec) = &event.spec else {
        return Some("the assignment carries no spec".into());
    };
    job_from_spec(
        &event.job_id,
        event.assignment_epoch,
        &event.request_id,
        spec,
        0,
    )
    .err()
    .map(|e| e.to_string())
}

/// Reports each refused job FAILED with its reason; returns once the global
/// tier answered for all of them.
pub(super) async fn fail_upward(
    client: &mut RegionLinkClient<tonic::transport::Channel>,
    config: &LinkConfig,
    region_lease_epoch: u64,
    refused: &[(&v1::AssignmentEvent, String)],
) -> Result<(), End> {
    if refused.is_empty() {
        return Ok(());
    }
    let updates = refused
        .iter()
        .map(|(event, why)| v1::JobStatusUpdate {
            job_id: event.job_id.clone(),
            assignment_epoch: event.assignment_epoch,
            // The first and only report of this hold.
            status_version: 1,
            state: v1::JobState::Failed as i32,
            failure_reason: format!("region {} cannot run this job: {why}", config.region),
            ..Default::default()
        })
        .collect();
    let answer = client
        .report_status(v1::ReportStatusRequest {
            region: config.region.clone(),
            region_lease_epoch,
            updates,
        })
        .await?
        .into_inner();
    if answer.verdict != v1::Verdict::Accepted as i32 {
        return Err(End::retry("refusal report refused: stale region lease"));
    }
    for ((event, why), item) in refused.iter().zip(&answer.results) {
        crate::metrics::assignment_refused();
        // A hold that moved on meanwhile answers STALE_EPOCH: the job is
        // another region's now, which is just as final for this one.
        tracing::error!(
            job_id = %event.job_id,
            assignment_epoch = event.assignment_epoch,
            reason = %why,
            verdict = item.verdict,
            "assignment refused: reported FAILED to the global tier"
        );
    }
    Ok(())
}
