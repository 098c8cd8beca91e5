//! A consistent read of a region's records straight from the store.
//!
//! Owns reading the layout, nodes, jobs and task blocks in one transaction
//! (for checkers, tools and tests that look at the store from outside a
//! replica; replicas decide from their memory, `state`), and the small read
//! helpers other modules share. Must never write.

use std::collections::BTreeMap;

use futures::StreamExt;
use meridian_store::{RangeOption, Transaction};

use super::keys::{Keys, TASK_BLOCK};
use super::records::{JobRecord, Layout, NodeRecord, TaskBlock, decode};
use crate::error::Result;

/// Pairs fetched per round trip by range reads.
const RANGE_BATCH: usize = 10_000;

/// Everything placement and liveness decide on.
#[derive(Debug, Clone, Default)]
pub struct RegionView {
    pub layout: Option<Layout>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub jobs: BTreeMap<String, JobRecord>,
    /// Keyed by `(job, block number)`.
    pub blocks: BTreeMap<(String, u32), TaskBlock>,
}

/// Reads every pair of a range in pages.
pub async fn scan(
    tx: &Transaction,
    range: (Vec<u8>, Vec<u8>),
    snapshot: bool,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stream = tx.range_stream(RangeOption::from(range).snapshot(snapshot), RANGE_BATCH);
    while let Some(kv) = stream.next().await {
        let kv = kv?;
        out.push((kv.key, kv.value));
    }
    Ok(out)
}

/// Reads the layout record.
pub async fn read_layout(tx: &Transaction, keys: &Keys) -> Result<Option<Layout>> {
    match tx.get(&keys.layout()).await? {
        Some(bytes) => Ok(Some(decode("layout", &bytes)?)),
        None => Ok(None),
    }
}

/// Reads one node record.
pub async fn read_node(tx: &Transaction, keys: &Keys, node: &str) -> Result<Option<NodeRecord>> {
    match tx.get(&keys.node(node)).await? {
        Some(bytes) => Ok(Some(decode("node", &bytes)?)),
        None => Ok(None),
    }
}

/// Reads one job record.
pub async fn read_job(tx: &Transaction, keys: &Keys, job: &str) -> Result<Option<JobRecord>> {
    match tx.get(&keys.job(job)).await? {
        Some(bytes) => Ok(Some(decode("job", &bytes)?)),
        None => Ok(None),
    }
}

/// Reads the block holding task `index` of `job`.
pub async fn read_block(
    tx: &Transaction,
    keys: &Keys,
    job: &str,
    index: u32,
) -> Result<Option<TaskBlock>> {
    match tx.get(&keys.task_block(job, index / TASK_BLOCK)).await? {
        Some(bytes) => Ok(Some(decode("task block", &bytes)?)),
        None => Ok(None),
    }
}

/// Reads every block of one job, in order.
pub async fn read_blocks(tx: &Transaction, keys: &Keys, job: &str) -> Result<Vec<TaskBlock>> {
    let mut out = Vec::new();
    for (_, v) in scan(tx, keys.task_blocks(job), false).await? {
        out.push(decode("task block", &v)?);
    }
    Ok(out)
}

impl RegionView {
    /// Reads the whole region in `tx`.
    pub async fn read(tx: &Transaction, keys: &Keys) -> Result<Self> {
        let mut view = RegionView {
            layout: read_layout(tx, keys).await?,
            ..RegionView::default()
        };
        for (k, v) in scan(tx, keys.nodes(), true).await? {
            if let Some(id) = keys.node_id_of(&k) {
                view.nodes.insert(id, decode("node", &v)?);
            }
        }
        for (_, v) in scan(tx, keys.jobs(), true).await? {
            let job: JobRecord = decode("job", &v)?;
            view.jobs.insert(job.job_id.clone(), job);
        }
        view.blocks = read_all_blocks(tx, keys).await?;
        Ok(view)
    }
}

async fn read_all_blocks(
    tx: &Transaction,
    keys: &Keys,
) -> Result<BTreeMap<(String, u32), TaskBlock>> {
    let mut out = BTreeMap::new();
    for (k, v) in scan(tx, keys.all_task_blocks(), true).await? {
        if let Some((job, block)) = keys.block_of(&k) {
            out.insert((job, block), decode("task block", &v)?);
        }
    }
    Ok(out)
}
