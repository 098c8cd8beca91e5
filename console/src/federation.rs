//! The federation overview served by `meridian global`: routes, page
//! sections, the job detail page with its task timeline, and their live
//! streams.
//!
//! Owns `/console` of a global replica. Must never read the store itself:
//! everything comes from the [`FederationConsoleSource`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use futures::Stream;
use serde::Deserialize;

use crate::error::ConsoleError;
use crate::job_tasks::{TasksParams, TasksView};
use crate::region::changed_sections;
use crate::render::{self, badge, count, esc, meter, url_segment};
use crate::session::{Gate, SignedIn};
use crate::source::FederationConsoleSource;
use crate::view::{FederationSnapshot, JobDetail, TaskPage};
use crate::{CONSOLE_PATH, assets};

/// How often the live streams re-render.
const REFRESH: Duration = Duration::from_secs(1);
/// Most tasks drawn in a job's timeline.
const MAX_TIMELINE_TASKS: usize = 40;

/// The federation overview's routes, with `source` as their state.
///
/// Every route but the static assets and the sign-in page is behind
/// `gate`.
pub fn federation_router<S: FederationConsoleSource>(source: Arc<S>, gate: &Arc<Gate>) -> Router {
    let guarded = Router::new()
        .route("/console", get(overview_page::<S>))
        .route("/console/stream", get(overview_stream::<S>))
        .route("/console/api/overview", get(overview_json::<S>))
        .route("/console/jobs", get(find_job))
        .route("/console/jobs/{job_id}", get(job_page::<S>))
        .route("/console/jobs/{job_id}/stream", get(job_stream::<S>))
        .route("/console/api/jobs/{job_id}", get(job_json::<S>))
        .merge(crate::schedules::routes::<S>())
        .merge(crate::usage::routes::<S>())
        .with_state(source);
    gate.guard(guarded).merge(assets::routes())
}

type Sections = BTreeMap<&'static str, String>;

async fn overview_sections<S: FederationConsoleSource>(source: &S) -> (Sections, String) {
    let mut out = Sections::new();
    let (snap, problem) = match source.overview().await {
        Ok(s) => (s, String::new()),
        Err(e) => (
            FederationSnapshot::default(),
            format!(
                "<div class=\"problem\" role=\"alert\"><strong>The overview could not be read:</strong> {}</div>",
                esc(&e.to_string())
            ),
        ),
    };
    out.insert("problems", problem);
    out.insert("summary", summary_html(&snap));
    out.insert("regions", regions_html(&snap));
    out.insert("job-states", job_states_html(&snap));
    out.insert("tenants", tenants_html(&snap));
    out.insert("recent", recent_html(&snap));
    out.insert("gated", crate::dependencies::gated_html(&snap));
    let who = format!(
        "replica {} · {}",
        snap.replica,
        if snap.leader { "leader" } else { "standby" }
    );
    (out, who)
}

fn summary_html(snap: &FederationSnapshot) -> String {
    let ready = snap
        .regions
        .iter()
        .filter(|r| r.lease_state == "ready")
        .count();
    let nodes: u32 = snap.regions.iter().map(|r| r.nodes_total).sum();
    let nodes_ready: u32 = snap.regions.iter().map(|r| r.nodes_ready).sum();
    let cap: u64 = snap.regions.iter().map(|r| r.capacity.cpu_millis).sum();
    let used: u64 = snap.regions.iter().map(|r| r.used.cpu_millis).sum();
    let state = |name: &str| {
        snap.jobs_by_state
            .iter()
            .find(|(s, _)| s == name)
            .map_or(0, |(_, n)| *n)
    };
    let active = state("routed") + state("placed") + state("running");
    let card = |label: &str, value: String, note: String| {
        format!(
            "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"note\">{}</div></div>",
            esc(label),
            esc(&value),
            esc(&note)
        )
    };
    [
        card(
            "Regions ready",
            format!("{ready} / {}", snap.regions.len()),
            "holding a live lease".into(),
        ),
        card(
            "Nodes ready",
            format!(
                "{} / {}",
                count(u64::from(nodes_ready)),
                count(u64::from(nodes))
            ),
            "last capacity reports".into(),
        ),
        card(
            "CPU in use",
            format!("{} / {} cores", render::cores(used), render::cores(cap)),
            "across regions".into(),
        ),
        card(
            "Pending jobs",
            count(state("pending")),
            "waiting for a region".into(),
        ),
        card(
            "Active jobs",
            count(active),
            format!("{} jobs scanned", count(snap.jobs_scanned)),
        ),
    ]
    .concat()
}

