//! Chaos on real processes: a `meridian dev` federation on loopback (2
//! global replicas, 2 regions of 2 scheduler replicas sharing 4 shards,
//! three real agents per region) under repeated `kill -9` of the global
//! leader and of a region's busiest shard leader, `SIGSTOP`/`SIGCONT` of a
//! shard leader and of the global leader for several lease lengths (the
//! GC-pause case), `kill -9` of an agent, `SIGSTOP` of an agent until its
//! region has declared it dead and started one of its exclusive tasks on
//! another node, and `kill -9` of every control plane process at once while
//! `keep_running` tasks run; `meridian dev` restarts what dies. The
//! workload asks for more than the nodes offer, so they fill up and jobs
//! wait. Then a heal phase. The collected history is judged by
//! `meridian-sim`'s checker (the invariants of docs/architecture.md), the
//! same one the deterministic simulation uses.
//!
//! What the history holds, and where each part comes from:
//! - `SubmitAcked`: every acknowledged item of our SubmitJobs calls,
//!   including a second submission of some request ids after the chaos;
//! - `TaskStarted`/`TaskStopped`: lines the tasks append to one shared file
//!   (kind, task id, attempt, `$HOME` which names the node, a nanosecond
//!   wall-clock stamp, the resources the job asked for; `task_lines`). A
//!   task ends with an `exit` line when it finishes and a `term` line when
//!   it is signalled (SIGTERM from its agent), read as `Exited` and
//!   `Stopped`. A paused agent's tasks go on running (only the agent's
//!   process is stopped), so their lines are their real intervals;
//! - `NodeLoad`: at every start line, what the attempts running on that
//!   node then asked for together, against the node's capacity as its
//!   region's console reports it;
//! - `LeaderChanged`: every term of every shard lease and of the global
//!   leader lease, from the line each holder's elector logs when it becomes
//!   leader (holder, epoch, the line's own time stamp: every term, not a
//!   sample); and each region's hold at the global tier (link leader, lease
//!   epoch, written together by the registry) read from the global
//!   consoles every 250 ms, since nothing announces it;
//! - `Fault`, `ControlPlaneDown`/`Up`, `Healed`: the harness's own actions;
//!   `JobObserved`: the listing after every job is final.
//!
//! Not observable from outside the processes, so not checked here: fenced
//! write attempts (7.3 is vacuous).
//!
//! Runs alone (`.config/nextest.toml`).

use crate::chaos_history;
use crate::federation;
use crate::support;
use crate::task_exits;
use crate::task_lines;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaos_history::{
    AGENTS_PER_REGION, TaskLog, Timed, Timeline, agents, capacities, job_state, logged_terms,
    node_loads, unix_ns,
};
use federation::{Dev, Sizes, Tracker, file_for_tasks, http_get_json, sh_job, submit_all};
use meridian_proto::v1;
use meridian_sim::{CheckConfig, Event, History, Record, Scope, check};
use nix::sys::signal::Signal;
use task_lines::{Ask, Interval, Kind};

