//! meridian-load: the load-test suite behind `meridian load <scenario>`.
//!
//! Owns the scenarios (`submit`, `e2e`, `placement`, `scale`, `failover`,
//! `herd`, `real`, `history`, `array`), each seeded, bounded in time and on loopback
//! only, against a federation given by `--endpoint` or one it starts itself
//! as real processes (`placement` and `history` run their tier in process,
//! over a store they fill themselves); their measurements and their
//! reports (JSON, markdown, SVG in `docs/bench/`); and `--compare-insecure`,
//! one scenario run with TLS and tokens and `--insecure` in alternating
//! pairs ([`compare`]). `--quick` makes every
//! scenario small enough for CI and turns only invariant violations
//! (docs/architecture.md, invariants) into a failure, never a timing. Must never: hold scheduling logic, or fail a run because
//! it was slow.

pub mod client;
pub mod compare;
pub mod cost;
pub mod error;
pub mod federation;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod scrape;
pub mod stats;
pub mod watch;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

pub use error::{LoadError, Result};
pub use report::Report;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Unary and batched submit throughput and latency through gRPC.
    Submit,
    /// Submit -> running latency at a fixed offered rate (open loop).
    E2e,
    /// Durable bindings/s of one region with 10,000 nodes.
    Placement,
    /// 100,000 simulated nodes across 10 regions with steady job churn.
    Scale,
    /// Kills leaders at intervals; recovery time and duplicate placements.
    Failover,
    /// Mass reconnect of simulated agents after an outage of their region.
    Herd,
    /// Real processes on real agents: one job of many tasks, then as many
    /// one-task jobs in batched calls; time until all finished.
    Real,
    /// Submit and ListJobs against a global store of many finished jobs
    /// and an empty one, in the same run.
    History,
    /// One array job of 100,000 simulated tasks with a parallelism of
    /// 1,000: the cap from the region's records, `meridian job get` timed.
    Array,
}

impl Scenario {
    /// Its name on the command line and in report file names.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Submit => "submit",
            Scenario::E2e => "e2e",
            Scenario::Placement => "placement",
            Scenario::Scale => "scale",
            Scenario::Failover => "failover",
            Scenario::Herd => "herd",
            Scenario::Real => "real",
            Scenario::History => "history",
            Scenario::Array => "array",
        }
    }
}

/// Flags of `meridian load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Which scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Seed of every random choice of the run (request ids, samples).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds of load (each phase of `submit`); the scenario's default
    /// when omitted.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Small and short (under a minute): for CI. Fails only on an
    /// invariant violation.
    #[arg(long)]
    pub quick: bool,
    /// Global tier endpoint(s) of a running federation, comma-separated;
    /// without it the scenario starts its own on loopback.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// TLS material for `--endpoint` (the federation a run starts has its
    /// own: `meridian dev`'s PKI, and a certificate of its own for load).
    /// `--insecure` starts the federation as `meridian dev --insecure` does
    /// (plain text, the global tier without auth; load presents no token),
    /// or dials `--endpoint` in plain text.
    #[command(flatten)]
    pub tls: meridian_cli::tls::ClientTlsArgs,
    /// Run the scenario `--pairs` times with mutual TLS and tokens and as
    /// many times `--insecure`, alternating pair by pair (tls+auth then
    /// insecure, insecure then tls+auth, ...), each run with a federation
    /// of its own; writes `load-<scenario>-vs-insecure.md` and `.json`
    /// with both modes' figures and their ratio per pair and median.
    #[arg(long, conflicts_with_all = ["endpoint", "insecure"])]
    pub compare_insecure: bool,
    /// Pairs of runs of `--compare-insecure` (default 3).
    #[arg(long, requires = "compare_insecure", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub pairs: Option<u32>,
    /// Offered rate, jobs/s (e2e, scale, failover).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Simulated nodes per region (placement: nodes of the region).
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Concurrent submitters (submit, history).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Finished jobs written into the global store before measuring
    /// (history; default 1,000,000, 20,000 with --quick).
    #[arg(long)]
    pub finished_jobs: Option<u64>,
    /// Long-running tasks bound in the region before the first kill
    /// (failover), in jobs of 1,000 tasks; the array job's tasks (array,
    /// default 100,000).
    #[arg(long)]
    pub tasks: Option<u64>,
    /// Where the report goes (`load-<scenario>.md`, `.json`, `.svg`); default
    /// `docs/bench` for a full run, none for `--quick`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the started federation's data directory (stores and every
    /// process's log) after the run, and print where it is.
    #[arg(long)]
    pub keep_data: bool,
}

