//! `ListJobs` served from the job indexes, over a real socket: lists by
//! tenant, state and region return exactly the jobs a brute-force filter
//! over every job finds, across pages of any size; the index entries are
//! exactly those of the stored records after every kind of change (writes
//! with random states and regions, routing, running, success, a hand-off
//! between regions, a cancel); a store written before the indexes existed
//! is backfilled by the leader and listed from them.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use meridian_control::SystemClock;
use meridian_global::server::{Running, start_with};
use meridian_global::{GlobalConfig, GlobalError, job_index, jobs};
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::*;
use meridian_store::RangeOption;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
const REGIONS: [&str; 3] = ["r1", "r2", "r3"];
const STATES: [JobState; 7] = [
    JobState::Pending,
    JobState::Routed,
    JobState::Placed,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

/// Awaits the index version key (the leader's backfill at start), by a
/// store watch.
async fn indexes_ready(running: &Running) {
    let key = running.keys.job_index_version();
    guarded("the job indexes", async {
        loop {
            let (ready, changed) = running
                .db
                .run(|tx, _| {
                    let key = key.clone();
                    async move {
                        let ready = tx.get(&key).await?.is_some();
                        Ok::<_, GlobalError>((ready, tx.watch(&key)?))
                    }
                })
                .await
                .unwrap();
            if ready {
                return;
            }
            changed.await.unwrap();
        }
    })
    .await
}

/// Every stored job record.
async fn records(running: &Running) -> Vec<Job> {
    let range = running.keys.jobs().range();
    let rows = running
        .db
        .run(|tx, _| {
            let range = range.clone();
            async move { tx.get_range(RangeOption::from(range)).await }
        })
        .await
        .unwrap();
    rows.iter()
        .map(|kv| Job::decode(kv.value.as_slice()).unwrap())
        .collect()
}

/// Keys of a subspace of the deployment.
async fn keys_under(running: &Running, sub: meridian_store::Subspace) -> BTreeSet<Vec<u8>> {
    let rows = running
        .db
        .run(|tx, _| {
            let range = sub.range();
            async move { tx.get_range(RangeOption::from(range)).await }
        })
        .await
        .unwrap();
    rows.into_iter().map(|kv| kv.key).collect()
}

/// The index entries are exactly those of the stored records: none
/// missing, none left behind by a change.
async fn assert_indexes_exact(running: &Running) {
    let keys = &running.keys;
    let jobs = records(running).await;
    let expected: BTreeSet<Vec<u8>> = jobs
        .iter()
        .flat_map(|job| job_index::entries(keys, job))
        .collect();
    let stored = keys_under(running, keys.root().subspace(&("job_ix",))).await;
    assert_eq!(stored.len(), expected.len(), "index entries by count");
    assert!(stored == expected, "index entries differ from the records");
    let finished: BTreeSet<Vec<u8>> = jobs
        .iter()
        .filter_map(|job| job_index::finished_at(job).map(|at| keys.finished(at, &job.job_id)))
        .collect();
    let stored = keys_under(running, keys.finisheds()).await;
    assert_eq!(stored.len(), finished.len(), "finished entries by count");
    assert!(
        stored == finished,
        "finished entries differ from the records"
    );
}

/// Every id a listing returns, page by page, checking the pages.
async fn list_all(api: &mut FederationClient<Channel>, mut req: ListJobsRequest) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let page = api.list_jobs(req.clone()).await.unwrap().into_inner();
        assert!(page.jobs.len() <= req.page_size as usize);
        ids.extend(page.jobs.into_iter().map(|j| j.job_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        req.page_token = page.next_page_token;
    }
}

/// The ids a brute-force filter over `jobs` keeps, in id order.
fn brute(jobs: &[Job], req: &ListJobsRequest) -> Vec<String> {
    let mut ids: Vec<String> = jobs
        .iter()
        .filter(|j| {
            let spec = j.spec.clone().unwrap_or_default();
            (req.tenant.is_empty() || spec.tenant == req.tenant)
                && (req.states.is_empty() || req.states.contains(&j.state))
                && (req.region.is_empty() || j.region == req.region)
                && req.label_selector.iter().all(|sel| {
                    spec.labels
                        .get(&sel.key)
                        .is_some_and(|v| sel.values.contains(v))
                })
        })
        .map(|j| j.job_id.clone())
        .collect();
    ids.sort();
    ids
}

fn query(tenant: &str, region: &str, states: &[JobState], page_size: u32) -> ListJobsRequest {
    ListJobsRequest {
        tenant: tenant.into(),
        region: region.into(),
        states: states.iter().map(|s| *s as i32).collect(),
        page_size,
        ..ListJobsRequest::default()
    }
}

/// Every list by tenant, region and single state agrees with the brute
/// force over the stored records.
async fn assert_lists_agree(running: &Running, api: &mut FederationClient<Channel>) {
    let jobs = records(running).await;
    for tenant in ["", TENANTS[0], TENANTS[1]] {
        for region in ["", REGIONS[0], REGIONS[1]] {
            let mut state_sets: Vec<Vec<JobState>> = vec![vec![]];
            state_sets.extend(STATES.iter().map(|s| vec![*s]));
            for states in state_sets {
                let req = query(tenant, region, &states, 2);
                assert_eq!(
                    list_all(api, req.clone()).await,
                    brute(&jobs, &req),
                    "{req:?}"
                );
            }
        }
    }
}

/// A job record as a client would have made it, in `state` and `region`.
fn record(id: &str, tenant: &str, state: JobState, region: &str, team: &str, at: u64) -> Job {
    let mut spec = spec(tenant);
    spec.labels.insert("team".into(), team.into());
    Job {
        job_id: id.into(),
        request_id: id.into(),
        spec: Some(spec),
        state: state as i32,
        region: region.into(),
        created_at_unix_ms: at,
        updated_at_unix_ms: at,
        ..Job::default()
    }
}

fn random_record(rng: &mut ChaCha8Rng, id: &str, at: u64) -> Job {
    let state = STATES[rng.random_range(0..STATES.len())];
    // A pending job is in no region; one in another state mostly is.
    let region = if state == JobState::Pending || rng.random_bool(0.1) {
        ""
    } else {
        REGIONS[rng.random_range(0..REGIONS.len())]
    };
    let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
    let team = ["ml", "web"][rng.random_range(0..2)];
    record(id, tenant, state, region, team, at)
}

/// Writes `jobs` through the one helper every job write goes through.
async fn write(running: &Running, jobs: &[Job]) {
    for chunk in jobs.chunks(100) {
        let keys = running.keys.clone();
        running
            .db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    for job in chunk {
                        jobs::write_job(&tx, &keys, job).await?;
                    }
                    Ok::<_, GlobalError>(())
                }
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_by_tenant_state_and_region_return_exactly_the_matching_jobs_across_pages() {
    let h = Harness::start(|_| {}).await;
    indexes_ready(&h.running).await;
    let mut api = h.federation().await;
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let ids: Vec<String> = (0..600).map(|i| format!("j0000000077-{i:012}")).collect();
    let jobs: Vec<Job> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| random_record(&mut rng, id, 1_000 + i as u64))
        .collect();
    write(&h.running, &jobs).await;
    // Half of the unfinished ones change state, region or both, through
    // the same helper (a finished job never changes again).
    let mut changed = Vec::new();
    for job in &jobs {
        let finished = job_index::finished_at(job).is_some();
        if !finished && rng.random_bool(0.5) {
            let tenant = job.spec.as_ref().unwrap().tenant.clone();
            let mut next = random_record(&mut rng, &job.job_id, 5_000);
            next.spec.as_mut().unwrap().tenant = tenant;
            changed.push(next);
        }
    }
    write(&h.running, &changed).await;
    assert_indexes_exact(&h.running).await;
    let stored = records(&h.running).await;
    for round in 0..120 {
        let tenant = ["", TENANTS[0], TENANTS[1], TENANTS[2], "nobody"][rng.random_range(0..5)];
        let region = ["", REGIONS[0], REGIONS[1], REGIONS[2]][rng.random_range(0..4)];
        let states: Vec<JobState> = (0..rng.random_range(0..3))
            .map(|_| STATES[rng.random_range(0..STATES.len())])
            .collect();
        let page_size = [1, 3, 17, 100, 1000][rng.random_range(0..5)];
        let mut req = query(tenant, region, &states, page_size);
        if round % 4 == 0 {
            req.label_selector = vec![LabelRequirement {
                key: "team".into(),
                op: LabelOperator::In as i32,
                values: vec!["ml".into()],
            }];
        }
        // The unfiltered scan with tiny pages is slow and not what is
        // tested here.
        if tenant.is_empty() && region.is_empty() && states.is_empty() && page_size < 17 {
            continue;
        }
        assert_eq!(
            list_all(&mut api, req.clone()).await,
            brute(&stored, &req),
            "round {round}: {req:?}"
        );
    }
}

/// Follows `job`'s events until `pred` holds.
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
    let now = api
        .get_job(GetJobRequest { job_id: job.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
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

async fn report(
    link: &mut meridian_proto::v1::region_link_client::RegionLinkClient<Channel>,
    region: &str,
    lease: u64,
    job: &Job,
    version: u64,
    state: JobState,
) {
    let out = link
        .report_status(ReportStatusRequest {
            region: region.into(),
            region_lease_epoch: lease,
            updates: vec![JobStatusUpdate {
                job_id: job.job_id.clone(),
                assignment_epoch: job.assignment_epoch,
                status_version: version,
                state: state as i32,
                ..JobStatusUpdate::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.results[0].verdict, Verdict::Accepted as i32, "{out:?}");
}

fn in_state(state: JobState) -> impl Fn(&Job) -> bool {
    move |j| j.state == state as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexes_follow_jobs_through_routing_success_a_hand_off_and_a_cancel() {
    let h = Harness::start(|_| {}).await;
    indexes_ready(&h.running).await;
    let mut api = h.federation().await;
    let mut link = h.link().await;
    let r1 = register(&mut link, "r1").await;
    let submit_as = |request: &str, tenant: &str| submit(request, spec(tenant));
    let a = api
        .submit_job(submit_as("a", "acme"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let routed = await_job(&mut api, &a, "a routed", in_state(JobState::Routed)).await;
    assert_eq!(routed.region, "r1");
    assert_lists_agree(&h.running, &mut api).await;
    assert_indexes_exact(&h.running).await;
    report(&mut link, "r1", r1, &routed, 1, JobState::Running).await;
    await_job(&mut api, &a, "a running", in_state(JobState::Running)).await;
    assert_lists_agree(&h.running, &mut api).await;
    report(&mut link, "r1", r1, &routed, 2, JobState::Succeeded).await;
    await_job(&mut api, &a, "a succeeded", in_state(JobState::Succeeded)).await;
    assert_lists_agree(&h.running, &mut api).await;
    assert_indexes_exact(&h.running).await;

    // A hand-off: r1 drained with evacuation, releases the job, r2 gets it.
    let b = api
        .submit_job(submit_as("b", "globex"))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let held = await_job(&mut api, &b, "b routed", in_state(JobState::Routed)).await;
    let r2 = register(&mut link, "r2").await;
    api.drain_region(DrainRegionRequest {
        region: "r1".into(),
        reason: "maintenance".into(),
        evacuate: true,
    })
    .await
    .unwrap();
    let revoked = await_job(&mut api, &b, "b revoked", |j| {
        j.assignment_epoch > held.assignment_epoch
    })
    .await;
    assert_lists_agree(&h.running, &mut api).await;
    let released = link
        .release_jobs(ReleaseJobsRequest {
            region: "r1".into(),
            region_lease_epoch: r1,
            releases: vec![JobRelease {
                job_id: b.clone(),
                assignment_epoch: revoked.assignment_epoch,
                final_tasks: vec![],
                ..JobRelease::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.results[0].verdict, Verdict::Accepted as i32);
    let moved = await_job(&mut api, &b, "b routed to r2", |j| j.region == "r2").await;
    assert_eq!(moved.state, JobState::Routed as i32);
    assert_eq!(
        list_all(&mut api, query("", "r2", &[], 10)).await,
        vec![b.clone()]
    );
    assert_eq!(
        list_all(&mut api, query("globex", "r1", &[], 10)).await,
        Vec::<String>::new()
    );
    assert_lists_agree(&h.running, &mut api).await;
    assert_indexes_exact(&h.running).await;
    report(&mut link, "r2", r2, &moved, 1, JobState::Running).await;
    await_job(&mut api, &b, "b running", in_state(JobState::Running)).await;

    // A cancel of a job no region can take: CANCELLED at once.
    let mut huge = spec("acme");
    huge.resources.as_mut().unwrap().cpu_millis = 1_000_000;
    let c = api
        .submit_job(submit("c", huge))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    assert_eq!(
        list_all(&mut api, query("acme", "", &[JobState::Pending], 10)).await,
        vec![c.clone()]
    );
    api.cancel_job(CancelJobRequest {
        job_id: c.clone(),
        reason: "not needed".into(),
    })
    .await
    .unwrap();
    await_job(&mut api, &c, "c cancelled", in_state(JobState::Cancelled)).await;
    assert_eq!(
        list_all(&mut api, query("acme", "", &[JobState::Cancelled], 10)).await,
        vec![c.clone()]
    );
    assert_eq!(
        list_all(&mut api, query("acme", "", &[JobState::Pending], 10)).await,
        Vec::<String>::new()
    );
    assert_lists_agree(&h.running, &mut api).await;
    assert_indexes_exact(&h.running).await;
    h.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_before_the_indexes_is_backfilled_by_the_leader_and_listed_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let keys = meridian_global::keys::Keys::new("default");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // More records than one backfill batch, written as an older build
    // wrote them: the record alone.
    let jobs: Vec<Job> = (0..(job_index::BACKFILL_BATCH * 2 + 37))
        .map(|i| random_record(&mut rng, &format!("j0000000003-{i:012}"), 10 + i as u64))
        .collect();
    {
        let db = meridian_store::open(&url).await.unwrap();
        for chunk in jobs.chunks(200) {
            let keys = keys.clone();
            db.run(|tx, _| {
                let keys = keys.clone();
                async move {
                    for job in chunk {
                        tx.set(&keys.job(&job.job_id), &job.encode_to_vec())?;
                    }
                    Ok::<_, GlobalError>(())
                }
            })
            .await
            .unwrap();
        }
    }
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.controller_every = Duration::from_secs(3600);
    let db = meridian_store::open(&url).await.unwrap();
    let running = start_with(config, db, SystemClock::shared()).await.unwrap();
    guarded("leadership", running.wait_leader()).await;
    indexes_ready(&running).await;
    assert_indexes_exact(&running).await;
    let mut api = FederationClient::connect(format!("http://{}", running.grpc_addr))
        .await
        .unwrap();
    for tenant in TENANTS {
        for state in STATES {
            let req = query(tenant, "", &[state], 50);
            assert_eq!(list_all(&mut api, req.clone()).await, brute(&jobs, &req));
        }
    }
    for region in REGIONS {
        let req = query("", region, &[], 50);
        assert_eq!(list_all(&mut api, req.clone()).await, brute(&jobs, &req));
    }
    running.shutdown().await;
}
