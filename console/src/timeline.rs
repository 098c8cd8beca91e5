//! The task timeline of the job detail page, as inline SVG.
//!
//! Owns the drawing: one lane for the job's state history, then one row per
//! task with its waiting (placed, not started) and running spans, coloured
//! by the task's state and labelled with the node it ran on. Must never
//! invent times: spans are drawn only from the times the tiers recorded.

use std::fmt::Write as _;

use crate::render::{clock, duration, esc};
use crate::view::{JobDetail, TaskRow};

const W: f64 = 1000.0;
const LABEL: f64 = 190.0;
const ROW: f64 = 22.0;
const AXIS: f64 = 22.0;

/// The timeline of `job`; `now` ends the spans of unfinished work.
pub fn timeline_svg(job: &JobDetail, now: u64, max_tasks: usize) -> String {
    let start = job.job.created_at_unix_ms;
    let terminal = matches!(job.job.state.as_str(), "succeeded" | "failed" | "cancelled");
    let mut end = job.updated_at_unix_ms.max(start);
    for h in &job.history {
        end = end.max(h.at_unix_ms);
    }
    for t in &job.tasks {
        end = end.max(t.finished_at_unix_ms).max(t.started_at_unix_ms);
    }
    if !terminal {
        end = end.max(now);
    }
    let scale = Scale {
        start,
        span: end.saturating_sub(start).max(1) as f64,
    };
    let tasks: Vec<_> = job.tasks.iter().take(max_tasks).collect();
    let h = AXIS + ROW * (tasks.len() + 1) as f64 + 8.0;
    let label = format!(
        "Timeline of job {}: {} tasks from {} to {} UTC ({}), state {}",
        job.job.job_id,
        job.tasks.len(),
        clock(start),
        clock(end),
        duration(end.saturating_sub(start)),
        job.job.state
    );
    let mut s = format!(
        "<svg class=\"chart timeline\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"{l}\"><title>{l}</title>",
        l = esc(&label)
    );
    axis(&mut s, &scale, h);
    job_lane(&mut s, job, end, &scale);
    for (row, t) in tasks.iter().enumerate() {
        task_row(&mut s, row, t, end, &scale);
    }
    s.push_str("</svg>");
    let mut out = s;
    if job.tasks.len() > tasks.len() {
        let _ = write!(
            out,
            "<p class=\"muted\">Showing the first {} of {} tasks.</p>",
            tasks.len(),
            job.tasks.len()
        );
    }
    out.push_str(
        "<p class=\"legend\"><span class=\"key wait\"></span>placed, not started \
         <span class=\"key s-running\"></span>running <span class=\"key s-succeeded\"></span>succeeded \
         <span class=\"key s-failed\"></span>failed / lost <span class=\"key s-killed\"></span>killed</p>",
    );
    out
}

/// Where times fall on the x axis: from `start` over `span` milliseconds.
struct Scale {
    start: u64,
    span: f64,
}

impl Scale {
    fn x(&self, t: u64) -> f64 {
        LABEL + (W - LABEL - 10.0) * (t.saturating_sub(self.start) as f64 / self.span).min(1.0)
    }
}

/// The grid lines and the time axis, in six steps from start to end.
fn axis(s: &mut String, scale: &Scale, h: f64) {
    let (start, span) = (scale.start, scale.span);
    for i in 0..=5 {
        let t = start + (span * f64::from(i) / 5.0) as u64;
        let gx = scale.x(t);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{gx:.1}\" x2=\"{gx:.1}\" y1=\"{AXIS}\" y2=\"{h}\"/>\
             <text class=\"axis\" x=\"{gx:.1}\" y=\"14\" text-anchor=\"{}\">+{}</text>",
            if i == 5 {
                "end"
            } else if i == 0 {
                "start"
            } else {
                "middle"
            },
            esc(&duration(t - start))
        );
    }
}

/// The job lane: one segment per recorded state.
fn job_lane(s: &mut String, job: &JobDetail, end: u64, scale: &Scale) {
    let y = AXIS + 2.0;
    let _ = write!(
        s,
        "<g class=\"job-row\"><text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">job</text>",
        LABEL - 8.0,
        y + 14.0
    );
    for (i, tr) in job.history.iter().enumerate() {
        let until = job.history.get(i + 1).map_or(end, |n| n.at_unix_ms);
        let (a, b) = (scale.x(tr.at_unix_ms), scale.x(until));
        let _ = write!(
            s,
            "<rect class=\"seg s-{st}\" x=\"{a:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"2\">\
             <title>{st} at {} {}</title></rect>",
            y + 2.0,
            (b - a).max(2.0),
            ROW - 8.0,
            clock(tr.at_unix_ms),
            esc(&tr.reason),
            st = esc(&tr.to),
        );
    }
    s.push_str("</g>");
}

/// One task's row: its label, its waiting span (placed, not started) and
/// its running span.
fn task_row(s: &mut String, row: usize, t: &TaskRow, end: u64, scale: &Scale) {
    let y = AXIS + ROW * (row + 1) as f64 + 2.0;
    let node = if t.node.is_empty() {
        "unplaced"
    } else {
        &t.node
    };
    let _ = write!(
        s,
        "<g class=\"task-row\" data-task=\"{}\"><text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">\
         task {} · {}</text>",
        t.index,
        LABEL - 8.0,
        y + 14.0,
        t.index,
        esc(node)
    );
    let stop = if t.finished_at_unix_ms > 0 {
        t.finished_at_unix_ms
    } else {
        end
    };
    if t.placed_at_unix_ms > 0 {
        let wait_end = if t.started_at_unix_ms > 0 {
            t.started_at_unix_ms
        } else {
            stop
        };
        let (a, b) = (scale.x(t.placed_at_unix_ms), scale.x(wait_end));
        let _ = write!(
            s,
            "<rect class=\"seg wait\" x=\"{a:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"2\">\
             <title>placed on {} at {}</title></rect>",
            y + 2.0,
            (b - a).max(2.0),
            ROW - 8.0,
            esc(node),
            clock(t.placed_at_unix_ms)
        );
    }
    if t.started_at_unix_ms > 0 {
        let (a, b) = (scale.x(t.started_at_unix_ms), scale.x(stop));
        let _ = write!(
            s,
            "<rect class=\"seg s-{st}\" x=\"{a:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"2\">\
             <title>{st} on {} in {}, {} to {}</title></rect>",
            y + 2.0,
            (b - a).max(2.0),
            ROW - 8.0,
            esc(node),
            esc(&t.region),
            clock(t.started_at_unix_ms),
            clock(t.finished_at_unix_ms),
            st = esc(&t.state),
        );
    }
    s.push_str("</g>");
}
