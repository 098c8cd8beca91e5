//! The federation console's job page for a large array over an in-memory
//! source: the tasks are shown as counts by state and one page of rows
//! fetched through the source's task listing, with state filters and page
//! links that carry the filter and the page token through to the source.

use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use meridian_console::view::{
    FederationSnapshot, JobDetail, JobRow, TaskPage, TaskPageQuery, TaskRow,
};
use meridian_console::{ConsoleError, FederationConsoleSource, federation_router};
use tower::ServiceExt;

use crate::common;

use common::open;

const TASKS: u32 = 100_000;
/// Tasks 0..RUNNING run, the rest succeeded.
const RUNNING: u32 = 1_000;

/// One job `big` of 100,000 tasks held by region `r1`, one job `new` not
/// routed yet and one job `gone` its region no longer holds; remembers
/// every task query it is asked.
#[derive(Default)]
struct Arrays {
    queries: Mutex<Vec<(String, TaskPageQuery)>>,
}

fn state_of(index: u32) -> &'static str {
    if index < RUNNING {
        "running"
    } else {
        "succeeded"
    }
}

impl FederationConsoleSource for Arrays {
    async fn overview(&self) -> Result<FederationSnapshot, ConsoleError> {
        Ok(FederationSnapshot::default())
    }

    async fn job(&self, job_id: &str) -> Result<JobDetail, ConsoleError> {
        let region = match job_id {
            "big" | "gone" => "r1",
            "new" => "",
            _ => return Err(ConsoleError::NotFound(format!("job {job_id}"))),
        };
        Ok(JobDetail {
            job: JobRow {
                job_id: job_id.into(),
                state: "running".into(),
                region: region.into(),
                task_count: TASKS,
                tasks_done: TASKS - RUNNING,
                ..JobRow::default()
            },
            task_counts: vec![
                ("pending".into(), 0),
                ("running".into(), RUNNING),
                ("succeeded".into(), TASKS - RUNNING),
            ],
            parallelism: 1_000,
            ..JobDetail::default()
        })
    }

    async fn job_tasks(
        &self,
        job_id: &str,
        query: &TaskPageQuery,
    ) -> Result<TaskPage, ConsoleError> {
        self.queries
            .lock()
            .expect("queries")
            .push((job_id.to_string(), query.clone()));
        if job_id != "big" {
            return Err(ConsoleError::NotFound(format!(
                "job {job_id} is not held by this region"
            )));
        }
        let from: u32 = match query.page_token.strip_prefix('i') {
            Some(n) => n
                .parse()
                .map_err(|_| ConsoleError::Invalid("page_token".into()))?,
            None => 0,
        };
        let wanted =
            |i: &u32| query.states.is_empty() || query.states.iter().any(|s| s == state_of(*i));
        let mut indexes = (from..TASKS).filter(wanted);
        let tasks: Vec<TaskRow> = indexes
            .by_ref()
            .take(query.page_size as usize)
            .map(|index| TaskRow {
                index,
                state: state_of(index).into(),
                region: "r1".into(),
                node: format!("n{}", index % 7),
                attempt: 1,
                ..TaskRow::default()
            })
            .collect();
        Ok(TaskPage {
            tasks,
            next_page_token: indexes.next().map_or(String::new(), |i| format!("i{i}")),
        })
    }
}

