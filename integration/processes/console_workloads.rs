//! The federation console's workload pages in a real browser (Debian's
//! headless Chromium through chromedriver) against a real `meridian global`:
//! what a job waits for (dependencies, hold, the jobs waiting on it), and
//! the paged tasks of an array run by a linked region. Schedules are in
//! `console_schedules.rs`, usage in `console_usage.rs`.
//!
//! Jobs, holds and cancels go through the real Federation API. Nothing
//! sleeps to wait for a condition: the page is watched with a
//! `MutationObserver` until it shows what is expected (the live stream
//! updates it), with timeouts as failure guards only. With `MERIDIAN_CONSOLE_SCREENSHOTS=1` the
//! screenshots are written to `docs/console/`.

use crate::console_support;
use crate::support;

use console_support::{Browser, GUARD, Global, screenshot_dir, spec};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use serde_json::json;
use tonic::transport::Channel;

async fn submit(
    federation: &mut FederationClient<Channel>,
    name: &str,
    dependencies: Vec<v1::JobDependency>,
) -> String {
    let mut s = spec(name, "team-a", 2, 500, 1_000, 0);
    s.dependencies = dependencies;
    // The global replica leads just after it starts listening.
    support::retry::until_served(&format!("submit {name}"), || {
        let (mut federation, s) = (federation.clone(), s.clone());
        async move {
            federation
                .submit_job(v1::SubmitJobRequest {
                    request_id: format!("workloads-{}", s.name),
                    spec: Some(s),
                })
                .await
        }
    })
    .await
    .into_inner()
    .job_id
}

fn after(condition: v1::DependencyCondition, job_id: &str) -> v1::JobDependency {
    v1::JobDependency {
        condition: condition as i32,
        target: Some(v1::job_dependency::Target::JobId(job_id.into())),
    }
}

