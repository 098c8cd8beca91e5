//! The console routers over in-memory sources: pages render the source's
//! views (escaped), actions reach the source and answer its outcome or its
//! error as JSON, the live stream sends re-rendered sections, and the
//! assets are served from the binary.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use meridian_console::view::{
    ActionOutcome, Amount, EventView, FederationSnapshot, JobDetail, JobRow, LaneView, NodeAction,
    NodeState, NodeView, PlacementSample, RegionIdentity, ShardView, WaitingJobView,
};
use meridian_console::{
    Actor, ConsoleError, FederationConsoleSource, RegionConsoleSource, federation_router,
    region_router,
};
use tower::ServiceExt;

use crate::common;

use common::{csrf, open};

/// A waiting reason with markup in it, which the pages must escape.
const WAITING: &str = "0/3 nodes: 3 do not match tier=<gold>";
const WAITING_HTML: &str = "0/3 nodes: 3 do not match tier=&lt;gold&gt;";

struct Region;

impl RegionConsoleSource for Region {
    async fn identity(&self) -> Result<RegionIdentity, ConsoleError> {
        Ok(RegionIdentity {
            region: "eu-<west>".into(),
            replica: "r-a".into(),
            shard_count: 1,
            linked: false,
        })
    }
    async fn shards(&self) -> Result<Vec<ShardView>, ConsoleError> {
        Ok(vec![ShardView {
            shard: 0,
            leader: "r-a".into(),
            epoch: 7,
            held_for_ms: 1200,
            expires_in_ms: 800,
        }])
    }
    async fn nodes(&self) -> Result<Vec<NodeView>, ConsoleError> {
        Ok(vec![NodeView {
            node_id: "n-1".into(),
            zone: "z".into(),
            shard: 0,
            state: NodeState::Cordoned,
            liveness: NodeState::Ready,
            capacity: Amount {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                gpus: 0,
            },
            usage: Amount {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                gpus: 0,
            },
            running_tasks: 1,
            epoch: 2,
            reason: "maintenance".into(),
        }])
    }
    async fn pending_lanes(&self) -> Result<Vec<LaneView>, ConsoleError> {
        Err(ConsoleError::Unavailable("store busy".into()))
    }
    async fn waiting_jobs(&self) -> Result<Vec<WaitingJobView>, ConsoleError> {
        Ok(vec![WaitingJobView {
            job_id: "j7".into(),
            tenant: "team-a".into(),
            priority: 5,
            task_count: 3,
            pending_tasks: 3,
            reason: WAITING.into(),
        }])
    }
    async fn placement(&self) -> Result<Vec<PlacementSample>, ConsoleError> {
        Ok(Vec::new())
    }
    async fn events(&self) -> Result<Vec<EventView>, ConsoleError> {
        Ok(Vec::new())
    }
    async fn node_action(
        &self,
        node: &str,
        action: NodeAction,
        reason: &str,
        _actor: &Actor,
    ) -> Result<ActionOutcome, ConsoleError> {
        match node {
            "n-1" => Ok(ActionOutcome {
                message: format!("{} n-1: {reason}", action.as_str()),
            }),
            other => Err(ConsoleError::NotFound(format!("node {other}"))),
        }
    }
    async fn drain_region(
        &self,
        _: &str,
        _: bool,
        _: &Actor,
    ) -> Result<ActionOutcome, ConsoleError> {
        Err(ConsoleError::Unavailable("no global tier".into()))
    }
}

struct Federation;

impl FederationConsoleSource for Federation {
    async fn overview(&self) -> Result<FederationSnapshot, ConsoleError> {
        Ok(FederationSnapshot {
            replica: "g1".into(),
            leader: true,
            jobs_by_state: vec![("running".into(), 2)],
            recent: vec![
                JobRow {
                    job_id: "j1".into(),
                    state: "running".into(),
                    ..JobRow::default()
                },
                JobRow {
                    job_id: "j7".into(),
                    state: "pending".into(),
                    waiting_reason: WAITING.into(),
                    ..JobRow::default()
                },
            ],
            ..FederationSnapshot::default()
        })
    }
    async fn job(&self, job_id: &str) -> Result<JobDetail, ConsoleError> {
        let waiting_reason = match job_id {
            "j1" => String::new(),
            "j7" => WAITING.into(),
            _ => return Err(ConsoleError::NotFound(format!("job {job_id}"))),
        };
        Ok(JobDetail {
            job: JobRow {
                job_id: job_id.into(),
                state: "running".into(),
                waiting_reason,
                ..JobRow::default()
            },
            ..JobDetail::default()
        })
    }
}

