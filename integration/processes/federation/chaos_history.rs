//! What the chaos test (`chaos.rs`) records of a run, and how it becomes
//! the history `meridian-sim`'s checker judges: the harness's own timeline
//! of faults, every leader term the electors logged, the tasks' own lines
//! (`task_lines`, with the ends `task_exits` saw) as task starts and stops,
//! and the load of each node at every start against the capacity its
//! region reports. Owns that translation and the numbers the test prints
//! about it; it starts no fault and waits for nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use meridian_proto::v1;
use meridian_sim::{Event, JobState, Resources, Scope, StopReason};

use crate::federation::{Dev, http_get_json};
use crate::task_exits::Exits;
use crate::task_lines::{self, Ask, Interval, Kind, Line};

/// Real agents per region (`meridian dev --real-agents`), named
/// `<region>-node-<k>`.
pub const AGENTS_PER_REGION: usize = 3;

pub fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One event stamped with wall time, before the whole run is sequenced.
pub struct Timed {
    pub at_ns: u128,
    pub source: String,
    pub event: Event,
}

/// The harness's own log of what it did to the world.
pub struct Timeline {
    pub started: Instant,
    pub events: Vec<Timed>,
}

impl Timeline {
    pub fn push(&mut self, event: Event) {
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

    pub fn fault(&mut self, description: String) {
        self.push(Event::Fault { description });
    }
}

/// Every term the federation's electors logged: shard leases as
/// `Scope::Shard`, the global leader lease as `Scope::Global`.
pub fn logged_terms(dev: &Dev) -> Vec<Timed> {
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

/// What the shared file says about tasks, as the checker's events.
pub struct TaskLog {
    pub lines: Vec<Line>,
    pub intervals: Vec<Interval>,
}

impl TaskLog {
    pub fn read(path: &Path) -> TaskLog {
        let lines = task_lines::read(path);
        let intervals = task_lines::intervals(&lines);
        TaskLog { lines, intervals }
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.lines.iter().filter(|l| l.kind == kind).count()
    }

    pub fn keep_running_started(&self) -> usize {
        self.intervals
            .iter()
            .filter(|i| i.flavour == "keep")
            .map(|i| &i.task)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// keep_running task id -> how its attempts ended (`exit`/`term`).
    pub fn keep_running_ends(&self) -> BTreeMap<String, Vec<String>> {
        let mut ends: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in self.intervals.iter().filter(|i| i.flavour == "keep") {
            let kind = match i.end {
                Some((Kind::Exit, _)) => "exit",
                Some((Kind::Term, _)) => "term",
                Some((_, _)) => "killed",
                None => continue,
            };
            ends.entry(i.task.clone()).or_default().push(kind.into());
        }
        ends
    }

    /// Ends the attempts that wrote no end line at the time their process
    /// was seen to end; returns how many.
    pub fn close_with(&mut self, exits: &Exits) -> usize {
        task_lines::close_with(&mut self.intervals, &exits.ended())
    }

    /// The agent of `region` with the most attempts running now.
    pub fn busiest_agent(&self, region: &str) -> Option<String> {
        task_lines::running_per_node(&self.intervals)
            .into_iter()
            .filter(|(node, _)| agents(region).contains(node))
            .max_by_key(|(_, n)| *n)
            .map(|(node, _)| node)
    }

    /// A task that started on `node` before `since_ns` and whose later
    /// attempt started on another node after it: (task, the two attempts,
    /// the other node).
    pub fn moved_from(&self, node: &str, since_ns: u128) -> Option<(String, (u32, u32), String)> {
        let there: BTreeMap<&str, u32> = self
            .intervals
            .iter()
            .filter(|i| i.node == node && i.start_ns < since_ns)
            .map(|i| (i.task.as_str(), i.attempt))
            .collect();
        self.intervals.iter().find_map(|i| {
            let before = *there.get(i.task.as_str())?;
            (i.node != node && i.start_ns > since_ns && i.attempt > before)
                .then(|| (i.task.clone(), (before, i.attempt), i.node.clone()))
        })
    }

    /// The attempts as `TaskStarted` and, once ended, `TaskStopped` (every
    /// task is exclusive).
    pub fn events(&self) -> Vec<Timed> {
        let mut out = Vec::new();
        for i in &self.intervals {
            out.push(Timed {
                at_ns: i.start_ns,
                source: i.node.clone(),
                event: Event::TaskStarted {
                    node: i.node.clone(),
                    task: i.task.clone(),
                    job: i.task.split('/').next().unwrap_or(&i.task).to_string(),
                    exclusive: true,
                    keep_running: i.flavour == "keep",
                },
            });
            if let Some((kind, at_ns)) = i.end {
                out.push(Timed {
                    at_ns,
                    source: i.node.clone(),
                    event: Event::TaskStopped {
                        node: i.node.clone(),
                        task: i.task.clone(),
                        reason: if kind == Kind::Exit {
                            StopReason::Exited
                        } else {
                            StopReason::Stopped
                        },
                    },
                });
            }
        }
        out
    }
}

/// The real agents of `region`, as `meridian dev` names them.
pub fn agents(region: &str) -> Vec<String> {
    (1..=AGENTS_PER_REGION)
        .map(|k| format!("{region}-node-{k}"))
        .collect()
}

/// Node -> what it offers to tasks, as its region's consoles report it
/// (`/console/api/snapshot` of each scheduler replica).
pub fn capacities(dev: &Dev, regions: &[&str]) -> BTreeMap<String, Ask> {
    let mut out = BTreeMap::new();
    for region in regions {
        for replica in dev.region_replicas(region) {
            let metrics = dev.address(&replica, "metrics");
            let url = metrics.replace("/metrics", "/console/api/snapshot");
            let Some(snapshot) = http_get_json(&url) else {
                continue;
            };
            for n in snapshot["nodes"].as_array().cloned().unwrap_or_default() {
                if let (Some(node), Some(cpu), Some(memory)) = (
                    n["node_id"].as_str(),
                    n["capacity"]["cpu_millis"].as_u64(),
                    n["capacity"]["memory_bytes"].as_u64(),
                ) {
                    out.insert(
                        node.to_string(),
                        Ask {
                            cpu_millis: cpu,
                            memory_bytes: memory,
                        },
                    );
                }
            }
        }
    }
    out
}

fn resources(ask: Ask) -> Resources {
    Resources {
        cpu_millis: ask.cpu_millis,
        memory_bytes: ask.memory_bytes,
        gpus: 0,
    }
}

/// What the node loads show against capacity, for the report.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub samples: usize,
    /// Samples with every core or every byte of the node asked for.
    pub full: usize,
    /// Samples with less than one small task's room left.
    pub within_one_task: usize,
    /// Highest share of a node's cores asked for, in percent.
    pub highest_cpu_percent: u64,
    /// Node -> most attempts running there at once.
    pub most_running: BTreeMap<String, usize>,
}

/// Every start line's node load as `NodeLoad`, and what they add up to;
/// `small_cpu_millis` is the least a task asks for (a node with less room
/// than that counts as within one task of full).
pub fn node_loads(
    intervals: &[Interval],
    capacity: &BTreeMap<String, Ask>,
    small_cpu_millis: u64,
) -> (Vec<Timed>, LoadReport) {
    let mut report = LoadReport::default();
    let mut events = Vec::new();
    for load in task_lines::loads(intervals) {
        let cap = *capacity
            .get(&load.node)
            .unwrap_or_else(|| panic!("no capacity reported for node {}", load.node));
        report.samples += 1;
        let left = cap.cpu_millis.saturating_sub(load.placed.cpu_millis);
        if load.placed.cpu_millis >= cap.cpu_millis || load.placed.memory_bytes >= cap.memory_bytes
        {
            report.full += 1;
        }
        if left < small_cpu_millis {
            report.within_one_task += 1;
        }
        report.highest_cpu_percent = report
            .highest_cpu_percent
            .max(load.placed.cpu_millis * 100 / cap.cpu_millis.max(1));
        let most = report.most_running.entry(load.node.clone()).or_default();
        *most = (*most).max(load.running);
        events.push(Timed {
            at_ns: load.at_ns,
            source: format!("load {}", load.node),
            event: Event::NodeLoad {
                node: load.node,
                capacity: resources(cap),
                placed: resources(load.placed),
            },
        });
    }
    (events, report)
}

pub fn job_state(job: &v1::Job) -> JobState {
    match v1::JobState::try_from(job.state) {
        Ok(v1::JobState::Succeeded) => JobState::Succeeded,
        Ok(v1::JobState::Failed) => JobState::Failed(job.failure_reason.clone()),
        Ok(v1::JobState::Cancelled) => JobState::Cancelled,
        Ok(v1::JobState::Running) => JobState::Running,
        Ok(v1::JobState::Placed) => JobState::Placed,
        _ => JobState::Pending,
    }
}
