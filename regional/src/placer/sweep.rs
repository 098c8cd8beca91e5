//! What a shard leader's sweep decides: liveness, lost tasks, stops.
//!
//! Owns the node state machine's timing (READY -> SUSPECT when heartbeats
//! are late, -> DOWN after the grace; back to READY when they resume before
//! DOWN), judged from the heartbeats this replica heard (a node counts as
//! heard when the term began), and what follows from node and job state: a
//! task bound under a node epoch that is gone is lost (pending again, after
//! a fence wait for an exclusive job); a task of a cancelled or revoked job,
//! or on a draining node, is stopped once. The task rules look only at the
//! nodes and jobs that changed since the last sweep ([`SweepScope`]), and at
//! every bound task at a term's start and now and then as a repair, so a
//! region with 100,000 bound tasks does not walk them all twice a second.
//! Pure: it reads memory and returns intents; the shard loop submits them, the liveness changes first (the
//! epoch bump commits alone before any task is written off). Must never
//! touch nodes of other shards.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_control::Instant;

use crate::liveness::Beat;
use crate::model::{JobPhase, NodeLiveness};
use crate::pipeline::node::LivenessChange;
use crate::pipeline::sweep::{LostTask, StopTask, SweepTasks};
use crate::placement::TaskRef;
use crate::state::{Bound, JobEntry, NodeEntry, RegionState};

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

    /// What a node whose last beat is `late_ms` old is, when it was told to
    /// beat every `every_ms`.
    pub fn judge(&self, late_ms: u64, every_ms: u64) -> NodeLiveness {
        let (suspect_ms, dead_ms) = self.deadlines(every_ms);
        if late_ms >= dead_ms {
            NodeLiveness::Down
        } else if late_ms >= suspect_ms {
            NodeLiveness::Suspect
        } else {
            NodeLiveness::Ready
        }
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
    beats: &BTreeMap<String, Beat>,
    shard: u32,
    heard_from: Instant,
    now: Instant,
    config: &LivenessConfig,
) -> Vec<LivenessChange> {
    let mut changes = Vec::new();
    // Both maps are ordered by node id, so one walk through the beats beside
    // the nodes finds each node's beat: a lookup per node, twice a second
    // for every shard of a 10,000-node region, was most of the sweep.
    let mut beats = beats.iter().peekable();
    for (_, node) in state.shard_nodes(shard) {
        let id = node.node_id.as_str();
        while beats.next_if(|(b, _)| b.as_str() < id).is_some() {}
        let beat = beats.next_if(|(b, _)| b.as_str() == id).map(|(_, b)| b);
        if node.liveness == NodeLiveness::Down {
            // DOWN is left only by registering again.
            continue;
        }
        let last = beat.map_or(heard_from, |b| b.at.max(heard_from));
        let late = ms(now.saturating_duration_since(last));
        let to = config.judge(late, beat.map_or(0, |b| b.every_ms));
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

/// What a task sweep must look at: every bound task of the shard, or only
/// those on nodes and of jobs that changed since the last sweep. Every
/// condition the sweep acts on (a node gone, down, re-registered or
/// draining; a job no longer active; a task bound under an older epoch)
/// arrives as a change of a node or a job, so a sweep of what changed finds
/// what a full one would; a full one still runs now and then as a repair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepScope {
    pub all: bool,
    pub nodes: BTreeSet<String>,
    pub jobs: BTreeSet<String>,
}

impl SweepScope {
    /// Every bound task.
    pub fn everything() -> Self {
        SweepScope {
            all: true,
            ..SweepScope::default()
        }
    }

    /// Notes what a change of memory may have made for the sweep to do.
    pub fn note(&mut self, delta: &crate::state::Delta) {
        self.all |= delta.reload || delta.layout;
        if !self.owes_all() {
            self.nodes
                .extend(delta.nodes.iter().chain(&delta.epochs).cloned());
            self.jobs.extend(delta.jobs.iter().cloned());
        }
    }

    /// Adds what `other` covers (a sweep that failed is owed again).
    pub fn merge(&mut self, other: SweepScope) {
        self.all |= other.all;
        if !self.owes_all() {
            self.nodes.extend(other.nodes);
            self.jobs.extend(other.jobs);
        }
    }

    /// Whether every bound task is owed; the sets add nothing then and are
    /// dropped.
    fn owes_all(&mut self) -> bool {
        if self.all {
            self.nodes.clear();
            self.jobs.clear();
        }
        self.all
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.nodes.is_empty() && self.jobs.is_empty()
    }
}

/// Lost tasks and stops on `shard`'s nodes, among the tasks `scope` covers.
/// `every_ms` gives the heartbeat pace a node was told (0: the base one).
pub fn task_changes(
    state: &RegionState,
    every_ms: &dyn Fn(&str) -> u64,
    shard: u32,
    scope: &SweepScope,
    config: &LivenessConfig,
    now_unix_ms: u64,
) -> SweepTasks {
    let mut out = SweepTasks {
        shard,
        ..SweepTasks::default()
    };
    let judge = Judge {
        state,
        every_ms,
        config,
        now_unix_ms,
    };
    let of_shard = |e: &NodeEntry| e.shard == shard;
    if scope.all {
        for (node_id, entry) in state.nodes.iter().filter(|(_, e)| of_shard(e)) {
            judge.node(node_id, entry, &mut out);
        }
        return out;
    }
    for node_id in &scope.nodes {
        if let Some(entry) = state.nodes.get(node_id).filter(|e| of_shard(e)) {
            judge.node(node_id, entry, &mut out);
        }
    }
    for job_id in &scope.jobs {
        let Some(job) = state.jobs.get(job_id) else {
            continue;
        };
        for (index, t) in job.tasks_of_bound_blocks() {
            if !t.is_bound() || scope.nodes.contains(&t.node) {
                continue;
            }
            let Some(entry) = state.nodes.get(&t.node).filter(|e| of_shard(e)) else {
                continue;
            };
            // The common case, a task just bound or reported on a healthy
            // node, needs no closer look.
            let settled = job.record.state == JobPhase::Active
                && entry.record.as_ref().is_some_and(|n| {
                    n.liveness != NodeLiveness::Down && !n.draining && n.epoch <= t.node_epoch
                });
            if settled {
                continue;
            }
            let task = TaskRef::new(job_id, index);
            if let Some(b) = entry.bound.get(&task) {
                judge.task(&t.node, entry, &task, b, job, &mut out);
            }
        }
    }
    out
}

/// The rules of [`task_changes`] for one bound task.
struct Judge<'a> {
    state: &'a RegionState,
    every_ms: &'a dyn Fn(&str) -> u64,
    config: &'a LivenessConfig,
    now_unix_ms: u64,
}