/// Jobs submitted at the start: about 270 core-seconds, over 10 seconds of
/// all six nodes, so the nodes fill up and jobs wait.
const JOBS: usize = 120;
/// Once the first jobs are final, jobs are submitted one at a time until
/// one runs in us-east; its agent is SIGSTOPped while it runs that one task
/// alone. At most this many.
const JOBS_BEFORE_AGENT_PAUSE: usize = 24;
/// Jobs submitted just after an agent is SIGSTOPped, while it still counts
/// as alive: its region binds some of them to it, and their RUN commands
/// wait unread in its connection until it resumes.
const JOBS_DURING_AGENT_PAUSE: usize = 60;
/// How long each of the jobs' tasks works.
const TASK_SECONDS: &str = "1.5";
/// What the jobs ask for, in turn: a node offers 4 cores and 8 GiB, so it
/// is full in both at once with four small tasks, two large or two small
/// and one large.
const ASKS: [Ask; 2] = [
    Ask {
        cpu_millis: 1_000,
        memory_bytes: 2 << 30,
    },
    Ask {
        cpu_millis: 2_000,
        memory_bytes: 4 << 30,
    },
];
const KEEP_RUNNING: usize = 2;
const RESUBMITTED: usize = 20;
const REGIONS: [&str; 2] = ["us-east", "eu-west"];
/// The longest a SIGSTOPped agent may take to be declared dead and have
/// one of its exclusive tasks started elsewhere (the region's defaults: 15
/// s without heartbeats to DOWN, 5 s more before an exclusive task is
/// placed again; a shard failover restarts the count). A guard, not a
/// length: the pause ends at that start.
const AGENT_PAUSE_GUARD: Duration = Duration::from_secs(90);
/// How long the busiest shard leader of eu-west stays SIGSTOPped: about 4
/// shard leases. The length of the fault itself, not a wait.
const SHARD_LEADER_PAUSE: Duration = Duration::from_secs(4);
/// How long the global leader stays SIGSTOPped: about 3 leader leases. The
/// length of the fault itself, not a wait.
const GLOBAL_LEADER_PAUSE: Duration = Duration::from_secs(6);
/// The region hold sampler's period: how finely the history sees a
/// region's hold at the global tier change (a property of the observation;
/// nothing waits on it).
const REGION_HOLD_SAMPLE_PERIOD: Duration = Duration::from_millis(250);

/// The faults whose length is a duration.
mod fault {
    use std::time::Duration;

    /// Keeps a fault (a SIGSTOPped process) in place for `length_of_the_fault`:
    /// the sleep is the fault, not a wait for a condition.
    pub async fn pause_for(length_of_the_fault: Duration) {
        tokio::time::sleep(length_of_the_fault).await;
    }
}

