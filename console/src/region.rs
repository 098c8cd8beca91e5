//! The regional console: routes, page sections and the live stream.
//!
//! Owns `/console` of a region replica: the page, `/console/stream` (SSE:
//! re-rendered sections once a second, sent when they changed), the JSON
//! snapshot and the action endpoints, which call the source. Must never
//! decide anything about nodes or shards itself.

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
use serde::Deserialize;
use serde_json::json;

use crate::error::ConsoleError;
use crate::render::{self, badge, count, esc, meter, url_segment};
use crate::session::{ConsoleRole, Gate, SignedIn};
use crate::source::RegionConsoleSource;
use crate::view::{NodeAction, NodeState, NodeView, RegionSnapshot};
use crate::{CONSOLE_PATH, assets};

/// How often the live stream re-renders the page's sections.
const REFRESH: Duration = Duration::from_secs(1);
/// Most node rows shown (problem nodes first).
const MAX_NODE_ROWS: usize = 500;
/// Most waiting jobs shown (highest priority first).
const MAX_WAITING_ROWS: usize = 100;

/// The regional console's routes, with `source` as their state; every
/// route but the static assets and the sign-in page is behind `gate`.
pub fn region_router<S: RegionConsoleSource>(source: Arc<S>, gate: &Arc<Gate>) -> Router {
    let guarded = Router::new()
        .route("/console", get(page::<S>))
        .route("/console/stream", get(stream::<S>))
        .route("/console/api/snapshot", get(snapshot_json::<S>))
        .route("/console/api/nodes/{node}/{action}", post(node_action::<S>))
        .route("/console/api/drain-region", post(drain_region::<S>))
        .with_state(source);
    gate.guard(guarded).merge(assets::routes())
}

/// A snapshot plus the messages of the source calls that failed, narrowed
/// to what `who` may see.
async fn collect<S: RegionConsoleSource>(
    source: &S,
    who: &SignedIn,
) -> (RegionSnapshot, Vec<String>) {
    let (identity, shards, nodes, lanes, waiting, placement, events) = tokio::join!(
        source.identity(),
        source.shards(),
        source.nodes(),
        source.pending_lanes(),
        source.waiting_jobs(),
        source.placement(),
        source.events()
    );
    let mut problems = Vec::new();
    let snapshot = RegionSnapshot {
        identity: take(&mut problems, "identity", identity),
        generated_at_unix_ms: now_ms(),
        shards: take(&mut problems, "shards", shards),
        nodes: take(&mut problems, "nodes", nodes),
        lanes: take(&mut problems, "pending queue", lanes),
        waiting: take(&mut problems, "waiting jobs", waiting),
        placement: take(&mut problems, "placement", placement),
        events: take(&mut problems, "events", events),
    };
    let mut snapshot = snapshot;
    // A viewer of some tenants sees only their waiting jobs.
    snapshot
        .waiting
        .retain(|j| who.viewer().sees_tenant(&j.tenant));
    (snapshot, problems)
}

