//! The `meridian` command: parses the command line and hands off to the
//! library crates. No scheduling logic lives here.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Hierarchical multi-region federation scheduler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole federation on this machine with embedded SQLite stores.
    Dev(meridian_cli::DevArgs),
    /// Submit, inspect, follow and cancel jobs.
    Job(meridian_cli::JobArgs),
    /// Create, list, pause, resume and delete schedules of periodic jobs.
    Schedule(meridian_cli::ScheduleArgs),
    /// Usage per tenant and region over a time range: CPU, memory and GPU
    /// seconds, tasks run, wait percentiles.
    Usage(meridian_cli::UsageArgs),
    /// List and drain regions.
    Region(meridian_cli::RegionArgs),
    /// List, cordon and drain nodes.
    Node(meridian_cli::NodeArgs),
    /// Create, list and revoke bearer tokens (admin).
    Token(meridian_cli::token::TokenArgs),
    /// List the audit log of mutating calls and refusals (admin).
    Audit(meridian_cli::audit::AuditArgs),
    /// Print a shell completion script: `meridian completions bash > ...`.
    Completions {
        /// The shell.
        shell: meridian_cli::Shell,
    },
    /// Run a node agent: register with a region, pull assignments, run tasks.
    Agent(AgentArgs),
    /// Run one replica of a region scheduler (shards, placement, agent API).
    Regional(RegionalArgs),
    /// Run a replica of the global tier (federation API, routing, region links).
    Global(GlobalArgs),
    /// Load-test a federation: submit, e2e, placement, scale, failover, herd.
    Load(meridian_load::LoadArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Servers may export spans (--otlp-endpoint); client commands only log.
    let (service, otlp) = match &cli.command {
        Command::Dev(a) => ("meridian-dev", a.telemetry.otlp_endpoint.as_deref()),
        Command::Agent(a) => ("meridian-agent", a.telemetry.otlp_endpoint.as_deref()),
        Command::Regional(a) => ("meridian-regional", a.telemetry.otlp_endpoint.as_deref()),
        Command::Global(a) => ("meridian-global", a.telemetry.otlp_endpoint.as_deref()),
        _ => ("meridian", None),
    };
    let telemetry = meridian_cli::telemetry::init(service, otlp).context("setting up telemetry")?;
    let result = dispatch(cli.command).await;
    telemetry.shutdown().await;
    result
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => meridian_cli::finish(meridian_cli::dev::run(args).await),
        Command::Job(args) => meridian_cli::finish(meridian_cli::job::run(args).await),
        Command::Schedule(args) => meridian_cli::finish(meridian_cli::schedule::run(args).await),
        Command::Usage(args) => meridian_cli::finish(meridian_cli::usage::run(args).await),
        Command::Region(args) => meridian_cli::finish(meridian_cli::admin::region(args).await),
        Command::Node(args) => meridian_cli::finish(meridian_cli::admin::node(args).await),
        Command::Token(args) => meridian_cli::finish(meridian_cli::token::run(args).await),
        Command::Audit(args) => meridian_cli::finish(meridian_cli::audit::run(args).await),
        Command::Completions { shell } => {
            meridian_cli::completions(shell, <Cli as clap::CommandFactory>::command());
            Ok(())
        }
        Command::Agent(args) => agent(args).await,
        Command::Regional(args) => regional(args).await,
        Command::Global(args) => global(args).await,
        Command::Load(args) => meridian_load::run(args)
            .await
            .map(|_| ())
            .context("load run failed"),
    }
}

