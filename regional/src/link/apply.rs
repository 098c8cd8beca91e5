//! Applying the global tier's assignment events to the region store.
//!
//! Owns the one transaction per event: check the link leader's fence, apply
//! the event idempotently ([`crate::jobs`]), and store the stream cursor with
//! it, so a resumed stream starts exactly after the last applied event and a
//! duplicate or reordered event changes nothing. Must never apply an event
//! without storing its cursor in the same transaction.

use meridian_control::lease::Fence;
use meridian_proto::v1;
use meridian_store::Database;

use crate::error::{RegionalError, Result};
use crate::jobs::{Applied, apply_assign, apply_cancel, apply_revoke};
use crate::model::Keys;

/// Applies `event` under `fence`; returns what changed.
pub async fn apply_event(
    db: &Database,
    keys: &Keys,
    fence: &Fence,
    event: &v1::AssignmentEvent,
    now_unix_ms: u64,
) -> Result<Applied> {
    db.run(|tx, _| {
        let keys = keys.clone();
        let fence = fence.clone();
        let event = event.clone();
        async move {
            fence.check(&tx).await?;
            let kind = v1::AssignmentEventKind::try_from(event.kind)
                .unwrap_or(v1::AssignmentEventKind::Unspecified);
            let applied = match kind {
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
                    apply_assign(
                        &tx,
                        &keys,
                        &event.job_id,
                        event.assignment_epoch,
                        &event.request_id,
                        spec,
                        created,
                    )
                    .await?
                }
                v1::AssignmentEventKind::Cancel => {
                    apply_cancel(&tx, &keys, &event.job_id, event.assignment_epoch).await?
                }
                v1::AssignmentEventKind::Revoke => {
                    apply_revoke(&tx, &keys, &event.job_id, event.assignment_epoch).await?
                }
                _ => Applied::Unchanged,
            };
            if !event.cursor.is_empty() {
                tx.set(&keys.link_cursor(), &event.cursor)?;
            }
            Ok(applied)
        }
    })
    .await
}

/// The persisted cursor (empty when none).
pub async fn read_cursor(db: &Database, keys: &Keys) -> Result<Vec<u8>> {
    db.run(|tx, _| {
        let key = keys.link_cursor();
        async move { Ok::<_, RegionalError>(tx.get(&key).await?.unwrap_or_default()) }
    })
    .await
}
