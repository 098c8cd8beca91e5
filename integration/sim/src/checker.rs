//! The history checker: the invariants of docs/architecture.md as code.
//!
//! Owns the invariants and their reading of a [`History`]: [`check`] walks
//! the records once in sequence order and returns every [`Violation`] it
//! finds, each naming the records involved so a failing run can be read back.
//!
//! Must never: look at anything but the history (no store, no clock), or
//! tolerate a violation because it looks like a harness artefact; if the
//! history is wrong, the recording is what must be fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::history::{Event, History, JobState, Resources, Scope, StopReason};

/// What the checker needs to know beyond the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// How long after [`Event::Healed`] every acknowledged job has to be seen
    /// converged (the convergence invariant of docs/architecture.md: a few lease lengths).
    pub convergence_bound: Duration,
    /// The region of each agent host, for 7.7's drains of a whole region;
    /// a node belongs to its host's region (its id is the host's name, a
    /// dash and a number). Empty: no region drain excuses a stop.
    pub agent_regions: BTreeMap<String, String>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            convergence_bound: Duration::from_secs(30),
            agent_regions: BTreeMap::new(),
        }
    }
}

impl CheckConfig {
    /// The region of `node`, when its host is known.
    fn region_of(&self, node: &str) -> Option<&str> {
        let (host, _) = node.rsplit_once('-')?;
        self.agent_regions.get(host).map(String::as_str)
    }
}

/// One broken invariant. `seq` fields point at the record that broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// 7.1: an exclusive task started on a node while running on another.
    ExclusiveTaskOnTwoNodes {
        task: String,
        running_on: String,
        started_on: String,
        seq: u64,
    },
    /// 7.2: an acknowledged job was never seen in the store afterwards.
    AcknowledgedJobLost { request_id: String, job_id: String },
    /// 7.2: one request id produced two job ids.
    RequestIdCreatedTwoJobs {
        request_id: String,
        job_ids: Vec<String>,
    },
    /// 7.3: a write committed with an epoch older than the scope's current one.
    FencedWriteCommitted {
        scope: Scope,
        owner: String,
        epoch: u64,
        current_epoch: u64,
        seq: u64,
    },
    /// 7.4: two holders won the same scope at the same epoch.
    TwoLeadersInOneEpoch {
        scope: Scope,
        epoch: u64,
        holders: Vec<String>,
    },
    /// 7.5: a node's placed resources exceeded its capacity.
    NodeOvercommitted {
        node: String,
        capacity: Resources,
        placed: Resources,
        seq: u64,
    },
    /// 7.6: an acknowledged job was not seen converged within the bound
    /// after the heal.
    JobDidNotConverge {
        job_id: String,
        last_seen: Option<JobState>,
        bound: Duration,
    },
    /// 7.7: a keep_running task was stopped by its agent while the control
    /// plane was down.
    KeepRunningTaskStopped {
        node: String,
        task: String,
        seq: u64,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::ExclusiveTaskOnTwoNodes {
                task,
                running_on,
                started_on,
                seq,
            } => write!(
                f,
                "exclusive task {task} started on {started_on} while running on {running_on} (record {seq})"
            ),
            Violation::AcknowledgedJobLost { request_id, job_id } => write!(
                f,
                "acknowledged job {job_id} (request {request_id}) is not in the store"
            ),
            Violation::RequestIdCreatedTwoJobs {
                request_id,
                job_ids,
            } => write!(f, "request id {request_id} created jobs {job_ids:?}"),
            Violation::FencedWriteCommitted {
                scope,
                owner,
                epoch,
                current_epoch,
                seq,
            } => write!(
                f,
                "{owner} committed a write for {scope} at epoch {epoch} after epoch {current_epoch} was taken (record {seq})"
            ),
            Violation::TwoLeadersInOneEpoch {
                scope,
                epoch,
                holders,
            } => write!(f, "{scope} had leaders {holders:?} at epoch {epoch}"),
            Violation::NodeOvercommitted {
                node,
                capacity,
                placed,
                seq,
            } => write!(
                f,
                "node {node} overcommitted: placed {placed:?} > capacity {capacity:?} (record {seq})"
            ),
            Violation::JobDidNotConverge {
                job_id,
                last_seen,
                bound,
            } => write!(
                f,
                "job {job_id} not converged within {bound:?} after heal (last seen {last_seen:?})"
            ),
            Violation::KeepRunningTaskStopped { node, task, seq } => write!(
                f,
                "keep_running task {task} stopped on {node} while the control plane was down (record {seq})"
            ),
        }
    }
}