/// Arguments of `meridian agent`.
#[derive(clap::Args)]
struct AgentArgs {
    /// Region scheduler replica endpoints, comma-separated, e.g.
    /// `http://127.0.0.1:7500,http://127.0.0.1:7501`: the agent moves to the
    /// next when one is unreachable and follows each shard leader's hint.
    #[arg(long)]
    region: String,
    /// Node id, stable across restarts (with --simulate: the prefix of the ids).
    #[arg(long)]
    node_id: String,
    /// CPU cores offered to tasks.
    #[arg(long, default_value_t = 1.0)]
    cpu: f64,
    /// Memory offered to tasks, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    memory: u64,
    /// GPUs offered to tasks.
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// Node labels, `k=v,k2=v2`.
    #[arg(long, default_value = "")]
    labels: String,
    /// Where task output and the agent's state file live.
    #[arg(long, default_value = "data/agent")]
    work_dir: PathBuf,
    /// Host this many simulated nodes instead of one real node.
    #[arg(long)]
    simulate: Option<usize>,
    /// Seed of the agent's random choices (backoff, heartbeat jitter).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prometheus `/metrics` listen address; none when omitted.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Where a real node serves its tasks' live output to the region
    /// (`meridian job logs -f`). The default port 0 picks a free one;
    /// `none` serves nothing.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR|none")]
    logs_listen: String,
    /// Endpoint the region dials for live output, when the listen address
    /// is not how the region reaches this machine (e.g.
    /// `http://node7.example:7600`); default: `http://` and the address
    /// bound.
    #[arg(long, default_value = "", value_name = "URL")]
    logs_advertise: String,
    /// User tasks run as. Default: `nobody` when the agent runs as root,
    /// else the agent's own user (a non-root agent cannot switch users).
    #[arg(long, value_name = "USER", conflicts_with = "run_as_root")]
    run_as: Option<String>,
    /// DANGEROUS: run tasks as root (the agent's own user) when the agent
    /// runs as root; any task can then take over the node.
    #[arg(long)]
    run_as_root: bool,
    /// Most processes and threads one task may have (its cgroup's pids.max).
    #[arg(long, default_value_t = meridian_agent::exec::isolation::DEFAULT_PIDS_LIMIT)]
    pids_limit: u64,
    /// Refuse to start unless every task can get its own cgroup (memory,
    /// CPU and pids limits); without it the agent warns and runs tasks
    /// without limits.
    #[arg(long)]
    require_cgroups: bool,
    /// Cgroup (a path inside the hierarchy, e.g. `/meridian.slice`) under
    /// which the agent makes its tasks' cgroups; default: its own cgroup.
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<String>,
    /// How long a finished task's directory on this node (its output files
    /// and scratch space) is kept after its last write (`24h`, `3d`).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    attempt_retention: std::time::Duration,
    #[command(flatten)]
    tls: meridian_cli::tls::ServerTlsArgs,
    #[command(flatten)]
    telemetry: meridian_cli::TelemetryArgs,
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let labels = meridian_agent::parse_labels(&args.labels).context("parsing --labels")?;
    let security = args.tls.security("meridian agent")?;
    if let Some(addr) = args.metrics_listen {
        // Serves until the process ends.
        let bound = meridian_agent::metrics::serve(addr, std::future::pending())
            .await
            .context("serving --metrics-listen")?;
        println!("meridian agent: metrics on http://{bound}/metrics");
    }
    let cmd = meridian_agent::AgentCommand {
        region: args.region,
        node_id: args.node_id,
        cpu: args.cpu,
        memory_bytes: args.memory,
        gpus: args.gpus,
        labels,
        work_dir: args.work_dir,
        simulate: args.simulate,
        seed: args.seed,
        logs_listen: match args.logs_listen.as_str() {
            "none" => None,
            addr => Some(
                addr.parse()
                    .with_context(|| format!("--logs-listen {addr:?} is not ADDR:PORT or none"))?,
            ),
        },
        logs_advertise: args.logs_advertise,
        security,
        attempt_retention: args.attempt_retention,
        isolation: meridian_agent::exec::isolation::IsolationOptions {
            run_as: match (args.run_as, args.run_as_root) {
                (_, true) => meridian_agent::exec::isolation::RunAs::AgentUser,
                (Some(user), false) => meridian_agent::exec::isolation::RunAs::User(user),
                (None, false) => meridian_agent::exec::isolation::RunAs::Default,
            },
            cgroups: true,
            require_cgroups: args.require_cgroups,
            pids_limit: args.pids_limit,
            cgroup_parent: args.cgroup_parent,
        },
    };
    // SIGTERM as well as SIGINT: `meridian dev`, service managers and
    // orchestrators stop a process with SIGTERM, and an agent killed
    // without its shutdown leaves its task cgroups behind.
    meridian_agent::run_agent(cmd, stop_signal())
        .await
        .context("node agent failed")
}

