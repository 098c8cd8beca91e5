//! Retention of the event logs over a real socket, on a manual clock: the
//! leader trims events older than the retention, a cursor from before the
//! trim answers OUT_OF_RANGE (a watch already open that falls behind ends
//! with it), younger events are still delivered, a forged cursor is still
//! INVALID_ARGUMENT, a region's assignment stream from a trimmed cursor ends
//! OUT_OF_RANGE and a fresh one starts from the snapshot, and a replica that
//! does not lead trims nothing.

use crate::common;

use std::time::Duration;

use common::*;
use meridian_control::{Clock, ManualClock};
use meridian_global::events::Trim;
use meridian_global::retention::Retention;
use meridian_global::server::{Running, start_with};
use meridian_global::{GlobalConfig, GlobalError, keys};
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::*;
use meridian_store::RangeOption;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const RETENTION: Duration = Duration::from_secs(60);

/// A replica named `name` on the SQLite file in `dir` whose time is
/// `clock`, keeping events for `retention`. Leases are long enough that
/// moving the clock by minutes never costs the leader or a region its
/// lease, and the controller runs only when woken.
async fn replica(
    clock: &ManualClock,
    dir: &tempfile::TempDir,
    name: &str,
    retention: Duration,
) -> Running {
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.name = name.into();
    config.leader_lease = Duration::from_secs(3600);
    config.region_lease = Duration::from_secs(3600);
    config.controller_every = Duration::from_secs(3600);
    config.event_retention = retention;
    let db = meridian_store::open(&url).await.unwrap();
    start_with(config, db, clock.shared()).await.unwrap()
}

async fn leader(clock: &ManualClock, dir: &tempfile::TempDir) -> Running {
    let running = replica(clock, dir, "global", RETENTION).await;
    guarded("leadership", running.wait_leader()).await;
    running
}

async fn client(running: &Running) -> FederationClient<Channel> {
    FederationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap()
}

/// The trim record at `key`.
async fn trim_at(running: &Running, key: &[u8]) -> Option<Trim> {
    let key = key.to_vec();
    running
        .db
        .run(|tx, _| {
            let key = key.clone();
            async move { Trim::read(&tx, &key).await }
        })
        .await
        .unwrap()
}

/// Awaits the trim record at `key` reaching `through` (a store watch, no
/// polling on time).
async fn trimmed_through(running: &Running, key: &[u8], through: &[u8]) -> Trim {
    guarded("the trim", async {
        loop {
            let key = key.to_vec();
            let (trim, changed) = running
                .db
                .run(|tx, _| {
                    let key = key.clone();
                    async move {
                        let trim = Trim::read(&tx, &key).await?;
                        Ok::<_, GlobalError>((trim, tx.watch(&key)?))
                    }
                })
                .await
                .unwrap();
            if let Some(trim) = trim
                && trim.through.as_slice() >= through
            {
                return trim;
            }
            changed.await.unwrap();
        }
    })
    .await
}

/// Cursors of the job log's events, oldest first.
async fn job_log(running: &Running) -> Vec<Vec<u8>> {
    let log = running.keys.job_events();
    let rows = running
        .db
        .run(|tx, _| {
            let range = log.range();
            async move { tx.get_range(RangeOption::from(range)).await }
        })
        .await
        .unwrap();
    rows.iter()
        .map(|kv| keys::cursor_of(&log, &kv.key).unwrap())
        .collect()
}

/// The event at `cursor` of the job log.
async fn event_at(running: &Running, cursor: &[u8]) -> JobEvent {
    let log = running.keys.job_events();
    let (tr, user) = cursor.split_at(10);
    let stamp = meridian_store::tuple::Versionstamp::complete(
        tr.try_into().unwrap(),
        u16::from_be_bytes(user.try_into().unwrap()),
    );
    let key = log.pack(&(stamp,));
    let raw = running
        .db
        .run(|tx, _| {
            let key = key.clone();
            async move { tx.get(&key).await }
        })
        .await
        .unwrap()
        .unwrap();
    prost::Message::decode(raw.as_slice()).unwrap()
}

