//! `e2e`: submit -> running latency at a fixed offered rate, open loop.
//!
//! Owns offering one single-task simulated job per `1/rate` s on a schedule
//! that never waits for answers, timing each job from its scheduled send to
//! the first event that shows it running, sampling the regions' queue
//! depth, and checking that every acknowledged job runs (convergence), that
//! no request id got two jobs and no task attempt ran on two nodes. Must
//! never shorten the schedule when the system falls behind.

use std::time::Duration;

use crate::Ctx;
use crate::client;
use crate::error::Result;
use crate::federation::Layout;
use crate::scenario::{Target, await_nodes, open_loop, sample_metric};
use crate::stats::{Latency, Timeline, rate};
use crate::watch::{Watcher, duplicate_lines};

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let mut report = ctx.report(
        "Open loop: one single-task simulated job (1 s) per 1/rate s; latency from the scheduled \
         send time to the first job event showing the job running, as seen by a WatchJobs client.",
    );
    let nodes = ctx.args.nodes.unwrap_or(ctx.pick(50, 1000));
    let offered = ctx.args.rate.unwrap_or(ctx.pick(100, 5000));
    let d = ctx.duration(5, 20);
    let layout = Layout {
        global_replicas: 1,
        regions: 1,
        region_replicas: 1,
        shards: 4,
        simulated_nodes: nodes,
        shard_lease_ms: 1000,
    };
    report.param("offered_jobs_per_s", offered);
    report.param("seconds", d.as_secs());
    report.param("simulated_nodes", nodes);
    let target = Target::get(ctx, layout).await?;
    if target.local.is_some() {
        await_nodes(
            &target.endpoints,
            u64::from(nodes),
            Duration::from_secs(120),
        )
        .await?;
    }
    let url = client::leader(&target.endpoints).await?;
    let watcher = Watcher::start(&url).await?;
    let start = std::time::Instant::now();
    let (depth, sampler) = sample_metric(
        target.region_metrics(),
        "meridian_regional_queue_depth",
        Duration::from_millis(500),
        start,
    );
    let bar = ctx.progress(d.as_secs(), "e2e");
    let spec = client::simulated_job("load-e2e", 1, 1000);
    let o = open_loop(&url, ctx.args.seed, offered, d, spec, &bar).await?;
    bar.finish_and_clear();
    let jobs: Vec<String> = o.acked.keys().cloned().collect();
    let missing = watcher
        .await_running(&jobs, Duration::from_secs(ctx.pick(30, 60)))
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
        report.result("watch_events", s.events);
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
    let l = latency.summary();
    let achieved = rate(o.acked.len() as u64, d);
    report.result("acknowledged", o.acked.len());
    report.result("scheduled", o.scheduled);
    report.result("submit_errors", &o.errors);
    report.result("submit_error_messages", &o.error_samples);
    report.result("acknowledged_jobs_per_s", achieved.round());
    report.result("submit_latency_from_schedule", o.ack_latency.summary());
    report.result("submit_to_running", &l);
    report.target(
        &format!("submit -> running p99 at {offered} jobs/s offered"),
        "< 50 ms at 5,000 jobs/s",
        format!("{:.1} ms ({achieved:.0} jobs/s acknowledged)", l.p99_ms),
        l.p99_ms < 50.0 && offered >= 5000 && o.errors.is_empty(),
    );
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
        report.series(
            "region queue depth (pending, all shards)",
            "s",
            "tasks",
            depth,
        );
    }
    target.shut_down().await;
    Ok(report)
}
