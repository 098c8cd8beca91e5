//! `meridian dev`: a whole federation on this machine.
//!
//! Owns the layout of a development federation (which processes, their
//! flags, stores under the data directory, deterministic ports so restarts
//! find everything where it was), starting it tier by tier (each child is
//! waited for by the line it prints once serving), printing the endpoints,
//! and stopping it on SIGINT/SIGTERM (agents, then regions, then the global
//! tier). Every part runs as a separate OS process of this same binary.
//! Must never hold scheduling logic, and never wait for a child by sleeping.

pub mod child;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{CliError, Result};
use child::ChildSpec;

/// Names of the first regions; further ones are `region-N`.
const REGION_NAMES: [&str; 6] = [
    "us-east", "eu-west", "ap-south", "us-west", "eu-north", "ap-east",
];

/// Flags of `meridian dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the stores and logs live; restarting with the same directory
    /// keeps all data.
    #[arg(long, env = "MERIDIAN_DATA_DIR", default_value = "data/dev")]
    pub data_dir: PathBuf,
    /// Number of regions (1 to 10).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=10))]
    pub regions: u16,
    /// Replicas of the global tier, sharing one store (1 to 10).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=10))]
    pub global_replicas: u16,
    /// Scheduler replicas per region, sharing the region's store (1 to 10).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=10))]
    pub region_replicas: u16,
    /// Shards per region.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Simulated nodes per region, hosted by one agent process (0: none).
    #[arg(long, default_value_t = 200)]
    pub simulated_nodes: u32,
    /// Real-process agents per region (they run commands on this machine).
    #[arg(long, default_value_t = 1)]
    pub real_agents: u32,
    /// First port: the global tier serves gRPC from here, HTTP from +80,
    /// regions gRPC from +100 and metrics from +200.
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Seconds a child gets to stop after SIGTERM before it is killed.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
    /// Span export, handed on to every child.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
}

/// A process of the plan with what to print about it once it is up.
struct Planned {
    spec: ChildSpec,
    summary: String,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn port(base: u16, offset: u32) -> Result<u16> {
    u16::try_from(u32::from(base) + offset)
        .map_err(|_| CliError::usage(format!("--base-port {base} leaves no room for the ports")))
}

fn region_name(r: u16) -> String {
    REGION_NAMES
        .get(usize::from(r))
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("region-{}", r + 1))
}

