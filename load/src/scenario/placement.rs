//! `placement`: durable bindings/s of one region, in process.
//!
//! Owns one region's worth of nodes and pending tasks in a SQLite store and
//! the shard leader's own placement round over it (`RegionView::read`,
//! `build_input`, `solve`, `batches`, `commit_batch`, the code path of
//! `regional/benches/durable_placement.rs`), repeated until `--duration`
//! with fresh jobs each round, then the checks that no task is bound twice
//! and no node holds more than its capacity. Must never bypass the fence:
//! every commit goes through the held shard lease.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meridian_control::SystemClock;
use meridian_regional::fixture::{Fixture, bench_job, bench_node};
use meridian_regional::model::RegionView;
use meridian_regional::placer::sweep::LivenessConfig;
use meridian_regional::placer::{PlacerConfig, ShardLoop};

use crate::Ctx;
use crate::error::{LoadError, Result};
use crate::stats::Latency;

fn store(e: impl std::fmt::Display) -> LoadError {
    LoadError::Store(e.to_string())
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let mut report = ctx.report(
        "One region in process: registered nodes, pending jobs, and the shard leader's own \
         placement round (decide from memory, solve, commit through the write pipeline in fenced \
         batches that re-check every node and task) against a SQLite file; repeated with fresh \
         jobs until the duration is spent.",
    );
    if ctx.args.endpoint.is_some() {
        return Err(LoadError::Usage(
            "placement runs in process on its own store; drop --endpoint".into(),
        ));
    }
    let n_nodes = ctx.args.nodes.unwrap_or(ctx.pick(1_000, 10_000)) as usize;
    // Sized so the region never fills: each round binds jobs*10 tasks of
    // at most 4 cores on 32-core nodes.
    let jobs = ctx.pick(500, 5_000);
    let per_job = 10u32;
    let d = ctx.duration(3, 20);
    let max_rounds = ctx.pick(2, 4);
    let config = PlacerConfig {
        // Nothing beats here but the scenario itself; no node may turn
        // suspect while it runs.
        liveness: LivenessConfig {
            suspect_after: Duration::from_secs(3600),
            dead_after: Duration::from_secs(7200),
            exclusive_wait: Duration::from_secs(1),
        },
        ..PlacerConfig::default()
    };
    let batch_size = config.batch_size;
    report.param("nodes", n_nodes);
    report.param("tasks_per_round", jobs * per_job as usize);
    report.param("batch_size", batch_size);
    report.param("max_rounds", max_rounds);
    let dir = tempfile::Builder::new()
        .prefix("meridian-load-placement-")
        .tempdir()
        .map_err(|e| LoadError::io("temp dir", e))?;
    let url = format!("sqlite:{}", dir.path().join("region.db").display());
    let db = meridian_store::open(&url).await.map_err(store)?;
    let fixture = Fixture::open(db.clone(), "load", 1, SystemClock::shared(), config)
        .await
        .map_err(store)?;
    fixture
        .register_many((0..n_nodes).map(bench_node).collect())
        .await
        .map_err(store)?;
    let mut shard = fixture.shard_loop(0).await.map_err(store)?;
    let bar = ctx.progress(max_rounds as u64, "placement");
    let plan = Plan {
        jobs,
        per_job,
        max_rounds,
        duration: d,
    };
    let done = place_rounds(&fixture, &mut shard, &plan, &bar, &mut report).await?;
    bar.finish_and_clear();

    // Invariant 5: no node overcommitted, read back from the store.
    let nodes_used = check_store(&db, &fixture, done.total_bound, &mut report).await?;
    report_rounds(&mut report, done, n_nodes, nodes_used);
    Ok(report)
}

/// Rates, latency and targets of the rounds, into the report.
fn report_rounds(report: &mut crate::Report, done: Rounds, n_nodes: usize, nodes_used: usize) {
    let Rounds {
        rounds,
        per_batch,
        total_bound,
        total_time,
        stale_total,
        progress,
    } = done;
    let rate = total_bound as f64 / total_time.as_secs_f64().max(1e-9);
    report.result("bindings", total_bound);
    report.result("stale_bindings", stale_total);
    report.result("rounds", rounds.len());
    report.result("seconds_in_rounds", total_time.as_secs_f64());
    report.result("bindings_per_s", rate.round());
    report.result("round_latency", per_batch.summary());
    report.result("nodes_used", nodes_used);
    report.target(
        &format!("placement, durable, {n_nodes} nodes, one region"),
        ">= 50,000 bindings/s",
        format!("{rate:.0} bindings/s"),
        rate >= 50_000.0,
    );
    report.series("bindings committed", "s (in rounds)", "bindings", progress);
    report.series("bindings/s per round", "round", "bindings/s", rounds);
    report.notes.push(
        "Each round is timed from taking its jobs to its last commit; adding the round's jobs \
         (the intake of the global tier's hand-off) is outside the timing, as in the durable \
         placement bench."
            .into(),
    );
}

