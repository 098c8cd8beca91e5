//! Two `meridian global` processes on one SQLite file; the leader is killed
//! with SIGKILL under a steady submit load. Clients retry with the same
//! request ids (following the `meridian-leader` hint); at the end no
//! acknowledged job is lost and no request id made two jobs. The clients
//! are the CLI's leader-following client, so the test itself never pauses
//! between attempts. The measured
//! failover time (kill -> first acknowledged submit by the new leader) is
//! printed and must be under 3 s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::*;
use tokio::sync::Mutex;

use crate::support;

use support::Global;

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 150;
const KILL_AFTER: usize = 300;
/// Failure guard only.
const GUARD: Duration = Duration::from_secs(120);

/// A client that follows the leader: the product's own (the CLI's), which
/// sends a refused submit where the `meridian-leader` hint points, or to the
/// next replica after the retry rule's pause, with the same request id.
struct Client(meridian_cli::client::Client);

impl Client {
    fn new(endpoints: &[String]) -> Client {
        let args = meridian_cli::client::ConnectArgs::new(endpoints.join(","), GUARD);
        Client(meridian_cli::client::Client::new(&args).expect("a client of the replicas"))
    }

    async fn submit(&mut self, req: SubmitJobRequest) -> SubmitJobResponse {
        self.0
            .call(|mut c| {
                let req = req.clone();
                async move { c.submit_job(req).await }
            })
            .await
            .unwrap_or_else(|e| panic!("submit {}: {e}", req.request_id))
    }
}

fn spec(i: usize) -> JobSpec {
    support::tiny_job(&format!("load-{i}"), "load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_global_leader_under_load_loses_no_acknowledged_job_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut replicas = [Global::replica(&url, "g1"), Global::replica(&url, "g2")];
    let endpoints: Vec<String> = replicas.iter().map(|r| r.grpc.clone()).collect();

    let acked = Arc::new(Mutex::new(Vec::<(String, String, Instant)>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill_tx = Arc::new(std::sync::Mutex::new(Some(kill_tx)));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (endpoints, acked, count, kill_tx) = (
            endpoints.clone(),
            acked.clone(),
            count.clone(),
            kill_tx.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut client = Client::new(&endpoints);
            for i in 0..PER_CLIENT {
                let request_id = format!("c{c}-{i:04}");
                let response = client
                    .submit(SubmitJobRequest {
                        request_id: request_id.clone(),
                        spec: Some(spec(i)),
                    })
                    .await;
                acked
                    .lock()
                    .await
                    .push((request_id, response.job_id, Instant::now()));
                if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER
                    && let Some(tx) = kill_tx.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
            }
        }));
    }

    tokio::time::timeout(GUARD, kill_rx)
        .await
        .expect("load started")
        .unwrap();
    // Find the leader: the replica whose advertisement is current answers
    // writes; ask each with a probe submit.
    let mut leader = None;
    for (i, endpoint) in endpoints.iter().enumerate() {
        let mut probe = FederationClient::connect(endpoint.clone()).await.unwrap();
        let ok = probe
            .submit_job(SubmitJobRequest {
                request_id: "probe".into(),
                spec: Some(spec(0)),
            })
            .await
            .is_ok();
        if ok {
            leader = Some(i);
        }
    }
    let leader = leader.expect("one replica leads");
    let killed_at = Instant::now();
    replicas[leader].proc.kill_now();

    for c in clients {
        tokio::time::timeout(GUARD, c)
            .await
            .expect("clients finish")
            .unwrap();
    }
    let acked = acked.lock().await.clone();
    let failover = acked
        .iter()
        .filter(|(_, _, at)| *at > killed_at)
        .map(|(_, _, at)| at.duration_since(killed_at))
        .min()
        .expect("submits acknowledged after the kill");
    println!(
        "global failover: {:.0} ms from SIGKILL of the leader to the first acknowledged submit ({} submits by {} clients)",
        failover.as_secs_f64() * 1000.0,
        acked.len(),
        CLIENTS
    );

    // Check on the survivor: every acknowledged job exists, under its
    // request id; every request id made exactly one job.
    let survivor = &endpoints[1 - leader];
    let mut api = FederationClient::connect(survivor.clone()).await.unwrap();
    let mut jobs = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_jobs(ListJobsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..ListJobsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let by_request: BTreeMap<String, Vec<String>> =
        jobs.iter().fold(BTreeMap::new(), |mut m, j| {
            m.entry(j.request_id.clone())
                .or_insert_with(Vec::new)
                .push(j.job_id.clone());
            m
        });
    let dupes: Vec<_> = by_request.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(dupes.is_empty(), "request ids with two jobs: {dupes:?}");
    let stored: BTreeSet<String> = jobs.iter().map(|j| j.job_id.clone()).collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(_, job, _)| !stored.contains(job))
        .collect();
    assert!(lost.is_empty(), "acknowledged jobs lost: {lost:?}");
    for (request_id, job_id, _) in &acked {
        assert_eq!(
            by_request.get(request_id),
            Some(&vec![job_id.clone()]),
            "{request_id}"
        );
    }
    assert_eq!(acked.len(), CLIENTS * PER_CLIENT);
    assert!(
        failover < Duration::from_secs(3),
        "failover took {failover:?}"
    );
}
