//! `meridian job ...`: submit, inspect, follow, cancel jobs and read task output.
//!
//! Owns the job commands' flags and what each prints. Must never retry a
//! submit with a different request id: one request id is chosen per command
//! (or given with `--request-id`) and every retry reuses it, so a submit
//! interrupted by a leader change creates exactly one job.

use std::io::Write;

use meridian_proto::v1::{
    CancelJobRequest, DependencyCondition, GetJobRequest, GetTaskLogsRequest, GetTaskLogsResponse,
    Job, JobDependency, JobState, ListJobsRequest, SubmitJobRequest, TaskId, job_dependency,
    task_template,
};

use crate::client::{Client, ConnectArgs};
use crate::error::{CliError, Result};
use crate::render::{self, Output, OutputArgs};
use crate::spec::{self, SpecArgs};
use crate::wait::{self, WaitOptions};

/// `meridian job`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: JobCommand,
}

/// The job subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Submit a job; prints its id (with --wait: follows it and prints its output).
    Submit(Box<SubmitArgs>),
    /// Show one job with its tasks and history.
    Get {
        /// The job id.
        job_id: String,
    },
    /// List jobs.
    List(ListArgs),
    /// One page of a job's tasks, read from its region (for an array too
    /// large for `get` to list).
    Tasks(crate::tasks::TasksArgs),
    /// Request cancellation of a job.
    Cancel {
        /// The job id.
        job_id: String,
        /// Why, recorded in the job's history.
        #[arg(long, default_value = "cancelled from the command line")]
        reason: String,
    },
    /// Hold a job still pending at the global tier: it is not routed until
    /// released (a job already routed cannot be held).
    Hold {
        /// The job id.
        job_id: String,
        /// Why, shown with the job.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Release a held job: it is routed again (once its dependencies are met).
    Release {
        /// The job id.
        job_id: String,
    },
    /// Change the priority of a job still pending at the global tier.
    SetPriority {
        /// The job id.
        job_id: String,
        /// The new priority (higher is routed first; may be negative).
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },
    /// Print job events as they happen (until the named jobs are all done).
    Watch(WatchArgs),
    /// Print the captured output of a task (`JOB_ID` means task 0).
    Logs(LogsArgs),
}

/// Flags of `meridian job submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Idempotency key; default a fresh UUID. Submitting the same id again
    /// returns the first job.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Follow the job until it ends, then print its tasks' output; exits
    /// non-zero unless it succeeded.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// With --wait: give up after this long (`90`, `90s`, `2m`, `1h`; from
    /// the start of the command), exiting 7; the job itself goes on.
    #[arg(long, value_parser = parse_timeout, requires = "wait")]
    pub timeout: Option<std::time::Duration>,
}

/// A `--timeout` value: whole seconds, or a number with `ms`, `s`, `m`, `h`.
fn parse_timeout(text: &str) -> std::result::Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 90s, 2m or 1h"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    if ms == 0 {
        return Err("--timeout must be longer than zero".into());
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// Flags of `meridian job list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this tenant's jobs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only jobs in this state (repeatable): pending, routed, placed,
    /// running, succeeded, failed, cancelled.
    #[arg(long = "state", value_parser = parse_job_state)]
    pub states: Vec<JobState>,
    /// Only jobs held by this region.
    #[arg(long)]
    pub region: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// Flags of `meridian job watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only these jobs; the watch ends once all of them are done.
    pub job_ids: Vec<String>,
    /// Only this tenant's jobs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only jobs held by this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Also print each task status change.
    #[arg(long)]
    pub tasks: bool,
}

/// Flags of `meridian job logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// `JOB_ID/INDEX`, or `JOB_ID` for task 0.
    pub task: String,
    /// Attempt number; 0 is the latest.
    #[arg(long, default_value_t = 0)]
    pub attempt: u32,
    /// At most this many trailing bytes per stream; 0 is all that is kept.
    /// With --follow: the tail to start with (0: 4096 bytes).
    #[arg(long, default_value_t = 0)]
    pub max_bytes: u32,
    /// Follow the output as it is written until the task ends (with
    /// --attempt: until that attempt ends).
    #[arg(short = 'f', long)]
    pub follow: bool,
}