/// Arguments of `meridian global`.
#[derive(clap::Args)]
struct GlobalArgs {
    /// Store URL: `sqlite:PATH` (replicas may share one file) or `fdb:CLUSTER_FILE`.
    #[arg(long)]
    store: String,
    /// gRPC listen address (port 0 picks a free port; the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: std::net::SocketAddr,
    /// HTTP/JSON listen address (with /metrics); none when omitted.
    #[arg(long)]
    http: Option<std::net::SocketAddr>,
    /// Stable name of this replica.
    #[arg(long, default_value = "global")]
    name: String,
    /// How long job and assignment events are kept before the leader trims
    /// them (`7d`, `36h`, `1h30m`, `90s`); a watch resuming from a trimmed
    /// cursor gets OUT_OF_RANGE and re-lists.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    event_retention: std::time::Duration,
    /// How long a finished job is kept before the leader removes it with
    /// its tasks and request record (`7d`, `36h`); `meridian job get` of a
    /// removed job says it finished and was removed.
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    job_retention: std::time::Duration,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    tls: meridian_cli::tls::ServerTlsArgs,
    #[command(flatten)]
    telemetry: meridian_cli::TelemetryArgs,
}

/// Authentication, tenant limits and audit of `meridian global`
/// (docs/security.md).
#[derive(clap::Args)]
struct AccessArgs {
    /// Serve without authentication: every caller acts as an admin. For
    /// tests and trusted networks only; a warning is logged.
    #[arg(
        long,
        env = "MERIDIAN_NO_AUTH",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    no_auth: bool,
    /// A file holding a token (`mrd_...`, first line) stored as an admin
    /// token at start unless its id is stored already: how a new deployment
    /// gets its first admin (`meridian token generate` prints one).
    #[arg(long)]
    bootstrap_token_file: Option<std::path::PathBuf>,
    /// Sustained submits per second per tenant (0: no rate limit).
    #[arg(long, default_value_t = 10_000.0)]
    tenant_submit_rate: f64,
    /// Submits a tenant may make at once.
    #[arg(long, default_value_t = 20_000)]
    tenant_submit_burst: u32,
    /// Most queued (unfinished) jobs per tenant (0: no cap).
    #[arg(long, default_value_t = 100_000)]
    tenant_max_queued: u64,
    /// How long audit records are kept (`90d`, `36h`).
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    audit_retention: std::time::Duration,
}

