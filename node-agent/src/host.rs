//! A host: the process that carries one real node or N simulated ones.
//!
//! Owns building the nodes (identity, seeds, executor, channels), the
//! previous-boot cleanup of a real node, and the `meridian agent` entry
//! point. Simulated nodes share an executor and multiplex their streams over
//! a pool of HTTP/2 connections (`nodes_per_connection` each), so the cost
//! of a node is one task, one stream and its small state.
//!
//! Must never contain protocol logic (that is [`crate::node`]) or parse a
//! command line (the binary does).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::{SharedClock, SystemClock};
use meridian_proto::v1::{Resources, TaskReport, TaskState};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{AgentOptions, NodeSpec};
use crate::error::AgentError;
use crate::exec::Executor;
use crate::exec::isolation::{Isolation, IsolationOptions, scope_name};
use crate::exec::live::LiveLogs;
use crate::exec::process::{Cleanup, ProcessExecutor, cleanup_previous};
use crate::exec::retention::{self, InUse};
use crate::exec::simulated::SimulatedExecutor;
use crate::link::{ChannelPool, RegionLink, parse_endpoints};
use crate::logs::LogServer;
use crate::node::{NodeAgent, NodeContext, report};
use crate::persist::{PersistedEnd, StateFile};
use crate::probe::Probe;

/// What `meridian agent` was asked to do.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    /// Region replica endpoints, comma-separated, e.g.
    /// `http://127.0.0.1:7500,http://127.0.0.1:7501`.
    pub region: String,
    pub node_id: String,
    /// CPU cores offered (fractions allowed).
    pub cpu: f64,
    /// Memory offered, in bytes.
    pub memory_bytes: u64,
    pub gpus: u32,
    pub labels: BTreeMap<String, String>,
    pub work_dir: PathBuf,
    /// Host this many simulated nodes instead of one real node.
    pub simulate: Option<usize>,
    pub seed: u64,
    /// Task user and cgroups of a real node.
    pub isolation: IsolationOptions,
    /// Where a real node serves its tasks' live output; `None`: nowhere.
    pub logs_listen: Option<std::net::SocketAddr>,
    /// Endpoint advertised for it; empty: `http://` and the bound address.
    pub logs_advertise: String,
    /// TLS material, or plain text (`--insecure`).
    pub security: meridian_control::tls::Security,
    /// How long a finished attempt's directory stays after its last write.
    pub attempt_retention: Duration,
}

/// Running nodes of one process.
pub struct Host {
    nodes: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    probe: Arc<Probe>,
    /// A real node's task isolation (its cgroup scope goes at shutdown).
    isolation: Option<Arc<Isolation>>,
}

impl Host {
    /// Starts `count` simulated nodes named `{base.node_id}-{i:06}` against
    /// `region`, all sharing `clock` and `probe`. Each advertises the label
    /// `meridian.io/simulated=true` ([`crate::config::SIMULATED_LABEL`]).
    pub fn simulated(
        region: &str,
        base: &NodeSpec,
        count: usize,
        opts: AgentOptions,
        clock: SharedClock,
        probe: Arc<Probe>,
    ) -> Result<Host, AgentError> {
        let executor: Arc<dyn Executor> = Arc::new(SimulatedExecutor::new(
            clock.clone(),
            Some(Duration::from_secs(1)),
        ));
        Host::simulated_with(region, base, count, opts, clock, probe, executor)
    }

