//! Compaction of the region's logs and tombstones, by the link leader.
//!
//! Owns the bounds of two records that would otherwise grow with every job
//! the region ever ran: the nodes' command logs, cleared up to the change
//! feed's trim cut (the same age rule, [`super::trim::RETAIN`]), and the
//! tombstones of retired jobs, forgotten with the jobs' captured output
//! after the tombstone retention. A node whose agent resumes from a cursor
//! in the cleared part gets a snapshot of its bound tasks instead (see
//! `agent::stream`), exactly as after a restart: RUN is idempotent on the
//! agent, and attempts it runs that are no longer bound are stopped by the
//! heartbeat's orphan list.
//!
//! Must never clear a command-log entry before the trim mark that sends
//! streams to a snapshot is committed (it is set in the same transaction as
//! the first clear), never forget a tombstone younger than the retention or
//! the output of a job the region holds again, and never write without the
//! link lease's fence.

use std::time::Duration;

use meridian_control::lease::Fence;
use meridian_store::{Database, RangeOption};

use crate::error::{RegionalError, Result};
use crate::model::{Keys, decode, encode};
use crate::state::{SharedState, Stamp};

/// Nodes whose logs one transaction clears at most, so a trim never holds
/// the store's write lock for long beside the region's group commits.
pub const NODES_PER_TX: usize = 512;
/// Tombstones one transaction forgets at most.
pub const TOMBSTONES_PER_TX: usize = 256;
/// Default tombstone retention: longer than the global tier's default
/// event retention (7 days), the longest a replayed ASSIGN of a retired
/// job can be delivered (after that a region's cursor is trimmed and it
/// re-lists, and a re-list holds no finished job).
pub const DEFAULT_TOMBSTONE_RETENTION: Duration = Duration::from_secs(8 * 24 * 3600);

/// Clears every node's command-log entries of commits at or before `cut`.
/// Returns how many nodes' logs were looked at.
///
/// Only nodes whose head moved past the previous complete trim can hold
/// such entries, and memory knows every node's head once it has followed
/// the feed up to `cut`; until then nothing is cleared.
pub async fn command_logs(
    db: &Database,
    keys: &Keys,
    state: &SharedState,
    fence: &Fence,
    cut: Stamp,
) -> Result<usize> {
    let done = db
        .run(|tx, _| {
            let key = keys.command_trim_done();
            async move { Ok::<_, RegionalError>(tx.get(&key).await?) }
        })
        .await?
        .and_then(|v| crate::model::feed::stamp_of(&v));
    if done.is_some_and(|d| d >= cut) {
        return Ok(0);
    }
    let nodes: Vec<String> = {
        let s = state.read();
        if s.cursor < cut {
            return Ok(0);
        }
        s.nodes
            .iter()
            .filter(|(_, e)| e.cmd_head.is_some_and(|h| done.is_none_or(|d| h > d)))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let chunks: Vec<&[String]> = if nodes.is_empty() {
        vec![&[]]
    } else {
        nodes.chunks(NODES_PER_TX).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        db.run(|tx, _| {
            let (keys, fence) = (keys.clone(), fence.clone());
            let chunk = chunk.to_vec();
            async move {
                fence.check(&tx).await?;
                if i == 0 {
                    tx.set(&keys.command_trim(), &cut)?;
                }
                for node in &chunk {
                    let (begin, end) = keys.commands_through(node, cut);
                    tx.clear_range(&begin, &end)?;
                }
                if i == last {
                    tx.set(&keys.command_trim_done(), &cut)?;
                }
                Ok::<_, RegionalError>(())
            }
        })
        .await?;
    }
    crate::metrics::compacted(nodes.len(), 0);
    Ok(nodes.len())
}

/// Forgets tombstones written before `cutoff_unix_ms`, with their jobs'
/// captured output. Returns how many were forgotten.
pub async fn tombstones(
    db: &Database,
    keys: &Keys,
    fence: &Fence,
    cutoff_unix_ms: u64,
) -> Result<usize> {
    let mut forgotten = 0;
    loop {
        let n = db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let range = RangeOption::from(keys.retired_before(cutoff_unix_ms))
                        .limit(TOMBSTONES_PER_TX);
                    let entries = tx.get_range(range).await?;
                    // What each entry reads, in one round trip before the
                    // first write: a read after a write holds the write
                    // turn, and a read per entry would hold it for a batch.
                    let wanted: Vec<Vec<u8>> = entries
                        .iter()
                        .filter_map(|kv| keys.retired_at_of(&kv.key))
                        .flat_map(|(_, job)| [keys.retired_time(&job), keys.job(&job)])
                        .collect();
                    tx.prefetch(&wanted).await?;
                    let mut n = 0;
                    for kv in &entries {
                        tx.clear(&kv.key)?;
                        let Some((at, job)) = keys.retired_at_of(&kv.key) else {
                            continue;
                        };
                        // A newer tombstone of the job has an entry of its own.
                        let written = tx.get(&keys.retired_time(&job)).await?;
                        if !written.is_some_and(|w| {
                            decode::<u64>("tombstone time", &w).is_ok_and(|w| w == at)
                        }) {
                            continue;
                        }
                        tx.clear(&keys.retired(&job))?;
                        tx.clear(&keys.retired_time(&job))?;
                        // The job is held again (a newer assignment): its
                        // output is that run's too.
                        if tx.get(&keys.job(&job)).await?.is_none() {
                            let (begin, end) = keys.job_logs(&job);
                            tx.clear_range(&begin, &end)?;
                        }
                        n += 1;
                    }
                    Ok::<_, RegionalError>((n, entries.len()))
                }
            })
            .await?;
        forgotten += n.0;
        crate::metrics::compacted(0, n.0);
        if n.1 < TOMBSTONES_PER_TX {
            return Ok(forgotten);
        }
    }
}

