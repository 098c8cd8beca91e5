//! The shard leader's sweep over its nodes: liveness, lost tasks, stops.
//!
//! Owns the node state machine (READY -> SUSPECT when heartbeats are late,
//! -> DOWN after the grace; back to READY when heartbeats resume before DOWN)
//! and what follows from node and job state: a node declared dead has its
//! epoch bumped first, in its own transaction, and only then are its tasks
//! written off as LOST and put back to pending (an exclusive job's task only
//! after a further fence wait); tasks bound under an older node epoch (the
//! agent re-registered) are lost the same way; tasks of cancelled or revoked
//! jobs and of draining nodes are sent STOP once. Every write checks the
//! shard fence. Must never touch nodes of other shards.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_control::lease::Fence;
use meridian_proto::v1;
use meridian_store::{Database, Transaction};

use crate::error::Result;
use crate::model::view::{read_blocks, read_job, read_node};
use crate::model::{
    CommandBatch, CommandRecord, HeartbeatRecord, JobPhase, Keys, NodeLiveness, NodeRecord,
    RegionView, encode,
};
use crate::shard::shard_of_node;

/// Liveness timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Heartbeats late by this much: SUSPECT (nothing new placed there).
    pub suspect_after: Duration,
    /// Heartbeats late by this much: DOWN (epoch bumped, tasks re-placed).
    pub dead_after: Duration,
    /// Extra wait before re-placing a lost task of an exclusive job, so its
    /// fenced agent has stopped it.
    pub exclusive_wait: Duration,
}

impl LivenessConfig {
    /// How late a node told to beat every `every` (0: the base interval)
    /// may be before it is SUSPECT and before it is DOWN: the configured
    /// times, stretched to three missed beats for nodes of a region large
    /// enough to be told a slower pace.
    pub fn deadlines(&self, every_ms: u64) -> (u64, u64) {
        let suspect = ms(self.suspect_after).max(every_ms.saturating_mul(3));
        let grace = ms(self.dead_after).saturating_sub(ms(self.suspect_after));
        (suspect, suspect.saturating_add(grace))
    }

    /// How long a lost task of an exclusive job waits before it is placed
    /// again: long enough for its fenced agent to hear of the fence at its
    /// next two heartbeats and stop it.
    pub fn exclusive_wait_ms(&self, every_ms: u64) -> u64 {
        ms(self.exclusive_wait).max(every_ms.saturating_mul(2))
    }
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            suspect_after: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
            exclusive_wait: Duration::from_secs(10),
        }
    }
}

/// What a sweep changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    pub suspected: Vec<String>,
    pub declared_dead: Vec<String>,
    pub recovered: Vec<String>,
    pub lost_tasks: usize,
    pub stops: usize,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One sweep of `shard` under `fence`, deciding from `view` and re-checking
/// against the store inside each transaction.
pub async fn sweep(
    db: &Database,
    keys: &Keys,
    fence: &Fence,
    shard: u32,
    view: &RegionView,
    config: &LivenessConfig,
    now_unix_ms: u64,
) -> Result<SweepOutcome> {
    let count = view.layout.map_or(1, |l| l.count);
    let mine: Vec<&NodeRecord> = view
        .nodes
        .values()
        .filter(|n| shard_of_node(&n.node_id, count) == shard)
        .collect();
    let mut out = SweepOutcome::default();

    // 1. Liveness, epoch bumps first.
    let names: Vec<String> = mine.iter().map(|n| n.node_id.clone()).collect();
    let changes = db
        .run(|tx, _| {
            let names = names.clone();
            async move { liveness_in(&tx, keys, fence, &names, config, now_unix_ms).await }
        })
        .await?;
    for (node, to) in changes {
        match to {
            NodeLiveness::Suspect => out.suspected.push(node),
            NodeLiveness::Down => out.declared_dead.push(node),
            NodeLiveness::Ready => out.recovered.push(node),
        }
    }

    // 2. Tasks: lost ones back to pending, stops where needed.
    let my_nodes: BTreeSet<&str> = mine.iter().map(|n| n.node_id.as_str()).collect();
    let mut jobs: BTreeSet<String> = BTreeSet::new();
    for ((job_id, _), block) in &view.blocks {
        let Some(job) = view.jobs.get(job_id) else {
            continue;
        };
        for t in block
            .tasks
            .iter()
            .filter(|t| t.is_bound() && my_nodes.contains(t.node.as_str()))
        {
            let node = view.nodes.get(&t.node);
            let lost = out.declared_dead.contains(&t.node)
                || node.is_none_or(|n| n.liveness == NodeLiveness::Down || n.epoch > t.node_epoch);
            let stop = t.stopping.is_empty()
                && (job.state != JobPhase::Active || node.is_some_and(|n| n.draining));
            if lost || stop {
                jobs.insert(job_id.clone());
            }
        }
    }
    for job in jobs {
        let (lost, stops) = db
            .run(|tx, _| {
                let job = job.clone();
                let my_nodes: BTreeSet<String> = my_nodes.iter().map(|s| s.to_string()).collect();
                async move {
                    tasks_in(
                        &tx,
                        keys,
                        fence,
                        shard,
                        &job,
                        &my_nodes,
                        config,
                        now_unix_ms,
                    )
                    .await
                }
            })
            .await?;
        out.lost_tasks += lost;
        out.stops += stops;
    }
    Ok(out)
}

