//! A job's tasks on its page: the counts by state, the parallelism cap, and
//! one page of the task table at a time, with state filters and page links.
//!
//! Owns the `state`, `page` and `back` query parameters of the job page and
//! the "Task counts" and "Tasks" sections. The rows come from the source's
//! `job_tasks` (the region's `ListJobTasks`, answered from memory), so a
//! page costs its 100 rows whatever the job's size. Must never list a job's
//! tasks whole: a job of 100,000 tasks is drawn as counts and one page.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::CONSOLE_PATH;
use crate::error::ConsoleError;
use crate::render::{self, badge, count, esc, url_segment};
use crate::view::{JobDetail, TaskPage, TaskPageQuery, TaskRow};

/// Tasks on one page of the table.
pub(crate) const PAGE_SIZE: u32 = 100;
/// Earlier pages remembered for "Previous" (the oldest are dropped; "First
/// page" always works).
const BACK_KEPT: usize = 20;
/// Task states in lifecycle order, as the filters and counts name them.
pub(crate) const TASK_STATES: [&str; 8] = [
    "pending",
    "placed",
    "starting",
    "running",
    "succeeded",
    "failed",
    "killed",
    "lost",
];

/// The job page's task-table parameters, as the URL carries them.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct TasksParams {
    /// One task state, or several separated by commas.
    state: Option<String>,
    /// Page token of the page shown; absent for the first page.
    page: Option<String>,
    /// Tokens of the pages before it, oldest first, comma-separated (the
    /// first page's token is empty).
    back: Option<String>,
}

/// The task table's position: filter, page token and the pages before it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TasksView {
    pub states: Vec<String>,
    pub page: String,
    pub back: Vec<String>,
}

impl TasksParams {
    /// Checks the parameters; `Invalid` names the bad one.
    pub(crate) fn parse(&self) -> Result<TasksView, ConsoleError> {
        let mut states = Vec::new();
        for s in self.state.iter().flat_map(|s| s.split(',')) {
            let s = s.trim().to_ascii_lowercase();
            if s.is_empty() || states.contains(&s) {
                continue;
            }
            if !TASK_STATES.contains(&s.as_str()) {
                return Err(ConsoleError::Invalid(format!(
                    "state: unknown task state {s:?} (one of {})",
                    TASK_STATES.join(", ")
                )));
            }
            states.push(s);
        }
        let back = match &self.back {
            None => Vec::new(),
            Some(b) => b.split(',').map(str::to_string).collect(),
        };
        Ok(TasksView {
            states,
            page: self.page.clone().unwrap_or_default(),
            back,
        })
    }
}

impl TasksView {
    /// The source query of the page shown.
    pub(crate) fn query(&self) -> TaskPageQuery {
        TaskPageQuery {
            states: self.states.clone(),
            page_token: self.page.clone(),
            page_size: PAGE_SIZE,
        }
    }

