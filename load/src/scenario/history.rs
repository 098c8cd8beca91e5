//! `history`: what a long history of finished jobs costs the global tier.
//!
//! Owns filling one global store, through the store API, with N finished
//! jobs as the global tier itself writes them (record, request record,
//! index entries, finished-at entry: `meridian_global::job_index`), and
//! measuring against it and against an empty store in the same run, one
//! replica at a time, in the order empty, full, empty, full: closed-loop
//! unary submit throughput, and the latency of `ListJobs` for one tenant
//! and one state, first page. The listed state is PENDING, which the jobs
//! submitted in the run are in on both stores (no region is registered),
//! so both lists return the same page; a list of SUCCEEDED jobs on the full
//! store is measured besides. Must never judge a timing as a failure: the
//! only invariant is that every acknowledged submit got its own job.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use meridian_control::SystemClock;
use meridian_global::keys::Keys;
use meridian_global::server::{Running, start_with};
use meridian_global::{GlobalConfig, GlobalError, job_index};
use meridian_proto::v1;

use crate::Ctx;
use crate::client;
use crate::error::{LoadError, Result};
use crate::stats::{Latency, rate};

/// Jobs written per fill transaction.
const FILL_BATCH: u64 = 2_000;

/// Tenants the finished jobs belong to; the load's own jobs are the
/// first's.
const TENANTS: u64 = 10;

/// Lists timed per store and round.
const LISTS: usize = 200;

/// What one round on one store measured.
struct Round {
    submits_per_s: f64,
    submit_latency: Latency,
    list_latency: Latency,
    acked: Vec<String>,
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let mut report = ctx.report(
        "A global store holding N finished jobs against an empty one, in the same run, one \
         replica at a time (empty, full, empty, full): closed-loop unary SubmitJob throughput, \
         and ListJobs latency for one tenant and one state (PENDING, first page of 100).",
    );
    if ctx.args.endpoint.is_some() {
        return Err(LoadError::Usage(
            "history fills a store of its own; drop --endpoint".into(),
        ));
    }
    let n = ctx
        .args
        .finished_jobs
        .unwrap_or(ctx.pick(20_000, 1_000_000));
    let d = ctx.duration(2, 10);
    let concurrency = ctx.args.concurrency.unwrap_or(32);
    report.param("finished_jobs", n);
    report.param("seconds_per_submit_phase", d.as_secs());
    report.param("concurrency", concurrency);
    report.param("lists_per_round", LISTS);
    let dir = tempfile::tempdir().map_err(|source| LoadError::Io {
        what: "a data directory".into(),
        source,
    })?;
    let empty = format!("sqlite:{}", dir.path().join("empty.db").display());
    let full = format!("sqlite:{}", dir.path().join("full.db").display());
    let fill_started = Instant::now();
    fill(&full, n).await?;
    let fill_s = fill_started.elapsed().as_secs_f64();
    report.result("fill_seconds", (fill_s * 10.0).round() / 10.0);
    report.result("fill_jobs_per_s", rate(n, fill_started.elapsed()).round());
    report.result("full_store_bytes", file_bytes(&dir.path().join("full.db")));

    let mut rounds: Vec<(&str, Round)> = Vec::new();
    let mut succeeded_lists = Latency::new();
    for (i, (name, url)) in [("empty", &empty), ("full", &full)]
        .iter()
        .cycle()
        .take(4)
        .enumerate()
    {
        let replica = replica(url).await?;
        let round = measure(&replica, ctx.args.seed, i as u64, d, concurrency).await?;
        if *name == "full" {
            let mut api = api(&replica).await?;
            time_lists(
                &mut api,
                "t0",
                v1::JobState::Succeeded,
                &mut succeeded_lists,
            )
            .await?;
        }
        replica.shutdown().await;
        rounds.push((name, round));
    }

