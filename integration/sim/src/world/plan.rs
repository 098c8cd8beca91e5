//! The fault plan of one run, drawn from its seed.
//!
//! Owns the fault vocabulary ([`Fault`]), the mix ([`FaultMix`]: which
//! kinds are allowed and how many to draw) and [`plan`], which turns a seed
//! into a timed schedule of fault starts and ends inside the safety phase.
//! Must never read anything but its seed and settings: the same seed gives
//! the same plan.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Names of the hosts a fault can hit.
#[derive(Debug, Clone)]
pub struct Hosts {
    pub globals: Vec<String>,
    /// The replicas of every region.
    pub regionals: Vec<String>,
    pub agents: Vec<String>,
    /// Each region's replicas, by region name (what a region loss takes
    /// down together).
    pub regions: BTreeMap<String, Vec<String>>,
}

impl Hosts {
    /// Every control-plane host (global and region replicas).
    pub fn control_plane(&self) -> Vec<String> {
        self.globals
            .iter()
            .chain(&self.regionals)
            .cloned()
            .collect()
    }
}

/// Which store a store fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Global,
    Region,
}

/// One change to the world, at a time of the plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Messages between the two groups are dropped, both ways.
    Partition(Vec<String>, Vec<String>),
    Repair(Vec<String>, Vec<String>),
    /// Messages from the first group to the second are dropped.
    PartitionOneway(Vec<String>, Vec<String>),
    RepairOneway(Vec<String>, Vec<String>),
    /// The largest message delay of the whole network.
    Latency(Duration),
    /// Probability that a link fails (and later repairs by itself).
    LinkFailRate(f64),
    /// The host's process dies; [`Fault::Restart`] starts it again.
    Crash(String),
    Restart(String),
    /// The host's process stops committing and is cut off from the network
    /// until [`Fault::Resume`] (a long GC pause).
    Pause(String),
    Resume(String),
    /// Fraction of a tier's commits that fail (split evenly between
    /// `not_committed` and both kinds of `commit_unknown_result`).
    StoreFaults(Tier, f64),
    /// The host's wall clock is off by this many milliseconds from now on.
    ClockSkew(String, i64),
    /// Every control-plane process dies; agents stay up.
    ControlPlaneDown,
    ControlPlaneUp,
    /// Every replica of one region dies (its agents stay up) until
    /// [`Fault::RegionUp`]: the region is lost to the global tier, which
    /// hands its jobs to another region once the region lease runs out.
    RegionDown(String),
    RegionUp(String),
    /// The agent's whole host freezes (SIGSTOP of the agent and its tasks,
    /// a paused VM): no timer fires, nothing is sent or received, until
    /// [`Fault::AgentResume`].
    AgentPause(String),
    AgentResume(String),
    /// An operator drains the agent's node through the Federation API
    /// (cordon, move its tasks elsewhere) and uncordons it at
    /// [`Fault::UncordonNode`].
    DrainNode(String),
    UncordonNode(String),
    /// An operator drains a region with evacuation through the Federation
    /// API while its lease is live (its jobs are revoked and routed
    /// elsewhere), and ends the drain at [`Fault::UndrainRegion`].
    DrainRegion(String),
    UndrainRegion(String),
}

/// The kinds of fault a run may draw, and how many.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultMix {
    pub partitions: bool,
    pub one_way: bool,
    pub delay_and_loss: bool,
    /// With delays, also let links fail at random (turmoil drops what they
    /// carry; off by default for the reason `one_way` is).
    pub link_loss: bool,
    pub crashes: bool,
    pub pauses: bool,
    pub store_faults: bool,
    pub clock_jumps: bool,
    pub control_plane_down: bool,
    /// Loss of one whole region (needs more than one region).
    pub region_loss: bool,
    /// Freezes of an agent's host and partitions of one agent from the
    /// region replicas, 4 to 12 s: often longer than it takes the region to
    /// declare the node DOWN and place its exclusive tasks again (node
    /// timeout + grace + exclusive wait, 8 s in the simulation).
    pub long_agent_faults: bool,
    /// Node drains and region drains (with evacuation) through the
    /// Federation API.
    pub drains: bool,
    /// Faults drawn per run (at least one, at most this many).
    pub max_faults: usize,
    /// Largest clock jump, either way (the configured skew bound).
    pub skew_bound: Duration,
}