/// How many rounds of how many jobs, for how long at most.
struct Plan {
    jobs: usize,
    per_job: u32,
    max_rounds: usize,
    duration: Duration,
}

/// What the rounds did.
struct Rounds {
    /// (round, bindings/s) of each round.
    rounds: Vec<(f64, f64)>,
    per_batch: Latency,
    total_bound: usize,
    total_time: Duration,
    stale_total: usize,
    /// (seconds in rounds, bindings so far) after each placement round.
    progress: Vec<(f64, f64)>,
}

/// Adds fresh jobs and places them, round after round, until the rounds or
/// the duration are spent; a task bound twice is a violation.
async fn place_rounds(
    fixture: &Fixture,
    shard: &mut ShardLoop,
    plan: &Plan,
    bar: &indicatif::ProgressBar,
    report: &mut crate::Report,
) -> Result<Rounds> {
    let Plan {
        jobs,
        per_job,
        max_rounds,
        duration: d,
    } = *plan;
    let mut rounds = Vec::new();
    let mut per_batch = Latency::new();
    let mut bound_once: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut total_bound = 0usize;
    let mut total_time = Duration::ZERO;
    let mut stale_total = 0usize;
    let mut progress = Vec::new();
    let started = Instant::now();
    for round in 0..max_rounds {
        if round > 0 && started.elapsed() >= d {
            break;
        }
        let specs = (0..jobs)
            .map(|j| (format!("job-{round:03}-{j:06}"), bench_job(j, per_job)))
            .collect();
        fixture.insert_jobs(specs).await.map_err(store)?;
        let t0 = Instant::now();
        let mut bound = 0usize;
        // One round takes every job the intake queued; a second one only
        // runs if decisions went stale and were queued again.
        loop {
            let tb = Instant::now();
            let out = shard.round().await.map_err(store)?;
            if out.jobs == 0 {
                break;
            }
            per_batch.record(tb.elapsed());
            bound += out.outcome.bound.len();
            stale_total += out.outcome.stale.len();
            for t in out.outcome.bound {
                if !bound_once.insert((t.job_id.clone(), t.index)) {
                    report
                        .violations
                        .push(format!("task {}/{} bound twice", t.job_id, t.index));
                }
            }
            progress.push((
                (total_time + t0.elapsed()).as_secs_f64(),
                (total_bound + bound) as f64,
            ));
        }
        let took = t0.elapsed();
        total_time += took;
        total_bound += bound;
        rounds.push((round as f64, bound as f64 / took.as_secs_f64()));
        bar.inc(1);
    }
    Ok(Rounds {
        rounds,
        per_batch,
        total_bound,
        total_time,
        stale_total,
        progress,
    })
}

/// Reads the region back from the store: a node holding more than its
/// capacity, or a count of bound tasks other than `total_bound`, is a
/// violation. Returns how many nodes hold tasks.
async fn check_store(
    db: &meridian_store::Database,
    fixture: &Fixture,
    total_bound: usize,
    report: &mut crate::Report,
) -> Result<usize> {
    let keys = fixture.keys.clone();
    let view = db
        .run(|tx, _| {
            let keys = keys.clone();
            async move { RegionView::read(&tx, &keys).await }
        })
        .await
        .map_err(store)?;
    let mut used: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut bound_in_store = 0usize;
    for ((job, _), block) in &view.blocks {
        let Some(rec) = view.jobs.get(job) else {
            continue;
        };
        for t in &block.tasks {
            if t.is_bound() && !t.is_terminal() {
                let u = used.entry(t.node.as_str()).or_default();
                u.0 += rec.resources.cpu;
                u.1 += rec.resources.mem;
                bound_in_store += 1;
            }
        }
    }
    for (node, (cpu, mem)) in &used {
        if let Some(n) = view.nodes.get(*node)
            && (*cpu > n.allocatable.cpu || *mem > n.allocatable.mem)
        {
            report.violations.push(format!(
                "node {node} overcommitted: {cpu}m/{} cpu, {mem}/{} bytes",
                n.allocatable.cpu, n.allocatable.mem
            ));
        }
    }
    if bound_in_store != total_bound {
        report.violations.push(format!(
            "{total_bound} bindings committed but {bound_in_store} tasks bound in the store"
        ));
    }
    Ok(used.len())
}
