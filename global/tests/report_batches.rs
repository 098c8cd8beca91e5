//! What the global tier's writers cost its store.
//!
//! A region's batched calls cost a fixed number of reads, whatever the
//! number of items: what every item of an acknowledgement or a status report
//! reads is read with the batch, in one round trip. On SQLite a read after
//! the first write of a transaction holds the process's write turn, so a
//! read per item would make every other writer of the replica (submits,
//! routing, the other regions' reports) wait out the whole batch.
//!
//! And the writers that commit side by side on the hot path (submits,
//! routing, acknowledgements, status reports) never lose a race for the
//! store: on SQLite any commit between a transaction's first read and its
//! commit fails it, and at 1,000 jobs/s about half of their first attempts
//! did, each thrown away with its reads and its work.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meridian_control::SystemClock;
use meridian_global::GlobalConfig;
use meridian_global::server::{Running, start_with};
use meridian_proto::v1::*;
use meridian_store::Database;
use meridian_store::fault::{FaultConfig, FaultyBackend};
use meridian_store::sqlite::{SqliteBackend, SqliteOptions};
use tokio_stream::StreamExt;

/// Jobs per batch: well above the handful of reads a batch makes itself.
const JOBS: usize = 500;

/// Reads counted around a batch, whatever its size: the batch's own
/// prefetch (and a retry's, if its commit lost a race with another writer),
/// and what the replica reads meanwhile on its own: the routing pass an
/// accepted report wakes, the leader's renewals. A tenth of the items: a
/// read per item, as before, made 308 for 300 items.
const READS_PER_BATCH: u64 = JOBS as u64 / 10;

type Link = meridian_proto::v1::region_link_client::RegionLinkClient<tonic::transport::Channel>;
type Api = meridian_proto::v1::federation_client::FederationClient<tonic::transport::Channel>;

/// A leading replica on a SQLite file in `dir`, its store counted, with a
/// region link client and an API client connected to it.
async fn replica(dir: &tempfile::TempDir) -> (Running, Arc<FaultyBackend>, Link, Api) {
    let path = dir.path().join("global.db");
    let sqlite = SqliteBackend::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    let counting = Arc::new(FaultyBackend::new(Arc::new(sqlite), FaultConfig::none(), 1));
    let url = format!("sqlite:{}", path.display());
    let mut config = GlobalConfig::new(url, "127.0.0.1:0".parse().unwrap());
    config.region_lease = Duration::from_secs(3600);
    let running = start_with(
        config,
        Database::new(counting.clone()),
        SystemClock::shared(),
    )
    .await
    .unwrap();
    guarded("leadership", running.wait_leader()).await;
    let grpc = format!("http://{}", running.grpc_addr);
    let link = Link::connect(grpc.clone()).await.unwrap();
    let api = Api::connect(grpc).await.unwrap();
    (running, counting, link, api)
}

fn all_accepted(results: &[ItemResult]) -> bool {
    results
        .iter()
        .all(|r| r.verdict == Verdict::Accepted as i32)
}