    /// `?…` of this position (empty for the first page of every state),
    /// for the page's links and its live stream.
    pub(crate) fn query_string(&self) -> String {
        let mut parts = Vec::new();
        if !self.states.is_empty() {
            parts.push(format!("state={}", url_segment(&self.states.join(","))));
        }
        if !self.page.is_empty() {
            parts.push(format!("page={}", url_segment(&self.page)));
        }
        if !self.back.is_empty() {
            parts.push(format!("back={}", url_segment(&self.back.join(","))));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }

    fn with_states(states: Vec<String>) -> TasksView {
        TasksView {
            states,
            ..TasksView::default()
        }
    }

    fn next(&self, token: &str) -> TasksView {
        let mut back = self.back.clone();
        back.push(self.page.clone());
        if back.len() > BACK_KEPT {
            back.drain(..back.len() - BACK_KEPT);
        }
        TasksView {
            states: self.states.clone(),
            page: token.to_string(),
            back,
        }
    }

    fn previous(&self) -> Option<TasksView> {
        let mut back = self.back.clone();
        let page = back.pop()?;
        Some(TasksView {
            states: self.states.clone(),
            page,
            back,
        })
    }
}

/// The count of `state` in the job's counts (0 when absent).
fn count_of(job: &JobDetail, state: &str) -> u32 {
    job.task_counts
        .iter()
        .find(|(s, _)| s == state)
        .map_or(0, |(_, n)| *n)
}

/// "Task counts": a stacked bar and a table of the tasks by state, and the
/// parallelism cap when set.
pub(crate) fn counts_html(job: &JobDetail) -> String {
    let total: u32 = job.task_counts.iter().map(|(_, n)| n).sum();
    let mut s = format!(
        "<p id=\"task-total\">{} tasks{}</p>",
        count(total.into()),
        if job.parallelism > 0 {
            format!(
                "; <span id=\"task-parallelism\">at most {} at once</span>",
                count(job.parallelism.into())
            )
        } else {
            String::new()
        }
    );
    s.push_str(&counts_bar(job, total));
    s.push_str(
        "<table class=\"compact\" id=\"task-counts-table\"><thead><tr><th scope=\"col\">State</th>\
         <th scope=\"col\">Tasks</th></tr></thead><tbody>",
    );
    for state in TASK_STATES {
        let n = count_of(job, state);
        let _ = write!(
            s,
            "<tr data-task-state=\"{state}\"><th scope=\"row\">{}</th><td class=\"num\">{}</td></tr>",
            badge(state),
            count(n.into())
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// A bar 100 units wide, one segment per state with tasks.
fn counts_bar(job: &JobDetail, total: u32) -> String {
    if total == 0 {
        return String::new();
    }
    let mut s = String::from(
        "<svg class=\"task-bar\" viewBox=\"0 0 100 4\" preserveAspectRatio=\"none\" width=\"100%\" height=\"14\" role=\"img\" aria-label=\"Tasks by state\">",
    );
    let mut x = 0.0f64;
    for state in TASK_STATES {
        let n = count_of(job, state);
        if n == 0 {
            continue;
        }
        let w = f64::from(n) / f64::from(total) * 100.0;
        let _ = write!(
            s,
            "<rect class=\"s-{state}\" x=\"{x:.3}\" y=\"0\" width=\"{w:.3}\" height=\"4\"><title>{state}: {n}</title></rect>"
        );
        x += w;
    }
    s.push_str("</svg>");
    s
}

/// "Tasks": the state filters, one page of rows (or why there are none) and
/// the page links. `page` is the source's answer for `view`.
pub(crate) fn tasks_html(
    job: &JobDetail,
    view: &TasksView,
    page: &Result<TaskPage, ConsoleError>,
) -> String {
    let mut s = filters_html(job, view);
    match page {
        Ok(p) => {
            s.push_str(&table_html(&p.tasks));
            s.push_str(&pager_html(job, view, &p.next_page_token));
        }
        // A job of at most 256 tasks comes with its rows; its region's
        // listing is only missing once the region forgot it.
        Err(_) if !job.tasks.is_empty() => {
            let rows: Vec<TaskRow> = job
                .tasks
                .iter()
                .filter(|t| view.states.is_empty() || view.states.contains(&t.state))
                .cloned()
                .collect();
            s.push_str(&table_html(&rows));
        }
        Err(e) => s.push_str(&unavailable_html(e)),
    }
    s
}

fn unavailable_html(e: &ConsoleError) -> String {
    let why = match e {
        ConsoleError::NotFound(_) => {
            "no region holds the job now (not routed yet, or ended and forgotten by its region)"
                .to_string()
        }
        other => other.to_string(),
    };
    format!(
        "<p class=\"empty\" id=\"tasks-unavailable\">Task rows are not available: {}. \
         The counts above are the global tier's.</p>",
        esc(&why)
    )
}

fn job_url(job: &JobDetail, view: &TasksView) -> String {
    format!(
        "{CONSOLE_PATH}/jobs/{}{}",
        url_segment(&job.job.job_id),
        view.query_string()
    )
}

fn filters_html(job: &JobDetail, view: &TasksView) -> String {
    let mut s = String::from("<nav class=\"task-filters\" aria-label=\"Task states\">");
    let link = |s: &mut String, label: &str, target: TasksView, current: bool| {
        if current {
            let _ = write!(s, "<strong aria-current=\"page\">{}</strong> ", esc(label));
        } else {
            let _ = write!(
                s,
                "<a href=\"{}\">{}</a> ",
                esc(&job_url(job, &target)),
                esc(label)
            );
        }
    };
    link(&mut s, "all", TasksView::default(), view.states.is_empty());
    for state in TASK_STATES {
        let label = format!("{state} ({})", count(count_of(job, state).into()));
        let current = view.states.len() == 1 && view.states[0] == state;
        link(
            &mut s,
            &label,
            TasksView::with_states(vec![state.to_string()]),
            current,
        );
    }
    s.push_str("</nav>");
    s
}

fn pager_html(job: &JobDetail, view: &TasksView, next_token: &str) -> String {
    let mut s = String::from("<nav class=\"pager\" aria-label=\"Task pages\">");
    if !view.page.is_empty() {
        let first = TasksView::with_states(view.states.clone());
        let _ = write!(
            s,
            "<a id=\"tasks-first\" href=\"{}\">First page</a> ",
            esc(&job_url(job, &first))
        );
    }
    if let Some(prev) = view.previous() {
        let _ = write!(
            s,
            "<a id=\"tasks-previous\" href=\"{}\">Previous page</a> ",
            esc(&job_url(job, &prev))
        );
    }
    if !next_token.is_empty() {
        let _ = write!(
            s,
            "<a id=\"tasks-next\" href=\"{}\">Next page</a>",
            esc(&job_url(job, &view.next(next_token)))
        );
    }
    s.push_str("</nav>");
    s
}

/// The task rows, one per task, in the order given.
fn table_html(tasks: &[TaskRow]) -> String {
    if tasks.is_empty() {
        return "<p class=\"empty\">No tasks in the states chosen.</p>".into();
    }
    let mut s = String::from(
        "<table><thead><tr><th scope=\"col\">Task</th><th scope=\"col\">State</th><th scope=\"col\">Region</th>\
         <th scope=\"col\">Node</th><th scope=\"col\">Attempt</th><th scope=\"col\">Placed</th>\
         <th scope=\"col\">Started</th><th scope=\"col\">Finished</th><th scope=\"col\">Exit</th>\
         <th scope=\"col\">Message</th></tr></thead><tbody>",
    );
    for t in tasks {
        row_html(&mut s, t);
    }
    s.push_str("</tbody></table>");
    s
}

fn dash_or(s: &str) -> String {
    if s.is_empty() { "—".into() } else { esc(s) }
}

fn row_html(s: &mut String, t: &TaskRow) {
    let _ = write!(
        s,
        "<tr data-task=\"{}\"><th scope=\"row\">{}</th><td class=\"state\">{}</td><td class=\"region\">{}</td>\
         <td class=\"node\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
        t.index,
        t.index,
        badge(&t.state),
        dash_or(&t.region),
        dash_or(&t.node),
        t.attempt,
        render::clock(t.placed_at_unix_ms),
        render::clock(t.started_at_unix_ms),
        render::clock(t.finished_at_unix_ms),
        t.exit_code.map_or("—".into(), |c| c.to_string()),
        esc(&t.message),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_state_is_refused_naming_the_parameter() {
        let p = TasksParams {
            state: Some("running,sleeping".into()),
            ..TasksParams::default()
        };
        let e = p.parse().expect_err("sleeping is no task state");
        assert!(e.to_string().contains("state: unknown task state"), "{e}");
    }

    #[test]
    fn next_then_previous_comes_back_to_the_same_page_and_keeps_the_filter() {
        let first = TasksView::with_states(vec!["running".into()]);
        let second = first.next("i100");
        let third = second.next("i200");
        assert_eq!(third.previous(), Some(second.clone()));
        assert_eq!(second.previous(), Some(first.clone()));
        assert_eq!(first.previous(), None);
        let parsed = TasksParams {
            state: Some("running".into()),
            page: Some("i200".into()),
            back: Some(",i100".into()),
        }
        .parse()
        .expect("valid");
        assert_eq!(parsed, third);
    }

    #[test]
    fn only_the_latest_pages_are_remembered_for_previous() {
        let mut v = TasksView::default();
        for i in 1..=(BACK_KEPT as u32 + 5) {
            v = v.next(&format!("i{}", i * 100));
        }
        assert_eq!(v.back.len(), BACK_KEPT);
    }
}
