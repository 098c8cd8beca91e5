//! `herd`: mass reconnect of simulated agents after an outage of their
//! region.
//!
//! Owns one region (one scheduler replica, one agent process hosting many
//! simulated nodes): once every node is ready it kills the scheduler with
//! SIGKILL (the supervisor restarts it after its backoff), then reads the
//! region's node list until every node has been heard from again, timing
//! each node's return (the reconnect spread) and the time until all are
//! back. Checks that every node comes back and none appears twice. Must
//! never count a slow return as a failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meridian_proto::v1;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use tonic::transport::Endpoint;

use crate::Ctx;
use crate::error::{LoadError, Result};
use crate::federation::Layout;
use crate::scenario::{Target, await_nodes};
use crate::stats::Latency;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn list_nodes(url: &str, region: &str) -> Option<Vec<v1::NodeInfo>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5));
    // RegionAdmin answers the global tier's certificate only: the run's
    // own federation gives load one naming it (crate::federation).
    let ch = crate::client::channel(endpoint).ok()?;
    let mut c = RegionAdminClient::new(ch).max_decoding_message_size(64 << 20);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_nodes(v1::ListNodesRequest {
                region: region.to_string(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        out.extend(page.nodes);
        if page.next_page_token.is_empty() {
            return Some(out);
        }
        token = page.next_page_token;
    }
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let mut report = ctx.report(
        "One region, one scheduler replica, one agent process hosting the simulated nodes. Once \
         all are ready the scheduler is killed (SIGKILL) and restarted by the supervisor; each \
         node counts as back once the region records a heartbeat or registration after the kill.",
    );
    let nodes = ctx.args.nodes.unwrap_or(ctx.pick(300, 10_000));
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
    report.param("simulated_nodes", nodes);
    let target = Target::get(ctx, layout).await?;
    let fed = target.local("herd")?;
    await_nodes(
        &target.endpoints,
        u64::from(nodes),
        Duration::from_secs(300),
    )
    .await?;
    let region = fed.regions[0].clone();
    let replica = region.replicas[0].clone();
    let url = replica.grpc.clone().unwrap_or_default();
    let kill_ms = unix_ms();
    let killed = Instant::now();
    if !fed.kill(&replica.name) {
        return Err(LoadError::Federation(format!(
            "no process for {}",
            replica.name
        )));
    }
    let guard = Duration::from_secs(ctx.pick(60, 300));
    let outage = Outage {
        kill_ms,
        killed,
        guard,
    };
    let returns = watch_returns(ctx, &url, &region.name, nodes, &outage, &mut report).await;
    let Returns {
        back,
        reachable_after,
        curve,
        seen_total,
    } = returns;
    report.violations.dedup();
    if back.len() < nodes as usize {
        report.violations.push(format!(
            "only {} of {nodes} nodes were heard from within {} s of the outage",
            back.len(),
            guard.as_secs()
        ));
    }
    if seen_total > nodes as usize {
        report
            .violations
            .push(format!("{seen_total} node records for {nodes} nodes"));
    }
    report_returns(&mut report, &back, reachable_after, curve);
    report.notes.push(
        "Times are read by polling the region's node list every 200 ms, so each is rounded up \
         to the poll; the restart includes the supervisor's 500 ms backoff and the replica's own \
         start-up."
            .into(),
    );
    target.finish(&mut report).await;
    Ok(report)
}

/// When the scheduler was killed, and how long its nodes are given to come
/// back.
struct Outage {
    kill_ms: u64,
    killed: Instant,
    guard: Duration,
}

/// What the polls saw after the kill.
struct Returns {
    /// When each node was first heard from again, after the kill.
    back: BTreeMap<String, Duration>,
    /// When the region first answered again.
    reachable_after: Option<Duration>,
    /// (s after the kill, nodes back) at each poll.
    curve: Vec<(f64, f64)>,
    /// Node records in the last list read.
    seen_total: usize,
}

/// Polls the region's node list until every node has been heard from since
/// the kill or the guard is spent; a node listed twice is a violation.
async fn watch_returns(
    ctx: &Ctx,
    url: &str,
    region: &str,
    nodes: u32,
    outage: &Outage,
    report: &mut crate::Report,
) -> Returns {
    let Outage {
        kill_ms,
        killed,
        guard,
    } = *outage;
    let bar = ctx.progress(u64::from(nodes), "herd");
    let mut back: BTreeMap<String, Duration> = BTreeMap::new();
    let mut reachable_after = None;
    let mut curve = Vec::new();
    let mut seen_total = 0usize;
    while back.len() < nodes as usize && killed.elapsed() < guard {
        if let Some(list) = list_nodes(url, region).await {
            let now = killed.elapsed();
            reachable_after.get_or_insert(now);
            seen_total = list.len();
            let mut ids = std::collections::BTreeSet::new();
            for n in &list {
                if !ids.insert(n.node_id.clone()) {
                    report
                        .violations
                        .push(format!("node {} listed twice after the outage", n.node_id));
                }
                if n.last_heartbeat_unix_ms.max(n.registered_at_unix_ms) > kill_ms {
                    back.entry(n.node_id.clone()).or_insert(now);
                }
            }
            curve.push((now.as_secs_f64(), back.len() as f64));
            bar.set_position(back.len() as u64);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    Returns {
        back,
        reachable_after,
        curve,
        seen_total,
    }
}

/// The return times, their spread and curves, into the report.
fn report_returns(
    report: &mut crate::Report,
    back: &BTreeMap<String, Duration>,
    reachable_after: Option<Duration>,
    curve: Vec<(f64, f64)>,
) {
    let mut spread = Latency::new();
    for d in back.values() {
        spread.record(*d);
    }
    let s = spread.summary();
    report.result(
        "region_reachable_after_kill_s",
        reachable_after.map(|d| d.as_secs_f64()),
    );
    report.result("all_back_after_kill_s", s.max_ms / 1000.0);
    report.result("return_after_kill", &s);
    report.result(
        "reconnect_spread_s",
        (s.max_ms - spread.quantile_ms(0.0)) / 1000.0,
    );
    report.series("nodes heard from again after the kill", "s", "nodes", curve);
    report.series(
        "time of return after the kill",
        "percentile of nodes",
        "ms",
        spread.curve(),
    );
}