fn url(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// The three tiers to start, in order: global replicas, region replicas, agents.
fn plan(a: &DevArgs, data: &Path) -> Result<[Vec<Planned>; 3]> {
    let logs = data.join("logs");
    let log = |name: &str| logs.join(format!("{name}.log"));
    let s = |v: &str| v.to_string();
    let mut globals = Vec::new();
    let mut global_endpoints = Vec::new();
    for i in 0..u32::from(a.global_replicas) {
        let name = format!("global-{}", i + 1);
        let grpc = addr(port(a.base_port, i)?);
        let http = addr(port(a.base_port, 80 + i)?);
        global_endpoints.push(format!("http://{grpc}"));
        globals.push(Planned {
            summary: format!(
                "{name} grpc=http://{grpc} http=http://{http} console=http://{http}/console"
            ),
            spec: ChildSpec {
                args: vec![
                    s("global"),
                    s("--store"),
                    url(&data.join("global.db")),
                    s("--listen"),
                    grpc.to_string(),
                    s("--http"),
                    http.to_string(),
                    s("--name"),
                    name.clone(),
                ],
                ready: Some("meridian global: serving"),
                log: log(&name),
                name,
            },
        });
    }
    let mut regions = Vec::new();
    let mut agents = Vec::new();
    for r in 0..a.regions {
        let region = region_name(r);
        let store = url(&data.join("regions").join(format!("{region}.db")));
        let mut endpoints = Vec::new();
        for i in 0..u32::from(a.region_replicas) {
            let name = format!("{region}-{}", i + 1);
            let grpc = addr(port(a.base_port, 100 + 10 * u32::from(r) + i)?);
            let metrics = addr(port(a.base_port, 200 + 10 * u32::from(r) + i)?);
            endpoints.push(format!("http://{grpc}"));
            regions.push(Planned {
                summary: format!(
                    "{name} grpc=http://{grpc} metrics=http://{metrics}/metrics \
                     console=http://{metrics}/console"
                ),
                spec: ChildSpec {
                    args: vec![
                        s("regional"),
                        s("--region"),
                        region.clone(),
                        s("--global"),
                        global_endpoints.join(","),
                        s("--store"),
                        store.clone(),
                        s("--listen"),
                        grpc.to_string(),
                        s("--metrics-listen"),
                        metrics.to_string(),
                        s("--shards"),
                        a.shards.to_string(),
                        s("--replica"),
                        name.clone(),
                        s("--seed"),
                        (u32::from(r) * 100 + i).to_string(),
                    ],
                    ready: Some("listening on"),
                    log: log(&name),
                    name,
                },
            });
        }
        let mut agent = |name: String, extra: Vec<String>, summary: String| {
            // Every replica of the region, starting at a different one per
            // agent: the agent moves on when one dies and follows each
            // shard leader's hint, so no replica is a single point of loss.
            let first = agents.len() % endpoints.len();
            let endpoint = endpoints[first..]
                .iter()
                .chain(&endpoints[..first])
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            let mut args = vec![
                s("agent"),
                s("--region"),
                endpoint,
                s("--node-id"),
                name.clone(),
                s("--work-dir"),
                data.join("agents").join(&name).display().to_string(),
                s("--seed"),
                (u32::from(r) * 100 + agents.len() as u32).to_string(),
            ];
            args.extend(extra);
            agents.push(Planned {
                summary,
                spec: ChildSpec {
                    args,
                    ready: None,
                    log: log(&name),
                    name,
                },
            });
        };
        if a.simulated_nodes > 0 {
            let name = format!("{region}-sim");
            let summary = format!("{name}: {} simulated nodes", a.simulated_nodes);
            agent(
                name,
                vec![
                    s("--simulate"),
                    a.simulated_nodes.to_string(),
                    s("--cpu"),
                    s("8"),
                    s("--memory"),
                    (32u64 << 30).to_string(),
                    s("--labels"),
                    format!("zone={region}-a"),
                ],
                summary,
            );
        }
        for k in 0..a.real_agents {
            let name = format!("{region}-node-{}", k + 1);
            let summary = format!("{name}: real processes");
            agent(
                name,
                vec![
                    s("--cpu"),
                    s("4"),
                    s("--memory"),
                    (8u64 << 30).to_string(),
                    s("--labels"),
                    format!("zone={region}-b,real=true"),
                ],
                summary,
            );
        }
    }
    Ok([globals, regions, agents])
}

struct Tier {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Tier {
    async fn shut_down(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts a tier's children one after the other, each once the previous
/// one is ready (so the first global replica is the first candidate for
/// leader, and logs read in a stable order).
async fn start_tier(exe: &Path, planned: &[Planned], grace: Duration) -> (Tier, Result<()>) {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for p in planned {
        let (tx, rx) = oneshot::channel();
        tasks.push(tokio::spawn(child::supervise(
            exe.to_path_buf(),
            p.spec.clone(),
            grace,
            stop_rx.clone(),
            tx,
        )));
        let outcome = match rx.await {
            Ok(Ok(_)) => {
                println!("meridian dev: {}", p.summary);
                continue;
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(CliError::other(format!(
                "{} was never started",
                p.spec.name
            ))),
        };
        return (Tier { stop, tasks }, outcome);
    }
    (Tier { stop, tasks }, Ok(()))
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CliError::other(format!("installing the SIGINT handler: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::other(format!("installing the SIGTERM handler: {e}")))?;
    Ok(tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    })
}

/// Runs `meridian dev` until SIGINT or SIGTERM.
pub async fn run(args: DevArgs) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::other(format!("locating the meridian binary: {e}")))?;
    for dir in ["logs", "regions", "agents"] {
        let path = args.data_dir.join(dir);
        std::fs::create_dir_all(&path)
            .map_err(|e| CliError::other(format!("creating {}: {e}", path.display())))?;
    }
    let data = std::fs::canonicalize(&args.data_dir)
        .map_err(|e| CliError::other(format!("{}: {e}", args.data_dir.display())))?;
    let mut tiers = plan(&args, &data)?;
    if let Some(endpoint) = &args.telemetry.otlp_endpoint {
        for p in tiers.iter_mut().flatten() {
            p.spec
                .args
                .extend(["--otlp-endpoint".to_string(), endpoint.clone()]);
        }
    }
    let grace = Duration::from_secs(args.grace_secs);
    // Installed before anything starts, so an early Ctrl-C is not lost.
    let signal = stop_signal();
    tokio::pin!(signal);
    println!("meridian dev: data in {}", data.display());

    let mut running: Vec<Tier> = Vec::new();
    let mut failure = None;
    let mut interrupted = false;
    for planned in &tiers {
        let start = start_tier(&exe, planned, grace);
        tokio::select! {
            (tier, outcome) = start => {
                running.push(tier);
                if let Err(e) = outcome {
                    failure = Some(e);
                    break;
                }
            }
            s = &mut signal => {
                eprintln!("meridian dev: {} while starting; stopping", s?);
                interrupted = true;
                break;
            }
        }
    }
    if failure.is_none() && !interrupted {
        let globals: Vec<String> = tiers[0]
            .iter()
            .map(|p| {
                p.summary
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("grpc="))
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        println!("meridian dev: logs in {}", data.join("logs").display());
        println!(
            "meridian dev: ready: MERIDIAN_ENDPOINT={} (try: meridian job submit --wait -- echo hello; Ctrl-C stops everything)",
            globals.join(",")
        );
        let s = (&mut signal).await?;
        eprintln!("meridian dev: {s}: stopping agents, regions, then the global tier");
    }
    // Agents first (they would only reconnect), then regions, then global.
    while let Some(tier) = running.pop() {
        tier.shut_down().await;
    }
    match failure {
        Some(e) => Err(e),
        None => {
            println!("meridian dev: stopped");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        dev: DevArgs,
    }

    #[test]
    fn the_default_plan_has_two_globals_six_region_replicas_and_six_agents() {
        let args = Wrap::parse_from(["x"]).dev;
        let [g, r, a] = plan(&args, Path::new("/d")).expect("plan");
        assert_eq!((g.len(), r.len(), a.len()), (2, 6, 6));
        assert_eq!(g[0].spec.args[4], "127.0.0.1:7400");
        assert_eq!(r[2].spec.args[8], "127.0.0.1:7510");
        assert!(a[0].spec.args.contains(&"--simulate".to_string()));
        assert_eq!(crate::client::DEFAULT_ENDPOINT, "http://127.0.0.1:7400");
    }

    #[test]
    fn the_otlp_endpoint_flag_is_parsed_for_the_children() {
        let args = Wrap::parse_from(["x", "--otlp-endpoint", "http://127.0.0.1:4317"]).dev;
        assert_eq!(
            args.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
    }

    #[test]
    fn ports_that_do_not_fit_are_a_usage_error() {
        let args = Wrap::parse_from(["x", "--base-port", "65500"]).dev;
        assert!(matches!(
            plan(&args, Path::new("/d")),
            Err(CliError::Usage(_))
        ));
    }
}
