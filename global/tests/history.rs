//! Retention of finished jobs over a real socket, on a manual clock: a job
//! finished longer than the retention ago is removed with every record
//! keyed by it, GetJob says it finished and was removed, its request id is
//! free again, and its tombstone goes a retention period later; a younger
//! one is kept; a dependent judged after its dependency was removed reads
//! the dependency's end from the tombstone, and one judged after the
//! tombstone was forgotten too fails naming the dependency; a job whose end
//! has not reached its dependents yet is kept until it has; a replica that
//! does not lead removes nothing.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use meridian_control::{Clock, ManualClock};
use meridian_global::history::{History, Pass};
use meridian_global::server::{Running, start_with};
use meridian_global::{GlobalConfig, GlobalError};
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::job_dependency::Target;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::*;
use meridian_store::RangeOption;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const RETENTION: Duration = Duration::from_secs(60);

/// A replica on the SQLite file in `dir` whose time is `clock`. Its own
/// removal loop keeps jobs for a week, so only the passes the test runs
/// (with [`RETENTION`]) remove anything; leases are long enough that
/// moving the clock by minutes costs no lease.
async fn replica(clock: &ManualClock, dir: &tempfile::TempDir, name: &str) -> Running {
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.name = name.into();
    config.leader_lease = Duration::from_secs(3600);
    config.region_lease = Duration::from_secs(3600);
    config.controller_every = Duration::from_secs(3600);
    let db = meridian_store::open(&url).await.unwrap();
    start_with(config, db, clock.shared()).await.unwrap()
}

async fn leader(clock: &ManualClock, dir: &tempfile::TempDir) -> Running {
    let running = replica(clock, dir, "global").await;
    guarded("leadership", running.wait_leader()).await;
    running
}

/// One removal pass of `running` with [`RETENTION`].
async fn pass(running: &Running, clock: &ManualClock) -> Result<Pass, GlobalError> {
    History::new(
        running.db.clone(),
        running.keys.clone(),
        clock.shared(),
        running.leadership.clone(),
        RETENTION,
    )
    .pass()
    .await
}

struct Clients {
    api: FederationClient<Channel>,
    link: RegionLinkClient<Channel>,
    lease: u64,
}

async fn clients(running: &Running) -> Clients {
    let addr = format!("http://{}", running.grpc_addr);
    let api = FederationClient::connect(addr.clone()).await.unwrap();
    let mut link = RegionLinkClient::connect(addr).await.unwrap();
    let lease = register(&mut link, "r1").await;
    Clients { api, link, lease }
}

async fn get(api: &mut FederationClient<Channel>, job: &str) -> Result<Job, tonic::Status> {
    api.get_job(GetJobRequest { job_id: job.into() })
        .await
        .map(|r| r.into_inner().job.unwrap())
}

