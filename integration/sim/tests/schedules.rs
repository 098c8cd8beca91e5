//! A periodic job through a kill of the global leader at its tick, in the
//! deterministic simulation (issue 22).
//!
//! Two global replicas share one store on simulated time; a client creates
//! a `* * * * *` schedule (overlap ALLOW, missed ticks RUN_ONCE) through the
//! Federation API over the simulated network. At the first tick the leader
//! is crashed, at a point the seed picks: parked where the tick is due and
//! nothing is written, parked after the tick's job commit and before the
//! schedule's record of it, a little before the tick, or a little after
//! it. The other replica takes over, the crashed one comes back as a
//! standby, and the world runs through two more ticks. The client then
//! reads the schedule's jobs (ListJobs) and record (GetSchedule): exactly
//! one job per tick, under the tick's request id, none skipped.
//!
//! The world is built here rather than by `meridian_sim::run`, whose
//! workload and fault plan are drawn from the seed: this test needs its own
//! client (CreateSchedule, ListJobs, GetSchedule) and one kill at an exact
//! time, and its replicas need the ticker's stage hook, which
//! `world::hosts::global` does not take. No region or agents: the property
//! is the global tier's (which jobs it creates), and the jobs wait there.
//!
//! `SIM_SEED=S` runs seed S alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use meridian_global::schedules::ticker::{Stage, StageHook};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_sim::clock::{SIM_EPOCH_UNIX_MS, SimClock};
use meridian_sim::gate::PauseGate;
use meridian_sim::net::TurmoilNet;
use meridian_sim::observe::{self, RunContext};
use meridian_sim::{Event, Recorder, Scope};
use meridian_store::memory::MemoryBackend;
use meridian_store::{Backend, Database, RetryOptions};
use parking_lot::Mutex;
use tonic::transport::Endpoint;

const GLOBAL_PORT: u16 = 7000;
const SCHEDULE: &str = "every-minute";
const MINUTE_MS: u64 = 60_000;
/// The simulation starts on a minute, so the first tick is one minute in.
const FIRST_TICK_MS: u64 = SIM_EPOCH_UNIX_MS + MINUTE_MS;
/// Ticks the run covers: the one of the kill and two after it.
const TICKS: u64 = 3;
/// When the client reads the result: after the last tick, before the next.
const READ_AT: Duration = Duration::from_secs(TICKS * 60 + 20);
/// When the crashed leader is started again (as a standby by then).
const RESTART_AFTER: Duration = Duration::from_secs(20);
const LEADER_LEASE: Duration = Duration::from_secs(2);

const SEEDS: u64 = 16;

/// Where the leader of the first tick dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillPoint {
    /// Parked where the tick is due, nothing written, then crashed.
    AtTheDueTick,
    /// Parked after the tick's job commit, before the record, then crashed.
    AfterTheJobCommit,
    /// Crashed this long before the tick.
    Before(Duration),
    /// Crashed this long after the tick.
    After(Duration),
}

/// Where seed `seed` kills the leader: the kind cycles with the seed, the
/// offset (whole simulation steps of 10 ms) moves with every cycle.
fn kill_point(seed: u64) -> KillPoint {
    const BEFORE_MS: [u64; 4] = [10, 50, 200, 1_000];
    const AFTER_MS: [u64; 4] = [0, 10, 30, 300];
    let round = ((seed / 4) % 4) as usize;
    match seed % 4 {
        0 => KillPoint::AtTheDueTick,
        1 => KillPoint::AfterTheJobCommit,
        2 => KillPoint::Before(Duration::from_millis(BEFORE_MS[round])),
        _ => KillPoint::After(Duration::from_millis(AFTER_MS[round])),
    }
}

/// The replica parked by the hook, and the job it had committed, if any.
#[derive(Debug, Default)]
struct Parked {
    host: Option<String>,
    job_id: Option<String>,
}

