//! `meridian schedule ...` against a fake global replica: the flags become
//! the CreateScheduleRequest the server is sent (the job built as `job
//! submit` builds it), list, get, pause, resume and delete print what the
//! server answered, and a refusal comes back with the field it names.
//!
//! The server is a real tonic `Federation` server on 127.0.0.1 answering the
//! schedule calls from what the test scripts.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use meridian_cli::client::{Client, ConnectArgs};
use meridian_cli::error::CliError;
use meridian_cli::render::Output;
use meridian_cli::schedule::{ScheduleCommand, run_into};
use meridian_proto::v1::*;
use support::Script;
use tonic::Status;

const GUARD: Duration = Duration::from_secs(30);
/// 2026-01-01T03:30:00Z.
const NEXT: u64 = 1_767_238_200_000;

/// The command line of `meridian schedule` alone.
#[derive(Parser)]
struct Line {
    #[command(subcommand)]
    command: ScheduleCommand,
}

fn parse(args: &[&str]) -> ScheduleCommand {
    let line = std::iter::once("schedule").chain(args.iter().copied());
    Line::try_parse_from(line).expect("parses").command
}

fn schedule(id: &str, paused: bool) -> Schedule {
    Schedule {
        schedule_id: id.into(),
        spec: Some(ScheduleSpec {
            tenant: "acme".into(),
            cron: "30 3 * * *".into(),
            overlap_policy: OverlapPolicy::Forbid.into(),
            ..ScheduleSpec::default()
        }),
        paused,
        next_tick_unix_ms: if paused { 0 } else { NEXT },
        last_job_id: "j1-7".into(),
        last_outcome: "created job j1-7".into(),
        ..Schedule::default()
    }
}

/// Records every request and answers from fixed schedules.
#[derive(Default)]
struct Schedules {
    created: Mutex<Vec<CreateScheduleRequest>>,
    called: Mutex<Vec<String>>,
}

#[tonic::async_trait]
impl Script for Schedules {
    async fn create_schedule(
        &self,
        request: CreateScheduleRequest,
    ) -> Result<CreateScheduleResponse, Status> {
        if request.spec.as_ref().is_some_and(|s| s.cron == "bad") {
            return Err(Status::invalid_argument(
                "spec.cron: not a cron expression of five fields",
            ));
        }
        let id = request.schedule_id.clone();
        self.created.lock().unwrap().push(request);
        Ok(CreateScheduleResponse {
            schedule: Some(schedule(&id, false)),
            created: true,
        })
    }
    async fn get_schedule(
        &self,
        request: GetScheduleRequest,
    ) -> Result<GetScheduleResponse, Status> {
        if request.schedule_id != "nightly" {
            return Err(Status::not_found(format!(
                "not found: schedule {}",
                request.schedule_id
            )));
        }
        Ok(GetScheduleResponse {
            schedule: Some(schedule("nightly", false)),
        })
    }
    async fn list_schedules(
        &self,
        request: ListSchedulesRequest,
    ) -> Result<ListSchedulesResponse, Status> {
        self.called
            .lock()
            .unwrap()
            .push(format!("list tenant={}", request.tenant));
        Ok(ListSchedulesResponse {
            schedules: vec![schedule("hourly", true), schedule("nightly", false)],
            next_page_token: String::new(),
        })
    }
    async fn pause_schedule(
        &self,
        request: PauseScheduleRequest,
    ) -> Result<PauseScheduleResponse, Status> {
        self.called
            .lock()
            .unwrap()
            .push(format!("pause {}", request.schedule_id));
        Ok(PauseScheduleResponse {
            schedule: Some(schedule(&request.schedule_id, true)),
        })
    }
    async fn resume_schedule(
        &self,
        request: ResumeScheduleRequest,
    ) -> Result<ResumeScheduleResponse, Status> {
        self.called
            .lock()
            .unwrap()
            .push(format!("resume {}", request.schedule_id));
        Ok(ResumeScheduleResponse {
            schedule: Some(schedule(&request.schedule_id, false)),
        })
    }
    async fn delete_schedule(
        &self,
        request: DeleteScheduleRequest,
    ) -> Result<DeleteScheduleResponse, Status> {
        self.called
            .lock()
            .unwrap()
            .push(format!("delete {}", request.schedule_id));
        Ok(DeleteScheduleResponse {
            schedule: Some(schedule(&request.schedule_id, false)),
        })
    }
}

async fn serve(script: Arc<Schedules>) -> Client {
    let url = support::serve(script).await;
    Client::new(&ConnectArgs::new(&url, Duration::from_secs(5))).expect("client")
}

async fn run(client: &mut Client, output: Output, args: &[&str]) -> Result<String, CliError> {
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, run_into(client, output, parse(args), &mut out))
        .await
        .expect("answered in time")?;
    Ok(String::from_utf8(out).expect("utf-8"))
}

