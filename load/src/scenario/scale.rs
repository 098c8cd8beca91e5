//! `scale`: many simulated nodes across ten regions, with steady churn.
//!
//! Owns starting a federation of ten regions (one scheduler and one
//! simulated-node agent process each), timing until every node is ready,
//! then offering short single-task jobs at a steady rate (open loop) while
//! sampling queue depth, and checking that every acknowledged job ran and
//! no task attempt ran on two nodes. Must never count slowness as failure.

use std::time::{Duration, Instant};

use crate::Ctx;
use crate::client;
use crate::error::Result;
use crate::federation::Layout;
use crate::scenario::{Target, await_nodes, open_loop, sample_metric};
use crate::stats::{Latency, Timeline};
use crate::watch::{Watcher, duplicate_lines};

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let mut report = ctx.report(
        "Ten regions (one scheduler replica and one simulated-node agent process each, one \
         global replica); time until every node is ready, then steady churn of 2 s single-task \
         jobs offered open loop.",
    );
    let regions: u16 = ctx.pick(4, 10);
    let per_region = ctx.args.nodes.unwrap_or(ctx.pick(100, 10_000));
    let offered = ctx.args.rate.unwrap_or(ctx.pick(40, 500));
    let d = ctx.duration(5, 30);
    let total = u64::from(regions) * u64::from(per_region);
    report.param("regions", regions);
    report.param("simulated_nodes_per_region", per_region);
    report.param("offered_jobs_per_s", offered);
    report.param("churn_seconds", d.as_secs());
    let t0 = Instant::now();
    let layout = Layout {
        global_replicas: 1,
        regions,
        region_replicas: 1,
        shards: 4,
        simulated_nodes: per_region,
        shard_lease_ms: 2000,
    };
    let target = Target::get(ctx, layout).await?;
    let started = t0.elapsed();
    let (to_ready, ready) = await_nodes(
        &target.endpoints,
        total,
        Duration::from_secs(ctx.pick(60, 600)),
    )
    .await?;
    report.result("processes_started_s", started.as_secs_f64());
    report.result("all_nodes_ready_after_start_s", to_ready.as_secs_f64());
    report.result("nodes_ready", total);
    report.target(
        "scale: simulated nodes across 10 regions in one run",
        "100,000 nodes",
        format!("{total} nodes ready in {regions} regions"),
        total >= 100_000 && regions >= 10,
    );
    report.series(
        "nodes ready after the processes started",
        "s",
        "nodes",
        ready,
    );

    let url = client::leader(&target.endpoints).await?;
    let watcher = Watcher::start(&url).await?;
    let start = Instant::now();
    let (depth, sampler) = sample_metric(
        target.region_metrics(),
        "meridian_regional_queue_depth",
        Duration::from_secs(1),
        start,
    );
    let bar = ctx.progress(d.as_secs(), "scale");
    let spec = client::simulated_job("load-scale", 1, 2000);
    let o = open_loop(&url, ctx.args.seed, offered, d, spec, &bar).await?;
    bar.finish_and_clear();
    let jobs: Vec<String> = o.acked.keys().cloned().collect();
    let missing = watcher
        .await_running(&jobs, Duration::from_secs(ctx.pick(30, 120)))
        .await;
    sampler.abort();
    let mut latency = Latency::new();
    let mut running = Timeline::new(start);
    watcher.with(|s| {
        for (job, (_, at)) in &o.acked {
            if let Some(r) = s.running_at.get(job) {
                latency.record(r.saturating_duration_since(*at));
                running.add(*r, 1);
            }
        }
        report.violations.extend(duplicate_lines(s));
    });
    watcher.stop();
    report.violations.extend(o.id_clashes.iter().cloned());
    if !missing.is_empty() {
        report.result(
            "states_of_jobs_never_seen_running",
            super::states_of(&url, &missing).await,
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
    report.result("acknowledged", o.acked.len());
    report.result("submit_errors", &o.errors);
    report.result("submit_error_messages", &o.error_samples);
    report.result("submit_to_running", latency.summary());
    report.series("acknowledged submits", "s", "jobs/s", o.acks.series());
    report.series("jobs seen running", "s", "jobs/s", running.series());
    report.series(
        "submit -> running latency",
        "percentile",
        "ms",
        latency.curve(),
    );
    let depth = depth.lock().map(|v| v.clone()).unwrap_or_default();
    if !depth.is_empty() {
        report.series("queue depth, all regions", "s", "tasks", depth);
    }
    target.shut_down().await;
    Ok(report)
}
