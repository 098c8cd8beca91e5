//! `array`: one array job of 100,000 simulated tasks with a parallelism of
//! 1,000, through real processes.
//!
//! Owns starting a federation (one global replica, one region of four
//! shards and one scheduler replica, one simulated-node agent process),
//! submitting the job, and, while it runs, watching it two ways: the
//! region's own records (its SQLite store, read beside the scheduler) for
//! how many of the job's tasks are bound at once, and `GetJob` at the
//! global tier, timed, with a page of its running tasks (`ListJobTasks`,
//! from the region). Once the job has ended it times `GetJob` and the
//! `meridian job get` command itself (a fresh process each time, as a user
//! runs it). The nodes are sized so that no one shard holds the cap: the
//! job is placed by several shards' leaders. Must never count slowness as
//! a failure; passing the cap or a job that does not succeed is a
//! violation.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::v1;
use meridian_regional::model::{Keys, RegionView};

use crate::Ctx;
use crate::client;
use crate::error::{LoadError, Result};
use crate::federation::{Layout, region_name};
use crate::scenario::{Target, await_nodes};
use crate::stats::Latency;

/// Calls timed once the job has ended.
const GETS_AFTER: usize = 200;
/// `meridian job get` processes timed once the job has ended.
const COMMANDS_AFTER: usize = 20;

/// What the watcher of the region's records saw.
#[derive(Debug, Default)]
struct Watched {
    most_bound: u32,
    reads: u64,
    /// (seconds since submit, tasks bound)
    series: Vec<(f64, f64)>,
    /// Shards whose leaders bound the job's tasks.
    shards: std::collections::BTreeSet<u32>,
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let mut report = ctx.report(
        "One array job of N simulated tasks (1 core, 100 ms each) with a parallelism cap, \
         through real processes (one global replica, one region of 4 shards, one simulated-node \
         agent process); the tasks bound at once read from the region's store while it runs, \
         GetJob, a page of running tasks (ListJobTasks) and the federation console's job page \
         filtered to running tasks timed during the run, then GetJob and the `meridian job get` command timed on \
         the finished job.",
    );
    let tasks = ctx.args.tasks.map_or(ctx.pick(5_000, 100_000), |t| {
        t.min(u64::from(u32::MAX)) as u32
    });
    let parallelism: u32 = ctx.pick(200, 1_000);
    let nodes = ctx.args.nodes.unwrap_or(ctx.pick(50, 200));
    report.param("tasks", tasks);
    report.param("parallelism", parallelism);
    report.param("simulated_nodes", nodes);
    report.param("task_cpu_cores", 1);
    report.param("task_duration_ms", 100);
    report.param("node_cores", 8);
    let layout = Layout {
        global_replicas: 1,
        regions: 1,
        region_replicas: 1,
        shards: 4,
        simulated_nodes: nodes,
        real_agents: 0,
        shard_lease_ms: 2000,
        tenant_limits: true,
    };
    let target = Target::get(ctx, layout).await?;
    let (store, console) = {
        let fed = target.local("array")?;
        let store = fed
            .data_dir()
            .join("regions")
            .join(format!("{}.db", region_name(0)));
        (store, fed.globals.first().and_then(|g| g.metrics))
    };
    await_nodes(
        &target.endpoints,
        u64::from(nodes),
        Duration::from_secs(ctx.pick(60, 300)),
    )
    .await?;
    let leader = client::leader(&target.endpoints).await?;
    let mut api = client::federation(&leader, Duration::from_secs(30))?;

    let mut spec = client::simulated_job("load-array", tasks, 100);
    spec.parallelism = parallelism;
    if let Some(r) = spec.resources.as_mut() {
        r.cpu_millis = 1_000;
        r.memory_bytes = 64 << 20;
    }
    let submitted = Instant::now();
    let job_id = api
        .submit_job(v1::SubmitJobRequest {
            request_id: client::request_id(ctx.args.seed, "array", 0),
            spec: Some(spec),
        })
        .await
        .map_err(|e| LoadError::Federation(format!("SubmitJob: {e}")))?
        .into_inner()
        .job_id;

