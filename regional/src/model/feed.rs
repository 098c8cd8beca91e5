//! The region's change feed: which cached records each transaction changed.
//!
//! Owns the feed's entries and how they are written. Every transaction that
//! changes a record the replicas keep in memory (nodes, jobs with their specs
//! and task blocks, the layout, the link state, a node's command-log head)
//! appends one entry under a versionstamped key, naming what it changed, and
//! sets the feed head to its stamp. Replicas tail the feed from their cursor
//! and read the named records again (`state::tail`), so a change by any
//! process reaches every replica's memory without re-reading the region.
//! The same keys and versionstamps exist on FoundationDB.
//!
//! Must never carry the records themselves (the store stays the one copy of
//! the truth; an entry only says where to look), and must never be skipped:
//! a write of a cached record without an entry is invisible to the other
//! replicas until they load afresh.

use std::collections::BTreeSet;

use meridian_store::Transaction;
use prost::Message;

use super::keys::Keys;
use crate::error::Result;

/// A stored feed entry holds at most about this many bytes of changes; a
/// transaction that changes more writes several parts.
const PART_BYTES: usize = 90_000;

/// Value template of the feed head: a versionstamp placeholder at offset 0.
const HEAD_TEMPLATE: [u8; 14] = [0; 14];

/// What kind of record a change names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Changed {
    /// A node record.
    Node,
    /// A job: its record, spec and every task block (new, retired, or
    /// changed as a whole).
    Job,
    /// One task block of a job.
    Block,
    /// The shard layout.
    Layout,
    /// The link state (the region lease agents are told about).
    Link,
    /// A node's command log grew (its head moved).
    Commands,
}

impl Changed {
    fn code(self) -> i32 {
        match self {
            Changed::Node => 1,
            Changed::Job => 2,
            Changed::Block => 3,
            Changed::Layout => 4,
            Changed::Link => 5,
            Changed::Commands => 6,
        }
    }

    fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Changed::Node,
            2 => Changed::Job,
            3 => Changed::Block,
            4 => Changed::Layout,
            5 => Changed::Link,
            6 => Changed::Commands,
            _ => return None,
        })
    }
}

/// One changed record: its kind, id (node or job id) and block number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Change {
    pub kind: Changed,
    pub id: String,
    pub block: u32,
}

impl Change {
    pub fn node(id: &str) -> Self {
        Change {
            kind: Changed::Node,
            id: id.to_string(),
            block: 0,
        }
    }

    pub fn job(id: &str) -> Self {
        Change {
            kind: Changed::Job,
            id: id.to_string(),
            block: 0,
        }
    }

    pub fn block(job: &str, block: u32) -> Self {
        Change {
            kind: Changed::Block,
            id: job.to_string(),
            block,
        }
    }

    pub fn commands(node: &str) -> Self {
        Change {
            kind: Changed::Commands,
            id: node.to_string(),
            block: 0,
        }
    }

    pub fn layout() -> Self {
        Change {
            kind: Changed::Layout,
            id: String::new(),
            block: 0,
        }
    }

    pub fn link() -> Self {
        Change {
            kind: Changed::Link,
            id: String::new(),
            block: 0,
        }
    }
}

#[derive(Clone, PartialEq, Message)]
struct StoredChange {
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(string, tag = "2")]
    id: String,
    #[prost(uint32, tag = "3")]
    block: u32,
}

/// The stored form of one entry (or one part of it).
#[derive(Clone, PartialEq, Message)]
struct StoredEntry {
    /// Boot id of the writing process (diagnostics).
    #[prost(string, tag = "1")]
    writer: String,
    #[prost(message, repeated, tag = "2")]
    changes: Vec<StoredChange>,
}

/// The changes one transaction made, collected while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedEntry {
    pub changes: BTreeSet<Change>,
}

impl FeedEntry {
    pub fn new() -> Self {
        FeedEntry::default()
    }

