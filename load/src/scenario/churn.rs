//! The open-loop churn phase `e2e` and `scale` share.
//!
//! Owns offering jobs on a fixed schedule against the global leader, timing
//! each from its scheduled send to the first event showing it running,
//! sampling the regions' queue depth, and recording what every such phase
//! reports: the convergence and duplicate checks and the common series.
//! Must never shorten the schedule when the system falls behind, and never
//! count slowness as a violation.

use std::time::{Duration, Instant};

use meridian_proto::v1;

use crate::error::Result;
use crate::scenario::{Offered, Target, open_loop, sample_metric};
use crate::stats::{Latency, Timeline};
use crate::watch::{Watcher, duplicate_lines};
use crate::{Ctx, Report};

/// One churn phase.
pub struct Churn<'a> {
    /// Progress bar label.
    pub name: &'a str,
    /// Jobs offered per second.
    pub rate: u64,
    /// How long jobs are offered.
    pub duration: Duration,
    /// The job offered each time.
    pub spec: v1::JobSpec,
    /// How often the regions' queue depth is scraped.
    pub sample_every: Duration,
    /// How long acknowledged jobs may take to be seen running.
    pub wait: Duration,
    /// Title of the queue-depth plot.
    pub depth_title: &'a str,
}

/// What the phase offered and how long its jobs took to run.
pub struct Outcome {
    pub offered: Offered,
    pub latency: Latency,
}

impl Churn<'_> {
    /// Runs the phase against `target`, adding its checks and series to
    /// `report`.
    pub async fn run(self, ctx: &Ctx, target: &Target, report: &mut Report) -> Result<Outcome> {
        let url = crate::client::leader(&target.endpoints).await?;
        let watcher = Watcher::start(&url).await?;
        let start = Instant::now();
        let (depth, sampler) = sample_metric(
            target.region_metrics(),
            "meridian_regional_queue_depth",
            self.sample_every,
            start,
        );
        let bar = ctx.progress(self.duration.as_secs(), self.name);
        let o = open_loop(
            &url,
            ctx.args.seed,
            self.rate,
            self.duration,
            self.spec,
            &bar,
        )
        .await?;
        bar.finish_and_clear();
        let jobs: Vec<String> = o.acked.keys().cloned().collect();
        let missing = watcher.await_running(&jobs, self.wait).await;
        sampler.abort();
        let mut latency = Latency::new();
        let mut running = Timeline::new(start);
        let mut stages = Stages::default();
        watcher.with(|s| {
            for (job, (_, at)) in &o.acked {
                if let Some(r) = s.running_at.get(job) {
                    latency.record(r.saturating_duration_since(*at));
                    running.add(*r, 1);
                    stages.add(*at, s.routed_at.get(job), s.placed_at.get(job), *r);
                }
            }
            report.violations.extend(duplicate_lines(s));
            report.result("watch_events", s.events);
        });
        watcher.stop();
        report.violations.extend(o.id_clashes.iter().cloned());
        if !missing.is_empty() {
            report.result(
                "states_of_jobs_never_seen_running",
                super::states_of(&url, &missing).await,
            );
            report.violations.push(format!(
                "{} acknowledged jobs never ran (e.g. {})",
                missing.len(),
                missing
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        report.result("acknowledged", o.acked.len());
        report.result("submit_errors", &o.errors);
        report.result("submit_error_messages", &o.error_samples);
        report.result("submit_to_running", latency.summary());
        stages.report(report);
        report.series("acknowledged submits", "s", "jobs/s", o.acks.series());
        report.series("jobs seen running", "s", "jobs/s", running.series());
        report.series(
            "submit -> running latency",
            "percentile",
            "ms",
            latency.curve(),
        );
        let depth = depth.lock().map(|v| v.clone()).unwrap_or_default();
        if !depth.is_empty() {
            report.series(self.depth_title, "s", "tasks", depth);
        }
        Ok(Outcome {
            offered: o,
            latency,
        })
    }
}

/// Where a job's time went, by the states the watcher saw it in: from the
/// scheduled send to ROUTED (submit, then routing), ROUTED to PLACED (the
/// hand-off to the region, its intake and a placement round), PLACED to
/// running (the agent starting the task and the report back up). Only jobs
/// seen in all three are counted, so the stages of one job add up.
#[derive(Default)]
struct Stages {
    to_routed: Latency,
    to_placed: Latency,
    to_running: Latency,
}

impl Stages {
    fn add(
        &mut self,
        sent: Instant,
        routed: Option<&Instant>,
        placed: Option<&Instant>,
        running: Instant,
    ) {
        let (Some(routed), Some(placed)) = (routed, placed) else {
            return;
        };
        self.to_routed
            .record(routed.saturating_duration_since(sent));
        self.to_placed
            .record(placed.saturating_duration_since(*routed));
        self.to_running
            .record(running.saturating_duration_since(*placed));
    }

    fn report(&self, report: &mut Report) {
        report.result("stage_scheduled_to_routed", self.to_routed.summary());
        report.result("stage_routed_to_placed", self.to_placed.summary());
        report.result("stage_placed_to_running", self.to_running.summary());
    }
}