/// What a scenario gets from the command line.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The flags.
    pub args: LoadArgs,
    /// The exact command, for the report.
    pub command: String,
}

impl Ctx {
    /// `--duration` or `default` (quick, full) seconds.
    pub fn duration(&self, quick: u64, full: u64) -> Duration {
        Duration::from_secs(self.args.duration.unwrap_or(if self.args.quick {
            quick
        } else {
            full
        }))
    }

    /// `v` unless quick, then `q`.
    pub fn pick<T>(&self, q: T, v: T) -> T {
        if self.args.quick { q } else { v }
    }

    /// How a federation this run starts is secured: `--insecure` or not.
    pub fn security(&self) -> federation::Security {
        if self.args.tls.insecure {
            federation::Security::Insecure
        } else {
            federation::Security::TlsAuth
        }
    }

    /// What the report says of the run's security: the started
    /// federation's mode, how `--endpoint` was dialed, or `in-process` for
    /// the scenarios that run their tier inside this process.
    pub fn security_label(&self) -> &'static str {
        match (self.args.scenario, &self.args.endpoint) {
            (Scenario::Placement | Scenario::History, _) => "in-process",
            (_, Some(_)) if self.args.tls.insecure => "endpoint, plain text",
            (_, Some(_)) => "endpoint, tls",
            (_, None) => self.security().name(),
        }
    }

    /// A new report of this run.
    pub fn report(&self, summary: &str) -> Report {
        let mut report = Report::new(
            self.args.scenario.name(),
            summary,
            self.args.quick,
            self.args.seed,
            &self.command,
        );
        report.security = self.security_label().to_string();
        report
    }

    /// A progress bar of `len` steps, hidden when stderr is not a terminal.
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        let bar = if std::io::stderr().is_terminal() {
            indicatif::ProgressBar::new(len)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar
    }
}

/// Runs the scenario, writes its report and prints a summary; an invariant
/// violation is returned as [`LoadError::Invariant`] after the report is
/// written. With `--compare-insecure`, runs it in both security modes and
/// writes the comparison instead ([`compare`]); the last run's report is
/// returned.
pub async fn run(args: LoadArgs) -> Result<Report> {
    let command = std::iter::once("meridian".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let ctx = Ctx {
        args: args.clone(),
        command,
    };
    if args.compare_insecure {
        return compare::run(&ctx).await;
    }
    let report = run_once(&ctx).await?;
    let out = out_dir(&args);
    if let Some(dir) = out {
        report.write(&dir)?;
        println!(
            "meridian load: report in {}",
            dir.join(format!("{}.md", report.stem())).display()
        );
    }
    for t in &report.targets {
        println!(
            "meridian load {}: {}: {} (target {}{})",
            report.scenario,
            t.name,
            t.measured,
            t.target,
            if t.met { "" } else { ", missed" }
        );
    }
    println!(
        "meridian load {} ({}): results {}",
        report.scenario,
        report.security,
        serde_json::to_string(&report.results).unwrap_or_default()
    );
    if report.violations.is_empty() {
        println!("meridian load {}: no invariant violated", report.scenario);
        Ok(report)
    } else {
        Err(LoadError::Invariant(report.violations.clone()))
    }
}

/// Where reports go: `--out`, else `docs/bench` for a full run, else
/// nowhere.
fn out_dir(args: &LoadArgs) -> Option<PathBuf> {
    args.out
        .clone()
        .or_else(|| (!args.quick).then(|| PathBuf::from("docs/bench")))
}

/// Runs the scenario once and returns its report, violations included.
async fn run_once(ctx: &Ctx) -> Result<Report> {
    match ctx.args.scenario {
        Scenario::Submit => scenario::submit::run(ctx).await,
        Scenario::E2e => scenario::e2e::run(ctx).await,
        Scenario::Placement => scenario::placement::run(ctx).await,
        Scenario::Scale => scenario::scale::run(ctx).await,
        Scenario::Failover => scenario::failover::run(ctx).await,
        Scenario::Herd => scenario::herd::run(ctx).await,
        Scenario::Real => scenario::real::run(ctx).await,
        Scenario::History => scenario::history::run(ctx).await,
        Scenario::Array => scenario::array::run(ctx).await,
    }
}
