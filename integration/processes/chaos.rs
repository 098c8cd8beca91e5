//! Chaos on real processes: a `meridian dev` federation on loopback (2
//! global replicas, 2 regions of 2 scheduler replicas sharing 4 shards, one
//! real agent per region) under repeated `kill -9` of the global leader and
//! of a region's busiest shard leader, `SIGSTOP`/`SIGCONT` of a shard leader
//! and of the global leader for several lease lengths (the GC-pause case),
//! and `kill -9` of every control plane process at once while `keep_running`
//! tasks run; `meridian dev` restarts what dies. Then a heal phase. The
//! collected history is judged by `meridian-sim`'s checker (the invariants of docs/architecture.md),
//! the same one the deterministic simulation uses.
//!
//! What the history holds, and where each part comes from:
//! - `SubmitAcked`: every acknowledged item of our SubmitJobs calls,
//!   including a second submission of some request ids after the chaos;
//! - `TaskStarted`/`TaskStopped`: lines the tasks append to one shared file
//!   (kind, task id, attempt, `$HOME` which names the node, a nanosecond
//!   wall-clock stamp). A task ends with an `exit` line when it finishes and
//!   a `term` line when it is signalled (SIGTERM from its agent), read as
//!   `Exited` and `Stopped`;
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
//! write attempts (7.3 is vacuous), node loads (7.5 is vacuous).
//!
//! Runs alone (`.config/nextest.toml`).

mod federation;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use federation::{Dev, Sizes, Tracker, file_for_tasks, http_get_json, sh_job, submit_all};
use meridian_proto::v1;
use meridian_sim::{CheckConfig, Event, History, JobState, Record, Scope, StopReason, check};
use nix::sys::signal::Signal;

const JOBS: usize = 120;
const KEEP_RUNNING: usize = 2;
const RESUBMITTED: usize = 20;
const REGIONS: [&str; 2] = ["us-east", "eu-west"];
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

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One event stamped with wall time, before the whole run is sequenced.
struct Timed {
    at_ns: u128,
    source: String,
    event: Event,
}

/// The harness's own log of what it did to the world.
struct Timeline {
    started: Instant,
    events: Vec<Timed>,
}

impl Timeline {
    fn push(&mut self, event: Event) {
        if let Event::Fault { description } = &event {
            println!(
                "fault at {:>5.1} s: {description}",
                self.started.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "      at {:>5.1} s: {event:?}",
                self.started.elapsed().as_secs_f64()
            );
        }
        self.events.push(Timed {
            at_ns: unix_ns(),
            source: "harness".into(),
            event,
        });
    }