    let watched = Arc::new(Mutex::new(Watched::default()));
    let watcher = tokio::spawn(watch_records(
        format!("sqlite:{}", store.display()),
        region_name(0),
        job_id.clone(),
        submitted,
        watched.clone(),
    ));

    let guard = Duration::from_secs(ctx.pick(300, 1_800));
    let mut during = Latency::new();
    let mut pages = Latency::new();
    let mut page_errors = 0u64;
    let mut console_pages = Latency::new();
    let mut console_without_rows = 0u64;
    // With authentication on, the console's pages need a session: the
    // run signs in once with its token, as an operator's browser would.
    let console_cookie = match (console, client::token()?) {
        (Some(addr), Some(token)) => crate::scrape::console_session(addr, &token).await,
        _ => None,
    };
    let mut running = Vec::new();
    let job = loop {
        let sent = Instant::now();
        let job = get(&mut api, &job_id).await?;
        during.record(sent.elapsed());
        if !job.region.is_empty() {
            // A page of the running tasks, from the job's region.
            let sent = Instant::now();
            let page = api
                .list_job_tasks(v1::ListJobTasksRequest {
                    job_id: job_id.clone(),
                    states: vec![v1::TaskState::Running as i32],
                    page_size: 100,
                    page_token: String::new(),
                })
                .await;
            match page {
                Ok(_) => pages.record(sent.elapsed()),
                // The region forgets the job once its end is accepted.
                Err(_) => page_errors += 1,
            }
            if let Some(addr) = console {
                let path = format!("/console/jobs/{job_id}?state=running");
                let sent = Instant::now();
                match crate::scrape::fetch_as(addr, &path, console_cookie.as_deref()).await {
                    Some(html) if html.contains("<tr data-task=\"") => {
                        console_pages.record(sent.elapsed());
                    }
                    // No running task at that moment, or the job forgotten.
                    _ => console_without_rows += 1,
                }
            }
        }
        let counts = job.task_counts.unwrap_or_default();
        running.push((
            submitted.elapsed().as_secs_f64(),
            f64::from(counts.placed + counts.starting + counts.running),
        ));
        if is_final(job.state) {
            break job;
        }
        if submitted.elapsed() > guard {
            return Err(LoadError::Federation(format!(
                "the array job did not end within {} s: {:?}",
                guard.as_secs(),
                job.task_counts
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = submitted.elapsed();
    watcher.abort();
    let watched = std::mem::take(
        &mut *watched
            .lock()
            .map_err(|_| LoadError::Federation("the records watcher panicked".into()))?,
    );

    let mut after = Latency::new();
    for _ in 0..GETS_AFTER {
        let sent = Instant::now();
        get(&mut api, &job_id).await?;
        after.record(sent.elapsed());
    }
    let command = time_commands(&leader, &job_id).await?;

    report.result("job_seconds", (took.as_secs_f64() * 10.0).round() / 10.0);
    report.result(
        "tasks_per_s",
        (f64::from(tasks) / took.as_secs_f64().max(0.001)).round(),
    );
    report.result("most_bound_in_region_records", watched.most_bound);
    report.result("region_record_reads", watched.reads);
    report.result(
        "shards_that_bound_tasks",
        watched.shards.iter().copied().collect::<Vec<_>>(),
    );
    report.result("final_state", render_state(job.state));
    report.result("task_counts", format!("{:?}", job.task_counts));
    report.result("get_job_during_run", during.summary());
    report.result("get_job_after_end", after.summary());
    report.result("list_job_tasks_running_page_of_100", pages.summary());
    report.result("list_job_tasks_refused", page_errors);
    report.result(
        "console_job_page_running_page_of_100",
        console_pages.summary(),
    );
    report.result("console_job_page_without_rows", console_without_rows);
    report.result("meridian_job_get_command", command.summary());

    report.target(
        &format!("parallelism {parallelism} never exceeded (region's records)"),
        &format!("at most {parallelism} bound at once"),
        format!(
            "at most {} bound over {} reads of the region's store",
            watched.most_bound, watched.reads
        ),
        watched.most_bound <= parallelism,
    );
    report.target(
        &format!("`meridian job get` on a {tasks}-task job"),
        "under 200 ms",
        format!(
            "p50 {:.1} ms, p99 {:.1} ms over {COMMANDS_AFTER} runs of the command (GetJob alone: \
             p99 {:.2} ms during the run, {:.2} ms after)",
            command.quantile_ms(0.5),
            command.quantile_ms(0.99),
            during.quantile_ms(0.99),
            after.quantile_ms(0.99),
        ),
        command.quantile_ms(0.99) < 200.0,
    );
    if watched.most_bound > parallelism {
        report.violations.push(format!(
            "{} tasks of the job were bound at once, over its parallelism of {parallelism}",
            watched.most_bound
        ));
    }
    if job.state != v1::JobState::Succeeded as i32 {
        report.violations.push(format!(
            "the array job ended {} ({}), not SUCCEEDED",
            render_state(job.state),
            job.failure_reason
        ));
    }
    report.series(
        "tasks bound at once, from the region's records",
        "s since submit",
        "tasks",
        watched.series,
    );
    report.series(
        "tasks placed, starting or running, from GetJob",
        "s since submit",
        "tasks",
        running,
    );
    target.finish(&mut report).await;
    Ok(report)
}

async fn get(api: &mut client::Api, job_id: &str) -> Result<v1::Job> {
    api.get_job(v1::GetJobRequest {
        job_id: job_id.to_string(),
    })
    .await
    .map_err(|e| LoadError::Federation(format!("GetJob: {e}")))?
    .into_inner()
    .job
    .ok_or_else(|| LoadError::Federation("GetJob returned no job".into()))
}

fn is_final(state: i32) -> bool {
    [
        v1::JobState::Succeeded,
        v1::JobState::Failed,
        v1::JobState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

fn render_state(state: i32) -> String {
    v1::JobState::try_from(state)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| state.to_string())
}

/// Reads the region's store over and over while the job runs: how many of
/// its tasks are bound (PLACED, STARTING, RUNNING) in each read, and by
/// which shards. Each read is one snapshot transaction of the whole
/// region, so what it counts was true at one commit.
async fn watch_records(
    url: String,
    region: String,
    job_id: String,
    start: Instant,
    out: Arc<Mutex<Watched>>,
) {
    let Ok(db) = meridian_store::open(&url).await else {
        return;
    };
    let keys = Keys::new(&region);
    loop {
        let view = db
            .run(|tx, _| {
                let keys = keys.clone();
                async move { RegionView::read(&tx, &keys).await }
            })
            .await;
        if let Ok(view) = view {
            let mut bound = 0u32;
            let mut shards = Vec::new();
            for ((job, _), block) in &view.blocks {
                if *job != job_id {
                    continue;
                }
                for t in block.tasks.iter().filter(|t| t.is_bound()) {
                    bound += 1;
                    shards.push(t.shard);
                }
            }
            if let Ok(mut w) = out.lock() {
                w.reads += 1;
                w.most_bound = w.most_bound.max(bound);
                w.series
                    .push((start.elapsed().as_secs_f64(), f64::from(bound)));
                w.shards.extend(shards);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `meridian job get JOB` [`COMMANDS_AFTER`] times as a user would (a
/// new process each time, this same binary), timing each to its exit.
async fn time_commands(endpoint: &str, job_id: &str) -> Result<Latency> {
    let exe = std::env::current_exe().map_err(|e| LoadError::io("locating the binary", e))?;
    let mut out = Latency::new();
    for _ in 0..COMMANDS_AFTER {
        let sent = Instant::now();
        let status = tokio::process::Command::new(&exe)
            .envs(client::child_env()?)
            .args(["job", "get", "--endpoint", endpoint, job_id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| LoadError::io("running meridian job get", e))?;
        out.record(sent.elapsed());
        if !status.success() {
            return Err(LoadError::Federation(format!(
                "`meridian job get {job_id}` exited {status}"
            )));
        }
    }
    Ok(out)
}