/// Follows `job`'s events until it is as `pred` wants.
async fn await_job(
    api: &mut FederationClient<Channel>,
    job: &str,
    what: &str,
    pred: impl Fn(&Job) -> bool,
) -> Job {
    let mut stream = api
        .watch_jobs(WatchJobsRequest {
            job_ids: vec![job.to_string()],
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let now = get(api, job).await.unwrap();
    if pred(&now) {
        return now;
    }
    loop {
        let event = guarded(what, stream.next()).await.unwrap().unwrap();
        if let Some(j) = event.job
            && pred(&j)
        {
            return j;
        }
    }
}

async fn submit_job(c: &mut Clients, request_id: &str, spec: JobSpec) -> String {
    c.api
        .submit_job(submit(request_id, spec))
        .await
        .unwrap()
        .into_inner()
        .job_id
}

/// Waits for `job` to be routed, then reports its two tasks and the job
/// ended in `state`.
async fn finish(c: &mut Clients, job: &str, state: JobState) {
    let routed = await_job(&mut c.api, job, "routed", |j| {
        j.state == JobState::Routed as i32
    })
    .await;
    let task_state = if state == JobState::Succeeded {
        TaskState::Succeeded
    } else {
        TaskState::Failed
    };
    let out = c
        .link
        .report_status(ReportStatusRequest {
            region: "r1".into(),
            region_lease_epoch: c.lease,
            updates: vec![JobStatusUpdate {
                job_id: job.into(),
                assignment_epoch: routed.assignment_epoch,
                status_version: 1,
                state: state as i32,
                failure_reason: "task 1 exited 3".into(),
                tasks: (0..2)
                    .map(|index| TaskStatus {
                        index,
                        state: task_state as i32,
                        ..TaskStatus::default()
                    })
                    .collect(),
                ..JobStatusUpdate::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.results[0].verdict, Verdict::Accepted as i32, "{out:?}");
    await_job(&mut c.api, job, "ended", |j| j.state == state as i32).await;
}

/// Every key of the deployment whose bytes hold `job`'s id.
async fn keys_naming(running: &Running, job: &str) -> Vec<Vec<u8>> {
    let root = running.keys.root().clone();
    let rows = running
        .db
        .run(|tx, _| {
            let range = root.range();
            async move { tx.get_range(RangeOption::from(range)).await }
        })
        .await
        .unwrap();
    rows.into_iter()
        .map(|kv| kv.key)
        .filter(|k| k.windows(job.len()).any(|w| w == job.as_bytes()))
        .collect()
}

async fn exists(running: &Running, key: Vec<u8>) -> bool {
    running
        .db
        .run(|tx, _| {
            let key = key.clone();
            async move { tx.get(&key).await }
        })
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_retention_is_removed_with_its_records_and_get_job_says_so() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut c = clients(&running).await;
    let old = submit_job(&mut c, "old", spec("t")).await;
    finish(&mut c, &old, JobState::Failed).await;
    clock.advance(RETENTION / 2);
    let young = submit_job(&mut c, "young", spec("t")).await;
    finish(&mut c, &young, JobState::Succeeded).await;
    let running_job = submit_job(&mut c, "running", spec("t")).await;
    await_job(&mut c.api, &running_job, "routed", |j| {
        j.state == JobState::Routed as i32
    })
    .await;
    assert!(exists(&running, running.keys.task(&old, 1)).await);

    clock.advance(RETENTION / 2 + Duration::from_secs(1));
    let removed_at = clock.now_unix_ms();
    let done = pass(&running, &clock).await.unwrap();
    assert_eq!((done.removed, done.deferred, done.forgotten), (1, 0, 0));

    let gone = get(&mut c.api, &old).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert!(
        gone.message()
            .contains(&format!("job {old} finished FAILED at "))
            && gone
                .message()
                .contains("was removed after the retention period"),
        "{}",
        gone.message()
    );
    // Nothing keyed by the job is left but its tombstone; its request id
    // is free again.
    let left: BTreeSet<Vec<u8>> = keys_naming(&running, &old).await.into_iter().collect();
    let tombstone = BTreeSet::from([
        running.keys.removed(&old),
        running.keys.removed_at(removed_at, &old),
    ]);
    assert_eq!(left, tombstone);
    assert!(!exists(&running, running.keys.request("t", "old")).await);
    // The young and the unfinished job are kept, and lists agree.
    assert_eq!(get(&mut c.api, &young).await.unwrap().tasks.len(), 2);
    get(&mut c.api, &running_job).await.unwrap();
    let listed: Vec<String> = c
        .api
        .list_jobs(ListJobsRequest {
            tenant: "t".into(),
            ..ListJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(listed, vec![young.clone(), running_job.clone()]);
    let again = c
        .api
        .submit_job(submit("old", spec("t")))
        .await
        .unwrap()
        .into_inner();
    assert!(again.created && again.job_id != old);

    // A retention period later the tombstone goes too, and the young job
    // with it once its own time has come.
    clock.advance(RETENTION + Duration::from_secs(1));
    let done = pass(&running, &clock).await.unwrap();
    assert_eq!((done.removed, done.forgotten), (1, 1));
    let gone = get(&mut c.api, &old).await.unwrap_err();
    assert_eq!(
        (gone.code(), gone.message()),
        (Code::NotFound, format!("not found: job {old}").as_str())
    );
    assert_eq!(keys_naming(&running, &old).await.len(), 0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_judged_after_its_dependency_was_removed_reads_its_end_from_the_tombstone() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut c = clients(&running).await;
    let a = submit_job(&mut c, "a", spec("t")).await;
    finish(&mut c, &a, JobState::Succeeded).await;
    let b = submit_job(&mut c, "b", spec("t")).await;
    let mut both = spec("t");
    both.dependencies = [&a, &b]
        .iter()
        .map(|id| JobDependency {
            condition: DependencyCondition::AfterOk as i32,
            target: Some(Target::JobId((*id).clone())),
        })
        .collect();
    let d = submit_job(&mut c, "d", both).await;
    assert_eq!(
        get(&mut c.api, &d).await.unwrap().waiting_reason,
        format!("waits for job {b} to succeed")
    );
    clock.advance(RETENTION + Duration::from_secs(1));
    assert_eq!(pass(&running, &clock).await.unwrap().removed, 1);
    assert_eq!(
        get(&mut c.api, &a).await.unwrap_err().code(),
        Code::NotFound
    );

    // b's end judges d again: a is gone, but it succeeded, so d runs.
    finish(&mut c, &b, JobState::Succeeded).await;
    let routed = await_job(&mut c.api, &d, "d routed", |j| {
        j.state != JobState::Pending as i32
    })
    .await;
    assert_eq!(routed.state, JobState::Routed as i32, "{routed:?}");

    // A new job may not name the removed one.
    let mut late = spec("t");
    late.dependencies = vec![JobDependency {
        condition: DependencyCondition::AfterOk as i32,
        target: Some(Target::JobId(a.clone())),
    }];
    let refused = c.api.submit_job(submit("late", late)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("spec.dependencies[0].job_id: ")
            && refused
                .message()
                .contains("was removed after the retention period"),
        "{}",
        refused.message()
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_still_waiting_when_the_tombstone_is_forgotten_fails_naming_the_dependency() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut c = clients(&running).await;
    let a = submit_job(&mut c, "a", spec("t")).await;
    finish(&mut c, &a, JobState::Succeeded).await;
    let b = submit_job(&mut c, "b", spec("t")).await;
    let mut both = spec("t");
    both.dependencies = [&a, &b]
        .iter()
        .map(|id| JobDependency {
            condition: DependencyCondition::AfterOk as i32,
            target: Some(Target::JobId((*id).clone())),
        })
        .collect();
    let d = submit_job(&mut c, "d", both).await;
    clock.advance(RETENTION + Duration::from_secs(1));
    assert_eq!(pass(&running, &clock).await.unwrap().removed, 1);
    clock.advance(RETENTION + Duration::from_secs(1));
    assert_eq!(pass(&running, &clock).await.unwrap().forgotten, 1);

    // Two retention periods after a ended nothing is known of it: d,
    // judged at b's end, fails instead of waiting for ever.
    finish(&mut c, &b, JobState::Succeeded).await;
    let failed = await_job(&mut c.api, &d, "d judged", |j| {
        j.state != JobState::Pending as i32
    })
    .await;
    assert_eq!(failed.state, JobState::Failed as i32, "{failed:?}");
    assert_eq!(
        failed.failure_reason,
        format!(
            "dependency {a} no longer exists (it finished and was removed more than a \
             retention period ago)"
        )
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_whose_end_has_not_reached_its_dependents_is_kept_until_it_has() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut c = clients(&running).await;
    let a = submit_job(&mut c, "a", spec("t")).await;
    finish(&mut c, &a, JobState::Succeeded).await;
    // The window between the commit that ends a job with dependents and
    // the controller pass that judges them, held open by hand.
    let settled = running.keys.settled(&a);
    running
        .db
        .run(|tx, _| {
            let settled = settled.clone();
            async move { tx.set(&settled, b"") }
        })
        .await
        .unwrap();
    clock.advance(RETENTION + Duration::from_secs(1));
    let done = pass(&running, &clock).await.unwrap();
    assert_eq!((done.removed, done.deferred), (0, 1));
    get(&mut c.api, &a).await.unwrap();
    running
        .db
        .run(|tx, _| {
            let settled = settled.clone();
            async move { tx.clear(&settled) }
        })
        .await
        .unwrap();
    let done = pass(&running, &clock).await.unwrap();
    assert_eq!((done.removed, done.deferred), (1, 0));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_does_not_lead_removes_nothing() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let mut c = clients(&running).await;
    let a = submit_job(&mut c, "a", spec("t")).await;
    finish(&mut c, &a, JobState::Succeeded).await;
    let standby = replica(&clock, &dir, "standby").await;
    clock.advance(RETENTION + Duration::from_secs(1));
    let refused = pass(&standby, &clock).await.unwrap_err();
    assert!(
        matches!(refused, GlobalError::NotLeader { .. }),
        "{refused:?}"
    );
    get(&mut c.api, &a).await.unwrap();
    standby.shutdown().await;
    running.shutdown().await;
}
