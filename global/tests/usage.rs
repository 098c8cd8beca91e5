//! Accounting over a real socket, on a manual clock: jobs of two tenants in
//! two regions, with known resources, waits and run times (retries
//! included), reported through the region link as a region reports them;
//! GetUsage (gRPC), `/v1/usage` (HTTP), `meridian usage` (the CLI) and the
//! `/metrics` counters all equal the sum over the task records; a report
//! applied twice, or through commits that failed or applied with their
//! answer lost, counts nothing twice; usage survives the removal of the
//! finished jobs by the retention.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use meridian_cli::client::{Client, ConnectArgs};
use meridian_cli::render::Output;
use meridian_cli::usage::{UsageQuery, run_into};
use meridian_control::ManualClock;
use meridian_global::GlobalConfig;
use meridian_global::history::History;
use meridian_global::server::{Running, start_with};
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::*;
use meridian_store::Database;
use meridian_store::fault::{FaultConfig, FaultyBackend};
use meridian_store::memory::MemoryBackend;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// 2026-12-06T10:00:00Z: the run starts on an hour.
const START: u64 = 1_796_551_200_000;
const RETENTION: Duration = Duration::from_secs(3600);

async fn leader(clock: &ManualClock, dir: &tempfile::TempDir) -> Running {
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.leader_lease = Duration::from_secs(36_000);
    config.region_lease = Duration::from_secs(36_000);
    config.controller_every = Duration::from_secs(36_000);
    let db = meridian_store::open(&url).await.unwrap();
    let running = start_with(config, db, clock.shared()).await.unwrap();
    guarded("leadership", running.wait_leader()).await;
    running
}

/// Every key of the deployment whose bytes hold `job`'s id.
async fn keys_naming(running: &Running, job: &str) -> Vec<Vec<u8>> {
    let root = running.keys.root().clone();
    let rows = running
        .db
        .run(|tx, _| {
            let range = root.range();
            async move { tx.get_range(meridian_store::RangeOption::from(range)).await }
        })
        .await
        .unwrap();
    rows.into_iter()
        .map(|kv| kv.key)
        .filter(|k| k.windows(job.len()).any(|w| w == job.as_bytes()))
        .collect()
}

/// One task attempt as the test's record of the run: the ground truth.
#[derive(Debug, Clone)]
struct Attempt {
    tenant: &'static str,
    region: &'static str,
    cpu_millis: u64,
    memory_mib: u64,
    gpus: u64,
    ran_ms: u64,
}

/// One job of the run.
struct Planned {
    request: &'static str,
    tenant: &'static str,
    region: &'static str,
    cpu_millis: u64,
    memory_mib: u64,
    gpus: u32,
    /// How long it waits between submit and running.
    wait_ms: u64,
    /// Run time of each attempt of each task (a retry is a second entry).
    attempts: Vec<Vec<u64>>,
}

