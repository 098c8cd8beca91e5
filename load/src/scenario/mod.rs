//! The scenarios and what several of them share: getting a federation
//! (given or started), waiting for its nodes, submitting at a rate, and
//! sampling queue depth. Must never judge timings as failures.

pub mod array;
mod churn;
pub mod e2e;
pub mod failover;
pub mod herd;
pub mod history;
pub mod placement;
pub mod real;
pub mod scale;
pub mod submit;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::v1;
use tokio::task::JoinHandle;

use crate::client;
use crate::error::{LoadError, Result};
use crate::federation::{Layout, LocalFederation};
use crate::stats::{Latency, Timeline};
use crate::{Ctx, scrape};

/// The federation under load: given by `--endpoint` or started here.
pub struct Target {
    /// Global endpoints, comma-separated.
    pub endpoints: String,
    /// The local federation, when this run started one.
    pub local: Option<LocalFederation>,
    /// This load process's CPU seconds when the run began: one process
    /// may make several runs (`--compare-insecure`), and each reports its
    /// own.
    client_cpu_at_start: f64,
}

impl Target {
    /// Uses `--endpoint` or starts `layout`, with mutual TLS and tokens or,
    /// with `--insecure`, in plain text with auth off.
    pub async fn get(ctx: &Ctx, layout: Layout) -> Result<Target> {
        let client_cpu_at_start = crate::procstat::usage("self")
            .map(|u| u.cpu_seconds)
            .unwrap_or(0.0);
        match &ctx.args.endpoint {
            Some(e) => {
                crate::client::use_tls(ctx.args.tls.clone());
                Ok(Target {
                    endpoints: e.clone(),
                    local: None,
                    client_cpu_at_start,
                })
            }
            None => {
                let mut fed = LocalFederation::start(layout, ctx.security()).await?;
                if ctx.args.keep_data {
                    eprintln!(
                        "meridian load: data and logs are kept in {}",
                        fed.keep_data().display()
                    );
                }
                Ok(Target {
                    endpoints: fed.global_endpoints(),
                    local: Some(fed),
                    client_cpu_at_start,
                })
            }
        }
    }

    /// The local federation, or a usage error for a scenario that must
    /// kill processes.
    pub fn local(&self, what: &str) -> Result<&LocalFederation> {
        self.local.as_ref().ok_or_else(|| {
            LoadError::Usage(format!(
                "{what} needs a federation it starts itself; drop --endpoint"
            ))
        })
    }

    /// Every region replica's metrics address (empty without a local one).
    pub fn region_metrics(&self) -> Vec<SocketAddr> {
        self.local
            .iter()
            .flat_map(|f| f.regions.iter())
            .flat_map(|r| r.replicas.iter())
            .filter_map(|p| p.metrics)
            .collect()
    }

    /// Every local process that serves metrics (global replicas and region
    /// replicas).
    pub fn all_metrics(&self) -> Vec<SocketAddr> {
        let globals = self
            .local
            .iter()
            .flat_map(|f| f.globals.iter())
            .filter_map(|p| p.metrics);
        globals.chain(self.region_metrics()).collect()
    }

    /// Records how often a leader that was not killed lost its lease (a
    /// step-down of a live process: its renewal came too late or was
    /// fenced), then stops the local federation. A killed process takes its
    /// counters with it, so every step-down counted here is one of a
    /// healthy leader; the target is zero.
    pub async fn finish(self, report: &mut crate::Report) {
        let addrs = self.all_metrics();
        if !addrs.is_empty() {
            let mut losses = 0.0;
            let mut per_process = BTreeMap::new();
            for addr in addrs {
                if let Some(text) = scrape::fetch(addr).await {
                    let n = scrape::sum_where(
                        &text,
                        "meridian_control_lease_transitions_total",
                        "to=\"follower\"",
                    );
                    losses += n;
                    if n > 0.0 {
                        per_process.insert(addr.to_string(), n);
                    }
                }
            }
            report.result("lease_losses_of_live_leaders", losses);
            if !per_process.is_empty() {
                report.result("lease_losses_by_process", &per_process);
            }
            report.target(
                "lease losses of leaders that were not killed",
                "0",
                format!("{losses:.0}"),
                losses == 0.0,
            );
        }
        report.result("processes", self.usage());
        self.shut_down().await;
    }