/// Checks every invariant over `history`; empty means none is broken.
pub fn check(history: &History, config: &CheckConfig) -> Vec<Violation> {
    let mut out = Vec::new();
    check_exclusive(history, &mut out);
    check_submits(history, &mut out);
    check_fencing(history, &mut out);
    check_leaders(history, &mut out);
    check_capacity(history, &mut out);
    check_convergence(history, config, &mut out);
    check_keep_running(history, config, &mut out);
    out
}

/// How long after its host resumes a frozen node's agent has to stop an
/// exclusive task that another node started meanwhile. A frozen host's
/// tasks thaw with it, so no agent can stop them before they run again;
/// what the agent owes is to stop them at once, in its first steps after
/// waking (the simulation steps in 10 ms ticks), before doing anything else.
pub const RESUME_STOP_BOUND: Duration = Duration::from_millis(100);

/// 7.1, over task start/stop records. A task on a frozen node
/// ([`Event::NodePaused`]) does not run while frozen, so another node may
/// start it then; when the node resumes, its agent has to stop the task
/// within [`RESUME_STOP_BOUND`] if it runs elsewhere by then. The same
/// holds for a start elsewhere within that bound after the resume (the
/// move was decided while the node was frozen, and the start may land in
/// the very tick the node wakes): the resumed agent owes the same stop, by
/// the same deadline.
pub fn check_exclusive(history: &History, out: &mut Vec<Violation>) {
    let mut running: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut exclusive: BTreeSet<&str> = BTreeSet::new();
    let mut frozen: BTreeSet<&str> = BTreeSet::new();
    // Nodes resumed less than RESUME_STOP_BOUND ago: until when their
    // agents have to have stopped what runs elsewhere.
    let mut waking: BTreeMap<&str, Duration> = BTreeMap::new();
    // (task, resumed node) -> (node it runs on as well, deadline, record).
    let mut thawed: BTreeMap<(&str, &str), (&str, Duration, u64)> = BTreeMap::new();
    for r in history.records() {
        let late: Vec<(&str, &str)> = thawed
            .iter()
            .filter(|(_, (_, deadline, _))| r.at > *deadline)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            if let Some((other, _, seq)) = thawed.remove(&key) {
                out.push(Violation::ExclusiveTaskOnTwoNodes {
                    task: key.0.to_string(),
                    running_on: other.to_string(),
                    started_on: key.1.to_string(),
                    seq,
                });
            }
        }
        waking.retain(|_, deadline| r.at <= *deadline);
        match &r.event {
            Event::TaskStarted {
                node,
                task,
                exclusive: is_exclusive,
                ..
            } => {
                if *is_exclusive {
                    exclusive.insert(task);
                }
                let nodes = running.entry(task).or_default();
                let others: Vec<&str> = nodes
                    .iter()
                    .copied()
                    .filter(|n| *n != node.as_str() && !frozen.contains(*n))
                    .collect();
                let mut clash = None;
                if exclusive.contains(task.as_str()) {
                    for other in others {
                        match waking.get(other) {
                            Some(&deadline) => {
                                // Just woken: it owes the stop by its deadline.
                                thawed.insert((task, other), (node, deadline, r.seq));
                            }
                            None => clash = clash.or(Some(other)),
                        }
                    }
                }
                if let Some(other) = clash {
                    out.push(Violation::ExclusiveTaskOnTwoNodes {
                        task: task.clone(),
                        running_on: (*other).to_string(),
                        started_on: node.clone(),
                        seq: r.seq,
                    });
                }
                nodes.insert(node);
            }
            Event::TaskStopped { node, task, .. } => {
                if let Some(nodes) = running.get_mut(task.as_str()) {
                    nodes.remove(node.as_str());
                }
                thawed.remove(&(task.as_str(), node.as_str()));
            }
            Event::NodePaused { node } => {
                frozen.insert(node);
            }
            Event::NodeResumed { node } => {
                frozen.remove(node.as_str());
                waking.insert(node, r.at + RESUME_STOP_BOUND);
                for (task, nodes) in &running {
                    if !nodes.contains(node.as_str()) || !exclusive.contains(task) {
                        continue;
                    }
                    if let Some(other) = nodes
                        .iter()
                        .find(|n| **n != node.as_str() && !frozen.contains(*n))
                    {
                        thawed.insert((task, node), (other, r.at + RESUME_STOP_BOUND, r.seq));
                    }
                }
            }
            _ => {}
        }
    }
    // A history that ends inside the bound judges nothing it cannot see.
    let end = history.records().last().map(|r| r.at).unwrap_or_default();
    for ((task, node), (other, deadline, seq)) in thawed {
        if end > deadline {
            out.push(Violation::ExclusiveTaskOnTwoNodes {
                task: task.to_string(),
                running_on: other.to_string(),
                started_on: node.to_string(),
                seq,
            });
        }
    }
}

