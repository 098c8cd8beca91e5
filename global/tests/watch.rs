//! WatchJobs over a real socket: each watcher's own bookmark timer, driven
//! by a manual clock, and the refusal of cursors the server never issued.

use crate::common;

use std::time::Duration;

use common::*;
use meridian_control::ManualClock;
use meridian_global::GlobalConfig;
use meridian_global::keys;
use meridian_global::server::{Running, start_with};
use meridian_proto::v1::*;
use meridian_store::RangeOption;
use tokio_stream::StreamExt;
use tonic::Code;

const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// A leading replica on a fresh SQLite file whose time is `clock`: the
/// leader lease and the controller period are long enough that advancing
/// the clock moves only the watchers' timers.
async fn start_on(clock: &ManualClock, dir: &tempfile::TempDir) -> Running {
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.leader_lease = Duration::from_secs(3600);
    config.controller_every = Duration::from_secs(3600);
    config.bookmark_every = BOOKMARK_EVERY;
    let db = meridian_store::open(&url).await.unwrap();
    let running = start_with(config, db, clock.shared()).await.unwrap();
    guarded("leadership", running.wait_leader()).await;
    running
}

async fn client(
    running: &Running,
) -> federation_client::FederationClient<tonic::transport::Channel> {
    federation_client::FederationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap()
}

/// The cursor of the job log's last event.
async fn log_end(running: &Running) -> Vec<u8> {
    let log = running.keys.job_events();
    let range = log.range();
    let last = running
        .db
        .run(|tx, _| {
            let range = range.clone();
            async move {
                tx.get_range(RangeOption::new(range.0, range.1).limit(1).reverse(true))
                    .await
            }
        })
        .await
        .unwrap();
    keys::cursor_of(&log, &last[0].key).unwrap()
}

