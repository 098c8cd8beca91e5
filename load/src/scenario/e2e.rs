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
use crate::cost;
use crate::error::Result;
use crate::federation::Layout;
use crate::scenario::churn::{Churn, Outcome};
use crate::scenario::{Target, await_nodes};
use crate::stats::rate;

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
        real_agents: 0,
        shard_lease_ms: 1000,
        tenant_limits: true,
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
    let phase = Churn {
        name: "e2e",
        rate: offered,
        duration: d,
        spec: client::simulated_job("load-e2e", 1, 1000),
        sample_every: Duration::from_millis(500),
        wait: Duration::from_secs(ctx.pick(30, 60)),
        depth_title: "region queue depth (pending, all shards)",
    };
    let probes = target.probes();
    let before = cost::sample(&probes).await;
    let Outcome {
        offered: o,
        latency,
    } = phase.run(ctx, &target, &mut report).await?;
    let after = cost::sample(&probes).await;
    // Per acknowledged job, over the phase (submits, the wait for them to
    // run, and the simulated tasks' ends that fall inside it).
    report.result(
        "cost_per_job",
        cost::per_job(&before, &after, o.acked.len() as u64),
    );
    let l = latency.summary();
    let achieved = rate(o.acked.len() as u64, d);
    report.result("scheduled", o.scheduled);
    report.result("acknowledged_jobs_per_s", achieved.round());
    report.result("submit_latency_from_schedule", o.ack_latency.summary());
    report.target(
        &format!("submit -> running p99 at {offered} jobs/s offered"),
        "< 50 ms at 5,000 jobs/s",
        format!("{:.1} ms ({achieved:.0} jobs/s acknowledged)", l.p99_ms),
        l.p99_ms < 50.0 && offered >= 5000 && o.errors.is_empty(),
    );
    target.finish(&mut report).await;
    Ok(report)
}