impl Judge<'_> {
    /// Every bound task of one node.
    fn node(&self, node_id: &str, entry: &NodeEntry, out: &mut SweepTasks) {
        // Bound tasks are ordered by job: one lookup per job and node, not
        // per task.
        let mut last: Option<(&str, Option<&JobEntry>)> = None;
        for (task, b) in &entry.bound {
            let job = match last {
                Some((id, job)) if id == task.job_id => job,
                _ => {
                    let job = self.state.jobs.get(&task.job_id);
                    last = Some((task.job_id.as_str(), job));
                    job
                }
            };
            if let Some(job) = job {
                self.task(node_id, entry, task, b, job, out);
            }
        }
    }

    fn task(
        &self,
        node_id: &str,
        entry: &NodeEntry,
        task: &TaskRef,
        b: &Bound,
        job: &JobEntry,
        out: &mut SweepTasks,
    ) {
        let record = entry.record.as_ref();
        let lost =
            record.is_none_or(|n| n.liveness == NodeLiveness::Down || n.epoch > b.node_epoch);
        if lost {
            let wait = if job.record.exclusive {
                self.config.exclusive_wait_ms((self.every_ms)(node_id))
            } else {
                0
            };
            out.lost.push(LostTask {
                task: task.clone(),
                attempt: b.attempt,
                node_epoch: b.node_epoch,
                not_before: self.now_unix_ms.saturating_add(wait),
            });
            return;
        }
        if b.stopping {
            return;
        }
        let draining = record.is_some_and(|n| n.draining);
        let reason = match job.record.state {
            JobPhase::Cancelled => "cancelled",
            JobPhase::Revoked(_) | JobPhase::Released(_) => "revoked",
            JobPhase::Active if draining => "drain",
            JobPhase::Active => return,
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
            node: node_id.to_string(),
            reason: reason.to_string(),
            grace_ms: grace,
        });
    }
}

#[cfg(test)]
mod tests;
