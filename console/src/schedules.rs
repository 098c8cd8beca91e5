//! The federation console's schedules pages: every schedule of periodic
//! jobs (`/console/schedules`) and one schedule with its latest runs
//! (`/console/schedules/{id}`), both live, and their JSON.
//!
//! Owns those routes, their rendering, and the schedule page's Pause,
//! Resume and Delete buttons (behind the confirmation dialog, through
//! [`crate::csrf::check`], performed by the source through the tier's
//! API). Must never read a tier's store or change a schedule itself:
//! everything comes from the [`FederationConsoleSource`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;

use crate::dependencies::{gate_mark, job_link};
use crate::error::ConsoleError;
use crate::region::changed_sections;
use crate::render::{self, badge, count, esc, url_segment};
use crate::session::{ConsoleRole, SignedIn};
use crate::source::FederationConsoleSource;
use crate::view::{ScheduleAction, ScheduleDetail, ScheduleRow};
use crate::{CONSOLE_PATH, now_ms};

const REFRESH: Duration = Duration::from_secs(1);

type Sections = BTreeMap<&'static str, String>;

/// The schedules routes, for [`crate::federation_router`].
pub fn routes<S: FederationConsoleSource>() -> Router<Arc<S>> {
    Router::new()
        .route("/console/schedules", get(list_page::<S>))
        .route("/console/schedules/stream", get(list_stream::<S>))
        .route("/console/schedules/{schedule_id}", get(detail_page::<S>))
        .route(
            "/console/schedules/{schedule_id}/stream",
            get(detail_stream::<S>),
        )
        .route("/console/api/schedules", get(list_json::<S>))
        .route(
            "/console/api/schedules/{schedule_id}",
            get(detail_json::<S>),
        )
        .route(
            "/console/api/schedules/{schedule_id}/{action}",
            post(action::<S>),
        )
}

fn state_badge(s: &ScheduleRow) -> String {
    badge(if s.paused { "paused" } else { "active" })
}

/// `14:05:00 UTC (in 3m 10s)`, or `—`.
fn when(unix_ms: u64, now: u64) -> String {
    if unix_ms == 0 {
        return "—".into();
    }
    let rel = if unix_ms >= now {
        format!("in {}", render::duration(unix_ms - now))
    } else {
        format!("{} ago", render::duration(now - unix_ms))
    };
    format!(
        "<time data-unix-ms=\"{unix_ms}\">{}</time> <span class=\"muted\">({})</span>",
        esc(&render::datetime(unix_ms)),
        esc(&rel)
    )
}

fn list_html(schedules: &[ScheduleRow], now: u64) -> String {
    if schedules.is_empty() {
        return "<p class=\"muted\">No schedule yet (<code>meridian schedule create</code>).</p>"
            .into();
    }
    let mut s = String::from(
        "<table><thead><tr><th scope=\"col\">Schedule</th><th scope=\"col\">Tenant</th>\
         <th scope=\"col\">Cron</th><th scope=\"col\">Time zone</th><th scope=\"col\">Overlap</th>\
         <th scope=\"col\">Missed ticks</th><th scope=\"col\">State</th><th scope=\"col\">Next tick (UTC)</th>\
         <th scope=\"col\">Last run</th><th scope=\"col\">Skipped</th></tr></thead><tbody>",
    );
    for sc in schedules {
        let last = if sc.last_job_id.is_empty() {
            "<span class=\"muted\">none yet</span>".to_string()
        } else {
            format!(
                "{}<div class=\"reason\">tick {}</div>",
                job_link(&sc.last_job_id),
                esc(&render::datetime(sc.last_run_tick_unix_ms))
            )
        };
        let _ = write!(
            s,
            "<tr data-schedule=\"{id}\"><th scope=\"row\"><a href=\"{CONSOLE_PATH}/schedules/{url}\">{id}</a>\
             <div class=\"reason\">{job}</div></th><td>{tenant}</td><td><code class=\"cron\">{cron}</code></td>\
             <td class=\"tz\">{tz}</td><td class=\"overlap\">{overlap}</td><td class=\"missed\">{missed}</td>\
             <td class=\"state\">{state}</td><td class=\"next\">{next}</td><td class=\"last\">{last}</td>\
             <td class=\"num\">{skipped}</td></tr>",
            id = esc(&sc.schedule_id),
            url = url_segment(&sc.schedule_id),
            job = esc(&sc.job_name),
            tenant = esc(&sc.tenant),
            cron = esc(&sc.cron),
            tz = esc(&sc.time_zone),
            overlap = esc(&sc.overlap),
            missed = esc(&sc.missed),
            state = state_badge(sc),
            next = when(sc.next_tick_unix_ms, now),
            skipped = count(sc.skipped_ticks),
        );
    }
    s.push_str("</tbody></table>");
    s
}

