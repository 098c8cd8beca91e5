//! Loading a replica's memory from the store in one read.
//!
//! Owns the full read that starts (or restarts) a replica's state: the feed
//! head first, then every cached record, all in one transaction, so the
//! state is exactly the store at one version and the feed entries after the
//! head are exactly the changes it has not seen. Must never write.

use std::sync::Arc;

use meridian_proto::v1;
use meridian_store::{Database, Transaction};
use prost::Message;

use super::{Delta, RegionState, Stamp};
use crate::error::{RegionalError, Result};
use crate::link::LinkState;
use crate::model::feed::stamp_of;
use crate::model::view::{read_layout, scan};
use crate::model::{JobRecord, Keys, NodeRecord, TaskBlock, decode};

/// Reads the whole region into a fresh state.
pub async fn load(db: &Database, keys: &Keys) -> Result<RegionState> {
    db.run(|tx, _| {
        let keys = keys.clone();
        async move { load_in(&tx, &keys).await }
    })
    .await
}

/// The load inside a transaction.
pub async fn load_in(tx: &Transaction, keys: &Keys) -> Result<RegionState> {
    // Everything committed up to the head is in what follows; entries after
    // it are not, and the tail starts there.
    let head: Stamp = tx
        .get(&keys.feed_head())
        .await?
        .as_deref()
        .and_then(stamp_of)
        .unwrap_or([0; 10]);
    let mut state = RegionState::default();
    let mut delta = Delta::default();
    let layout = read_layout(tx, keys).await?;
    state.put_layout(layout, head, &mut delta);
    if let Some(b) = tx.get(&keys.link_state()).await? {
        state.put_link(
            Some(decode::<LinkState>("link state", &b)?),
            head,
            &mut delta,
        );
    }
    for (k, v) in scan(tx, keys.nodes(), true).await? {
        if let Some(id) = keys.node_id_of(&k) {
            let node: NodeRecord = decode("node", &v)?;
            state.put_node(&id, Some(node), head, &mut delta);
        }
    }
    for (k, v) in scan(tx, keys.command_heads(), true).await? {
        if let (Some(node), Some(stamp)) = (keys.second_of(&k), stamp_of(&v)) {
            state.put_cmd_head(&node, stamp);
        }
    }
    let mut specs = std::collections::BTreeMap::new();
    for (k, v) in scan(tx, keys.job_specs(), true).await? {
        if let Some(id) = keys.second_of(&k) {
            let spec = v1::JobSpec::decode(v.as_slice()).map_err(|e| {
                RegionalError::Corrupt(crate::model::Corrupt {
                    what: "job spec",
                    detail: e.to_string(),
                })
            })?;
            specs.insert(id, Arc::new(spec));
        }
    }
    for (_, v) in scan(tx, keys.jobs(), true).await? {
        let job: JobRecord = decode("job", &v)?;
        let spec = specs.remove(&job.job_id);
        let id = job.job_id.clone();
        state.put_job(&id, Some((job, spec)), head, &mut delta);
    }
    for (k, v) in scan(tx, keys.all_task_blocks(), true).await? {
        if let Some((job, block)) = keys.block_of(&k) {
            let b: TaskBlock = decode("task block", &v)?;
            state.put_block(&job, block, Some(b), head, &mut delta);
        }
    }
    state.advance_cursor(head);
    Ok(state)
}