    let mut acked = HashSet::new();
    let mut clashes = 0u64;
    let (mut submit, mut list) = ([0.0f64; 2], [Latency::new(), Latency::new()]);
    let mut submit_latency = [Latency::new(), Latency::new()];
    for (name, round) in &rounds {
        let k = usize::from(*name == "full");
        submit[k] += round.submits_per_s / 2.0;
        list[k].merge(&round.list_latency);
        submit_latency[k].merge(&round.submit_latency);
        for id in &round.acked {
            if !acked.insert((name.to_string(), id.clone())) {
                clashes += 1;
            }
        }
    }
    report.result("submit_jobs_per_s_empty", submit[0].round());
    report.result("submit_jobs_per_s_full", submit[1].round());
    report.result("submit_latency_empty", submit_latency[0].summary());
    report.result("submit_latency_full", submit_latency[1].summary());
    report.result("list_pending_first_page_empty", list[0].summary());
    report.result("list_pending_first_page_full", list[1].summary());
    report.result("list_succeeded_first_page_full", succeeded_lists.summary());
    report.series(
        "ListJobs (tenant, PENDING, first page) latency",
        "quantile",
        "ms (empty, then full)",
        list[0].curve().into_iter().chain(list[1].curve()).collect(),
    );
    let ratio = submit[1] / submit[0].max(1.0);
    report.target(
        &format!("submit throughput with {n} finished jobs stored"),
        "within 20 % of an empty store",
        format!(
            "{:.0} vs {:.0} jobs/s ({:.0} %)",
            submit[1],
            submit[0],
            ratio * 100.0
        ),
        ratio >= 0.8,
    );
    let (empty_p50, full_p50) = (list[0].quantile_ms(0.5), list[1].quantile_ms(0.5));
    report.target(
        &format!("ListJobs (one tenant, one state, first page) with {n} finished jobs stored"),
        "within 20 % of an empty store",
        format!(
            "p50 {full_p50:.2} vs {empty_p50:.2} ms ({:.0} %)",
            full_p50 / empty_p50.max(0.001) * 100.0
        ),
        full_p50 <= empty_p50 * 1.2,
    );
    if clashes > 0 {
        report
            .violations
            .push(format!("{clashes} acknowledged submits got a job id twice"));
    }
    Ok(report)
}

/// Writes `n` finished jobs into the store at `url`, with every record and
/// index entry the global tier keeps for them, and marks the indexes
/// complete (as a store that has always had them).
async fn fill(url: &str, n: u64) -> Result<()> {
    let db = meridian_store::open(url)
        .await
        .map_err(|e| LoadError::Store(format!("open {url}: {e}")))?;
    let keys = Keys::new(&GlobalConfig::new(url, local()).namespace);
    let states = [
        v1::JobState::Succeeded,
        v1::JobState::Succeeded,
        v1::JobState::Failed,
        v1::JobState::Cancelled,
    ];
    let regions = ["r1", "r2", "r3"];
    let spec = client::simulated_job("history", 1, 1000);
    let mut from = 0;
    while from < n {
        let to = (from + FILL_BATCH).min(n);
        let (keys, spec) = (keys.clone(), spec.clone());
        db.run(|tx, _| {
            let (keys, spec) = (keys.clone(), spec.clone());
            async move {
                for i in from..to {
                    let tenant = format!("t{}", i % TENANTS);
                    let id = format!("j0000000000-{i:012}");
                    let request_id = format!("history-{i}");
                    let at = 1_700_000_000_000 + i;
                    let state = states[(i % states.len() as u64) as usize];
                    let job = v1::Job {
                        job_id: id.clone(),
                        request_id: request_id.clone(),
                        spec: Some(v1::JobSpec {
                            tenant: tenant.clone(),
                            ..spec.clone()
                        }),
                        state: state as i32,
                        region: regions[(i % 3) as usize].to_string(),
                        created_at_unix_ms: at,
                        updated_at_unix_ms: at,
                        ..v1::Job::default()
                    };
                    tx.set(&keys.request(&tenant, &request_id), id.as_bytes())?;
                    job_index::create_job(&tx, &keys, &job)?;
                }
                tx.set(&keys.job_index_version(), job_index::VERSION)?;
                Ok::<_, GlobalError>(())
            }
        })
        .await
        .map_err(|e| LoadError::Store(format!("fill: {e}")))?;
        from = to;
    }
    Ok(())
}

