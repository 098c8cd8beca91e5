//! `submit`: unary and batched submit throughput and latency through gRPC.
//!
//! Owns three closed-loop phases against the global leader (a reference
//! read, `ListRegions`, for the gRPC floor of this machine; unary
//! `SubmitJob`; batched `SubmitJobs`) and the checks that every distinct
//! request id got its own job, a repeated request id got the same job, and
//! acknowledged jobs can be read back. Must never count a slow call as a
//! failure.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use meridian_control::rpc::Refusal;
use meridian_proto::v1;
use rand::SeedableRng as _;
use rand::seq::IndexedRandom as _;

use crate::Ctx;
use crate::client;
use crate::error::Result;
use crate::federation::Layout;
use crate::scenario::Target;
use crate::stats::{Latency, Timeline, rate};

/// One phase's numbers.
struct Phase {
    latency: Latency,
    jobs: u64,
    calls: u64,
    errors: u64,
    /// Failed calls or items by gRPC code, with one example message each,
    /// so a report says what the failures were.
    error_kinds: BTreeMap<String, (u64, String)>,
    elapsed: Duration,
    timeline: Timeline,
    acked: Vec<(String, String)>,
}

impl Phase {
    fn new(start: Instant) -> Self {
        Phase {
            latency: Latency::new(),
            jobs: 0,
            calls: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            elapsed: Duration::ZERO,
            timeline: Timeline::new(start),
            acked: Vec::new(),
        }
    }

    /// Adds one worker's numbers to these.
    fn merge(&mut self, p: Phase) {
        self.latency.merge(&p.latency);
        self.jobs += p.jobs;
        self.calls += p.calls;
        self.errors += p.errors;
        for (code, (count, example)) in p.error_kinds {
            let e = self.error_kinds.entry(code).or_insert((0, example));
            e.0 += count;
        }
        self.timeline.merge(&p.timeline);
        self.acked.extend(p.acked);
    }

