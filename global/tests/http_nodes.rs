//! The node, task-log and log-follow routes over real sockets: each is forwarded to the
//! region's RegionAdmin endpoint (here a recording stand-in on loopback)
//! with the request the gRPC call would send, and its answer or its error
//! comes back as JSON.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use meridian_proto::v1::region_admin_server::{RegionAdmin, RegionAdminServer};
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::*;
use parking_lot::Mutex;
use serde_json::Value;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const REGION: &str = "region-a";

/// A RegionAdmin that records every request it gets (as its Debug text)
/// and answers from them.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn record(&self, request: &impl std::fmt::Debug) {
        self.seen.lock().push(format!("{request:?}"));
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock())
    }
}

fn node(id: &str, cordoned: bool, draining: bool, reason: &str) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        region: REGION.into(),
        cordoned,
        draining,
        cordon_reason: reason.into(),
        ..NodeInfo::default()
    }
}

#[tonic::async_trait]
impl RegionAdmin for Recorder {
    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.record(request.get_ref());
        Ok(Response::new(ListNodesResponse {
            nodes: vec![node("n-1", false, false, ""), node("n-2", false, false, "")],
            next_page_token: "after-n-2".into(),
        }))
    }

    async fn cordon_node(
        &self,
        request: Request<CordonNodeRequest>,
    ) -> Result<Response<CordonNodeResponse>, Status> {
        let req = request.into_inner();
        self.record(&req);
        if req.node_id != "n-1" {
            return Err(Status::not_found(format!("node {}", req.node_id)));
        }
        Ok(Response::new(CordonNodeResponse {
            node: Some(node(&req.node_id, true, false, &req.reason)),
        }))
    }

    async fn uncordon_node(
        &self,
        request: Request<UncordonNodeRequest>,
    ) -> Result<Response<UncordonNodeResponse>, Status> {
        let req = request.into_inner();
        self.record(&req);
        Ok(Response::new(UncordonNodeResponse {
            node: Some(node(&req.node_id, false, false, "")),
        }))
    }

    async fn drain_node(
        &self,
        request: Request<DrainNodeRequest>,
    ) -> Result<Response<DrainNodeResponse>, Status> {
        let req = request.into_inner();
        self.record(&req);
        Ok(Response::new(DrainNodeResponse {
            node: Some(node(&req.node_id, true, true, &req.reason)),
        }))
    }

    type FollowTaskLogsStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<TaskLogChunk, Status>>>;

    async fn follow_task_logs(
        &self,
        request: Request<FollowTaskLogsRequest>,
    ) -> Result<Response<Self::FollowTaskLogsStream>, Status> {
        let req = request.into_inner();
        self.record(&req);
        let chunk = |offset: u64, data: &[u8], end: bool| {
            Ok(TaskLogChunk {
                attempt: 1,
                node_id: "n-1".into(),
                stream: if end { 0 } else { LogStream::Stdout as i32 },
                offset,
                data: data.to_vec(),
                end,
                state: if end { TaskState::Succeeded as i32 } else { 0 },
                ..TaskLogChunk::default()
            })
        };
        Ok(Response::new(tokio_stream::iter(vec![
            chunk(0, b"line 1\n", false),
            chunk(7, b"line 2\n", false),
            chunk(0, b"", true),
        ])))
    }

    async fn list_job_tasks(
        &self,
        request: Request<ListJobTasksRequest>,
    ) -> Result<Response<ListJobTasksResponse>, Status> {
        let req = request.into_inner();
        self.record(&req);
        Ok(Response::new(ListJobTasksResponse {
            tasks: vec![TaskStatus {
                index: 5,
                state: TaskState::Running as i32,
                node_id: "n-1".into(),
                region: REGION.into(),
                attempt: 1,
                ..TaskStatus::default()
            }],
            next_page_token: "i6".into(),
            task_counts: None,
        }))
    }

    async fn get_task_logs(
        &self,
        request: Request<GetTaskLogsRequest>,
    ) -> Result<Response<GetTaskLogsResponse>, Status> {
        let req = request.into_inner();
        self.record(&req);
        Ok(Response::new(GetTaskLogsResponse {
            task: req.task,
            attempt: 1,
            node_id: "n-1".into(),
            stdout_tail: b"hello\n".to_vec(),
            stderr_tail: b"oops\n".to_vec(),
            stderr_truncated: true,
            ..GetTaskLogsResponse::default()
        }))
    }
}