async fn call(router: axum::Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
    // As the console's script sends its actions: JSON, with the page's
    // CSRF token.
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if method != "GET" {
        request = request.header("x-csrf-token", csrf(&router, "/console").await);
    }
    let response = router
        .oneshot(request.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_regional_page_renders_escaped_views_and_names_the_failed_source_call() {
    let (status, html) = call(
        region_router(Arc::new(Region), &open()),
        "GET",
        "/console",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("eu-&lt;west&gt;"), "escaped region name");
    assert!(html.contains("data-node=\"n-1\""));
    assert!(html.contains("data-state=\"cordoned\""));
    assert!(html.contains("aria-label=\"Uncordon node n-1\""));
    assert!(html.contains("pending queue: unavailable: store busy"));
    assert!(!html.contains("https://"), "nothing external");
}

#[tokio::test]
async fn node_actions_answer_the_sources_outcome_or_its_error_as_json() {
    let router = region_router(Arc::new(Region), &open());
    let (status, body) = call(
        router.clone(),
        "POST",
        "/console/api/nodes/n-1/cordon",
        r#"{"reason":"disk"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Compared as JSON: key order depends on serde_json's features, which
    // the whole workspace's build decides.
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({"message": "cordon n-1: disk", "ok": true})
    );
    let (status, body) = call(router.clone(), "POST", "/console/api/nodes/n-9/drain", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains(r#""ok":false"#) && body.contains("node n-9"),
        "{body}"
    );
    let (status, _) = call(router.clone(), "POST", "/console/api/nodes/n-1/explode", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(router, "POST", "/console/api/drain-region", "{}").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no global tier"), "{body}");
}

#[tokio::test]
async fn the_live_stream_sends_the_rendered_sections_first() {
    let response = region_router(Arc::new(Region), &open())
        .oneshot(
            Request::get("/console/stream")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "server-sent events"
    );
    let mut body = response.into_body().into_data_stream();
    let first = futures::StreamExt::next(&mut body)
        .await
        .expect("a first event")
        .expect("bytes");
    let text = String::from_utf8_lossy(&first);
    assert!(text.starts_with("event: sections\n"), "{text}");
    assert!(text.contains("data-shard=\\\"0\\\""), "{text}");
}

#[tokio::test]
async fn the_federation_pages_render_and_an_unknown_job_is_a_404_page() {
    let router = federation_router(Arc::new(Federation), &open());
    let (status, html) = call(router.clone(), "GET", "/console", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("replica g1 · leader"));
    let (status, html) = call(router.clone(), "GET", "/console/jobs/j1", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("data-stream=\"/console/jobs/j1/stream\""));
    let (status, html) = call(router.clone(), "GET", "/console/jobs/j2", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("not found: job j2"));
    let (status, _) = call(router.clone(), "GET", "/console/jobs?id=j1", "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, js) = call(router, "GET", "/console/assets/console.js", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(js.contains("EventSource"));
}

#[tokio::test]
async fn a_waiting_jobs_reason_is_shown_escaped_in_both_consoles_and_only_for_waiting_jobs() {
    let (_, html) = call(
        region_router(Arc::new(Region), &open()),
        "GET",
        "/console",
        "",
    )
    .await;
    assert!(html.contains("id=\"waiting\""), "a waiting jobs section");
    assert!(
        html.contains("data-job=\"j7\""),
        "the waiting job is listed"
    );
    assert!(html.contains(WAITING_HTML), "with its reason, escaped");
    assert!(!html.contains("<gold>"), "nothing unescaped");

    let router = federation_router(Arc::new(Federation), &open());
    let (_, html) = call(router.clone(), "GET", "/console", "").await;
    assert!(html.contains(WAITING_HTML), "in the recent jobs list");
    assert!(!html.contains("<gold>"), "nothing unescaped");
    assert_eq!(
        html.matches("waiting-reason").count(),
        1,
        "j1 waits for nothing"
    );

    let (_, html) = call(router.clone(), "GET", "/console/jobs/j7", "").await;
    assert!(
        html.contains(&format!("<span id=\"job-waiting\">{WAITING_HTML}</span>")),
        "on the job page, whole"
    );
    let (_, html) = call(router.clone(), "GET", "/console/jobs/j1", "").await;
    assert!(
        !html.contains("job-waiting"),
        "no reason for a job that does not wait"
    );

    let (_, json) = call(router, "GET", "/console/api/jobs/j7", "").await;
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["job"]["waiting_reason"], WAITING);
}

#[tokio::test]
async fn an_action_another_site_could_send_is_refused_before_it_reaches_the_source() {
    let router = region_router(Arc::new(Region), &open());
    let token = csrf(&router, "/console").await;
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let router = router.clone();
        let token = token.clone();
        async move {
            let mut request = Request::builder()
                .method("POST")
                .uri("/console/api/nodes/n-1/cordon")
                .header("x-csrf-token", token);
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            let response = router
                .oneshot(request.body(Body::from("{}")).expect("request"))
                .await
                .expect("response");
            let status = response.status();
            let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    // An HTML form of another page can send only these content types.
    let (status, body) = send(&[("content-type", "application/x-www-form-urlencoded")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("content-type:"), "{body}");
    let (status, body) = send(&[
        ("content-type", "application/json"),
        ("host", "127.0.0.1:7590"),
        ("origin", "http://evil.example"),
    ])
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("origin:"), "{body}");
    // The console's own page passes; the same request without the page's
    // CSRF token does not.
    let missing = router
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/console/api/nodes/n-1/cordon")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let (status, body) = send(&[
        ("content-type", "application/json"),
        ("host", "127.0.0.1:7590"),
        ("origin", "http://127.0.0.1:7590"),
    ])
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
