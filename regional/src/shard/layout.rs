//! The region's shard layout and the replicas' presence records.
//!
//! Owns the stored shard count with its generation (a change of count bumps
//! the generation in one transaction, which fences every placement decided
//! under the old layout: bindings check the generation), and the presence
//! record each scheduler replica refreshes so the others know how many
//! replicas share the shards and how many each holds. Must never decide who
//! leads a shard: that is the shard leases' job.

use meridian_store::Database;
use serde::{Deserialize, Serialize};

use crate::error::{RegionalError, Result};
use crate::model::feed::{Change, FeedEntry};
use crate::model::view::{read_layout, scan};
use crate::model::{Keys, Layout, decode, encode};

/// Makes the stored layout have `count` shards: creates it at generation 1,
/// or bumps the generation when the count differs. Returns the layout now
/// stored.
pub async fn ensure_layout(db: &Database, keys: &Keys, count: u32) -> Result<Layout> {
    if count == 0 {
        return Err(RegionalError::invalid("shards", "must be at least 1"));
    }
    db.run(|tx, _| {
        let keys = keys.clone();
        async move {
            let layout = match read_layout(&tx, &keys).await? {
                Some(l) if l.count == count => return Ok(l),
                Some(l) => Layout {
                    count,
                    generation: l.generation + 1,
                },
                None => Layout {
                    count,
                    generation: 1,
                },
            };
            tx.set(&keys.layout(), &encode(&layout))?;
            let mut feed = FeedEntry::new();
            feed.add(Change::layout());
            feed.write(&tx, &keys, "layout")?;
            Ok(layout)
        }
    })
    .await
}

/// A replica's presence record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub boot_id: String,
    /// gRPC endpoint of the replica (leader hints).
    pub endpoint: String,
    /// Wall-clock expiry; a liveness hint only.
    pub expires_at_unix_ms: u64,
    /// Shards the replica leads right now.
    pub held: Vec<u32>,
}

crate::model::codec::json_record!(Presence);

/// Writes this replica's presence.
pub async fn write_presence(
    db: &Database,
    keys: &Keys,
    name: &str,
    presence: &Presence,
) -> Result<()> {
    let value = encode(presence);
    db.run(|tx, _| {
        let key = keys.replica(name);
        let value = value.clone();
        async move {
            tx.set(&key, &value)?;
            Ok::<_, RegionalError>(())
        }
    })
    .await
}

/// Every presence record, live or not, by replica name.
pub async fn read_presences(db: &Database, keys: &Keys) -> Result<Vec<(String, Presence)>> {
    db.run(|tx, _| {
        let keys = keys.clone();
        async move {
            let mut out = Vec::new();
            for (k, v) in scan(&tx, keys.replicas(), true).await? {
                if let Some(name) = keys.second_of(&k) {
                    out.push((name, decode("presence", &v)?));
                }
            }
            Ok(out)
        }
    })
    .await
}

/// Who holds each shard lease `0..count` right now: `(holder name, epoch,
/// expires_at_unix_ms)`, or `None` for a shard never led. For operators and
/// tests.
pub async fn observe_shard_leases(
    db: &Database,
    keys: &Keys,
    count: u32,
) -> Result<Vec<Option<(String, u64, u64)>>> {
    let mut out = Vec::with_capacity(count as usize);
    for shard in 0..count {
        let lease = meridian_control::lease::Lease::new(
            db.clone(),
            keys.shard_lease(shard),
            meridian_control::lease::Identity::new_boot("observer"),
            meridian_control::SystemClock::shared(),
            std::time::Duration::from_secs(1),
            std::time::Duration::ZERO,
        );
        out.push(
            lease
                .observe()
                .await?
                .map(|r| (r.holder.name.clone(), r.epoch, r.expires_at_unix_ms)),
        );
    }
    Ok(out)
}
