//! `job get` and `job list` show why a job waits (`Job.waiting_reason`):
//! `get` shows all of it next to the state, `list` a `WHY` column cut with
//! an ellipsis, JSON the field as the server sent it.
//!
//! The server is a fake global replica: a real tonic `Federation` server on
//! 127.0.0.1 answering GetJob and ListJobs from fixed jobs.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use meridian_cli::client::{Client, ConnectArgs};
use meridian_cli::job::{ListArgs, WHY_WIDTH, get_into, list_into};
use meridian_cli::render::Output;
use meridian_proto::v1::*;
use support::Script;
use tonic::Status;

const GUARD: Duration = Duration::from_secs(30);

/// Waits at the global tier; longer than the `WHY` column.
const GLOBAL_REASON: &str = "0/600 nodes of the allowed regions could ever run a task: \
                             598 do not match real=true, 2 have no h100 gpus";
/// Waits in its region; short enough to be shown whole.
const REGION_REASON: &str = "0/3 nodes: 2 do not match real=true, 1 have too little cpu";

fn job(id: &str, name: &str, state: JobState, region: &str, waiting: &str) -> Job {
    Job {
        job_id: id.into(),
        state: state as i32,
        region: region.into(),
        waiting_reason: waiting.into(),
        spec: Some(JobSpec {
            name: name.into(),
            tenant: "team-a".into(),
            task_count: 3,
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

fn jobs() -> Vec<Job> {
    vec![
        job("j1-1", "never", JobState::Pending, "", GLOBAL_REASON),
        job("j1-2", "cramped", JobState::Routed, "r1", REGION_REASON),
        job("j1-3", "fine", JobState::Running, "r1", ""),
    ]
}

/// Answers GetJob and ListJobs from fixed jobs.
struct Jobs(Vec<Job>);

#[tonic::async_trait]
impl Script for Jobs {
    async fn get_job(&self, request: GetJobRequest) -> Result<GetJobResponse, Status> {
        let id = request.job_id;
        let job = self
            .0
            .iter()
            .find(|j| j.job_id == id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("job {id}")))?;
        Ok(GetJobResponse { job: Some(job) })
    }
    async fn list_jobs(&self, _: ListJobsRequest) -> Result<ListJobsResponse, Status> {
        Ok(ListJobsResponse {
            jobs: self.0.clone(),
            next_page_token: String::new(),
        })
    }
}

/// Serves the jobs on a free loopback port; returns a client of it.
async fn serve(jobs: Vec<Job>) -> Client {
    let url = support::serve(Arc::new(Jobs(jobs))).await;
    Client::new(&ConnectArgs::new(&url, Duration::from_secs(5))).expect("client")
}

async fn get(client: &mut Client, output: Output, id: &str) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, get_into(client, output, id, &mut out))
        .await
        .expect("job get answered in time")
        .expect("job get");
    String::from_utf8(out).expect("utf-8")
}

async fn list(client: &mut Client, output: Output) -> String {
    let args = ListArgs {
        tenant: None,
        states: Vec::new(),
        region: None,
        limit: 100,
    };
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, list_into(client, output, args, &mut out))
        .await
        .expect("job list answered in time")
        .expect("job list");
    String::from_utf8(out).expect("utf-8")
}

/// The value of field `name` in `job get`'s table.
fn field<'a>(printed: &'a str, name: &str) -> Option<&'a str> {
    printed.lines().find_map(|l| {
        l.strip_prefix(name)
            .filter(|rest| rest.starts_with("  "))
            .map(str::trim)
    })
}

#[tokio::test]
async fn job_get_prints_the_whole_waiting_reason_next_to_the_state_and_json_carries_it() {
    let mut client = serve(jobs()).await;

    let printed = get(&mut client, Output::Table, "j1-1").await;
    assert_eq!(field(&printed, "waiting"), Some(GLOBAL_REASON), "{printed}");
    let names: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let at = |n: &str| names.iter().position(|x| *x == n);
    assert_eq!(
        at("waiting").map(|i| i - 1),
        at("state"),
        "right under the state: {printed}"
    );

    let printed = get(&mut client, Output::Table, "j1-3").await;
    assert_eq!(field(&printed, "state"), Some("RUNNING"), "{printed}");
    assert_eq!(field(&printed, "waiting"), None, "nothing waits: {printed}");

    let json: serde_json::Value =
        serde_json::from_str(&get(&mut client, Output::Json, "j1-2").await).expect("JSON");
    assert_eq!(json["waiting_reason"], REGION_REASON);
    let json: serde_json::Value =
        serde_json::from_str(&get(&mut client, Output::Json, "j1-3").await).expect("JSON");
    assert_eq!(json.get("waiting_reason"), None, "{json}");
}

#[tokio::test]
async fn job_list_has_a_why_column_cut_with_an_ellipsis_for_waiting_jobs_and_empty_for_others() {
    let mut client = serve(jobs()).await;

    let printed = list(&mut client, Output::Table).await;
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 4, "{printed}");
    let why_at = lines[0].find("WHY").expect("a WHY column");
    assert!(lines[0].ends_with("WHY"), "last column: {printed}");
    let why = |id: &str| {
        let line = lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} listed: {printed}"));
        line.get(why_at..).unwrap_or("").to_string()
    };

    let cut = why("j1-1");
    assert!(cut.ends_with('…'), "{cut:?}");
    assert!(cut.chars().count() <= WHY_WIDTH, "{cut:?}");
    assert!(
        GLOBAL_REASON.starts_with(cut.trim_end_matches('…')),
        "{cut:?}"
    );
    assert_eq!(why("j1-2"), REGION_REASON, "short enough to show whole");
    assert_eq!(why("j1-3"), "", "nothing waits");

    let json: serde_json::Value =
        serde_json::from_str(&list(&mut client, Output::Json).await).expect("JSON");
    assert_eq!(
        json["jobs"][0]["waiting_reason"], GLOBAL_REASON,
        "JSON is never cut"
    );
}
