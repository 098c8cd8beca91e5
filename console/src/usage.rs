//! The federation console's usage page (`/console/usage`): who used how
//! much over a range ending now, per tenant and region (CPU, memory and GPU
//! seconds allocated, tasks run, wait percentiles), with a chart per hour
//! or day, live, and its JSON (`/console/api/usage`).
//!
//! Owns the page's query (`range`, `tenant`, `region`, `metric`, every bad
//! value refused naming its parameter) and its rendering. Must never count
//! anything itself: the figures are the source's, that is GetUsage's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use serde::Deserialize;

use crate::error::ConsoleError;
use crate::region::changed_sections;
use crate::render::{self, count, esc, num};
use crate::session::SignedIn;
use crate::source::FederationConsoleSource;
use crate::usage_chart::{Metric, usage_chart};
use crate::view::{UsageQuery, UsageRow, UsageView};
use crate::{CONSOLE_PATH, now_ms};

const REFRESH: Duration = Duration::from_secs(2);

/// The ranges offered, as `(parameter, label, length in ms)`.
const RANGES: [(&str, &str, u64); 5] = [
    ("1h", "last hour", 3_600_000),
    ("6h", "last 6 hours", 6 * 3_600_000),
    ("24h", "last 24 hours", 24 * 3_600_000),
    ("7d", "last 7 days", 7 * 24 * 3_600_000),
    ("30d", "last 30 days", 30 * 24 * 3_600_000),
];

/// Longest tenant or region name accepted (the API's own limit is 64).
const MAX_NAME: usize = 128;

type Sections = BTreeMap<&'static str, String>;

/// The usage routes, for [`crate::federation_router`].
pub fn routes<S: FederationConsoleSource>() -> Router<Arc<S>> {
    Router::new()
        .route("/console/usage", get(page::<S>))
        .route("/console/usage/stream", get(stream::<S>))
        .route("/console/api/usage", get(json::<S>))
}

/// The query string as sent.
#[derive(Debug, Clone, Default, Deserialize)]
struct Params {
    #[serde(default)]
    range: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    metric: String,
}

/// A checked query.
#[derive(Debug, Clone)]
struct Asked {
    range: &'static str,
    range_ms: u64,
    tenant: String,
    region: String,
    metric: Metric,
}

impl Asked {
    fn read(p: &Params) -> Result<Asked, ConsoleError> {
        let range = if p.range.is_empty() { "24h" } else { &p.range };
        let (range, _, range_ms) = RANGES
            .iter()
            .find(|(name, _, _)| *name == range)
            .copied()
            .ok_or_else(|| {
                ConsoleError::Invalid(format!(
                    "range: {range:?} is not one of 1h, 6h, 24h, 7d, 30d"
                ))
            })?;
        let metric = Metric::parse(&p.metric).ok_or_else(|| {
            ConsoleError::Invalid(format!(
                "metric: {:?} is not one of cpu, memory, gpu, tasks",
                p.metric
            ))
        })?;
        for (field, value) in [("tenant", &p.tenant), ("region", &p.region)] {
            if value.len() > MAX_NAME {
                return Err(ConsoleError::Invalid(format!(
                    "{field}: longer than {MAX_NAME} bytes"
                )));
            }
        }
        Ok(Asked {
            range,
            range_ms,
            tenant: p.tenant.trim().to_string(),
            region: p.region.trim().to_string(),
            metric,
        })
    }

    fn query(&self, now: u64) -> UsageQuery {
        UsageQuery {
            tenant: self.tenant.clone(),
            region: self.region.clone(),
            since_unix_ms: now.saturating_sub(self.range_ms),
            until_unix_ms: 0,
        }
    }

    fn query_string(&self) -> String {
        let mut q = format!("range={}&metric={}", self.range, self.metric.as_str());
        for (k, v) in [("tenant", &self.tenant), ("region", &self.region)] {
            if !v.is_empty() {
                let _ = write!(q, "&{k}={}", render::url_segment(v));
            }
        }
        q
    }
}