impl Default for FaultMix {
    fn default() -> Self {
        FaultMix {
            partitions: true,
            // Off by default: turmoil drops the segments, and a dropped
            // segment hangs an established simulated TCP stream for good
            // (real TCP would retransmit); see docs/simulation.md.
            one_way: false,
            delay_and_loss: true,
            link_loss: false,
            crashes: true,
            pauses: true,
            store_faults: true,
            clock_jumps: true,
            control_plane_down: true,
            region_loss: false,
            long_agent_faults: false,
            drains: false,
            max_faults: 4,
            skew_bound: Duration::from_millis(200),
        }
    }
}

impl FaultMix {
    fn kinds(&self) -> Vec<u8> {
        let flags = [
            self.partitions,
            self.one_way,
            self.delay_and_loss,
            self.crashes,
            self.pauses,
            self.store_faults,
            self.clock_jumps,
            self.control_plane_down,
            self.region_loss,
            // Appended, so a mix without them draws as it always did.
            self.long_agent_faults,
            self.drains,
        ];
        (0u8..)
            .zip(flags)
            .filter_map(|(i, on)| on.then_some(i))
            .collect()
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, from: &'a [String]) -> &'a String {
    &from[rng.random_range(0..from.len())]
}

fn ms(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

/// The timed faults of one run; every fault that starts also ends before
/// `safety` (the heal phase undoes anything left over all the same).
pub fn plan(seed: u64, mix: &FaultMix, hosts: &Hosts, safety: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17);
    let kinds = mix.kinds();
    let mut out = Vec::new();
    if kinds.is_empty() || mix.max_faults == 0 {
        return out;
    }
    let count = rng.random_range(1..=mix.max_faults);
    let latest = safety.saturating_sub(Duration::from_secs(1)).as_millis() as u64;
    for _ in 0..count {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let start = ms(&mut rng, 2_000, latest.max(2_001) * 2 / 3);
        let len = ms(&mut rng, 1_500, 6_000);
        let end = (start + len).min(Duration::from_millis(latest));
        let last = Duration::from_millis(latest);
        push_fault(&mut rng, kind, mix, hosts, (start, end, last), &mut out);
    }
    // Stable: a start and its end at the same time keep their order.
    out.sort_by_key(|(at, _)| *at);
    out
}

/// The two ends of a fault of `kind` from `start` to `end`, into `out`.
fn push_fault(
    rng: &mut ChaCha8Rng,
    kind: u8,
    mix: &FaultMix,
    hosts: &Hosts,
    (start, end, latest): (Duration, Duration, Duration),
    out: &mut Vec<(Duration, Fault)>,
) {
    match kind {
        0 => {
            let (a, b) = partition_sides(rng, hosts);
            out.push((start, Fault::Partition(a.clone(), b.clone())));
            out.push((end, Fault::Repair(a, b)));
        }
        1 => {
            let (a, b) = one_way_sides(rng, hosts);
            out.push((start, Fault::PartitionOneway(a.clone(), b.clone())));
            out.push((end, Fault::RepairOneway(a, b)));
        }
        2 => {
            out.push((start, Fault::Latency(ms(rng, 50, 400))));
            out.push((end, Fault::Latency(Duration::from_millis(20))));
            if mix.link_loss {
                out.push((start, Fault::LinkFailRate(rng.random_range(0.0..0.05))));
                out.push((end, Fault::LinkFailRate(0.0)));
            }
        }
        3 => {
            let all: Vec<String> = hosts
                .control_plane()
                .into_iter()
                .chain(hosts.agents.iter().cloned())
                .collect();
            let h = pick(rng, &all).clone();
            out.push((start, Fault::Crash(h.clone())));
            out.push((end, Fault::Restart(h)));
        }
        4 => {
            let h = pick(rng, &hosts.regionals).clone();
            out.push((start, Fault::Pause(h.clone())));
            out.push((end, Fault::Resume(h)));
        }
        5 => {
            let tier = if rng.random_bool(0.5) {
                Tier::Global
            } else {
                Tier::Region
            };
            out.push((start, Fault::StoreFaults(tier, rng.random_range(0.05..0.3))));
            out.push((end, Fault::StoreFaults(tier, 0.0)));
        }
        6 => {
            let h = pick(rng, &hosts.control_plane()).clone();
            let bound = mix.skew_bound.as_millis() as i64;
            out.push((
                start,
                Fault::ClockSkew(h.clone(), rng.random_range(-bound..=bound)),
            ));
            out.push((end, Fault::ClockSkew(h, 0)));
        }
        7 => {
            out.push((start, Fault::ControlPlaneDown));
            out.push((end, Fault::ControlPlaneUp));
        }
        8 => {
            let names: Vec<String> = hosts.regions.keys().cloned().collect();
            let region = pick(rng, &names).clone();
            out.push((start, Fault::RegionDown(region.clone())));
            out.push((end, Fault::RegionUp(region)));
        }
        9 => {
            let h = pick(rng, &hosts.agents).clone();
            let end = (start + ms(rng, 4_000, 12_000)).min(latest);
            if rng.random_bool(0.5) {
                out.push((start, Fault::AgentPause(h.clone())));
                out.push((end, Fault::AgentResume(h)));
            } else {
                let (a, b) = (vec![h], hosts.regionals.clone());
                out.push((start, Fault::Partition(a.clone(), b.clone())));
                out.push((end, Fault::Repair(a, b)));
            }
        }
        _ => {
            if rng.random_bool(0.5) {
                let h = pick(rng, &hosts.agents).clone();
                out.push((start, Fault::DrainNode(h.clone())));
                out.push((end, Fault::UncordonNode(h)));
            } else {
                let names: Vec<String> = hosts.regions.keys().cloned().collect();
                let region = pick(rng, &names).clone();
                out.push((start, Fault::DrainRegion(region.clone())));
                out.push((end, Fault::UndrainRegion(region)));
            }
        }
    }
}

/// The sides of a partition: global from region, region from agents, or one
/// agent from the region.
fn partition_sides(rng: &mut ChaCha8Rng, hosts: &Hosts) -> (Vec<String>, Vec<String>) {
    match rng.random_range(0..3) {
        0 => (hosts.globals.clone(), hosts.regionals.clone()),
        1 => (hosts.regionals.clone(), hosts.agents.clone()),
        _ => (
            vec![pick(rng, &hosts.agents).clone()],
            hosts.regionals.clone(),
        ),
    }
}

/// The sides of a one-way partition: one agent to the region, or the
/// region to the global tier.
fn one_way_sides(rng: &mut ChaCha8Rng, hosts: &Hosts) -> (Vec<String>, Vec<String>) {
    if rng.random_bool(0.5) {
        (
            vec![pick(rng, &hosts.agents).clone()],
            hosts.regionals.clone(),
        )
    } else {
        (hosts.regionals.clone(), hosts.globals.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Hosts {
        Hosts {
            globals: vec!["g0".into(), "g1".into()],
            regionals: vec!["r0".into(), "r1".into()],
            agents: vec!["a0".into()],
            regions: BTreeMap::from([("r".to_string(), vec!["r0".into(), "r1".into()])]),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_every_fault_ends_inside_the_safety_phase() {
        let safety = Duration::from_secs(20);
        let a = plan(7, &FaultMix::default(), &hosts(), safety);
        assert_eq!(a, plan(7, &FaultMix::default(), &hosts(), safety));
        assert!(!a.is_empty());
        assert!(a.iter().all(|(at, _)| *at < safety));
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn a_mix_with_one_kind_draws_only_that_kind() {
        let mix = FaultMix {
            partitions: false,
            one_way: false,
            delay_and_loss: false,
            crashes: false,
            store_faults: false,
            clock_jumps: false,
            control_plane_down: false,
            ..FaultMix::default()
        };
        for seed in 0..20 {
            for (_, f) in plan(seed, &mix, &hosts(), Duration::from_secs(20)) {
                assert!(matches!(f, Fault::Pause(_) | Fault::Resume(_)), "{f:?}");
            }
        }
    }
}
