//! Applying the global tier's assignment events to the region store.
//!
//! Owns the one transaction per batch of events: check the link leader's
//! fence, apply each event idempotently ([`crate::jobs`]), and store the
//! stream cursor with them, so a resumed stream starts exactly after the last
//! applied event and a duplicate or reordered event changes nothing. Must
//! never apply an event without storing its cursor in the same transaction.

use meridian_control::lease::Fence;
use meridian_proto::v1;
use meridian_store::Database;

use crate::error::{RegionalError, Result};
use crate::jobs::{Applied, apply_assign_traced, apply_cancel, apply_revoke};
use crate::model::Keys;

/// Applies `event` under `fence`; returns what changed.
pub async fn apply_event(
    db: &Database,
    keys: &Keys,
    fence: &Fence,
    event: &v1::AssignmentEvent,
    now_unix_ms: u64,
) -> Result<Applied> {
    let applied = apply_events(db, keys, fence, std::slice::from_ref(event), now_unix_ms).await?;
    Ok(applied.into_iter().next().unwrap_or(Applied::Unchanged))
}

/// Applies `events`, in stream order, in one transaction under `fence`,
/// storing the cursor of the last one that carries a cursor; returns what
/// each changed. One transaction per batch instead of per event is what
/// lets a region take in thousands of jobs a second.
pub async fn apply_events(
    db: &Database,
    keys: &Keys,
    fence: &Fence,
    events: &[v1::AssignmentEvent],
    now_unix_ms: u64,
) -> Result<Vec<Applied>> {
    db.run(|tx, _| {
        let keys = keys.clone();
        let fence = fence.clone();
        async move {
            fence.check(&tx).await?;
            let mut out = Vec::with_capacity(events.len());
            let mut cursor: Option<&[u8]> = None;
            for event in events {
                out.push(apply_one(&tx, &keys, event, now_unix_ms).await?);
                if !event.cursor.is_empty() {
                    cursor = Some(&event.cursor);
                }
            }
            if let Some(cursor) = cursor {
                tx.set(&keys.link_cursor(), cursor)?;
            }
            Ok(out)
        }
    })
    .await
}

async fn apply_one(
    tx: &meridian_store::Transaction,
    keys: &Keys,
    event: &v1::AssignmentEvent,
    now_unix_ms: u64,
) -> Result<Applied> {
    let kind = v1::AssignmentEventKind::try_from(event.kind)
        .unwrap_or(v1::AssignmentEventKind::Unspecified);
    Ok(match kind {
        v1::AssignmentEventKind::Assign => {
            let spec = event
                .spec
                .as_ref()
                .ok_or_else(|| RegionalError::invalid("spec", "ASSIGN without a spec"))?;
            let created = if event.job_created_at_unix_ms > 0 {
                event.job_created_at_unix_ms
            } else {
                now_unix_ms
            };
            apply_assign_traced(
                tx,
                keys,
                &event.job_id,
                event.assignment_epoch,
                &event.request_id,
                spec,
                created,
                &event.trace_id,
            )
            .await?
        }
        v1::AssignmentEventKind::Cancel => {
            apply_cancel(tx, keys, &event.job_id, event.assignment_epoch).await?
        }
        v1::AssignmentEventKind::Revoke => {
            apply_revoke(tx, keys, &event.job_id, event.assignment_epoch).await?
        }
        _ => Applied::Unchanged,
    })
}

/// The persisted cursor (empty when none).
pub async fn read_cursor(db: &Database, keys: &Keys) -> Result<Vec<u8>> {
    db.run(|tx, _| {
        let key = keys.link_cursor();
        async move { Ok::<_, RegionalError>(tx.get(&key).await?.unwrap_or_default()) }
    })
    .await
}