/// 7.2: no request id with two jobs (in acks or in the store), and every
/// acknowledged job seen in the store after its acknowledgement. The second
/// half only applies when the history has observations at all.
pub fn check_submits(history: &History, out: &mut Vec<Violation>) {
    let mut jobs_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut acked: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    let mut seen_after: BTreeMap<&str, u64> = BTreeMap::new();
    let mut observed_any = false;
    for r in history.records() {
        match &r.event {
            Event::SubmitAcked { request_id, job_id } => {
                jobs_of.entry(request_id).or_default().insert(job_id);
                acked.entry(job_id).or_insert((request_id, r.seq));
            }
            Event::JobObserved {
                job_id, request_id, ..
            } => {
                observed_any = true;
                jobs_of.entry(request_id).or_default().insert(job_id);
                seen_after.insert(job_id, r.seq);
            }
            _ => {}
        }
    }
    for (request_id, jobs) in jobs_of {
        if jobs.len() > 1 {
            out.push(Violation::RequestIdCreatedTwoJobs {
                request_id: request_id.to_string(),
                job_ids: jobs.iter().map(|j| j.to_string()).collect(),
            });
        }
    }
    if !observed_any {
        return;
    }
    for (job_id, (request_id, ack_seq)) in acked {
        let seen = seen_after.get(job_id).is_some_and(|s| *s > ack_seq);
        if !seen {
            out.push(Violation::AcknowledgedJobLost {
                request_id: request_id.to_string(),
                job_id: job_id.to_string(),
            });
        }
    }
}

/// 7.3: a committed write must carry the newest epoch won for its scope at
/// the time it committed.
pub fn check_fencing(history: &History, out: &mut Vec<Violation>) {
    let mut current: BTreeMap<&Scope, u64> = BTreeMap::new();
    for r in history.records() {
        match &r.event {
            Event::LeaderChanged { scope, epoch, .. } => {
                let e = current.entry(scope).or_insert(*epoch);
                *e = (*e).max(*epoch);
            }
            Event::WriteAttempt {
                scope,
                owner,
                epoch,
                committed: true,
            } => {
                if let Some(cur) = current.get(scope)
                    && *epoch < *cur
                {
                    out.push(Violation::FencedWriteCommitted {
                        scope: scope.clone(),
                        owner: owner.clone(),
                        epoch: *epoch,
                        current_epoch: *cur,
                        seq: r.seq,
                    });
                }
            }
            _ => {}
        }
    }
}

/// 7.4: one holder per (scope, epoch).
pub fn check_leaders(history: &History, out: &mut Vec<Violation>) {
    let mut holders: BTreeMap<(&Scope, u64), BTreeSet<&str>> = BTreeMap::new();
    for r in history.records() {
        if let Event::LeaderChanged {
            scope,
            holder,
            epoch,
        } = &r.event
        {
            holders.entry((scope, *epoch)).or_default().insert(holder);
        }
    }
    for ((scope, epoch), hs) in holders {
        if hs.len() > 1 {
            out.push(Violation::TwoLeadersInOneEpoch {
                scope: scope.clone(),
                epoch,
                holders: hs.iter().map(|h| h.to_string()).collect(),
            });
        }
    }
}

/// 7.5, over node load snapshots.
pub fn check_capacity(history: &History, out: &mut Vec<Violation>) {
    for r in history.records() {
        if let Event::NodeLoad {
            node,
            capacity,
            placed,
        } = &r.event
            && !placed.fits_in(capacity)
        {
            out.push(Violation::NodeOvercommitted {
                node: node.clone(),
                capacity: *capacity,
                placed: *placed,
                seq: r.seq,
            });
        }
    }
}

