//! A schedule's latest runs (what the console's schedule page lists), found
//! by their ticks' request ids: over real gRPC on a manual clock, with ticks
//! skipped by the overlap policy in between. Time moves only when the test
//! moves it; a tick is awaited on the schedule's record (a store watch).

use crate::common;

use std::time::Duration;

use common::*;
use meridian_control::ManualClock;
use meridian_global::schedules::read_schedule;
use meridian_global::schedules::runs::latest;
use meridian_global::server::{Running, start_with};
use meridian_global::{GlobalConfig, GlobalError};
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::*;

/// 2026-01-01T09:59:30Z: the first tick of `* * * * *` is 30 s later.
const START_MS: u64 = 1_767_261_570_000;
const FIRST_TICK: u64 = START_MS + 30_000;
const MINUTE: u64 = 60_000;

async fn leader(clock: &ManualClock, dir: &tempfile::TempDir) -> Running {
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.leader_lease = Duration::from_secs(3600);
    config.controller_every = Duration::from_secs(3600);
    let db = meridian_store::open(&url).await.unwrap();
    let running = start_with(config, db, clock.shared()).await.unwrap();
    guarded("leadership", running.wait_leader()).await;
    running
}

/// Awaits the stored schedule `id` having handled the tick at `tick`.
async fn ticked(running: &Running, id: &str, tick: u64) -> Schedule {
    guarded(&format!("tick {tick}"), async {
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
            if let Some(s) = found
                && s.last_tick_unix_ms >= tick
            {
                return s;
            }
            changed.await.unwrap();
        }
    })
    .await
}

#[tokio::test]
async fn a_schedules_latest_runs_are_its_ticks_jobs_newest_first_past_skipped_ticks() {
    let clock = ManualClock::starting_at_unix_ms(START_MS);
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut client = FederationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap();
    let mut job = spec("t");
    job.tenant.clear();
    client
        .create_schedule(CreateScheduleRequest {
            schedule_id: "every-minute".into(),
            spec: Some(ScheduleSpec {
                tenant: "t".into(),
                cron: "* * * * *".into(),
                job: Some(job),
                overlap_policy: OverlapPolicy::Forbid.into(),
                ..ScheduleSpec::default()
            }),
            paused: false,
        })
        .await
        .unwrap();
    // No region: every run stays PENDING until cancelled, so FORBID skips
    // the tick after each run; the test cancels the run after that skip.
    let mut made = Vec::new();
    for i in 0..5u64 {
        clock.advance(Duration::from_millis(if i == 0 {
            FIRST_TICK - START_MS
        } else {
            MINUTE
        }));
        let s = ticked(&running, "every-minute", FIRST_TICK + i * MINUTE).await;
        if i % 2 == 0 {
            assert!(s.last_outcome.starts_with("created job"), "{s:?}");
            made.push(s.last_job_id.clone());
        } else {
            // The run before is still pending: FORBID skipped this tick.
            // Cancelling it lets the next tick run.
            assert!(s.last_outcome.starts_with("skipped"), "{s:?}");
            client
                .cancel_job(CancelJobRequest {
                    job_id: s.last_job_id.clone(),
                    reason: "next".into(),
                })
                .await
                .unwrap();
        }
    }
    // Ticks 0, 2 and 4 made a job; 1 and 3 were skipped.
    assert_eq!(made.len(), 3);
    let schedule = ticked(&running, "every-minute", FIRST_TICK + 4 * MINUTE).await;
    let ids = |runs: &meridian_global::schedules::runs::Runs| -> Vec<String> {
        runs.jobs.iter().map(|j| j.job_id.clone()).collect()
    };
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();

    let all = latest(&running.db, &running.keys, &schedule, 20, 200)
        .await
        .unwrap();
    assert_eq!(ids(&all), newest_first);
    assert!(!all.more, "every tick since the creation was looked at");

    let two = latest(&running.db, &running.keys, &schedule, 2, 200)
        .await
        .unwrap();
    assert_eq!(ids(&two), newest_first[..2]);
    assert!(two.more);

    // Two ticks looked at: the last one (a run) and the skipped one.
    let short = latest(&running.db, &running.keys, &schedule, 20, 2)
        .await
        .unwrap();
    assert_eq!(ids(&short), newest_first[..1]);
    assert!(short.more);

    // The same jobs the schedule's label lists.
    let labelled = client
        .list_jobs(ListJobsRequest {
            label_selector: vec![LabelRequirement {
                key: "meridian.schedule".into(),
                op: LabelOperator::In.into(),
                values: vec!["every-minute".into()],
            }],
            ..ListJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let labelled: Vec<String> = labelled.iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(labelled, made);
    running.shutdown().await;
}
