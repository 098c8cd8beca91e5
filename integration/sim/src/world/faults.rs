//! Applying the fault plan to a running world, and the heal.
//!
//! Owns [`World`] (what the harness knows of the hosts it runs: pause
//! gates, clock skews, crashed and frozen hosts, lost regions, cut links)
//! and every change a [`Fault`] makes to it: crashes and restarts, network
//! cuts, pauses of region replicas and freezes of agent hosts, store faults,
//! clock jumps, losses of the control plane or of a region, and the
//! operator's drains (handed to the admin host, which calls the real API).
//! Records in the history only the harness's own actions. Must never
//! decide anything about a run's verdict, nor reach into a process's
//! state beyond what the fault itself is (a crash, a freeze, a cut).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use meridian_store::fault::FaultConfig;
use tokio::sync::mpsc::UnboundedSender;

use super::admin::Command;
use super::plan::{Fault, Hosts, Tier};
use super::{REGION, Tiers, hosts};
use crate::exec::Running;
use crate::gate::PauseGate;
use crate::history::{Event, Recorder, StopReason};

/// What the harness knows of the world it runs.
pub(super) struct World {
    pub hosts: Hosts,
    pub gates: BTreeMap<String, PauseGate>,
    pub skews: BTreeMap<String, Arc<AtomicI64>>,
    pub running: BTreeMap<String, Running>,
    pub crashed: BTreeSet<String>,
    /// The region of each region replica and agent.
    pub region_of: BTreeMap<String, String>,
    /// Regions lost whole ([`Fault::RegionDown`]).
    pub regions_down: BTreeSet<String>,
    /// Paused hosts whose network is held.
    pub held: BTreeSet<String>,
    /// Agent hosts frozen whole ([`Fault::AgentPause`]).
    pub frozen: BTreeSet<String>,
    pub control_plane_down: bool,
    pub cuts: Vec<(Vec<String>, Vec<String>, bool)>,
    /// The operator's requests, to the admin host.
    pub admin: UnboundedSender<Command>,
    /// Drains in force (nodes by agent host, regions by name), undone at
    /// the heal.
    pub drained_nodes: BTreeSet<String>,
    pub drained_regions: BTreeSet<String>,
}

impl World {
    pub fn new(hosts: Hosts, admin: UnboundedSender<Command>) -> Self {
        World {
            hosts,
            gates: BTreeMap::new(),
            skews: BTreeMap::new(),
            running: BTreeMap::new(),
            crashed: BTreeSet::new(),
            region_of: BTreeMap::new(),
            regions_down: BTreeSet::new(),
            held: BTreeSet::new(),
            frozen: BTreeSet::new(),
            control_plane_down: false,
            cuts: Vec::new(),
            admin,
            drained_nodes: BTreeSet::new(),
            drained_regions: BTreeSet::new(),
        }
    }
}

fn set_store_faults(tiers: &Tiers, tier: Tier, fraction: f64) {
    let config = if fraction > 0.0 {
        FaultConfig::mixed(fraction)
    } else {
        FaultConfig::none()
    };
    match tier {
        Tier::Global => tiers.global.set_config(config),
        Tier::Region => {
            for (_, faulty) in tiers.regions.values() {
                faulty.set_config(config);
            }
        }
    }
}

fn crash(sim: &mut turmoil::Sim<'_>, world: &mut World, recorder: &Recorder, host: &str) {
    if !world.crashed.insert(host.to_string()) {
        return;
    }
    sim.crash(host);
    // An agent's simulated tasks live in its process and die with it.
    if let Some(running) = world.running.get(host) {
        let node = hosts::node_id(host);
        let tasks: Vec<String> = std::mem::take(&mut *running.lock()).into_iter().collect();
        for task in tasks {
            recorder.record(
                "harness",
                Event::TaskStopped {
                    node: node.clone(),
                    task,
                    reason: StopReason::NodeCrashed,
                },
            );
        }
    }
}

fn restart(sim: &mut turmoil::Sim<'_>, world: &mut World, recorder: &Recorder, host: &str) {
    if world.crashed.remove(host) {
        // A process started again is not frozen, whatever its host was.
        thaw(sim, world, recorder, host);
        sim.bounce(host);
    }
}

/// Freezes an agent's whole host: its clock (so its timers and its
/// simulated tasks) stops, and its network is held both ways.
fn freeze(sim: &mut turmoil::Sim<'_>, world: &mut World, recorder: &Recorder, host: &str) {
    if world.crashed.contains(host) || world.frozen.contains(host) {
        return;
    }
    let Some(gate) = world.gates.get(host) else {
        return;
    };
    gate.pause();
    world.frozen.insert(host.to_string());
    for other in all_hosts(&world.hosts) {
        if other != host {
            sim.hold(host, other.as_str());
        }
    }
    world.held.insert(host.to_string());
    recorder.record(
        "harness",
        Event::NodePaused {
            node: hosts::node_id(host),
        },
    );
}