fn local() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn file_bytes(path: &Path) -> u64 {
    let wal = path.with_extension("db-wal");
    [path.to_path_buf(), wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// A leading replica over `url`.
async fn replica(url: &str) -> Result<Running> {
    let config = GlobalConfig::new(url, local());
    let db = meridian_store::open(url)
        .await
        .map_err(|e| LoadError::Federation(format!("open {url}: {e}")))?;
    let running = start_with(config, db, SystemClock::shared())
        .await
        .map_err(|e| LoadError::Federation(format!("start a replica: {e}")))?;
    tokio::time::timeout(Duration::from_secs(30), running.wait_leader())
        .await
        .map_err(|_| LoadError::Federation("the replica did not lead within 30 s".into()))?;
    Ok(running)
}

async fn api(running: &Running) -> Result<client::Api> {
    client::federation(
        &format!("http://{}", running.grpc_addr),
        Duration::from_secs(30),
    )
}

/// One round on one replica: `concurrency` closed-loop submitters for `d`,
/// then [`LISTS`] timed lists.
async fn measure(
    running: &Running,
    seed: u64,
    round: u64,
    d: Duration,
    concurrency: usize,
) -> Result<Round> {
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut c = api(running).await?;
        workers.push(tokio::spawn(async move {
            let mut latency = Latency::new();
            let mut acked = Vec::new();
            let mut n = 0u64;
            let mut spec = client::simulated_job("history-load", 1, 1000);
            spec.tenant = "t0".into();
            while start.elapsed() < d {
                let req = v1::SubmitJobRequest {
                    request_id: client::request_id(seed, &format!("h{round}-{w}"), n),
                    spec: Some(spec.clone()),
                };
                n += 1;
                let sent = Instant::now();
                if let Ok(r) = c.submit_job(req).await {
                    latency.record(sent.elapsed());
                    acked.push(r.into_inner().job_id);
                }
            }
            (latency, acked)
        }));
    }
    let mut submit_latency = Latency::new();
    let mut acked = Vec::new();
    for w in workers {
        let (l, a) = w
            .await
            .map_err(|e| LoadError::Federation(format!("a submitter failed: {e}")))?;
        submit_latency.merge(&l);
        acked.extend(a);
    }
    let elapsed = start.elapsed();
    let mut api = api(running).await?;
    let mut list_latency = Latency::new();
    time_lists(&mut api, "t0", v1::JobState::Pending, &mut list_latency).await?;
    Ok(Round {
        submits_per_s: rate(acked.len() as u64, elapsed),
        submit_latency,
        list_latency,
        acked,
    })
}

/// Times [`LISTS`] first pages of `tenant`'s jobs in `state`.
async fn time_lists(
    api: &mut client::Api,
    tenant: &str,
    state: v1::JobState,
    into: &mut Latency,
) -> Result<()> {
    for _ in 0..LISTS {
        let req = v1::ListJobsRequest {
            tenant: tenant.into(),
            states: vec![state as i32],
            page_size: 100,
            ..v1::ListJobsRequest::default()
        };
        let sent = Instant::now();
        let page = api
            .list_jobs(req)
            .await
            .map_err(|e| LoadError::Federation(format!("ListJobs: {e}")))?
            .into_inner();
        into.record(sent.elapsed());
        if page.jobs.is_empty() {
            return Err(LoadError::Federation(format!(
                "ListJobs of {tenant} in {state:?} returned no job"
            )));
        }
    }
    Ok(())
}
