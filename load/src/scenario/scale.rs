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
use crate::scenario::churn::Churn;
use crate::scenario::{Target, await_nodes};

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
        real_agents: 0,
        shard_lease_ms: 2000,
        tenant_limits: true,
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

    Churn {
        name: "scale",
        rate: offered,
        duration: d,
        spec: client::simulated_job("load-scale", 1, 2000),
        sample_every: Duration::from_secs(1),
        wait: Duration::from_secs(ctx.pick(30, 120)),
        depth_title: "queue depth, all regions",
    }
    .run(ctx, &target, &mut report)
    .await?;
    target.finish(&mut report).await;
    Ok(report)
}
