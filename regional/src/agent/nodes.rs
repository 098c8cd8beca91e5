//! Node registration, heartbeats, task reports and operator changes, as
//! store transactions.
//!
//! Owns the node epoch protocol on the region side: registering issues an
//! epoch (the same one again for a retry of the current registration, a new
//! one otherwise), and every heartbeat and report is checked against the
//! current epoch inside its transaction. Must never write a node's command
//! log (that is the shard leader's) or accept a report under an old epoch.

use std::collections::BTreeMap;

use meridian_proto::v1;
use meridian_store::{Database, Transaction};

use crate::error::{RegionalError, Result};
use crate::model::view::{read_block, read_job, read_node};
use crate::model::{
    HeartbeatRecord, JobPhase, Keys, NodeLiveness, NodeRecord, Res, TASK_BLOCK, encode,
};
use crate::placer::sweep::mark_pending;

/// Outcome of an epoch check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochCheck {
    Current,
    Stale { current: u64 },
    Unknown,
}

async fn check_epoch(
    tx: &Transaction,
    keys: &Keys,
    node: &str,
    epoch: u64,
) -> Result<(EpochCheck, Option<NodeRecord>)> {
    match read_node(tx, keys, node).await? {
        None => Ok((EpochCheck::Unknown, None)),
        Some(n) if n.epoch != epoch || n.liveness == NodeLiveness::Down => {
            Ok((EpochCheck::Stale { current: n.epoch }, Some(n)))
        }
        Some(n) => Ok((EpochCheck::Current, Some(n))),
    }
}

/// Registers a node at `now`, told the base heartbeat interval; returns its
/// record (with the epoch to use).
pub async fn register(
    db: &Database,
    keys: &Keys,
    req: &v1::RegisterNodeRequest,
    now: u64,
) -> Result<NodeRecord> {
    let beat = HeartbeatRecord {
        at_unix_ms: now,
        every_ms: 0,
    };
    register_beating(db, keys, req, beat).await
}

/// Registers a node; returns its record (with the epoch to use). `beat`
/// is the heartbeat recorded for it: now, at the interval it is told.
pub async fn register_beating(
    db: &Database,
    keys: &Keys,
    req: &v1::RegisterNodeRequest,
    beat: HeartbeatRecord,
) -> Result<NodeRecord> {
    let now = beat.at_unix_ms;
    if req.node_id.is_empty() || req.node_id.len() > 128 {
        return Err(RegionalError::invalid("node_id", "must be 1 to 128 bytes"));
    }
    if req.boot_id.is_empty() {
        return Err(RegionalError::invalid("boot_id", "must not be empty"));
    }
    db.run(|tx, _| {
        let keys = keys.clone();
        let req = req.clone();
        async move {
            let old = read_node(&tx, &keys, &req.node_id).await?;
            if let Some(o) = &old
                && o.boot_id == req.boot_id
                && o.liveness != NodeLiveness::Down
            {
                // A retry of the current registration: same epoch.
                tx.set(&keys.heartbeat(&req.node_id), &encode(&beat))?;
                return Ok(o.clone());
            }
            let (epoch, version, cordoned, draining, reason, deadline) = match &old {
                Some(o) => (
                    o.epoch + 1,
                    o.version + 1,
                    o.cordoned,
                    o.draining,
                    o.cordon_reason.clone(),
                    o.drain_deadline_ms,
                ),
                None => (1, 1, false, false, String::new(), 0),
            };
            let node = NodeRecord {
                node_id: req.node_id.clone(),
                epoch,
                boot_id: req.boot_id.clone(),
                allocatable: req
                    .allocatable
                    .as_ref()
                    .map(Res::from_proto)
                    .unwrap_or_default(),
                labels: req.labels.clone().into_iter().collect(),
                zone: req.zone.clone(),
                rack: req.rack.clone(),
                liveness: NodeLiveness::Ready,
                cordoned,
                draining,
                cordon_reason: reason,
                drain_deadline_ms: deadline,
                version,
                registered_at_unix_ms: now,
                agent_version: req.agent_version.clone(),
            };
            tx.set(&keys.node(&node.node_id), &encode(&node))?;
            tx.set(&keys.heartbeat(&node.node_id), &encode(&beat))?;
            if old.is_none() {
                tx.add_i64(&keys.node_count(), 1)?;
            }
            Ok::<_, RegionalError>(node)
        }
    })
    .await
}

/// What a heartbeat learns, all from one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    pub check: EpochCheck,
    /// Attempts the node runs that are not bound to it under its epoch: it
    /// must stop them.
    pub orphans: Vec<v1::TaskAttempt>,
    /// When the region's lease at the global tier ends (0: none held).
    pub region_lease_expires_unix_ms: u64,
}

