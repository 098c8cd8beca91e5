//! Accounting end to end on a whole federation of processes (`meridian
//! dev`: global replicas, two regions' replicas, agents): jobs of two
//! tenants pinned to each region, with known resources, run; then
//! `meridian usage --json` (the CLI process, through the real API) must
//! equal the sum over the jobs' task records (allocated resources times
//! each task's end minus start, as the agents reported them), per tenant and
//! region, and the table's TOTAL row must say the same.
//!
//! Nothing sleeps to wait for a condition: the jobs' ends come from the
//! WatchJobs tracker of the federation support.

use crate::federation;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use federation::{Dev, Sizes, Tracker, submit_all};
use meridian_proto::v1;

/// One job of the run: tenant, region, tasks, ms per task, cpu millis,
/// memory MiB, exit code.
type Planned = (&'static str, &'static str, u32, u64, u64, u64, i32);

const PLAN: [Planned; 5] = [
    ("acme", "us-east", 3, 300, 250, 128, 0),
    ("acme", "eu-west", 2, 500, 1000, 512, 0),
    ("globex", "us-east", 2, 200, 500, 256, 0),
    ("globex", "eu-west", 1, 400, 2000, 1024, 0),
    // A failing task runs too, and counts.
    ("globex", "us-east", 1, 250, 300, 64, 3),
];

fn spec(p: &Planned) -> v1::JobSpec {
    let (tenant, region, tasks, ms, cpu, mib, exit_code) = *p;
    v1::JobSpec {
        name: format!("usage-{tenant}-{region}"),
        tenant: tenant.into(),
        task_count: tasks,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                duration_ms: ms,
                exit_code,
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: cpu,
            memory_bytes: mib << 20,
            ..Default::default()
        }),
        allowed_regions: vec![region.into()],
        ..Default::default()
    }
}

/// What the task records say one (tenant, region) used.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sums {
    tasks_run: u64,
    task_run_ms: u64,
    cpu_millicore_ms: u64,
    memory_mib_ms: u64,
}

fn number(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.parse().expect("a number"),
        serde_json::Value::Number(n) => n.as_u64().expect("a number"),
        // proto3 JSON leaves zeros out.
        serde_json::Value::Null => 0,
        other => panic!("not a number: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridian_usage_equals_the_sum_over_the_task_records_of_a_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(
        &dir.path().join("dev"),
        Sizes {
            regions: 2,
            shards: 1,
            simulated_nodes: 8,
            base_port: 18400,
        },
    );
    let mut client = dev.client();
    let mut tracker = Tracker::start(dev.client()).await;
    let acked = submit_all(&mut client, "usage", PLAN.iter().map(spec).collect(), 10).await;
    let ids: BTreeSet<String> = acked.values().cloned().collect();
    assert_eq!(ids.len(), PLAN.len());
    let (_, _) = tracker
        .await_all_final(&mut client, &ids, Duration::from_secs(120))
        .await;

    // The ground truth: every job's task records, as GetJob shows them.
    let mut truth: BTreeMap<(String, String), Sums> = BTreeMap::new();
    for id in &ids {
        let request = v1::GetJobRequest { job_id: id.clone() };
        let job = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.get_job(r).await }
            })
            .await
            .expect("get job")
            .job
            .expect("job");
        let spec = job.spec.clone().expect("spec");
        let planned = PLAN
            .iter()
            .find(|p| spec.name == format!("usage-{}-{}", p.0, p.1) && spec.task_count == p.2)
            .expect("planned");
        let want = if planned.6 == 0 {
            v1::JobState::Succeeded
        } else {
            v1::JobState::Failed
        };
        assert_eq!(job.state, want as i32, "{job:?}");
        assert_eq!(job.region, planned.1);
        let res = spec.resources.expect("resources");
        let sums = truth
            .entry((spec.tenant.clone(), job.region.clone()))
            .or_default();
        for t in &job.tasks {
            assert!(t.started_at_unix_ms > 0, "{id}/{}: {t:?}", t.index);
            let ran = t.finished_at_unix_ms - t.started_at_unix_ms;
            // A simulated task runs at least its duration.
            assert!(ran >= planned.3, "{id}/{}: ran {ran} ms", t.index);
            sums.tasks_run += 1;
            sums.task_run_ms += ran;
            sums.cpu_millicore_ms += res.cpu_millis * ran;
            sums.memory_mib_ms += (res.memory_bytes >> 20) * ran;
        }
    }

    // `meridian usage --json`, one tenant at a time, then all of them.
    for tenant in ["acme", "globex"] {
        let out = dev.cli(&["usage", "--tenant", tenant, "--since", "1h", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let records = json["records"].as_array().expect("records");
        let mut got = BTreeMap::new();
        for r in records {
            got.insert(
                (
                    r["tenant"].as_str().unwrap_or_default().to_string(),
                    r["region"].as_str().unwrap_or_default().to_string(),
                ),
                Sums {
                    tasks_run: number(&r["tasks_run"]),
                    task_run_ms: number(&r["task_run_ms"]),
                    cpu_millicore_ms: number(&r["cpu_millicore_ms"]),
                    memory_mib_ms: number(&r["memory_mib_ms"]),
                },
            );
        }
        let want: BTreeMap<(String, String), &Sums> = truth
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(k, v)| (k.clone(), v))
            .collect();
        assert_eq!(
            got.iter()
                .map(|(k, v)| (k.clone(), v))
                .collect::<BTreeMap<_, _>>(),
            want,
            "{tenant}"
        );
        // Each job's wait counted once.
        let jobs = PLAN.iter().filter(|p| p.0 == tenant).count() as u64;
        assert_eq!(number(&json["total"]["wait"]["jobs"]), jobs, "{out}");
    }
    let table = dev.cli(&["usage", "--since", "1h"]);
    let total = table
        .lines()
        .find(|l| l.trim_start().starts_with("TOTAL"))
        .unwrap_or_else(|| panic!("no TOTAL row in\n{table}"));
    let cells: Vec<&str> = total.split_whitespace().collect();
    let tasks: u64 = truth.values().map(|s| s.tasks_run).sum();
    let cpu_ms: u64 = truth.values().map(|s| s.cpu_millicore_ms).sum();
    assert_eq!(cells[1], tasks.to_string(), "{table}");
    let cpu_s: f64 = cells[3].parse().expect("CPU-S");
    assert!(
        (cpu_s - cpu_ms as f64 / 1e6).abs() < 0.0005,
        "{cpu_s} vs {cpu_ms} millicore-ms\n{table}"
    );
}
