//! The federation console's schedules and usage pages over in-memory
//! sources: what the source gives is rendered (escaped), an unknown
//! schedule is a 404, a bad usage parameter a 400 naming it, and a source
//! that serves neither says so on the page instead of failing the router.

use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use meridian_console::view::{
    ActionOutcome, FederationSnapshot, JobDetail, JobRow, ScheduleAction, ScheduleDetail,
    ScheduleRow, UsageQuery, UsageRow, UsageView,
};
use meridian_console::{Actor, ConsoleError, FederationConsoleSource, federation_router};
use tower::ServiceExt;

use crate::common;

use common::{csrf, open};

const HOUR: u64 = 3_600_000;

fn nightly() -> ScheduleRow {
    ScheduleRow {
        schedule_id: "nightly".into(),
        tenant: "fin<ance>".into(),
        job_name: "report".into(),
        cron: "30 2 * * *".into(),
        time_zone: "Europe/Paris".into(),
        overlap: "forbid".into(),
        missed: "skip".into(),
        starting_deadline_ms: 60_000,
        next_tick_unix_ms: 1_796_607_000_000,
        last_job_id: "j7".into(),
        last_run_tick_unix_ms: 1_796_520_600_000,
        ..ScheduleRow::default()
    }
}

/// Serves schedules and usage.
struct Full;

impl FederationConsoleSource for Full {
    async fn overview(&self) -> Result<FederationSnapshot, ConsoleError> {
        Ok(FederationSnapshot::default())
    }
    async fn job(&self, job_id: &str) -> Result<JobDetail, ConsoleError> {
        Err(ConsoleError::NotFound(format!("job {job_id}")))
    }
    async fn schedules(&self) -> Result<Vec<ScheduleRow>, ConsoleError> {
        Ok(vec![nightly()])
    }
    async fn schedule(&self, schedule_id: &str) -> Result<ScheduleDetail, ConsoleError> {
        if schedule_id != "nightly" {
            return Err(ConsoleError::NotFound(format!("schedule {schedule_id}")));
        }
        Ok(ScheduleDetail {
            schedule: nightly(),
            runs: vec![JobRow {
                job_id: "j7".into(),
                state: "succeeded".into(),
                ..JobRow::default()
            }],
            runs_truncated: false,
        })
    }
    async fn schedule_action(
        &self,
        schedule_id: &str,
        action: ScheduleAction,
        _actor: &Actor,
    ) -> Result<ActionOutcome, ConsoleError> {
        Ok(ActionOutcome {
            message: format!("{} {schedule_id}", action.as_str()),
        })
    }
    async fn usage(&self, query: &UsageQuery) -> Result<UsageView, ConsoleError> {
        let since = query.since_unix_ms / HOUR * HOUR;
        let row = |tenant: &str, start: u64, cpu: f64| UsageRow {
            tenant: tenant.into(),
            region: "r1".into(),
            start_unix_ms: start,
            end_unix_ms: start + HOUR,
            cpu_seconds: cpu,
            tasks_run: 2,
            ..UsageRow::default()
        };
        Ok(UsageView {
            since_unix_ms: since,
            until_unix_ms: since + 2 * HOUR,
            records: vec![row("<script>", since, 4.0)],
            total: row("", since, 4.0),
            hours: vec![
                row("<script>", since, 1.5),
                row("<script>", since + HOUR, 2.5),
            ],
        })
    }
}

/// Serves neither.
struct Bare;

impl FederationConsoleSource for Bare {
    async fn overview(&self) -> Result<FederationSnapshot, ConsoleError> {
        Ok(FederationSnapshot::default())
    }
    async fn job(&self, job_id: &str) -> Result<JobDetail, ConsoleError> {
        Err(ConsoleError::NotFound(format!("job {job_id}")))
    }
}

async fn get(router: axum::Router, uri: &str) -> (StatusCode, String) {
    let response = router
        .oneshot(
            Request::builder()
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn the_schedules_pages_render_the_sources_schedules_and_refuse_an_unknown_one() {
    let router = federation_router(Arc::new(Full), &open());
    let (status, html) = get(router.clone(), "/console/schedules").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("data-schedule=\"nightly\""), "{html}");
    assert!(html.contains("fin&lt;ance&gt;"), "escaped tenant");
    assert!(
        html.contains("2026-12-07 01:30:00"),
        "next tick in UTC: {html}"
    );
    assert!(
        html.contains("href=\"/console/jobs/j7\""),
        "last run linked"
    );
    assert!(
        !html.contains("data-action="),
        "the list has no action buttons"
    );
    let (status, html) = get(router.clone(), "/console/schedules/nightly").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("data-url=\"/console/api/schedules/nightly/pause\""),
        "an active schedule offers Pause: {html}"
    );
    assert!(html.contains("data-action=\"delete\""), "{html}");
    assert!(!html.contains("data-action=\"resume\""), "{html}");
    assert!(html.contains("<tr data-job=\"j7\">"), "{html}");
    let (status, html) = get(router.clone(), "/console/schedules/weekly").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("schedule weekly"), "{html}");
    let (status, body) = get(router, "/console/api/schedules/weekly").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains(r#""ok":false"#), "{body}");
}

#[tokio::test]
async fn the_usage_page_draws_the_sources_hours_and_refuses_a_bad_parameter_by_name() {
    let router = federation_router(Arc::new(Full), &open());
    let (status, html) = get(router.clone(), "/console/usage?range=6h&metric=cpu").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("data-columns=\"2\""), "{html}");
    assert_eq!(html.matches("<rect class=\"u0\"").count(), 2, "{html}");
    assert!(html.contains("data-tenant=\"&lt;script&gt;\""), "escaped");
    assert!(!html.contains("<script>\""), "never raw");
    assert!(html.contains("<option value=\"6h\" selected>"), "{html}");
    for (uri, field) in [
        ("/console/api/usage?range=2w", "range"),
        ("/console/api/usage?metric=disk", "metric"),
    ] {
        let (status, body) = get(router.clone(), uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(body.contains(&format!("{field}: ")), "{body}");
    }
    let (status, html) = get(router, "/console/usage?range=2w").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("range: &quot;2w&quot;"), "{html}");
}

#[tokio::test]
async fn a_source_without_schedules_or_usage_says_so_on_the_page() {
    let router = federation_router(Arc::new(Bare), &open());
    let (status, html) = get(router.clone(), "/console/schedules").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("does not serve schedules"), "{html}");
    let (status, html) = get(router.clone(), "/console/usage").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("does not serve usage"), "{html}");
    let (status, _) = get(router, "/console/api/usage").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

async fn post(router: axum::Router, uri: &str, content_type: &str) -> (StatusCode, String) {
    let token = csrf(&router, "/console").await;
    let response = router
        .oneshot(
            Request::builder()
                .method("POST")
                .uri(uri)
                .header("content-type", content_type)
                .header("x-csrf-token", token)
                .body(Body::from("{}"))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn a_schedule_action_reaches_the_source_only_as_json_from_the_console() {
    let router = federation_router(Arc::new(Full), &open());
    let (status, body) = post(
        router.clone(),
        "/console/api/schedules/nightly/pause",
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({"ok": true, "message": "pause nightly"})
    );
    let (status, body) = post(
        router.clone(),
        "/console/api/schedules/nightly/delete",
        "text/plain",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("content-type:"), "{body}");
    let (status, _) = post(
        router,
        "/console/api/schedules/nightly/explode",
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = post(
        federation_router(Arc::new(Bare), &open()),
        "/console/api/schedules/nightly/pause",
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("does not serve schedule actions"), "{body}");
}
