//! The federation console's schedule pages in a real browser (Debian's
//! headless Chromium through chromedriver) against a real `meridian global`:
//! the list of schedules, a schedule's page with the runs its ticks create,
//! its pause, resume and delete actions, and a live update that changes
//! nothing. The other workload pages are in `console_workloads.rs`.
//!
//! Schedules go through the real Federation API. Nothing sleeps to wait
//! for a condition: the page is watched with a `MutationObserver` until it
//! shows what is expected (the live stream updates it), a tick is awaited
//! on a `WatchJobs` stream, with timeouts as failure guards only. With
//! `MERIDIAN_CONSOLE_SCREENSHOTS=1` the screenshots are written to
//! `docs/console/`.

use crate::console_support;
use crate::support;

use std::time::Duration;

use console_support::{Browser, GUARD, Global, screenshot_dir, spec};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use serde_json::json;
use tonic::transport::Channel;

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
        let mut federation = global.federation().await;
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

/// Presses the schedule's `action` button, confirms it in the dialog, and
/// returns the outcome line once it has come back.
async fn confirmed(browser: &Browser, action: &str) -> (String, String) {
    browser
        .click(&format!(
            "#schedule-actions button[data-action=\"{action}\"]"
        ))
        .await;
    browser.click("#confirm-ok").await;
    action_outcome(browser, &format!("the {action}'s outcome")).await
}

/// Waits until the page shows the schedule in `state` and offers `next`,
/// without a reload.
async fn shows_state(browser: &Browser, state: &str, next: &str) {
    browser
        .wait_for(
            &format!("the {state} state and its {next} button, live"),
            &format!(
                "const s = document.querySelector('#schedule-summary .badge');
                 return s && s.dataset.state === '{state}'
                   && document.querySelector('#schedule-actions button[data-action=\"{next}\"]');"
            ),
        )
        .await;
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
        let mut federation = global.federation().await;
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
        let (outcome, message) = confirmed(&browser, "pause").await;
        assert_eq!(outcome, "ok", "{message}");
        assert!(message.contains("nightly-report paused"), "{message}");
        assert_eq!(
            schedule_state(&mut federation, "nightly-report").await,
            Some(true)
        );
        shows_state(&browser, "paused", "resume").await;

        // Resume, confirmed.
        let (outcome, message) = confirmed(&browser, "resume").await;
        assert_eq!(outcome, "ok", "{message}");
        assert!(message.contains("resumed: next tick"), "{message}");
        assert_eq!(
            schedule_state(&mut federation, "nightly-report").await,
            Some(false)
        );
        shows_state(&browser, "active", "pause").await;

        // Delete, confirmed: gone from the API and from the list.
        let (outcome, message) = confirmed(&browser, "delete").await;
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
        let mut federation = global.federation().await;
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
