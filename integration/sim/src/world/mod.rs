//! One run of the whole federation in `turmoil`, driven by one seed.
//!
//! Owns the shape of the simulated world ([`SimConfig`]), the run itself
//! ([`run`]: build the hosts, play the workload and the fault plan through
//! the safety phase, heal everything, let it converge, observe, check) and
//! its [`Outcome`]. The history is recorded by the product's own code paths
//! (lease takeovers, fenced writes, the agents' executor, the client's
//! acknowledgements) and by reading the stores; the harness records only
//! its own actions on the world. Must never decide a run's verdict by
//! anything but [`crate::checker::check`].

pub mod admin;
mod faults;
pub mod hosts;
pub mod plan;
mod switches;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use meridian_control::planted::Bug;
use meridian_proto::v1;
use meridian_store::fault::{FaultConfig, FaultyBackend};
use meridian_store::memory::MemoryBackend;
use meridian_store::{Backend, Database};

use crate::checker::{CheckConfig, Violation, check};
use crate::exec::Running;
use crate::gate::PauseGate;
use crate::history::{Event, History, Recorder, Scope};
use crate::net::TurmoilNet;
use crate::observe::{self, RegionMemory, RunContext};
use faults::{World, apply, heal, hold_paused};
use hosts::{GLOBAL_PORT, Process, REGION_PORT};
use plan::{Fault, FaultMix, Hosts};
use switches::{set_bug, set_planted};

/// Name of the first simulated region (the only one unless
/// [`SimConfig::regions`] asks for more).
pub const REGION: &str = "r1";

/// The names of a world's regions: `r1`, `r2`, ...
pub fn region_names(regions: usize) -> Vec<String> {
    (1..=regions.max(1)).map(|i| format!("r{i}")).collect()
}

/// The size and timing of a simulated world.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub global_replicas: usize,
    /// Regions, each with its own store, replicas and agents.
    pub regions: usize,
    /// Replicas per region.
    pub region_replicas: usize,
    pub shards: u32,
    /// Agents per region.
    pub agents: usize,
    pub jobs: usize,
    /// Big jobs besides `jobs` ([`workload::big_jobs`]): their tasks fill
    /// nodes, so the fit check decides placements and tasks wait for room.
    pub big_jobs: usize,
    /// Length of the phase with faults and workload.
    pub safety: Duration,
    /// Length of the phase after the heal.
    pub heal: Duration,
    pub mix: FaultMix,
    /// Region lease the global tier grants (production default: 30 s).
    pub region_lease: Duration,
    pub check: CheckConfig,
    /// Switches off the shard fence check of the binding commit for this
    /// run (the planted bug that proves the checker works).
    pub unfenced_binding_commit: bool,
    /// One planted bug turned on for this run, to prove the checker sees
    /// the invariant it breaks (needs the cargo feature
    /// `planted-bugs-for-tests`).
    pub planted_bug: Option<Bug>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            global_replicas: 2,
            regions: 1,
            region_replicas: 2,
            shards: 2,
            agents: 3,
            jobs: 8,
            big_jobs: 0,
            safety: Duration::from_secs(20),
            heal: Duration::from_secs(30),
            mix: FaultMix::default(),
            region_lease: Duration::from_secs(30),
            check: CheckConfig {
                convergence_bound: Duration::from_secs(25),
                ..CheckConfig::default()
            },
            unfenced_binding_commit: false,
            planted_bug: None,
        }
    }
}

impl SimConfig {
    /// The whole federation: three regions of two replicas and two agents
    /// each under two global replicas, with the loss of whole regions among
    /// the faults and a region lease short enough (4 s) that a lost
    /// region's jobs are handed to another region inside the safety phase.
    pub fn federation() -> Self {
        SimConfig {
            regions: 3,
            agents: 2,
            jobs: 12,
            big_jobs: 3,
            region_lease: Duration::from_secs(4),
            mix: FaultMix {
                region_loss: true,
                long_agent_faults: true,
                drains: true,
                // Eleven kinds to draw from: more faults a run, so each
                // kind still comes up about as often as among the nine.
                max_faults: 6,
                ..FaultMix::default()
            },
            ..SimConfig::default()
        }
    }
}

