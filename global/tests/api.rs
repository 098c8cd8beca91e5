//! The federation API over real gRPC (and HTTP) on loopback: idempotent
//! submits, validation, get/list/cancel/watch.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use meridian_proto::v1::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_submits_with_ten_percent_duplicates_create_one_job_per_request_id() {
    let h = Harness::start(|_| {}).await;
    let client = h.federation().await;
    // 900 distinct request ids; 100 of them sent a second time: 1,000 calls.
    let mut ids: Vec<String> = (0..900).map(|i| format!("req-{i:04}")).collect();
    ids.extend((0..100).map(|i| format!("req-{:04}", i * 9)));
    ids.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
    let started = std::time::Instant::now();
    let calls: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut client = client.clone();
            let req = submit(id, spec("acme"));
            tokio::spawn(async move { client.submit_job(req).await.map(|r| r.into_inner()) })
        })
        .collect();
    let mut by_request: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut created = 0;
    for (id, call) in ids.iter().zip(calls) {
        let response = guarded("submit", call).await.unwrap().unwrap();
        created += usize::from(response.created);
        by_request
            .entry(id.clone())
            .or_default()
            .insert(response.job_id);
    }
    println!("1000 concurrent submits took {:?}", started.elapsed());
    assert_eq!(
        created, 900,
        "exactly one call per request id creates a job"
    );
    assert!(
        by_request.values().all(|jobs| jobs.len() == 1),
        "a request id always maps to one job"
    );
    let mut listed = BTreeSet::new();
    let mut client = client.clone();
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(ListJobsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..ListJobsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.jobs.into_iter().map(|j| j.job_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: BTreeSet<String> = by_request.values().flatten().cloned().collect();
    assert_eq!(listed, expected, "the store holds exactly the 900 jobs");
}

fn bad_inputs() -> Vec<(&'static str, SubmitJobRequest)> {
    let ok = || submit("r-1", spec("acme"));
    let with = |f: &dyn Fn(&mut JobSpec)| {
        let mut req = ok();
        f(req.spec.as_mut().unwrap());
        req
    };
    let command = |program: &str| {
        Some(TaskTemplate {
            kind: Some(task_template::Kind::Command(Command {
                program: program.into(),
                ..Command::default()
            })),
        })
    };
    vec![
        (
            "request_id",
            SubmitJobRequest {
                request_id: String::new(),
                ..ok()
            },
        ),
        ("spec", SubmitJobRequest { spec: None, ..ok() }),
        ("spec.tenant", with(&|s| s.tenant.clear())),
        ("spec.name", with(&|s| s.name.clear())),
        ("spec.task.command.program", with(&|s| s.task = command(""))),
        ("spec.task", with(&|s| s.task = None)),
        (
            "spec.resources.cpu_millis",
            with(&|s| s.resources.as_mut().unwrap().cpu_millis = 0),
        ),
        (
            "spec.resources.cpu_millis",
            with(&|s| s.resources.as_mut().unwrap().cpu_millis = u64::MAX),
        ),
        (
            "spec.resources.memory_bytes",
            with(&|s| s.resources.as_mut().unwrap().memory_bytes = 0),
        ),
        (
            "spec.resources.gpu_count",
            with(&|s| s.resources.as_mut().unwrap().gpu_count = 100_000),
        ),
        ("spec.resources", with(&|s| s.resources = None)),
        (
            "spec.allowed_regions[0]",
            with(&|s| s.allowed_regions = vec!["mars".into()]),
        ),
        (
            "spec.allowed_regions[0]",
            with(&|s| s.allowed_regions = vec!["Not A Region".into()]),
        ),
        ("spec.task_count", with(&|s| s.task_count = 0)),
        ("spec.task_count", with(&|s| s.task_count = 100_001)),
        (
            "spec.parallelism",
            with(&|s| {
                s.task_count = 2;
                s.parallelism = 3;
            }),
        ),
        // Too large a spec names the field that made it so.
        (
            "spec.task.command.args[0]",
            with(&|s| {
                s.task = Some(TaskTemplate {
                    kind: Some(task_template::Kind::Command(Command {
                        program: "echo".into(),
                        args: vec!["x".repeat(70 * 1024)],
                        ..Command::default()
                    })),
                })
            }),
        ),
        ("spec.placement", with(&|s| s.placement = 42)),
        ("spec.on_region_loss", with(&|s| s.on_region_loss = 7)),
        (
            "spec.node_constraints[0].op",
            with(&|s| {
                s.node_constraints = vec![LabelRequirement {
                    key: "zone".into(),
                    op: 0,
                    values: vec![],
                }]
            }),
        ),
        (
            "spec.retry.max_attempts",
            with(&|s| {
                s.retry = Some(RetryPolicy {
                    max_attempts: 1000,
                    ..RetryPolicy::default()
                })
            }),
        ),
    ]
}

/// A SubmitJobRequest whose `spec.name` holds raw bytes (prost strings
/// cannot hold bad UTF-8, so the wire message is built by hand).
#[derive(Clone, PartialEq, prost::Message)]
struct RawSubmit {
    #[prost(string, tag = "1")]
    request_id: String,
    #[prost(message, optional, tag = "2")]
    spec: Option<RawSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawSpec {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(string, tag = "2")]
    tenant: String,
}

/// A SubmitJobRequest whose `spec.task.command.program` holds raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCommandSubmit {
    #[prost(string, tag = "1")]
    request_id: String,
    #[prost(message, optional, tag = "2")]
    spec: Option<RawCommandSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawCommandSpec {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    tenant: String,
    #[prost(message, optional, tag = "6")]
    task: Option<RawTask>,
}

/// TaskTemplate with its `command` member (field 1 of oneof `kind`).
#[derive(Clone, PartialEq, prost::Message)]
struct RawTask {
    #[prost(message, optional, tag = "1")]
    command: Option<RawCommand>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawCommand {
    #[prost(bytes = "vec", tag = "1")]
    program: Vec<u8>,
}

/// Sends a hand-built message as a SubmitJob call; it must fail.
async fn submit_raw<M: prost::Message + Send + 'static>(h: &Harness, raw: M) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", h.grpc()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<M, SubmitJobResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/meridian.v1.Federation/SubmitJob");
    grpc.unary(tonic::Request::new(raw), path, codec)
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_oneof_member_is_reported_at_its_proto_field_path() {
    let h = Harness::start(|_| {}).await;
    let raw = RawCommandSubmit {
        request_id: "r-utf8-oneof".into(),
        spec: Some(RawCommandSpec {
            name: "n".into(),
            tenant: "acme".into(),
            task: Some(RawTask {
                command: Some(RawCommand {
                    program: vec![b'/', 0xff, 0xfe],
                }),
            }),
        }),
    };
    let status = submit_raw(&h, raw).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // `command` is the proto field; `kind` is the oneof holding it.
    assert!(
        status.message().starts_with("spec.task.command.program:"),
        "{:?}",
        status.message()
    );

    // The same bytes in a JSON body, sent raw: `http` only sends text.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = br#"{"request_id":"h-utf8","spec":{"name":"n","tenant":"t","task_count":1,"task":{"command":{"program":"/"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}},"resources":{"cpu_millis":100,"memory_bytes":1}}}"#);
    let mut req = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut conn = tokio::net::TcpStream::connect(h.running.http_addr.unwrap())
        .await
        .unwrap();
    conn.write_all(&req).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let (_, json) = text.split_once("\r\n\r\n").unwrap();
    let err: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(err["field"], "spec.task.command.program", "{json}");
    assert_eq!(h.stored_keys().await, Vec::<Vec<u8>>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_name_is_reported_as_spec_name() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let big = JobSpec {
        name: "n".repeat(1 << 20),
        ..spec("acme")
    };
    let req = submit("r-big", big.clone());
    let status = client.submit_job(req.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "spec.name: 1048576 bytes, at most 256");
    let batch = client
        .submit_jobs(SubmitJobsRequest { items: vec![req] })
        .await
        .unwrap()
        .into_inner();
    match &batch.results[0].outcome {
        Some(submit_job_result::Outcome::Error(e)) => assert_eq!(e.field, "spec.name"),
        other => panic!("batch item was {other:?}"),
    }

    let body = format!(
        r#"{{"request_id":"h-big","spec":{{"name":"{}","tenant":"t","task_count":1,"task":{{"simulated":{{"duration_ms":5}}}},"resources":{{"cpu_millis":100,"memory_bytes":1}}}}}}"#,
        big.name
    );
    let addr = h.running.http_addr.unwrap();
    let (status, body) = http(addr, "POST", "/v1/jobs", &body).await;
    assert_eq!(status, 400, "{}", &body[..body.len().min(300)]);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["field"], "spec.name", "{body}");
    assert_eq!(err["message"], "spec.name: 1048576 bytes, at most 256");
    assert_eq!(h.stored_keys().await, Vec::<Vec<u8>>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_invalid_argument_naming_the_field_and_leaves_nothing_in_the_store() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    for (field, req) in bad_inputs() {
        let status = client.submit_job(req.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "expected {field}, got {:?}",
            status.message()
        );
        // The same item in a batch fails on its own, naming the same field.
        let batch = client
            .submit_jobs(SubmitJobsRequest { items: vec![req] })
            .await
            .unwrap()
            .into_inner();
        match &batch.results[0].outcome {
            Some(submit_job_result::Outcome::Error(e)) => {
                assert_eq!(e.field, field);
                assert_eq!(e.code, Code::InvalidArgument as i32);
            }
            other => panic!("{field}: batch item was {other:?}"),
        }
    }
    // Bad UTF-8 in a string field.
    let raw = RawSubmit {
        request_id: "r-utf8".into(),
        spec: Some(RawSpec {
            name: vec![0xff, 0xfe, b'x'],
            tenant: "acme".into(),
        }),
    };
    let status = submit_raw(&h, raw).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("spec.name:"),
        "{:?}",
        status.message()
    );

    assert_eq!(
        h.stored_keys().await,
        Vec::<Vec<u8>>::new(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_400_json_naming_the_field_and_mirrors_submit_and_get() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();
    let (status, body) = http(addr, "POST", "/v1/jobs", r#"{"request_id":"h1","spec":{"name":"n","tenant":"t","task_count":1,"task":{"simulated":{"duration_ms":5}},"resources":{"cpu_millis":-5,"memory_bytes":1}}}"#).await;
    assert_eq!(status, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["field"], "spec.resources.cpu_millis", "{body}");
    let (status, body) = http(addr, "POST", "/v1/jobs", r#"{"request_id":"h1","spec":{"name":"n","tenant":"t","task_count":1,"task":{"simulated":{"duration_ms":5}},"resources":{"cpu_millis":0,"memory_bytes":1}}}"#).await;
    assert_eq!(status, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["field"], "spec.resources.cpu_millis", "{body}");
    let (status, body) = http(addr, "POST", "/v1/jobs", r#"{"request_id":"h1","spec":{"name":"n","tenant":"t","task_count":1,"task":{"simulated":{"duration_ms":5}},"resources":{"cpu_millis":100,"memory_bytes":1},"placement":"PLACEMENT_POLICY_DIAGONAL"}}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["field"],
        "spec.placement"
    );
    assert_eq!(
        h.stored_keys().await,
        Vec::<Vec<u8>>::new(),
        "nothing was written"
    );

    let good = r#"{"request_id":"h1","spec":{"name":"n","tenant":"t","task_count":1,"task":{"simulated":{"duration_ms":5}},"resources":{"cpu_millis":100,"memory_bytes":1}}}"#;
    let (status, body) = http(addr, "POST", "/v1/jobs", good).await;
    assert_eq!(status, 200, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["created"], true);
    let job_id = created["job_id"].as_str().unwrap().to_string();
    let (_, again) = http(addr, "POST", "/v1/jobs", good).await;
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["job_id"], job_id.as_str());
    assert_eq!(
        again.get("created"),
        None,
        "false is omitted by the JSON mapping"
    );
    let (status, body) = http(addr, "GET", &format!("/v1/jobs/{job_id}"), "").await;
    assert_eq!(status, 200, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["state"], "JOB_STATE_PENDING");
    let (status, body) = http(addr, "GET", "/v1/jobs?tenant=t&state=JOB_STATE_PENDING", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (status, body) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("meridian_global_submits_total"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_tenant_and_state_and_pages_with_tokens() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let mut mine = BTreeSet::new();
    for i in 0..23 {
        let tenant = if i % 3 == 0 { "other" } else { "mine" };
        let id = client
            .submit_job(submit(&format!("l-{i}"), spec(tenant)))
            .await
            .unwrap()
            .into_inner()
            .job_id;
        if tenant == "mine" {
            mine.insert(id);
        }
    }
    let cancelled = mine.iter().next().unwrap().clone();
    client
        .cancel_job(CancelJobRequest {
            job_id: cancelled.clone(),
            reason: "x".into(),
        })
        .await
        .unwrap();
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = client
            .list_jobs(ListJobsRequest {
                tenant: "mine".into(),
                states: vec![JobState::Pending as i32],
                page_size: 4,
                page_token: token.clone(),
                ..ListJobsRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.jobs.len() <= 4);
        seen.extend(page.jobs.into_iter().map(|j| j.job_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected = mine.clone();
    expected.remove(&cancelled);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "pages are in job id order without repeats"
    );
    assert!(pages >= 4);
    let bad = client
        .list_jobs(ListJobsRequest {
            page_token: "garbage".into(),
            ..ListJobsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("page_token:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pending_job_ends_it_cancelled_with_its_history_and_is_idempotent() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let job_id = client
        .submit_job(submit("c-1", spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    for _ in 0..2 {
        let job = client
            .cancel_job(CancelJobRequest {
                job_id: job_id.clone(),
                reason: "no longer needed".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(job.state, JobState::Cancelled as i32);
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
    let states: Vec<i32> = job.history.iter().map(|t| t.to).collect();
    assert_eq!(
        states,
        vec![JobState::Pending as i32, JobState::Cancelled as i32]
    );
    assert_eq!(job.history[1].reason, "cancelled: no longer needed");
    assert_eq!(job.tasks.len(), 2, "get returns every task");
    let missing = client
        .get_job(GetJobRequest {
            job_id: "j-nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

/// The next CREATED event of `stream`.
async fn next_created(stream: &mut tonic::Streaming<JobEvent>) -> JobEvent {
    loop {
        let event = guarded("a CREATED event", stream.next())
            .await
            .unwrap()
            .unwrap();
        if event.kind == JobEventKind::Created as i32 {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_from_a_cursor_receives_exactly_the_events_after_it() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let mut stream = client
        .watch_jobs(WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let a = client
        .submit_job(submit("w-a", spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let b = client
        .submit_job(submit("w-b", spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // Jobs wait for a region (none registered): each may also get an
    // UPDATED event carrying its waiting reason, between the CREATED ones.
    let first = next_created(&mut stream).await;
    assert_eq!(first.job.as_ref().unwrap().job_id, a);
    let second = next_created(&mut stream).await;
    assert_eq!(second.job.as_ref().unwrap().job_id, b);
    drop(stream);
    let c = client
        .submit_job(submit("w-c", spec("t")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut resumed = client
        .watch_jobs(WatchJobsRequest {
            cursor: first.cursor.clone(),
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(next_created(&mut resumed).await.job.unwrap().job_id);
    }
    assert_eq!(
        got,
        vec![b, c],
        "resume starts right after the cursor, without a re-list"
    );
    let bad = client
        .watch_jobs(WatchJobsRequest {
            cursor: vec![1, 2, 3],
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

/// A job of 100,000 tasks is read by its counts: regions report a job of
/// more than 256 tasks by counts only, and GetJob makes up no task rows
/// for it (a small job still gets one row per task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getting_a_100000_task_array_returns_its_counts_and_no_task_rows() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let mut array = spec("t");
    array.task_count = 100_000;
    array.parallelism = 1_000;
    let job_id = client
        .submit_job(submit("array-1", array))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let job = client
        .get_job(GetJobRequest { job_id })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert!(job.tasks.is_empty(), "{} task rows", job.tasks.len());
    let counts = job.task_counts.unwrap_or_default();
    assert_eq!(counts.pending, 100_000);
    assert_eq!(job.spec.unwrap().parallelism, 1_000);
}