    /// Every local process, with what its cost is read from, and this load
    /// client.
    pub fn probes(&self) -> Vec<crate::cost::Probe> {
        let mut out = Vec::new();
        if let Some(f) = &self.local {
            let procs = f.globals.iter().chain(
                f.regions
                    .iter()
                    .flat_map(|r| r.replicas.iter().chain(&r.agents)),
            );
            for p in procs {
                out.push(crate::cost::Probe {
                    name: p.name.clone(),
                    pid: f.pid_of(&p.name),
                    metrics: p.metrics,
                });
            }
        }
        out.push(crate::cost::Probe {
            name: "load client".to_string(),
            pid: Some(std::process::id() as i32),
            metrics: None,
        });
        out
    }

    /// CPU seconds and peak memory of every local process still running,
    /// and of this load client, by name (its CPU since this run began; its
    /// peak memory over the whole process).
    pub fn usage(&self) -> BTreeMap<String, crate::procstat::Usage> {
        let mut out = BTreeMap::new();
        if let Some(f) = &self.local {
            let names = f
                .globals
                .iter()
                .chain(
                    f.regions
                        .iter()
                        .flat_map(|r| r.replicas.iter().chain(&r.agents)),
                )
                .map(|p| p.name.clone());
            for name in names {
                if let Some(u) = f
                    .pid_of(&name)
                    .and_then(|pid| crate::procstat::usage(&pid.to_string()))
                {
                    out.insert(name, u);
                }
            }
        }
        if let Some(mut u) = crate::procstat::usage("self") {
            u.cpu_seconds = (u.cpu_seconds - self.client_cpu_at_start).max(0.0);
            out.insert("load client".to_string(), u);
        }
        out
    }

    /// Stops the local federation, if any.
    pub async fn shut_down(self) {
        if let Some(f) = self.local {
            f.shut_down().await;
        }
    }
}