/// The cursor of `job`'s CREATED event.
async fn created(running: &Running, job: &str) -> Vec<u8> {
    for cursor in job_log(running).await {
        let event = event_at(running, &cursor).await;
        if event.kind == JobEventKind::Created as i32 && event.job.unwrap().job_id == job {
            return cursor;
        }
    }
    panic!("no CREATED event of {job}");
}

/// Awaits the controller's event recording why `job` waits (a store watch
/// on the log's head, no polling on time); returns its cursor.
async fn waiting(running: &Running, job: &str) -> Vec<u8> {
    let head = running.keys.job_events_head();
    guarded("the job's waiting reason in the log", async {
        loop {
            let changed = running
                .db
                .run(|tx, _| {
                    let head = head.clone();
                    async move { Ok::<_, GlobalError>(tx.watch(&head)?) }
                })
                .await
                .unwrap();
            for cursor in job_log(running).await {
                let event = event_at(running, &cursor).await;
                if event.kind == JobEventKind::Updated as i32
                    && event
                        .job
                        .is_some_and(|j| j.job_id == job && !j.waiting_reason.is_empty())
                {
                    return cursor;
                }
            }
            changed.await.unwrap();
        }
    })
    .await
}

/// Reads the stream up to the first event about `job`.
async fn until_job(stream: &mut tonic::Streaming<JobEvent>, job: &str) -> JobEvent {
    guarded("an event of the job", async {
        loop {
            let event = next_event(stream).await;
            if event.job.as_ref().is_some_and(|j| j.job_id == job) {
                return event;
            }
        }
    })
    .await
}