/// 7.6: after the first [`Event::Healed`], every acknowledged job must be
/// observed converged no later than `bound` after it. Without a heal there
/// is nothing to check.
pub fn check_convergence(history: &History, config: &CheckConfig, out: &mut Vec<Violation>) {
    let Some(healed) = history
        .records()
        .iter()
        .find(|r| matches!(r.event, Event::Healed))
    else {
        return;
    };
    let deadline = healed.at + config.convergence_bound;
    let mut acked: BTreeSet<&str> = BTreeSet::new();
    let mut converged: BTreeSet<&str> = BTreeSet::new();
    let mut last: BTreeMap<&str, &JobState> = BTreeMap::new();
    for r in history.records() {
        match &r.event {
            Event::SubmitAcked { job_id, .. } => {
                acked.insert(job_id);
            }
            Event::JobObserved { job_id, state, .. } => {
                last.insert(job_id, state);
                if r.seq > healed.seq && r.at <= deadline && state.is_converged() {
                    converged.insert(job_id);
                }
            }
            _ => {}
        }
    }
    for job in acked {
        if !converged.contains(job) {
            out.push(Violation::JobDidNotConverge {
                job_id: job.to_string(),
                last_seen: last.get(job).map(|s| (*s).clone()),
                bound: config.convergence_bound,
            });
        }
    }
}

/// 7.7: between [`Event::ControlPlaneDown`] and [`Event::ControlPlaneUp`], no
/// agent stops a keep_running task of its own accord (exits and crashes of
/// the node itself are not the agent's decision).
///
/// A stop the control plane decided before it went down is carried out
/// during the outage when its command was still on its way (a drain
/// acknowledged just before), or waited for an agent that was frozen (a
/// task placed again elsewhere while its node was silent, whose agent
/// learns it is fenced as it resumes): that is the control plane's
/// decision, not the agent's. Such a stop is excused when, before the
/// outage began, the task was bound to another node after it started here,
/// or a drain of the node or of its region was acknowledged and not undone.
pub fn check_keep_running(history: &History, config: &CheckConfig, out: &mut Vec<Violation>) {
    let mut keep: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut down = false;
    // Written off before the outage: placed again on another node.
    let mut moved: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut drained_nodes: BTreeSet<String> = BTreeSet::new();
    let mut drained_regions: BTreeSet<String> = BTreeSet::new();
    // What the control plane had decided when the outage began.
    let mut excused: BTreeSet<(&str, &str)> = BTreeSet::new();
    for r in history.records() {
        match &r.event {
            Event::TaskStarted {
                node,
                task,
                keep_running: true,
                ..
            } => {
                keep.insert((node, task));
                moved.remove(&(node.as_str(), task.as_str()));
            }
            Event::Binding { task, node: to, .. } if !down => {
                for &(node, t) in &keep {
                    if t == task && node != to {
                        moved.insert((node, t));
                    }
                }
            }
            Event::AdminAcked { action } if !down => {
                let args = quoted(action);
                match (action.split('(').next(), args.as_slice()) {
                    (Some("DrainNode"), [_, node]) => {
                        drained_nodes.insert(node.clone());
                    }
                    (Some("UncordonNode"), [_, node]) => {
                        drained_nodes.remove(node);
                    }
                    (Some("DrainRegion"), [region]) => {
                        drained_regions.insert(region.clone());
                    }
                    (Some("UndrainRegion"), [region]) => {
                        drained_regions.remove(region);
                    }
                    _ => {}
                }
            }
            Event::ControlPlaneDown => {
                down = true;
                excused = keep
                    .iter()
                    .filter(|key @ (node, _)| {
                        moved.contains(*key)
                            || drained_nodes.contains(*node)
                            || config
                                .region_of(node)
                                .is_some_and(|region| drained_regions.contains(region))
                    })
                    .copied()
                    .collect();
            }
            Event::ControlPlaneUp => down = false,
            Event::TaskStopped { node, task, reason } => {
                let key = (node.as_str(), task.as_str());
                if down
                    && *reason == StopReason::Stopped
                    && keep.contains(&key)
                    && !excused.contains(&key)
                {
                    out.push(Violation::KeepRunningTaskStopped {
                        node: node.clone(),
                        task: task.clone(),
                        seq: r.seq,
                    });
                }
                keep.remove(&key);
            }
            _ => {}
        }
    }
}

/// The double-quoted arguments of an operator action as recorded
/// (`DrainNode("r1", "agent-0-000000")`).
fn quoted(action: &str) -> Vec<String> {
    action
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
