//! The client of a run: submits jobs to the global tier over the simulated
//! network, as a user would, and records each acknowledgement it gets.
//!
//! Owns the job mix (exclusive, keep_running, plain; short and long
//! simulated tasks), retries of a submit with the same request id until it
//! is acknowledged (a lost answer makes the repeat a duplicate), and
//! deliberate repeats of acknowledged request ids. Must never record a
//! submit that was not acknowledged.

use std::time::Duration;

use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::transport::{Channel, Endpoint};

use crate::history::{Event, Recorder};

/// One job the client will submit.
#[derive(Debug, Clone)]
pub struct PlannedJob {
    pub request_id: String,
    pub at: Duration,
    pub spec: v1::JobSpec,
    /// Submit it again after the acknowledgement.
    pub repeat: bool,
}

/// The jobs of a run, drawn from its seed.
pub fn jobs(seed: u64, count: usize, window: Duration) -> Vec<PlannedJob> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x10b5);
    let mut out: Vec<PlannedJob> = (0..count)
        .map(|i| {
            let kind = rng.random_range(0..3);
            let long = rng.random_bool(0.6);
            let duration_ms = if long {
                rng.random_range(20_000..60_000)
            } else {
                rng.random_range(500..3_000)
            };
            let spec = v1::JobSpec {
                name: format!("job-{i}"),
                tenant: "sim".into(),
                task_count: rng.random_range(1..=3),
                task: Some(v1::TaskTemplate {
                    kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                        duration_ms,
                        exit_code: 0,
                    })),
                }),
                resources: Some(v1::Resources {
                    cpu_millis: rng.random_range(1..=4) * 250,
                    memory_bytes: rng.random_range(1..=4) << 28,
                    ..Default::default()
                }),
                exclusive: kind == 0,
                on_region_loss: if kind == 1 {
                    v1::RegionLossPolicy::KeepRunning as i32
                } else {
                    v1::RegionLossPolicy::Failover as i32
                },
                // Well inside the region lease, so agents need not stop
                // failover tasks early to honour the grace before it ends.
                stop_grace_period_ms: 500,
                retry: Some(v1::RetryPolicy {
                    max_attempts: 5,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let at_ms = rng.random_range(500..window.as_millis().max(501) as u64);
            PlannedJob {
                request_id: format!("rq-{seed}-{i}"),
                at: Duration::from_millis(at_ms),
                spec,
                repeat: rng.random_bool(0.3),
            }
        })
        .collect();
    out.sort_by_key(|j| j.at);
    out
}

/// Memory of one task of a big job: more than half a simulated node, so
/// no node holds two and a big job's tasks wait for room in turn.
pub const BIG_TASK_MEMORY: u64 = 20 << 30;

/// The big jobs of a run, drawn from its seed apart from [`jobs`] (so the
/// other jobs of a seed stay what they were): 2 or 3 short tasks (0.5 to
/// 2.5 s) of [`BIG_TASK_MEMORY`] each. A region has fewer nodes than a big
/// job has tasks, so its nodes fill up and tasks wait for room; the tasks
/// are short, so the wait is a few seconds and the convergence bound
/// still holds.
pub fn big_jobs(seed: u64, count: usize, window: Duration) -> Vec<PlannedJob> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xb16_b16);
    (0..count)
        .map(|i| {
            let spec = v1::JobSpec {
                name: format!("big-{i}"),
                tenant: "sim".into(),
                task_count: rng.random_range(2..=3),
                task: Some(v1::TaskTemplate {
                    kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                        duration_ms: rng.random_range(500..2_500),
                        exit_code: 0,
                    })),
                }),
                resources: Some(v1::Resources {
                    cpu_millis: 1_000,
                    memory_bytes: BIG_TASK_MEMORY,
                    ..Default::default()
                }),
                on_region_loss: v1::RegionLossPolicy::Failover as i32,
                stop_grace_period_ms: 500,
                retry: Some(v1::RetryPolicy {
                    max_attempts: 5,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let at_ms = rng.random_range(500..window.as_millis().max(501) as u64);
            PlannedJob {
                request_id: format!("rq-{seed}-big-{i}"),
                at: Duration::from_millis(at_ms),
                spec,
                repeat: false,
            }
        })
        .collect()
}

/// The simulated client's pause after a failed submit before it tries the
/// next replica: behaviour of the simulated world (in turmoil's simulated
/// time), not a wait of the test.
const CLIENT_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long after its acknowledgement a job marked `repeat` is submitted
/// again with the same request id (the duplicate the world offers), in
/// simulated time.
const REPEAT_AFTER: Duration = Duration::from_millis(700);

/// A Federation client of the global replica at `url`, through the
/// simulated network; `None` when `url` is not an endpoint.
pub(super) fn federation_client(url: &str) -> Option<FederationClient<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1));
    Some(FederationClient::new(meridian_control::net::connect_lazy(
        endpoint,
    )))
}

/// Submits `job` until acknowledged (or `give_up_after` elapses), trying
/// the global replicas in turn; records every acknowledgement.
async fn submit(
    job: &PlannedJob,
    globals: &[String],
    recorder: &Recorder,
    give_up_after: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + give_up_after;
    let mut i = 0usize;
    while tokio::time::Instant::now() < deadline {
        let url = &globals[i % globals.len()];
        i += 1;
        let Some(mut client) = federation_client(url) else {
            return false;
        };
        let call = client.submit_job(v1::SubmitJobRequest {
            request_id: job.request_id.clone(),
            spec: Some(job.spec.clone()),
        });
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(resp)) => {
                recorder.record(
                    "client",
                    Event::SubmitAcked {
                        request_id: job.request_id.clone(),
                        job_id: resp.into_inner().job_id,
                    },
                );
                return true;
            }
            Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                tracing::error!(%status, "the simulation submitted an invalid job");
                return false;
            }
            _ => tokio::time::sleep(CLIENT_RETRY_PAUSE).await,
        }
    }
    false
}

/// Runs the client: each job at its time, its repeat a little later.
pub async fn run(
    jobs: Vec<PlannedJob>,
    globals: Vec<String>,
    recorder: Recorder,
    give_up: Duration,
) {
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for job in jobs {
        let globals = globals.clone();
        let recorder = recorder.clone();
        tasks.spawn(async move {
            tokio::time::sleep_until(start + job.at).await;
            let acked = submit(&job, &globals, &recorder, give_up).await;
            if acked && job.repeat {
                tokio::time::sleep(REPEAT_AFTER).await;
                submit(&job, &globals, &recorder, give_up).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
