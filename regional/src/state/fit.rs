//! Could a task of this job run on that node? Quick answers from memory.
//!
//! Owns the cheap feasibility questions placement asks outside the solver:
//! which shard should own a new job (the intake), whether a job that waits
//! fits a node that just freed room (queueing hints), and which other shard
//! could take a job its owner cannot place (hand-off). The answers look at
//! one task's resources and the job's label constraints only; the solver
//! stays the judge of everything else (anti-affinity, gangs, spread), so a
//! "fits" here may still end unschedulable there, never the other way round.
//!
//! Must never decide a binding: only where to try.

use crate::model::JobRecord;
use crate::placement::LabelConstraint;

use super::{NodeEntry, RegionState};

/// The label constraints of a job in the solver's form.
pub fn constraints(job: &JobRecord) -> Vec<LabelConstraint> {
    crate::model::pending_task(job, 0).constraints
}

/// Whether the node's labels allow the job at all (busy or not).
pub fn labels_allow(node: &NodeEntry, constraints: &[LabelConstraint]) -> bool {
    node.record
        .as_ref()
        .is_some_and(|r| constraints.iter().all(|c| c.matches(&r.labels)))
}

/// Whether one more task of `job` fits on `node` now: schedulable, labels
/// allow it, free resources cover it.
pub fn fits_now(node: &NodeEntry, job: &JobRecord, constraints: &[LabelConstraint]) -> bool {
    room_for(node, job, constraints) > 0
}

/// How many tasks of `job` would fit on `node` now (0 when none).
pub fn room_for(node: &NodeEntry, job: &JobRecord, constraints: &[LabelConstraint]) -> u64 {
    let Some(r) = &node.record else {
        return 0;
    };
    if !r.schedulable() || !constraints.iter().all(|c| c.matches(&r.labels)) {
        return 0;
    }
    let want = &job.resources;
    if want.gpus > 0 && !want.gpu_type.is_empty() && r.allocatable.gpu_type != want.gpu_type {
        return 0;
    }
    let per = |have: u64, used: u64, need: u64| {
        let free = have.saturating_sub(used);
        free.checked_div(need).unwrap_or(u64::MAX)
    };
    let memory_room =
        if meridian_control::planted::on(meridian_control::planted::Bug::PlacerIgnoresMemory) {
            // The planted defect of 7.5.
            u64::MAX
        } else {
            per(r.allocatable.mem, node.allocated.mem, want.mem)
        };
    per(r.allocatable.cpu, node.allocated.cpu, want.cpu)
        .min(memory_room)
        .min(per(
            u64::from(r.allocatable.gpus),
            u64::from(node.allocated.gpus),
            u64::from(want.gpus),
        ))
}

/// What a shard offers a job: tasks that fit now, and whether any node's
/// labels allow it at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offer {
    pub room: u64,
    pub allowed: bool,
}

/// Per shard, what it offers `job`.
pub fn offers(state: &RegionState, job: &JobRecord) -> Vec<Offer> {
    let constraints = constraints(job);
    let mut out = vec![Offer::default(); state.shard_count() as usize];
    for (entry, _) in state.node_records() {
        let Some(offer) = out.get_mut(entry.shard as usize) else {
            continue;
        };
        if labels_allow(entry, &constraints) {
            offer.allowed = true;
            offer.room = offer
                .room
                .saturating_add(room_for(entry, job, &constraints));
        }
    }
    out
}

/// The shard that should own a new job: `preferred` (the hash choice, which
/// spreads jobs evenly) when it has room for the job (all of a gang, one
/// task otherwise), else the shard with the most room; failing that a shard
/// whose labels allow the job; failing that `preferred`.
pub fn owner_for(state: &RegionState, job: &JobRecord, preferred: u32) -> u32 {
    let need = if job.gang {
        u64::from(job.task_count)
    } else {
        1
    };
    // Most jobs fit their hash shard: answer without looking further.
    let constraints = constraints(job);
    let mut room = 0u64;
    for (entry, _) in state.shard_nodes(preferred) {
        room = room.saturating_add(room_for(entry, job, &constraints));
        if room >= need {
            return preferred;
        }
    }
    let offers = offers(state, job);
    if let Some((shard, _)) = offers
        .iter()
        .enumerate()
        .filter(|(_, o)| o.room >= need)
        .max_by_key(|(i, o)| (o.room, std::cmp::Reverse(*i)))
    {
        return shard as u32;
    }
    if offers.get(preferred as usize).is_some_and(|o| o.allowed) {
        return preferred;
    }
    offers
        .iter()
        .position(|o| o.allowed)
        .map_or(preferred, |s| s as u32)
}

/// Another shard than `from` with room for the job now (all of a gang),
/// the one with the most room; `None` when no other shard has any.
pub fn better_shard(state: &RegionState, job: &JobRecord, pending: u32, from: u32) -> Option<u32> {
    let need = if job.gang { u64::from(pending) } else { 1 };
    offers(state, job)
        .iter()
        .enumerate()
        .filter(|(i, o)| *i as u32 != from && o.room >= need)
        .max_by_key(|(i, o)| (o.room, std::cmp::Reverse(*i)))
        .map(|(i, _)| i as u32)
}
