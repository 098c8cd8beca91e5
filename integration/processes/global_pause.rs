//! A global leader that stops answering without going away: two
//! `meridian global` processes on one SQLite file, the leader frozen with
//! SIGSTOP (as a long GC pause, a stalled disk or a half-open connection
//! look to a client). `meridian job submit`, given the frozen leader first,
//! must give up on it after one attempt deadline and complete through the
//! standby, and the frozen process, once resumed, must not make the job a
//! second time: every attempt carried the same request id.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::*;
use nix::sys::signal::{Signal, kill};

mod support;

use support::Global;

/// Failure guard only: how long a step may take before the test fails.
const GUARD: Duration = Duration::from_secs(60);
/// What the submit must take at most while the leader is frozen.
const BOUND: Duration = Duration::from_secs(5);
const REQUEST_ID: &str = "paused-leader-submit";

fn spec() -> JobSpec {
    support::tiny_job("paused", "test")
}

/// Polls `check` until it answers, failing the test after [`GUARD`].
async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {GUARD:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The index of the replica that accepts writes (a standby refuses them
/// with its leader hint).
async fn leader(endpoints: &[String]) -> usize {
    poll("a replica leads", || async {
        for (i, endpoint) in endpoints.iter().enumerate() {
            let Ok(mut c) = FederationClient::connect(endpoint.clone()).await else {
                continue;
            };
            let probe = SubmitJobRequest {
                request_id: format!("probe-{i}"),
                spec: Some(spec()),
            };
            if c.submit_job(probe).await.is_ok() {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// Every job the replica at `endpoint` lists.
async fn all_jobs(endpoint: &str) -> Option<Vec<Job>> {
    let mut c = FederationClient::connect(endpoint.to_string()).await.ok()?;
    let mut jobs = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_jobs(ListJobsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..ListJobsRequest::default()
            })
            .await
            .ok()?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Some(jobs);
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_sent_to_a_frozen_global_leader_completes_through_the_standby_within_5_s_and_makes_one_job()
 {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let replicas = [Global::replica(&url, "g1"), Global::replica(&url, "g2")];
    let endpoints: Vec<String> = replicas.iter().map(|r| r.grpc.clone()).collect();
    let frozen = leader(&endpoints).await;
    let standby = 1 - frozen;
    let pid = replicas[frozen].proc.pid();

    kill(pid, Signal::SIGSTOP).expect("SIGSTOP the leader");
    let started = Instant::now();
    // The frozen leader first: the order a client that knew the old leader
    // would try.
    let mut submit = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "job",
            "submit",
            "--simulate",
            "10",
            "--request-id",
            REQUEST_ID,
        ])
        .env(
            "MERIDIAN_ENDPOINT",
            format!("{},{}", endpoints[frozen], endpoints[standby]),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run meridian job submit");
    let status = poll("the submit ends", || {
        let ended = submit.try_wait().expect("wait for the submit");
        async move { ended }
    })
    .await;
    let took = started.elapsed();
    let output = submit.wait_with_output().expect("submit output");
    println!(
        "submit with the global leader frozen: {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    assert!(
        status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(took < BOUND, "the submit took {took:?}");
    let job_id = String::from_utf8_lossy(&output.stdout).trim().to_string();

    kill(pid, Signal::SIGCONT).expect("SIGCONT the old leader");
    // The resumed process has caught up (with its lease, and with what was
    // sent to it while frozen) once it refuses a write naming the standby.
    let new_leader = endpoints[standby].clone();
    poll("the resumed replica names the new leader", || {
        let (endpoint, new_leader) = (endpoints[frozen].clone(), new_leader.clone());
        async move {
            let mut c = FederationClient::connect(endpoint).await.ok()?;
            let probe = SubmitJobRequest {
                request_id: "probe-after-resume".into(),
                spec: Some(spec()),
            };
            let refused = c.submit_job(probe).await.err()?;
            let hint = refused
                .metadata()
                .get(meridian_proto::LEADER_METADATA_KEY)?;
            (hint.to_str().ok()? == new_leader).then_some(())
        }
    })
    .await;
    let seen_by_resumed = poll("the resumed replica lists the jobs", || {
        all_jobs(&endpoints[frozen])
    })
    .await;
    let jobs = poll("the standby lists the jobs", || {
        all_jobs(&endpoints[standby])
    })
    .await;
    for (who, jobs) in [("resumed", &seen_by_resumed), ("standby", &jobs)] {
        let made: Vec<&str> = jobs
            .iter()
            .filter(|j| j.request_id == REQUEST_ID)
            .map(|j| j.job_id.as_str())
            .collect();
        assert_eq!(
            made,
            vec![job_id.as_str()],
            "jobs seen by the {who} replica"
        );
    }
}