fn regions_html(snap: &FederationSnapshot) -> String {
    let mut s = String::from(
        "<table><thead><tr><th scope=\"col\">Region</th><th scope=\"col\">Lease</th>\
         <th scope=\"col\">Epoch</th><th scope=\"col\">Leader</th><th scope=\"col\">Nodes</th>\
         <th scope=\"col\">CPU</th><th scope=\"col\">Memory</th><th scope=\"col\">Jobs</th>\
         <th scope=\"col\">Tasks pending / running</th><th scope=\"col\">Report</th></tr></thead><tbody>",
    );
    for r in &snap.regions {
        let (cpu, mem) = render::amount_text(&r.used, &r.capacity);
        let mut lease = badge(&r.lease_state);
        if r.draining {
            lease.push(' ');
            lease.push_str(&badge(if r.evacuating {
                "evacuating"
            } else {
                "draining"
            }));
        }
        if r.lease_expires_in_ms > 0 {
            let _ = write!(
                lease,
                "<div class=\"reason\">expires in {}</div>",
                esc(&render::duration(r.lease_expires_in_ms))
            );
        }
        let _ = write!(
            s,
            "<tr data-region=\"{name}\"><th scope=\"row\">{name}</th><td class=\"state\">{lease}</td>\
             <td class=\"num\">{}</td><td>{}</td><td class=\"num\">{} / {}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{} / {}</td><td>{}</td></tr>",
            r.lease_epoch,
            esc(&r.leader),
            r.nodes_ready,
            r.nodes_total,
            meter(
                &format!("CPU of {}", r.name),
                r.used.cpu_millis as f64,
                r.capacity.cpu_millis as f64,
                &cpu
            ),
            meter(
                &format!("Memory of {}", r.name),
                r.used.memory_bytes as f64,
                r.capacity.memory_bytes as f64,
                &mem
            ),
            count(r.assigned_jobs),
            count(r.pending_tasks),
            count(r.running_tasks),
            r.report_age_ms.map_or("never".to_string(), |a| format!(
                "{} ago",
                render::duration(a)
            )),
            name = esc(&r.name),
        );
    }
    if snap.regions.is_empty() {
        s.push_str(
            "<tr><td colspan=\"10\" class=\"muted\">No region has registered yet.</td></tr>",
        );
    }
    s.push_str("</tbody></table>");
    s
}

fn job_states_html(snap: &FederationSnapshot) -> String {
    let bars: Vec<(String, u64, String)> = snap
        .jobs_by_state
        .iter()
        .map(|(state, n)| (state.clone(), *n, format!("s-{state}")))
        .collect();
    let mut s = render::bar_chart("Jobs by state", &bars);
    if snap.scan_truncated {
        let _ = write!(
            s,
            "<p class=\"muted\">Counted over the first {} jobs.</p>",
            count(snap.jobs_scanned)
        );
    }
    s
}