/// Checks a heartbeat, reading only: the epoch, the orphans among
/// `running`, and the region lease the node may run under. Recording the
/// beat is a separate blind write ([`record_beat`]), so thousands of nodes
/// beating never conflict with each other or with placement.
pub async fn heartbeat(db: &Database, keys: &Keys, req: &v1::HeartbeatRequest) -> Result<Beat> {
    db.run(|tx, _| {
        let keys = keys.clone();
        let req = req.clone();
        async move {
            let region_lease_expires_unix_ms = match tx.get(&keys.link_state()).await? {
                Some(b) => {
                    crate::model::decode::<crate::link::LinkState>("link state", &b)?
                        .lease_expires_unix_ms
                }
                None => 0,
            };
            let (check, _) = check_epoch(&tx, &keys, &req.node_id, req.node_epoch).await?;
            if check != EpochCheck::Current {
                return Ok(Beat {
                    check,
                    orphans: Vec::new(),
                    region_lease_expires_unix_ms,
                });
            }
            let mut orphans = Vec::new();
            for a in &req.running {
                let Some(t) = &a.task else { continue };
                let bound = read_block(&tx, &keys, &t.job_id, t.index)
                    .await?
                    .and_then(|b| b.tasks.get((t.index - b.first) as usize).cloned())
                    .is_some_and(|r| {
                        r.is_bound()
                            && r.node == req.node_id
                            && r.node_epoch == req.node_epoch
                            && r.attempt == a.attempt
                    });
                if !bound {
                    orphans.push(a.clone());
                }
            }
            Ok::<_, RegionalError>(Beat {
                check,
                orphans,
                region_lease_expires_unix_ms,
            })
        }
    })
    .await
}

/// Records a node's heartbeat without reading anything, so it joins the
/// store's group commit. A beat landing just after the node was declared
/// dead changes nothing: DOWN is left only by registering again.
pub async fn record_beat(
    db: &Database,
    keys: &Keys,
    node: &str,
    beat: HeartbeatRecord,
) -> Result<()> {
    let key = keys.heartbeat(node);
    db.run(|tx, _| {
        let key = key.clone();
        async move {
            tx.set(&key, &encode(&beat))?;
            Ok::<_, RegionalError>(())
        }
    })
    .await
}

/// How many node ids ever registered in the region.
pub async fn node_count(db: &Database, keys: &Keys) -> Result<u64> {
    let key = keys.node_count();
    db.run(|tx, _| {
        let key = key.clone();
        async move {
            let n = match tx.get(&key).await? {
                Some(b) => b
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, i64::from_le_bytes),
                None => 0,
            };
            Ok::<_, RegionalError>(u64::try_from(n).unwrap_or(0))
        }
    })
    .await
}