async fn submit_one(api: &mut FederationClient<Channel>, request_id: &str) -> String {
    api.submit_job(submit(request_id, spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id
}

async fn watch_from(
    api: &mut FederationClient<Channel>,
    cursor: Vec<u8>,
) -> Result<tonic::Streaming<JobEvent>, tonic::Status> {
    api.watch_jobs(WatchJobsRequest {
        cursor,
        ..WatchJobsRequest::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// The next event that is not a bookmark.
async fn next_event(stream: &mut tonic::Streaming<JobEvent>) -> JobEvent {
    guarded("an event", async {
        loop {
            let event = stream.next().await.unwrap().unwrap();
            if event.kind != JobEventKind::Bookmark as i32 {
                return event;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_issued_before_a_trim_is_out_of_range_after_it_and_younger_events_are_still_delivered()
 {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut api = client(&running).await;
    let mut stream = watch_from(&mut api, Vec::new()).await.unwrap();
    let a = submit_one(&mut api, "a").await;
    let b = submit_one(&mut api, "b").await;
    let first = created(&running, &a).await;
    let b_created = created(&running, &b).await;

    // Half the retention later a third job arrives; then the first two
    // pass the retention while the third does not.
    clock.advance(RETENTION / 2);
    let c = submit_one(&mut api, "c").await;
    let c_created = created(&running, &c).await;
    clock.advance(RETENTION / 2 + Duration::from_secs(1));
    let cutoff = clock.now_unix_ms() - RETENTION.as_millis() as u64;
    let trim = trimmed_through(&running, &running.keys.job_events_trim(), &b_created).await;
    assert_eq!(trim.first.as_slice(), first.as_slice());
    let kept = job_log(&running).await;
    assert!(kept.contains(&c_created), "the young job's event is kept");
    assert!(kept.iter().all(|c| c.as_slice() > trim.through.as_slice()));
    // The trim stops at the first event younger than the retention: what
    // goes is a prefix (an older event committed after it stays too).
    assert!(event_at(&running, &kept[0]).await.at_unix_ms >= cutoff);

    let refused = watch_from(&mut api, first).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{}", refused.message());
    assert!(
        refused.message().contains("empty cursor") && refused.message().contains("ListJobs"),
        "tells the client to re-list and watch from an empty cursor: {}",
        refused.message()
    );

    // Nothing after the last trimmed event is missing, so a resume from it
    // goes on from the first kept event, and the young job's is delivered.
    let mut resumed = watch_from(&mut api, trim.through.to_vec()).await.unwrap();
    let next = next_event(&mut resumed).await;
    assert_eq!(next.cursor, kept[0]);
    until_job(&mut resumed, &c).await;

    // The stream that was open all along saw everything and goes on.
    let d = submit_one(&mut api, "d").await;
    until_job(&mut stream, &d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_a_log_trimmed_empty_bookmarks_the_trim_point_and_a_resume_from_it_loses_nothing()
 {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut api = client(&running).await;
    let a = submit_one(&mut api, "a").await;
    // Everything the controller has to say about the job is said before the
    // clock moves, so all of it is trimmed and the log is left empty.
    let last = waiting(&running, &a).await;
    clock.advance(RETENTION + Duration::from_secs(1));
    let trim = trimmed_through(&running, &running.keys.job_events_trim(), &last).await;
    assert!(job_log(&running).await.is_empty());

    let mut stream = watch_from(&mut api, Vec::new()).await.unwrap();
    clock.advance(Duration::from_secs(5));
    let bookmark = guarded("a bookmark", stream.next()).await.unwrap().unwrap();
    assert_eq!(bookmark.kind, JobEventKind::Bookmark as i32);
    assert!(
        bookmark.cursor.as_slice() >= trim.through.as_slice(),
        "a position, not an empty cursor"
    );
    drop(stream);

    // Submitted while the watcher is away: a resume from its bookmark
    // delivers it.
    let b = submit_one(&mut api, "b").await;
    let mut resumed = watch_from(&mut api, bookmark.cursor).await.unwrap();
    until_job(&mut resumed, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cursor_is_still_invalid_argument_after_a_trim() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut api = client(&running).await;
    submit_one(&mut api, "old-1").await;
    submit_one(&mut api, "old-2").await;
    let old_end = job_log(&running).await.pop().unwrap();
    clock.advance(RETENTION + Duration::from_secs(1));
    submit_one(&mut api, "young").await;
    trimmed_through(&running, &running.keys.job_events_trim(), &old_end).await;
    let kept = job_log(&running).await.pop().unwrap();

    let mut past_the_end = kept.clone();
    past_the_end[..10].copy_from_slice(&[0xff; 10]);
    let mut in_a_kept_commit = kept.clone();
    in_a_kept_commit[10..].copy_from_slice(&[0xff, 0xff]);
    for (what, cursor) in [
        ("all zero", vec![0u8; keys::CURSOR_BYTES]),
        ("past the end", past_the_end),
        ("in a kept event's commit", in_a_kept_commit),
        ("too short", vec![1, 2, 3]),
    ] {
        let refused = watch_from(&mut api, cursor).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}");
        assert!(refused.message().starts_with("cursor: "), "{what}");
    }
    watch_from(&mut api, kept).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_watch_that_falls_behind_the_trim_point_ends_with_out_of_range_without_skipping_events()
 {
    const JOBS: usize = 5000;
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut api = client(&running).await;
    // A watcher on a connection with small flow-control windows that reads
    // nothing while the jobs arrive: the server can buffer only a few
    // hundred events for it, so it is still behind when they are trimmed.
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut stream = watch_from(&mut FederationClient::new(slow), Vec::new())
        .await
        .unwrap();
    for batch in 0..JOBS / 1000 {
        let items = (0..1000)
            .map(|i| submit(&format!("job-{batch}-{i}"), spec("t")))
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
    }
    let logged = job_log(&running).await;
    assert!(logged.len() >= JOBS);
    let end = logged.last().unwrap().clone();
    clock.advance(RETENTION + Duration::from_secs(1));
    trimmed_through(&running, &running.keys.job_events_trim(), &end).await;
    assert!(job_log(&running).await.iter().all(|c| *c > end));

    let mut received = Vec::new();
    let ended = guarded("the end of the stream", async {
        loop {
            match stream.next().await {
                Some(Ok(event)) if event.kind == JobEventKind::Bookmark as i32 => {}
                Some(Ok(event)) => received.push(event.cursor),
                Some(Err(status)) => return status,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await;
    assert_eq!(ended.code(), Code::OutOfRange, "{}", ended.message());
    assert!(
        received.len() < logged.len(),
        "the watcher was behind the trim"
    );
    assert_eq!(
        received,
        logged[..received.len()],
        "what was delivered is the log's start, with no gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_stream_from_a_trimmed_cursor_ends_with_out_of_range_and_a_fresh_one_starts_from_the_snapshot()
 {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut api = client(&running).await;
    let mut link = meridian_proto::v1::region_link_client::RegionLinkClient::connect(format!(
        "http://{}",
        running.grpc_addr
    ))
    .await
    .unwrap();
    let lease = register(&mut link, "r1").await;
    let mut stream = assignments(&mut link, "r1", lease).await;
    let a = submit_one(&mut api, "a").await;
    let b = submit_one(&mut api, "b").await;
    let mut assigned = Vec::new();
    while assigned.len() < 2 {
        let event = guarded("an ASSIGN", stream.next()).await.unwrap().unwrap();
        if event.kind == AssignmentEventKind::Assign as i32 {
            assigned.push(event);
        }
    }
    let mut names: Vec<_> = assigned.iter().map(|e| e.job_id.clone()).collect();
    names.sort();
    assert_eq!(names, vec![a.clone(), b.clone()]);
    drop(stream);

    clock.advance(RETENTION + Duration::from_secs(1));
    let trim_key = running.keys.region_events_trim("r1");
    trimmed_through(&running, &trim_key, &assigned[1].cursor).await;

    let mut expired = link
        .assignments(AssignmentsRequest {
            region: "r1".into(),
            region_lease_epoch: lease,
            cursor: assigned[0].cursor.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let ended = guarded("the stream's end", expired.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(ended.code(), Code::OutOfRange, "{}", ended.message());

    // From an empty cursor the region gets every live assignment again.
    let mut fresh = assignments(&mut link, "r1", lease).await;
    let mut snapshot = Vec::new();
    while snapshot.len() < 2 {
        let event = guarded("a snapshot ASSIGN", fresh.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.kind, AssignmentEventKind::Assign as i32);
        snapshot.push(event.job_id);
    }
    snapshot.sort();
    assert_eq!(snapshot, vec![a, b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_lead_never_trims() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    // The leader keeps events for a week; the standby would keep them for a
    // minute if it trimmed.
    let leading = replica(&clock, &dir, "leader", Duration::from_secs(7 * 24 * 3600)).await;
    guarded("leadership", leading.wait_leader()).await;
    let standby = replica(&clock, &dir, "standby", RETENTION).await;
    let mut api = client(&leading).await;
    submit_one(&mut api, "a").await;
    let before = job_log(&leading).await;
    for _ in 0..5 {
        clock.advance(RETENTION);
    }
    assert!(!standby.leadership.is_leader());
    let pass = Retention::new(
        standby.db.clone(),
        standby.keys.clone(),
        clock.shared(),
        standby.leadership.clone(),
        RETENTION,
    )
    .pass()
    .await;
    assert!(
        matches!(pass, Err(GlobalError::NotLeader { .. })),
        "{pass:?}"
    );
    let after = job_log(&leading).await;
    assert!(
        before.iter().all(|c| after.contains(c)),
        "no event was deleted"
    );
    assert_eq!(
        trim_at(&leading, &leading.keys.job_events_trim()).await,
        None
    );
    let mut stream = watch_from(&mut api, before[0].clone()).await.unwrap();
    let b = submit_one(&mut api, "b").await;
    until_job(&mut stream, &b).await;
}