/// Lets a frozen agent host run again.
fn thaw(sim: &mut turmoil::Sim<'_>, world: &mut World, recorder: &Recorder, host: &str) {
    if !world.frozen.remove(host) {
        return;
    }
    recorder.record(
        "harness",
        Event::NodeResumed {
            node: hosts::node_id(host),
        },
    );
    resume(sim, world, host);
}

/// Hands an operator's request to the admin host.
fn ask(world: &World, command: Command) {
    // The admin host lives as long as the simulation; a send fails only
    // once the run is over, when nothing is asked any more.
    let _ = world.admin.send(command);
}

fn region_of(world: &World, host: &str) -> String {
    world
        .region_of
        .get(host)
        .cloned()
        .unwrap_or_else(|| REGION.to_string())
}

pub(super) fn apply(
    sim: &mut turmoil::Sim<'_>,
    world: &mut World,
    tiers: &Tiers,
    recorder: &Recorder,
    fault: &Fault,
) {
    recorder.record(
        "harness",
        Event::Fault {
            description: format!("{fault:?}"),
        },
    );
    match fault {
        // Held, not dropped: real TCP retransmits across a partition of a
        // few seconds and delivers everything once it heals, whereas a
        // dropped segment would hang a simulated stream for good.
        Fault::Partition(a, b) => {
            each_pair(a, b, |x, y| sim.hold(x, y));
            world.cuts.push((a.clone(), b.clone(), false));
        }
        // A frozen agent host stays cut off until it resumes. (A paused
        // region replica's links are released by a repair as they always
        // were, so the worlds without freezes replay as before.)
        Fault::Repair(a, b) => each_pair(a, b, |x, y| {
            if !world.frozen.contains(x) && !world.frozen.contains(y) {
                sim.release(x, y);
            }
        }),
        Fault::PartitionOneway(a, b) => {
            each_pair(a, b, |x, y| sim.partition_oneway(x, y));
            world.cuts.push((a.clone(), b.clone(), true));
        }
        Fault::RepairOneway(a, b) => each_pair(a, b, |x, y| sim.repair_oneway(x, y)),
        Fault::Latency(d) => sim.set_max_message_latency(*d),
        Fault::LinkFailRate(p) => sim.set_fail_rate(*p),
        Fault::Crash(h) => crash(sim, world, recorder, h),
        Fault::Restart(h) => {
            if !held_down(world, h) {
                restart(sim, world, recorder, h);
            }
        }
        Fault::Pause(h) => {
            if let Some(g) = world.gates.get(h) {
                let region = world.region_of.get(h).map_or(REGION, String::as_str);
                let (begin, end) = meridian_regional::model::Keys::new(region).all_task_blocks();
                g.arm(begin, end);
            }
        }
        Fault::Resume(h) => {
            if let Some(g) = world.gates.get(h) {
                g.disarm();
            }
            resume(sim, world, h);
        }
        Fault::StoreFaults(tier, fraction) => set_store_faults(tiers, *tier, *fraction),
        Fault::ClockSkew(h, ms) => {
            if let Some(s) = world.skews.get(h) {
                s.store(*ms, Ordering::Relaxed);
            }
        }
        Fault::ControlPlaneDown => control_plane_down(sim, world, recorder),
        Fault::ControlPlaneUp => control_plane_up(sim, world, recorder),
        Fault::RegionDown(r) => {
            if world.regions_down.insert(r.clone()) {
                for h in world.hosts.regions.get(r).cloned().unwrap_or_default() {
                    crash(sim, world, recorder, &h);
                }
            }
        }
        Fault::RegionUp(r) => {
            if world.regions_down.remove(r) {
                for h in world.hosts.regions.get(r).cloned().unwrap_or_default() {
                    if !held_down(world, &h) {
                        restart(sim, world, recorder, &h);
                    }
                }
            }
        }
        Fault::AgentPause(h) => freeze(sim, world, recorder, h),
        Fault::AgentResume(h) => thaw(sim, world, recorder, h),
        Fault::DrainNode(h) => {
            if world.drained_nodes.insert(h.clone()) {
                let region = region_of(world, h);
                ask(world, Command::DrainNode(region, hosts::node_id(h)));
            }
        }
        Fault::UncordonNode(h) => {
            if world.drained_nodes.remove(h) {
                let region = region_of(world, h);
                ask(world, Command::UncordonNode(region, hosts::node_id(h)));
            }
        }
        Fault::DrainRegion(r) => {
            if world.drained_regions.insert(r.clone()) {
                ask(world, Command::DrainRegion(r.clone()));
            }
        }
        Fault::UndrainRegion(r) => {
            if world.drained_regions.remove(r) {
                ask(world, Command::UndrainRegion(r.clone()));
            }
        }
    }
}