fn take<T: Default>(problems: &mut Vec<String>, what: &str, r: Result<T, ConsoleError>) -> T {
    r.unwrap_or_else(|e| {
        problems.push(format!("{what}: {e}"));
        T::default()
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn page<S: RegionConsoleSource>(
    State(source): State<Arc<S>>,
    Extension(who): Extension<SignedIn>,
) -> Html<String> {
    let (snap, problems) = collect(source.as_ref(), &who).await;
    let sections = sections(&snap, &problems, &who);
    let id = &snap.identity;
    // A viewer gets no controls (the server refuses their actions anyway).
    let drain = if who.viewer().may_operate() {
        format!(
            "<div class=\"header-actions\"><button type=\"button\" class=\"danger\" data-action=\"drain-region\" \
             data-url=\"{CONSOLE_PATH}/api/drain-region\" data-evacuate=\"true\" \
             data-confirm=\"Drain region {}? The global tier stops routing new jobs to it.\" \
             aria-label=\"Drain region {}\"{}>Drain region…</button></div>",
            esc(&id.region),
            esc(&id.region),
            if id.linked {
                ""
            } else {
                " title=\"This region runs without a global tier; the drain will report why it cannot be done.\""
            }
        )
    } else {
        String::new()
    };
    let header = format!(
        "<div><h1>Region <span id=\"region-name\">{}</span></h1>\
         <p class=\"sub\">Meridian regional console · replica {} · {} shards</p></div>{drain}",
        esc(&id.region),
        esc(&id.replica),
        id.shard_count,
    );
    let mut body = String::new();
    let _ = write!(
        body,
        "<section id=\"problems\" aria-label=\"Problems\">{}</section>\
         <section id=\"summary\" class=\"cards\" aria-label=\"Summary\">{}</section>\
         <section id=\"charts\" class=\"charts\" aria-label=\"Placement charts\">{}</section>\
         <div class=\"two\"><section aria-labelledby=\"shards-h\"><h2 id=\"shards-h\">Shards</h2>\
         <div id=\"shards\">{}</div></section>\
         <section aria-labelledby=\"lanes-h\"><h2 id=\"lanes-h\">Pending queue by priority lane</h2>\
         <div id=\"lanes\">{}</div></section></div>\
         <section aria-labelledby=\"waiting-h\"><h2 id=\"waiting-h\">Waiting jobs</h2><div id=\"waiting\">{}</div></section>\
         <section aria-labelledby=\"nodes-h\"><h2 id=\"nodes-h\">Nodes</h2><div id=\"nodes\">{}</div></section>\
         <section aria-labelledby=\"events-h\"><h2 id=\"events-h\">Recent events</h2><div id=\"events\">{}</div></section>",
        sections["problems"],
        sections["summary"],
        sections["charts"],
        sections["shards"],
        sections["lanes"],
        sections["waiting"],
        sections["nodes"],
        sections["events"],
    );
    Html(render::page(
        &format!("{} · Meridian region", id.region),
        &header,
        &format!("{CONSOLE_PATH}/stream"),
        &body,
        &who,
    ))
}

/// Renders every live section of the page, by element id.
fn sections(
    snap: &RegionSnapshot,
    problems: &[String],
    who: &SignedIn,
) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    out.insert("problems", problems_html(problems));
    out.insert("summary", summary_html(snap));
    out.insert("charts", charts_html(snap));
    out.insert("shards", shards_html(snap));
    out.insert("lanes", lanes_html(snap));
    out.insert("waiting", waiting_html(snap));
    out.insert("nodes", nodes_html(snap, who.viewer().may_operate()));
    out.insert("events", events_html(snap));
    out
}

fn problems_html(problems: &[String]) -> String {
    if problems.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "<div class=\"problem\" role=\"alert\"><strong>Some data could not be read.</strong><ul>",
    );
    for p in problems {
        let _ = write!(s, "<li>{}</li>", esc(p));
    }
    s.push_str("</ul></div>");
    s
}

fn summary_html(snap: &RegionSnapshot) -> String {
    let ready = snap
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready)
        .count();
    let unavailable = snap
        .nodes
        .iter()
        .filter(|n| matches!(n.liveness, NodeState::Suspect | NodeState::Dead))
        .count();
    let led = snap
        .shards
        .iter()
        .filter(|s| !s.leader.is_empty() && s.expires_in_ms > 0)
        .count();
    let pending: u64 = snap.lanes.iter().map(|l| l.tasks).sum();
    let running: u64 = snap.nodes.iter().map(|n| u64::from(n.running_tasks)).sum();
    let rate = snap.placement.last().map_or("—".to_string(), |p| {
        format!("{}/s", count(p.bindings_per_second.round() as u64))
    });
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
            "Nodes ready",
            format!("{ready} / {}", snap.nodes.len()),
            format!("{unavailable} suspect or dead"),
        ),
        card(
            "Shards led",
            format!(
                "{led} / {}",
                snap.identity.shard_count.max(snap.shards.len() as u32)
            ),
            "live leases".into(),
        ),
        card(
            "Pending tasks",
            count(pending),
            match snap.lanes.len() {
                1 => "in 1 priority lane".to_string(),
                n => format!("in {n} priority lanes"),
            },
        ),
        card("Running tasks", count(running), "bound to nodes".into()),
        card("Placement rate", rate, "bindings committed".into()),
    ]
    .concat()
}