async fn get_job(federation: &mut FederationClient<Channel>, job_id: &str) -> v1::Job {
    federation
        .get_job(v1::GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .expect("get job")
        .into_inner()
        .job
        .expect("job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_page_shows_each_job_it_waits_for_and_whether_the_dependency_is_met() {
    let dir = tempfile::tempdir().expect("temp dir");
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    let run = async {
        let mut federation = global.federation().await;
        // No region is registered: every job stays PENDING at the global
        // tier, where holds and dependencies act.
        let extract = submit(&mut federation, "extract", vec![]).await;
        let transform = submit(&mut federation, "transform", vec![]).await;
        federation
            .hold_job(v1::HoldJobRequest {
                job_id: transform.clone(),
                reason: "waiting for the schema change".into(),
            })
            .await
            .expect("hold");
        let load = submit(
            &mut federation,
            "load",
            vec![
                after(v1::DependencyCondition::AfterAny, &extract),
                after(v1::DependencyCondition::AfterOk, &transform),
            ],
        )
        .await;
        let report = submit(
            &mut federation,
            "report",
            vec![after(v1::DependencyCondition::AfterOk, &load)],
        )
        .await;
        // Only waits for `extract` to end: once it has, it waits for a
        // region like any job, and is not marked as waiting on another.
        let archive = submit(
            &mut federation,
            "archive",
            vec![after(v1::DependencyCondition::AfterAny, &extract)],
        )
        .await;
        // `extract` ends: `load`'s after_any on it is met, its after_ok on
        // the held `transform` is not.
        federation
            .cancel_job(v1::CancelJobRequest {
                job_id: extract.clone(),
                reason: "superseded".into(),
            })
            .await
            .expect("cancel");

        let browser = Browser::start().await;
        browser
            .goto(&format!("{}/console/jobs/{load}", global.http))
            .await;
        let rows = browser
            .wait_for(
                "load's two dependencies, the first met",
                &format!(
                    "const row = id => document.querySelector('#dependency-table tr[data-dependency=\"' + id + '\"]');
                     const a = row({extract}), b = row({transform});
                     return a && b && a.dataset.status === 'met'
                       ? [[a.dataset.status, a.querySelector('code').textContent, a.querySelector('a').getAttribute('href'),
                           a.querySelector('.badge').dataset.state],
                          [b.dataset.status, b.querySelector('code').textContent, b.querySelector('a').getAttribute('href'),
                           b.querySelector('.badge').dataset.state, b.querySelector('.reason').textContent]]
                       : null;",
                    extract = json!(extract),
                    transform = json!(transform)
                ),
            )
            .await;
        assert_eq!(
            rows,
            json!([
                [
                    "met",
                    "after_any",
                    format!("/console/jobs/{extract}"),
                    "cancelled"
                ],
                [
                    "pending",
                    "after_ok",
                    format!("/console/jobs/{transform}"),
                    "pending",
                    format!("waits for job {transform} to succeed")
                ]
            ])
        );
        // Why it waits, as GetJob says, and the job waiting on it.
        let shown = browser
            .js("return [document.querySelector('#job-waiting').textContent,
                   [...document.querySelectorAll('#dependencies li[data-dependent]')].map(e => e.dataset.dependent),
                   document.querySelector('#job-held') === null];")
            .await;
        assert_eq!(
            shown,
            json!([
                get_job(&mut federation, &load).await.waiting_reason,
                [report],
                true
            ])
        );
        let shots = screenshot_dir(&dir);
        let png = browser.screenshot(&shots, "dependencies.png").await;
        assert!(std::fs::metadata(&png).expect("screenshot").len() > 20_000);

        // The held job says so, with its reason, and links back to `load`.
        browser
            .goto(&format!("{}/console/jobs/{transform}", global.http))
            .await;
        let held = browser
            .wait_for(
                "the hold on transform",
                "const h = document.querySelector('#job-held');
                 return h ? [h.querySelector('.hold-reason').textContent,
                   [...document.querySelectorAll('#dependencies li[data-dependent]')].map(e => e.dataset.dependent)] : null;",
            )
            .await;
        assert_eq!(held, json!(["waiting for the schema change", [load]]));

        // The overview sets held and dependency-waiting jobs apart.
        browser.goto(&format!("{}/console", global.http)).await;
        let gated = browser
            .wait_for(
                "held and waiting jobs on the overview",
                "const rows = [...document.querySelectorAll('#gated tr[data-job]')];
                 return rows.length === 3
                   ? rows.map(r => [r.dataset.job, r.querySelector('.gate').dataset.gate]) : null;",
            )
            .await;
        assert_eq!(
            gated,
            json!([
                [transform, "held"],
                [load, "dependencies"],
                [report, "dependencies"]
            ])
        );
        let marks = browser
            .wait_for(
                "archive's reason from the router",
                &format!(
                    "const row = id => document.querySelector('#recent tr[data-job=\"' + id + '\"]');
                     const mark = id => {{ const g = row(id).querySelector('.gate'); return g ? g.dataset.gate : null; }};
                     const why = row({archive}).querySelector('.waiting-reason');
                     return why && !why.textContent.startsWith('waits for')
                       ? [mark({extract}), mark({transform}), mark({load}), mark({archive}), why.textContent] : null;",
                    extract = json!(extract),
                    transform = json!(transform),
                    load = json!(load),
                    archive = json!(archive)
                ),
            )
            .await;
        assert_eq!(
            marks,
            json!([
                null,
                "held",
                "dependencies",
                null,
                get_job(&mut federation, &archive).await.waiting_reason
            ])
        );

        // The held job is cancelled: `load`'s after_ok on it can never be
        // met, and `load` fails naming it; its open page follows.
        browser
            .goto(&format!("{}/console/jobs/{load}", global.http))
            .await;
        browser
            .wait_for(
                "load's page",
                "return document.querySelector('#dependency-table');",
            )
            .await;
        federation
            .cancel_job(v1::CancelJobRequest {
                job_id: transform.clone(),
                reason: "schema change abandoned".into(),
            })
            .await
            .expect("cancel");
        let never = browser
            .wait_for(
                "the dependency that can never be met, live",
                &format!(
                    "const b = document.querySelector('#dependency-table tr[data-dependency=\"' + {transform} + '\"]');
                     const state = document.querySelector('#job-state .badge').dataset.state;
                     return b && b.dataset.status === 'never' && state === 'failed'
                       ? [b.querySelector('.dep').textContent, b.querySelector('.reason').textContent] : null;",
                    transform = json!(transform)
                ),
            )
            .await;
        let failed = get_job(&mut federation, &load).await;
        assert_eq!(
            never,
            json!(["can never be met", failed.failure_reason]),
            "the judgement GetJob's failure names"
        );
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the job pages showed the dependencies in time");
}

/// The indexes of the task rows on the page, once its counts show
/// `pending` and the table has rows whose states are all `state`.
fn rows_of(state: &str, pending: &str) -> String {
    format!(
        "const c = document.querySelector('#task-counts tr[data-task-state=\"pending\"] td');
         const rows = [...document.querySelectorAll('#tasks tr[data-task]')];
         if (!c || c.textContent !== {pending} || rows.length === 0) return null;
         if (!rows.every(r => r.querySelector('.badge').dataset.state === {state})) return null;
         return rows.map(r => Number(r.dataset.task));",
        pending = json!(pending),
        state = json!(state)
    )
}

/// Clicks the element `css` finds now.
async fn click_now(browser: &Browser, css: &str) {
    let clicked = browser
        .js(&format!(
            "const e = document.querySelector({}); if (!e) return false; e.click(); return true;",
            json!(css)
        ))
        .await;
    assert_eq!(clicked, json!(true), "{css} on the page");
}

async fn task_page(
    federation: &mut FederationClient<Channel>,
    job_id: &str,
    token: &str,
) -> v1::ListJobTasksResponse {
    federation
        .list_job_tasks(v1::ListJobTasksRequest {
            job_id: job_id.into(),
            states: vec![v1::TaskState::Pending as i32],
            page_size: 100,
            page_token: token.into(),
        })
        .await
        .expect("ListJobTasks")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arrays_page_shows_its_tasks_by_state_and_pages_the_pending_ones_as_list_job_tasks_does()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    let region = console_support::Regional::start(
        &format!("sqlite:{}", dir.path().join("r1.db").display()),
        "r1-a",
        1,
        Some(&global.grpc),
    );
    let run = async {
        // A node that runs its tasks for ten minutes: the 10 the cap lets
        // out stay running, the other 1,990 pending.
        console_support::FakeAgent::register(&region.grpc, "r1-n1", "zone-a", 4)
            .await
            .run();
        let mut federation = global.federation().await;
        let mut s = spec("array", "team-a", 2_000, 100, 600_000, 0);
        s.parallelism = 10;
        let job_id = support::retry::until_served("submit the array", || {
            let (mut federation, s) = (federation.clone(), s.clone());
            async move {
                federation
                    .submit_job(v1::SubmitJobRequest {
                        request_id: "workloads-array".into(),
                        spec: Some(s),
                    })
                    .await
            }
        })
        .await
        .into_inner()
        .job_id;

        let browser = Browser::start().await;
        browser
            .goto(&format!("{}/console/jobs/{job_id}", global.http))
            .await;
        let total = browser
            .wait_for(
                "the array's counts and cap",
                "const t = document.querySelector('#task-total');
                 return t && t.textContent.includes('at most 10 at once') ? t.textContent : null;",
            )
            .await;
        assert_eq!(total, json!("2,000 tasks; at most 10 at once"));
        // The live stream brings the counts once the cap's tasks run.
        browser
            .wait_for(
                "10 tasks running",
                "const c = document.querySelector('#task-counts tr[data-task-state=\"running\"] td');
                 return c && c.textContent === '10' ? true : null;",
            )
            .await;
        // Clicked in one script: the live stream may swap the section in
        // between a find and a click.
        click_now(&browser, "#tasks .task-filters a[href*=\"state=pending\"]").await;
        let first = browser
            .wait_for(
                "the first page of pending tasks",
                &rows_of("pending", "1,990"),
            )
            .await;
        let api = task_page(&mut federation, &job_id, "").await;
        let want: Vec<u32> = api.tasks.iter().map(|t| t.index).collect();
        assert_eq!(want.len(), 100);
        assert_eq!(first, json!(want));

        click_now(&browser, "#tasks-next").await;
        let second = browser
            .wait_for(
                "the second page of pending tasks",
                &format!(
                    "const rows = [...document.querySelectorAll('#tasks tr[data-task]')];
                     return rows.length && Number(rows[0].dataset.task) !== {} ? (() => {{ {} }})() : null;",
                    want[0],
                    rows_of("pending", "1,990")
                ),
            )
            .await;
        let api2 = task_page(&mut federation, &job_id, &api.next_page_token).await;
        let want2: Vec<u32> = api2.tasks.iter().map(|t| t.index).collect();
        assert_eq!(second, json!(want2));
        assert!(
            browser
                .js("return location.search")
                .await
                .as_str()
                .is_some_and(|q| q.contains("state=pending") && q.contains("page=")),
            "the filter and the page token are in the URL"
        );
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the array's page within the guard");
}
