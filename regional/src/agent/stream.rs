//! A node's assignment stream: snapshot, then live commands from its log.
//!
//! Owns the cursor format (12-byte versionstamp of the log entry, then the
//! 4-byte big-endian index of the command within it) and the stream's end
//! conditions: FAILED_PRECONDITION once the node epoch it was opened with is
//! superseded. Must never send a command of another node or an older epoch.

use std::collections::BTreeMap;

use meridian_proto::v1;
use meridian_store::Database;
use prost::Message;
use tokio::sync::mpsc;

use crate::error::{RegionalError, Result};
use crate::model::view::{read_block, read_node, scan};
use crate::model::{CommandRecord, Keys, NodeLiveness, decode};

/// A position in a node's command log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub stamp: [u8; 12],
    pub index: u32,
}

impl Cursor {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.stamp.to_vec();
        v.extend_from_slice(&self.index.to_be_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Option<Cursor> {
        if bytes.len() != 16 {
            return None;
        }
        let mut stamp = [0u8; 12];
        stamp.copy_from_slice(&bytes[..12]);
        let index = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        Some(Cursor { stamp, index })
    }
}

/// Log entries after `after` (all when `None`), flattened with cursors.
pub async fn read_log(
    db: &Database,
    keys: &Keys,
    node: &str,
    after: Option<Cursor>,
) -> Result<Vec<(Cursor, CommandRecord)>> {
    db.run(|tx, _| {
        let keys = keys.clone();
        let node = node.to_string();
        async move {
            let (mut begin, end) = keys.commands(&node);
            if let Some(c) = after {
                begin = keys.command_at(&node, c.stamp);
            }
            let mut out = Vec::new();
            for (k, v) in scan(&tx, (begin, end), true).await? {
                let Some(stamp) = keys.command_stamp(&k) else {
                    continue;
                };
                let cmds: Vec<CommandRecord> = decode("command", &v)?;
                for (i, c) in cmds.into_iter().enumerate() {
                    let cur = Cursor {
                        stamp,
                        index: i as u32,
                    };
                    if after.is_none_or(|a| cur > a) {
                        out.push((cur, c));
                    }
                }
            }
            Ok::<_, RegionalError>(out)
        }
    })
    .await
}

/// Turns a stored command into the wire message.
async fn to_wire(
    db: &Database,
    keys: &Keys,
    specs: &mut BTreeMap<String, Option<(v1::JobSpec, String)>>,
    cursor: Cursor,
    c: &CommandRecord,
) -> Result<v1::AssignmentCommand> {
    let kind = v1::CommandKind::try_from(c.kind).unwrap_or(v1::CommandKind::Unspecified);
    let mut msg = v1::AssignmentCommand {
        cursor: cursor.encode(),
        kind: c.kind,
        task: Some(v1::TaskAttempt {
            task: Some(v1::TaskId {
                job_id: c.job.clone(),
                index: c.index,
            }),
            attempt: c.attempt,
        }),
        shard_id: c.shard,
        shard_epoch: c.shard_epoch,
        node_epoch: c.node_epoch,
        reason: c.reason.clone(),
        stop_grace_period_ms: c.grace_ms,
        ..Default::default()
    };
    if kind == v1::CommandKind::Run {
        if !specs.contains_key(&c.job) {
            let (spec, job) = db
                .run(|tx, _| {
                    let key = keys.job_spec(&c.job);
                    async move {
                        let spec = tx.get(&key).await?;
                        let job = crate::model::view::read_job(&tx, keys, &c.job).await?;
                        Ok::<_, RegionalError>((spec, job))
                    }
                })
                .await?;
            let spec = spec.and_then(|b| v1::JobSpec::decode(b.as_slice()).ok());
            let trace_id = job.map(|j| j.trace_id).unwrap_or_default();
            specs.insert(c.job.clone(), spec.map(|s| (s, trace_id)));
        }
        if let Some(Some((spec, trace_id))) = specs.get(&c.job) {
            msg.trace_id = trace_id.clone();
            msg.template = spec.task.clone();
            msg.resources = spec.resources.clone();
            msg.on_region_loss = spec.on_region_loss;
            msg.priority = spec.priority;
            if msg.stop_grace_period_ms == 0 {
                msg.stop_grace_period_ms = spec.stop_grace_period_ms;
            }
        }
    }
    Ok(msg)
}

/// Whether `c` still describes a live binding of `node` (for snapshots).
async fn still_bound(db: &Database, keys: &Keys, node: &str, c: &CommandRecord) -> Result<bool> {
    db.run(|tx, _| {
        let keys = keys.clone();
        async move {
            let block = read_block(&tx, &keys, &c.job, c.index).await?;
            Ok::<_, RegionalError>(
                block
                    .and_then(|b| b.tasks.get((c.index - b.first) as usize).cloned())
                    .is_some_and(|t| {
                        t.is_bound()
                            && t.node == node
                            && t.attempt == c.attempt
                            && t.node_epoch == c.node_epoch
                    }),
            )
        }
    })
    .await
}

/// Feeds `out` with the commands of `node` for `epoch` until the epoch is
/// superseded, the receiver goes away, or `stop` fires.
pub async fn pump(
    db: Database,
    keys: Keys,
    node: String,
    epoch: u64,
    cursor: Option<Cursor>,
    out: mpsc::Sender<std::result::Result<v1::AssignmentCommand, tonic::Status>>,
) {
    let mut specs = BTreeMap::new();
    let mut last = cursor;
    if cursor.is_none() {
        // Snapshot: the log's commands that still describe live bindings.
        let entries = match read_log(&db, &keys, &node, None).await {
            Ok(e) => e,
            Err(err) => {
                let _ = out.send(Err(err.into())).await;
                return;
            }
        };
        for (cur, c) in &entries {
            last = Some(*cur);
            if c.node_epoch != epoch {
                continue;
            }
            match still_bound(&db, &keys, &node, c).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    let _ = out.send(Err(err.into())).await;
                    return;
                }
            }
            match to_wire(&db, &keys, &mut specs, *cur, c).await {
                Ok(msg) => {
                    if out.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let _ = out.send(Err(err.into())).await;
                    return;
                }
            }
        }
        let bookmark = v1::AssignmentCommand {
            cursor: last.map(|c| c.encode()).unwrap_or_default(),
            kind: v1::CommandKind::Bookmark as i32,
            node_epoch: epoch,
            ..Default::default()
        };
        if out.send(Ok(bookmark)).await.is_err() {
            return;
        }
    }
    loop {
        // Arm the wake-ups first, then read, so nothing is missed.
        let watches = db
            .run(|tx, _| {
                let head = keys.command_head(&node);
                let node_key = keys.node(&node);
                async move {
                    let a = tx.watch(&head)?;
                    let b = tx.watch(&node_key)?;
                    Ok::<_, RegionalError>((a, b))
                }
            })
            .await;
        let (head_watch, node_watch) = match watches {
            Ok(w) => w,
            Err(err) => {
                let _ = out.send(Err(err.into())).await;
                return;
            }
        };
        let current = db
            .run(|tx, _| {
                let keys = keys.clone();
                let node = node.clone();
                async move { read_node(&tx, &keys, &node).await }
            })
            .await;
        match current {
            Ok(Some(n)) if n.epoch == epoch && n.liveness != NodeLiveness::Down => {}
            Ok(_) => {
                let _ = out
                    .send(Err(tonic::Status::failed_precondition(format!(
                        "node epoch {epoch} of {node} has been superseded: register again"
                    ))))
                    .await;
                return;
            }
            Err(err) => {
                let _ = out.send(Err(err.into())).await;
                return;
            }
        }
        let entries = match read_log(&db, &keys, &node, last).await {
            Ok(e) => e,
            Err(err) => {
                let _ = out.send(Err(err.into())).await;
                return;
            }
        };
        for (cur, c) in &entries {
            last = Some(*cur);
            if c.node_epoch != epoch {
                continue;
            }
            match to_wire(&db, &keys, &mut specs, *cur, c).await {
                Ok(msg) => {
                    if out.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    let _ = out.send(Err(err.into())).await;
                    return;
                }
            }
        }
        tokio::select! {
            _ = out.closed() => return,
            _ = head_watch => {}
            _ = node_watch => {}
        }
    }
}