/// Tombstones written before the time index existed: indexed now, so they
/// are forgotten one retention from today, [`TOMBSTONES_PER_TX`] to a
/// transaction, resuming where the last one stopped. Returns how many were
/// indexed.
pub async fn index_old_tombstones(
    db: &Database,
    keys: &Keys,
    fence: &Fence,
    now_unix_ms: u64,
) -> Result<usize> {
    let mut indexed = 0;
    loop {
        let (n, finished) = db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    let progress = keys.retired_index_progress();
                    let (mut begin, end) = keys.all_retired();
                    match tx.get(&progress).await? {
                        Some(v) if v.is_empty() => return Ok::<_, RegionalError>((0, true)),
                        Some(v) => begin = v,
                        None => {}
                    }
                    fence.check(&tx).await?;
                    let range = RangeOption::new(begin, end).limit(TOMBSTONES_PER_TX);
                    let entries = tx.get_range(range).await?;
                    let wanted: Vec<Vec<u8>> = entries
                        .iter()
                        .filter_map(|kv| keys.second_of(&kv.key))
                        .map(|job| keys.retired_time(&job))
                        .collect();
                    tx.prefetch(&wanted).await?;
                    let mut n = 0;
                    for kv in &entries {
                        let Some(job) = keys.second_of(&kv.key) else {
                            continue;
                        };
                        if tx.get(&keys.retired_time(&job)).await?.is_none() {
                            tx.set(&keys.retired_at(now_unix_ms, &job), &[])?;
                            tx.set(&keys.retired_time(&job), &encode(&now_unix_ms))?;
                            n += 1;
                        }
                    }
                    let finished = entries.len() < TOMBSTONES_PER_TX;
                    let next = match entries.last() {
                        Some(kv) if !finished => {
                            let mut k = kv.key.clone();
                            k.push(0);
                            k
                        }
                        // Empty: done.
                        _ => Vec::new(),
                    };
                    tx.set(&progress, &next)?;
                    Ok((n, finished))
                }
            })
            .await?;
        indexed += n;
        if finished {
            return Ok(indexed);
        }
    }
}