/// What a run did and what the checker found.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub history: History,
    pub violations: Vec<Violation>,
    pub faults: Vec<(Duration, Fault)>,
    /// The global tier's job records at the end of the run.
    pub final_jobs: Vec<v1::Job>,
    /// The first region's store at the end of the run.
    pub final_region: Option<meridian_regional::model::view::RegionView>,
    /// Every region's store at the end of the run, by region name.
    pub final_regions: BTreeMap<String, meridian_regional::model::view::RegionView>,
}

/// Why a run could not complete (not an invariant violation).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the simulation failed: {0}")]
    Turmoil(String),
    #[error("could not build the observer runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("the unfenced binding commit needs the cargo feature unfenced-writes-for-tests")]
    NoBugSwitch,
    #[error("the planted bug {0:?} needs the cargo feature planted-bugs-for-tests")]
    NoPlantedBugs(Bug),
    #[error("could not read a tokio task id: {0}")]
    TaskId(String),
}

pub(super) struct Tiers {
    global_raw: Arc<MemoryBackend>,
    global: Arc<FaultyBackend>,
    /// Each region's store, by region name: beneath and behind the faults.
    regions: BTreeMap<String, (Arc<MemoryBackend>, Arc<FaultyBackend>)>,
}

fn scopes(cfg: &SimConfig) -> BTreeMap<Vec<u8>, Scope> {
    let mut out = BTreeMap::new();
    out.insert(
        meridian_global::keys::Keys::new("default").leader_fence(),
        Scope::Global,
    );
    for region in region_names(cfg.regions) {
        let keys = meridian_regional::model::Keys::new(&region);
        // Scopes are named by the key writes check their fence against.
        out.insert(keys.link_fence(), Scope::Region(region.clone()));
        for shard in 0..cfg.shards {
            out.insert(
                keys.shard_fence(shard),
                Scope::Shard {
                    region: region.clone(),
                    shard,
                },
            );
        }
    }
    out
}

/// Runs one seed and checks its history.
pub fn run(seed: u64, cfg: &SimConfig) -> Result<Outcome, SimError> {
    TurmoilNet::install();
    // Every host runs on this thread, so every boot id, trace id and other
    // fresh id of the run comes from the seed: a replay names things alike.
    let _entropy = meridian_control::entropy::seed_this_thread(seed);
    align_task_ids()?;
    let now_ms = Arc::new(AtomicU64::new(0));
    let recorder = {
        let now_ms = now_ms.clone();
        Recorder::new(Arc::new(move || {
            turmoil::sim_elapsed()
                .unwrap_or_else(|| Duration::from_millis(now_ms.load(Ordering::Relaxed)))
        }))
    };
    let _ctx = observe::enter(Arc::new(RunContext {
        recorder: recorder.clone(),
        scopes: scopes(cfg),
    }));
    set_bug(cfg.unfenced_binding_commit)?;
    set_planted(cfg.planted_bug, true)?;
    let result = drive(seed, cfg, &recorder, &now_ms);
    set_bug(false)?;
    set_planted(cfg.planted_bug, false)?;
    let (faults, tiers) = result?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let global_db = Database::new(tiers.global_raw.clone());
    let jobs = rt.block_on(observe::read_jobs(
        &global_db,
        &meridian_global::keys::Keys::new("default"),
    ));
    let mut final_regions = BTreeMap::new();
    for (region, (raw, _)) in &tiers.regions {
        let region_db = Database::new(raw.clone());
        let rkeys = meridian_regional::model::Keys::new(region);
        let view = rt.block_on(region_db.run(|tx, _| {
            let rkeys = rkeys.clone();
            async move { meridian_regional::model::view::RegionView::read(&tx, &rkeys).await }
        }));
        if let Ok(view) = view {
            final_regions.insert(region.clone(), view);
        }
    }
    let final_region = final_regions.get(REGION).cloned();
    let history = annotate(recorder.snapshot(), &jobs);
    let check_cfg = CheckConfig {
        agent_regions: agent_regions(cfg),
        ..cfg.check.clone()
    };
    let violations = check(&history, &check_cfg);
    drop(tiers);
    Ok(Outcome {
        seed,
        history,
        violations,
        faults,
        final_jobs: jobs,
        final_region,
        final_regions,
    })
}

/// Task ids are aligned to a multiple of this before each run.
const TASK_ID_ALIGN: u64 = 64;