fn signal(dev: &Dev, name: &str, signal: Signal) {
    let pid = dev
        .pid_of(name)
        .unwrap_or_else(|| panic!("{name} is not running"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal");
}

/// Where the region hold sampler reads from: (replica, overview URL) of
/// every global console. `Dev` itself stays on the test's thread.
struct Consoles {
    global: Vec<(String, String)>,
}

impl Consoles {
    fn of(dev: &Dev) -> Consoles {
        let global = dev
            .globals()
            .into_iter()
            .map(|g| {
                let url = format!("{}/console/api/overview", dev.address(&g, "http"));
                (g, url)
            })
            .collect();
        Consoles { global }
    }
}

/// Samples region holds from every global console until `stop`; each
/// (scope, holder, epoch) once.
fn sample_region_holds(consoles: &Consoles, stop: &AtomicBool) -> Vec<Timed> {
    let mut out = Vec::new();
    let mut seen: BTreeSet<(Scope, String, u64)> = BTreeSet::new();
    let mut note = |out: &mut Vec<Timed>, source: String, scope: Scope, holder: &str, epoch| {
        if !holder.is_empty() && epoch > 0 && seen.insert((scope.clone(), holder.into(), epoch)) {
            out.push(Timed {
                at_ns: unix_ns(),
                source,
                event: Event::LeaderChanged {
                    scope,
                    holder: holder.to_string(),
                    epoch,
                },
            });
        }
    };
    while !stop.load(Ordering::SeqCst) {
        for (global, url) in &consoles.global {
            let Some(overview) = http_get_json(url) else {
                continue;
            };
            for r in overview["regions"].as_array().cloned().unwrap_or_default() {
                if let (Some(name), Some(holder), Some(epoch)) = (
                    r["name"].as_str(),
                    r["leader"].as_str(),
                    r["lease_epoch"].as_u64(),
                ) {
                    let scope = Scope::Region(name.to_string());
                    note(&mut out, format!("console {global}"), scope, holder, epoch);
                }
            }
        }
        // The observation's period, not a wait for a condition: no
        // process announces a change of a region's hold.
        std::thread::sleep(REGION_HOLD_SAMPLE_PERIOD);
    }
    out
}

/// Waits until `dev` says it restarted `name`, under a pid other than `old`.
fn restarted(dev: &Dev, name: &str, old: i32) {
    dev.await_restart(name, old, Instant::now());
}

/// `jobs` jobs named `{prefix}-{i}`, every one exclusive, asking for the
/// sizes of [`ASKS`] in turn; their lines' flavour is `prefix`.
fn workload(file: &Path, prefix: &str, jobs: usize) -> Vec<v1::JobSpec> {
    (0..jobs)
        .map(|i| {
            let ask = ASKS[i % ASKS.len()];
            let script = task_lines::script(file, TASK_SECONDS, prefix, ask);
            v1::JobSpec {
                resources: Some(v1::Resources {
                    cpu_millis: ask.cpu_millis,
                    memory_bytes: ask.memory_bytes,
                    gpu_count: 0,
                    gpu_type: String::new(),
                }),
                ..sh_job(&format!("{prefix}-{i}"), &script, true)
            }
        })
        .collect()
}

/// The agent of `region` running the most tasks, once one runs any (a
/// shard failover may have held the region's placements for a while).
async fn busiest_agent(file: &Path, region: &str) -> String {
    support::wait::file_until(
        file,
        &format!("an agent of {region} runs a task"),
        federation::GUARD,
        || TaskLog::read(file).busiest_agent(region),
    )
    .await
}

/// `kill -9` of `region`'s busiest agent: `meridian dev` restarts it, and
/// the new boot ends the old boot's tasks before it registers again.
async fn kill_busiest_agent(dev: &Dev, file: &Path, region: &str, timeline: &mut Timeline) {
    let agent = busiest_agent(file, region).await;
    let pid = dev.kill9(&agent);
    timeline.fault(format!("kill -9 {agent} (agent running the most tasks)"));
    restarted(dev, &agent, pid);
    timeline.fault(format!("{agent} restarted by meridian dev"));
}

/// SIGSTOPs `agent` and runs `meanwhile`, and keeps the agent stopped
/// until a task that had started on it starts on another node (its region
/// declared it dead and placed the task again); then SIGCONT, and waits
/// for the agent's line saying it was fenced. Only the agent's process
/// stops: the tasks it runs run on.
async fn pause_agent_until_its_task_moves(
    (dev, data): (&Dev, &Path),
    file: &Path,
    agent: &str,
    timeline: &mut Timeline,
    meanwhile: impl AsyncFnOnce(&mut Timeline),
) -> u128 {
    let paused_at = Instant::now();
    signal(dev, agent, Signal::SIGSTOP);
    let paused_ns = unix_ns();
    timeline.fault(format!(
        "SIGSTOP {agent} (it runs a task) until one of its tasks starts elsewhere"
    ));
    meanwhile(timeline).await;
    let (task, (before, after), node) = support::wait::file_until(
        file,
        &format!("a task of the paused {agent} started on another node"),
        AGENT_PAUSE_GUARD,
        || TaskLog::read(file).moved_from(agent, paused_ns),
    )
    .await;
    timeline.fault(format!(
        "{task} (attempt {before} on {agent}) started on {node} (attempt {after}) after {:.1} s",
        paused_at.elapsed().as_secs_f64()
    ));
    signal(dev, agent, Signal::SIGCONT);
    timeline.fault(format!("SIGCONT {agent}"));
    let log = agent_log(data, agent);
    support::wait::file_until(
        &log,
        &format!("the resumed {agent} learns its node epoch was superseded"),
        federation::GUARD,
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("node epoch fenced").then_some(())
        },
    )
    .await;
    timeline.fault(format!("{agent} logged that it was fenced"));
    paused_ns
}

/// The log `meridian dev` keeps of `agent`'s output under its data
/// directory `data`.
fn agent_log(data: &Path, agent: &str) -> std::path::PathBuf {
    data.join("logs").join(format!("{agent}.log"))
}

/// How many RUNs `agent` refused because its region had not answered it
/// for the node timeout (the agent's own warnings).
fn runs_refused_unheard(data: &Path, agent: &str) -> usize {
    std::fs::read_to_string(agent_log(data, agent))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("no answer for the node timeout: task not started"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_pauses_of_leaders_and_of_the_whole_control_plane_break_no_invariant_of_the_design()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = file_for_tasks(dir.path(), "tasks.log");
    let t0 = unix_ns();
    let data = dir.path().join("dev");
    let dev = Dev::start_with(
        &data,
        Sizes {
            regions: REGIONS.len() as u16,
            shards: 4,
            simulated_nodes: 0,
            base_port: 17700,
        },
        &["--real-agents", &AGENTS_PER_REGION.to_string()],
    );
    let mut timeline = Timeline {
        started: Instant::now(),
        events: Vec::new(),
    };
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let consoles = Consoles::of(&dev);
        let stop = stop_sampling.clone();
        std::thread::spawn(move || sample_region_holds(&consoles, &stop))
    };

    let process_exits = task_exits::Exits::follow(&file);
    let specs = workload(&file, "chaos", JOBS);
    let resubmit: Vec<v1::JobSpec> = specs[..RESUBMITTED].to_vec();
    let mut client = dev.client();
    let mut tracker = Tracker::start(dev.client()).await;
    let mut submit_client = dev.client();
    let submitting =
        tokio::spawn(async move { submit_all(&mut submit_client, "chaos", specs, 10).await });
    support::wait::file_until(&file, "the first tasks ran", federation::GUARD, || {
        (TaskLog::read(&file).count(Kind::Start) >= 10).then_some(())
    })
    .await;

    // Round 1: kill -9 of the global leader and of us-east's busiest shard
    // leader; SIGSTOP of eu-west's busiest for 4 shard leases; kill -9 of
    // eu-west's busiest agent.
    let leader = dev.await_global_leader();
    dev.kill9(&leader);
    timeline.fault(format!("kill -9 {leader} (global leader)"));
    let victim = dev.busiest_replica(REGIONS[0]).0;
    dev.kill9(&victim);
    timeline.fault(format!("kill -9 {victim} (busiest shard leader)"));
    let paused = dev.busiest_replica(REGIONS[1]).0;
    signal(&dev, &paused, Signal::SIGSTOP);
    timeline.fault(format!(
        "SIGSTOP {paused} (busiest shard leader) for {SHARD_LEADER_PAUSE:?}"
    ));
    fault::pause_for(SHARD_LEADER_PAUSE).await;
    signal(&dev, &paused, Signal::SIGCONT);
    timeline.fault(format!("SIGCONT {paused}"));
    kill_busiest_agent(&dev, &file, REGIONS[1], &mut timeline).await;

    // Round 2, once the first jobs are all final (every end reported, so
    // us-east's nodes are idle as their region sees them): a few jobs, and
    // the us-east agent that starts one first is SIGSTOPped while it runs
    // it, until that task starts on another node. Meanwhile more jobs come,
    // some bound to the stopped agent's room while it still counts as alive
    // (their RUN commands wait unread in its connection), and the leaders
    // are hit again, the other way round, with a pause of the global leader
    // for 3 leader leases.
    let first_acked = submitting.await.expect("submitter");
    let first_ids: BTreeSet<String> = first_acked.values().cloned().collect();
    tracker
        .until("the first jobs all final", federation::GUARD, |jobs| {
            first_ids
                .iter()
                .all(|id| jobs.get(id).is_some_and(|j| federation::is_final(j.state)))
                .then_some(())
        })
        .await;
    // One job at a time, so that no other RUN is on its way to the agent
    // when it stops: a pause between a RUN's admission and its process's
    // start would start the task 20 s late (see docs/simulation.md).
    let mut before_client = dev.client();
    let mut before_acked = BTreeMap::new();
    let mut agent = None;
    for i in 0..JOBS_BEFORE_AGENT_PAUSE {
        let spec = workload(&file, "before-pause", JOBS_BEFORE_AGENT_PAUSE).swap_remove(i);
        let prefix = format!("before-pause-{i}");
        let acked = submit_all(&mut before_client, &prefix, vec![spec], 1).await;
        let task = acked
            .values()
            .next()
            .map(|job| format!("{job}/0"))
            .expect("acknowledged");
        before_acked.extend(acked);
        let node =
            support::wait::file_until(&file, &format!("{task} runs"), federation::GUARD, || {
                TaskLog::read(&file)
                    .intervals
                    .iter()
                    .find(|i| i.task == task)
                    .map(|i| i.node.clone())
            })
            .await;
        if agents(REGIONS[0]).contains(&node) {
            agent = Some(node);
            break;
        }
    }
    let agent = agent.expect("a job submitted one at a time ran in us-east");
    let mut burst_client = dev.client();
    let burst = workload(&file, "during-pause", JOBS_DURING_AGENT_PAUSE);
    let mut burst_acked = BTreeMap::new();
    let paused_ns = pause_agent_until_its_task_moves(
        (&dev, &data),
        &file,
        &agent,
        &mut timeline,
        async |timeline: &mut Timeline| {
            // Before the leaders are hit, so that the jobs reach the region
            // while the stopped agent still counts as alive there.
            burst_acked = submit_all(&mut burst_client, "during-pause", burst, 10).await;
            timeline.fault(format!(
                "{JOBS_DURING_AGENT_PAUSE} more jobs acknowledged (some may go to the paused agent)"
            ));
            support::wait::file_until(
                &file,
                &format!("a job submitted during the pause runs in {}", REGIONS[0]),
                federation::GUARD,
                || {
                    let log = TaskLog::read(&file);
                    let started = log.intervals.iter().any(|i| {
                        i.flavour == "during-pause" && agents(REGIONS[0]).contains(&i.node)
                    });
                    started.then_some(())
                },
            )
            .await;
            let leader = dev.await_global_leader();
            dev.kill9(&leader);
            timeline.fault(format!("kill -9 {leader} (global leader)"));
            let victim = dev.busiest_replica(REGIONS[1]).0;
            dev.kill9(&victim);
            timeline.fault(format!("kill -9 {victim} (busiest shard leader)"));
            let leader = dev.await_global_leader();
            signal(&dev, &leader, Signal::SIGSTOP);
            timeline.fault(format!(
                "SIGSTOP {leader} (global leader) for {GLOBAL_LEADER_PAUSE:?}"
            ));
            fault::pause_for(GLOBAL_LEADER_PAUSE).await;
            signal(&dev, &leader, Signal::SIGCONT);
            timeline.fault(format!("SIGCONT {leader}"));
        },
    )
    .await;
    // Round 3: keep_running tasks, then kill -9 of every global and regional
    // process at once; the agents and their tasks stay.
    let keep = task_lines::script(
        &file,
        "10",
        "keep",
        Ask {
            cpu_millis: 100,
            memory_bytes: 64 << 20,
        },
    );
    let keep_specs: Vec<v1::JobSpec> = (0..KEEP_RUNNING)
        .map(|i| v1::JobSpec {
            on_region_loss: v1::RegionLossPolicy::KeepRunning as i32,
            ..sh_job(&format!("steady-{i}"), &keep, true)
        })
        .collect();
    let mut keep_client = dev.client();
    let keep_acked = submit_all(&mut keep_client, "steady", keep_specs, KEEP_RUNNING).await;
    support::wait::file_until(
        &file,
        "every keep_running task runs",
        federation::GUARD,
        || (TaskLog::read(&file).keep_running_started() >= KEEP_RUNNING).then_some(()),
    )
    .await;
    let control_plane: Vec<String> = dev
        .globals()
        .into_iter()
        .chain(REGIONS.iter().flat_map(|r| dev.region_replicas(r)))
        .collect();
    timeline.push(Event::ControlPlaneDown);
    let killed: Vec<(String, i32)> = control_plane
        .iter()
        .map(|name| (name.clone(), dev.kill9(name)))
        .collect();
    timeline.fault(format!(
        "kill -9 {control_plane:?} (every control plane process)"
    ));
    for (name, pid) in &killed {
        restarted(&dev, name, *pid);
    }
    dev.await_global_leader();
    for region in REGIONS {
        dev.await_shards_led(region);
    }
    timeline.push(Event::ControlPlaneUp);

    // Heal: no more faults.
    timeline.push(Event::Healed);
    let healed_at = timeline.started.elapsed();
    let before_jobs = before_acked.len();
    let mut acked: Vec<(String, String)> = first_acked
        .into_iter()
        .chain(before_acked)
        .chain(burst_acked)
        .chain(keep_acked)
        .collect();
    // The same request ids once more: each must name the job it made first.
    let mut again_client = dev.client();
    let again = submit_all(&mut again_client, "chaos", resubmit, 10).await;
    let first: BTreeMap<String, String> = acked.iter().cloned().collect();
    for (request_id, job_id) in &again {
        assert_eq!(
            first.get(request_id),
            Some(job_id),
            "request id {request_id} named another job on its second submission"
        );
    }
    acked.extend(again);
    let ids: BTreeSet<String> = acked.iter().map(|(_, j)| j.clone()).collect();
    let (jobs, waited) = tracker
        .await_all_final(&mut client, &ids, Duration::from_secs(120))
        .await;
    stop_sampling.store(true, Ordering::SeqCst);
    let holds = sampler.join().expect("sampler");
    let terms = logged_terms(&dev);
    let capacity = capacities(&dev, &REGIONS);

    // Sequencing: acks first (each precedes any observation of its job),
    // then everything by wall time, the listing last.
    let mut timed: Vec<Timed> = acked
        .iter()
        .map(|(request_id, job_id)| Timed {
            at_ns: t0,
            source: "client".into(),
            event: Event::SubmitAcked {
                request_id: request_id.clone(),
                job_id: job_id.clone(),
            },
        })
        .collect();
    let observed_at = unix_ns();
    let mut log = TaskLog::read(&file);
    let killed_without_a_line = log.close_with(&process_exits);
    let across = task_lines::across_nodes(&log.intervals);
    let (loads, load_report) = node_loads(&log.intervals, &capacity, ASKS[0].cpu_millis);
    let shards_led: BTreeSet<(String, u32)> = terms
        .iter()
        .filter_map(|t| match &t.event {
            Event::LeaderChanged {
                scope: Scope::Shard { region, shard },
                ..
            } => Some((region.clone(), *shard)),
            _ => None,
        })
        .collect();
    let global_terms = terms
        .iter()
        .filter(|t| {
            matches!(
                t.event,
                Event::LeaderChanged {
                    scope: Scope::Global,
                    ..
                }
            )
        })
        .count();
    let leader_terms = terms.len();
    let region_holds = holds.len();
    timed.extend(timeline.events);
    timed.extend(terms);
    timed.extend(holds);
    timed.extend(log.events());
    timed.extend(loads);
    timed.extend(jobs.values().map(|job| Timed {
        at_ns: observed_at,
        source: "list".into(),
        event: Event::JobObserved {
            job_id: job.job_id.clone(),
            request_id: job.request_id.clone(),
            state: job_state(job),
        },
    }));
    timed.sort_by_key(|t| t.at_ns);
    let records: Vec<Record> = timed
        .into_iter()
        .enumerate()
        .map(|(i, t)| Record {
            seq: i as u64,
            at: Duration::from_nanos(t.at_ns.saturating_sub(t0) as u64),
            source: t.source,
            event: t.event,
        })
        .collect();
    let history = History::from_records(records);
    let violations = check(
        &history,
        &CheckConfig {
            // Generous: on 2 shared cores the tail of the workload, not a
            // lease, bounds the time to converge.
            convergence_bound: Duration::from_secs(120),
            ..CheckConfig::default()
        },
    );
    let (starts, exits, terms_seen) = (
        log.count(Kind::Start),
        log.count(Kind::Exit),
        log.count(Kind::Term),
    );
    let keep_running_ends = log.keep_running_ends();
    println!(
        "chaos: {} acks of {} jobs, {starts} task starts, {exits} exits, {terms_seen} terms, \
         {killed_without_a_line} ended with no line (their processes, {} watched through pidfds, \
         were seen to end), {leader_terms} leader terms logged ({global_terms} global), {region_holds} region holds \
         sampled, {} records; healed at {:.1} s, all final {:.1} s later; states {:?}; \
         keep_running ends {keep_running_ends:?}",
        acked.len(),
        ids.len(),
        process_exits.watched(),
        history.len(),
        healed_at.as_secs_f64(),
        waited.as_secs_f64(),
        federation::states(&jobs),
    );
    let closest = across
        .closest
        .as_ref()
        .map_or("none".to_string(), |(task, from, to, gap)| {
            format!(
                "{task}, {:.3} s from its end on {from} to its start on {to}",
                *gap as f64 / 1e9
            )
        });
    let placed_again = log
        .intervals
        .iter()
        .filter(|i| i.start_ns > paused_ns && i.attempt > 1 && agents(REGIONS[0]).contains(&i.node))
        .count();
    let refused = runs_refused_unheard(&data, &agent);
    println!(
        "7.1 (exclusive task on two nodes at once): {} exclusive tasks, {} attempts started; {} \
         tasks ran on two nodes or more; {} pairs of attempts of one task on two nodes compared, \
         {} overlapping; closest pair: {closest}; after {agent} was paused, {placed_again} \
         attempts after a first started in {}, and on resuming it refused {refused} RUNs that \
         had waited unread through the pause",
        across.tasks, across.attempts, across.moved, across.pairs, across.overlapping, REGIONS[0]
    );
    println!(
        "7.5 (no node overcommitted): {} node loads (one per task start) against the capacities \
         the regions report ({:?} in millicores and bytes); {} at full capacity, {} with less \
         than one small task's room left, highest {}% of a node's cores; most attempts at once \
         per node {:?}",
        load_report.samples,
        capacity
            .values()
            .map(|c| (c.cpu_millis, c.memory_bytes))
            .collect::<BTreeSet<_>>(),
        load_report.full,
        load_report.within_one_task,
        load_report.highest_cpu_percent,
        load_report.most_running
    );
    for v in &violations {
        println!("VIOLATION: {v}");
    }
    if !violations.is_empty() {
        let moved = task_lines::moved_tasks(&log.intervals);
        for i in log.intervals.iter().filter(|i| moved.contains(&i.task)) {
            println!("  attempt of a task on two nodes: {i:?}");
        }
    }
    assert!(
        violations.is_empty(),
        "{} invariant violations",
        violations.len()
    );
    assert_eq!(
        ids.len(),
        JOBS + before_jobs + JOBS_DURING_AGENT_PAUSE + KEEP_RUNNING,
        "one job per request id"
    );
    let open: Vec<&Interval> = log.intervals.iter().filter(|i| i.end.is_none()).collect();
    assert!(open.is_empty(), "attempts never seen to end: {open:?}");
    // The pause ended only once a task of the stopped agent started on
    // another node, with the agent still there to run it on resuming: the
    // case 7.1 is about.
    assert!(
        across.moved > 0 && across.pairs > 0 && placed_again > 0,
        "7.1 was checked on tasks placed again on another node while their old node's agent lived"
    );
    assert!(
        load_report.full > 0,
        "7.5 was checked on nodes that were full: {load_report:?}"
    );
    assert_eq!(
        shards_led.len(),
        REGIONS.len() * 4,
        "every shard's leader logged its term: {shards_led:?}"
    );
    // The first term, and one after each of the three kills of the leader.
    assert!(
        global_terms >= 4,
        "a global leader term after each kill of the leader: {global_terms}"
    );
    assert!(
        keep_running_ends
            .values()
            .all(|ends| ends.first().is_some_and(|e| e == "exit")),
        "the keep_running tasks ran to their end through the control plane's death"
    );
}