/// Resolves on the first SIGINT or SIGTERM: a server's or an agent's cue to
/// shut down gracefully. Never resolves when the handlers cannot be
/// installed (the process then runs until killed).
async fn stop_signal() {
    if meridian_cli::dev::stop_signal().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A duration longer than zero written as numbers with units, humantime
/// style: `7d`, `36h`, `1h30m`, `90s`, `250ms` (units `ms`, `s`, `m`, `h`,
/// `d`, `w`; spaces between parts allowed).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?}: expected a duration such as 7d, 36h, 1h30m or 90s");
    let mut rest = text.trim();
    let mut ms: u64 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(bad()),
        };
        rest = rest[unit_len..].trim_start();
        ms = n
            .checked_mul(unit)
            .and_then(|part| ms.checked_add(part))
            .ok_or_else(bad)?;
    }
    if ms == 0 {
        return Err(format!("{text:?}: must be longer than zero"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

async fn global(args: GlobalArgs) -> anyhow::Result<()> {
    let mut config = meridian_global::GlobalConfig::new(args.store, args.listen);
    config.security = args.tls.security("meridian global")?;
    let http_scheme = config.security.scheme();
    config.http = args.http;
    config.name = args.name;
    config.event_retention = args.event_retention;
    config.job_retention = args.job_retention;
    config.auth_enabled = !args.access.no_auth;
    if let Some(path) = &args.access.bootstrap_token_file {
        let token = meridian_cli::auth::read_token_file(path)
            .map_err(|e| anyhow::anyhow!("--bootstrap-token-file: {e}"))?;
        config.bootstrap_token = Some(meridian_global::auth::Secret(token));
    }
    config.tenant_limits = meridian_global::limits::TenantLimits {
        submits_per_sec: args.access.tenant_submit_rate,
        burst: args.access.tenant_submit_burst,
        max_queued: args.access.tenant_max_queued,
    };
    config.audit_retention = args.access.audit_retention;
    let on_ready = |grpc: std::net::SocketAddr, http: Option<std::net::SocketAddr>| {
        let http = http
            .map(|a| format!(" http={http_scheme}://{a}"))
            .unwrap_or_default();
        println!("meridian global: serving grpc={http_scheme}://{grpc}{http}");
    };
    meridian_global::run(config, on_ready, stop_signal())
        .await
        .context("global replica failed")
}

/// Arguments of `meridian regional`.
#[derive(clap::Args)]
struct RegionalArgs {
    /// Region name.
    #[arg(long)]
    region: String,
    /// Global tier endpoint, e.g. `http://127.0.0.1:7400`; omit to run the
    /// region standalone.
    #[arg(long)]
    global: Option<String>,
    /// Region store URL (`sqlite:PATH` shared by the region's replicas).
    #[arg(long)]
    store: String,
    /// gRPC listen address (AgentLink, RegionAdmin).
    #[arg(long, default_value = "127.0.0.1:7500")]
    listen: std::net::SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Number of shards the region's nodes are split into.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Stable replica name (default: region and process id).
    #[arg(long)]
    replica: Option<String>,
    /// Shard lease duration in milliseconds.
    #[arg(long, default_value_t = 1000)]
    shard_lease_ms: u64,
    /// Heartbeats late by this much make a node suspect, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    node_timeout_ms: u64,
    /// Further grace before a suspect node is declared dead, in milliseconds.
    #[arg(long, default_value_t = 10000)]
    node_grace_ms: u64,
    /// Heartbeats per second the region accepts at most: past that many
    /// nodes per second of base interval, nodes are told to beat more
    /// slowly (up to every 10 s) and are judged against that pace.
    #[arg(long, default_value_t = 500)]
    max_heartbeats_per_second: u32,
    /// Seed of the replica's random choices (jitter, backoff).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How long the tombstone of a finished job the region forgot (and its
    /// tasks' captured output) is kept (`8d`, `36h`). Must be longer than
    /// the global tier's `--event-retention`, the longest a replayed
    /// assignment can arrive.
    #[arg(long, default_value = "8d", value_parser = parse_duration)]
    tombstone_retention: std::time::Duration,
    #[command(flatten)]
    tls: meridian_cli::tls::ServerTlsArgs,
    #[command(flatten)]
    telemetry: meridian_cli::TelemetryArgs,
}

async fn regional(args: RegionalArgs) -> anyhow::Result<()> {
    use std::time::Duration;
    let mut config =
        meridian_regional::server::Config::new(&args.region, &args.store, args.listen, args.shards);
    config.global = args.global;
    config.metrics_listen = args.metrics_listen;
    if let Some(replica) = args.replica {
        config.replica = replica;
    }
    config.shard_lease = Duration::from_millis(args.shard_lease_ms);
    config.node_timeout = Duration::from_millis(args.node_timeout_ms);
    config.node_grace = Duration::from_millis(args.node_grace_ms);
    config.max_heartbeats_per_second = args.max_heartbeats_per_second;
    config.seed = args.seed;
    config.tombstone_retention = args.tombstone_retention;
    config.security = args.tls.security("meridian regional")?;
    meridian_regional::server::run(config, stop_signal())
        .await
        .context("region scheduler failed")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations_parse_with_units_and_combined_parts_and_zero_is_refused() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("36h"), Ok(Duration::from_secs(36 * 3_600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("7 parsecs").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999w").is_err());
    }
}
