//! `real`: tiny real processes on the regions' real agents.
//!
//! Owns two measurements of how fast real work flows through the whole
//! federation, as a user of `meridian dev` sees it: one job of many tasks
//! of `true` (constrained to `real=true` nodes), and as many one-task
//! `true` jobs submitted in batched calls (at most 1,000 jobs per call,
//! the API's limit; the calls go out together). Each is timed from the
//! first submit to the event that shows the last job finished, as a
//! `WatchJobs` client sees it; for the separate jobs, the report also says
//! when the last call was answered and when the jobs were seen routed,
//! placed, running and finished. Must never count a job that did not
//! succeed as finished work.

use std::time::{Duration, Instant};

use meridian_proto::v1;

use crate::client;
use crate::error::{LoadError, Result};
use crate::federation::Layout;
use crate::scenario::{Target, await_nodes};
use crate::watch::Watcher;
use crate::{Ctx, Report};

/// What one task needs: the CLI's defaults (0.1 core, 64 MiB), so a real
/// agent of 4 cores runs 40 at once.
fn true_job(name: &str, tasks: u32) -> v1::JobSpec {
    v1::JobSpec {
        name: name.to_string(),
        tenant: "load".into(),
        task_count: tasks,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Command(v1::Command {
                program: "true".into(),
                ..Default::default()
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: 100,
            memory_bytes: 64 << 20,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        node_constraints: vec![v1::LabelRequirement {
            key: "real".into(),
            op: v1::LabelOperator::In as i32,
            values: vec!["true".into()],
        }],
        ..Default::default()
    }
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = ctx.report(
        "Real processes: one job of N tasks of `true` on the real agents (label real=true), \
         then N one-task `true` jobs in batched SubmitJobs calls (1,000 per call, sent together); \
         each timed from the first submit to the WatchJobs event showing the last job finished.",
    );
    let tasks = ctx.pick(200, 2_000);
    let rounds = ctx.pick(1, 3);
    let layout = Layout {
        global_replicas: 2,
        regions: 3,
        region_replicas: 2,
        shards: 4,
        simulated_nodes: 200,
        real_agents: 1,
        shard_lease_ms: 1000,
        tenant_limits: true,
    };
    report.param("tasks", tasks);
    report.param("rounds", rounds);
    let nodes = u64::from(layout.regions) * u64::from(layout.simulated_nodes + layout.real_agents);
    let target = Target::get(ctx, layout).await?;
    if target.local.is_some() {
        await_nodes(&target.endpoints, nodes, Duration::from_secs(120)).await?;
    }
    let watcher = Watcher::start(&target.endpoints).await?;
    let mut c = client::following(&target.endpoints, Duration::from_secs(30))?;
    let guard = Duration::from_secs(120);
    let mut one_job = Vec::new();
    let mut many_jobs = Vec::new();
    let mut failed = 0usize;
    let mut phases = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        let accepted = submit_one_job(&mut c, ctx.args.seed, round, tasks).await?;
        let jobs = vec![accepted.job_id];
        let (took, bad) = finish(&watcher, &jobs, started, guard).await?;
        one_job.push(took);
        failed += bad;

        let started = Instant::now();
        let jobs = submit_separate_jobs(&target.endpoints, ctx.args.seed, round, tasks).await?;
        let answered = started.elapsed();
        let (took, bad) = finish(&watcher, &jobs, started, guard).await?;
        many_jobs.push(took);
        failed += bad;
        phases.push(Phases::of(&watcher, &jobs, started, answered));
    }
    watcher.stop();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let secs = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    report.result("one_job_seconds", secs(&one_job));
    report.result("separate_jobs_seconds", secs(&many_jobs));
    report.result("jobs_not_succeeded", failed);
    report.result("separate_jobs_phases", &phases);
    let one = median(&mut one_job);
    let many = median(&mut many_jobs);
    // The medians as numbers of their own: a comparison of runs
    // (`--compare-insecure`) compares numbers, not lists.
    report.result("one_job_seconds_median", one.as_secs_f64());
    report.result("separate_jobs_seconds_median", many.as_secs_f64());
    let per_s = |d: Duration| f64::from(tasks) / d.as_secs_f64().max(1e-9);
    report.target(
        &format!("one job of {tasks} tasks of `true`, submit to finished (median)"),
        "< 4 s",
        format!("{:.2} s ({:.0} tasks/s)", one.as_secs_f64(), per_s(one)),
        one < Duration::from_secs(4) && failed == 0,
    );
    report.target(
        &format!("{tasks} one-task `true` jobs in batched calls, submit to all finished (median)"),
        "< 4 s",
        format!("{:.2} s ({:.0} jobs/s)", many.as_secs_f64(), per_s(many)),
        many < Duration::from_secs(4) && failed == 0,
    );
    if failed > 0 {
        report
            .violations
            .push(format!("{failed} job(s) ended without succeeding"));
    }
    target.finish(&mut report).await;
    Ok(report)
}

/// Submits one job of `tasks` tasks of `true`.
async fn submit_one_job(
    c: &mut meridian_cli::client::Client,
    seed: u64,
    round: u32,
    tasks: u32,
) -> Result<v1::SubmitJobResponse> {
    let spec = true_job("load-real-array", tasks);
    let request_id = client::request_id(seed, &format!("real-one-{round}"), 0);
    c.call(move |mut f| {
        let req = v1::SubmitJobRequest {
            request_id: request_id.clone(),
            spec: Some(spec.clone()),
        };
        async move { f.submit_job(req).await }
    })
    .await
    .map_err(|e| LoadError::Federation(e.to_string()))
}

/// Submits `tasks` one-task jobs of `true` in batched calls sent together;
/// the ids of the jobs.
async fn submit_separate_jobs(
    endpoints: &str,
    seed: u64,
    round: u32,
    tasks: u32,
) -> Result<Vec<String>> {
    let mut calls = Vec::new();
    for (call, first) in (0..tasks)
        .step_by(meridian_proto::limits::MAX_BATCH_ITEMS)
        .enumerate()
    {
        let n = (tasks - first).min(meridian_proto::limits::MAX_BATCH_ITEMS as u32);
        let items: Vec<v1::SubmitJobRequest> = (0..n)
            .map(|i| v1::SubmitJobRequest {
                request_id: client::request_id(
                    seed,
                    &format!("real-many-{round}-{call}"),
                    u64::from(i),
                ),
                spec: Some(true_job("load-real-one", 1)),
            })
            .collect();
        let mut c = client::following(endpoints, Duration::from_secs(30))?;
        calls.push(tokio::spawn(async move {
            c.call(move |mut f| {
                let req = v1::SubmitJobsRequest {
                    items: items.clone(),
                };
                async move { f.submit_jobs(req).await }
            })
            .await
        }));
    }
    let mut jobs = Vec::new();
    for call in calls {
        let answer = call
            .await
            .map_err(|e| LoadError::Federation(e.to_string()))?
            .map_err(|e| LoadError::Federation(e.to_string()))?;
        for r in answer.results {
            match r.outcome {
                Some(v1::submit_job_result::Outcome::Accepted(a)) => jobs.push(a.job_id),
                other => {
                    return Err(LoadError::Federation(format!(
                        "a batched submit was refused: {other:?}"
                    )));
                }
            }
        }
    }
    Ok(jobs)
}

/// Where the time of one round of separate jobs went, each figure in
/// seconds from the first submit: when the last batched call was answered,
/// and when the last job was first seen in each state on the watch (a job
/// whose states were coalesced into one event is not seen in the earlier
/// ones), with the median job's for comparison.
#[derive(Debug, serde::Serialize)]
struct Phases {
    accepted: f64,
    routed: Spread,
    placed: Spread,
    running: Spread,
    finished: Spread,
}

/// The median and the last of one phase over a round's jobs, in seconds
/// from the first submit, and how many jobs were seen in it.
#[derive(Debug, serde::Serialize)]
struct Spread {
    seen: usize,
    median: f64,
    last: f64,
}

impl Spread {
    fn of(
        jobs: &[String],
        at: &std::collections::HashMap<String, Instant>,
        started: Instant,
    ) -> Self {
        let mut secs: Vec<f64> = jobs
            .iter()
            .filter_map(|j| at.get(j))
            .map(|t| t.saturating_duration_since(started).as_secs_f64())
            .collect();
        secs.sort_by(f64::total_cmp);
        Spread {
            seen: secs.len(),
            median: secs.get(secs.len() / 2).copied().unwrap_or(0.0),
            last: secs.last().copied().unwrap_or(0.0),
        }
    }
}

impl Phases {
    fn of(watcher: &Watcher, jobs: &[String], started: Instant, answered: Duration) -> Self {
        watcher.with(|s| Phases {
            accepted: answered.as_secs_f64(),
            routed: Spread::of(jobs, &s.routed_at, started),
            placed: Spread::of(jobs, &s.placed_at, started),
            running: Spread::of(jobs, &s.running_at, started),
            finished: Spread::of(jobs, &s.finished_at, started),
        })
    }
}

/// Waits for `jobs` to finish; returns the time from `started` to the last
/// one's final event and how many did not succeed.
async fn finish(
    watcher: &Watcher,
    jobs: &[String],
    started: Instant,
    guard: Duration,
) -> Result<(Duration, usize)> {
    let missing = watcher.await_finished(jobs, guard).await;
    if !missing.is_empty() {
        return Err(LoadError::Federation(format!(
            "{} of {} jobs did not finish within {} s",
            missing.len(),
            jobs.len(),
            guard.as_secs()
        )));
    }
    Ok(watcher.with(|s| {
        let last = jobs
            .iter()
            .filter_map(|j| s.finished_at.get(j))
            .max()
            .copied()
            .unwrap_or(started);
        let bad = jobs
            .iter()
            .filter(|j| s.state.get(*j) != Some(&(v1::JobState::Succeeded as i32)))
            .count();
        (last.saturating_duration_since(started), bad)
    }))
}