async fn list_sections<S: FederationConsoleSource>(source: &S) -> Sections {
    let mut out = Sections::new();
    match source.schedules().await {
        Ok(list) => {
            out.insert("problems", String::new());
            out.insert("schedules", list_html(&list, now_ms()));
        }
        Err(e) => {
            out.insert("problems", problem("The schedules could not be read", &e));
            out.insert("schedules", String::new());
        }
    }
    out
}

fn problem(what: &str, e: &ConsoleError) -> String {
    format!(
        "<div class=\"problem\" role=\"alert\"><strong>{}:</strong> {}</div>",
        esc(what),
        esc(&e.to_string())
    )
}

fn header(crumb: &str, title: &str, sub: &str) -> String {
    format!(
        "<div><p class=\"crumbs\"><a href=\"{CONSOLE_PATH}\">Federation</a>{crumb}</p>\
         <h1>{title}</h1><p class=\"sub\">{}</p></div>{}",
        esc(sub),
        render::federation_nav("Schedules")
    )
}

async fn list_page<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Extension(who): Extension<SignedIn>,
) -> Html<String> {
    let sec = list_sections(source.as_ref()).await;
    let body = format!(
        "<section id=\"problems\" aria-label=\"Problems\">{}</section>\
         <section aria-labelledby=\"schedules-h\"><h2 id=\"schedules-h\">Schedules of periodic jobs</h2>\
         <div id=\"schedules\">{}</div><p class=\"muted\">Pause, resume and delete on a schedule's page, \
         or with <code>meridian schedule pause|resume|delete ID</code>.</p></section>",
        sec["problems"], sec["schedules"]
    );
    Html(render::page(
        "Schedules · Meridian",
        &header(
            " / schedules",
            "Schedules",
            "Periodic jobs, one job per tick",
        ),
        &format!("{CONSOLE_PATH}/schedules/stream"),
        &body,
        &who,
    ))
}

async fn list_stream<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Extension(who): Extension<SignedIn>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut interval = tokio::time::interval(REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (source, Sections::new(), interval),
        |(source, last, mut interval)| async move {
            interval.tick().await;
            let fresh = list_sections(source.as_ref()).await;
            let event = changed_sections(&last, &fresh);
            Some((Ok(event), (source, fresh, interval)))
        },
    );
    Sse::new(crate::session::while_signed_in(who, stream)).keep_alive(KeepAlive::default())
}

fn detail_sections(d: &ScheduleDetail, now: u64) -> Sections {
    let sc = &d.schedule;
    let mut out = Sections::new();
    let facts = [
        ("State", state_badge(sc)),
        ("Tenant", esc(&sc.tenant)),
        (
            "Cron",
            format!("<code class=\"cron\">{}</code>", esc(&sc.cron)),
        ),
        ("Time zone", esc(&sc.time_zone)),
        ("Overlap policy", esc(&sc.overlap)),
        ("Missed-tick policy", esc(&sc.missed)),
        (
            "Starting deadline",
            esc(&render::duration(sc.starting_deadline_ms)),
        ),
        ("Next tick (UTC)", when(sc.next_tick_unix_ms, now)),
        ("Last tick (UTC)", when(sc.last_tick_unix_ms, now)),
        ("Last outcome", esc(&sc.last_outcome)),
        ("Skipped ticks", count(sc.skipped_ticks)),
        (
            "Created (UTC)",
            esc(&render::datetime(sc.created_at_unix_ms)),
        ),
    ];
    let mut s = String::from("<dl class=\"facts\">");
    for (k, v) in facts {
        let _ = write!(s, "<div><dt>{}</dt><dd>{v}</dd></div>", esc(k));
    }
    s.push_str("</dl>");
    out.insert("schedule-summary", s);
    out.insert("schedule-actions", actions_html(sc));
    out.insert("runs", runs_html(d));
    out
}

/// Pause or Resume, and Delete; each asks for confirmation first.
fn actions_html(sc: &ScheduleRow) -> String {
    let id = &sc.schedule_id;
    let button = |action: ScheduleAction, label: &str, confirm: String, class: &str| {
        format!(
            "<button type=\"button\" class=\"{class}\" data-action=\"{a}\" data-reason=\"none\" \
             data-url=\"{CONSOLE_PATH}/api/schedules/{url}/{a}\" data-confirm=\"{}\" \
             aria-label=\"{label} schedule {}\">{label}</button>",
            esc(&confirm),
            esc(id),
            a = action.as_str(),
            url = url_segment(id),
        )
    };
    let toggle = if sc.paused {
        button(
            ScheduleAction::Resume,
            "Resume",
            format!(
                "Resume schedule {id}? It runs again from its next tick; the ticks that \
                 passed while it was paused are not run."
            ),
            "",
        )
    } else {
        button(
            ScheduleAction::Pause,
            "Pause",
            format!("Pause schedule {id}? It creates no job until resumed."),
            "",
        )
    };
    let delete = button(
        ScheduleAction::Delete,
        "Delete",
        format!("Delete schedule {id}? It creates no more jobs; the jobs it created are kept."),
        "danger",
    );
    format!("<div class=\"row-actions\">{toggle}{delete}</div>")
}