/// A host another fault keeps down: every control-plane host while the
/// control plane is down, every replica of a lost region.
fn held_down(world: &World, host: &str) -> bool {
    let control = world.hosts.control_plane().iter().any(|h| h == host);
    let region_lost = world.region_of.get(host).is_some_and(|r| {
        world.regions_down.contains(r) && world.hosts.regionals.iter().any(|h| h == host)
    });
    (control && world.control_plane_down) || region_lost
}

/// Calls `f` for each host of `a` with each host of `b`.
fn each_pair(a: &[String], b: &[String], mut f: impl FnMut(&str, &str)) {
    for x in a {
        for y in b {
            f(x.as_str(), y.as_str());
        }
    }
}

fn control_plane_down(sim: &mut turmoil::Sim<'_>, world: &mut World, recorder: &Recorder) {
    if !world.control_plane_down {
        world.control_plane_down = true;
        for h in world.hosts.control_plane() {
            crash(sim, world, recorder, &h);
        }
        recorder.record("harness", Event::ControlPlaneDown);
    }
}

fn control_plane_up(sim: &mut turmoil::Sim<'_>, world: &mut World, recorder: &Recorder) {
    if world.control_plane_down {
        world.control_plane_down = false;
        recorder.record("harness", Event::ControlPlaneUp);
        for h in world.hosts.control_plane() {
            if !held_down(world, &h) {
                restart(sim, world, recorder, &h);
            }
        }
    }
}

fn all_hosts(hosts: &Hosts) -> Vec<String> {
    hosts
        .control_plane()
        .into_iter()
        .chain(hosts.agents.iter().cloned())
        .collect()
}

fn resume(sim: &mut turmoil::Sim<'_>, world: &mut World, host: &str) {
    if let Some(g) = world.gates.get(host)
        && g.is_paused()
    {
        g.resume();
    }
    if world.held.remove(host) {
        for other in all_hosts(&world.hosts) {
            if other != host {
                sim.release(host, other.as_str());
            }
        }
    }
}

/// A pause strikes inside the process; cut its network off from the step
/// it struck, as a stopped process neither sends nor receives.
pub(super) fn hold_paused(sim: &mut turmoil::Sim<'_>, world: &mut World, recorder: &Recorder) {
    let struck: Vec<String> = world
        .gates
        .iter()
        .filter(|(h, g)| g.is_paused() && !world.held.contains(*h))
        .map(|(h, _)| h.clone())
        .collect();
    for h in struck {
        recorder.record(
            "harness",
            Event::Fault {
                description: format!("{h} paused before a binding commit"),
            },
        );
        for other in all_hosts(&world.hosts) {
            if other != h {
                sim.hold(h.as_str(), other.as_str());
            }
        }
        world.held.insert(h);
    }
}

/// Ends every fault: the network whole and quick again, every process up
/// and running, stores without faults, clocks true.
pub(super) fn heal(
    sim: &mut turmoil::Sim<'_>,
    world: &mut World,
    tiers: &Tiers,
    recorder: &Recorder,
) {
    for (a, b, one_way) in std::mem::take(&mut world.cuts) {
        for x in &a {
            for y in &b {
                if one_way {
                    sim.repair_oneway(x.as_str(), y.as_str());
                } else {
                    sim.release(x.as_str(), y.as_str());
                }
            }
        }
    }
    sim.set_max_message_latency(Duration::from_millis(20));
    sim.set_fail_rate(0.0);
    for h in world.frozen.clone() {
        thaw(sim, world, recorder, &h);
    }
    for h in std::mem::take(&mut world.drained_nodes) {
        let region = region_of(world, &h);
        ask(world, Command::UncordonNode(region, hosts::node_id(&h)));
    }
    for r in std::mem::take(&mut world.drained_regions) {
        ask(world, Command::UndrainRegion(r));
    }
    let paused: Vec<String> = world.gates.keys().cloned().collect();
    for h in paused {
        if let Some(g) = world.gates.get(&h) {
            g.disarm();
        }
        resume(sim, world, &h);
    }
    world.regions_down.clear();
    control_plane_up(sim, world, recorder);
    for h in world.crashed.clone() {
        restart(sim, world, recorder, &h);
    }
    set_store_faults(tiers, Tier::Global, 0.0);
    set_store_faults(tiers, Tier::Region, 0.0);
    for s in world.skews.values() {
        s.store(0, Ordering::Relaxed);
    }
    recorder.record("harness", Event::Healed);
}
