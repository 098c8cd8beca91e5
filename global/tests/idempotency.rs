//! Request-id idempotency over real gRPC (and HTTP) on loopback: a retry
//! with the same spec returns the first job, the same request id with
//! another spec is refused with ALREADY_EXISTS naming that job, in unary and
//! batched submits, and under racing submits.

use crate::common;

use std::collections::BTreeMap;

use common::*;
use meridian_proto::v1::submit_job_result::Outcome;
use meridian_proto::v1::*;
use tonic::Code;

/// `spec(tenant)` with another task count: a different spec.
fn other_spec(tenant: &str) -> JobSpec {
    JobSpec {
        task_count: 3,
        ..spec(tenant)
    }
}

/// The jobs of `tenant` in the store.
async fn jobs_of(
    client: &mut meridian_proto::v1::federation_client::FederationClient<tonic::transport::Channel>,
    tenant: &str,
) -> Vec<Job> {
    client
        .list_jobs(ListJobsRequest {
            tenant: tenant.into(),
            page_size: 1000,
            ..ListJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_retry_returns_the_original_job() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let first = client
        .submit_job(submit("same", spec("acme")))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let again = client
        .submit_job(submit("same", spec("acme")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again,
        SubmitJobResponse {
            created: false,
            ..first.clone()
        },
        "the retry is answered with the first job"
    );
    let batch = client
        .submit_jobs(SubmitJobsRequest {
            items: vec![submit("same", spec("acme"))],
        })
        .await
        .unwrap()
        .into_inner();
    match &batch.results[0].outcome {
        Some(Outcome::Accepted(accepted)) => assert_eq!(accepted, &again),
        other => panic!("batched retry was {other:?}"),
    }
    assert_eq!(jobs_of(&mut client, "acme").await.len(), 1, "one job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_with_another_spec_is_refused_with_already_exists_naming_the_job() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let first = client
        .submit_job(submit("reused", spec("acme")))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);

    let refused = client
        .submit_job(submit("reused", other_spec("acme")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(
        refused.message().contains(&first.job_id),
        "the message names job {}: {:?}",
        first.job_id,
        refused.message()
    );

    // In a batch the reuse fails its item only; the item beside it commits.
    let batch = client
        .submit_jobs(SubmitJobsRequest {
            items: vec![
                submit("reused", other_spec("acme")),
                submit("fresh", spec("acme")),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    match &batch.results[0].outcome {
        Some(Outcome::Error(e)) => {
            assert_eq!(e.code, Code::AlreadyExists as i32, "{e:?}");
            assert!(e.message.contains(&first.job_id), "{e:?}");
        }
        other => panic!("batched reuse was {other:?}"),
    }
    match &batch.results[1].outcome {
        Some(Outcome::Accepted(accepted)) => assert!(accepted.created),
        other => panic!("the item beside it was {other:?}"),
    }

    // One request id twice in one batch (one transaction): the second item
    // is judged against the job the first just wrote.
    let batch = client
        .submit_jobs(SubmitJobsRequest {
            items: vec![
                submit("twice", spec("acme")),
                submit("twice", other_spec("acme")),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Outcome::Accepted(twice)) = &batch.results[0].outcome else {
        panic!("the first item was {:?}", batch.results[0]);
    };
    assert!(twice.created);
    match &batch.results[1].outcome {
        Some(Outcome::Error(e)) => {
            assert_eq!(e.code, Code::AlreadyExists as i32, "{e:?}");
            assert!(e.message.contains(&twice.job_id), "{e:?}");
        }
        other => panic!("the second item was {other:?}"),
    }

    let job = client
        .get_job(GetJobRequest {
            job_id: first.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.spec, Some(spec("acme")), "the first spec is kept");
    assert_eq!(jobs_of(&mut client, "acme").await.len(), 3);

    // Request ids are per tenant: another tenant's spec under the same id is
    // a job of its own.
    let elsewhere = client
        .submit_job(submit("reused", other_spec("other")))
        .await
        .unwrap()
        .into_inner();
    assert!(elsewhere.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_409_json_naming_the_job_for_a_request_id_reused_with_another_spec() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();
    let body = |cpu: u32| {
        format!(
            r#"{{"request_id":"h1","spec":{{"name":"n","tenant":"t","task_count":1,"task":{{"simulated":{{"duration_ms":5}}}},"resources":{{"cpu_millis":{cpu},"memory_bytes":1}}}}}}"#
        )
    };
    let (status, created) = http(addr, "POST", "/v1/jobs", &body(100)).await;
    assert_eq!(status, 200, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let job_id = created["job_id"].as_str().unwrap().to_string();

    let (status, again) = http(addr, "POST", "/v1/jobs", &body(100)).await;
    assert_eq!(status, 200, "{again}");
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["job_id"], job_id.as_str(), "an identical retry");

    let (status, refused) = http(addr, "POST", "/v1/jobs", &body(200)).await;
    assert_eq!(status, 409, "{refused}");
    let err: serde_json::Value = serde_json::from_str(&refused).unwrap();
    assert_eq!(err["code"], "AlreadyExists", "{refused}");
    assert!(
        err["message"].as_str().unwrap().contains(&job_id),
        "the message names job {job_id}: {refused}"
    );
    assert_eq!(err["field"], serde_json::Value::Null, "{refused}");
}

/// What one submit of a race came to.
#[derive(Debug)]
enum Answer {
    Created(String),
    Refused(i32, String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_submits_of_one_request_id_with_two_specs_make_one_job_and_refuse_the_other() {
    let h = Harness::start(|_| {}).await;
    let client = h.federation().await;
    let ids: Vec<String> = (0..50).map(|i| format!("race-{i:02}")).collect();
    // Each id is sent twice at once: unary with one spec (through the group
    // commit) and in a batch with the other (a transaction of its own), so
    // the two land in one transaction or race between two.
    let unary: Vec<_> = ids
        .iter()
        .map(|id| {
            let (mut client, req) = (client.clone(), submit(id, spec("acme")));
            tokio::spawn(async move { client.submit_job(req).await })
        })
        .collect();
    let batches: Vec<_> = ids
        .chunks(25)
        .map(|chunk| {
            let mut client = client.clone();
            let items = chunk.iter().map(|id| submit(id, other_spec("acme")));
            let req = SubmitJobsRequest {
                items: items.collect(),
            };
            tokio::spawn(async move { client.submit_jobs(req).await })
        })
        .collect();
    let mut answers: BTreeMap<String, Vec<(u32, Answer)>> = BTreeMap::new();
    for (id, call) in ids.iter().zip(unary) {
        let answer = match guarded("unary submit", call).await.unwrap() {
            Ok(r) if r.get_ref().created => Answer::Created(r.into_inner().job_id),
            Ok(r) => panic!("{id}: unary answered an existing job {r:?}"),
            Err(s) => Answer::Refused(s.code() as i32, s.message().to_string()),
        };
        answers.entry(id.clone()).or_default().push((2, answer));
    }
    for (chunk, call) in ids.chunks(25).zip(batches) {
        let response = guarded("batch submit", call).await.unwrap().unwrap();
        for (id, result) in chunk.iter().zip(response.into_inner().results) {
            let answer = match result.outcome {
                Some(Outcome::Accepted(a)) if a.created => Answer::Created(a.job_id),
                Some(Outcome::Error(e)) => Answer::Refused(e.code, e.message),
                other => panic!("{id}: batch item was {other:?}"),
            };
            answers.entry(id.clone()).or_default().push((3, answer));
        }
    }
    let unary_won = answers
        .values()
        .filter(|pair| matches!(pair.first(), Some((_, Answer::Created(_)))))
        .count();
    println!(
        "unary created {unary_won} jobs, batches {}",
        ids.len() - unary_won
    );
    let mut client = client.clone();
    for (id, pair) in &answers {
        let created: Vec<_> = pair
            .iter()
            .filter_map(|(tasks, a)| match a {
                Answer::Created(job) => Some((*tasks, job.clone())),
                Answer::Refused(..) => None,
            })
            .collect();
        let [(tasks, job_id)] = created.as_slice() else {
            panic!("{id}: not exactly one job created: {pair:?}");
        };
        for (_, answer) in pair {
            if let Answer::Refused(code, message) = answer {
                assert_eq!(*code, Code::AlreadyExists as i32, "{id}: {message}");
                assert!(message.contains(job_id.as_str()), "{id}: {message}");
            }
        }
        let job = client
            .get_job(GetJobRequest {
                job_id: job_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(
            job.spec.map(|s| s.task_count),
            Some(*tasks),
            "{id}: the job holds the spec of the submit that created it"
        );
    }
    assert_eq!(
        jobs_of(&mut client, "acme").await.len(),
        ids.len(),
        "one job per request id"
    );
}