/// Makes the next tokio task id of this process a multiple of
/// [`TASK_ID_ALIGN`].
///
/// tokio numbers tasks from one process-wide counter, keeps a runtime's
/// tasks in lists sharded by id (4 for a current-thread runtime), and when
/// a runtime is dropped (a crashed host) shuts them down shard by shard.
/// A run that starts where another run left the counter drops a crashed
/// host's tasks in another order, so its connections close in another
/// order and the rest of the run differs: a seed found failing among
/// others would not fail alone. From an aligned start, a run numbers its
/// tasks the same way whatever ran before it in the process.
fn align_task_ids() -> Result<(), SimError> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    loop {
        let id = rt.spawn(async {}).id().to_string();
        let n: u64 = id.parse().map_err(|_| SimError::TaskId(id))?;
        if n % TASK_ID_ALIGN == TASK_ID_ALIGN - 1 {
            return Ok(());
        }
    }
}

/// Fills in each started task's exclusivity and region-loss policy from
/// its job's spec as the global tier stored it.
fn annotate(history: History, jobs: &[v1::Job]) -> History {
    let policy: BTreeMap<&str, (bool, bool)> = jobs
        .iter()
        .filter_map(|j| {
            j.spec.as_ref().map(|s| {
                let keep = s.on_region_loss == v1::RegionLossPolicy::KeepRunning as i32;
                (j.job_id.as_str(), (s.exclusive, keep))
            })
        })
        .collect();
    let records = history
        .records()
        .iter()
        .cloned()
        .map(|mut r| {
            if let Event::TaskStarted {
                job,
                exclusive,
                keep_running,
                ..
            } = &mut r.event
                && let Some((ex, keep)) = policy.get(job.as_str())
            {
                *exclusive = *ex;
                *keep_running = *keep;
            }
            r
        })
        .collect();
    History::from_records(records)
}