    /// [`Host::simulated`] on a given executor: the simulation wraps the
    /// simulated executor to record every task start and stop.
    pub fn simulated_with(
        region: &str,
        base: &NodeSpec,
        count: usize,
        opts: AgentOptions,
        clock: SharedClock,
        probe: Arc<Probe>,
        executor: Arc<dyn Executor>,
    ) -> Result<Host, AgentError> {
        opts.validate()?;
        let opts = Arc::new(AgentOptions {
            work_dir: None,
            ..opts
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let host_boot = meridian_control::entropy::uuid_v4();
        let endpoints = parse_endpoints(region)?;
        let pool = Arc::new(ChannelPool::secured(opts.security.clone()));
        let mut nodes = JoinSet::new();
        for i in 0..count {
            // Spread over the given replicas; each node then follows its
            // shard leader's hint.
            let seed = opts
                .seed
                .wrapping_add((i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let link = RegionLink::new(endpoints.clone(), i, pool.clone(), opts.reconnect, seed)?;
            let spec = base.simulated(i);
            let boot_id =
                uuid::Uuid::from_u64_pair(host_boot.as_u64_pair().0, i as u64).to_string();
            let node = NodeAgent::new(
                NodeContext {
                    spec,
                    opts: opts.clone(),
                    clock: clock.clone(),
                    executor: executor.clone(),
                    link,
                    probe: probe.clone(),
                    shutdown: shutdown_rx.clone(),
                    seed,
                    state_file: None,
                },
                boot_id,
            )?;
            nodes.spawn(node.run());
        }
        Ok(Host {
            nodes,
            shutdown,
            probe,
            isolation: None,
        })
    }

    /// Starts one real node that runs processes, after cleaning up what a
    /// previous boot left in `opts.work_dir`.
    pub async fn real(
        region: &str,
        spec: NodeSpec,
        opts: AgentOptions,
        clock: SharedClock,
        probe: Arc<Probe>,
    ) -> Result<Host, AgentError> {
        opts.validate()?;
        spec.check_real()?;
        let work_dir = opts
            .work_dir
            .clone()
            .ok_or_else(|| AgentError::Config("a real node needs a work dir".into()))?;
        std::fs::create_dir_all(&work_dir).map_err(|e| AgentError::io("creating", &work_dir, e))?;
        let state_file = StateFile::in_dir(&work_dir);
        let previous = state_file.load()?;
        let isolation = Arc::new(Isolation::setup(
            &opts.isolation,
            &scope_name(&spec.node_id, &work_dir),
        )?);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let live = Arc::new(LiveLogs::default());
        let mut opts = opts;
        if let Some(addr) = opts.logs_listen {
            let bound = LogServer::new(live.clone(), spec.node_id.clone())
                .serve(addr, &opts.security, shutdown_rx.clone())
                .await?;
            if opts.logs_endpoint.is_empty() {
                opts.logs_endpoint = format!("http://{bound}");
            }
            tracing::info!(endpoint = %opts.logs_endpoint, "serving live task output");
        }
        let opts = Arc::new(opts);
        let processes = ProcessExecutor::new(
            clock.clone(),
            opts.output_file_cap,
            opts.enforce_memory_limit,
            opts.cpu_time_limit,
            isolation.clone(),
        )
        .with_live_logs(live);
        tokio::spawn(expire_attempts(
            work_dir.join("tasks"),
            opts.attempt_retention,
            processes.in_use(),
            clock.clone(),
            probe.clone(),
            shutdown_rx.clone(),
        ));
        let executor: Arc<dyn Executor> = Arc::new(processes);
        let mut node = NodeAgent::new(
            NodeContext {
                spec,
                opts: opts.clone(),
                clock: clock.clone(),
                executor,
                link: RegionLink::new(
                    parse_endpoints(region)?,
                    0,
                    Arc::new(ChannelPool::secured(opts.security.clone())),
                    opts.reconnect,
                    opts.seed,
                )?,
                probe: probe.clone(),
                shutdown: shutdown_rx,
                seed: opts.seed,
                state_file: Some(state_file),
            },
            meridian_control::entropy::uuid_v4().to_string(),
        )?;
        if let Some(prev) = previous {
            let mut reports = Vec::new();
            for t in &prev.tasks {
                let outcome = match t.process {
                    Some(ids) => cleanup_previous(ids, opts.default_grace, &clock).await,
                    None => Cleanup::AlreadyGone,
                };
                tracing::warn!(
                    task = ?t.attempt(), previous_boot = %prev.boot_id, ?outcome,
                    "attempt of the previous agent boot cleaned up; reporting it LOST"
                );
                let mut r = report(
                    &t.attempt(),
                    TaskState::Lost,
                    t.started_at_unix_ms,
                    clock.now_unix_ms(),
                    format!(
                        "agent restarted (previous boot {}): attempt cleaned up ({outcome:?})",
                        prev.boot_id
                    ),
                );
                r.finished_at_unix_ms = r.observed_at_unix_ms;
                reports.push(r);
            }
            // Ends the previous boot could not deliver go first: each names
            // the epoch its attempt ran under, so the region can still apply
            // it after this boot registers under a new one.
            let ends: Vec<TaskReport> = prev.ends.iter().map(PersistedEnd::report).collect();
            if !ends.is_empty() {
                tracing::info!(ends = ends.len(), previous_boot = %prev.boot_id, "delivering ends of the previous boot");
            }
            node.restore_shard_epochs(prev.shard_epochs);
            node.queue_reports(ends);
            node.queue_reports(reports);
        }
        if let Some(cgroups) = &isolation.cgroups {
            // After the graceful cleanup above: what is still in a task
            // cgroup of this agent escaped its process group.
            let removed = cgroups.clean_leftovers().await;
            if removed > 0 {
                tracing::warn!(
                    removed,
                    "task cgroups of a previous boot emptied and removed"
                );
            }
        }
        let mut nodes = JoinSet::new();
        nodes.spawn(node.run());
        Ok(Host {
            nodes,
            shutdown,
            probe,
            isolation: Some(isolation),
        })
    }

    pub fn probe(&self) -> &Arc<Probe> {
        &self.probe
    }

    /// The task isolation of a real node (`None` for simulated nodes).
    pub fn isolation(&self) -> Option<&Isolation> {
        self.isolation.as_deref()
    }

    /// Asks every node to stop its tasks and waits until all have.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        while self.nodes.join_next().await.is_some() {}
        // Every task's exit was reported after its cgroup was removed.
        if let Some(cgroups) = self.isolation.as_ref().and_then(|i| i.cgroups.as_ref()) {
            cgroups.remove_scope();
        }
    }

    /// Waits until every node has ended (they end only on shutdown).
    pub async fn join(&mut self) {
        while self.nodes.join_next().await.is_some() {}
    }
}

/// `meridian agent`: runs until `stop` resolves, then stops the node(s).
pub async fn run_agent(
    cmd: AgentCommand,
    stop: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    if !cmd.cpu.is_finite() || cmd.cpu < 0.0 {
        return Err(AgentError::Config(format!(
            "--cpu {} is not a core count",
            cmd.cpu
        )));
    }
    let spec = NodeSpec {
        node_id: cmd.node_id.clone(),
        allocatable: Resources {
            // Rounded to whole thousandths of a core; checked finite above.
            cpu_millis: (cmd.cpu * 1000.0).round() as u64,
            memory_bytes: cmd.memory_bytes,
            gpu_count: cmd.gpus,
            gpu_type: String::new(),
        },
        labels: cmd.labels.clone(),
        zone: cmd.labels.get("zone").cloned().unwrap_or_default(),
        rack: cmd.labels.get("rack").cloned().unwrap_or_default(),
    };
    let opts = AgentOptions {
        seed: cmd.seed,
        work_dir: Some(cmd.work_dir.clone()),
        isolation: cmd.isolation.clone(),
        logs_listen: cmd.logs_listen,
        logs_endpoint: cmd.logs_advertise.clone(),
        security: cmd.security.clone(),
        attempt_retention: cmd.attempt_retention,
        ..AgentOptions::default()
    };
    let clock = SystemClock::shared();
    let probe = Arc::new(Probe::default());
    let mut host = match cmd.simulate {
        Some(n) => Host::simulated(&cmd.region, &spec, n, opts, clock, probe)?,
        None => Host::real(&cmd.region, spec, opts, clock, probe).await?,
    };
    tokio::select! {
        () = stop => {}
        () = host.join() => return Ok(()),
    }
    host.shutdown().await;
    Ok(())
}

/// Removes finished attempts' directories past `keep`, one pass at start
/// and then every [`retention::pass_every`], until shutdown. A pass walks the
/// disk, so it runs on a blocking thread.
async fn expire_attempts(
    tasks: PathBuf,
    keep: Duration,
    in_use: Arc<InUse>,
    clock: SharedClock,
    probe: Arc<Probe>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let now = std::time::UNIX_EPOCH + Duration::from_millis(clock.now_unix_ms());
        let (dir, held) = (tasks.clone(), in_use.clone());
        let swept = tokio::task::spawn_blocking(move || retention::sweep(&dir, keep, now, &held))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "attempt retention pass failed");
                retention::Swept::default()
            });
        // Timed before the pass is told, so whoever awaits the pass and then
        // moves the clock moves it past the next one.
        let next = clock.sleep(retention::pass_every(keep));
        if swept.attempts > 0 {
            tracing::info!(
                attempts = swept.attempts,
                jobs = swept.jobs,
                "removed attempt directories past their retention"
            );
            probe.update(|p| p.attempt_dirs_removed += swept.attempts as u64);
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            () = next => {}
        }
    }
}