/// Parks the first replica that reaches `point` of the first tick; the
/// harness then crashes it.
fn hook(
    point: KillPoint,
    host: String,
    fired: Arc<AtomicBool>,
    parked: Arc<Mutex<Parked>>,
) -> StageHook {
    StageHook(Arc::new(move |stage: Stage| {
        let (tick, job_id) = match &stage {
            Stage::Due { tick, .. } => (*tick, None),
            Stage::Submitted { tick, job_id, .. } => (*tick, Some(job_id.clone())),
        };
        let here = tick == FIRST_TICK_MS
            && match point {
                KillPoint::AtTheDueTick => job_id.is_none(),
                KillPoint::AfterTheJobCommit => job_id.is_some(),
                _ => false,
            };
        if here && !fired.swap(true, Ordering::SeqCst) {
            let mut p = parked.lock();
            p.host = Some(host.clone());
            p.job_id = job_id;
            Box::pin(std::future::pending::<()>()) as BoxFuture<'static, ()>
        } else {
            Box::pin(std::future::ready(()))
        }
    }))
}

/// A global replica, as the simulation's own hosts start one, with the
/// stage hook of this run.
async fn global(
    name: String,
    store: Arc<dyn Backend>,
    seed: u64,
    hook: StageHook,
) -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::net::SocketAddr::new(turmoil::lookup(name.as_str()), GLOBAL_PORT);
    let mut config = meridian_global::GlobalConfig::new("memory:", addr);
    config.name = name.clone();
    config.seed = seed;
    config.leader_lease = LEADER_LEASE;
    config.leader_safety_margin = LEADER_LEASE / 5;
    config.skew_margin = Duration::from_secs(1);
    config.schedule_hook = Some(hook);
    let clock = SimClock::shared(Default::default(), PauseGate::default());
    let db = Database::with_options(store, RetryOptions::default(), seed).with_clock(clock.clone());
    match meridian_global::server::start_with(config, db, clock).await {
        Ok(_running) => std::future::pending::<()>().await,
        Err(e) => tracing::error!(error = %e, host = %name, "global replica did not start"),
    }
    Ok(())
}

fn create_request() -> v1::CreateScheduleRequest {
    let job = v1::JobSpec {
        name: "tick".into(),
        task_count: 1,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                duration_ms: 1_000,
                exit_code: 0,
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: 100,
            memory_bytes: 1 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    v1::CreateScheduleRequest {
        schedule_id: SCHEDULE.into(),
        spec: Some(v1::ScheduleSpec {
            tenant: "sim".into(),
            cron: "* * * * *".into(),
            time_zone: String::new(),
            job: Some(job),
            overlap_policy: v1::OverlapPolicy::Allow.into(),
            missed_tick_policy: v1::MissedTickPolicy::RunOnce.into(),
            starting_deadline_ms: 0,
        }),
        paused: false,
    }
}

/// The simulated client's pause before it tries the next replica
/// (simulated time; behaviour of the world, not a wait of the test).
const CLIENT_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Time of the simulated world. Inside turmoil's simulation a tokio sleep
/// passes simulated time (no wall time passes): how the simulated client
/// paces itself is part of the world the seed describes, not a wait of the
/// test for a condition.
mod simulated_time {
    use std::time::Duration;

    /// The simulated client lets `simulated` pass.
    pub async fn pass(simulated: Duration) {
        tokio::time::sleep(simulated).await;
    }

    /// The simulated client waits until the world's clock reads `at` since
    /// the simulation began.
    pub async fn until(at: Duration) {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        pass(at.saturating_sub(now)).await;
    }
}

fn client_of(url: &str) -> Option<FederationClient<tonic::transport::Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string()).ok()?;
    let endpoint = endpoint.connect_timeout(Duration::from_secs(1));
    Some(FederationClient::new(meridian_control::net::connect_lazy(
        endpoint,
    )))
}

/// What the client read at the end: the schedule's jobs and its record.
type Read = (Vec<v1::Job>, v1::Schedule);

