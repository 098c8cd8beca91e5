//! The federation console's workload pages in a real browser (Debian's
//! headless Chromium through chromedriver) against a real `meridian global`:
//! what a job waits for (dependencies, hold, the jobs waiting on it), and
//! the schedules of periodic jobs with the runs their ticks create and
//! their actions, and the paged tasks of an array run by a linked region.
//! Usage is in `console_usage.rs`.
//!
//! Jobs, holds, cancels and schedules go through the real Federation API.
//! Nothing sleeps to wait for a condition: the page is watched with a
//! `MutationObserver` until it shows what is expected (the live stream
//! updates it), a tick is awaited on a `WatchJobs` stream, with timeouts as
//! failure guards only. With `MERIDIAN_CONSOLE_SCREENSHOTS=1` the
//! screenshots are written to `docs/console/`.

use crate::console_support;
use crate::support;

use std::time::Duration;

use console_support::{Browser, GUARD, Global, screenshot_dir, spec};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use serde_json::json;
use tonic::transport::Channel;

async fn connect(global: &Global) -> FederationClient<Channel> {
    FederationClient::connect(global.grpc.clone())
        .await
        .expect("connect to the global tier")
}

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
        let mut federation = connect(&global).await;
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

fn schedule_spec(
    tenant: &str,
    name: &str,
    cron: &str,
    time_zone: &str,
    overlap: v1::OverlapPolicy,
    missed: v1::MissedTickPolicy,
) -> v1::ScheduleSpec {
    v1::ScheduleSpec {
        tenant: tenant.into(),
        cron: cron.into(),
        time_zone: time_zone.into(),
        job: Some(spec(name, tenant, 1, 250, 1_000, 0)),
        overlap_policy: overlap as i32,
        missed_tick_policy: missed as i32,
        starting_deadline_ms: 0,
    }
}

