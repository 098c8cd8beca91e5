//! The live output section of the federation console's job page.
//!
//! Owns the section's markup: which task it follows (`?task=N`, task 0 by
//! default), links to the others, and the `<pre data-follow>` the console
//! script fills from the federation API's follow stream
//! (`/v1/jobs/{job}/tasks/{index}/logs/follow`, server-sent events served
//! by the same replica). The page itself never holds the output: it is
//! rendered empty and the script appends what the stream sends, keeping at
//! most a bounded amount of text. Must never read output itself.

use std::fmt::Write;

use crate::render::{esc, url_segment};
use crate::view::JobDetail;

/// Tasks linked from the section; a larger job's others are reached by
/// editing `?task=` (the page says so).
const LINKED_TASKS: u32 = 20;

/// The section following task `index` of `job`.
pub(crate) fn output_section(job: &JobDetail, index: u32) -> String {
    let job_id = &job.job.job_id;
    let count = job.job.task_count;
    let mut picker = String::new();
    if count > 1 {
        picker.push_str("<p class=\"output-tasks\">Task: ");
        for i in 0..count.min(LINKED_TASKS) {
            if i == index {
                let _ = write!(picker, "<strong aria-current=\"true\">{i}</strong> ");
            } else {
                let _ = write!(picker, "<a href=\"?task={i}#output-h\">{i}</a> ");
            }
        }
        if count > LINKED_TASKS {
            let _ = write!(
                picker,
                "… ({count} tasks: add <code>?task=N</code> to this page's address)"
            );
        }
        picker.push_str("</p>");
    }
    format!(
        "<section aria-labelledby=\"output-h\"><h2 id=\"output-h\">Output of task {index}</h2>{picker}\
         <p id=\"output-state\" class=\"sub\" role=\"status\">Connecting…</p>\
         <pre id=\"task-output\" class=\"log\" tabindex=\"0\" aria-label=\"Output of task {index}\" \
         data-follow=\"/v1/jobs/{}/tasks/{index}/logs/follow\"></pre></section>",
        esc(&url_segment(job_id))
    )
}