/// Creates the schedule (trying the replicas in turn until one accepts),
/// then at [`READ_AT`] reads its jobs and record.
async fn client(
    urls: Vec<String>,
    out: Arc<Mutex<Option<Read>>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut i = 0usize;
    loop {
        let url = &urls[i % urls.len()];
        i += 1;
        if let Some(mut c) = client_of(url) {
            let call = c.create_schedule(create_request());
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                break;
            }
        }
        simulated_time::pass(CLIENT_RETRY_PAUSE).await;
    }
    simulated_time::until(READ_AT).await;
    loop {
        let url = &urls[i % urls.len()];
        i += 1;
        if let Some(mut c) = client_of(url) {
            let list = c.list_jobs(v1::ListJobsRequest {
                label_selector: vec![v1::LabelRequirement {
                    key: "meridian.schedule".into(),
                    op: v1::LabelOperator::In.into(),
                    values: vec![SCHEDULE.into()],
                }],
                page_size: 1000,
                ..Default::default()
            });
            let jobs = tokio::time::timeout(Duration::from_secs(2), list).await;
            let get = c.get_schedule(v1::GetScheduleRequest {
                schedule_id: SCHEDULE.into(),
            });
            let schedule = tokio::time::timeout(Duration::from_secs(2), get).await;
            if let (Ok(Ok(jobs)), Ok(Ok(schedule))) = (jobs, schedule)
                && let Some(schedule) = schedule.into_inner().schedule
            {
                *out.lock() = Some((jobs.into_inner().jobs, schedule));
                return Ok(());
            }
        }
        simulated_time::pass(CLIENT_RETRY_PAUSE).await;
    }
}

/// What one seed's run saw.
#[derive(Debug)]
struct Run {
    point: KillPoint,
    killed: String,
    killed_at: Duration,
    /// The job the killed leader had committed for the first tick.
    committed: Option<String>,
    /// Holders of the global lease after the kill, by host.
    leaders_after: Vec<String>,
    jobs: Vec<v1::Job>,
    schedule: v1::Schedule,
}

/// The host that holds the global lease last, per the history.
fn last_leader(recorder: &Recorder) -> Option<String> {
    recorder
        .snapshot()
        .records()
        .iter()
        .rev()
        .find(|r| {
            matches!(
                r.event,
                Event::LeaderChanged {
                    scope: Scope::Global,
                    ..
                }
            )
        })
        .map(|r| r.source.clone())
}

