//! `meridian dev`: a whole federation on this machine.
//!
//! Owns the flags of a development federation and its deterministic ports
//! (so restarts find everything where it was), starting the [`plan`] tier
//! by tier with [`child::start_in_order`] (each child is waited for by the
//! line it prints once serving), printing the endpoints, and stopping it on
//! SIGINT/SIGTERM (agents, then regions, then the global tier). Every part
//! runs as a separate OS process of this same binary; the load suite starts
//! its federations from the same plan.
//! Must never hold scheduling logic, and never wait for a child by sleeping.

pub mod child;
pub mod line;
pub mod pki;
pub mod plan;
pub mod token;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{CliError, Result};
use plan::{Layout, Listen, Plan, Process};

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
    /// Run every link in plain text, with no certificates: anyone who
    /// reaches a port can act as any tier. Prints a warning.
    #[arg(long, env = "MERIDIAN_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    /// Span export, handed on to every child.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
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

/// The federation `meridian dev` runs: the global tier serves gRPC from
/// the base port and HTTP from +80, region `r`'s replica `i` gRPC from
/// +100+10r+i and metrics from +200+10r+i.
fn dev_plan(a: &DevArgs, data: &Path) -> Result<Plan> {
    let layout = Layout {
        global_replicas: a.global_replicas,
        regions: (0..a.regions).map(region_name).collect(),
        region_replicas: a.region_replicas,
        shards: a.shards,
        simulated_nodes: a.simulated_nodes,
        real_agents: a.real_agents,
        shard_lease_ms: None,
    };
    plan::plan(&layout, data, |listen| {
        let offset = match listen {
            Listen::GlobalGrpc { replica } => replica,
            Listen::GlobalHttp { replica } => 80 + replica,
            Listen::RegionGrpc { region, replica } => 100 + 10 * region + replica,
            Listen::RegionMetrics { region, replica } => 200 + 10 * region + replica,
        };
        Ok(addr(port(a.base_port, offset)?))
    })
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

/// Starts a tier's children in order, printing where each is once it is up.
async fn start_tier(
    exe: &Path,
    tier: &[Process],
    grace: Duration,
    simulated_nodes: u32,
    http_scheme: &str,
) -> (Tier, Result<()>) {
    let (stop, stop_rx) = watch::channel(false);
    let specs = tier.iter().map(|p| &p.spec);
    let (tasks, outcome) = child::start_in_order(exe, specs, grace, &stop_rx, |spec| {
        if let Some(p) = tier.iter().find(|p| p.spec.name == spec.name) {
            println!("meridian dev: {}", p.summary(simulated_nodes, http_scheme));
        }
    })
    .await;
    (Tier { stop, tasks }, outcome)
}

/// Resolves on SIGINT or SIGTERM, naming which; an error when a handler
/// cannot be installed.
pub async fn stop_signal() -> Result<&'static str> {
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
    let mut plan = dev_plan(&args, &data)?;
    let tls = pki::apply(&data, &mut plan, args.insecure)?;
    // After the PKI: an insecure plan's global replicas run without auth.
    let token = token::apply(&data, &mut plan)?;
    if let Some(endpoint) = &args.telemetry.otlp_endpoint {
        for p in plan.processes_mut() {
            p.spec.args.extend(line::otlp_endpoint(endpoint));
        }
    }
    let grace = Duration::from_secs(args.grace_secs);
    // Installed before anything starts, so an early Ctrl-C is not lost.
    let signal = stop_signal();
    tokio::pin!(signal);
    println!("meridian dev: data in {}", data.display());
    match &tls.ca {
        Some(ca) => {
            println!(
                "meridian dev: mutual TLS on every link; CA and certificates in {}",
                pki::pki_dir(&data).display()
            );
            println!(
                "meridian dev: the CLI reads {} from this directory (elsewhere: MERIDIAN_CONFIG={0} or MERIDIAN_DATA_DIR={})",
                tls.client_config.display(),
                data.display()
            );
            println!(
                "meridian dev: consoles are https: trust {} in your browser (or accept its warning once), then sign in with a token (the admin token below, or one from `meridian token create`)",
                ca.display()
            );
        }
        None => {
            eprintln!(
                "meridian dev: WARNING: --insecure: every link is plain text and unauthenticated; anyone who reaches a port can act as any tier"
            );
        }
    }
    println!(
        "meridian dev: admin token in {} (the CLI reads it from there; elsewhere set MERIDIAN_TOKEN)",
        token.display()
    );

    let mut running: Vec<Tier> = Vec::new();
    let mut failure = None;
    let mut interrupted = false;
    for tier in plan.tiers() {
        let scheme = if args.insecure { "http" } else { "https" };
        let start = start_tier(&exe, tier, grace, args.simulated_nodes, scheme);
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
        println!("meridian dev: logs in {}", data.join("logs").display());
        println!(
            "meridian dev: ready: MERIDIAN_ENDPOINT={} (try: meridian job submit --wait -- echo hello; Ctrl-C stops everything)",
            plan.global_endpoints()
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
        let plan = dev_plan(&args, Path::new("/d")).expect("plan");
        let [g, r, a] = plan.tiers();
        assert_eq!((g.len(), r.len(), a.len()), (2, 6, 6));
        assert_eq!(g[0].spec.args[4], "127.0.0.1:7400");
        assert_eq!(r[2].spec.args[8], "127.0.0.1:7510");
        assert!(a[0].spec.args.contains(&"--simulate".to_string()));
        assert_eq!(
            plan.global_endpoints(),
            "http://127.0.0.1:7400,http://127.0.0.1:7401"
        );
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
            dev_plan(&args, Path::new("/d")),
            Err(CliError::Usage(_))
        ));
    }
}