    fn fail(&mut self, count: u64, code: tonic::Code, message: &str) {
        self.errors += count;
        let e = self
            .error_kinds
            .entry(format!("{code:?}"))
            .or_insert_with(|| (0, message.to_string()));
        e.0 += count;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Reference,
    Unary,
    Batched(usize),
}

async fn phase(url: &str, seed: u64, kind: Kind, workers: usize, d: Duration) -> Result<Phase> {
    let channels: Vec<_> = (0..4)
        .map(|_| client::federation(url, Duration::from_secs(30)))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let end = start + d;
    let mut handles = Vec::new();
    for w in 0..workers {
        let c = channels[w % channels.len()].clone();
        let spec = client::simulated_job("load-submit", 1, 1000);
        handles.push(tokio::spawn(worker(c, kind, seed, w, spec, start, end)));
    }
    let mut all = Phase::new(start);
    for h in handles {
        if let Ok(p) = h.await {
            all.merge(p);
        }
    }
    all.elapsed = start.elapsed();
    Ok(all)
}

/// One closed-loop submitter of a phase: calls until `end`, each call
/// after the answer to the one before.
async fn worker(
    mut c: client::Api,
    kind: Kind,
    seed: u64,
    w: usize,
    spec: v1::JobSpec,
    start: Instant,
    end: Instant,
) -> Phase {
    let mut p = Phase::new(start);
    let mut n = 0u64;
    while Instant::now() < end {
        let t = Instant::now();
        let before = p.jobs;
        match kind {
            Kind::Reference => match c.list_regions(v1::ListRegionsRequest {}).await {
                Ok(_) => p.jobs += 1,
                Err(e) => p.fail(1, e.code(), e.message()),
            },
            Kind::Unary => {
                n += 1;
                let rid = client::request_id(seed, &format!("u{w}"), n);
                let req = v1::SubmitJobRequest {
                    request_id: rid.clone(),
                    spec: Some(spec.clone()),
                };
                match c.submit_job(req).await {
                    Ok(r) => {
                        p.jobs += 1;
                        p.acked.push((rid, r.into_inner().job_id));
                    }
                    Err(e) => p.fail(1, e.code(), e.message()),
                }
            }
            Kind::Batched(size) => {
                let items: Vec<_> = (0..size)
                    .map(|_| {
                        n += 1;
                        v1::SubmitJobRequest {
                            request_id: client::request_id(seed, &format!("b{w}"), n),
                            spec: Some(spec.clone()),
                        }
                    })
                    .collect();
                let rids: Vec<String> = items.iter().map(|i| i.request_id.clone()).collect();
                match c.submit_jobs(v1::SubmitJobsRequest { items }).await {
                    Ok(r) => {
                        for (rid, res) in rids.into_iter().zip(r.into_inner().results) {
                            match res.outcome {
                                Some(v1::submit_job_result::Outcome::Accepted(a)) => {
                                    p.jobs += 1;
                                    p.acked.push((rid, a.job_id));
                                }
                                Some(v1::submit_job_result::Outcome::Error(e)) => {
                                    p.fail(1, tonic::Code::from_i32(e.code), &e.message)
                                }
                                None => p.fail(1, tonic::Code::Unknown, "no outcome"),
                            }
                        }
                    }
                    Err(e) => p.fail(size as u64, e.code(), e.message()),
                }
            }
        }
        p.calls += 1;
        let done = Instant::now();
        p.latency.record(done - t);
        p.timeline.add(done, p.jobs - before);
    }
    p
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> Result<crate::Report> {
    let seed = ctx.args.seed;
    let mut report = ctx.report(
        "Closed-loop submitters against the global leader: a reference read (ListRegions), unary \
         SubmitJob, then batched SubmitJobs; each job is one simulated task.",
    );
    let layout = Layout {
        global_replicas: 1,
        regions: 1,
        region_replicas: 1,
        shards: 2,
        simulated_nodes: 0,
        real_agents: 0,
        shard_lease_ms: 1000,
        tenant_limits: false,
    };
    let target = Target::get(ctx, layout).await?;
    let url = client::leader(&target.endpoints).await?;
    let d = ctx.duration(3, 15);
    let workers = ctx.args.concurrency.unwrap_or(ctx.pick(8, 64));
    let batch = ctx.pick(50, 200);
    let batch_workers = (workers / 8).max(2);
    for (k, v) in [
        ("phase_seconds", d.as_secs() as usize),
        ("unary_concurrency", workers),
        ("batch_size", batch),
        ("batch_concurrency", batch_workers),
    ] {
        report.param(k, v);
    }
    report.param(
        "endpoint",
        target.local.is_none().then_some(&target.endpoints),
    );
    // One tenant's admission limits would bound what this measures (the
    // tier's capacity), so a federation started here has them off.
    report.param(
        "tenant_limits",
        if target.local.is_some() {
            "off"
        } else {
            "the target's"
        },
    );
    let bar = ctx.progress(3, "submit");
    let reference = phase(&url, seed, Kind::Reference, workers, d).await?;
    bar.inc(1);
    let unary = phase(&url, seed, Kind::Unary, workers, d).await?;
    bar.inc(1);
    let batched = phase(&url, seed, Kind::Batched(batch), batch_workers, d).await?;
    bar.finish_and_clear();

    report_phases(&mut report, &reference, &unary, &batched);

    // Invariant 2: no request id creates two jobs, none is lost.
    let mut acked = unary.acked;
    acked.extend(batched.acked);
    check_acked(ctx, &mut report, &url, &acked).await?;
    report.notes.push(
        "Closed loop: each submitter waits for its answer before the next call, so latency here \
         is service time; the e2e scenario measures with an open loop. The region has no nodes, \
         so jobs are routed but not placed: the numbers are the global tier's."
            .into(),
    );
    target.finish(&mut report).await;
    Ok(report)
}

/// Rates, latencies, errors and targets of the three phases.
fn report_phases(report: &mut crate::Report, reference: &Phase, unary: &Phase, batched: &Phase) {
    let unary_rate = rate(unary.jobs, unary.elapsed);
    let batched_rate = rate(batched.jobs, batched.elapsed);
    let ref_rate = rate(reference.jobs, reference.elapsed);
    let u = unary.latency.summary();
    report.result("reference_calls_per_s", ref_rate.round());
    report.result("reference_latency", reference.latency.summary());
    report.result("unary_jobs_per_s", unary_rate.round());
    report.result("unary_latency", &u);
    report.result("unary_errors", unary.errors);
    report.result("unary_error_kinds", &unary.error_kinds);
    report.result("batched_jobs_per_s", batched_rate.round());
    report.result("batched_call_latency", batched.latency.summary());
    report.result("batched_errors", batched.errors);
    report.result("batched_error_kinds", &batched.error_kinds);
    report.result(
        "unary_over_reference",
        if ref_rate > 0.0 {
            unary_rate / ref_rate
        } else {
            0.0
        },
    );
    report.target(
        "submit, batched",
        ">= 20,000 jobs/s",
        format!("{batched_rate:.0} jobs/s"),
        batched_rate >= 20_000.0,
    );
    report.target(
        "submit, unary",
        ">= 10,000 jobs/s",
        format!("{unary_rate:.0} jobs/s"),
        unary_rate >= 10_000.0,
    );
    report.target(
        "submit, unary p99",
        "< 10 ms",
        format!("{:.2} ms", u.p99_ms),
        u.p99_ms < 10.0,
    );
    report.series(
        "unary submit throughput",
        "s",
        "jobs/s",
        unary.timeline.series(),
    );
    report.series(
        "batched submit throughput",
        "s",
        "jobs/s",
        batched.timeline.series(),
    );
    report.series(
        "unary submit latency",
        "percentile",
        "ms",
        unary.latency.curve(),
    );
}

/// Checks that no two request ids got one job, and that a sample of the
/// acknowledged jobs reads back with its request id and is not created again
/// by a resubmit of it.
async fn check_acked(
    ctx: &Ctx,
    report: &mut crate::Report,
    url: &str,
    acked: &[(String, String)],
) -> Result<()> {
    let seed = ctx.args.seed;
    let mut by_job: HashMap<&str, &str> = HashMap::new();
    for (rid, job) in acked {
        if let Some(other) = by_job.insert(job, rid)
            && other != rid
        {
            report
                .violations
                .push(format!("request ids {other} and {rid} both got job {job}"));
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let sample: Vec<_> = acked
        .choose_multiple(&mut rng, ctx.pick(300, 1000))
        .cloned()
        .collect();
    let mut c = client::federation(url, Duration::from_secs(30))?;
    let spec = client::simulated_job("load-submit", 1, 1000);
    let mut checked = 0u64;
    for (rid, job) in &sample {
        match c
            .get_job(v1::GetJobRequest {
                job_id: job.clone(),
            })
            .await
        {
            Ok(r)
                if r.get_ref()
                    .job
                    .as_ref()
                    .is_some_and(|j| j.request_id == *rid) => {}
            Ok(_) => report.violations.push(format!(
                "acknowledged job {job} reads back with another request id"
            )),
            Err(s) if Refusal::of(&s) == Refusal::NotFound => report
                .violations
                .push(format!("acknowledged job {job} ({rid}) is lost")),
            Err(_) => continue,
        }
        let again = v1::SubmitJobRequest {
            request_id: rid.clone(),
            spec: Some(spec.clone()),
        };
        if let Ok(r) = c.submit_job(again).await {
            let r = r.into_inner();
            if r.job_id != *job || r.created {
                report.violations.push(format!(
                    "resubmitting {rid} gave job {} (created: {}), first {job}",
                    r.job_id, r.created
                ));
            }
        }
        checked += 1;
    }
    report.result("acknowledged_jobs", acked.len());
    report.result("jobs_read_back_and_resubmitted", checked);
    Ok(())
}