async fn liveness_in(
    tx: &Transaction,
    keys: &Keys,
    fence: &Fence,
    names: &[String],
    config: &LivenessConfig,
    now: u64,
) -> Result<Vec<(String, NodeLiveness)>> {
    fence.check(tx).await?;
    let mut changes = Vec::new();
    for name in names {
        let Some(mut node) = read_node(tx, keys, name).await? else {
            continue;
        };
        let beat = read_beat(tx, keys, name).await?;
        let last = beat
            .map_or(node.registered_at_unix_ms, |b| b.at_unix_ms)
            .max(node.registered_at_unix_ms);
        let (suspect_ms, dead_ms) = config.deadlines(beat.map_or(0, |b| b.every_ms));
        let late = now.saturating_sub(last);
        let to = if late >= dead_ms {
            NodeLiveness::Down
        } else if late >= suspect_ms {
            NodeLiveness::Suspect
        } else {
            NodeLiveness::Ready
        };
        if to == node.liveness || node.liveness == NodeLiveness::Down {
            // DOWN is left only by registering again.
            continue;
        }
        if to == NodeLiveness::Down {
            // The fence of the node's agent: its epoch moves first.
            node.epoch += 1;
            tracing::warn!(node = %name, epoch = node.epoch, late_ms = late, "node declared dead");
        }
        node.liveness = to;
        node.version += 1;
        tx.set(&keys.node(name), &encode(&node))?;
        changes.push((name.clone(), to));
    }
    Ok(changes)
}

async fn read_beat(tx: &Transaction, keys: &Keys, node: &str) -> Result<Option<HeartbeatRecord>> {
    match tx.get(&keys.heartbeat(node)).await? {
        Some(b) => Ok(Some(crate::model::decode::<HeartbeatRecord>(
            "heartbeat",
            &b,
        )?)),
        None => Ok(None),
    }
}

#[allow(clippy::too_many_arguments)]
async fn tasks_in(
    tx: &Transaction,
    keys: &Keys,
    fence: &Fence,
    shard: u32,
    job_id: &str,
    my_nodes: &BTreeSet<String>,
    config: &LivenessConfig,
    now: u64,
) -> Result<(usize, usize)> {
    fence.check(tx).await?;
    let Some(job) = read_job(tx, keys, job_id).await? else {
        return Ok((0, 0));
    };
    let mut nodes: BTreeMap<String, Option<NodeRecord>> = BTreeMap::new();
    let mut commands = CommandBatch::new();
    let (mut lost, mut stops, mut repended) = (0, 0, false);
    for mut block in read_blocks(tx, keys, job_id).await? {
        let mut changed = false;
        for (i, t) in block.tasks.iter_mut().enumerate() {
            if !t.is_bound() || !my_nodes.contains(&t.node) {
                continue;
            }
            if !nodes.contains_key(&t.node) {
                let n = read_node(tx, keys, &t.node).await?;
                nodes.insert(t.node.clone(), n);
            }
            let node = nodes.get(&t.node).and_then(Option::as_ref);
            let is_lost =
                node.is_none_or(|n| n.liveness == NodeLiveness::Down || n.epoch > t.node_epoch);
            let index = block.first + i as u32;
            if is_lost {
                let wait = if job.exclusive {
                    let beat = read_beat(tx, keys, &t.node).await?;
                    config.exclusive_wait_ms(beat.map_or(0, |b| b.every_ms))
                } else {
                    0
                };
                if job.state == JobPhase::Active {
                    t.repend(now.saturating_add(wait), "lost with its node");
                    repended = true;
                } else {
                    t.state = v1::TaskState::Lost as i32;
                    t.message = "lost with its node".into();
                }
                lost += 1;
                changed = true;
                continue;
            }
            let reason = match job.state {
                JobPhase::Cancelled => "cancelled",
                JobPhase::Revoked(_) | JobPhase::Released(_) => "revoked",
                JobPhase::Active if node.is_some_and(|n| n.draining) => "drain",
                JobPhase::Active => continue,
            };
            if !t.stopping.is_empty() {
                continue;
            }
            let grace = match node {
                Some(n) if reason == "drain" && n.drain_deadline_ms > 0 => {
                    match job.stop_grace_ms {
                        0 => n.drain_deadline_ms,
                        g => g.min(n.drain_deadline_ms),
                    }
                }
                _ => job.stop_grace_ms,
            };
            t.stopping = reason.to_string();
            commands.push(
                &t.node,
                CommandRecord {
                    kind: v1::CommandKind::Stop as i32,
                    job: job_id.to_string(),
                    index,
                    attempt: t.attempt,
                    shard,
                    shard_epoch: fence.epoch(),
                    node_epoch: t.node_epoch,
                    reason: reason.to_string(),
                    grace_ms: grace,
                },
            );
            stops += 1;
            changed = true;
        }
        if changed {
            crate::model::put_block(tx, keys, job_id, &block)?;
        }
    }
    if repended {
        mark_pending(tx, keys, job_id).await?;
    }
    commands.write(tx, keys)?;
    Ok((lost, stops))
}

/// Puts `job_id` in the pending index (if absent) and wakes shard leaders.
pub async fn mark_pending(tx: &Transaction, keys: &Keys, job_id: &str) -> Result<()> {
    if tx.get(&keys.pending(job_id)).await?.is_none() {
        tx.set(&keys.pending(job_id), &encode(&0u32))?;
    }
    tx.add_i64(&keys.pending_head(), 1)?;
    Ok(())
}