/// Applies task reports of a node. Returns the epoch check and one result
/// per report.
pub async fn report(
    db: &Database,
    keys: &Keys,
    req: &v1::ReportTaskStatusRequest,
    now: u64,
) -> Result<(EpochCheck, Vec<v1::ItemResult>)> {
    db.run(|tx, _| {
        let keys = keys.clone();
        let req = req.clone();
        async move {
            let (check, _) = check_epoch(&tx, &keys, &req.node_id, req.node_epoch).await?;
            if check != EpochCheck::Current {
                return Ok((check, Vec::new()));
            }
            let mut results = Vec::with_capacity(req.reports.len());
            let mut blocks: BTreeMap<(String, u32), crate::model::TaskBlock> = BTreeMap::new();
            let mut repend: Vec<String> = Vec::new();
            for r in &req.reports {
                let Some(a) = &r.task else {
                    results.push(item(v1::Verdict::Invalid, "task is required"));
                    continue;
                };
                let Some(t) = &a.task else {
                    results.push(item(v1::Verdict::Invalid, "task.task is required"));
                    continue;
                };
                let id = (t.job_id.clone(), t.index / TASK_BLOCK);
                if !blocks.contains_key(&id) {
                    match read_block(&tx, &keys, &t.job_id, t.index).await? {
                        Some(b) => {
                            blocks.insert(id.clone(), b);
                        }
                        None => {
                            results.push(item(v1::Verdict::NotFound, "unknown task"));
                            continue;
                        }
                    }
                }
                let job = read_job(&tx, &keys, &t.job_id).await?;
                let Some(block) = blocks.get_mut(&id) else {
                    continue;
                };
                let Some(rec) = block.tasks.get_mut((t.index - block.first) as usize) else {
                    results.push(item(v1::Verdict::NotFound, "unknown task"));
                    continue;
                };
                if !rec.is_bound()
                    || rec.node != req.node_id
                    || rec.attempt != a.attempt
                    || rec.node_epoch != req.node_epoch
                {
                    results.push(item(
                        v1::Verdict::NotFound,
                        "attempt not bound to this node",
                    ));
                    continue;
                }
                let state = v1::TaskState::try_from(r.state).unwrap_or(v1::TaskState::Unspecified);
                match state {
                    v1::TaskState::Starting | v1::TaskState::Running => rec.state = state as i32,
                    v1::TaskState::Succeeded
                    | v1::TaskState::Failed
                    | v1::TaskState::Killed
                    | v1::TaskState::Lost => {
                        rec.exit_code = r.exit_code;
                        rec.message = r.message.clone();
                        let active = job.as_ref().is_some_and(|j| j.state == JobPhase::Active);
                        let attempts_left =
                            job.as_ref().is_some_and(|j| rec.attempt < j.max_attempts);
                        let again = active
                            && match state {
                                // Stopped by the region to move it (drain,
                                // preemption): placed again.
                                v1::TaskState::Killed
                                    if rec.stopping == "drain" || rec.stopping == "preempted" =>
                                {
                                    true
                                }
                                // Stopped by the agent on its own (its region
                                // lease ran out during a scheduler failover,
                                // or it shut down) while the job stays here:
                                // nobody else will run it, so it is placed
                                // again, and like a drain it costs the job
                                // none of its retries: the task did not fail.
                                // The node epoch check above already fenced
                                // stale reports.
                                v1::TaskState::Killed => rec.stopping.is_empty(),
                                v1::TaskState::Failed | v1::TaskState::Lost => attempts_left,
                                _ => false,
                            };
                        if again {
                            rec.repend(
                                0,
                                &format!("attempt {} ended {}", rec.attempt, state.as_str_name()),
                            );
                            repend.push(t.job_id.clone());
                        } else {
                            rec.state = state as i32;
                            rec.stopping.clear();
                        }
                        if !r.stdout_tail.is_empty() || !r.stderr_tail.is_empty() {
                            let logs = crate::agent::admin::StoredLogs {
                                node: req.node_id.clone(),
                                stdout: r.stdout_tail.clone(),
                                stderr: r.stderr_tail.clone(),
                                stdout_truncated: r.stdout_truncated,
                                stderr_truncated: r.stderr_truncated,
                                at: r.observed_at_unix_ms.max(now),
                            };
                            tx.set(&keys.logs(&t.job_id, t.index, a.attempt), &encode(&logs))?;
                        }
                    }
                    _ => {
                        results.push(item(
                            v1::Verdict::Invalid,
                            "state must be STARTING, RUNNING or terminal",
                        ));
                        continue;
                    }
                }
                results.push(item(v1::Verdict::Accepted, ""));
            }
            crate::model::put_blocks(
                &tx,
                &keys,
                blocks.iter().map(|((job, _), block)| (job.as_str(), block)),
            )?;
            repend.sort();
            repend.dedup();
            for job in repend {
                mark_pending(&tx, &keys, &job).await?;
            }
            Ok::<_, RegionalError>((check, results))
        }
    })
    .await
}

fn item(verdict: v1::Verdict, message: &str) -> v1::ItemResult {
    v1::ItemResult {
        verdict: verdict as i32,
        current_epoch: 0,
        message: message.to_string(),
    }
}

/// An operator change of a node's schedulability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cordon {
    Cordon { reason: String },
    Drain { reason: String, deadline_ms: u64 },
    Uncordon,
}

/// Applies a cordon, drain or uncordon; returns the node after it. Bumps the
/// node version (placement decided before it fails its OCC check).
pub async fn set_cordon(
    db: &Database,
    keys: &Keys,
    node_id: &str,
    change: &Cordon,
) -> Result<NodeRecord> {
    db.run(|tx, _| {
        let keys = keys.clone();
        let change = change.clone();
        let node_id = node_id.to_string();
        async move {
            let Some(mut node) = read_node(&tx, &keys, &node_id).await? else {
                return Err(RegionalError::NotFound(format!("node {node_id}")));
            };
            let before = node.clone();
            match &change {
                Cordon::Cordon { reason } => {
                    node.cordoned = true;
                    node.cordon_reason = reason.clone();
                }
                Cordon::Drain {
                    reason,
                    deadline_ms,
                } => {
                    node.cordoned = true;
                    node.draining = true;
                    node.cordon_reason = reason.clone();
                    node.drain_deadline_ms = *deadline_ms;
                }
                Cordon::Uncordon => {
                    node.cordoned = false;
                    node.draining = false;
                    node.cordon_reason.clear();
                    node.drain_deadline_ms = 0;
                }
            }
            if node != before {
                node.version += 1;
                tx.set(&keys.node(&node_id), &encode(&node))?;
            }
            Ok(node)
        }
    })
    .await
}

/// The wire request of [`register`], re-exported for callers that do not
/// depend on `meridian-proto` themselves.
pub type RegisterRequest = v1::RegisterNodeRequest;
/// The wire resources of a [`RegisterRequest`].
pub type WireResources = v1::Resources;
