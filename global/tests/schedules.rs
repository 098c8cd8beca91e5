//! Periodic jobs over real gRPC on a manual clock: one job per tick, each
//! under its tick's request id; pause, resume and delete; the overlap
//! policies against a previous run still pending; every bad field refused
//! naming it; the same calls over HTTP/JSON. Time moves only when a test moves it, and a test learns that
//! a tick was handled from the schedule's record (a store watch), never by
//! sleeping.

use crate::common;

use std::time::Duration;

use common::*;
use meridian_control::ManualClock;
use meridian_global::schedules::read_schedule;
use meridian_global::server::{Running, start_with};
use meridian_global::{GlobalConfig, GlobalError};
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::*;
use tonic::Code;
use tonic::transport::Channel;

/// 2026-01-01T09:59:30Z: half a minute before a minute (and an hour)
/// starts, so the first tick of `* * * * *` is 30 s after the start.
const START_MS: u64 = 1_767_261_570_000;
const MINUTE: u64 = 60_000;
const FIRST_TICK: u64 = START_MS + 30_000;

/// A leading replica on a fresh SQLite file whose time is `clock`; leases
/// long enough that moving the clock by minutes never costs the leader its
/// lease, and a controller that runs only when woken.
async fn leader(clock: &ManualClock, dir: &tempfile::TempDir) -> Running {
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.leader_lease = Duration::from_secs(3600);
    config.controller_every = Duration::from_secs(3600);
    config.http = Some("127.0.0.1:0".parse().unwrap());
    let db = meridian_store::open(&url).await.unwrap();
    let running = start_with(config, db, clock.shared()).await.unwrap();
    guarded("leadership", running.wait_leader()).await;
    running
}

async fn client(running: &Running) -> FederationClient<Channel> {
    FederationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap()
}

/// A schedule of `spec("t")` jobs on `cron` (UTC) with `overlap`.
fn create(id: &str, cron: &str, overlap: OverlapPolicy) -> CreateScheduleRequest {
    let mut job = spec("t");
    job.tenant.clear();
    CreateScheduleRequest {
        schedule_id: id.into(),
        spec: Some(ScheduleSpec {
            tenant: "t".into(),
            cron: cron.into(),
            time_zone: String::new(),
            job: Some(job),
            overlap_policy: overlap.into(),
            missed_tick_policy: MissedTickPolicy::RunOnce.into(),
            starting_deadline_ms: 0,
        }),
        paused: false,
    }
}

/// Awaits the stored record of schedule `id` satisfying `done` (a store
/// watch on the record, no polling on time).
async fn schedule_where(
    running: &Running,
    id: &str,
    what: &str,
    done: impl Fn(&Schedule) -> bool,
) -> Schedule {
    guarded(what, async {
        loop {
            let (keys, id) = (running.keys.clone(), id.to_string());
            let (found, changed) = running
                .db
                .run(|tx, _| {
                    let (keys, id) = (keys.clone(), id.clone());
                    async move {
                        let found = read_schedule(&tx, &keys, &id).await?;
                        Ok::<_, GlobalError>((found, tx.watch(&keys.schedule(&id))?))
                    }
                })
                .await
                .unwrap();
            if let Some(schedule) = found
                && done(&schedule)
            {
                return schedule;
            }
            changed.await.unwrap();
        }
    })
    .await
}

/// Awaits schedule `id` having handled the tick at `tick`.
async fn ticked(running: &Running, id: &str, tick: u64) -> Schedule {
    schedule_where(running, id, &format!("tick {tick} of {id}"), |s| {
        s.last_tick_unix_ms >= tick
    })
    .await
}