async fn create_schedule(
    federation: &mut FederationClient<Channel>,
    id: &str,
    spec: v1::ScheduleSpec,
    paused: bool,
) -> v1::Schedule {
    support::retry::until_served(&format!("create schedule {id}"), || {
        let (mut federation, spec) = (federation.clone(), spec.clone());
        async move {
            federation
                .create_schedule(v1::CreateScheduleRequest {
                    schedule_id: id.into(),
                    spec: Some(spec),
                    paused,
                })
                .await
        }
    })
    .await
    .into_inner()
    .schedule
    .expect("schedule")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_page_lists_each_schedule_and_a_tick_shows_its_job_live() {
    let dir = tempfile::tempdir().expect("temp dir");
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    let run = async {
        let mut federation = connect(&global).await;
        // Watch for the heartbeat schedule's jobs before it exists.
        let mut runs = support::retry::until_served("watch the schedule's jobs", || {
            let mut federation = federation.clone();
            async move {
                federation
                    .watch_jobs(v1::WatchJobsRequest {
                        label_selector: vec![v1::LabelRequirement {
                            key: "meridian.schedule".into(),
                            op: v1::LabelOperator::In as i32,
                            values: vec!["heartbeat".into()],
                        }],
                        ..Default::default()
                    })
                    .await
            }
        })
        .await
        .into_inner();
        let nightly = create_schedule(
            &mut federation,
            "nightly-report",
            schedule_spec(
                "finance",
                "nightly-report",
                "30 2 * * *",
                "Europe/Paris",
                v1::OverlapPolicy::Forbid,
                v1::MissedTickPolicy::Skip,
            ),
            false,
        )
        .await;
        create_schedule(
            &mut federation,
            "weekly-cleanup",
            schedule_spec(
                "team-a",
                "cleanup",
                "0 4 * * SUN",
                "",
                v1::OverlapPolicy::Replace,
                v1::MissedTickPolicy::RunOnce,
            ),
            true,
        )
        .await;
        create_schedule(
            &mut federation,
            "heartbeat",
            schedule_spec(
                "team-a",
                "heartbeat",
                // Every ten seconds (six fields, seconds first), so the
                // test waits for a tick seconds, not up to a minute.
                "*/10 * * * * *",
                "UTC",
                v1::OverlapPolicy::Allow,
                v1::MissedTickPolicy::RunOnce,
            ),
            false,
        )
        .await;

        let browser = Browser::start().await;
        browser
            .goto(&format!("{}/console/schedules", global.http))
            .await;
        let listed = browser
            .wait_for(
                "three schedules listed",
                "const rows = [...document.querySelectorAll('#schedules tr[data-schedule]')];
                 return rows.length === 3 ? rows.map(r => [r.dataset.schedule,
                   r.querySelector('.cron').textContent, r.querySelector('.tz').textContent,
                   r.querySelector('.overlap').textContent, r.querySelector('.missed').textContent,
                   r.querySelector('.state .badge').dataset.state,
                   Number((r.querySelector('.next time') || {dataset: {unixMs: 0}}).dataset.unixMs)]) : null;",
            )
            .await;
        assert_eq!(listed[0][0], json!("heartbeat"));
        assert_eq!(
            listed[1],
            json!([
                "nightly-report",
                "30 2 * * *",
                "Europe/Paris",
                "forbid",
                "skip",
                "active",
                nightly.next_tick_unix_ms
            ]),
            "as GetSchedule answers"
        );
        assert_eq!(
            listed[2],
            json!([
                "weekly-cleanup",
                "0 4 * * SUN",
                "UTC",
                "replace",
                "run_once",
                "paused",
                0
            ])
        );

        // The heartbeat schedule's page, open while its tick comes.
        browser
            .goto(&format!("{}/console/schedules/heartbeat", global.http))
            .await;
        // The runs the page shows once drawn: none, or the ticks that came
        // before it was drawn.
        let drawn = browser
            .wait_for(
                "the schedule page drawn",
                "if (document.querySelector('#no-runs')) return [];
                 const rows = [...document.querySelectorAll('#runs tr[data-job]')];
                 return rows.length ? rows.map(r => r.dataset.job) : null;",
            )
            .await;
        let drawn: Vec<String> = drawn
            .as_array()
            .expect("job ids")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        // A tick after the page was drawn comes within ten seconds of wall
        // time: awaited on the watch, skipping the jobs already shown.
        let job_id = tokio::time::timeout(
            Duration::from_secs(25),
            next_created(&mut runs, |job| !drawn.iter().any(|d| d == job)),
        )
        .await
        .expect("the heartbeat schedule ticked within ten seconds of the page being drawn");
        let shown = browser
            .wait_for(
                "the tick's job on the open schedule page",
                &format!(
                    "const r = document.querySelector('#runs tr[data-job=\"' + {id} + '\"]');
                     return r ? r.querySelector('a').getAttribute('href') : null;",
                    id = json!(job_id)
                ),
            )
            .await;
        assert_eq!(shown, json!(format!("/console/jobs/{job_id}")));

        // Ticks go on every ten seconds, so one may have come since. Paused,
        // the schedule's last run stays put: a tick commits before the
        // pause or sees it. That last run is this tick's job or a later
        // tick's, which the watch then sees made.
        support::retry::until_served("pause the heartbeat schedule", || {
            let mut federation = federation.clone();
            async move {
                federation
                    .pause_schedule(v1::PauseScheduleRequest {
                        schedule_id: "heartbeat".into(),
                    })
                    .await
            }
        })
        .await;
        let last_run = support::retry::until_served("read the heartbeat schedule", || {
            let mut federation = federation.clone();
            async move {
                federation
                    .get_schedule(v1::GetScheduleRequest {
                        schedule_id: "heartbeat".into(),
                    })
                    .await
            }
        })
        .await
        .into_inner()
        .schedule
        .expect("schedule")
        .last_job_id;
        if last_run != job_id {
            next_created(&mut runs, |job| job == last_run).await;
        }

        // The list shows it as the last run, linked.
        browser
            .goto(&format!("{}/console/schedules", global.http))
            .await;
        let last = browser
            .wait_for(
                "the last run in the list",
                "const a = document.querySelector('#schedules tr[data-schedule=\"heartbeat\"] .last a');
                 return a ? a.getAttribute('href') : null;",
            )
            .await;
        assert_eq!(last, json!(format!("/console/jobs/{last_run}")));
        let png = browser
            .screenshot(&screenshot_dir(&dir), "schedules.png")
            .await;
        assert!(std::fs::metadata(&png).expect("screenshot").len() > 20_000);
    };
    tokio::time::timeout(GUARD * 3, run)
        .await
        .expect("the schedules pages showed the schedules in time");
}

/// The id of the next job `runs` shows created that `wanted` accepts.
async fn next_created(
    runs: &mut tonic::Streaming<v1::JobEvent>,
    wanted: impl Fn(&str) -> bool,
) -> String {
    loop {
        let event = runs
            .message()
            .await
            .expect("watch stream")
            .expect("stream open");
        if event.kind == v1::JobEventKind::Created as i32 {
            let job = event.job.expect("job").job_id;
            if wanted(&job) {
                return job;
            }
        }
    }
}

/// The outcome line of the last action, once it has come back.
async fn action_outcome(browser: &Browser, what: &str) -> (String, String) {
    let v = browser
        .wait_for(
            what,
            "const t = document.getElementById('action-result');
             return t.dataset.outcome && !t.textContent.endsWith('…')
               ? [t.dataset.outcome, t.textContent] : null;",
        )
        .await;
    (
        v[0].as_str().unwrap_or_default().to_string(),
        v[1].as_str().unwrap_or_default().to_string(),
    )
}

async fn schedule_state(federation: &mut FederationClient<Channel>, id: &str) -> Option<bool> {
    match federation
        .get_schedule(v1::GetScheduleRequest {
            schedule_id: id.into(),
        })
        .await
    {
        Ok(answer) => Some(answer.into_inner().schedule.expect("schedule").paused),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("get schedule: {status}"),
    }
}

/// A schedule `name` of tenant `finance` (`cron` in `timezone`, not
/// paused), and a browser on its page once the page shows its actions.
async fn schedule_page(
    global: &Global,
    federation: &mut FederationClient<Channel>,
    name: &str,
    cron: &str,
    timezone: &str,
) -> Browser {
    create_schedule(
        federation,
        name,
        schedule_spec(
            "finance",
            name,
            cron,
            timezone,
            v1::OverlapPolicy::Forbid,
            v1::MissedTickPolicy::Skip,
        ),
        false,
    )
    .await;
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/console/schedules/{name}", global.http))
        .await;
    browser
        .wait_for(
            "the schedule's actions",
            "return document.querySelector('#schedule-actions button[data-action=\"pause\"]');",
        )
        .await;
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_resuming_and_deleting_a_schedule_in_its_page_go_through_the_api_once_confirmed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    let run = async {
        let mut federation = connect(&global).await;
        let browser = schedule_page(
            &global,
            &mut federation,
            "nightly-report",
            "30 2 * * *",
            "Europe/Paris",
        )
        .await;

        // Cancel in the dialog sends nothing; the dialog asks no reason.
        browser
            .click("#schedule-actions button[data-action=\"delete\"]")
            .await;
        let dialog = browser
            .wait_for(
                "the confirmation dialog",
                "const d = document.getElementById('confirm');
                 return d.open ? [document.getElementById('confirm-text').textContent,
                   document.getElementById('confirm-reason').hidden] : null;",
            )
            .await;
        assert_eq!(
            dialog,
            json!([
                "Delete schedule nightly-report? It creates no more jobs; the jobs it created are kept.",
                true
            ])
        );
        browser.click("#confirm-cancel").await;
        browser
            .wait_for(
                "the dialog to close",
                "return !document.getElementById('confirm').open;",
            )
            .await;
        assert_eq!(
            schedule_state(&mut federation, "nightly-report").await,
            Some(false),
            "cancelled: still there, not paused"
        );

        // Pause, confirmed: the API says paused, the page shows it and
        // offers Resume, without a reload.
        browser
            .click("#schedule-actions button[data-action=\"pause\"]")
            .await;
        browser.click("#confirm-ok").await;
        let (outcome, message) = action_outcome(&browser, "the pause's outcome").await;
        assert_eq!(outcome, "ok", "{message}");
        assert!(message.contains("nightly-report paused"), "{message}");
        assert_eq!(
            schedule_state(&mut federation, "nightly-report").await,
            Some(true)
        );
        browser
            .wait_for(
                "the paused state and Resume, live",
                "const s = document.querySelector('#schedule-summary .badge');
                 return s && s.dataset.state === 'paused'
                   && document.querySelector('#schedule-actions button[data-action=\"resume\"]');",
            )
            .await;

        // Resume, confirmed.
        browser
            .click("#schedule-actions button[data-action=\"resume\"]")
            .await;
        browser.click("#confirm-ok").await;
        let (outcome, message) = action_outcome(&browser, "the resume's outcome").await;
        assert_eq!(outcome, "ok", "{message}");
        assert!(message.contains("resumed: next tick"), "{message}");
        assert_eq!(
            schedule_state(&mut federation, "nightly-report").await,
            Some(false)
        );
        browser
            .wait_for(
                "the active state, live",
                "const s = document.querySelector('#schedule-summary .badge');
                 return s && s.dataset.state === 'active'
                   && document.querySelector('#schedule-actions button[data-action=\"pause\"]');",
            )
            .await;

        // Delete, confirmed: gone from the API and from the list.
        browser
            .click("#schedule-actions button[data-action=\"delete\"]")
            .await;
        browser.click("#confirm-ok").await;
        let (outcome, message) = action_outcome(&browser, "the delete's outcome").await;
        assert_eq!(outcome, "ok", "{message}");
        assert!(message.contains("deleted"), "{message}");
        assert_eq!(
            schedule_state(&mut federation, "nightly-report").await,
            None
        );
        browser
            .goto(&format!("{}/console/schedules", global.http))
            .await;
        browser
            .wait_for(
                "an empty schedules list",
                "return document.querySelector('#schedules p.muted');",
            )
            .await;
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the schedule's actions went through in time");
}

/// The live stream's first event repeats every section the page was
/// served with; a section whose markup did not change is left as it is, so
/// a button the operator is about to press stays the same element. The
/// page's script is run again over a stand-in for the browser's
/// `EventSource` (the real stream's first event may come before the test
/// can hold a button), and the stand-in delivers the section unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_update_that_changes_nothing_leaves_the_pages_buttons_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    let run = async {
        let mut federation = connect(&global).await;
        let browser = schedule_page(
            &global,
            &mut federation,
            "weekly-digest",
            "0 6 * * 1",
            "UTC",
        )
        .await;
        browser
            .js("window.EventSource = class {
                   constructor() { this.on = {}; window.standIn = this; }
                   addEventListener(kind, f) { this.on[kind] = f; }
                 };
                 const again = document.createElement('script');
                 again.src = document.querySelector('script[src$=\"console.js\"]').src;
                 document.body.appendChild(again);
                 return true;")
            .await;
        browser
            .wait_for(
                "the script's second run",
                "return window.standIn && window.standIn.on.sections ? true : null;",
            )
            .await;
        let kept = browser
            .js("const held = document.querySelector('#schedule-actions button[data-action=\"pause\"]');
                 const same = document.getElementById('schedule-actions').innerHTML;
                 window.standIn.on.sections({ data: JSON.stringify({ 'schedule-actions': same }) });
                 return document.contains(held);")
            .await;
        assert_eq!(
            kept,
            json!(true),
            "the pause button was replaced by an identical one"
        );
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the page went live in time");
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
        let mut federation = connect(&global).await;
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