    pub fn add(&mut self, change: Change) {
        self.changes.insert(change);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Appends the entry to the feed in `tx` (nothing when it is empty).
    pub fn write(&self, tx: &Transaction, keys: &Keys, writer: &str) -> Result<()> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let mut part: u16 = 0;
        let mut current = StoredEntry {
            writer: writer.to_string(),
            changes: Vec::new(),
        };
        let mut bytes = 0;
        for c in &self.changes {
            let stored = StoredChange {
                kind: c.kind.code(),
                id: c.id.clone(),
                block: c.block,
            };
            bytes += stored.encoded_len() + 2;
            current.changes.push(stored);
            if bytes >= PART_BYTES {
                tx.set_versionstamped_key(&keys.feed_template(part), &current.encode_to_vec())?;
                part = part.saturating_add(1);
                current.changes.clear();
                bytes = 0;
            }
        }
        if !current.changes.is_empty() {
            tx.set_versionstamped_key(&keys.feed_template(part), &current.encode_to_vec())?;
        }
        tx.set_versionstamped_value(&keys.feed_head(), &HEAD_TEMPLATE)?;
        Ok(())
    }
}

/// Decodes a stored entry (one part) into its changes; unknown kinds (from a
/// newer writer) are skipped, so older replicas reload them on their next
/// full load rather than fail.
pub fn decode_entry(bytes: &[u8]) -> std::result::Result<Vec<Change>, super::Corrupt> {
    let stored = StoredEntry::decode(bytes).map_err(|e| super::Corrupt {
        what: "feed entry",
        detail: e.to_string(),
    })?;
    Ok(stored
        .changes
        .into_iter()
        .filter_map(|c| {
            Changed::from_code(c.kind).map(|kind| Change {
                kind,
                id: c.id,
                block: c.block,
            })
        })
        .collect())
}

/// The 10-byte stamp in a stored feed head (or trim mark).
pub fn stamp_of(bytes: &[u8]) -> Option<[u8; 10]> {
    bytes.get(..10).and_then(|b| <[u8; 10]>::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_entry_round_trips_and_a_large_one_is_split_into_parts_of_one_stamp() {
        let db = meridian_store::open("memory:").await.expect("store");
        let keys = Keys::new("r");
        let mut small = FeedEntry::new();
        small.add(Change::node("n1"));
        small.add(Change::block("j1", 3));
        let mut large = FeedEntry::new();
        for i in 0..10_000 {
            large.add(Change::block(&format!("job-{i:06}"), 0));
        }
        for entry in [&small, &large] {
            db.run(|tx, _| {
                let keys = keys.clone();
                async move { entry.write(&tx, &keys, "writer") }
            })
            .await
            .expect("write");
        }
        let (kvs, head) = db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let kvs = tx
                        .get_range(meridian_store::RangeOption::from(keys.feed()))
                        .await?;
                    let head = tx.get(&keys.feed_head()).await?;
                    Ok::<_, crate::error::RegionalError>((kvs, head))
                }
            })
            .await
            .expect("read");
        let parts: Vec<([u8; 10], u16)> = kvs
            .iter()
            .map(|kv| keys.feed_stamp(&kv.key).expect("a feed key"))
            .collect();
        assert!(parts.len() > 2, "the large entry is split: {}", parts.len());
        let first = parts[0].0;
        assert!(parts[1..].iter().all(|(s, _)| *s > first));
        let large_stamp = parts[1].0;
        assert!(parts[1..].iter().all(|(s, _)| *s == large_stamp));
        let parts_seen: Vec<u16> = parts[1..].iter().map(|(_, p)| *p).collect();
        assert_eq!(parts_seen, (0..parts_seen.len() as u16).collect::<Vec<_>>());
        assert_eq!(stamp_of(&head.expect("head")), Some(large_stamp));
        let back = decode_entry(&kvs[0].value).expect("decode");
        assert_eq!(back, small.changes.iter().cloned().collect::<Vec<_>>());
        let total: usize = kvs[1..]
            .iter()
            .map(|kv| decode_entry(&kv.value).expect("decode").len())
            .sum();
        assert_eq!(total, 10_000);
        // Reading after the first stamp skips exactly it.
        let after = db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    Ok::<_, crate::error::RegionalError>(
                        tx.get_range(meridian_store::RangeOption::from(keys.feed_after(first)))
                            .await?,
                    )
                }
            })
            .await
            .expect("read");
        assert_eq!(after.len(), kvs.len() - 1);
    }
}
