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
use meridian_control::lease::{Acquired, Identity, Lease};
use meridian_proto::v1;
use meridian_regional::agent::nodes;
use meridian_regional::jobs::{apply_assign, simple_spec};
use meridian_regional::model::{Keys, RegionView};
use meridian_regional::placement::{SolverConfig, solve};
use meridian_regional::placer::PlacerConfig;
use meridian_regional::placer::commit::commit_batch;
use meridian_regional::placer::round::{batches, build_input};
use meridian_regional::shard::ensure_layout;
use meridian_store::Database;

use crate::Ctx;
use crate::error::{LoadError, Result};
use crate::stats::Latency;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn store(e: impl std::fmt::Display) -> LoadError {
    LoadError::Store(e.to_string())
}

async fn add_jobs(
    db: &Database,
    keys: &Keys,
    round: usize,
    jobs: usize,
    per_job: u32,
) -> Result<()> {
    let shapes = [
        (250, 512 * MIB),
        (1_000, 2 * GIB),
        (4_000, 8 * GIB),
        (500, GIB),
    ];
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(500) {
        db.run(|tx, _| {
            let keys = keys.clone();
            let chunk = chunk.to_vec();
            async move {
                for j in chunk {
                    let (cpu, mem) = shapes[j % shapes.len()];
                    let mut spec = simple_spec(&format!("tenant-{}", j % 20), per_job, cpu, mem);
                    if j % 5 < 2 {
                        spec.placement = v1::PlacementPolicy::Pack as i32;
                    }
                    apply_assign(
                        &tx,
                        &keys,
                        &format!("job-{round:03}-{j:06}"),
                        1,
                        "",
                        &spec,
                        0,
                    )
                    .await?;
                }
                Ok::<_, meridian_regional::RegionalError>(())
            }
        })
        .await
        .map_err(store)?;
    }
    Ok(())
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let mut report = ctx.report(
        "One region in process: registered nodes, pending jobs, and the shard leader's own \
         placement round (read, snapshot, solve, commit in fenced OCC batches) against a SQLite \
         file; repeated with fresh jobs until the duration is spent.",
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
    let batch_size = PlacerConfig::default().batch_size;
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
    let keys = Keys::new("load");
    ensure_layout(&db, &keys, 1).await.map_err(store)?;
    for i in 0..n_nodes {
        let req = v1::RegisterNodeRequest {
            node_id: format!("node-{i:05}"),
            boot_id: "boot".into(),
            allocatable: Some(v1::Resources {
                cpu_millis: 32_000,
                memory_bytes: 128 * GIB,
                gpu_count: 0,
                gpu_type: String::new(),
            }),
            zone: format!("zone-{}", i % 4),
            rack: format!("rack-{}", i % 100),
            ..Default::default()
        };
        nodes::register(&db, &keys, &req, now_ms())
            .await
            .map_err(store)?;
    }
    let lease = Lease::new(
        db.clone(),
        keys.shard_lease(0),
        Identity::new_boot("load"),
        SystemClock::shared(),
        Duration::from_secs(600),
        Duration::from_secs(1),
    );
    let Acquired::Held(held) = lease.try_acquire().await.map_err(store)? else {
        return Err(LoadError::Store(
            "the shard lease is held by another owner".into(),
        ));
    };
    let bar = ctx.progress(max_rounds as u64, "placement");
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
        add_jobs(&db, &keys, round, jobs, per_job).await?;
        let t0 = Instant::now();
        let view = db
            .run(|tx, _| {
                let keys = keys.clone();
                async move { RegionView::read(&tx, &keys).await }
            })
            .await
            .map_err(store)?;
        let pending = view.pending.keys().cloned().collect();
        let input = build_input(&view, 0, &pending, now_ms());
        let solution = solve(&input.snapshot, &input.pending, &SolverConfig::default());
        let mut bound = 0usize;
        for batch in batches(&input, &solution, batch_size) {
            let tb = Instant::now();
            let out = commit_batch(
                &db,
                &keys,
                &held.fence,
                0,
                input.generation,
                &batch.bindings,
                &batch.stops,
                now_ms(),
            )
            .await
            .map_err(store)?;
            per_batch.record(tb.elapsed());
            bound += out.bound.len();
            stale_total += out.stale.len();
            for t in out.bound {
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
    bar.finish_and_clear();

    // Invariant 5: no node overcommitted, read back from the store.
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
    let rate = total_bound as f64 / total_time.as_secs_f64().max(1e-9);
    report.result("bindings", total_bound);
    report.result("stale_bindings", stale_total);
    report.result("rounds", rounds.len());
    report.result("seconds_in_rounds", total_time.as_secs_f64());
    report.result("bindings_per_s", rate.round());
    report.result("commit_batch_latency", per_batch.summary());
    report.result("nodes_used", used.len());
    report.target(
        &format!("placement, durable, {n_nodes} nodes, one region"),
        ">= 50,000 bindings/s",
        format!("{rate:.0} bindings/s"),
        rate >= 50_000.0,
    );
    report.series("bindings committed", "s (in rounds)", "bindings", progress);
    report.series("bindings/s per round", "round", "bindings/s", rounds);
    report.notes.push(
        "Each round is timed from its first read to its last commit; adding the round's jobs \
         (the global tier's hand-off) is outside the timing, as in the durable placement bench."
            .into(),
    );
    Ok(report)
}