    fn fault(&mut self, description: String) {
        self.push(Event::Fault { description });
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

/// Every term the federation's electors logged: shard leases as
/// `Scope::Shard`, the global leader lease as `Scope::Global`.
fn logged_terms(dev: &Dev) -> Vec<Timed> {
    dev.leaders.now(|terms| {
        terms
            .begun
            .iter()
            .filter_map(|((group, lease), term)| {
                let scope = if group == "global" && lease == "global" {
                    Scope::Global
                } else {
                    let shard = lease.strip_prefix("shard-")?.parse().ok()?;
                    Scope::Shard {
                        region: group.clone(),
                        shard,
                    }
                };
                Some(Timed {
                    at_ns: term.at_unix_ns,
                    source: format!("log {}", term.holder),
                    event: Event::LeaderChanged {
                        scope,
                        holder: term.holder.clone(),
                        epoch: term.epoch,
                    },
                })
            })
            .collect()
    })
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

/// What the shared file says about tasks.
#[derive(Default)]
struct TaskLog {
    events: Vec<Timed>,
    starts: usize,
    exits: usize,
    terms: usize,
    /// Task ids (first word of each keep_running job's name prefix) started.
    keep_running_started: BTreeSet<String>,
    /// keep_running task id -> how its attempts ended (`exit`/`term`).
    keep_running_ends: BTreeMap<String, Vec<String>>,
}

/// Lines are `start|exit|term TASK ATTEMPT HOME NS FLAVOUR`; `HOME` is
/// `<data>/agents/<node>/...`, and FLAVOUR says `keep` for keep_running jobs.
fn task_log(path: &Path) -> TaskLog {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut log = TaskLog::default();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [kind, task, _attempt, home, ns, flavour] = w[..] else {
            continue;
        };
        let Ok(at_ns) = ns.parse::<u128>() else {
            continue;
        };
        let node = home
            .split("/agents/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or(home)
            .to_string();
        let keep_running = flavour == "keep";
        let event = match kind {
            "start" => {
                log.starts += 1;
                if keep_running {
                    log.keep_running_started.insert(task.to_string());
                }
                Event::TaskStarted {
                    node: node.clone(),
                    task: task.to_string(),
                    job: task.split('/').next().unwrap_or(task).to_string(),
                    exclusive: true,
                    keep_running,
                }
            }
            "exit" | "term" => {
                if kind == "exit" {
                    log.exits += 1;
                } else {
                    log.terms += 1;
                }
                if keep_running {
                    log.keep_running_ends
                        .entry(task.to_string())
                        .or_default()
                        .push(kind.to_string());
                }
                Event::TaskStopped {
                    node: node.clone(),
                    task: task.to_string(),
                    reason: if kind == "exit" {
                        StopReason::Exited
                    } else {
                        StopReason::Stopped
                    },
                }
            }
            _ => continue,
        };
        log.events.push(Timed {
            at_ns,
            source: node,
            event,
        });
    }
    log
}

/// `sh` script of a task that logs its start and how it ended to `file`,
/// working for `seconds` in between.
fn logging_script(file: &Path, seconds: &str, flavour: &str) -> String {
    let f = file.display();
    let line = |kind: &str| {
        format!(
            "echo \"{kind} $MERIDIAN_TASK_ID $MERIDIAN_ATTEMPT $HOME $(date +%s%N) {flavour}\" >> '{f}'"
        )
    };
    // The work runs in the background so a TERM to the shell alone still
    // runs the trap at once.
    format!(
        "trap '{}; exit 143' TERM INT HUP; {}; sleep {seconds} & wait $!; {}",
        line("term").replace('\'', "'\\''"),
        line("start"),
        line("exit")
    )
}

fn job_state(job: &v1::Job) -> JobState {
    match v1::JobState::try_from(job.state) {
        Ok(v1::JobState::Succeeded) => JobState::Succeeded,
        Ok(v1::JobState::Failed) => JobState::Failed(job.failure_reason.clone()),
        Ok(v1::JobState::Cancelled) => JobState::Cancelled,
        Ok(v1::JobState::Running) => JobState::Running,
        Ok(v1::JobState::Placed) => JobState::Placed,
        _ => JobState::Pending,
    }
}

/// Waits until `dev` says it restarted `name`, under a pid other than `old`.
fn restarted(dev: &Dev, name: &str, old: i32) {
    dev.await_restart(name, old, Instant::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_pauses_of_leaders_and_of_the_whole_control_plane_break_no_invariant_of_the_design()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = file_for_tasks(dir.path(), "tasks.log");
    let t0 = unix_ns();
    let dev = Dev::start(
        &dir.path().join("dev"),
        Sizes {
            regions: REGIONS.len() as u16,
            shards: 4,
            simulated_nodes: 0,
            base_port: 17700,
        },
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

    let short = logging_script(&file, "0.2", "plain");
    let specs: Vec<v1::JobSpec> = (0..JOBS)
        .map(|i| sh_job(&format!("chaos-{i}"), &short, true))
        .collect();
    let resubmit: Vec<v1::JobSpec> = specs[..RESUBMITTED].to_vec();
    let mut client = dev.client();
    let mut tracker = Tracker::start(dev.client()).await;
    let mut submit_client = dev.client();
    let submitting =
        tokio::spawn(async move { submit_all(&mut submit_client, "chaos", specs, 10).await });
    support::wait::file_until(&file, "the first tasks ran", federation::GUARD, || {
        (task_log(&file).starts >= 10).then_some(())
    })
    .await;

    // Round 1: kill -9 of the global leader and of us-east's busiest shard
    // leader; SIGSTOP of eu-west's busiest for 4 shard leases.
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

    // Round 2: again, the other way round, and a pause of the global leader
    // for 3 leader leases.
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

    // Round 3: keep_running tasks, then kill -9 of every global and regional
    // process at once; the agents and their tasks stay.
    let keep = logging_script(&file, "10", "keep");
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
        || (task_log(&file).keep_running_started.len() >= KEEP_RUNNING).then_some(()),
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
    let mut acked: Vec<(String, String)> = submitting
        .await
        .expect("submitter")
        .into_iter()
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
    let log = task_log(&file);
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
    timed.extend(log.events);
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
        },
    );
    println!(
        "chaos: {} acks of {} jobs, {} task starts, {} exits, {} terms, {leader_terms} leader \
         terms logged ({global_terms} global), {region_holds} region holds sampled, {} records; healed at {:.1} s, all final {:.1} s later; states {:?}; \
         keep_running ends {:?}",
        acked.len(),
        ids.len(),
        log.starts,
        log.exits,
        log.terms,
        history.len(),
        healed_at.as_secs_f64(),
        waited.as_secs_f64(),
        federation::states(&jobs),
        log.keep_running_ends
    );
    for v in &violations {
        println!("VIOLATION: {v}");
    }
    assert!(
        violations.is_empty(),
        "{} invariant violations",
        violations.len()
    );
    assert_eq!(ids.len(), JOBS + KEEP_RUNNING, "one job per request id");
    assert_eq!(
        log.starts,
        log.exits + log.terms,
        "every task start has its end line"
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
        log.keep_running_ends
            .values()
            .all(|ends| ends.first().is_some_and(|e| e == "exit")),
        "the keep_running tasks ran to their end through the control plane's death"
    );
}