/// Awaits the controller's event recording why `job` waits (a store watch
/// on the log's head, no polling); returns the cursor of its CREATED event.
async fn quiet_job_waits(running: &Running, job: &str) -> Vec<u8> {
    let log = running.keys.job_events();
    let head = running.keys.job_events_head();
    guarded("the quiet job's waiting reason in the log", async {
        loop {
            let (rows, changed) = running
                .db
                .run(|tx, _| {
                    let (range, head) = (log.range(), head.clone());
                    async move {
                        let rows = tx.get_range(RangeOption::from(range)).await?;
                        Ok::<_, meridian_store::StoreError>((rows, tx.watch(&head)?))
                    }
                })
                .await
                .unwrap();
            let mut created = None;
            for kv in rows {
                let event: JobEvent = prost::Message::decode(kv.value.as_slice()).unwrap();
                let Some(j) = event.job.filter(|j| j.job_id == job) else {
                    continue;
                };
                if event.kind == JobEventKind::Created as i32 {
                    created = Some(keys::cursor_of(&log, &kv.key).unwrap());
                } else if event.kind == JobEventKind::Updated as i32 && !j.waiting_reason.is_empty()
                {
                    return created.unwrap();
                }
            }
            changed.await.unwrap();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_of_one_quiet_job_receives_bookmarks_while_other_jobs_events_pass() {
    const ROUNDS: usize = 10;
    const STEPS: usize = 5;
    const PER_STEP: usize = 200;
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = start_on(&clock, &dir).await;
    let mut api = client(&running).await;
    let quiet = api
        .submit_job(submit("quiet", spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let filter = WatchJobsRequest {
        job_ids: vec![quiet.clone()],
        ..WatchJobsRequest::default()
    };
    // The quiet job's own change comes first, once: the router records why
    // it waits (no region is registered). It is read before the clock
    // moves, so the watcher's timer restarts at the start and each round
    // below ends with its bookmark.
    let created = quiet_job_waits(&running, &quiet).await;
    let mut stream = api
        .watch_jobs(WatchJobsRequest {
            cursor: created,
            ..filter.clone()
        })
        .await
        .unwrap()
        .into_inner();
    let reason = guarded("the quiet job's waiting reason", stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason.kind, JobEventKind::Updated as i32);
    let job = reason.job.unwrap();
    assert_eq!(job.job_id, quiet);
    assert_eq!(job.waiting_reason, "no allowed region is ready");

    // Other jobs' events arrive more often than the bookmark interval, so
    // the log is never quiet for a whole interval; this watcher is.
    let mut n = 0;
    let mut previous = Vec::new();
    for round in 0..ROUNDS {
        for _ in 0..STEPS {
            let items = (0..PER_STEP)
                .map(|_| {
                    n += 1;
                    submit(&format!("other-{n}"), spec("t"))
                })
                .collect();
            let done = api
                .submit_jobs(SubmitJobsRequest { items })
                .await
                .unwrap()
                .into_inner();
            assert!(
                done.results
                    .iter()
                    .all(|r| matches!(r.outcome, Some(submit_job_result::Outcome::Accepted(_))))
            );
            clock.advance(BOOKMARK_EVERY / STEPS as u32);
        }
        let event = guarded(&format!("bookmark of round {round}"), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            event.kind,
            JobEventKind::Bookmark as i32,
            "round {round}: only bookmarks pass the filter"
        );
        assert!(event.cursor >= previous, "bookmark cursors never go back");
        previous = event.cursor;
    }
    assert_eq!(n, ROUNDS * STEPS * PER_STEP);

    // Once the watcher has scanned everything, its bookmark stands at the
    // last of the other jobs' events, so a resume from it skips them all.
    let end = log_end(&running).await;
    let caught_up = guarded("a bookmark past every other event", async {
        loop {
            clock.advance(BOOKMARK_EVERY);
            let event = stream.next().await.unwrap().unwrap();
            assert_eq!(event.kind, JobEventKind::Bookmark as i32);
            if event.cursor >= end {
                return event.cursor;
            }
        }
    })
    .await;
    let mut resumed = api
        .watch_jobs(WatchJobsRequest {
            cursor: caught_up,
            ..filter
        })
        .await
        .unwrap()
        .into_inner();
    api.cancel_job(CancelJobRequest {
        job_id: quiet.clone(),
        reason: "done watching".into(),
    })
    .await
    .unwrap();
    let first = guarded("the quiet job's event", resumed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.job.unwrap().job_id, quiet);
    assert!(first.cursor > end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cursor_is_refused_with_invalid_argument() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = start_on(&clock, &dir).await;
    let mut api = client(&running).await;
    api.submit_job(submit("one", spec("t"))).await.unwrap();
    let issued = log_end(&running).await;
    let mut past_the_end = issued.clone();
    past_the_end[..10].copy_from_slice(&[0xff; 10]);
    // The issued event's own commit, at an index no commit reaches.
    let mut same_commit = issued.clone();
    same_commit[10..].copy_from_slice(&[0xff, 0xff]);
    for (what, cursor) in [
        ("all zero", vec![0u8; keys::CURSOR_BYTES]),
        ("past the end", past_the_end),
        ("in an issued cursor's commit", same_commit),
        ("too short", vec![1, 2, 3]),
    ] {
        let refused = api
            .watch_jobs(WatchJobsRequest {
                cursor,
                ..WatchJobsRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}");
        assert!(
            refused.message().starts_with("cursor: "),
            "{what}: names the field: {}",
            refused.message()
        );
    }
    // An issued cursor is still followed, and an empty one still means now.
    api.watch_jobs(WatchJobsRequest {
        cursor: issued,
        ..WatchJobsRequest::default()
    })
    .await
    .unwrap();
    api.watch_jobs(WatchJobsRequest::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_issued_by_one_replica_is_accepted_by_another_sharing_its_store() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let leader = start_on(&clock, &dir).await;
    let mut api = client(&leader).await;
    let mut stream = api
        .watch_jobs(WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let a = api
        .submit_job(submit("a", spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let first = guarded("event a", stream.next()).await.unwrap().unwrap();
    assert_eq!(first.job.unwrap().job_id, a);
    let b = api
        .submit_job(submit("b", spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.name = "replica-2".into();
    config.leader_lease = Duration::from_secs(3600);
    let db = meridian_store::open(&url).await.unwrap();
    let other = start_with(config, db, clock.shared()).await.unwrap();
    let mut resumed = client(&other)
        .await
        .watch_jobs(WatchJobsRequest {
            cursor: first.cursor,
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The stream goes on right after `first`: job a's later events (the
    // controller's, if any), then b's.
    guarded("event b on the other replica", async {
        loop {
            let next = resumed.next().await.unwrap().unwrap();
            let job = next.job.unwrap().job_id;
            if job == b {
                return;
            }
            assert_eq!(job, a, "only a's later events come before b's");
        }
    })
    .await;
}
