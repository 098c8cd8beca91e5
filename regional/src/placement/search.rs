//! Finding the node for one task: filter, then score a bounded sample.
//!
//! Owns the scoring rules. A candidate node must be schedulable, match the
//! task's label constraints and GPU model (decided per label class, see
//! `index`), have the free CPU, memory and GPUs, and keep every anti-affinity
//! rule. Among candidates, the score compares, in order:
//!
//! 1. the failure domain: for Spread, fewest tasks of the job in the zone,
//!    then in the rack; for Pack, most tasks of the job in the zone, then in
//!    the rack (a job with no tasks yet has no preference, and its first task
//!    picks the domain the rest then pack into);
//! 2. for a task without GPUs, a node without GPUs (GPUs are scarce; do not
//!    strand them behind CPU work);
//! 3. the sum of the weights of the satisfied affinity rules;
//! 4. for Spread, fewest tasks of the job on the node, then the lowest
//!    utilisation after placement; for Pack, the highest utilisation after
//!    placement (mean over the node's dimensions, in parts per million);
//! 5. the lowest node id.
//!
//! Bound on work: the domain comparison (1) is exact and costs one count per
//! rack. Racks are then visited best domain first, and nodes inside a group of
//! equally good racks from a rotating start; only the first
//! `max_scored_candidates` feasible nodes of the best group that has any are
//! scored. So a task costs O(racks + K + infeasible nodes skipped) instead of
//! O(nodes), at the price that the node chosen inside the best domain is the
//! best of a sample, not of all (the same trade Nomad makes with its limit).
//! The rotation spreads the sampling across the domain instead of re-examining
//! the same first nodes for every task, which both balances the choice and
//! keeps full nodes from being rescanned by every task.
//!
//! Must never: sample feasibility. If no group yields a feasible node, every
//! eligible node was checked, so "fits nowhere" is exact.

use super::index::{Amount, ClusterIndex, Filters, Verdict};
use super::state::{State, TaskInfo};
use super::types::{Policy, Scope};

/// Reusable buffers, so a solve allocates per task only when it must.
pub(crate) struct Search {
    /// (domain key, rack) of each eligible rack still to visit.
    racks: Vec<(u64, u32)>,
    zone_counts: Vec<u32>,
    rack_counts: Vec<u32>,
}

/// Larger is better; compared lexicographically, then lower node id wins.
type Score = (u8, u64, u32, u64);

const PPM: u64 = 1_000_000;

impl Search {
    pub fn new(ix: &ClusterIndex<'_>) -> Self {
        Search {
            racks: Vec::new(),
            zone_counts: vec![0; ix.zones],
            rack_counts: vec![0; ix.racks],
        }
    }

    /// The node `task` should go on, or `None` if it fits nowhere.
    /// `probe` varies the rotation from one call to the next.
    pub fn find(
        &mut self,
        ix: &ClusterIndex<'_>,
        filters: &Filters<'_>,
        state: &State,
        task: &TaskInfo,
        probe: u64,
        limit: usize,
    ) -> Option<u32> {
        let eligible = filters.racks(task.filter);
        if eligible.is_empty() {
            return None;
        }
        self.rank_racks(ix, state, task, eligible);
        let limit = limit.max(1);
        let mut best: Option<(Score, u32)> = None;
        let mut scored = 0usize;
        // Groups of equally preferred racks, best first. Usually the first
        // group has room, so the racks are never sorted: each round takes the
        // minimum key and drops that group only if it had no feasible node.
        while let Some(key) = self.racks.iter().map(|r| r.0).min() {
            let len = self.racks.len();
            let shift = (mix(probe, u32::MAX) % len as u64) as usize;
            'group: for i in 0..len {
                let (k, rack) = self.racks[(i + shift) % len];
                if k != key {
                    continue;
                }
                for (class, nodes) in &ix.rack_classes[rack as usize] {
                    if filters.verdict(task.filter, *class) != Verdict::Fits {
                        continue;
                    }
                    let start = rotation(probe, rack, nodes.len());
                    for &node in nodes[start..].iter().chain(&nodes[..start]) {
                        if !feasible(ix, state, task, node) {
                            continue;
                        }
                        let score = score(ix, state, task, node);
                        let better = match best {
                            None => true,
                            Some((s, n)) => score > s || (score == s && node < n),
                        };
                        if better {
                            best = Some((score, node));
                        }
                        scored += 1;
                        if scored >= limit {
                            break 'group;
                        }
                    }
                }
            }
            if best.is_some() {
                break;
            }
            self.racks.retain(|r| r.0 != key);
        }
        best.map(|(_, node)| node)
    }

    /// The domain key of each eligible rack (lower is preferred).
    fn rank_racks(
        &mut self,
        ix: &ClusterIndex<'_>,
        state: &State,
        task: &TaskInfo,
        eligible: &[u32],
    ) {
        let job = &state.jobs[task.footprint.job as usize];
        let zones = job.domains(Scope::Zone);
        let racks = job.domains(Scope::Rack);
        self.racks.clear();
        if zones.is_empty() {
            // The job has no task anywhere: every domain is as good.
            self.racks.extend(eligible.iter().map(|&r| (0, r)));
            return;
        }
        for (&z, &c) in zones {
            self.zone_counts[z as usize] = c;
        }
        for (&r, &c) in racks {
            self.rack_counts[r as usize] = c;
        }
        self.racks.extend(eligible.iter().map(|&rack| {
            let zone = ix.rack_zone[rack as usize];
            let zc = u64::from(self.zone_counts[zone as usize]);
            let rc = u64::from(self.rack_counts[rack as usize]);
            let key = match task.policy {
                Policy::Spread => (zc << 32) | rc,
                Policy::Pack => ((u64::from(u32::MAX) - zc) << 32) | (u64::from(u32::MAX) - rc),
            };
            (key, rack)
        }));
        for &z in zones.keys() {
            self.zone_counts[z as usize] = 0;
        }
        for &r in racks.keys() {
            self.rack_counts[r as usize] = 0;
        }
    }
}

