//! `failover`: kills leaders at intervals and measures recovery and
//! duplicate placements.
//!
//! Owns a federation of two global replicas and one region of two
//! scheduler replicas, optionally a preload of long-running tasks bound
//! before the first kill (`--tasks`, so a shard takeover has a full region
//! to load), a steady stream of long-running single-task jobs,
//! and a kill schedule that alternates between the global leader and the
//! region replica leading the most shards (SIGKILL of the real process; the
//! supervisor restarts it after its backoff). Recovery of the global tier
//! is the time until a submit is accepted again; of a shard, the time until
//! the region's replicas lead every shard again (their `/metrics`). Checks
//! that no task attempt ran on two nodes, that every acknowledged job runs,
//! and that no request id got two jobs. Must never count a slow recovery as
//! a failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::v1;

use crate::Ctx;
use crate::client;
use crate::error::Result;
use crate::federation::{Layout, LocalFederation, Proc};
use crate::scenario::{Target, await_nodes};
use crate::scrape;
use crate::stats::{Latency, Timeline};
use crate::watch::{Watcher, duplicate_lines};

const POLL: Duration = Duration::from_millis(25);

async fn leader_of(procs: &[Proc], metric: &str) -> Option<(Proc, f64)> {
    let mut best: Option<(Proc, f64)> = None;
    for p in procs {
        let Some(addr) = p.metrics else { continue };
        if let Some(v) = scrape::read(addr, metric).await
            && v > 0.0
            && best.as_ref().is_none_or(|(_, b)| v > *b)
        {
            best = Some((p.clone(), v));
        }
    }
    best
}

/// Tasks per job of the preload.
const PRELOAD_JOB_TASKS: u64 = 1_000;