/// Serves a recorder on loopback; returns it and its endpoint.
async fn stand_in_region() -> (Recorder, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let recorder = Recorder::default();
    let server = tonic::transport::Server::builder()
        .add_service(RegionAdminServer::new(recorder.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (recorder, format!("http://{addr}"))
}

/// Registers the region with `admin_endpoint` and ample capacity; returns
/// its lease epoch.
async fn register_with_admin(link: &mut RegionLinkClient<Channel>, admin_endpoint: &str) -> u64 {
    let reg = link
        .register_region(RegisterRegionRequest {
            region: REGION.into(),
            replica: Some(ReplicaIdentity {
                replica_id: format!("{REGION}-0"),
                boot_id: format!("boot-{REGION}"),
                ..ReplicaIdentity::default()
            }),
            leader_epoch: 1,
            admin_endpoint: admin_endpoint.into(),
            ..RegisterRegionRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.verdict, Verdict::Accepted as i32);
    link.report_capacity(ReportCapacityRequest {
        region: REGION.into(),
        region_lease_epoch: reg.region_lease_epoch,
        capacity: Some(capacity()),
    })
    .await
    .unwrap();
    reg.region_lease_epoch
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_routes_forward_the_grpc_request_to_the_region_and_answer_its_result_as_json() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();
    let (region, endpoint) = stand_in_region().await;
    register_with_admin(&mut h.link().await, &endpoint).await;

    let (status, body) = http(
        addr,
        "GET",
        &format!("/v1/regions/{REGION}/nodes?state=NODE_STATE_READY&page_size=2"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let listed = json(&body);
    assert_eq!(listed["nodes"][1]["node_id"], "n-2");
    assert_eq!(listed["next_page_token"], "after-n-2");

    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/regions/{REGION}/nodes/n-1/cordon"),
        r#"{"reason":"disk replacement"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let cordoned = json(&body);
    assert_eq!(cordoned["node"]["cordoned"], true);
    assert_eq!(cordoned["node"]["cordon_reason"], "disk replacement");

    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/regions/{REGION}/nodes/n-1/drain"),
        r#"{"reason":"retire","deadline_ms":30000}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["node"]["draining"], true);

    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/regions/{REGION}/nodes/n-1/uncordon"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["node"]["node_id"], "n-1");

    assert_eq!(
        region.take(),
        vec![
            format!(
                "{:?}",
                ListNodesRequest {
                    region: REGION.into(),
                    states: vec![NodeState::Ready as i32],
                    page_size: 2,
                    ..ListNodesRequest::default()
                }
            ),
            format!(
                "{:?}",
                CordonNodeRequest {
                    region: REGION.into(),
                    node_id: "n-1".into(),
                    reason: "disk replacement".into(),
                }
            ),
            format!(
                "{:?}",
                DrainNodeRequest {
                    region: REGION.into(),
                    node_id: "n-1".into(),
                    reason: "retire".into(),
                    deadline_ms: 30_000,
                }
            ),
            format!(
                "{:?}",
                UncordonNodeRequest {
                    region: REGION.into(),
                    node_id: "n-1".into(),
                }
            ),
        ],
        "the region got what the gRPC calls would have sent"
    );

    // The region's refusal, and the global tier's, come back as the JSON
    // error body.
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/regions/{REGION}/nodes/n-9/cordon"),
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(json(&body)["code"], "NotFound");
    let (status, body) = http(addr, "GET", "/v1/regions/nowhere/nodes", "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(json(&body)["code"], "NotFound");
    let (status, body) = http(addr, "GET", "/v1/regions/Bad_Name/nodes", "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["field"], "region");
    let (status, body) = http(
        addr,
        "GET",
        &format!("/v1/regions/{REGION}/nodes?states=NODE_STATE_SIDEWAYS"),
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["field"], "states");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logs_route_forwards_to_the_tasks_region_and_answers_the_output_as_json() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();
    let (region, endpoint) = stand_in_region().await;
    let mut link = h.link().await;
    let lease = register_with_admin(&mut link, &endpoint).await;
    let mut stream = assignments(&mut link, REGION, lease).await;
    let mut s = spec("t");
    s.allowed_regions = vec![REGION.into()];
    let job = h
        .federation()
        .await
        .submit_job(submit("logs-1", s))
        .await
        .unwrap()
        .into_inner()
        .job_id;

    let assign = loop {
        let event = guarded("the assignment", stream.next())
            .await
            .unwrap()
            .unwrap();
        if event.kind == AssignmentEventKind::Assign as i32 {
            break event;
        }
    };
    assert_eq!(assign.job_id, job);
    let epoch = assign.assignment_epoch;
    link.ack_assignments(AckAssignmentsRequest {
        region: REGION.into(),
        region_lease_epoch: lease,
        acks: vec![JobEpoch {
            job_id: job.clone(),
            assignment_epoch: epoch,
        }],
    })
    .await
    .unwrap();
    let reported = link
        .report_status(ReportStatusRequest {
            region: REGION.into(),
            region_lease_epoch: lease,
            updates: vec![JobStatusUpdate {
                job_id: job.clone(),
                assignment_epoch: epoch,
                status_version: 1,
                state: JobState::Running as i32,
                tasks: vec![TaskStatus {
                    index: 0,
                    state: TaskState::Running as i32,
                    node_id: "n-1".into(),
                    region: REGION.into(),
                    attempt: 1,
                    ..TaskStatus::default()
                }],
                ..JobStatusUpdate::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reported.results[0].verdict, Verdict::Accepted as i32);

    let (status, body) = http(
        addr,
        "GET",
        &format!("/v1/jobs/{job}/tasks/0/logs?attempt=1&max_bytes=16"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let logs = json(&body);
    assert_eq!(logs["stdout_tail"], "aGVsbG8K", "base64 of the raw bytes");
    assert_eq!(logs["stderr_tail"], "b29wcwo=");
    assert_eq!(logs["stderr_truncated"], true);
    assert_eq!(logs["node_id"], "n-1");
    assert_eq!(
        region.take(),
        vec![format!(
            "{:?}",
            GetTaskLogsRequest {
                task: Some(TaskId {
                    job_id: job.clone(),
                    index: 0,
                }),
                attempt: 1,
                max_bytes: 16,
            }
        )]
    );

    for (path, field) in [
        (format!("/v1/jobs/{job}/tasks/first/logs"), "task.index"),
        (format!("/v1/jobs/{job}/tasks/7/logs"), "task.index"),
        (format!("/v1/jobs/{job}/tasks/0/logs?attempt=-1"), "attempt"),
    ] {
        let (status, body) = http(addr, "GET", &path, "").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(json(&body)["field"], field, "{path}: {body}");
    }
    let (status, body) = http(addr, "GET", "/v1/jobs/j-nope/tasks/0/logs", "").await;
    assert_eq!(status, 404, "{body}");
    assert!(region.take().is_empty(), "refusals never reach the region");

    // The follow: server-sent events, one per chunk, each with the
    // position after it as its id; the attempt's end is an `end` event.
    let (status, body) = http(
        addr,
        "GET",
        &format!(
            "/v1/jobs/{job}/tasks/0/logs/follow?stdout_offset=0&offsets_attempt=1&tail_bytes=64"
        ),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("id: 1.7.0"), "{body}");
    assert!(body.contains("id: 1.14.0"), "{body}");
    assert!(body.contains("bGluZSAxCg=="), "base64 of line 1: {body}");
    assert!(body.contains("event: end"), "{body}");
    assert!(body.contains("TASK_STATE_SUCCEEDED"), "{body}");
    assert_eq!(
        region.take(),
        vec![format!(
            "{:?}",
            FollowTaskLogsRequest {
                task: Some(TaskId {
                    job_id: job.clone(),
                    index: 0,
                }),
                attempt: 0,
                stdout_offset: Some(0),
                stderr_offset: None,
                tail_bytes: 64,
                offsets_attempt: 1,
            }
        )]
    );
    for (path, field) in [
        (format!("/v1/jobs/{job}/tasks/7/logs/follow"), "task.index"),
        (
            format!("/v1/jobs/{job}/tasks/0/logs/follow?tail_bytes=x"),
            "tail_bytes",
        ),
    ] {
        let (status, body) = http(addr, "GET", &path, "").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(json(&body)["field"], field, "{path}: {body}");
    }
    assert!(region.take().is_empty(), "refusals never reach the region");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_job_tasks_is_forwarded_to_the_jobs_region_and_refused_for_a_pending_job() {
    let h = Harness::start(|_| {}).await;
    let (region, endpoint) = stand_in_region().await;
    let mut link = h.link().await;
    let lease = register_with_admin(&mut link, &endpoint).await;
    let mut stream = assignments(&mut link, REGION, lease).await;
    let mut api = h.federation().await;
    let mut s = spec("t");
    s.allowed_regions = vec![REGION.into()];
    let job = api
        .submit_job(submit("tasks-1", s))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    loop {
        let event = guarded("the assignment", stream.next())
            .await
            .unwrap()
            .unwrap();
        if event.kind == AssignmentEventKind::Assign as i32 {
            break;
        }
    }
    let request = ListJobTasksRequest {
        job_id: job.clone(),
        states: vec![TaskState::Running as i32],
        page_size: 1,
        page_token: "i5".into(),
    };
    let page = api
        .list_job_tasks(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.tasks[0].index, 5);
    assert_eq!(page.next_page_token, "i6");
    assert_eq!(region.take(), vec![format!("{request:?}")]);
    // The same over HTTP.
    let addr = h.running.http_addr.unwrap();
    let (status, body) = http(
        addr,
        "GET",
        &format!("/v1/jobs/{job}/tasks?states=TASK_STATE_RUNNING&page_size=1&page_token=i5"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page = json(&body);
    assert_eq!(page["tasks"][0]["index"], 5, "{body}");
    assert_eq!(page["next_page_token"], "i6");
    assert_eq!(region.take(), vec![format!("{request:?}")]);

    // Waits at the global tier for the first job: in no region.
    let mut waiting = spec("t");
    waiting.dependencies = vec![JobDependency {
        condition: DependencyCondition::AfterOk as i32,
        target: Some(job_dependency::Target::JobId(job.clone())),
    }];
    let pending = api
        .submit_job(submit("tasks-2", waiting))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let refused = api
        .list_job_tasks(ListJobTasksRequest {
            job_id: pending,
            ..ListJobTasksRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(region.take().is_empty());
}