fn form_html(a: &Asked) -> String {
    let mut s = format!(
        "<form class=\"usage-form\" action=\"{CONSOLE_PATH}/usage\" method=\"get\" aria-label=\"Usage range\">\
         <label for=\"usage-range-pick\">Range</label><select id=\"usage-range-pick\" name=\"range\">"
    );
    for (name, label, _) in RANGES {
        let _ = write!(
            s,
            "<option value=\"{name}\"{}>{label}</option>",
            if name == a.range { " selected" } else { "" }
        );
    }
    s.push_str("</select><label for=\"usage-metric\">Chart</label><select id=\"usage-metric\" name=\"metric\">");
    for m in [Metric::Cpu, Metric::Memory, Metric::Gpu, Metric::Tasks] {
        let _ = write!(
            s,
            "<option value=\"{}\"{}>{}</option>",
            m.as_str(),
            if m == a.metric { " selected" } else { "" },
            m.title()
        );
    }
    let _ = write!(
        s,
        "</select><label for=\"usage-tenant\">Tenant</label><input id=\"usage-tenant\" name=\"tenant\" \
         value=\"{}\" placeholder=\"every tenant\"><label for=\"usage-region\">Region</label>\
         <input id=\"usage-region\" name=\"region\" value=\"{}\" placeholder=\"every region\">\
         <button type=\"submit\">Show</button></form>",
        esc(&a.tenant),
        esc(&a.region)
    );
    s
}

fn cards_html(v: &UsageView) -> String {
    let t = &v.total;
    let card = |label: &str, value: String, note: String| {
        format!(
            "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"note\">{}</div></div>",
            esc(label),
            esc(&value),
            esc(&note)
        )
    };
    [
        card("CPU", num(t.cpu_seconds), "core-seconds allocated".into()),
        card(
            "Memory",
            num(t.memory_gib_seconds),
            "GiB-seconds allocated".into(),
        ),
        card("GPU", num(t.gpu_seconds), "GPU-seconds allocated".into()),
        card(
            "Tasks run",
            count(t.tasks_run),
            format!("{} of run time", render::duration(t.task_run_ms)),
        ),
        card(
            "Wait p50 / p90 / p99",
            format!(
                "{} / {} / {}",
                render::duration(t.wait_p50_ms),
                render::duration(t.wait_p90_ms),
                render::duration(t.wait_p99_ms)
            ),
            format!("submit to running, {} jobs", count(t.wait_jobs)),
        ),
    ]
    .concat()
}

fn row_html(s: &mut String, r: &UsageRow, head: &str) {
    let _ = write!(
        s,
        "<tr data-tenant=\"{t}\" data-region=\"{g}\" data-cpu-seconds=\"{}\" data-memory-gib-seconds=\"{}\" \
         data-gpu-seconds=\"{}\" data-tasks-run=\"{}\" data-wait-p50-ms=\"{}\" data-wait-p99-ms=\"{}\">\
         <th scope=\"row\">{head}</th><td>{g}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        r.cpu_seconds,
        r.memory_gib_seconds,
        r.gpu_seconds,
        r.tasks_run,
        r.wait_p50_ms,
        r.wait_p99_ms,
        num(r.cpu_seconds),
        num(r.memory_gib_seconds),
        num(r.gpu_seconds),
        count(r.tasks_run),
        render::duration(r.task_run_ms),
        count(r.wait_jobs),
        render::duration(r.wait_p50_ms),
        render::duration(r.wait_p90_ms),
        render::duration(r.wait_p99_ms),
        render::duration(r.wait_max_ms),
        t = esc(&r.tenant),
        g = esc(&r.region),
    );
}

fn table_html(v: &UsageView) -> String {
    if v.records.is_empty() {
        return "<p class=\"muted\" id=\"no-usage\">No task ran in this range.</p>".into();
    }
    let mut s = String::from(
        "<table class=\"compact\" id=\"usage-table\"><thead><tr><th scope=\"col\">Tenant</th>\
         <th scope=\"col\">Region</th><th scope=\"col\" class=\"num\">CPU core-s</th>\
         <th scope=\"col\" class=\"num\">Memory GiB-s</th><th scope=\"col\" class=\"num\">GPU-s</th>\
         <th scope=\"col\" class=\"num\">Tasks run</th><th scope=\"col\" class=\"num\">Run time</th>\
         <th scope=\"col\" class=\"num\">Jobs waited</th><th scope=\"col\" class=\"num\">Wait p50</th>\
         <th scope=\"col\" class=\"num\">p90</th><th scope=\"col\" class=\"num\">p99</th>\
         <th scope=\"col\" class=\"num\">max</th></tr></thead><tbody>",
    );
    for r in &v.records {
        row_html(&mut s, r, &esc(&r.tenant));
    }
    s.push_str("</tbody><tfoot>");
    row_html(&mut s, &v.total, "Total");
    s.push_str("</tfoot></table>");
    s
}