/// Whether `task` can go on `node` now (its label class already passed).
pub(crate) fn feasible(ix: &ClusterIndex<'_>, state: &State, task: &TaskInfo, node: u32) -> bool {
    state.fits(ix, task.footprint.amount, node)
        && (task.shape_only || state.anti_affinity_allows(ix, &task.footprint, node))
}

fn score(ix: &ClusterIndex<'_>, state: &State, task: &TaskInfo, node: u32) -> Score {
    let n = node as usize;
    let amount = task.footprint.amount;
    let spares_gpus = u8::from(amount.gpus > 0 || ix.capacity[n].gpus == 0);
    let affinity = if task.affinity.is_empty() {
        0
    } else {
        state.affinity_score(ix, &task.affinity, node)
    };
    let utilisation = utilisation_after(state.used[n].plus(amount), ix.capacity[n]);
    match task.policy {
        Policy::Spread => {
            let on_node = state.jobs[task.footprint.job as usize].get(ix, Scope::Node, node);
            (
                spares_gpus,
                affinity,
                u32::MAX - on_node,
                PPM - utilisation.min(PPM),
            )
        }
        Policy::Pack => (spares_gpus, affinity, 0, utilisation),
    }
}

/// Mean utilisation over the dimensions the node has, in parts per million.
fn utilisation_after(used: Amount, capacity: Amount) -> u64 {
    let mut sum = 0u64;
    let mut dims = 0u64;
    for (u, c) in [
        (used.cpu, capacity.cpu),
        (used.mem, capacity.mem),
        (used.gpus, capacity.gpus),
    ] {
        // u64 arithmetic unless a node has more than ~18 TB of something.
        let share = match u.checked_mul(PPM) {
            Some(scaled) => scaled.checked_div(c),
            None => (u128::from(u) * u128::from(PPM))
                .checked_div(u128::from(c))
                .map(|s| u64::try_from(s).unwrap_or(u64::MAX)),
        };
        if let Some(share) = share {
            sum = sum.saturating_add(share);
            dims += 1;
        }
    }
    sum.checked_div(dims).unwrap_or(0)
}

/// A start offset in `0..len` that differs between probes and racks.
fn rotation(probe: u64, rack: u32, len: usize) -> usize {
    if len <= 1 {
        0
    } else {
        (mix(probe, rack) % len as u64) as usize
    }
}

/// A cheap deterministic mix (splitmix64 finaliser) of a probe and a salt.
fn mix(probe: u64, salt: u32) -> u64 {
    let mut z = probe
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(salt).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_is_the_mean_over_the_dimensions_the_node_has() {
        let cap = Amount {
            cpu: 1000,
            mem: 1000,
            gpus: 0,
        };
        let used = Amount {
            cpu: 500,
            mem: 1000,
            gpus: 0,
        };
        assert_eq!(utilisation_after(used, cap), 750_000);
    }

    #[test]
    fn rotation_stays_in_range_and_varies() {
        let starts: std::collections::BTreeSet<usize> =
            (0..64).map(|p| rotation(p, 3, 10)).collect();
        assert!(starts.iter().all(|&s| s < 10));
        assert!(starts.len() > 5);
    }
}