fn runs_html(d: &ScheduleDetail) -> String {
    if d.runs.is_empty() {
        return "<p class=\"muted\" id=\"no-runs\">No tick has created a job yet.</p>".into();
    }
    let mut s = String::from(
        "<table class=\"compact\"><thead><tr><th scope=\"col\">Job</th><th scope=\"col\">State</th>\
         <th scope=\"col\">Region</th><th scope=\"col\">Tasks done</th><th scope=\"col\">Created (UTC)</th>\
         </tr></thead><tbody>",
    );
    for j in &d.runs {
        let _ = write!(
            s,
            "<tr data-job=\"{}\"><th scope=\"row\">{}</th><td class=\"state\">{}{}</td><td>{}</td>\
             <td class=\"num\">{} / {}</td><td>{}</td></tr>",
            esc(&j.job_id),
            job_link(&j.job_id),
            badge(&j.state),
            gate_mark(j),
            if j.region.is_empty() {
                "—".into()
            } else {
                esc(&j.region)
            },
            j.tasks_done,
            j.task_count,
            esc(&render::datetime(j.created_at_unix_ms)),
        );
    }
    s.push_str("</tbody></table>");
    if d.runs_truncated {
        s.push_str("<p class=\"muted\">The latest runs only.</p>");
    }
    s
}

async fn detail_page<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Path(schedule_id): Path<String>,
    Extension(who): Extension<SignedIn>,
) -> Response {
    let d = match source.schedule(&schedule_id).await {
        Ok(d) => d,
        Err(e) => {
            let body = format!(
                "{}<p><a href=\"{CONSOLE_PATH}/schedules\">Back to the schedules</a></p>",
                problem("Schedule not shown", &e)
            );
            return (
                e.status(),
                Html(render::page(
                    "Schedule · Meridian",
                    &header(" / schedule", "Schedule not shown", ""),
                    "",
                    &body,
                    &who,
                )),
            )
                .into_response();
        }
    };
    let sec = detail_sections(&d, now_ms());
    let id = &d.schedule.schedule_id;
    let body = format!(
        "<section id=\"schedule-summary\" aria-label=\"Schedule summary\">{}</section>\
         <section aria-labelledby=\"schedule-actions-h\"><h2 id=\"schedule-actions-h\">Actions</h2>\
         <div id=\"schedule-actions\">{}</div></section>\
         <section aria-labelledby=\"runs-h\"><h2 id=\"runs-h\">Latest runs</h2><div id=\"runs\">{}</div></section>",
        sec["schedule-summary"], sec["schedule-actions"], sec["runs"]
    );
    Html(render::page(
        &format!("Schedule {id} · Meridian"),
        &header(
            &format!(" / <a href=\"{CONSOLE_PATH}/schedules\">schedules</a>"),
            &format!("Schedule <span id=\"schedule-id-title\">{}</span>", esc(id)),
            &format!("creates job “{}” per tick", d.schedule.job_name),
        ),
        &format!("{CONSOLE_PATH}/schedules/{}/stream", url_segment(id)),
        &body,
        &who,
    ))
    .into_response()
}

async fn detail_stream<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Path(schedule_id): Path<String>,
    Extension(who): Extension<SignedIn>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut interval = tokio::time::interval(REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (source, schedule_id, Sections::new(), interval),
        |(source, id, last, mut interval)| async move {
            interval.tick().await;
            let fresh = match source.schedule(&id).await {
                Ok(d) => detail_sections(&d, now_ms()),
                // Keep what the page shows; the indicator says it is live.
                Err(_) => last.clone(),
            };
            let event = changed_sections(&last, &fresh);
            Some((Ok(event), (source, id, fresh, interval)))
        },
    );
    Sse::new(crate::session::while_signed_in(who, stream)).keep_alive(KeepAlive::default())
}

async fn list_json<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
) -> Result<Response, ConsoleError> {
    Ok(axum::Json(source.schedules().await?).into_response())
}

async fn action<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Path((schedule_id, action)): Path<(String, String)>,
    Extension(who): Extension<SignedIn>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ConsoleError> {
    crate::csrf::check(&headers)?;
    who.viewer().require(ConsoleRole::Submitter)?;
    let action = ScheduleAction::parse(&action)
        .ok_or_else(|| ConsoleError::NotFound(format!("no schedule action named {action}")))?;
    let outcome = source
        .schedule_action(&schedule_id, action, &who.actor)
        .await?;
    Ok(axum::Json(serde_json::json!({ "ok": true, "message": outcome.message })).into_response())
}

async fn detail_json<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Path(schedule_id): Path<String>,
) -> Result<Response, ConsoleError> {
    Ok(axum::Json(source.schedule(&schedule_id).await?).into_response())
}