async fn sections<S: FederationConsoleSource>(source: &S, a: &Asked) -> Sections {
    let mut out = Sections::new();
    match source.usage(&a.query(now_ms())).await {
        Ok(v) => {
            out.insert(
                "usage-range",
                format!(
                    "<time data-since=\"{}\" data-until=\"{}\">{} to {} UTC</time>",
                    v.since_unix_ms,
                    v.until_unix_ms,
                    esc(&render::datetime(v.since_unix_ms)),
                    esc(&render::datetime(v.until_unix_ms))
                ),
            );
            out.insert("problems", String::new());
            out.insert("usage-cards", cards_html(&v));
            out.insert("usage-chart", usage_chart(&v, a.metric));
            out.insert("usage-records", table_html(&v));
        }
        Err(e) => {
            out.insert(
                "problems",
                format!(
                    "<div class=\"problem\" role=\"alert\"><strong>Usage could not be read:</strong> {}</div>",
                    esc(&e.to_string())
                ),
            );
            for id in ["usage-range", "usage-cards", "usage-chart", "usage-records"] {
                out.insert(id, String::new());
            }
        }
    }
    out
}

async fn page<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Query(p): Query<Params>,
    Extension(who): Extension<SignedIn>,
) -> Response {
    let header = format!(
        "<div><p class=\"crumbs\"><a href=\"{CONSOLE_PATH}\">Federation</a> / usage</p><h1>Usage</h1>\
         <p class=\"sub\">Allocated resources × run time, per tenant and region</p></div>{}",
        render::federation_nav("Usage")
    );
    let a = match Asked::read(&p) {
        Ok(a) => a,
        Err(e) => {
            let body = format!(
                "<div class=\"problem\" role=\"alert\">{}</div><p><a href=\"{CONSOLE_PATH}/usage\">Usage of the last 24 hours</a></p>",
                esc(&e.to_string())
            );
            return (
                e.status(),
                Html(render::page("Usage · Meridian", &header, "", &body, &who)),
            )
                .into_response();
        }
    };
    let sec = sections(source.as_ref(), &a).await;
    let body = format!(
        "<section id=\"problems\" aria-label=\"Problems\">{}</section>\
         <section aria-label=\"What to show\">{}<p class=\"muted\">Range: <span id=\"usage-range\">{}</span>; \
         hours are whole hours.</p></section>\
         <section id=\"usage-cards\" class=\"cards\" aria-label=\"Totals\">{}</section>\
         <section aria-labelledby=\"usage-chart-h\"><h2 id=\"usage-chart-h\">Over time</h2><div id=\"usage-chart\">{}</div></section>\
         <section aria-labelledby=\"usage-records-h\"><h2 id=\"usage-records-h\">Per tenant and region</h2>\
         <div id=\"usage-records\">{}</div></section>",
        sec["problems"],
        form_html(&a),
        sec["usage-range"],
        sec["usage-cards"],
        sec["usage-chart"],
        sec["usage-records"],
    );
    Html(render::page(
        "Usage · Meridian",
        &header,
        &format!("{CONSOLE_PATH}/usage/stream?{}", a.query_string()),
        &body,
        &who,
    ))
    .into_response()
}

async fn stream<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Query(p): Query<Params>,
    Extension(who): Extension<SignedIn>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ConsoleError> {
    let a = Asked::read(&p)?;
    // The first refresh at once, then every REFRESH, or four times as long
    // as a read took when that is longer: a month of many tenants' hours is
    // not read back to back.
    let stream = futures::stream::unfold(
        (source, a, Sections::new(), Duration::ZERO),
        |(source, a, last, wait)| async move {
            tokio::time::sleep(wait).await;
            let started = std::time::Instant::now();
            let fresh = sections(source.as_ref(), &a).await;
            let next = REFRESH.max(started.elapsed() * 4);
            let event = changed_sections(&last, &fresh);
            Some((Ok(event), (source, a, fresh, next)))
        },
    );
    Ok(Sse::new(crate::session::while_signed_in(who, stream)).keep_alive(KeepAlive::default()))
}

async fn json<S: FederationConsoleSource>(
    State(source): State<Arc<S>>,
    Query(p): Query<Params>,
) -> Result<Response, ConsoleError> {
    let a = Asked::read(&p)?;
    Ok(axum::Json(source.usage(&a.query(now_ms())).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_range_or_metric_is_refused_naming_the_parameter() {
        let bad = |range: &str, metric: &str| {
            Asked::read(&Params {
                range: range.into(),
                metric: metric.into(),
                ..Params::default()
            })
            .map(|a| a.range)
            .map_err(|e| e.to_string())
        };
        assert_eq!(bad("", ""), Ok("24h"));
        assert_eq!(bad("7d", "gpu"), Ok("7d"));
        assert!(bad("8d", "").unwrap_err().contains("range: \"8d\""));
        assert!(bad("", "disk").unwrap_err().contains("metric: \"disk\""));
        let long = Asked::read(&Params {
            tenant: "t".repeat(200),
            ..Params::default()
        });
        assert!(long.unwrap_err().to_string().contains("tenant: longer"));
    }
}
