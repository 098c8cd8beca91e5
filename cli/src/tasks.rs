//! `meridian job tasks JOB`: one page of a job's tasks, for a job too large
//! for `job get` to list (more than 256 tasks: an array).
//!
//! Owns the flags of the listing (states, page size, page token) and its
//! table; the tasks come from `ListJobTasks`, which the global tier forwards
//! to the job's region. Must never fetch more than the page asked for.

use std::io::Write;

use meridian_proto::v1::{ListJobTasksRequest, ListJobTasksResponse, TaskState};

use crate::client::Client;
use crate::error::Result;
use crate::render::{self, Output};

/// Flags of `meridian job tasks`.
#[derive(Debug, Clone, clap::Args)]
pub struct TasksArgs {
    /// The job id.
    pub job_id: String,
    /// Only tasks in these states (`pending`, `placed`, `starting`,
    /// `running`, `succeeded`, `failed`, `killed`, `lost`; repeatable or
    /// comma-separated).
    #[arg(long = "state", value_delimiter = ',', value_parser = parse_task_state)]
    pub states: Vec<TaskState>,
    /// Tasks per page, 1 to 1000 (default 100).
    #[arg(long, default_value_t = 0)]
    pub page_size: u32,
    /// The page after the one that printed this token.
    #[arg(long, default_value = "")]
    pub page_token: String,
}

fn parse_task_state(text: &str) -> std::result::Result<TaskState, String> {
    let name = format!("TASK_STATE_{}", text.to_ascii_uppercase());
    match TaskState::from_str_name(&name) {
        Some(TaskState::Unspecified) | None => Err(format!(
            "{text:?}: expected pending, placed, starting, running, succeeded, failed, killed or lost"
        )),
        Some(s) => Ok(s),
    }
}

/// The request the flags make.
pub fn request(args: &TasksArgs) -> ListJobTasksRequest {
    ListJobTasksRequest {
        job_id: args.job_id.clone(),
        states: args.states.iter().map(|s| *s as i32).collect(),
        page_size: args.page_size,
        page_token: args.page_token.clone(),
    }
}

/// Runs `meridian job tasks`, writing to `out`.
pub async fn tasks_into(
    client: &mut Client,
    output: Output,
    args: TasksArgs,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let request = request(&args);
    let page = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.list_job_tasks(r).await }
        })
        .await?;
    match output {
        Output::Json => render::write_json(out, &render::to_json("ListJobTasksResponse", &page)?),
        Output::Table => write_page(out, &args, &page).map_err(render::written),
    }
}

/// The page as a table, then where the next one starts.
pub fn write_page(
    out: &mut dyn Write,
    args: &TasksArgs,
    page: &ListJobTasksResponse,
) -> std::io::Result<()> {
    let mut t = render::table(&["TASK", "STATE", "NODE", "ATTEMPT", "EXIT", "MESSAGE"]);
    for task in &page.tasks {
        t.add_row(vec![
            task.index.to_string(),
            render::task_state(task.state),
            if task.node_id.is_empty() {
                "-".into()
            } else {
                task.node_id.clone()
            },
            task.attempt.to_string(),
            task.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            task.message.clone(),
        ]);
    }
    render::write_table(out, &t)?;
    if !page.next_page_token.is_empty() {
        let mut next = format!("meridian job tasks {}", args.job_id);
        if !args.states.is_empty() {
            let states: Vec<String> = args
                .states
                .iter()
                .map(|s| render::task_state(*s as i32).to_ascii_lowercase())
                .collect();
            next.push_str(&format!(" --state {}", states.join(",")));
        }
        if args.page_size != 0 {
            next.push_str(&format!(" --page-size {}", args.page_size));
        }
        writeln!(out, "\nmore: {next} --page-token {}", page.next_page_token)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use meridian_proto::v1::TaskStatus;

    use super::*;

    #[test]
    fn the_flags_make_the_request_and_the_page_says_how_to_get_the_next() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            tasks: TasksArgs,
        }
        let cli = Cli::parse_from([
            "tasks",
            "j1",
            "--state",
            "running,failed",
            "--page-size",
            "2",
        ]);
        let req = request(&cli.tasks);
        assert_eq!(
            req.states,
            vec![TaskState::Running as i32, TaskState::Failed as i32]
        );
        assert_eq!((req.job_id.as_str(), req.page_size), ("j1", 2));
        assert!(Cli::try_parse_from(["tasks", "j1", "--state", "sleeping"]).is_err());
        let page = ListJobTasksResponse {
            tasks: vec![TaskStatus {
                index: 7,
                state: TaskState::Running as i32,
                node_id: "n1".into(),
                attempt: 1,
                ..Default::default()
            }],
            next_page_token: "i8".into(),
            task_counts: None,
        };
        let mut out = Vec::new();
        write_page(&mut out, &cli.tasks, &page).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("7     RUNNING  n1"), "{text}");
        assert!(
            text.ends_with(
                "more: meridian job tasks j1 --state running,failed --page-size 2 --page-token i8\n"
            ),
            "{text}"
        );
    }
}