fn one_task(tenant: &str) -> JobSpec {
    JobSpec {
        task_count: 1,
        ..spec(tenant)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_and_reporting_five_hundred_jobs_reads_the_store_a_few_times_not_once_per_job()
 {
    let dir = tempfile::tempdir().unwrap();
    let (_running, store, mut link, mut api) = replica(&dir).await;
    let lease = register(&mut link, "r1").await;
    let mut stream = assignments(&mut link, "r1", lease).await;
    let requests = (0..JOBS)
        .map(|i| submit(&format!("job-{i}"), one_task("acme")))
        .collect();
    let submitted = api
        .submit_jobs(SubmitJobsRequest { items: requests })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(submitted.results.len(), JOBS);

    let mut held = Vec::new();
    while held.len() < JOBS {
        let event = guarded("assignment", stream.next()).await.unwrap().unwrap();
        if event.kind == AssignmentEventKind::Assign as i32 {
            held.push(JobEpoch {
                job_id: event.job_id,
                assignment_epoch: event.assignment_epoch,
            });
        }
    }

    let before = store.stats().reads;
    let acked = link
        .ack_assignments(AckAssignmentsRequest {
            region: "r1".into(),
            region_lease_epoch: lease,
            acks: held.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let ack_reads = store.stats().reads - before;
    assert!(
        all_accepted(&acked.results),
        "every acknowledgement accepted: {acked:?}"
    );

    // Each job's one task ran for a second and succeeded: the report
    // counts usage (what was counted before is read for every job), moves
    // each job to a final state and writes its task.
    let updates = held
        .iter()
        .map(|h| JobStatusUpdate {
            job_id: h.job_id.clone(),
            assignment_epoch: h.assignment_epoch,
            status_version: 1,
            state: JobState::Succeeded as i32,
            task_counts: Some(TaskCounts {
                succeeded: 1,
                ..TaskCounts::default()
            }),
            tasks: vec![TaskStatus {
                index: 0,
                state: TaskState::Succeeded as i32,
                ..TaskStatus::default()
            }],
            task_run_ms: 1_000,
            tasks_run: 1,
            ..JobStatusUpdate::default()
        })
        .collect();
    let before = store.stats().reads;
    let reported = link
        .report_status(ReportStatusRequest {
            region: "r1".into(),
            region_lease_epoch: lease,
            updates,
        })
        .await
        .unwrap()
        .into_inner();
    let status_reads = store.stats().reads - before;
    assert!(
        all_accepted(&reported.results),
        "every status accepted: {reported:?}"
    );
    assert!(
        ack_reads <= READS_PER_BATCH && status_reads <= READS_PER_BATCH,
        "reads of the store: {ack_reads} for {JOBS} acknowledgements, \
         {status_reads} for {JOBS} status updates (at most {READS_PER_BATCH} each)"
    );

    // What the batches wrote is what a reader sees: every job succeeded.
    for h in &held {
        let job = api
            .get_job(GetJobRequest {
                job_id: h.job_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(job.state, JobState::Succeeded as i32, "{}", h.job_id);
    }
}

/// Acknowledges a held job, reports it running and then succeeded, each on
/// a call of its own: a transaction each, beside the other jobs' calls.
async fn acknowledge_and_finish(mut link: Link, lease: u64, held: JobEpoch) -> Vec<ItemResult> {
    let mut results = link
        .ack_assignments(AckAssignmentsRequest {
            region: "r1".into(),
            region_lease_epoch: lease,
            acks: vec![held.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for (version, state) in [(1, JobState::Running), (2, JobState::Succeeded)] {
        let update = JobStatusUpdate {
            job_id: held.job_id.clone(),
            assignment_epoch: held.assignment_epoch,
            status_version: version,
            state: state as i32,
            task_run_ms: if state == JobState::Succeeded {
                1_000
            } else {
                0
            },
            tasks_run: u64::from(state == JobState::Succeeded),
            ..JobStatusUpdate::default()
        };
        results.extend(
            link.report_status(ReportStatusRequest {
                region: "r1".into(),
                region_lease_epoch: lease,
                updates: vec![update],
            })
            .await
            .unwrap()
            .into_inner()
            .results,
        );
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_routing_and_region_reports_committing_side_by_side_never_lose_a_race_for_the_store()
 {
    const SUBMITTERS: usize = 8;
    const EACH: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let (_running, store, mut link, api) = replica(&dir).await;
    let lease = register(&mut link, "r1").await;
    let mut stream = assignments(&mut link, "r1", lease).await;
    let before = store.stats().lost_races;

    let mut submitters = tokio::task::JoinSet::new();
    for s in 0..SUBMITTERS {
        let mut api = api.clone();
        submitters.spawn(async move {
            for i in 0..EACH {
                let request = submit(&format!("race-{s}-{i}"), one_task("acme"));
                api.submit_job(request).await.unwrap();
            }
        });
    }
    // Each job is acknowledged and reported as soon as it is assigned,
    // while the submitters and the router go on. One deadline for all of
    // them: the stream's bookmarks would keep a per-event one from
    // expiring if a submit failed and its job never came.
    let mut reports = tokio::task::JoinSet::new();
    guarded("every assignment", async {
        let mut assigned = 0;
        while assigned < SUBMITTERS * EACH {
            let event = stream.next().await.unwrap().unwrap();
            if event.kind == AssignmentEventKind::Assign as i32 {
                assigned += 1;
                let held = JobEpoch {
                    job_id: event.job_id,
                    assignment_epoch: event.assignment_epoch,
                };
                reports.spawn(acknowledge_and_finish(link.clone(), lease, held));
            }
        }
    })
    .await;
    guarded("submitters", submitters.join_all()).await;
    let results = guarded("reports", reports.join_all()).await;

    assert!(
        results.iter().all(|r| all_accepted(r)),
        "every acknowledgement and status accepted: {results:?}"
    );
    let lost = store.stats().lost_races - before;
    assert_eq!(
        lost,
        0,
        "commits of {} jobs' submits, routing and reports lost {lost} races",
        SUBMITTERS * EACH
    );
}