fn parse_job_state(text: &str) -> std::result::Result<JobState, String> {
    let name = format!("JOB_STATE_{}", text.trim().to_ascii_uppercase());
    JobState::from_str_name(&name)
        .filter(|s| *s != JobState::Unspecified)
        .ok_or_else(|| format!("unknown job state {text:?}"))
}

pub use crate::wait::is_terminal;

/// Runs `meridian job ...`.
pub async fn run(args: JobArgs) -> Result<()> {
    let mut client = Client::new(&args.connect)?;
    let output = args.output.output;
    match args.command {
        JobCommand::Submit(a) => submit(&mut client, output, *a).await,
        JobCommand::Get { job_id } => {
            get_into(&mut client, output, &job_id, &mut std::io::stdout()).await
        }
        JobCommand::List(a) => list_into(&mut client, output, a, &mut std::io::stdout()).await,
        JobCommand::Tasks(a) => {
            crate::tasks::tasks_into(&mut client, output, a, &mut std::io::stdout()).await
        }
        JobCommand::Cancel { job_id, reason } => {
            let request = CancelJobRequest { job_id, reason };
            let response = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.cancel_job(r).await }
                })
                .await?;
            let job = response.job.unwrap_or_default();
            match output {
                Output::Json => render::print_message("Job", &job),
                Output::Table => {
                    println!(
                        "cancel requested for {} (state {})",
                        job.job_id,
                        render::job_state(job.state)
                    );
                    Ok(())
                }
            }
        }
        JobCommand::Hold { job_id, reason } => {
            crate::queued::hold(&mut client, output, job_id, reason).await
        }
        JobCommand::Release { job_id } => crate::queued::release(&mut client, output, job_id).await,
        JobCommand::SetPriority { job_id, priority } => {
            crate::queued::set_priority(&mut client, output, job_id, priority).await
        }
        JobCommand::Watch(a) => {
            crate::watch::watch_into(&mut client, output, a, &mut std::io::stdout()).await
        }
        JobCommand::Logs(a) => logs(&mut client, output, a).await,
    }
}

/// The job `job_id` as the federation has it now.
pub(crate) async fn get(client: &mut Client, job_id: &str) -> Result<Job> {
    let request = GetJobRequest {
        job_id: job_id.to_string(),
    };
    let response = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.get_job(r).await }
        })
        .await?;
    response
        .job
        .ok_or_else(|| CliError::other(format!("the server returned no job for {job_id}")))
}

async fn submit(client: &mut Client, output: Output, args: SubmitArgs) -> Result<()> {
    let spec = spec::build(&args.spec)?;
    let is_command = matches!(
        spec.task.as_ref().and_then(|t| t.kind.as_ref()),
        Some(task_template::Kind::Command(_))
    );
    let task_count = spec.task_count;
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let request = SubmitJobRequest {
        request_id: args
            .request_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        spec: Some(spec),
    };
    let submitting = client.call(|mut c| {
        let r = request.clone();
        async move { c.submit_job(r).await }
    });
    let response = match deadline {
        None => submitting.await?,
        Some(at) => tokio::time::timeout_at(at, submitting)
            .await
            .map_err(|_| {
                CliError::TimedOut(format!(
                    "the submit (request id {}) was not acknowledged within the --timeout; \
                     submitting again with --request-id {} is safe",
                    request.request_id, request.request_id
                ))
            })??,
    };
    if !args.wait {
        return match output {
            Output::Json => render::print_message("SubmitJobResponse", &response),
            Output::Table => {
                println!("{}", response.job_id);
                Ok(())
            }
        };
    }
    eprintln!("submitted {}; waiting for it to finish", response.job_id);
    let opts = WaitOptions {
        deadline,
        ..WaitOptions::default()
    };
    let job = wait::follow(client, &response.job_id, opts).await?;
    if output == Output::Json {
        render::print_message("Job", &job)?;
    } else if is_command {
        print_outputs(client, &job.job_id, task_count).await;
    }
    finished(&job)
}

