//! What a shard leader's sweep decides: liveness, lost tasks, stops.
//!
//! Owns the node state machine's timing (READY -> SUSPECT when heartbeats
//! are late, -> DOWN after the grace; back to READY when they resume before
//! DOWN), judged from the heartbeats this replica heard (a node counts as
//! heard when the term began), and what follows from node and job state: a
//! task bound under a node epoch that is gone is lost (pending again, after
//! a fence wait for an exclusive job); a task of a cancelled or revoked job,
//! or on a draining node, is stopped once. Pure: it reads memory and returns
//! intents; the shard loop submits them, the liveness changes first (the
//! epoch bump commits alone before any task is written off). Must never
//! touch nodes of other shards.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_control::Instant;

use crate::liveness::Beat;
use crate::model::{JobPhase, NodeLiveness};
use crate::pipeline::node::LivenessChange;
use crate::pipeline::sweep::{LostTask, StopTask, SweepTasks};
use crate::state::RegionState;

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

/// Liveness changes of `shard`'s nodes at `now`: each node counts as heard
/// at its last heartbeat here, or at `heard_from` (the term's start) if that
/// is later.
pub fn liveness_changes(
    state: &RegionState,
    beats: &BTreeMap<&str, Beat>,
    shard: u32,
    heard_from: Instant,
    now: Instant,
    config: &LivenessConfig,
) -> Vec<LivenessChange> {
    let mut changes = Vec::new();
    for (_, node) in state.shard_nodes(shard) {
        if node.liveness == NodeLiveness::Down {
            // DOWN is left only by registering again.
            continue;
        }
        let beat = beats.get(node.node_id.as_str());
        let last = beat.map_or(heard_from, |b| b.at.max(heard_from));
        let (suspect_ms, dead_ms) = config.deadlines(beat.map_or(0, |b| b.every_ms));
        let late = ms(now.saturating_duration_since(last));
        let to = if late >= dead_ms {
            NodeLiveness::Down
        } else if late >= suspect_ms {
            NodeLiveness::Suspect
        } else {
            NodeLiveness::Ready
        };
        if to != node.liveness {
            if to == NodeLiveness::Down {
                tracing::warn!(node = %node.node_id, epoch = node.epoch, late_ms = late, "node declared dead");
            }
            changes.push(LivenessChange {
                node: node.node_id.clone(),
                epoch: node.epoch,
                from: node.liveness,
                to,
            });
        }
    }
    changes
}

/// Lost tasks and stops on `shard`'s nodes.
pub fn task_changes(
    state: &RegionState,
    beats: &BTreeMap<&str, Beat>,
    shard: u32,
    config: &LivenessConfig,
    now_unix_ms: u64,
) -> SweepTasks {
    let mut out = SweepTasks {
        shard,
        ..SweepTasks::default()
    };
    for (node_id, entry) in state.nodes.iter().filter(|(_, e)| e.shard == shard) {
        let record = entry.record.as_ref();
        for (task, b) in &entry.bound {
            let Some(job) = state.jobs.get(&task.job_id) else {
                continue;
            };
            let lost =
                record.is_none_or(|n| n.liveness == NodeLiveness::Down || n.epoch > b.node_epoch);
            if lost {
                let wait = if job.record.exclusive {
                    let every = beats.get(node_id.as_str()).map_or(0, |b| b.every_ms);
                    config.exclusive_wait_ms(every)
                } else {
                    0
                };
                out.lost.push(LostTask {
                    task: task.clone(),
                    attempt: b.attempt,
                    node_epoch: b.node_epoch,
                    not_before: now_unix_ms.saturating_add(wait),
                });
                continue;
            }
            if b.stopping {
                continue;
            }
            let draining = record.is_some_and(|n| n.draining);
            let reason = match job.record.state {
                JobPhase::Cancelled => "cancelled",
                JobPhase::Revoked(_) | JobPhase::Released(_) => "revoked",
                JobPhase::Active if draining => "drain",
                JobPhase::Active => continue,
            };
            let grace = match record {
                Some(n) if reason == "drain" && n.drain_deadline_ms > 0 => {
                    match job.record.stop_grace_ms {
                        0 => n.drain_deadline_ms,
                        g => g.min(n.drain_deadline_ms),
                    }
                }
                _ => job.record.stop_grace_ms,
            };
            out.stops.push(StopTask {
                task: task.clone(),
                attempt: b.attempt,
                node: node_id.clone(),
                reason: reason.to_string(),
                grace_ms: grace,
            });
        }
    }
    out
}