fn run(seed: u64) -> Run {
    TurmoilNet::install();
    let _entropy = meridian_control::entropy::seed_this_thread(seed);
    let recorder = Recorder::new(Arc::new(|| turmoil::sim_elapsed().unwrap_or_default()));
    let mut scopes = BTreeMap::new();
    scopes.insert(
        meridian_global::keys::Keys::new("default").leader_fence(),
        Scope::Global,
    );
    let _ctx = observe::enter(Arc::new(RunContext {
        recorder: recorder.clone(),
        scopes,
    }));
    let point = kill_point(seed);
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(READ_AT + Duration::from_secs(30))
        .tick_duration(Duration::from_millis(10))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .build();
    let fired = Arc::new(AtomicBool::new(false));
    let parked = Arc::new(Mutex::new(Parked::default()));
    let names: Vec<String> = (0..2).map(|i| format!("global-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let hook = hook(point, name.clone(), fired.clone(), parked.clone());
        let (host, store) = (name.clone(), store.clone());
        let seed = seed.wrapping_mul(31).wrapping_add(i as u64);
        sim.host(name.as_str(), move || {
            global(host.clone(), store.clone(), seed, hook.clone())
        });
    }
    let urls = names
        .iter()
        .map(|h| format!("http://{h}:{GLOBAL_PORT}"))
        .collect();
    let read = Arc::new(Mutex::new(None));
    let out = read.clone();
    sim.client("client", client(urls, out));

    let tick = Duration::from_millis(MINUTE_MS);
    let mut killed: Option<(String, Duration)> = None;
    let mut restarted = false;
    while read.lock().is_none() {
        let now = sim.elapsed();
        if killed.is_none() {
            let victim = match point {
                KillPoint::AtTheDueTick | KillPoint::AfterTheJobCommit => {
                    parked.lock().host.clone()
                }
                KillPoint::Before(d) if now + d >= tick => last_leader(&recorder),
                KillPoint::After(d) if now >= tick + d => last_leader(&recorder),
                _ => None,
            };
            if let Some(victim) = victim {
                sim.crash(victim.as_str());
                killed = Some((victim, now));
            }
        }
        if let Some((victim, at)) = &killed
            && !restarted
            && now >= *at + RESTART_AFTER
        {
            sim.bounce(victim.as_str());
            restarted = true;
        }
        sim.step()
            .unwrap_or_else(|e| panic!("seed {seed}: the simulation failed: {e}"));
    }
    let (killed, killed_at) = killed.unwrap_or_else(|| panic!("seed {seed}: no leader was killed"));
    let leaders_after = recorder
        .snapshot()
        .records()
        .iter()
        .filter(|r| {
            r.at >= killed_at
                && matches!(
                    r.event,
                    Event::LeaderChanged {
                        scope: Scope::Global,
                        ..
                    }
                )
        })
        .map(|r| r.source.clone())
        .collect();
    let (jobs, schedule) = read
        .lock()
        .take()
        .unwrap_or_else(|| panic!("seed {seed}: no read"));
    let committed = parked.lock().job_id.clone();
    Run {
        point,
        killed,
        killed_at,
        committed,
        leaders_after,
        jobs,
        schedule,
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        Some(seed) => vec![seed],
        None => (0..SEEDS).collect(),
    }
}

#[test]
fn a_minutely_schedule_makes_exactly_one_job_per_tick_through_a_kill_of_the_global_leader_at_the_tick()
 {
    for seed in seeds() {
        let r = run(seed);
        let ctx = format!(
            "seed {seed}, {:?}: killed {} at {:?}",
            r.point, r.killed, r.killed_at
        );
        // The kill landed around the first tick, and the other replica led
        // after it.
        let tick = Duration::from_millis(MINUTE_MS);
        let landed = match r.point {
            KillPoint::Before(d) => r.killed_at == tick - d,
            KillPoint::After(d) => r.killed_at == tick + d,
            // Parked by the hook on the tick's own pass.
            KillPoint::AtTheDueTick | KillPoint::AfterTheJobCommit => {
                r.killed_at >= tick && r.killed_at < tick + Duration::from_secs(1)
            }
        };
        assert!(landed, "{ctx}: the kill is not where the seed put it");
        assert!(
            r.leaders_after.first().is_some_and(|h| *h != r.killed),
            "{ctx}: the other replica did not take over: {:?}",
            r.leaders_after
        );
        let s = &r.schedule;
        let expected: Vec<u64> = (0..TICKS).map(|k| FIRST_TICK_MS + k * MINUTE_MS).collect();
        let mut by_tick: BTreeMap<u64, Vec<&v1::Job>> = BTreeMap::new();
        for job in &r.jobs {
            let prefix = format!("schedule/{SCHEDULE}/{}/", s.created_at_unix_ms);
            let tick: u64 = job
                .request_id
                .strip_prefix(&prefix)
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "{ctx}: job {} has request id {:?}",
                        job.job_id, job.request_id
                    )
                });
            by_tick.entry(tick).or_default().push(job);
        }
        assert_eq!(
            by_tick.keys().copied().collect::<Vec<_>>(),
            expected,
            "{ctx}: the ticks with a job"
        );
        for (tick, jobs) in &by_tick {
            assert_eq!(jobs.len(), 1, "{ctx}: tick {tick} has {} jobs", jobs.len());
        }
        assert_eq!(s.skipped_ticks, 0, "{ctx}: skipped ticks");
        assert_eq!(s.last_tick_unix_ms, expected[expected.len() - 1], "{ctx}");
        assert_eq!(
            s.last_job_id, by_tick[&s.last_tick_unix_ms][0].job_id,
            "{ctx}"
        );
        if r.point == KillPoint::AfterTheJobCommit {
            // The next leader's submit of the tick found the killed
            // leader's job by its request id.
            let committed = r
                .committed
                .clone()
                .unwrap_or_else(|| panic!("{ctx}: no commit"));
            assert_eq!(by_tick[&FIRST_TICK_MS][0].job_id, committed, "{ctx}");
        }
        // Which leader made the first tick's job: its creation time says
        // whether the killed leader committed it (at the tick) or the next
        // one did (after its takeover).
        let first = by_tick[&FIRST_TICK_MS][0];
        eprintln!(
            "{ctx}: {} jobs, one per tick; first tick's job created {} ms after the tick; leaders after the kill {:?}",
            r.jobs.len(),
            first.created_at_unix_ms.saturating_sub(FIRST_TICK_MS),
            r.leaders_after
        );
    }
}