/// Ok for a succeeded job, the failure otherwise.
fn finished(job: &Job) -> Result<()> {
    match JobState::try_from(job.state) {
        Ok(JobState::Succeeded) => Ok(()),
        Ok(JobState::Cancelled) => Err(CliError::JobFailed(format!(
            "job {} was cancelled{}",
            job.job_id,
            if job.cancel_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", job.cancel_reason)
            }
        ))),
        _ => Err(CliError::JobFailed(format!(
            "job {} ended {}: {}",
            job.job_id,
            render::job_state(job.state),
            if job.failure_reason.is_empty() {
                "no reason given"
            } else {
                &job.failure_reason
            }
        ))),
    }
}

async fn task_logs(
    client: &mut Client,
    request: GetTaskLogsRequest,
) -> Result<GetTaskLogsResponse> {
    client
        .call(|mut c| {
            let r = request.clone();
            async move { c.get_task_logs(r).await }
        })
        .await
}

async fn print_outputs(client: &mut Client, job_id: &str, task_count: u32) {
    const SHOWN: u32 = 20;
    for index in 0..task_count.min(SHOWN) {
        let request = GetTaskLogsRequest {
            task: Some(TaskId {
                job_id: job_id.to_string(),
                index,
            }),
            attempt: 0,
            max_bytes: 0,
        };
        match task_logs(client, request).await {
            Ok(logs) => {
                if task_count > 1 {
                    println!("==> {job_id}/{index} <==");
                }
                write_streams(&logs);
            }
            // A region keeps output only for tasks that wrote some, so a
            // finished task without any (`true`) has nothing to show.
            Err(CliError::Status(s))
                if s.code() == tonic::Code::NotFound
                    && s.message().contains(meridian_proto::NO_TASK_OUTPUT) => {}
            Err(e) => eprintln!("warning: output of {job_id}/{index} is not available: {e}"),
        }
    }
    if task_count > SHOWN {
        eprintln!(
            "({} more tasks: `meridian job logs {job_id}/INDEX`)",
            task_count - SHOWN
        );
    }
}

fn write_streams(logs: &GetTaskLogsResponse) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&logs.stdout_tail);
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(&logs.stderr_tail);
    let _ = err.flush();
}

/// `meridian job get`: the job as the federation has it now, written to
/// `out` (the whole waiting reason included; JSON is the `Job` message).
pub async fn get_into(
    client: &mut Client,
    output: Output,
    job_id: &str,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let job = get(client, job_id).await?;
    match output {
        Output::Json => render::write_json(out, &render::to_json("Job", &job)?),
        Output::Table => write_job(out, &job).map_err(render::written),
    }
}

/// Longest waiting reason shown whole in the `WHY` column of `job list`;
/// `job get` and JSON always show all of it.
pub const WHY_WIDTH: usize = 60;