#[tokio::test]
async fn schedule_create_sends_the_cron_zone_policies_and_the_job_the_flags_describe() {
    let script = Arc::new(Schedules::default());
    let mut client = serve(script.clone()).await;
    let printed = run(
        &mut client,
        Output::Table,
        &[
            "create",
            "nightly",
            "--cron",
            "30 3 * * *",
            "--tz",
            "Europe/Paris",
            "--overlap",
            "forbid",
            "--missed",
            "skip",
            "--starting-deadline",
            "5m",
            "--tenant",
            "acme",
            "--cpu",
            "0.5",
            "--",
            "/usr/bin/backup",
            "--full",
        ],
    )
    .await
    .expect("create");
    assert_eq!(
        printed,
        "schedule nightly created (next tick 2026-01-01T03:30:00Z)\n"
    );
    let sent = script.created.lock().unwrap().pop().expect("a create");
    assert_eq!(sent.schedule_id, "nightly");
    assert!(!sent.paused);
    let spec = sent.spec.expect("spec");
    assert_eq!(spec.tenant, "acme");
    assert_eq!(spec.cron, "30 3 * * *");
    assert_eq!(spec.time_zone, "Europe/Paris");
    assert_eq!(spec.overlap_policy(), OverlapPolicy::Forbid);
    assert_eq!(spec.missed_tick_policy(), MissedTickPolicy::Skip);
    assert_eq!(spec.starting_deadline_ms, 300_000);
    let job = spec.job.expect("job");
    assert_eq!(job.tenant, "acme");
    assert_eq!(job.resources.map(|r| r.cpu_millis), Some(500));
    match job.task.and_then(|t| t.kind) {
        Some(task_template::Kind::Command(c)) => {
            assert_eq!(c.program, "/usr/bin/backup");
            assert_eq!(c.args, ["--full"]);
        }
        other => panic!("a command: {other:?}"),
    }

    // Defaults: allow, run once, the server's deadline, created paused.
    run(
        &mut client,
        Output::Json,
        &[
            "create",
            "sim",
            "--cron",
            "@hourly",
            "--paused",
            "--simulate",
            "10",
        ],
    )
    .await
    .expect("create");
    let sent = script.created.lock().unwrap().pop().expect("a create");
    assert!(sent.paused);
    let spec = sent.spec.expect("spec");
    assert_eq!(spec.time_zone, "");
    assert_eq!(spec.overlap_policy(), OverlapPolicy::Allow);
    assert_eq!(spec.missed_tick_policy(), MissedTickPolicy::RunOnce);
    assert_eq!(spec.starting_deadline_ms, 0);
}

#[tokio::test]
async fn a_refused_schedule_comes_back_naming_the_field() {
    let mut client = serve(Arc::new(Schedules::default())).await;
    let err = run(
        &mut client,
        Output::Table,
        &["create", "x", "--cron", "bad", "--simulate", "10"],
    )
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("spec.cron"), "{err}");
    let err = run(&mut client, Output::Table, &["get", "missing"])
        .await
        .expect_err("not found");
    assert!(err.to_string().contains("schedule missing"), "{err}");
}

#[tokio::test]
async fn schedule_list_get_pause_resume_and_delete_print_what_the_server_answered() {
    let script = Arc::new(Schedules::default());
    let mut client = serve(script.clone()).await;
    let listed = run(&mut client, Output::Table, &["list", "--tenant", "acme"])
        .await
        .expect("list");
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert!(lines[0].starts_with("ID"), "{listed}");
    assert!(
        lines[1].starts_with("hourly") && lines[1].contains("paused"),
        "{listed}"
    );
    assert!(
        lines[2].contains("active") && lines[2].contains("2026-01-01T03:30:00Z"),
        "{listed}"
    );
    assert!(
        lines[2].contains("UTC") && lines[2].contains("j1-7"),
        "{listed}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &run(&mut client, Output::Json, &["list"])
            .await
            .expect("list"),
    )
    .expect("JSON");
    assert_eq!(json["schedules"][1]["schedule_id"], "nightly");

    let got = run(&mut client, Output::Table, &["get", "nightly"])
        .await
        .expect("get");
    for line in [
        "schedule:  nightly",
        "cron:      30 3 * * * (UTC)",
        "overlap:   forbid",
        "missed:    run-once (starting deadline 60 s)",
        "next:      2026-01-01T03:30:00Z",
        "last job:  j1-7",
    ] {
        assert!(got.lines().any(|l| l == line), "{line:?} in\n{got}");
    }

    let paused = run(&mut client, Output::Table, &["pause", "nightly"])
        .await
        .expect("pause");
    assert_eq!(paused, "schedule nightly paused (paused)\n");
    let resumed = run(&mut client, Output::Table, &["resume", "nightly"])
        .await
        .expect("resume");
    assert_eq!(
        resumed,
        "schedule nightly resumed (next tick 2026-01-01T03:30:00Z)\n"
    );
    let deleted = run(&mut client, Output::Table, &["delete", "nightly"])
        .await
        .expect("delete");
    assert_eq!(
        deleted,
        "deleted schedule nightly; the jobs it created are kept\n"
    );
    assert_eq!(
        *script.called.lock().unwrap(),
        [
            "list tenant=acme",
            "list tenant=",
            "pause nightly",
            "resume nightly",
            "delete nightly"
        ]
    );
}
