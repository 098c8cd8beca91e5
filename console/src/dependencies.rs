//! What keeps a job at the global tier, in the federation console: its
//! dependencies (each named job linked, its condition, whether it is met,
//! pending or can never be met), its hold, the jobs waiting on it, and the
//! marks that set held and dependency-waiting jobs apart in job lists.
//!
//! Owns the rendering of those sections only. Must never judge a
//! dependency itself: the status and reason of each come from the source,
//! which has them from the global tier's own judgement.

use std::fmt::Write as _;

use crate::CONSOLE_PATH;
use crate::render::{badge, esc, url_segment};
use crate::view::{FederationSnapshot, JobDetail, JobRow};

/// A link to a job's page, its id as the text.
pub fn job_link(job_id: &str) -> String {
    format!(
        "<a href=\"{CONSOLE_PATH}/jobs/{}\">{}</a>",
        url_segment(job_id),
        esc(job_id)
    )
}

/// The mark beside a listed job's state when a hold or a dependency keeps
/// it at the global tier; empty otherwise.
pub fn gate_mark(job: &JobRow) -> String {
    if job.held {
        "<span class=\"gate held\" data-gate=\"held\">held</span>".into()
    } else if job.waits_on_dependencies() {
        format!(
            "<span class=\"gate deps\" data-gate=\"dependencies\" title=\"waits for {n} job{s}\">\
             waits on {n} job{s}</span>",
            n = job.dependencies,
            s = if job.dependencies == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    }
}

/// The job page's section: the hold, the dependencies, the dependents.
pub fn job_dependencies_html(job: &JobDetail) -> String {
    let mut s = String::new();
    if job.job.held {
        let _ = write!(
            s,
            "<p id=\"job-held\" class=\"gate-line\"><span class=\"gate held\" data-gate=\"held\">held</span> \
             Not routed until released (<code>meridian job release {}</code>){}</p>",
            esc(&job.job.job_id),
            if job.hold_reason.is_empty() {
                String::new()
            } else {
                format!(
                    ": <span class=\"hold-reason\">{}</span>",
                    esc(&job.hold_reason)
                )
            }
        );
    }
    if job.dependencies.is_empty() {
        s.push_str(
            "<p class=\"muted\" id=\"no-dependencies\">This job waits for no other job.</p>",
        );
    } else {
        let met = job
            .dependencies
            .iter()
            .filter(|d| d.status.as_str() == "met")
            .count();
        let _ = write!(
            s,
            "<p class=\"muted\">Waits for all of these ({met} of {} met):</p>\
             <table class=\"compact\" id=\"dependency-table\"><thead><tr><th scope=\"col\">Job</th>\
             <th scope=\"col\">Condition</th><th scope=\"col\">Its state</th><th scope=\"col\">Met</th>\
             <th scope=\"col\">Judgement</th></tr></thead><tbody>",
            job.dependencies.len()
        );
        for d in &job.dependencies {
            let status = d.status.as_str();
            let _ = write!(
                s,
                "<tr data-dependency=\"{id}\" data-status=\"{status}\"><th scope=\"row\">{link}</th>\
                 <td><code>{cond}</code></td><td class=\"state\">{state}</td>\
                 <td><span class=\"dep dep-{status}\">{label}</span></td><td class=\"reason\">{reason}</td></tr>",
                id = esc(&d.job_id),
                link = job_link(&d.job_id),
                cond = esc(&d.condition),
                state = badge(&d.job_state),
                label = match status {
                    "met" => "met",
                    "never" => "can never be met",
                    _ => "pending",
                },
                reason = esc(&d.reason),
            );
        }
        s.push_str("</tbody></table>");
    }
    if !job.dependents.is_empty() {
        let links: Vec<String> = job
            .dependents
            .iter()
            .map(|id| format!("<li data-dependent=\"{}\">{}</li>", esc(id), job_link(id)))
            .collect();
        let _ = write!(
            s,
            "<p class=\"muted\">Jobs waiting on this one{}:</p><ul class=\"dependents\">{}</ul>",
            if job.dependents_truncated {
                " (first ones)"
            } else {
                ""
            },
            links.concat()
        );
    }
    s
}

/// The overview's list of jobs a hold or a dependency keeps at the global
/// tier.
pub fn gated_html(snap: &FederationSnapshot) -> String {
    if snap.gated.is_empty() {
        return "<p class=\"muted\">No job is held or waiting for another job.</p>".into();
    }
    let mut s = String::from(
        "<table class=\"compact\"><thead><tr><th scope=\"col\">Job</th><th scope=\"col\">Name</th>\
         <th scope=\"col\">Tenant</th><th scope=\"col\">Kept by</th><th scope=\"col\">Why</th></tr></thead><tbody>",
    );
    for j in &snap.gated {
        let _ = write!(
            s,
            "<tr data-job=\"{id}\"><th scope=\"row\">{link}</th><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"reason\">{}</td></tr>",
            esc(&j.name),
            esc(&j.tenant),
            gate_mark(j),
            esc(&j.waiting_reason),
            id = esc(&j.job_id),
            link = job_link(&j.job_id),
        );
    }
    s.push_str("</tbody></table>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{DependencyRow, DependencyStatus};

    fn row(state: &str, held: bool, dependencies: u32) -> JobRow {
        JobRow {
            job_id: "j9".into(),
            state: state.into(),
            held,
            dependencies,
            // As the global tier sets it for a job waiting on them.
            blocked: state == "pending" && !held && dependencies > 0,
            ..JobRow::default()
        }
    }

    #[test]
    fn a_held_job_and_a_job_waiting_on_dependencies_are_marked_apart_in_lists() {
        assert!(gate_mark(&row("pending", true, 2)).contains("data-gate=\"held\""));
        assert!(gate_mark(&row("pending", false, 2)).contains("waits on 2 jobs"));
        assert!(gate_mark(&row("pending", false, 1)).contains("waits on 1 job<"));
        assert_eq!(gate_mark(&row("running", false, 2)), "");
        assert_eq!(gate_mark(&row("pending", false, 0)), "");
    }

    #[test]
    fn each_dependency_links_its_job_and_says_whether_it_is_met() {
        let job = JobDetail {
            job: row("pending", false, 2),
            dependencies: vec![
                DependencyRow {
                    job_id: "j1".into(),
                    condition: "after_ok".into(),
                    job_state: "running".into(),
                    status: DependencyStatus::Pending,
                    reason: "waits for job j1 to succeed".into(),
                },
                DependencyRow {
                    job_id: "j<2>".into(),
                    condition: "after_any".into(),
                    job_state: "failed".into(),
                    status: DependencyStatus::Met,
                    reason: String::new(),
                },
            ],
            dependents: vec!["j12".into()],
            ..JobDetail::default()
        };
        let html = job_dependencies_html(&job);
        assert!(html.contains("(1 of 2 met)"), "{html}");
        assert!(html.contains("href=\"/console/jobs/j1\""), "{html}");
        assert!(
            html.contains("href=\"/console/jobs/j%3C2%3E\">j&lt;2&gt;</a>"),
            "{html}"
        );
        assert!(html.contains("data-status=\"pending\""), "{html}");
        assert!(html.contains("<li data-dependent=\"j12\">"), "{html}");
        assert!(!html.contains("job-held"), "{html}");
    }
}