async fn get(router: axum::Router, uri: &str) -> (StatusCode, String) {
    let response = router
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 8 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The task indexes of the rows in the page, in order.
fn rows(html: &str) -> Vec<u32> {
    html.split("<tr data-task=\"")
        .skip(1)
        .map(|s| {
            s[..s.find('"').expect("end of index")]
                .parse()
                .expect("index")
        })
        .collect()
}

/// The target of the link with `id`, as a path and query.
fn link(html: &str, id: &str) -> Option<String> {
    let needle = format!("id=\"{id}\" href=\"");
    let rest = &html[html.find(&needle)? + needle.len()..];
    Some(rest[..rest.find('"')?].replace("&amp;", "&"))
}

#[tokio::test]
async fn a_big_jobs_page_shows_counts_by_state_and_one_page_of_tasks_with_a_next_page_link() {
    let source = Arc::new(Arrays::default());
    let router = federation_router(source.clone(), &open());
    let (status, html) = get(router.clone(), "/console/jobs/big").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("100,000 tasks"), "total");
    assert!(html.contains("at most 1,000 at once"), "parallelism");
    assert!(
        html.contains("<tr data-task-state=\"running\"><th scope=\"row\"><span class=\"badge s-running\" data-state=\"running\">running</span></th><td class=\"num\">1,000</td></tr>"),
        "running count"
    );
    assert!(
        html.contains("<td class=\"num\">99,000</td>"),
        "succeeded count"
    );
    assert_eq!(rows(&html), (0..100).collect::<Vec<_>>());
    assert!(link(&html, "tasks-previous").is_none());
    let next = link(&html, "tasks-next").expect("a next-page link");
    {
        let q = source.queries.lock().expect("queries");
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].0, "big");
        assert_eq!(q[0].1.page_size, 100);
        assert_eq!(q[0].1.page_token, "");
    }

    let (status, second) = get(router.clone(), &next).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&second), (100..200).collect::<Vec<_>>());
    let back = link(&second, "tasks-previous").expect("a previous-page link");
    let (_, first_again) = get(router.clone(), &back).await;
    assert_eq!(rows(&first_again), (0..100).collect::<Vec<_>>());
    let third = link(&second, "tasks-next").expect("a next-page link on page two");
    let (_, third) = get(router, &third).await;
    assert_eq!(rows(&third), (200..300).collect::<Vec<_>>());
    let q = source.queries.lock().expect("queries");
    assert_eq!(q[1].1.page_token, "i100");
    assert_eq!(q[3].1.page_token, "i200");
}

#[tokio::test]
async fn a_state_filter_is_passed_to_the_source_and_kept_across_pages() {
    let source = Arc::new(Arrays::default());
    let router = federation_router(source.clone(), &open());
    let (_, all) = get(router.clone(), "/console/jobs/big").await;
    assert!(
        all.contains("<a href=\"/console/jobs/big?state=running\">running (1,000)</a>"),
        "a filter link per state with its count"
    );
    let (status, html) = get(router.clone(), "/console/jobs/big?state=succeeded").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows(&html), (RUNNING..RUNNING + 100).collect::<Vec<_>>());
    assert!(html.contains("<strong aria-current=\"page\">succeeded (99,000)</strong>"));
    let next = link(&html, "tasks-next").expect("next page of succeeded tasks");
    assert!(next.contains("state=succeeded"), "{next}");
    let (_, second) = get(router, &next).await;
    assert_eq!(
        rows(&second),
        (RUNNING + 100..RUNNING + 200).collect::<Vec<_>>()
    );
    let q = source.queries.lock().expect("queries");
    assert_eq!(q[1].1.states, vec!["succeeded".to_string()]);
    assert_eq!(q[2].1.states, vec!["succeeded".to_string()]);
    assert_eq!(q[2].1.page_token, format!("i{}", RUNNING + 100));
}

#[tokio::test]
async fn an_unknown_state_filter_is_a_400_naming_the_parameter() {
    let source = Arc::new(Arrays::default());
    let (status, html) = get(
        federation_router(source.clone(), &open()),
        "/console/jobs/big?state=sleeping",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("state: unknown task state"), "{html}");
    assert!(source.queries.lock().expect("queries").is_empty());
}

#[tokio::test]
async fn a_job_no_region_holds_shows_its_counts_and_says_task_rows_are_not_available() {
    let source = Arc::new(Arrays::default());
    let router = federation_router(source.clone(), &open());
    for id in ["new", "gone"] {
        let (status, html) = get(router.clone(), &format!("/console/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert!(html.contains("100,000 tasks"), "{id}");
        assert!(
            html.contains("id=\"tasks-unavailable\">Task rows are not available"),
            "{id}"
        );
        assert!(rows(&html).is_empty(), "{id}");
    }
    // The job not routed yet is not asked of any region.
    let q = source.queries.lock().expect("queries");
    assert_eq!(
        q.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["gone"]
    );
}