/// `meridian job list`, written to `out`.
pub async fn list_into(
    client: &mut Client,
    output: Output,
    args: ListArgs,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListJobsRequest {
            tenant: args.tenant.clone().unwrap_or_default(),
            states: args.states.iter().map(|s| *s as i32).collect(),
            region: args.region.clone().unwrap_or_default(),
            page_size: (args.limit - jobs.len()).clamp(1, 1000) as u32,
            page_token: page_token.clone(),
            ..ListJobsRequest::default()
        };
        let page = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.list_jobs(r).await }
            })
            .await?;
        jobs.extend(page.jobs);
        page_token = page.next_page_token;
        if page_token.is_empty() || jobs.len() >= args.limit {
            break;
        }
    }
    jobs.truncate(args.limit);
    match output {
        Output::Json => {
            let items = jobs
                .iter()
                .map(|j| render::to_json("Job", j))
                .collect::<Result<Vec<_>>>()?;
            render::write_json(out, &serde_json::json!({ "jobs": items }))
        }
        Output::Table => {
            // WHY is last: a long reason then pushes no other column.
            let mut t = render::table(&[
                "JOB", "NAME", "TENANT", "STATE", "REGION", "TASKS", "AGE", "WHY",
            ]);
            for j in &jobs {
                let spec = j.spec.clone().unwrap_or_default();
                let counts = j.task_counts.unwrap_or_default();
                t.add_row(vec![
                    j.job_id.clone(),
                    spec.name,
                    spec.tenant,
                    render::job_state(j.state),
                    dash(&j.region),
                    format!("{}/{}", counts.succeeded, spec.task_count),
                    render::age(j.created_at_unix_ms),
                    render::ellipsis(&j.waiting_reason, WHY_WIDTH),
                ]);
            }
            render::write_table(out, &t).map_err(render::written)
        }
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn write_job(out: &mut dyn Write, job: &Job) -> std::io::Result<()> {
    let spec = job.spec.clone().unwrap_or_default();
    let what = match spec.task.as_ref().and_then(|t| t.kind.as_ref()) {
        Some(task_template::Kind::Command(c)) => std::iter::once(c.program.clone())
            .chain(c.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        Some(task_template::Kind::Simulated(s)) => {
            format!("simulated {} ms, exit {}", s.duration_ms, s.exit_code)
        }
        None => "-".into(),
    };
    let mut t = render::table(&["FIELD", "VALUE"]);
    let mut rows = vec![
        ("job", job.job_id.clone()),
        ("name", spec.name.clone()),
        ("tenant", spec.tenant.clone()),
        ("state", render::job_state(job.state)),
    ];
    // Next to the state it explains, and whole: this is where to read it all.
    if !job.waiting_reason.is_empty() {
        rows.push(("waiting", job.waiting_reason.clone()));
    }
    if job.held {
        rows.push(("held", dash(&job.hold_reason)));
    }
    for dep in &job.dependencies {
        rows.push(("depends on", dependency(dep)));
    }
    if let Some(p) = job.priority {
        rows.push(("priority", format!("{p} (submitted {})", spec.priority)));
    } else if spec.priority != 0 {
        rows.push(("priority", spec.priority.to_string()));
    }
    rows.extend([
        ("region", dash(&job.region)),
        ("epoch", job.assignment_epoch.to_string()),
        ("tasks", tasks_line(&spec)),
        ("by state", counts_line(job)),
        ("runs", what),
        ("request id", job.request_id.clone()),
        ("trace id", dash(&job.trace_id)),
        ("created", render::age(job.created_at_unix_ms) + " ago"),
    ]);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    if !job.failure_reason.is_empty() {
        t.add_row(vec!["failure".to_string(), job.failure_reason.clone()]);
    }
    if job.cancel_requested {
        t.add_row(vec![
            "cancel".to_string(),
            format!("requested: {}", job.cancel_reason),
        ]);
    }
    render::write_table(out, &t)?;
    if !job.tasks.is_empty() {
        writeln!(out)?;
        let mut t = render::table(&["TASK", "STATE", "NODE", "ATTEMPT", "EXIT", "MESSAGE"]);
        for task in &job.tasks {
            t.add_row(vec![
                task.index.to_string(),
                render::task_state(task.state),
                dash(&task.node_id),
                task.attempt.to_string(),
                task.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                task.message.clone(),
            ]);
        }
        render::write_table(out, &t)?;
    }
    if !job.history.is_empty() {
        writeln!(out)?;
        let mut t = render::table(&["WHEN", "FROM", "TO", "REGION", "REASON"]);
        for h in &job.history {
            t.add_row(vec![
                render::age(h.at_unix_ms) + " ago",
                render::job_state(h.from),
                render::job_state(h.to),
                dash(&h.region),
                h.reason.clone(),
            ]);
        }
        render::write_table(out, &t)?;
    }
    Ok(())
}

/// The task count, with the array's parallelism when it has one.
fn tasks_line(spec: &meridian_proto::v1::JobSpec) -> String {
    match spec.parallelism {
        0 => spec.task_count.to_string(),
        p => format!("{}, at most {p} at once", spec.task_count),
    }
}

/// The job's tasks by state, the states with none left out: the summary a
/// job of 100,000 tasks is read by (its view lists no task rows).
fn counts_line(job: &Job) -> String {
    let c = job.task_counts.unwrap_or_default();
    let parts: Vec<String> = c
        .by_state()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// A dependency as the submit flags spell it: `after_ok j1-2`.
fn dependency(dep: &JobDependency) -> String {
    let condition = DependencyCondition::try_from(dep.condition)
        .map(|c| render::short(c.as_str_name(), "DEPENDENCY_CONDITION_").to_ascii_lowercase())
        .unwrap_or_else(|_| dep.condition.to_string());
    let target = match &dep.target {
        Some(job_dependency::Target::JobId(id)) => id.clone(),
        Some(job_dependency::Target::RequestId(id)) => format!("request id {id}"),
        None => "-".into(),
    };
    format!("{condition} {target}")
}

fn parse_task(text: &str) -> Result<TaskId> {
    match text.rsplit_once('/') {
        Some((job, index)) => Ok(TaskId {
            job_id: job.to_string(),
            index: index
                .parse()
                .map_err(|_| CliError::usage(format!("{text:?}: expected JOB_ID/INDEX")))?,
        }),
        None => Ok(TaskId {
            job_id: text.to_string(),
            index: 0,
        }),
    }
}

async fn logs(client: &mut Client, output: Output, args: LogsArgs) -> Result<()> {
    if args.follow {
        let follow = crate::follow::Follow {
            task: parse_task(&args.task)?,
            attempt: args.attempt,
            tail_bytes: args.max_bytes,
        };
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        return crate::follow::follow_into(client, &follow, output, &mut out, &mut err).await;
    }
    let request = GetTaskLogsRequest {
        task: Some(parse_task(&args.task)?),
        attempt: args.attempt,
        max_bytes: args.max_bytes,
    };
    let logs = task_logs(client, request).await?;
    match output {
        Output::Json => render::print_message("GetTaskLogsResponse", &logs),
        Output::Table => {
            write_streams(&logs);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_parse_with_and_without_an_index() {
        let t = parse_task("j1-7/3").expect("task");
        assert_eq!((t.job_id.as_str(), t.index), ("j1-7", 3));
        assert_eq!(parse_task("j1-7").expect("task").index, 0);
        assert!(parse_task("j1-7/x").is_err());
    }

    #[test]
    fn timeouts_parse_with_and_without_a_unit_and_zero_is_refused() {
        use std::time::Duration;
        assert_eq!(parse_timeout("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("5 parsecs").is_err());
        assert!(parse_timeout("s").is_err());
    }

    #[test]
    fn job_get_shows_dependencies_the_hold_and_a_changed_priority() {
        let job = Job {
            job_id: "j1-3".into(),
            state: JobState::Pending as i32,
            waiting_reason: "held".into(),
            held: true,
            hold_reason: "data late".into(),
            priority: Some(9),
            dependencies: vec![JobDependency {
                condition: DependencyCondition::AfterOk as i32,
                target: Some(job_dependency::Target::JobId("j1-1".into())),
            }],
            ..Job::default()
        };
        let mut out = Vec::new();
        write_job(&mut out, &job).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        for line in [
            "depends on  after_ok j1-1",
            "held        data late",
            "priority    9 (submitted 0)",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn job_get_summarises_an_array_by_state_without_task_rows() {
        let job = Job {
            job_id: "j1-4".into(),
            state: JobState::Running as i32,
            spec: Some(meridian_proto::v1::JobSpec {
                task_count: 100_000,
                parallelism: 1000,
                ..Default::default()
            }),
            task_counts: Some(meridian_proto::v1::TaskCounts {
                pending: 48_000,
                running: 1000,
                succeeded: 50_990,
                failed: 10,
                ..Default::default()
            }),
            ..Job::default()
        };
        let mut out = Vec::new();
        write_job(&mut out, &job).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        for line in [
            "tasks       100000, at most 1000 at once",
            "by state    pending 48000, running 1000, succeeded 50990, failed 10",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("TASK"), "no task table:\n{text}");
    }

    #[test]
    fn job_states_parse_case_insensitively() {
        assert_eq!(parse_job_state("Running"), Ok(JobState::Running));
        assert!(parse_job_state("unspecified").is_err());
        assert!(parse_job_state("sleeping").is_err());
    }
}