/// Waits until the regions report `nodes` ready nodes in total; returns the
/// `(seconds, ready)` samples. `guard` only keeps a broken run from hanging.
pub async fn await_nodes(
    endpoints: &str,
    nodes: u64,
    guard: Duration,
) -> Result<(Duration, Vec<(f64, f64)>)> {
    let mut c = client::following(endpoints, Duration::from_secs(30))?;
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let regions = c
            .call(|mut f| async move { f.list_regions(v1::ListRegionsRequest {}).await })
            .await
            .map_err(|e| LoadError::Federation(e.to_string()))?;
        let ready: u64 = regions
            .regions
            .iter()
            .filter_map(|r| r.capacity.as_ref())
            .map(|c| u64::from(c.nodes_ready))
            .sum();
        samples.push((start.elapsed().as_secs_f64(), ready as f64));
        if ready >= nodes {
            return Ok((start.elapsed(), samples));
        }
        if start.elapsed() > guard {
            return Err(LoadError::Federation(format!(
                "only {ready} of {nodes} nodes ready after {} s",
                guard.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Samples shared with the task that takes them.
pub type SharedSeries = Arc<Mutex<Vec<(f64, f64)>>>;

/// Samples the sum of metric `name` over `addrs` every `every` until
/// aborted; the series is `(seconds since start, value)`.
pub fn sample_metric(
    addrs: Vec<SocketAddr>,
    name: &'static str,
    every: Duration,
    start: Instant,
) -> (SharedSeries, JoinHandle<()>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let shared = out.clone();
    let task = tokio::spawn(async move {
        if addrs.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let mut total = 0.0;
            for a in &addrs {
                total += scrape::read(*a, name).await.unwrap_or(0.0);
            }
            if let Ok(mut v) = shared.lock() {
                v.push((start.elapsed().as_secs_f64(), total));
            }
        }
    });
    (out, task)
}

/// What an open-loop submitter produced.
#[derive(Debug)]
pub struct Offered {
    /// Acknowledged jobs: job id -> (request id, scheduled send time).
    pub acked: HashMap<String, (String, Instant)>,
    /// Request ids that produced a job id another request id had.
    pub id_clashes: Vec<String>,
    /// Submit latency from the scheduled send time to the acknowledgement.
    pub ack_latency: Latency,
    /// Submits scheduled.
    pub scheduled: u64,
    /// Submits that failed, by status code.
    pub errors: HashMap<String, u64>,
    /// The first message of each failed status code.
    pub error_samples: HashMap<String, String>,
    /// Acknowledgements per second.
    pub acks: Timeline,
}

/// Submits one job of `spec` per `1/rate` s for `duration`, on a schedule
/// that does not wait for answers (open loop): latency counts from the
/// scheduled time, so queueing in the system is in it. Calls spread over
/// `channels` connections to `url`.
pub async fn open_loop(
    url: &str,
    seed: u64,
    rate: u64,
    duration: Duration,
    spec: v1::JobSpec,
    bar: &indicatif::ProgressBar,
) -> Result<Offered> {
    let channels: Vec<_> = (0..8)
        .map(|_| client::federation(url, Duration::from_secs(30)))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(at.into()).await;
        if i % rate.max(1) == 0 {
            bar.set_position(start.elapsed().as_secs());
        }
        let mut c = channels[(i % channels.len() as u64) as usize].clone();
        let req = v1::SubmitJobRequest {
            request_id: client::request_id(seed, "o", i),
            spec: Some(spec.clone()),
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let rid = req.request_id.clone();
            let out = c.submit_job(req).await;
            let _ = tx.send((rid, at, Instant::now(), out.map(|r| r.into_inner())));
        });
    }
    drop(tx);
    let mut o = Offered {
        acked: HashMap::new(),
        id_clashes: Vec::new(),
        ack_latency: Latency::new(),
        scheduled: total,
        errors: HashMap::new(),
        error_samples: HashMap::new(),
        acks: Timeline::new(start),
    };
    while let Some((rid, at, done, out)) = rx.recv().await {
        match out {
            Ok(r) => {
                o.ack_latency.record(done - at);
                o.acks.add(done, 1);
                if let Some((other, _)) = o.acked.insert(r.job_id.clone(), (rid.clone(), at))
                    && other != rid
                {
                    o.id_clashes.push(format!(
                        "request ids {other} and {rid} both got job {}",
                        r.job_id
                    ));
                }
            }
            Err(s) => {
                let code = format!("{:?}", s.code());
                o.error_samples
                    .entry(code.clone())
                    .or_insert_with(|| s.message().chars().take(160).collect());
                *o.errors.entry(code).or_default() += 1;
            }
        }
    }
    Ok(o)
}

/// The states of up to 200 of `jobs` (read through the leader), counted by
/// name: what a report says about jobs that did not converge.
pub async fn states_of(
    endpoints: &str,
    jobs: &[String],
) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(mut c) = client::following(endpoints, Duration::from_secs(10)) else {
        return out;
    };
    for job in jobs.iter().take(200) {
        let req = v1::GetJobRequest {
            job_id: job.clone(),
        };
        let state = match c
            .call(|mut f| {
                let r = req.clone();
                async move { f.get_job(r).await }
            })
            .await
        {
            Ok(r) => r
                .job
                .and_then(|j| v1::JobState::try_from(j.state).ok())
                .map_or("unknown".to_string(), |s| s.as_str_name().to_string()),
            Err(e) => format!("unreadable: {e}").chars().take(80).collect(),
        };
        *out.entry(state).or_default() += 1;
    }
    out
}