fn drive(
    seed: u64,
    cfg: &SimConfig,
    recorder: &Recorder,
    now_ms: &AtomicU64,
) -> Result<(Vec<(Duration, Fault)>, Tiers), SimError> {
    let tiers = stores(seed, cfg.regions);
    let hosts = host_names(cfg);
    let faults = plan::plan(seed, &cfg.mix, &hosts, cfg.safety);
    let total = cfg.safety + cfg.heal;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(total + Duration::from_secs(5))
        .tick_duration(Duration::from_millis(10))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .build();
    let (admin_tx, admin_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut world = World::new(hosts.clone(), admin_tx);
    let global_urls: Vec<String> = hosts
        .globals
        .iter()
        .map(|h| format!("http://{h}:{GLOBAL_PORT}"))
        .collect();
    add_processes(
        &mut sim,
        &mut world,
        seed,
        cfg,
        &tiers,
        recorder,
        &global_urls,
    );
    add_client(&mut sim, seed, cfg, recorder, global_urls.clone());
    // Only a world that drains has an operator: another host would shift
    // turmoil's draws, and the other worlds' seeds replay as they did.
    if cfg.mix.drains {
        let rec = recorder.clone();
        sim.client("admin", async move {
            admin::run(admin_rx, global_urls, rec).await;
            Ok(())
        });
    }
    add_observer(&mut sim, &tiers, recorder);
    play(&mut sim, &mut world, cfg, &tiers, recorder, &faults, now_ms)?;
    Ok((faults, tiers))
}

/// The stores (global, and one per region): the processes write through
/// fault wrappers, the observer reads the stores beneath them.
fn stores(seed: u64, regions: usize) -> Tiers {
    let global_raw = Arc::new(MemoryBackend::new());
    let regions = region_names(regions)
        .into_iter()
        .zip(0u64..)
        .map(|(name, i)| {
            let raw = Arc::new(MemoryBackend::new());
            // The first region's faults draw from `seed ^ 1`, as when the
            // world had one region, so its seeds replay as they did.
            let faulty = Arc::new(FaultyBackend::new(
                raw.clone(),
                FaultConfig::none(),
                seed ^ (1 + 2 * i),
            ));
            (name, (raw, faulty))
        })
        .collect();
    Tiers {
        global: Arc::new(FaultyBackend::new(
            global_raw.clone(),
            FaultConfig::none(),
            seed,
        )),
        global_raw,
        regions,
    }
}

/// The hosts of a world of this shape, as the fault plan names them:
/// region replicas `r1-a`, `r1-b`, ...; the first region's agents
/// `agent-0`, ... (the names of the one-region world, so its seeds replay
/// as they did), the others' `agent-r2-0`, ...
pub fn host_names(cfg: &SimConfig) -> Hosts {
    let regions: BTreeMap<String, Vec<String>> = region_names(cfg.regions)
        .into_iter()
        .map(|r| {
            let replicas = (0..cfg.region_replicas)
                .map(|i| format!("{r}-{}", (b'a' + i as u8) as char))
                .collect();
            (r, replicas)
        })
        .collect();
    Hosts {
        globals: (0..cfg.global_replicas)
            .map(|i| format!("global-{i}"))
            .collect(),
        regionals: regions.values().flatten().cloned().collect(),
        agents: regions
            .keys()
            .flat_map(|r| agent_names(r, cfg.agents))
            .collect(),
        regions,
    }
}

/// The region of every agent host.
fn agent_regions(cfg: &SimConfig) -> BTreeMap<String, String> {
    region_names(cfg.regions)
        .into_iter()
        .flat_map(|r| {
            agent_names(&r, cfg.agents)
                .into_iter()
                .map(move |host| (host, r.clone()))
        })
        .collect()
}

/// The agent hosts of `region`.
fn agent_names(region: &str, agents: usize) -> Vec<String> {
    (0..agents)
        .map(|i| {
            if region == REGION {
                format!("agent-{i}")
            } else {
                format!("agent-{region}-{i}")
            }
        })
        .collect()
}

/// The global replicas, the region's replicas and the agents, each with a
/// pause gate and a clock skew of its own.
fn add_processes(
    sim: &mut turmoil::Sim<'_>,
    world: &mut World,
    seed: u64,
    cfg: &SimConfig,
    tiers: &Tiers,
    recorder: &Recorder,
    global_urls: &[String],
) {
    let hosts = world.hosts.clone();
    let process = |world: &mut World, name: &str, store: Arc<dyn Backend>, i: u64| {
        let gate = PauseGate::default();
        let skew = Arc::new(AtomicI64::new(0));
        world.gates.insert(name.to_string(), gate.clone());
        world.skews.insert(name.to_string(), skew.clone());
        Process {
            name: name.to_string(),
            store,
            gate,
            skew_ms: skew,
            seed: seed.wrapping_mul(31).wrapping_add(i),
        }
    };
    let region_lease = cfg.region_lease;
    for (i, name) in hosts.globals.iter().enumerate() {
        let p = process(world, name, tiers.global.clone(), i as u64);
        sim.host(name.as_str(), move || {
            hosts::global(p.clone(), Duration::from_secs(2), region_lease)
        });
    }
    let globals_joined = global_urls.join(",");
    // Process seeds count on across regions: the first region's hosts keep
    // the seeds of the one-region world.
    let mut replica_seq = 100u64;
    let mut agent_seq = 200u64;
    for (region, replicas) in &hosts.regions {
        let store: Arc<dyn Backend> = tiers.regions[region].1.clone();
        let region_urls = replicas
            .iter()
            .map(|h| format!("http://{h}:{REGION_PORT}"))
            .collect::<Vec<_>>()
            .join(",");
        for name in replicas {
            let p = process(world, name, store.clone(), replica_seq);
            replica_seq += 1;
            world.region_of.insert(name.clone(), region.clone());
            let globals = globals_joined.clone();
            let shards = cfg.shards;
            let region = region.clone();
            sim.host(name.as_str(), move || {
                hosts::regional(p.clone(), region.clone(), globals.clone(), shards)
            });
        }
        for name in agent_names(region, cfg.agents) {
            // Agents own no store; the gate and skew are unused but harmless.
            let p = process(world, &name, store.clone(), agent_seq);
            agent_seq += 1;
            world.region_of.insert(name.clone(), region.clone());
            let running: Running = Running::default();
            world.running.insert(name.clone(), running.clone());
            let regions = region_urls.clone();
            let rec = recorder.clone();
            sim.host(name.as_str(), move || {
                hosts::agent(p.clone(), regions.clone(), rec.clone(), running.clone())
            });
        }
    }
}

/// The client that submits the workload during the safety phase.
fn add_client(
    sim: &mut turmoil::Sim<'_>,
    seed: u64,
    cfg: &SimConfig,
    recorder: &Recorder,
    global_urls: Vec<String>,
) {
    let window = cfg.safety.saturating_sub(Duration::from_secs(4));
    let mut jobs = workload::jobs(seed, cfg.jobs, window);
    if cfg.big_jobs > 0 {
        jobs.extend(workload::big_jobs(seed, cfg.big_jobs, window));
        jobs.sort_by_key(|j| j.at);
    }
    let rec = recorder.clone();
    let give_up = cfg.safety + cfg.heal;
    sim.client("client", async move {
        workload::run(jobs, global_urls, rec, give_up).await;
        Ok(())
    });
}

/// The observer's sampling period (simulated time): how often it reads the
/// stores, a property of the observation, not a wait for a condition.
const OBSERVER_PERIOD: Duration = Duration::from_millis(250);

/// The observer, which reads the stores beneath the fault wrappers.
fn add_observer(sim: &mut turmoil::Sim<'_>, tiers: &Tiers, recorder: &Recorder) {
    let rec = recorder.clone();
    let global_db = Database::new(tiers.global_raw.clone());
    let region_dbs: Vec<(String, Database)> = tiers
        .regions
        .iter()
        .map(|(name, (raw, _))| (name.clone(), Database::new(raw.clone())))
        .collect();
    sim.host("observer", move || {
        let rec = rec.clone();
        let global_db = global_db.clone();
        let region_dbs = region_dbs.clone();
        async move {
            let gkeys = meridian_global::keys::Keys::new("default");
            let mut regions: Vec<_> = region_dbs
                .iter()
                .map(|(name, db)| {
                    let keys = meridian_regional::model::Keys::new(name);
                    (db, keys, RegionMemory::default())
                })
                .collect();
            loop {
                tokio::time::sleep(OBSERVER_PERIOD).await;
                observe::observe_jobs(&global_db, &gkeys, &rec).await;
                for (db, keys, memory) in &mut regions {
                    observe::observe_region(db, keys, &rec, memory).await;
                }
            }
        }
    });
}

/// Steps the world, applying each fault when its time comes, healing at the
/// end of the safety phase, until the run is over or has converged.
fn play(
    sim: &mut turmoil::Sim<'_>,
    world: &mut World,
    cfg: &SimConfig,
    tiers: &Tiers,
    recorder: &Recorder,
    faults: &[(Duration, Fault)],
    now_ms: &AtomicU64,
) -> Result<(), SimError> {
    let total = cfg.safety + cfg.heal;
    let mut pending = faults.iter().cloned().peekable();
    let mut healed = false;
    loop {
        let elapsed = sim.elapsed();
        now_ms.store(elapsed.as_millis() as u64, Ordering::Relaxed);
        if elapsed >= total {
            break;
        }
        while let Some((at, _)) = pending.peek() {
            if *at > elapsed || healed {
                break;
            }
            if let Some((_, fault)) = pending.next() {
                apply(sim, world, tiers, recorder, &fault);
            }
        }
        if !healed && elapsed >= cfg.safety {
            heal(sim, world, tiers, recorder);
            healed = true;
        }
        // Once every acknowledged job has been seen converged after the
        // heal, the rest of the heal phase would only repeat that; a few
        // seconds more still watch for late duplicates.
        if healed
            && elapsed >= cfg.safety + SETTLE
            && elapsed.as_millis() % 1000 == 0
            && all_converged_since_heal(&recorder.snapshot())
        {
            break;
        }
        sim.step().map_err(|e| SimError::Turmoil(e.to_string()))?;
        hold_paused(sim, world, recorder);
    }
    Ok(())
}

/// How long the heal phase runs at least.
const SETTLE: Duration = Duration::from_secs(8);

fn all_converged_since_heal(history: &History) -> bool {
    let mut acked = BTreeSet::new();
    let mut converged = BTreeSet::new();
    let mut healed = false;
    for r in history.records() {
        match &r.event {
            Event::Healed => healed = true,
            Event::SubmitAcked { job_id, .. } => {
                acked.insert(job_id.clone());
            }
            Event::JobObserved { job_id, state, .. } if healed && state.is_converged() => {
                converged.insert(job_id.clone());
            }
            _ => {}
        }
    }
    healed && acked.is_subset(&converged)
}