fn tenants_html(snap: &FederationSnapshot) -> String {
    let states: Vec<&str> = snap.jobs_by_state.iter().map(|(s, _)| s.as_str()).collect();
    let mut s = String::from("<table class=\"compact\"><thead><tr><th scope=\"col\">Tenant</th>");
    for st in &states {
        let _ = write!(s, "<th scope=\"col\">{}</th>", esc(st));
    }
    s.push_str("<th scope=\"col\">Total</th></tr></thead><tbody>");
    for t in &snap.tenants {
        let _ = write!(
            s,
            "<tr data-tenant=\"{0}\"><th scope=\"row\">{0}</th>",
            esc(&t.tenant)
        );
        for st in &states {
            let n = t
                .by_state
                .iter()
                .find(|(x, _)| x == st)
                .map_or(0, |(_, n)| *n);
            let _ = write!(
                s,
                "<td class=\"num\">{}</td>",
                if n == 0 { "·".into() } else { count(n) }
            );
        }
        let _ = write!(
            s,
            "<td class=\"num\"><strong>{}</strong></td></tr>",
            count(t.total)
        );
    }
    if snap.tenants.is_empty() {
        s.push_str("<tr><td class=\"muted\">No jobs yet.</td></tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn recent_html(snap: &FederationSnapshot) -> String {
    let mut s = String::from(
        "<table><thead><tr><th scope=\"col\">Job</th><th scope=\"col\">Name</th><th scope=\"col\">Tenant</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Region</th><th scope=\"col\">Priority</th>\
         <th scope=\"col\">Tasks done</th><th scope=\"col\">Created (UTC)</th></tr></thead><tbody>",
    );
    for j in &snap.recent {
        let _ = write!(
            s,
            "<tr data-job=\"{id}\"><th scope=\"row\"><a href=\"{CONSOLE_PATH}/jobs/{url}\">{id}</a></th>\
             <td>{}</td><td>{}</td><td class=\"state\">{}{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{} / {}</td><td>{}</td></tr>",
            esc(&j.name),
            esc(&j.tenant),
            badge(&j.state),
            crate::dependencies::gate_mark(j) + &waiting_note(&j.waiting_reason),
            if j.region.is_empty() {
                "—".into()
            } else {
                esc(&j.region)
            },
            j.priority,
            j.tasks_done,
            j.task_count,
            render::clock(j.created_at_unix_ms),
            id = esc(&j.job_id),
            url = url_segment(&j.job_id),
        );
    }
    if snap.recent.is_empty() {
        s.push_str("<tr><td colspan=\"8\" class=\"muted\">No jobs yet.</td></tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// Why a job waits, under its state badge in a list; the job page has it
/// whole, the list cuts a long one (the full text is its tooltip).
fn waiting_note(reason: &str) -> String {
    const SHOWN: usize = 80;
    if reason.is_empty() {
        return String::new();
    }
    let shown = if reason.chars().count() > SHOWN {
        let kept: String = reason.chars().take(SHOWN - 1).collect();
        format!("{}…", kept.trim_end())
    } else {
        reason.to_string()
    };
    format!(
        "<div class=\"reason waiting-reason\" title=\"{}\">{}</div>",
        esc(reason),
        esc(&shown)
    )
}

async fn overview_page<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Extension(signed): Extension<SignedIn>,
) -> Html<String> {
    let (sec, who) = overview_sections(source.as_ref()).await;
    let header = format!(
        "<div><h1>Meridian federation</h1><p class=\"sub\">Global overview · {}</p></div>\
         <form class=\"header-actions\" action=\"{CONSOLE_PATH}/jobs\" method=\"get\" role=\"search\">\
         <label for=\"job-id\">Job id</label><input id=\"job-id\" name=\"id\" type=\"text\" required \
         placeholder=\"j0000000001-…\"><button type=\"submit\">Open job</button></form>{}",
        esc(&who),
        render::federation_nav("Overview")
    );
    let body = format!(
        "<section id=\"problems\" aria-label=\"Problems\">{}</section>\
         <section id=\"summary\" class=\"cards\" aria-label=\"Summary\">{}</section>\
         <section aria-labelledby=\"regions-h\"><h2 id=\"regions-h\">Regions</h2><div id=\"regions\">{}</div></section>\
         <div class=\"two\"><section aria-labelledby=\"states-h\"><h2 id=\"states-h\">Jobs by state</h2>\
         <div id=\"job-states\">{}</div></section><section aria-labelledby=\"tenants-h\">\
         <h2 id=\"tenants-h\">Jobs by tenant</h2><div id=\"tenants\">{}</div></section></div>\
         <section aria-labelledby=\"recent-h\"><h2 id=\"recent-h\">Recent jobs</h2><div id=\"recent\">{}</div></section>\
         <section aria-labelledby=\"gated-h\"><h2 id=\"gated-h\">Held and waiting for other jobs</h2>\
         <div id=\"gated\">{}</div></section>",
        sec["problems"],
        sec["summary"],
        sec["regions"],
        sec["job-states"],
        sec["tenants"],
        sec["recent"],
        sec["gated"]
    );
    Html(render::page(
        "Meridian federation",
        &header,
        &format!("{CONSOLE_PATH}/stream"),
        &body,
        &signed,
    ))
}

async fn overview_stream<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Extension(who): Extension<SignedIn>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut interval = tokio::time::interval(REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures::stream::unfold(
        (source, Sections::new(), interval),
        |(source, last, mut interval)| async move {
            interval.tick().await;
            let (fresh, _) = overview_sections(source.as_ref()).await;
            let event = changed_sections(&last, &fresh);
            Some((Ok(event), (source, fresh, interval)))
        },
    );
    Sse::new(crate::session::while_signed_in(who, stream)).keep_alive(KeepAlive::default())
}

async fn overview_json<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
) -> Result<Response, ConsoleError> {
    Ok(axum::Json(source.overview().await?).into_response())
}

#[derive(Debug, Deserialize)]
struct FindJob {
    #[serde(default)]
    id: String,
}

async fn find_job(Query(q): Query<FindJob>) -> Redirect {
    let id = q.id.trim();
    if id.is_empty() {
        Redirect::to(CONSOLE_PATH)
    } else {
        Redirect::to(&format!("{CONSOLE_PATH}/jobs/{}", url_segment(id)))
    }
}

/// One page of the job's task table; a job not routed yet is held by no
/// region, so its region is not asked.
async fn task_page<S: FederationConsoleSource>(
    source: &S,
    job: &JobDetail,
    view: &TasksView,
) -> Result<TaskPage, ConsoleError> {
    if job.job.region.is_empty() {
        return Err(ConsoleError::NotFound(format!(
            "job {} is not routed yet",
            job.job.job_id
        )));
    }
    source.job_tasks(&job.job.job_id, &view.query()).await
}

fn job_sections(
    job: &JobDetail,
    view: &TasksView,
    page: &Result<TaskPage, ConsoleError>,
    now: u64,
) -> Sections {
    let mut out = Sections::new();
    out.insert("job-summary", job_summary_html(job));
    out.insert("task-counts", crate::job_tasks::counts_html(job));
    out.insert(
        "dependencies",
        crate::dependencies::job_dependencies_html(job),
    );
    out.insert(
        "timeline",
        crate::timeline::timeline_svg(job, now, MAX_TIMELINE_TASKS),
    );
    out.insert("tasks", crate::job_tasks::tasks_html(job, view, page));
    out.insert("history", history_html(job));
    out
}

fn job_summary_html(job: &JobDetail) -> String {
    let j = &job.job;
    // `(label, html, wide)`; a wide fact spans the row: a sentence would
    // not fit a column.
    let mut facts: Vec<(&str, String, bool)> = vec![(
        "State",
        format!("<span id=\"job-state\">{}</span>", badge(&j.state)),
        false,
    )];
    if !j.waiting_reason.is_empty() {
        facts.push((
            "Waiting",
            format!("<span id=\"job-waiting\">{}</span>", esc(&j.waiting_reason)),
            true,
        ));
    }
    facts.extend([
        ("Tenant", esc(&j.tenant), false),
        (
            "Region",
            if j.region.is_empty() {
                "—".into()
            } else {
                esc(&j.region)
            },
            false,
        ),
        ("Assignment epoch", job.assignment_epoch.to_string(), false),
        ("Priority", j.priority.to_string(), false),
        (
            "Tasks done",
            format!("{} / {}", j.tasks_done, j.task_count),
            false,
        ),
        ("Created (UTC)", render::clock(j.created_at_unix_ms), false),
        (
            "Updated (UTC)",
            render::clock(job.updated_at_unix_ms),
            false,
        ),
        ("Request id", esc(&job.request_id), false),
    ]);
    if !job.failure_reason.is_empty() {
        facts.push((
            "Failure",
            format!(
                "<span class=\"error-text\">{}</span>",
                esc(&job.failure_reason)
            ),
            false,
        ));
    }
    if job.cancel_requested {
        facts.push(("Cancel", "requested".into(), false));
    }
    let mut s = String::from("<dl class=\"facts\">");
    for (k, v, wide) in facts {
        let _ = write!(
            s,
            "<div{}><dt>{}</dt><dd>{}</dd></div>",
            if wide { " class=\"wide\"" } else { "" },
            esc(k),
            v
        );
    }
    s.push_str("</dl>");
    s
}

fn history_html(job: &JobDetail) -> String {
    let mut s = String::from(
        "<table class=\"compact\"><thead><tr><th scope=\"col\">When (UTC)</th><th scope=\"col\">From</th>\
         <th scope=\"col\">To</th><th scope=\"col\">Region</th><th scope=\"col\">Epoch</th>\
         <th scope=\"col\">Reason</th></tr></thead><tbody>",
    );
    for h in &job.history {
        let _ = write!(
            s,
            "<tr class=\"transition\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            render::clock(h.at_unix_ms),
            if h.from == "unspecified" {
                "—".to_string()
            } else {
                badge(&h.from)
            },
            badge(&h.to),
            esc(&h.region),
            h.epoch,
            esc(&h.reason)
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// `?task=N`: the task whose output the job page follows.
#[derive(Debug, Default, serde::Deserialize)]
struct OutputQuery {
    task: Option<u32>,
}

async fn job_page<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Path(job_id): Path<String>,
    Query(output): Query<OutputQuery>,
    Query(params): Query<TasksParams>,
    Extension(who): Extension<SignedIn>,
) -> Response {
    let job = match params.parse() {
        Ok(view) => source.job(&job_id).await.map(|j| (j, view)),
        Err(e) => Err(e),
    };
    let (job, view) = match job {
        Ok(j) => j,
        Err(e) => return job_problem_page(&e, &who),
    };
    let page = task_page(&*source, &job, &view).await;
    let sec = job_sections(&job, &view, &page, crate::now_ms());
    let header = format!(
        "<div><p class=\"crumbs\"><a href=\"{CONSOLE_PATH}\">Federation</a> / job</p>\
         <h1>Job <span id=\"job-id-title\">{}</span></h1><p class=\"sub\">{}</p></div>{}",
        esc(&job.job.job_id),
        esc(&job.job.name),
        render::federation_nav("")
    );
    let body = format!(
        "<section id=\"job-summary\" aria-label=\"Job summary\">{}</section>\
         <section aria-labelledby=\"dependencies-h\"><h2 id=\"dependencies-h\">Dependencies and hold</h2>\
         <div id=\"dependencies\">{}</div></section>\
         <section aria-labelledby=\"timeline-h\"><h2 id=\"timeline-h\">Task timeline</h2><div id=\"timeline\">{}</div></section>\
         <section aria-labelledby=\"task-counts-h\"><h2 id=\"task-counts-h\">Tasks by state</h2><div id=\"task-counts\">{}</div></section>\
         <section aria-labelledby=\"tasks-h\"><h2 id=\"tasks-h\">Tasks</h2><div id=\"tasks\">{}</div></section>\
         {}\
         <section aria-labelledby=\"history-h\"><h2 id=\"history-h\">History</h2><div id=\"history\">{}</div></section>",
        sec["job-summary"],
        sec["dependencies"],
        sec["timeline"],
        sec["task-counts"],
        sec["tasks"],
        crate::output::output_section(&job, output.task.unwrap_or(0)),
        sec["history"]
    );
    Html(render::page(
        &format!("Job {} · Meridian", job.job.job_id),
        &header,
        &format!(
            "{CONSOLE_PATH}/jobs/{}/stream{}",
            url_segment(&job.job.job_id),
            view.query_string()
        ),
        &body,
        &who,
    ))
    .into_response()
}

/// The page of a job that cannot be shown, with the status of why.
fn job_problem_page(e: &ConsoleError, who: &SignedIn) -> Response {
    let header = "<div><h1>Job not shown</h1></div>";
    let body = format!(
        "<div class=\"problem\" role=\"alert\">{}</div><p><a href=\"{CONSOLE_PATH}\">Back to the overview</a></p>",
        esc(&e.to_string())
    );
    (
        e.status(),
        Html(render::page("Job · Meridian", header, "", &body, who)),
    )
        .into_response()
}

async fn job_stream<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Path(job_id): Path<String>,
    Query(params): Query<TasksParams>,
    Extension(who): Extension<SignedIn>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut interval = tokio::time::interval(REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A bad filter was refused with the page; the stream then shows all.
    let view = params.parse().unwrap_or_default();
    let stream = futures::stream::unfold(
        (source, job_id, view, Sections::new(), interval),
        |(source, job_id, view, last, mut interval)| async move {
            interval.tick().await;
            let fresh = match source.job(&job_id).await {
                Ok(job) => {
                    let page = task_page(&*source, &job, &view).await;
                    job_sections(&job, &view, &page, crate::now_ms())
                }
                // Keep what the page shows; the indicator says it is live.
                Err(_) => last.clone(),
            };
            let event = changed_sections(&last, &fresh);
            Some((Ok(event), (source, job_id, view, fresh, interval)))
        },
    );
    Sse::new(crate::session::while_signed_in(who, stream)).keep_alive(KeepAlive::default())
}

async fn job_json<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Path(job_id): Path<String>,
) -> Result<Response, ConsoleError> {
    Ok(axum::Json(source.job(&job_id).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::waiting_note;

    #[test]
    fn a_long_waiting_reason_is_cut_in_a_list_with_the_whole_text_as_its_tooltip() {
        assert_eq!(waiting_note(""), "");
        let long = format!("0/900 nodes: {}", "900 do not match a=<b>, ".repeat(8));
        let note = waiting_note(&long);
        assert!(
            note.contains(&format!("title=\"{}\"", super::esc(&long))),
            "{note}"
        );
        assert!(note.contains("…</div>"), "{note}");
        assert!(!note.contains("<b>"), "{note}");
        let short = waiting_note("no allowed region is ready");
        assert!(
            short.contains(">no allowed region is ready</div>"),
            "{short}"
        );
    }
}