/// The jobs schedule `id` created, by id.
async fn runs(client: &mut FederationClient<Channel>, id: &str) -> Vec<Job> {
    client
        .list_jobs(ListJobsRequest {
            label_selector: vec![LabelRequirement {
                key: "meridian.schedule".into(),
                op: LabelOperator::In.into(),
                values: vec![id.into()],
            }],
            page_size: 1000,
            ..ListJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
}

async fn get_schedule(client: &mut FederationClient<Channel>, id: &str) -> Schedule {
    client
        .get_schedule(GetScheduleRequest {
            schedule_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap()
}

#[tokio::test]
async fn a_schedule_creates_one_job_per_tick_under_the_request_id_of_its_tick() {
    let clock = ManualClock::starting_at_unix_ms(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut client = client(&running).await;
    let created = client
        .create_schedule(create("every-minute", "* * * * *", OverlapPolicy::Allow))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let schedule = created.schedule.unwrap();
    assert_eq!(schedule.created_at_unix_ms, START_MS);
    assert_eq!(schedule.next_tick_unix_ms, FIRST_TICK);

    for n in 0..3u64 {
        let tick = FIRST_TICK + n * MINUTE;
        clock.advance(Duration::from_millis(tick - clock_now(&clock)));
        let schedule = ticked(&running, "every-minute", tick).await;
        let jobs = runs(&mut client, "every-minute").await;
        assert_eq!(jobs.len() as u64, n + 1, "one job per tick: {jobs:?}");
        let last = jobs.last().unwrap();
        assert_eq!(schedule.last_job_id, last.job_id);
        assert_eq!(schedule.last_run_tick_unix_ms, tick);
        assert_eq!(
            last.request_id,
            format!("schedule/every-minute/{START_MS}/{tick}")
        );
        let spec = last.spec.as_ref().unwrap();
        assert_eq!(spec.tenant, "t");
        assert_eq!(spec.name, "sleepy");
        assert_eq!(
            schedule.last_outcome,
            format!("created job {}", last.job_id)
        );
    }
    let schedule = get_schedule(&mut client, "every-minute").await;
    assert_eq!(schedule.next_tick_unix_ms, FIRST_TICK + 3 * MINUTE);
    assert_eq!(schedule.skipped_ticks, 0);
    // The recorder is the process's, shared with the other tests here: at
    // least this test's three.
    let (status, metrics) = http(running.http_addr.unwrap(), "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let created = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"meridian_global_schedule_ticks_total{outcome="created"} "#))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(created.is_some_and(|n| n >= 3.0), "{metrics}");
    running.shutdown().await;
}

fn clock_now(clock: &ManualClock) -> u64 {
    use meridian_control::Clock;
    clock.now_unix_ms()
}

#[tokio::test]
async fn a_paused_schedule_makes_no_job_and_resumes_from_the_next_tick_and_a_deleted_one_stops() {
    let clock = ManualClock::starting_at_unix_ms(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut client = client(&running).await;
    // The witness ticks with the schedule under test and sorts after it,
    // so once the witness's tick is recorded, the pass has been over the
    // other one.
    for id in ["a-subject", "z-witness"] {
        client
            .create_schedule(create(id, "* * * * *", OverlapPolicy::Allow))
            .await
            .unwrap();
    }
    let paused = client
        .pause_schedule(PauseScheduleRequest {
            schedule_id: "a-subject".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(paused.paused);
    assert_eq!(paused.next_tick_unix_ms, 0);

    clock.advance(Duration::from_millis(FIRST_TICK - START_MS));
    ticked(&running, "z-witness", FIRST_TICK).await;
    assert!(runs(&mut client, "a-subject").await.is_empty());
    // Half a minute later it is resumed: the tick it slept through is not
    // run, the next one is.
    clock.advance(Duration::from_secs(30));
    let resumed = client
        .resume_schedule(ResumeScheduleRequest {
            schedule_id: "a-subject".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(!resumed.paused);
    assert_eq!(resumed.next_tick_unix_ms, FIRST_TICK + MINUTE);
    clock.advance(Duration::from_secs(30));
    ticked(&running, "a-subject", FIRST_TICK + MINUTE).await;
    let jobs = runs(&mut client, "a-subject").await;
    assert_eq!(jobs.len(), 1);
    assert!(
        jobs[0]
            .request_id
            .ends_with(&format!("/{}", FIRST_TICK + MINUTE))
    );

    let deleted = client
        .delete_schedule(DeleteScheduleRequest {
            schedule_id: "a-subject".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(deleted.last_job_id, jobs[0].job_id);
    let gone = client
        .get_schedule(GetScheduleRequest {
            schedule_id: "a-subject".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    clock.advance(Duration::from_secs(60));
    ticked(&running, "z-witness", FIRST_TICK + 2 * MINUTE).await;
    assert_eq!(
        runs(&mut client, "a-subject").await.len(),
        1,
        "the jobs are kept"
    );
    assert_eq!(runs(&mut client, "z-witness").await.len(), 3);
    let listed = client
        .list_schedules(ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed
        .schedules
        .iter()
        .map(|s| s.schedule_id.as_str())
        .collect();
    assert_eq!(ids, ["z-witness"]);
    running.shutdown().await;
}

#[tokio::test]
async fn forbid_skips_a_tick_while_the_previous_run_is_pending_and_replace_cancels_it() {
    let clock = ManualClock::starting_at_unix_ms(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut client = client(&running).await;
    for (id, policy) in [
        ("forbid", OverlapPolicy::Forbid),
        ("replace", OverlapPolicy::Replace),
    ] {
        client
            .create_schedule(create(id, "* * * * *", policy))
            .await
            .unwrap();
    }
    // No region is registered: every run stays PENDING, unfinished.
    clock.advance(Duration::from_millis(FIRST_TICK - START_MS));
    let forbid = ticked(&running, "forbid", FIRST_TICK).await;
    let replace = ticked(&running, "replace", FIRST_TICK).await;
    let (first_forbid, first_replace) = (forbid.last_job_id, replace.last_job_id);

    clock.advance(Duration::from_secs(60));
    let forbid = ticked(&running, "forbid", FIRST_TICK + MINUTE).await;
    assert_eq!(forbid.last_job_id, first_forbid);
    assert_eq!(
        forbid.last_outcome,
        format!("skipped: previous run {first_forbid} is PENDING (overlap policy FORBID)")
    );
    assert_eq!(forbid.skipped_ticks, 1);
    assert_eq!(runs(&mut client, "forbid").await.len(), 1);
    let replace = ticked(&running, "replace", FIRST_TICK + MINUTE).await;
    assert_ne!(replace.last_job_id, first_replace);
    let old = get(&mut client, &first_replace).await;
    assert_eq!(old.state, JobState::Cancelled as i32);
    assert_eq!(runs(&mut client, "replace").await.len(), 2);

    // Once the previous run has ended, FORBID runs the next tick.
    client
        .cancel_job(CancelJobRequest {
            job_id: first_forbid.clone(),
            reason: "done with it".into(),
        })
        .await
        .unwrap();
    clock.advance(Duration::from_secs(60));
    let forbid = ticked(&running, "forbid", FIRST_TICK + 2 * MINUTE).await;
    assert_ne!(forbid.last_job_id, first_forbid);
    assert_eq!(runs(&mut client, "forbid").await.len(), 2);
    running.shutdown().await;
}

async fn get(client: &mut FederationClient<Channel>, job_id: &str) -> Job {
    client
        .get_job(GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

#[tokio::test]
async fn a_schedule_created_again_is_the_same_one_and_bad_fields_are_refused_by_name() {
    let clock = ManualClock::starting_at_unix_ms(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut client = client(&running).await;
    let request = create("nightly", "0 3 * * *", OverlapPolicy::Forbid);
    client.create_schedule(request.clone()).await.unwrap();
    let again = client
        .create_schedule(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    let mut other = request.clone();
    other.spec.as_mut().unwrap().cron = "0 4 * * *".into();
    let refused = client.create_schedule(other).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(
        refused.message().contains("nightly"),
        "{}",
        refused.message()
    );

    type Spoil = fn(&mut CreateScheduleRequest);
    let cases: [(&str, Spoil); 5] = [
        ("spec.cron", |r| {
            r.spec.as_mut().unwrap().cron = "0 3 * *".into()
        }),
        ("spec.time_zone", |r| {
            r.spec.as_mut().unwrap().time_zone = "Europe/Atlantis".into()
        }),
        ("schedule_id", |r| r.schedule_id = "Not_An_Id".into()),
        ("spec.job.task_count", |r| {
            r.spec.as_mut().unwrap().job.as_mut().unwrap().task_count = 0
        }),
        ("spec.overlap_policy", |r| {
            r.spec.as_mut().unwrap().overlap_policy = 7
        }),
    ];
    for (field, spoil) in cases {
        let mut bad = create("other", "* * * * *", OverlapPolicy::Allow);
        spoil(&mut bad);
        let err = client.create_schedule(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            err.message()
        );
    }
    let listed = client
        .list_schedules(ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.schedules.len(), 1, "nothing written for a refusal");
    for code_of in [
        client
            .get_schedule(GetScheduleRequest {
                schedule_id: "missing".into(),
            })
            .await
            .unwrap_err(),
        client
            .pause_schedule(PauseScheduleRequest {
                schedule_id: "missing".into(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(code_of.code(), Code::NotFound);
    }
    running.shutdown().await;
}

/// Where the first leader of [`one_job_through_a_kill_at`] is stopped.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// The tick is due; nothing of it is written.
    BeforeTheJobCommit,
    /// The tick's job is committed; the schedule's record of the tick is
    /// not.
    AfterTheJobCommitBeforeTheRecord,
}

/// Two replicas on one SQLite file and one manual clock. The first leads
/// and is stopped at `point` of the schedule's first tick (its ticker
/// parks there, then the replica's tasks are aborted); the second takes
/// over and handles the tick. Returns the schedule's jobs, its record, and
/// the job the first leader had committed, if any.
async fn one_job_through_a_kill_at(point: KillPoint) -> (Vec<Job>, Schedule, Option<String>) {
    use std::sync::Arc;

    use futures::future::BoxFuture;
    use meridian_global::schedules::ticker::{Stage, StageHook};

    // Two seconds before the tick: the lease (10 s) needs no renewal race
    // to cross it.
    let start = FIRST_TICK - 2_000;
    let clock = ManualClock::starting_at_unix_ms(start);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let config = |name: &str| {
        let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
        config.name = name.into();
        config.leader_lease = Duration::from_secs(10);
        config.controller_every = Duration::from_secs(3600);
        config
    };
    let (stopped_tx, mut stopped) = tokio::sync::mpsc::unbounded_channel();
    let mut first = config("first");
    first.schedule_hook = Some(StageHook(Arc::new(move |stage: Stage| {
        let here = matches!(
            (point, &stage),
            (KillPoint::BeforeTheJobCommit, Stage::Due { .. })
                | (
                    KillPoint::AfterTheJobCommitBeforeTheRecord,
                    Stage::Submitted { .. }
                )
        );
        if here {
            let _ = stopped_tx.send(stage);
            Box::pin(std::future::pending::<()>()) as BoxFuture<'static, ()>
        } else {
            Box::pin(std::future::ready(()))
        }
    })));
    let db = meridian_store::open(&url).await.unwrap();
    let first = start_with(first, db, clock.shared()).await.unwrap();
    guarded("the first replica leads", first.wait_leader()).await;
    let db = meridian_store::open(&url).await.unwrap();
    let second = start_with(config("second"), db, clock.shared())
        .await
        .unwrap();
    client(&first)
        .await
        .create_schedule(create("kill-at-tick", "* * * * *", OverlapPolicy::Allow))
        .await
        .unwrap();

    clock.advance(Duration::from_millis(FIRST_TICK - start));
    let stage = guarded("the first leader at the kill point", stopped.recv())
        .await
        .unwrap();
    first.kill();
    let committed = match stage {
        Stage::Submitted { job_id, tick, .. } => {
            assert_eq!(tick, FIRST_TICK);
            Some(job_id)
        }
        Stage::Due { tick, .. } => {
            assert_eq!(tick, FIRST_TICK);
            None
        }
    };
    // Past the lease and the standby's next try; the tick is still the
    // latest one (the next is at +60 s) and within its starting deadline.
    clock.advance(Duration::from_secs(30));
    guarded("the second replica leads", second.wait_leader()).await;
    let schedule = ticked(&second, "kill-at-tick", FIRST_TICK).await;
    let jobs = runs(&mut client(&second).await, "kill-at-tick").await;
    second.shutdown().await;
    (jobs, schedule, committed)
}

#[tokio::test]
async fn a_leader_killed_after_the_ticks_job_commit_leaves_exactly_one_job_for_the_tick() {
    let (jobs, schedule, committed) =
        one_job_through_a_kill_at(KillPoint::AfterTheJobCommitBeforeTheRecord).await;
    let committed = committed.expect("the first leader committed the job");
    assert_eq!(jobs.len(), 1, "one job for the tick: {jobs:?}");
    // The second leader's submit of the tick found the first leader's job
    // by its request id.
    assert_eq!(jobs[0].job_id, committed);
    assert_eq!(schedule.last_job_id, committed);
    assert_eq!(schedule.last_tick_unix_ms, FIRST_TICK);
    assert_eq!(
        jobs[0].request_id,
        format!(
            "schedule/kill-at-tick/{}/{FIRST_TICK}",
            schedule.created_at_unix_ms
        )
    );
}

#[tokio::test]
async fn a_leader_killed_before_the_ticks_job_commit_leaves_exactly_one_job_for_the_tick() {
    let (jobs, schedule, committed) =
        one_job_through_a_kill_at(KillPoint::BeforeTheJobCommit).await;
    assert_eq!(committed, None);
    assert_eq!(jobs.len(), 1, "one job for the tick: {jobs:?}");
    assert_eq!(schedule.last_job_id, jobs[0].job_id);
    assert_eq!(schedule.last_tick_unix_ms, FIRST_TICK);
    assert!(jobs[0].request_id.ends_with(&format!("/{FIRST_TICK}")));
}

#[tokio::test]
async fn the_http_routes_create_list_get_pause_resume_and_delete_as_grpc_does() {
    let harness = Harness::start(|_| {}).await;
    let addr = harness.running.http_addr.unwrap();
    let body = r#"{
        "schedule_id": "nightly",
        "spec": {
            "tenant": "acme", "cron": "30 2 * * *", "time_zone": "Europe/Paris",
            "overlap_policy": "OVERLAP_POLICY_FORBID",
            "job": {"task_count": 1, "task": {"simulated": {"duration_ms": "10"}},
                    "resources": {"cpu_millis": 100, "memory_bytes": "1048576"}}
        }
    }"#;
    let (status, created) = http(addr, "POST", "/v1/schedules", body).await;
    assert_eq!(status, 200, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["created"], true);
    assert_eq!(created["schedule"]["schedule_id"], "nightly");
    assert!(created["schedule"]["next_tick_unix_ms"].is_string());
    let (status, again) = http(addr, "POST", "/v1/schedules", body).await;
    assert_eq!(status, 200, "{again}");
    assert!(!again.contains("\"created\""), "{again}");
    let other = body.replace("30 2", "45 2");
    let (status, conflict) = http(addr, "POST", "/v1/schedules", &other).await;
    assert_eq!(status, 409, "{conflict}");

    let bad_zone = body.replace("Europe/Paris", "Europe/Atlantis");
    let (status, refused) = http(addr, "POST", "/v1/schedules", &bad_zone).await;
    assert_eq!(status, 400, "{refused}");
    let refused: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(refused["field"], "spec.time_zone");
    let bad_cron = body.replace("30 2 * * *", "30 2 * *");
    let (status, refused) = http(addr, "POST", "/v1/schedules", &bad_cron).await;
    assert_eq!(status, 400, "{refused}");
    let refused: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(refused["field"], "spec.cron");

    let (status, paused) = http(addr, "POST", "/v1/schedules/nightly/pause", "").await;
    assert_eq!(status, 200, "{paused}");
    assert!(paused.contains("\"paused\":true"), "{paused}");
    let (status, got) = http(addr, "GET", "/v1/schedules/nightly", "").await;
    assert_eq!(status, 200, "{got}");
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["schedule"]["paused"], true);
    assert_eq!(
        got["schedule"]["spec"]["overlap_policy"],
        "OVERLAP_POLICY_FORBID"
    );
    let (status, resumed) = http(addr, "POST", "/v1/schedules/nightly/resume", "{}").await;
    assert_eq!(status, 200, "{resumed}");
    assert!(!resumed.contains("\"paused\""), "{resumed}");
    let (status, listed) = http(addr, "GET", "/v1/schedules?tenant=acme", "").await;
    assert_eq!(status, 200, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["schedules"].as_array().map(Vec::len), Some(1));
    let (status, none) = http(addr, "GET", "/v1/schedules?tenant=other", "").await;
    assert_eq!(status, 200, "{none}");
    assert!(!none.contains("nightly"), "{none}");

    let (status, deleted) = http(addr, "DELETE", "/v1/schedules/nightly", "").await;
    assert_eq!(status, 200, "{deleted}");
    let (status, gone) = http(addr, "GET", "/v1/schedules/nightly", "").await;
    assert_eq!(status, 404, "{gone}");
    let (status, gone) = http(addr, "DELETE", "/v1/schedules/nightly", "").await;
    assert_eq!(status, 404, "{gone}");
    let (status, bad_id) = http(addr, "GET", "/v1/schedules/Bad_Id", "").await;
    assert_eq!(status, 400, "{bad_id}");
    harness.running.shutdown().await;
}

#[tokio::test]
async fn ticks_through_failed_and_unknown_commits_make_one_job_each() {
    use std::sync::Arc;

    use meridian_store::Database;
    use meridian_store::fault::{FaultConfig, FaultyBackend};
    use meridian_store::memory::MemoryBackend;

    let clock = ManualClock::starting_at_unix_ms(START_MS);
    let faulty = Arc::new(FaultyBackend::new(
        Arc::new(MemoryBackend::new()),
        FaultConfig::none(),
        22,
    ));
    let mut config = GlobalConfig::new("memory", "127.0.0.1:0".parse().unwrap());
    config.leader_lease = Duration::from_secs(3600);
    config.controller_every = Duration::from_secs(3600);
    let running = start_with(config, Database::new(faulty.clone()), clock.shared())
        .await
        .unwrap();
    guarded("leadership", running.wait_leader()).await;
    let mut client = client(&running).await;
    client
        .create_schedule(create("faulty", "* * * * *", OverlapPolicy::Allow))
        .await
        .unwrap();

    // Half the commits fail from here on, a third of those after applying
    // (`commit_unknown_result`): the store retries the submit, which finds
    // the job its applied attempt wrote by the tick's request id.
    faulty.set_config(FaultConfig::mixed(0.5));
    const TICKS: u64 = 10;
    for n in 0..TICKS {
        let tick = FIRST_TICK + n * MINUTE;
        clock.advance(Duration::from_millis(tick - clock_now(&clock)));
        ticked(&running, "faulty", tick).await;
    }
    faulty.set_config(FaultConfig::none());
    let stats = faulty.stats();
    assert!(
        stats.unknown_after > 0 && stats.not_committed > 0,
        "{stats:?}"
    );

    let jobs = runs(&mut client, "faulty").await;
    let mut ticks: Vec<u64> = jobs
        .iter()
        .map(|j| j.request_id.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    ticks.sort_unstable();
    let expected: Vec<u64> = (0..TICKS).map(|n| FIRST_TICK + n * MINUTE).collect();
    assert_eq!(ticks, expected, "one job per tick, none twice");
    running.shutdown().await;
}
