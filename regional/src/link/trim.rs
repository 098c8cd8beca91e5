//! Trimming the change feed, by the link leader.
//!
//! Owns the feed's retention and the pace of the other compactions: every
//! [`TRIM_EVERY`] the link leader notes the feed head, and clears the entries
//! up to the head it noted [`RETAIN`] ago, recording how far it trimmed. A
//! replica whose cursor is older than that (it was stopped or cut off for
//! longer) sees the trim mark and loads its memory afresh instead of missing
//! changes. The nodes' command logs are cleared up to the same cut and old
//! tombstones forgotten in the same pass (`compact`). Must never trim without
//! the link lease's fence: two trimmers would still be safe, but one is
//! enough.

use std::collections::VecDeque;
use std::time::Duration;

use meridian_control::lease::Fence;
use meridian_control::{Instant, SharedClock};
use meridian_store::Database;

use crate::error::{RegionalError, Result};
use crate::model::Keys;
use crate::model::feed::stamp_of;
use crate::state::{SharedState, Stamp};

use super::compact;

/// How often the head is noted and the feed trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);
/// How long entries are kept: far longer than any replica lags while
/// running, so a reload only follows a long stop or partition.
pub const RETAIN: Duration = Duration::from_secs(120);

/// What the trimmer works on.
#[derive(Clone)]
pub struct Trimmer {
    pub db: Database,
    pub keys: Keys,
    pub clock: SharedClock,
    /// Memory, whose command-log heads say which nodes' logs to clear.
    pub state: SharedState,
    /// How long tombstones of retired jobs are kept.
    pub tombstone_retention: Duration,
}

/// Notes the head and trims until `stop` fires.
pub async fn run(t: Trimmer, fence: Fence, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let mut noted: VecDeque<(Instant, Stamp)> = VecDeque::new();
    let mut indexed = false;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = t.clock.sleep(TRIM_EVERY) => {}
        }
        if !indexed {
            match compact::index_old_tombstones(&t.db, &t.keys, &fence, t.clock.now_unix_ms()).await
            {
                Ok(_) => indexed = true,
                Err(e) if e.is_fenced() => return,
                Err(e) => tracing::warn!(error = %e, "indexing old tombstones failed"),
            }
        }
        match step(&t, &fence, &mut noted).await {
            Ok(()) => {}
            Err(e) if e.is_fenced() => return,
            Err(e) => tracing::warn!(error = %e, "trimming the change feed failed"),
        }
        let cutoff = t
            .clock
            .now_unix_ms()
            .saturating_sub(t.tombstone_retention.as_millis() as u64);
        match compact::tombstones(&t.db, &t.keys, &fence, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(tombstones = n, "forgot tombstones past the retention"),
            Err(e) if e.is_fenced() => return,
            Err(e) => tracing::warn!(error = %e, "forgetting old tombstones failed"),
        }
    }
}

async fn step(t: &Trimmer, fence: &Fence, noted: &mut VecDeque<(Instant, Stamp)>) -> Result<()> {
    let Trimmer {
        db, keys, clock, ..
    } = t;
    let now = clock.now();
    let head = db
        .run(|tx, _| {
            let key = keys.feed_head();
            async move { Ok::<_, RegionalError>(tx.get(&key).await?.as_deref().and_then(stamp_of)) }
        })
        .await?;
    if let Some(head) = head {
        noted.push_back((now, head));
    }
    let mut cut = None;
    while let Some((at, stamp)) = noted.front().copied() {
        if now.saturating_duration_since(at) < RETAIN {
            break;
        }
        cut = Some(stamp);
        noted.pop_front();
    }
    let Some(cut) = cut else {
        return Ok(());
    };
    db.run(|tx, _| {
        let keys = keys.clone();
        let fence = fence.clone();
        async move {
            fence.check(&tx).await?;
            let (begin, _) = keys.feed();
            let (end, _) = keys.feed_after(cut);
            tx.clear_range(&begin, &end)?;
            tx.set(&keys.feed_trim(), &cut)?;
            Ok::<_, RegionalError>(())
        }
    })
    .await?;
    compact::command_logs(db, keys, &t.state, fence, cut).await?;
    Ok(())
}