/// Submits `tasks` long-running tasks (jobs of [`PRELOAD_JOB_TASKS`], in
/// one batched call per 100 jobs) and waits until the region reports them
/// all bound; returns how long that took.
async fn bind_long_tasks(endpoints: &str, seed: u64, tasks: u64) -> Result<Duration> {
    let started = Instant::now();
    let mut c = client::following(endpoints, Duration::from_secs(60))?;
    let jobs = tasks.div_ceil(PRELOAD_JOB_TASKS);
    let mut n = 0u64;
    while n < jobs {
        let items: Vec<v1::SubmitJobRequest> = (n..jobs.min(n + 100))
            .map(|j| {
                let count = (tasks - j * PRELOAD_JOB_TASKS).min(PRELOAD_JOB_TASKS);
                v1::SubmitJobRequest {
                    request_id: client::request_id(seed, "preload", j),
                    spec: Some(client::simulated_job(
                        "load-failover-preload",
                        count as u32,
                        3_600_000,
                    )),
                }
            })
            .collect();
        n += items.len() as u64;
        c.call(move |mut f| {
            let req = v1::SubmitJobsRequest {
                items: items.clone(),
            };
            async move { f.submit_jobs(req).await }
        })
        .await
        .map_err(|e| crate::error::LoadError::Federation(e.to_string()))?;
    }
    let guard = Duration::from_secs(600);
    loop {
        let regions = c
            .call(|mut f| async move { f.list_regions(v1::ListRegionsRequest {}).await })
            .await
            .map_err(|e| crate::error::LoadError::Federation(e.to_string()))?;
        let running: u64 = regions
            .regions
            .iter()
            .filter_map(|r| r.capacity.as_ref())
            .map(|c| c.running_tasks)
            .sum();
        if running >= tasks {
            return Ok(started.elapsed());
        }
        if started.elapsed() > guard {
            return Err(crate::error::LoadError::Federation(format!(
                "only {running} of {tasks} preloaded tasks bound after {} s",
                guard.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Time until a fresh submit is accepted by any global replica.
async fn global_recovery(
    fed: &LocalFederation,
    seed: u64,
    n: u64,
    guard: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    let urls: Vec<String> = fed.globals.iter().filter_map(|p| p.grpc.clone()).collect();
    let mut i = 0u64;
    while t0.elapsed() < guard {
        for url in &urls {
            let Ok(mut c) = client::federation(url, Duration::from_millis(300)) else {
                continue;
            };
            i += 1;
            let req = v1::SubmitJobRequest {
                request_id: client::request_id(seed, &format!("probe{n}"), i),
                spec: Some(client::simulated_job("load-failover-probe", 1, 100)),
            };
            if c.submit_job(req).await.is_ok() {
                return Some(t0.elapsed());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Time until the replicas at `addrs` lead `shards` shards between them.
async fn shard_recovery(addrs: &[SocketAddr], shards: u32, guard: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < guard {
        let mut led = 0.0;
        for a in addrs {
            led += scrape::read(*a, "meridian_regional_shards_led")
                .await
                .unwrap_or(0.0);
        }
        if led >= f64::from(shards) {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let mut report = ctx.report(
        "Two global replicas and one region with two scheduler replicas and four shards; \
         long-running single-task jobs are submitted steadily while the global leader and the \
         replica leading the most shards are killed in turn (SIGKILL).",
    );
    let nodes = ctx.args.nodes.unwrap_or(ctx.pick(50, 200));
    let offered = ctx.args.rate.unwrap_or(ctx.pick(20, 100));
    let d = ctx.duration(16, 60);
    let interval = Duration::from_secs(ctx.pick(5, 10));
    let shards = 4;
    let layout = Layout {
        global_replicas: 2,
        regions: 1,
        region_replicas: 2,
        shards,
        simulated_nodes: nodes,
        real_agents: 0,
        shard_lease_ms: 1000,
        tenant_limits: true,
    };
    report.param("kill_interval_s", interval.as_secs());
    report.param("seconds", d.as_secs());
    report.param("offered_jobs_per_s", offered);
    report.param("shards", shards);
    report.param("shard_lease_ms", 1000);
    let target = Target::get(ctx, layout).await?;
    let fed = target.local("failover")?;
    await_nodes(
        &target.endpoints,
        u64::from(nodes),
        Duration::from_secs(120),
    )
    .await?;
    let watcher = Watcher::start(&target.endpoints).await?;
    let seed = ctx.args.seed;
    let preload = ctx.args.tasks.unwrap_or(0);
    report.param("tasks_bound_before_kills", preload);
    if preload > 0 {
        let took = bind_long_tasks(&target.endpoints, seed, preload).await?;
        report.result("seconds_to_bind_preloaded_tasks", took.as_secs_f64());
    }
    let start = Instant::now();
    let submits = Submits::start(&target.endpoints, seed, offered, start)?;

    let bar = ctx.progress(d.as_secs(), "failover");
    let plan = KillPlan {
        seed,
        shards,
        start,
        duration: d,
        interval,
    };
    let recoveries = kill_and_measure(fed, &plan, &bar).await;
    let remaining = d.saturating_sub(start.elapsed());
    tokio::time::sleep(remaining).await;
    let (acked, clashes, acks) = submits.stop().await;
    bar.finish_and_clear();
    let (duplicates, reopened) = check_jobs(
        ctx,
        &mut report,
        &target.endpoints,
        watcher,
        &acked,
        clashes,
    )
    .await;
    let counts = Counts {
        duplicates,
        acknowledged: acked.len(),
        reopened,
    };
    report_recoveries(&mut report, recoveries, &counts, acks);
    target.finish(&mut report).await;
    Ok(report)
}

/// Waits for every acknowledged job to be seen running, then records the
/// duplicate placements, the request id clashes and the jobs never seen
/// running as violations; the number of duplicates and of watch reopens.
async fn check_jobs(
    ctx: &Ctx,
    report: &mut crate::Report,
    endpoints: &str,
    watcher: Watcher,
    acked: &HashMap<String, (String, Instant)>,
    clashes: Vec<String>,
) -> (usize, u64) {
    let jobs: Vec<String> = acked.keys().cloned().collect();
    let missing = watcher
        .await_running(&jobs, Duration::from_secs(ctx.pick(30, 60)))
        .await;
    let duplicates = watcher.with(duplicate_lines);
    let reopened = watcher.with(|s| s.reopened);
    watcher.stop();
    report.violations.extend(duplicates.iter().cloned());
    report.violations.extend(clashes);
    if !missing.is_empty() {
        report.result(
            "states_of_jobs_never_seen_running",
            super::states_of(endpoints, &missing).await,
        );
        report.violations.push(format!(
            "{} acknowledged jobs never ran (e.g. {})",
            missing.len(),
            missing
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    (duplicates.len(), reopened)
}

/// Background submits through leader-following clients: a submit that
/// meets a dead leader is retried, unchanged, on the new one.
struct Submits {
    /// Job id -> (request id, when sent) of each acknowledged submit.
    acked: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    /// Request ids that got the job of another request id.
    clashes: Arc<Mutex<Vec<String>>>,
    acks: Arc<Mutex<Timeline>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    lanes: Vec<tokio::task::JoinHandle<()>>,
}

impl Submits {
    /// Starts four lanes that together offer `offered` jobs a second.
    fn start(endpoints: &str, seed: u64, offered: u64, start: Instant) -> Result<Submits> {
        let acked: Arc<Mutex<HashMap<String, (String, Instant)>>> = Arc::default();
        let clashes: Arc<Mutex<Vec<String>>> = Arc::default();
        let acks = Arc::new(Mutex::new(Timeline::new(start)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut submitters = Vec::new();
        let lanes = 4u64;
        for lane in 0..lanes {
            let mut c = client::following(endpoints, Duration::from_secs(30))?;
            let (acked, clashes, acks, stop) =
                (acked.clone(), clashes.clone(), acks.clone(), stop.clone());
            let every = Duration::from_secs_f64(lanes as f64 / offered.max(1) as f64);
            submitters.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    let req = v1::SubmitJobRequest {
                        request_id: client::request_id(seed, &format!("f{lane}"), n),
                        spec: Some(client::simulated_job("load-failover", 1, 600_000)),
                    };
                    let at = Instant::now();
                    let rid = req.request_id.clone();
                    let out = c
                        .call(|mut f| {
                            let r = req.clone();
                            async move { f.submit_job(r).await }
                        })
                        .await;
                    if let Ok(r) = out {
                        if let Ok(mut a) = acks.lock() {
                            a.add(Instant::now(), 1);
                        }
                        if let Ok(mut m) = acked.lock()
                            && let Some((other, _)) = m.insert(r.job_id.clone(), (rid.clone(), at))
                            && other != rid
                            && let Ok(mut c) = clashes.lock()
                        {
                            c.push(format!(
                                "request ids {other} and {rid} both got job {}",
                                r.job_id
                            ));
                        }
                    }
                }
            }));
        }
        Ok(Submits {
            acked,
            clashes,
            acks,
            stop,
            lanes: submitters,
        })
    }

    /// Stops the lanes and waits for them; what they saw: the acknowledged
    /// jobs, the clashes, and the acknowledgements over time.
    async fn stop(
        self,
    ) -> (
        HashMap<String, (String, Instant)>,
        Vec<String>,
        Vec<(f64, f64)>,
    ) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in self.lanes {
            let _ = s.await;
        }
        let acked = self.acked.lock().map(|m| m.clone()).unwrap_or_default();
        let clashes = self.clashes.lock().map(|c| c.clone()).unwrap_or_default();
        let acks = self.acks.lock().map(|a| a.series()).unwrap_or_default();
        (acked, clashes, acks)
    }
}

/// When to kill, and what to wait for after each kill.
struct KillPlan {
    seed: u64,
    shards: u32,
    start: Instant,
    duration: Duration,
    interval: Duration,
}

/// What the kills measured.
struct Recoveries {
    global: Latency,
    shard: Latency,
    /// (kill time in s, recovery in ms), of each kill that recovered.
    timeline: Vec<(f64, f64)>,
    /// One line per kill or skipped kill.
    kills: Vec<String>,
}

/// Which recovery a kill measured.
#[derive(Clone, Copy)]
enum Tier {
    Global,
    Shard,
}

impl Recoveries {
    /// Records one kill's recovery `r` (none within `guard`) at `at` s.
    fn note(&mut self, tier: Tier, at: f64, r: Option<Duration>, guard: Duration) {
        match r {
            Some(d) => {
                match tier {
                    Tier::Global => self.global.record(d),
                    Tier::Shard => self.shard.record(d),
                }
                self.timeline.push((at, d.as_secs_f64() * 1000.0));
            }
            None => self.kills.push(match tier {
                Tier::Global => format!(
                    "{at:.1}s: global tier not back within {} s",
                    guard.as_secs()
                ),
                Tier::Shard => format!("{at:.1}s: shards not led within {} s", guard.as_secs()),
            }),
        }
    }
}

/// Kills the global leader and the replica leading the most shards in turn,
/// one every interval, and measures each recovery.
async fn kill_and_measure(
    fed: &LocalFederation,
    plan: &KillPlan,
    bar: &indicatif::ProgressBar,
) -> Recoveries {
    let region_addrs: Vec<SocketAddr> = fed.regions[0]
        .replicas
        .iter()
        .filter_map(|p| p.metrics)
        .collect();
    let mut rec = Recoveries {
        global: Latency::new(),
        shard: Latency::new(),
        timeline: Vec::new(),
        kills: Vec::new(),
    };
    let mut k = 0u64;
    let guard = Duration::from_secs(30);
    while plan.start.elapsed() + plan.interval <= plan.duration {
        tokio::time::sleep(plan.interval).await;
        bar.set_position(plan.start.elapsed().as_secs());
        k += 1;
        let at = plan.start.elapsed().as_secs_f64();
        if k % 2 == 1 {
            kill_global_leader(fed, plan.seed, k, guard, at, &mut rec).await;
        } else {
            kill_shard_leader(fed, &region_addrs, plan.shards, guard, at, &mut rec).await;
        }
    }
    rec
}

/// Kills the global leader and waits until a submit is accepted again.
async fn kill_global_leader(
    fed: &LocalFederation,
    seed: u64,
    k: u64,
    guard: Duration,
    at: f64,
    rec: &mut Recoveries,
) {
    let Some((leader, _)) = leader_of(&fed.globals, "meridian_global_leader").await else {
        rec.kills
            .push(format!("{at:.1}s: no global leader found to kill"));
        return;
    };
    if !fed.kill(&leader.name) {
        return;
    }
    let r = global_recovery(fed, seed, k, guard).await;
    rec.note(Tier::Global, at, r, guard);
    rec.kills.push(format!(
        "{at:.1}s: killed global leader {}: {}",
        leader.name,
        r.map_or("not back".into(), |d| format!(
            "back after {} ms",
            d.as_millis()
        ))
    ));
}

/// Kills the region replica leading the most shards and waits until every
/// shard is led again.
async fn kill_shard_leader(
    fed: &LocalFederation,
    region_addrs: &[SocketAddr],
    shards: u32,
    guard: Duration,
    at: f64,
    rec: &mut Recoveries,
) {
    let Some((leader, led)) =
        leader_of(&fed.regions[0].replicas, "meridian_regional_shards_led").await
    else {
        rec.kills
            .push(format!("{at:.1}s: no shard leader found to kill"));
        return;
    };
    if !fed.kill(&leader.name) {
        return;
    }
    let r = shard_recovery(region_addrs, shards, guard).await;
    rec.note(Tier::Shard, at, r, guard);
    rec.kills.push(format!(
        "{at:.1}s: killed {} (leading {led} shards): {}",
        leader.name,
        r.map_or("not all led again".into(), |d| format!(
            "all shards led again after {} ms",
            d.as_millis()
        ))
    ));
}

/// What the run counted besides the recoveries.
struct Counts {
    duplicates: usize,
    acknowledged: usize,
    reopened: u64,
}

/// The recoveries, the counts and the targets, into the report.
fn report_recoveries(
    report: &mut crate::Report,
    rec: Recoveries,
    counts: &Counts,
    acks: Vec<(f64, f64)>,
) {
    let g = rec.global.summary();
    let s = rec.shard.summary();
    report.result("global_failovers", g.count);
    report.result("global_recovery", &g);
    report.result("shard_failovers", s.count);
    report.result("shard_recovery", &s);
    report.result("duplicate_placements", counts.duplicates);
    report.result("acknowledged", counts.acknowledged);
    report.result("watch_reopened", counts.reopened);
    report.target(
        "failover, global leader (worst of the run)",
        "< 3 s",
        format!("{:.0} ms max over {} kills", g.max_ms, g.count),
        g.count > 0 && g.max_ms < 3000.0,
    );
    report.target(
        "failover, shard leader (worst of the run)",
        "< 2 s",
        format!("{:.0} ms max over {} kills", s.max_ms, s.count),
        s.count > 0 && s.max_ms < 2000.0,
    );
    report.target(
        "failover: duplicate placements",
        "0",
        counts.duplicates.to_string(),
        counts.duplicates == 0,
    );
    report.series(
        "recovery time per kill (global and shard, alternating)",
        "s (kill time)",
        "ms",
        rec.timeline,
    );
    report.series(
        "acknowledged submits (leader-following clients)",
        "s",
        "jobs/s",
        acks,
    );
    report.notes.extend(rec.kills);
    report.notes.push(
        "Recovery is measured from the SIGKILL: global, until any replica accepts a new submit \
         (probed every 25 ms); shard, until the region's replicas' /metrics show every shard led \
         (polled every 25 ms). A kill that finds no leader is skipped, not counted."
            .into(),
    );
}