/// Registers `region` with room for GPU tasks; returns its lease epoch.
async fn register_gpu_region(link: &mut RegionLinkClient<Channel>, region: &str) -> u64 {
    let lease = register(link, region).await;
    let mut cap = capacity();
    cap.gpu_allocatable = 16;
    if let Some(free) = cap.max_node_free.as_mut() {
        free.gpu_count = 8;
    }
    let out = link
        .report_capacity(ReportCapacityRequest {
            region: region.into(),
            region_lease_epoch: lease,
            capacity: Some(cap),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.verdict, Verdict::Accepted as i32);
    lease
}

async fn await_routed(api: &mut FederationClient<Channel>, job: &str) -> Job {
    let mut stream = api
        .watch_jobs(WatchJobsRequest {
            job_ids: vec![job.to_string()],
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let now = api
            .get_job(GetJobRequest { job_id: job.into() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if now.assignment_epoch > 0 {
            return now;
        }
        guarded("routed", stream.next()).await;
    }
}

async fn report(
    link: &mut RegionLinkClient<Channel>,
    region: &str,
    lease: u64,
    update: JobStatusUpdate,
) {
    // A failed call is sent again, as a region does: on a store failing
    // commits, an attempt may have applied before its answer was lost.
    let mut failures = Vec::new();
    let out = loop {
        match link
            .report_status(ReportStatusRequest {
                region: region.into(),
                region_lease_epoch: lease,
                updates: vec![update.clone()],
            })
            .await
        {
            Ok(out) => break out.into_inner(),
            Err(status) if failures.len() < 100 => failures.push(status),
            Err(status) => panic!("{status:?} after {failures:?}"),
        }
    };
    assert_eq!(out.results[0].verdict, Verdict::Accepted as i32, "{out:?}");
}

/// Runs `plan` through the region link on the manual clock; returns every
/// attempt as run, and each job's id.
async fn run(
    clock: &ManualClock,
    api: &mut FederationClient<Channel>,
    link: &mut RegionLinkClient<Channel>,
    leases: &BTreeMap<&str, u64>,
    plan: &[Planned],
    faults: Option<&FaultyBackend>,
) -> (Vec<Attempt>, Vec<String>) {
    let mut attempts = Vec::new();
    let mut ids = Vec::new();
    for p in plan {
        let mut spec = spec(p.tenant);
        spec.task_count = p.attempts.len() as u32;
        spec.allowed_regions = vec![p.region.to_string()];
        spec.resources = Some(Resources {
            cpu_millis: p.cpu_millis,
            memory_bytes: p.memory_mib << 20,
            gpu_count: p.gpus,
            ..Resources::default()
        });
        let job_id = api
            .submit_job(submit(p.request, spec))
            .await
            .unwrap()
            .into_inner()
            .job_id;
        let job = await_routed(api, &job_id).await;
        assert_eq!(job.region, p.region);
        let lease = leases[p.region];
        clock.advance(Duration::from_millis(p.wait_ms));
        // Faults, when asked for, only while the region reports (routing
        // is not what this test is about).
        if let Some(f) = faults {
            f.set_config(FaultConfig::mixed(0.5));
        }
        let mut version = 1;
        let mut update = |state: JobState, run_ms: u64, runs: u64| {
            version += 1;
            JobStatusUpdate {
                job_id: job_id.clone(),
                assignment_epoch: job.assignment_epoch,
                status_version: version,
                state: state as i32,
                task_run_ms: run_ms,
                tasks_run: runs,
                ..JobStatusUpdate::default()
            }
        };
        report(link, p.region, lease, update(JobState::Running, 0, 0)).await;
        // Attempts end one after another; the region's totals grow with
        // each, and each total is reported as it grows.
        let (mut run_ms, mut runs) = (0, 0);
        for task in &p.attempts {
            for ran in task {
                clock.advance(Duration::from_millis(*ran));
                run_ms += ran;
                runs += 1;
                attempts.push(Attempt {
                    tenant: p.tenant,
                    region: p.region,
                    cpu_millis: p.cpu_millis,
                    memory_mib: p.memory_mib,
                    gpus: u64::from(p.gpus),
                    ran_ms: *ran,
                });
                report(
                    link,
                    p.region,
                    lease,
                    update(JobState::Running, run_ms, runs),
                )
                .await;
            }
        }
        let last = update(JobState::Succeeded, run_ms, runs);
        report(link, p.region, lease, last.clone()).await;
        // The same final report again (a retry after a lost answer), and
        // once more under a newer version: nothing more is counted.
        report(link, p.region, lease, last.clone()).await;
        report(
            link,
            p.region,
            lease,
            JobStatusUpdate {
                status_version: last.status_version + 1,
                ..last
            },
        )
        .await;
        if let Some(f) = faults {
            f.set_config(FaultConfig::none());
        }
        ids.push(job_id);
    }
    (attempts, ids)
}

/// The sums a usage record must show, from the attempts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sums {
    tasks_run: u64,
    task_run_ms: u64,
    cpu_millicore_ms: u64,
    memory_mib_ms: u64,
    gpu_ms: u64,
}

fn sums<'a>(attempts: impl Iterator<Item = &'a Attempt>) -> Sums {
    let mut s = Sums::default();
    for a in attempts {
        s.tasks_run += 1;
        s.task_run_ms += a.ran_ms;
        s.cpu_millicore_ms += a.cpu_millis * a.ran_ms;
        s.memory_mib_ms += a.memory_mib * a.ran_ms;
        s.gpu_ms += a.gpus * a.ran_ms;
    }
    s
}

fn of(r: &UsageRecord) -> Sums {
    Sums {
        tasks_run: r.tasks_run,
        task_run_ms: r.task_run_ms,
        cpu_millicore_ms: r.cpu_millicore_ms,
        memory_mib_ms: r.memory_mib_ms,
        gpu_ms: r.gpu_ms,
    }
}

fn plan() -> Vec<Planned> {
    vec![
        Planned {
            request: "a1",
            tenant: "alpha",
            region: "r1",
            cpu_millis: 500,
            memory_mib: 256,
            gpus: 0,
            wait_ms: 2_000,
            // Task 1 failed once after 4 s and ran again for 7 s.
            attempts: vec![vec![10_000], vec![4_000, 7_000]],
        },
        Planned {
            request: "a2",
            tenant: "alpha",
            region: "r2",
            cpu_millis: 2_000,
            memory_mib: 1_024,
            gpus: 1,
            wait_ms: 20,
            attempts: vec![vec![60_000]],
        },
        Planned {
            request: "b1",
            tenant: "beta",
            region: "r1",
            cpu_millis: 250,
            memory_mib: 128,
            gpus: 0,
            wait_ms: 5_000,
            attempts: vec![vec![1_500], vec![2_500], vec![3_500]],
        },
        Planned {
            request: "b2",
            tenant: "beta",
            region: "r2",
            cpu_millis: 4_000,
            memory_mib: 4_096,
            gpus: 2,
            wait_ms: 30_000,
            attempts: vec![vec![90_000], vec![45_000]],
        },
    ]
}

async fn usage(api: &mut FederationClient<Channel>, tenant: &str) -> GetUsageResponse {
    api.get_usage(GetUsageRequest {
        tenant: tenant.into(),
        since_unix_ms: START,
        until_unix_ms: START + 24 * 3_600_000,
        ..GetUsageRequest::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// Checks every (tenant, region) record and the total against the attempts.
fn check(response: &GetUsageResponse, attempts: &[Attempt], tenant: &str) {
    let mine: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| tenant.is_empty() || a.tenant == tenant)
        .collect();
    let mut pairs: BTreeMap<(&str, &str), Vec<&Attempt>> = BTreeMap::new();
    for a in &mine {
        pairs.entry((a.tenant, a.region)).or_default().push(a);
    }
    let got: Vec<(&str, &str)> = response
        .records
        .iter()
        .map(|r| (r.tenant.as_str(), r.region.as_str()))
        .collect();
    assert_eq!(got, pairs.keys().copied().collect::<Vec<_>>());
    for r in &response.records {
        let want = sums(
            pairs[&(r.tenant.as_str(), r.region.as_str())]
                .iter()
                .copied(),
        );
        assert_eq!(of(r), want, "{} in {}", r.tenant, r.region);
        assert_eq!(r.cpu_seconds, want.cpu_millicore_ms as f64 / 1e6);
    }
    let total = response.total.as_ref().unwrap();
    assert_eq!(of(total), sums(mine.iter().copied()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_totals_equal_the_sum_over_the_task_records_through_the_api_http_cli_and_metrics() {
    let clock = ManualClock::starting_at_unix_ms(START);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let addr = format!("http://{}", running.grpc_addr);
    let mut api = FederationClient::connect(addr.clone()).await.unwrap();
    let mut link = RegionLinkClient::connect(addr.clone()).await.unwrap();
    let mut leases = BTreeMap::new();
    leases.insert("r1", register(&mut link, "r1").await);
    leases.insert("r2", register_gpu_region(&mut link, "r2").await);
    let plan = plan();
    let (attempts, _) = run(&clock, &mut api, &mut link, &leases, &plan, None).await;

    // gRPC: each tenant, then every tenant.
    for tenant in ["alpha", "beta", ""] {
        check(&usage(&mut api, tenant).await, &attempts, tenant);
    }
    // Waits: one per job, exact means, percentiles rounded up to their
    // bucket (at most 1/16 above).
    let all = usage(&mut api, "").await;
    let wait = all.total.unwrap().wait.unwrap();
    assert_eq!(wait.jobs, 4);
    let waits: Vec<u64> = {
        let mut w: Vec<u64> = plan.iter().map(|p| p.wait_ms).collect();
        w.sort();
        w
    };
    assert_eq!(wait.mean_ms, waits.iter().sum::<u64>() / 4);
    // Nearest rank 2 of 4 is the second shortest wait.
    assert!(wait.p50_ms >= waits[1] && wait.p50_ms <= waits[1] + waits[1] / 16);
    assert!(wait.max_ms >= waits[3] && wait.max_ms <= waits[3] + waits[3] / 16);

    // HTTP: the same numbers for one tenant in one region.
    let http_addr = running.http_addr.unwrap();
    let (status, body) = http(
        http_addr,
        "GET",
        &format!(
            "/v1/usage?tenant=beta&region=r2&since_unix_ms={START}&until_unix_ms={}",
            START + 3_600_000
        ),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let want = sums(
        attempts
            .iter()
            .filter(|a| a.tenant == "beta" && a.region == "r2"),
    );
    assert_eq!(
        json["total"]["cpu_millicore_ms"],
        want.cpu_millicore_ms.to_string()
    );
    assert_eq!(json["total"]["tasks_run"], want.tasks_run.to_string());
    // `since` and `until` name the same fields.
    let (status, aliased) = http(
        http_addr,
        "GET",
        &format!(
            "/v1/usage?tenant=beta&region=r2&since={START}&until={}",
            START + 3_600_000
        ),
        "",
    )
    .await;
    assert_eq!(status, 200, "{aliased}");
    let aliased: serde_json::Value = serde_json::from_str(&aliased).unwrap();
    assert_eq!(aliased["total"], json["total"]);
    // A bad field is refused naming it.
    let (status, body) = http(http_addr, "GET", "/v1/usage?until_unix_ms=5", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("since_unix_ms"), "{body}");

    // The CLI, as a user runs it: JSON totals, then the table.
    let mut client = Client::new(&ConnectArgs::new(addr, Duration::from_secs(10))).unwrap();
    let query = UsageQuery {
        tenant: Some("alpha".into()),
        region: None,
        since: format!("@{START}"),
        until: Some(format!("@{}", START + 24 * 3_600_000)),
        hourly: false,
    };
    let mut out = Vec::new();
    run_into(&mut client, Output::Json, &query, START, &mut out)
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let want = sums(attempts.iter().filter(|a| a.tenant == "alpha"));
    assert_eq!(
        json["total"]["cpu_millicore_ms"],
        want.cpu_millicore_ms.to_string()
    );
    assert_eq!(
        json["total"]["memory_mib_ms"],
        want.memory_mib_ms.to_string()
    );
    assert_eq!(json["total"]["gpu_ms"], want.gpu_ms.to_string());
    let mut out = Vec::new();
    run_into(&mut client, Output::Table, &query, START, &mut out)
        .await
        .unwrap();
    let table = String::from_utf8(out).unwrap();
    let total_row = table
        .lines()
        .find(|l| l.trim_start().starts_with("TOTAL"))
        .unwrap_or_else(|| panic!("no TOTAL row in\n{table}"));
    let cells: Vec<&str> = total_row.split_whitespace().collect();
    // TOTAL, TASKS, RUN-S, CPU-S, ...
    assert_eq!(cells[1], want.tasks_run.to_string(), "{table}");
    let cpu_s = want.cpu_millicore_ms as f64 / 1e6;
    assert_eq!(cells[3].parse::<f64>().unwrap(), cpu_s, "{table}");

    // /metrics: the all-time counters per tenant and region.
    let (status, metrics) = http(http_addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    for ((tenant, region), _) in attempts
        .iter()
        .map(|a| ((a.tenant, a.region), ()))
        .collect::<BTreeMap<_, _>>()
    {
        let want = sums(
            attempts
                .iter()
                .filter(|a| a.tenant == tenant && a.region == region),
        );
        let line = format!(
            "meridian_usage_tasks_run_total{{tenant=\"{tenant}\",region=\"{region}\"}} {}",
            want.tasks_run
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        let line = format!(
            "meridian_usage_cpu_seconds_total{{tenant=\"{tenant}\",region=\"{region}\"}} {}",
            want.cpu_millicore_ms as f64 / 1e6
        );
        assert!(metrics.lines().any(|l| l == line), "{line}");
        // One job per pair in this plan, its wait counted once.
        let line = format!(
            "meridian_usage_jobs_started_total{{tenant=\"{tenant}\",region=\"{region}\"}} 1"
        );
        assert!(metrics.lines().any(|l| l == line), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_the_removal_of_the_finished_jobs_by_the_retention() {
    let clock = ManualClock::starting_at_unix_ms(START);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let addr = format!("http://{}", running.grpc_addr);
    let mut api = FederationClient::connect(addr.clone()).await.unwrap();
    let mut link = RegionLinkClient::connect(addr).await.unwrap();
    let mut leases = BTreeMap::new();
    leases.insert("r1", register(&mut link, "r1").await);
    leases.insert("r2", register_gpu_region(&mut link, "r2").await);
    let (attempts, ids) = run(&clock, &mut api, &mut link, &leases, &plan(), None).await;
    let before = usage(&mut api, "").await;
    check(&before, &attempts, "");

    clock.advance(RETENTION + Duration::from_secs(1));
    let pass = History::new(
        running.db.clone(),
        running.keys.clone(),
        clock.shared(),
        running.leadership.clone(),
        RETENTION,
    )
    .pass()
    .await
    .unwrap();
    assert_eq!(pass.removed, ids.len(), "{pass:?}");
    for id in &ids {
        let gone = api
            .get_job(GetJobRequest { job_id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
        // Of the keys naming the job only its tombstone is left (its two
        // keys); the record of what was counted went with the job.
        let keys = keys_naming(&running, id).await;
        let usage = meridian_global::usage::UsageKeys::new(&running.keys);
        assert!(!keys.contains(&usage.counted(id)), "{id}");
        assert!(keys.contains(&running.keys.removed(id)), "{id}");
        assert_eq!(keys.len(), 2, "{id}");
    }
    let after = usage(&mut api, "").await;
    check(&after, &attempts, "");
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_through_failed_and_unknown_commits_count_exactly_once() {
    let clock = ManualClock::starting_at_unix_ms(START);
    let faulty = std::sync::Arc::new(FaultyBackend::new(
        std::sync::Arc::new(MemoryBackend::new()),
        FaultConfig::none(),
        7,
    ));
    let mut config = GlobalConfig::new("memory", "127.0.0.1:0".parse().unwrap());
    config.leader_lease = Duration::from_secs(36_000);
    config.region_lease = Duration::from_secs(36_000);
    config.controller_every = Duration::from_secs(36_000);
    let running = start_with(config, Database::new(faulty.clone()), clock.shared())
        .await
        .unwrap();
    guarded("leadership", running.wait_leader()).await;
    let addr = format!("http://{}", running.grpc_addr);
    let mut api = FederationClient::connect(addr.clone()).await.unwrap();
    let mut link = RegionLinkClient::connect(addr).await.unwrap();
    let mut leases = BTreeMap::new();
    leases.insert("r1", register(&mut link, "r1").await);
    leases.insert("r2", register_gpu_region(&mut link, "r2").await);
    let (attempts, _) = run(&clock, &mut api, &mut link, &leases, &plan(), Some(&faulty)).await;
    let stats = faulty.stats();
    assert!(
        stats.unknown_after > 0 && stats.not_committed > 0,
        "{stats:?}"
    );
    check(&usage(&mut api, "").await, &attempts, "");
    assert_eq!(
        usage(&mut api, "").await.total.unwrap().wait.unwrap().jobs,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_moved_between_regions_counts_each_regions_attempts_once_in_its_region() {
    let clock = ManualClock::starting_at_unix_ms(START);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let addr = format!("http://{}", running.grpc_addr);
    let mut api = FederationClient::connect(addr.clone()).await.unwrap();
    let mut link = RegionLinkClient::connect(addr).await.unwrap();
    let lease_1 = register(&mut link, "r1").await;
    let lease_2 = register(&mut link, "r2").await;
    let mut stream_1 = assignments(&mut link, "r1", lease_1).await;
    let mut s = spec("t");
    // Both regions allowed, r1 preferred.
    s.allowed_regions = vec!["r1".into(), "r2".into()];
    s.preferred_regions = vec!["r1".into()];
    s.task_count = 2;
    let job_id = api
        .submit_job(submit("moved", s))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let held = await_routed(&mut api, &job_id).await;
    assert_eq!(held.region, "r1");
    let status =
        |epoch: u64, version: u64, state: JobState, run_ms: u64, runs: u64| JobStatusUpdate {
            job_id: job_id.clone(),
            assignment_epoch: epoch,
            status_version: version,
            state: state as i32,
            task_run_ms: run_ms,
            tasks_run: runs,
            ..JobStatusUpdate::default()
        };
    let old = held.assignment_epoch;
    let acked = link
        .ack_assignments(AckAssignmentsRequest {
            region: "r1".into(),
            region_lease_epoch: lease_1,
            acks: vec![JobEpoch {
                job_id: job_id.clone(),
                assignment_epoch: old,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.results[0].verdict, Verdict::Accepted as i32);
    clock.advance(Duration::from_millis(1_000));
    report(
        &mut link,
        "r1",
        lease_1,
        status(old, 1, JobState::Running, 0, 0),
    )
    .await;
    // One attempt ended in r1 (5 s) and was reported.
    report(
        &mut link,
        "r1",
        lease_1,
        status(old, 2, JobState::Running, 5_000, 1),
    )
    .await;

    // r1 is drained with evacuation: the job is revoked; meanwhile a second
    // attempt ran 3 s before it was stopped, which r1 says only in its
    // release.
    api.drain_region(DrainRegionRequest {
        region: "r1".into(),
        reason: "maintenance".into(),
        evacuate: true,
    })
    .await
    .unwrap();
    // A submit kicks the controller (a kick during a pass is kept for the
    // next), whose pass moves the evacuated region's jobs.
    api.submit_job(submit("kick", spec("other"))).await.unwrap();
    let revoke = loop {
        let event = guarded("revoke", stream_1.next()).await.unwrap().unwrap();
        if event.kind == AssignmentEventKind::Revoke as i32 {
            break event;
        }
    };
    let released = link
        .release_jobs(ReleaseJobsRequest {
            region: "r1".into(),
            region_lease_epoch: lease_1,
            releases: vec![JobRelease {
                job_id: job_id.clone(),
                assignment_epoch: revoke.assignment_epoch,
                task_run_ms: 8_000,
                tasks_run: 2,
                ..JobRelease::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.results[0].verdict, Verdict::Accepted as i32);
    let by_region = |r: &GetUsageResponse| -> BTreeMap<String, (u64, u64)> {
        r.records
            .iter()
            .map(|x| (x.region.clone(), (x.task_run_ms, x.tasks_run)))
            .collect()
    };
    let after_release = usage(&mut api, "t").await;
    assert_eq!(
        by_region(&after_release),
        BTreeMap::from([("r1".to_string(), (8_000, 2))]),
        "r1's two attempts, the reported one not counted again"
    );
    // The release said it once more (a retry): nothing more.
    let again = link
        .release_jobs(ReleaseJobsRequest {
            region: "r1".into(),
            region_lease_epoch: lease_1,
            releases: vec![JobRelease {
                job_id: job_id.clone(),
                assignment_epoch: revoke.assignment_epoch,
                task_run_ms: 8_000,
                tasks_run: 2,
                ..JobRelease::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    // Accepted again, or stale once the job was routed on meanwhile.
    let verdict = again.results[0].verdict;
    assert!(
        verdict == Verdict::Accepted as i32 || verdict == Verdict::StaleEpoch as i32,
        "{again:?}"
    );
    assert_eq!(usage(&mut api, "t").await, after_release);

    // Routed again, to r2, where one attempt of each task runs 4 s.
    let mut watch = api
        .watch_jobs(WatchJobsRequest {
            job_ids: vec![job_id.clone()],
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let in_r2 = loop {
        let now = api
            .get_job(GetJobRequest {
                job_id: job_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if now.region == "r2" && now.assignment_epoch > revoke.assignment_epoch {
            break now;
        }
        guarded("routed to r2", watch.next()).await;
    };
    let new = in_r2.assignment_epoch;
    report(
        &mut link,
        "r2",
        lease_2,
        status(new, 1, JobState::Running, 0, 0),
    )
    .await;
    report(
        &mut link,
        "r2",
        lease_2,
        status(new, 2, JobState::Succeeded, 8_000, 2),
    )
    .await;
    let done = usage(&mut api, "t").await;
    assert_eq!(
        by_region(&done),
        BTreeMap::from([
            ("r1".to_string(), (8_000, 2)),
            ("r2".to_string(), (8_000, 2)),
        ])
    );
    // The job's wait is counted once, when it first ran (in r1).
    let wait = done.total.unwrap().wait.unwrap();
    assert_eq!((wait.jobs, wait.mean_ms), (1, 1_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_years_hourly_records_read_back_exactly_across_pages() {
    use meridian_global::usage::{HOUR_MS, UsageKeys, field};

    const HOURS: u64 = 366 * 24;
    let clock = ManualClock::starting_at_unix_ms(START);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut api = FederationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap();
    // A year of hours before START, two regions, written as the report
    // path writes them (both layouts): well past one page of reads.
    let usage = UsageKeys::new(&running.keys);
    let first = START - HOURS * HOUR_MS;
    let filled = std::time::Instant::now();
    for chunk in (0..HOURS).collect::<Vec<_>>().chunks(1_000) {
        let chunk = chunk.to_vec();
        running
            .db
            .run(|tx, _| {
                let (usage, chunk) = (usage.clone(), chunk.clone());
                async move {
                    for h in chunk {
                        let hour = first + h * HOUR_MS;
                        for region in ["r1", "r2"] {
                            for (name, n) in [
                                (field::RUN_MS, h + 1),
                                (field::RUNS, 1),
                                (field::CPU, (h + 1) * 250),
                            ] {
                                let n = i64::try_from(n).unwrap();
                                tx.add_i64(&usage.by_tenant("year", hour, region, name), n)?;
                                tx.add_i64(&usage.by_hour(hour, "year", region, name), n)?;
                            }
                        }
                    }
                    Ok::<_, meridian_global::GlobalError>(())
                }
            })
            .await
            .unwrap();
    }
    let filled = filled.elapsed();
    let want_ms: u64 = (1..=HOURS).sum();
    for tenant in ["year", ""] {
        let asked = std::time::Instant::now();
        let got = api
            .get_usage(GetUsageRequest {
                tenant: tenant.into(),
                since_unix_ms: first,
                until_unix_ms: START,
                hourly: true,
                ..GetUsageRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        println!(
            "tenant {tenant:?}: {} hourly records of {} counters read in {:?} (filled in {filled:?})",
            got.hours.len(),
            HOURS * 2 * 3,
            asked.elapsed()
        );
        assert_eq!(got.hours.len() as u64, HOURS * 2);
        assert_eq!(got.records.len(), 2);
        for r in &got.records {
            assert_eq!(
                (r.task_run_ms, r.tasks_run),
                (want_ms, HOURS),
                "{}",
                r.region
            );
            assert_eq!(r.cpu_millicore_ms, want_ms * 250);
        }
        let total = got.total.unwrap();
        assert_eq!(total.task_run_ms, 2 * want_ms);
        // A range of one day in the middle holds exactly its 24 hours.
        let day = api
            .get_usage(GetUsageRequest {
                tenant: tenant.into(),
                since_unix_ms: first + 100 * 24 * HOUR_MS,
                until_unix_ms: first + 101 * 24 * HOUR_MS,
                ..GetUsageRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        let want_day: u64 = (100 * 24 + 1..=101 * 24).sum();
        assert_eq!(day.total.unwrap().task_run_ms, 2 * want_day);
    }
}