fn charts_html(snap: &RegionSnapshot) -> String {
    let rate: Vec<(u64, Option<f64>)> = snap
        .placement
        .iter()
        .map(|p| (p.at_unix_ms, Some(p.bindings_per_second)))
        .collect();
    let latency: Vec<(u64, Option<f64>)> = snap
        .placement
        .iter()
        .map(|p| (p.at_unix_ms, p.latency_ms))
        .collect();
    format!(
        "{}{}",
        render::line_chart("Placement rate (bindings/s)", "/s", &rate),
        render::line_chart("Placement round latency (ms)", "ms", &latency)
    )
}

fn shards_html(snap: &RegionSnapshot) -> String {
    let mut s = String::from(
        "<table><thead><tr><th scope=\"col\">Shard</th><th scope=\"col\">Leader</th>\
         <th scope=\"col\">Epoch</th><th scope=\"col\">Held for</th><th scope=\"col\">Lease</th></tr></thead><tbody>",
    );
    for sh in &snap.shards {
        let lease = if sh.leader.is_empty() {
            "<span class=\"muted\">none</span>".to_string()
        } else if sh.expires_in_ms == 0 {
            badge("expired")
        } else {
            format!("expires in {}", esc(&render::duration(sh.expires_in_ms)))
        };
        let _ = write!(
            s,
            "<tr data-shard=\"{}\"><th scope=\"row\">{}</th><td class=\"leader\">{}</td>\
             <td class=\"epoch num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            sh.shard,
            sh.shard,
            if sh.leader.is_empty() {
                "—".to_string()
            } else {
                esc(&sh.leader)
            },
            sh.epoch,
            if sh.held_for_ms == 0 {
                "—".to_string()
            } else {
                esc(&render::duration(sh.held_for_ms))
            },
            lease
        );
    }
    if snap.shards.is_empty() {
        s.push_str("<tr><td colspan=\"5\" class=\"muted\">No shard layout yet.</td></tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn lanes_html(snap: &RegionSnapshot) -> String {
    let bars: Vec<(String, u64, String)> = snap
        .lanes
        .iter()
        .map(|l| {
            (
                format!("priority {}", l.priority),
                l.tasks,
                "pending".to_string(),
            )
        })
        .collect();
    let mut s = render::bar_chart("Pending tasks by priority lane", &bars);
    s.push_str(
        "<table class=\"compact\"><thead><tr><th scope=\"col\">Priority</th><th scope=\"col\">Jobs</th>\
         <th scope=\"col\">Pending tasks</th></tr></thead><tbody>",
    );
    for l in &snap.lanes {
        let _ = write!(
            s,
            "<tr data-lane=\"{}\"><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            l.priority,
            l.priority,
            count(l.jobs),
            count(l.tasks)
        );
    }
    if snap.lanes.is_empty() {
        s.push_str("<tr><td colspan=\"3\" class=\"muted\">Queue empty.</td></tr>");
    }
    s.push_str("</tbody></table>");
    s
}

/// The jobs whose tasks find no node, each with its placer's reason, whole:
/// the reason is what an operator comes here to read.
fn waiting_html(snap: &RegionSnapshot) -> String {
    let mut s = String::from(
        "<table class=\"waiting\"><thead><tr><th scope=\"col\">Job</th><th scope=\"col\">Tenant</th>\
         <th scope=\"col\">Priority</th><th scope=\"col\">Pending tasks</th>\
         <th scope=\"col\">Why it waits</th></tr></thead><tbody>",
    );
    for j in snap.waiting.iter().take(MAX_WAITING_ROWS) {
        let _ = write!(
            s,
            "<tr data-job=\"{id}\"><th scope=\"row\">{id}</th><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{} / {}</td><td class=\"waiting-reason\">{}</td></tr>",
            esc(&j.tenant),
            j.priority,
            j.pending_tasks,
            j.task_count,
            esc(&j.reason),
            id = esc(&j.job_id),
        );
    }
    if snap.waiting.is_empty() {
        s.push_str("<tr><td colspan=\"5\" class=\"muted\">No job waits for a node.</td></tr>");
    }
    s.push_str("</tbody></table>");
    if snap.waiting.len() > MAX_WAITING_ROWS {
        let _ = write!(
            s,
            "<p class=\"muted\">Showing {MAX_WAITING_ROWS} of {} waiting jobs (highest priority first).</p>",
            count(snap.waiting.len() as u64)
        );
    }
    s
}

fn nodes_html(snap: &RegionSnapshot, controls: bool) -> String {
    let mut nodes: Vec<_> = snap.nodes.iter().collect();
    nodes.sort_by(|a, b| {
        (a.state == NodeState::Ready, &a.node_id).cmp(&(b.state == NodeState::Ready, &b.node_id))
    });
    let mut s = String::from(
        "<table class=\"nodes\"><thead><tr><th scope=\"col\">Node</th><th scope=\"col\">Zone</th>\
         <th scope=\"col\">Shard</th><th scope=\"col\">State</th><th scope=\"col\">CPU</th>\
         <th scope=\"col\">Memory</th><th scope=\"col\">Tasks</th><th scope=\"col\">Epoch</th>\
         <th scope=\"col\"><span class=\"sr-only\">Actions</span></th></tr></thead><tbody>",
    );
    for n in nodes.iter().take(MAX_NODE_ROWS) {
        let (cpu_text, mem_text) = render::amount_text(&n.usage, &n.capacity);
        let id = esc(&n.node_id);
        let actions = if controls {
            node_actions(n)
        } else {
            String::new()
        };
        let liveness = if n.state != n.liveness && n.liveness != NodeState::Ready {
            format!(" {}", badge(n.liveness.as_str()))
        } else {
            String::new()
        };
        let reason = if n.reason.is_empty() {
            String::new()
        } else {
            format!("<div class=\"reason\">{}</div>", esc(&n.reason))
        };
        let _ = write!(
            s,
            "<tr data-node=\"{id}\"><th scope=\"row\">{id}</th><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"state\">{}{liveness}{reason}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"actions\">{actions}</td></tr>",
            if n.zone.is_empty() {
                "—".into()
            } else {
                esc(&n.zone)
            },
            n.shard,
            badge(n.state.as_str()),
            meter(
                &format!("CPU of {}", n.node_id),
                n.usage.cpu_millis as f64,
                n.capacity.cpu_millis as f64,
                &cpu_text
            ),
            meter(
                &format!("Memory of {}", n.node_id),
                n.usage.memory_bytes as f64,
                n.capacity.memory_bytes as f64,
                &mem_text
            ),
            n.running_tasks,
            n.epoch,
        );
    }
    if snap.nodes.is_empty() {
        s.push_str("<tr><td colspan=\"9\" class=\"muted\">No node has registered yet.</td></tr>");
    }
    s.push_str("</tbody></table>");
    if snap.nodes.len() > MAX_NODE_ROWS {
        let _ = write!(
            s,
            "<p class=\"muted\">Showing {MAX_NODE_ROWS} of {} nodes (nodes needing attention first).</p>",
            count(snap.nodes.len() as u64)
        );
    }
    s
}

/// The buttons of a node's row: cordon or uncordon, and drain unless it is
/// draining already.
fn node_actions(n: &NodeView) -> String {
    let id = esc(&n.node_id);
    let url = |a: NodeAction| {
        format!(
            "{CONSOLE_PATH}/api/nodes/{}/{}",
            url_segment(&n.node_id),
            a.as_str()
        )
    };
    let mut actions = String::new();
    let mut button = |a: NodeAction, label: &str, confirm: String| {
        let _ = write!(
            actions,
            "<button type=\"button\" data-action=\"{}\" data-url=\"{}\" data-confirm=\"{}\" \
             aria-label=\"{label} node {id}\">{label}</button>",
            a.as_str(),
            esc(&url(a)),
            esc(&confirm),
        );
    };
    let cordoned = matches!(n.state, NodeState::Cordoned | NodeState::Draining);
    if cordoned {
        button(
            NodeAction::Uncordon,
            "Uncordon",
            format!(
                "Uncordon node {}? New tasks may be placed on it again.",
                n.node_id
            ),
        );
    } else {
        button(
            NodeAction::Cordon,
            "Cordon",
            format!(
                "Cordon node {}? No new tasks will be placed on it; running tasks keep running.",
                n.node_id
            ),
        );
    }
    if n.state != NodeState::Draining {
        button(
            NodeAction::Drain,
            "Drain",
            format!(
                "Drain node {}? It is cordoned and its running tasks are stopped and placed elsewhere.",
                n.node_id
            ),
        );
    }
    actions
}

fn events_html(snap: &RegionSnapshot) -> String {
    if snap.events.is_empty() {
        return "<p class=\"muted\">Nothing has happened since this replica started.</p>".into();
    }
    let mut s = String::from("<ol class=\"events\">");
    for e in &snap.events {
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            s,
            "<li class=\"ev-{}\"><time>{}</time><span class=\"kind\">{}</span><span>{}</span></li>",
            esc(&kind),
            render::clock(e.at_unix_ms),
            esc(e.kind.label()),
            esc(&e.message)
        );
    }
    s.push_str("</ol>");
    s
}

async fn stream<S: RegionConsoleSource>(
    State(source): State<Arc<S>>,
    Extension(who): Extension<SignedIn>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut interval = tokio::time::interval(REFRESH);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (source, BTreeMap::<&'static str, String>::new(), interval);
    let page = who.clone();
    let stream = futures::stream::unfold(state, move |(source, last, mut interval)| {
        let who = page.clone();
        async move {
            interval.tick().await;
            let (snap, problems) = collect(source.as_ref(), &who).await;
            let fresh = sections(&snap, &problems, &who);
            let event = changed_sections(&last, &fresh);
            Some((Ok(event), (source, fresh, interval)))
        }
    });
    Sse::new(crate::session::while_signed_in(who, stream)).keep_alive(KeepAlive::default())
}

/// An SSE `sections` event holding the sections that differ from `last`
/// (an empty one still tells the page the stream is alive).
pub(crate) fn changed_sections(
    last: &BTreeMap<&'static str, String>,
    fresh: &BTreeMap<&'static str, String>,
) -> Event {
    let changed: BTreeMap<&str, &String> = fresh
        .iter()
        .filter(|(k, v)| last.get(*k) != Some(*v))
        .map(|(k, v)| (*k, v))
        .collect();
    Event::default()
        .event("sections")
        .data(json!(changed).to_string())
}

async fn snapshot_json<S: RegionConsoleSource>(
    State(source): State<Arc<S>>,
    Extension(who): Extension<SignedIn>,
) -> Response {
    let (snap, _) = collect(source.as_ref(), &who).await;
    axum::Json(snap).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct ActionBody {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    evacuate: bool,
}

fn parse_body(body: &[u8]) -> Result<ActionBody, ConsoleError> {
    if body.is_empty() {
        return Ok(ActionBody::default());
    }
    serde_json::from_slice(body).map_err(|e| ConsoleError::Invalid(format!("body: {e}")))
}

async fn node_action<S: RegionConsoleSource>(
    State(source): State<Arc<S>>,
    Path((node, action)): Path<(String, String)>,
    Extension(who): Extension<SignedIn>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    crate::csrf::check(&headers)?;
    who.viewer().require(ConsoleRole::Operator)?;
    let action = NodeAction::parse(&action)
        .ok_or_else(|| ConsoleError::NotFound(format!("no node action named {action}")))?;
    let body = parse_body(&body)?;
    let outcome = source
        .node_action(&node, action, &body.reason, &who.actor)
        .await?;
    Ok(axum::Json(json!({ "ok": true, "message": outcome.message })).into_response())
}

async fn drain_region<S: RegionConsoleSource>(
    State(source): State<Arc<S>>,
    Extension(who): Extension<SignedIn>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ConsoleError> {
    crate::csrf::check(&headers)?;
    who.viewer().require(ConsoleRole::Operator)?;
    let body = parse_body(&body)?;
    let outcome = source
        .drain_region(&body.reason, body.evacuate, &who.actor)
        .await?;
    Ok(axum::Json(json!({ "ok": true, "message": outcome.message })).into_response())
}
