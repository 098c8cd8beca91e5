//! Real processes through the whole agent: a fake region sends RUN/STOP on
//! the real proto and receives the status reports.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeOptions, FakeRegion, attempt, real_node, run, stop};
use meridian_agent::exec::process::is_running;
use meridian_agent::{AgentOptions, Host, Probe};
use meridian_control::{ManualClock, SystemClock};
use meridian_proto::v1::task_template::Kind;
use meridian_proto::v1::{Command, RegionLossPolicy, Simulated, TaskState, TaskTemplate};

fn sh(script: &str, env: &[(&str, &str)], working_dir: &str) -> TaskTemplate {
    TaskTemplate {
        kind: Some(Kind::Command(Command {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            working_dir: working_dir.into(),
        })),
    }
}

async fn real_host(fake: &FakeRegion, work: &std::path::Path) -> Host {
    let opts = AgentOptions {
        work_dir: Some(work.to_path_buf()),
        ..AgentOptions::default()
    };
    Host::real(
        &fake.url(),
        real_node("n1"),
        opts,
        SystemClock::shared(),
        Arc::new(Probe::default()),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_task_runs_and_its_exit_code_and_output_reach_the_region() {
    let mut fake = FakeRegion::start(SystemClock::shared(), FakeOptions::default()).await;
    let work = tempfile::tempdir().unwrap();
    let wd = tempfile::tempdir().unwrap();
    let host = real_host(&fake, work.path()).await;
    fake.wait_stream("n1", 1).await;
    let epoch = fake.epoch_of("n1");

    let a = attempt("job-1", 0, 1);
    let script = "echo \"greeting=$GREETING\"; echo \"cwd=$(pwd)\"; echo oops >&2; exit 3";
    let wd_path = wd.path().canonicalize().unwrap();
    let template = sh(script, &[("GREETING", "hello")], wd_path.to_str().unwrap());
    fake.send(
        "n1",
        run(
            a.clone(),
            template,
            epoch,
            1,
            RegionLossPolicy::KeepRunning,
            1000,
        ),
    )
    .await;

    let (done, seen) = fake.wait_report(&a, |r| r.finished_at_unix_ms != 0).await;
    println!(
        "reports: {:?}",
        seen.iter().map(|r| r.state).collect::<Vec<_>>()
    );
    assert_eq!(done.state, TaskState::Failed as i32);
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.signal, None);
    let out = String::from_utf8(done.stdout_tail.clone()).unwrap();
    assert_eq!(out, format!("greeting=hello\ncwd={}\n", wd_path.display()));
    assert_eq!(done.stderr_tail, b"oops\n");
    // The output also lands in the attempt's files.
    let file = work.path().join("tasks/job-1/0-1/stdout");
    assert_eq!(std::fs::read_to_string(file).unwrap(), out);
    host.shutdown().await;
}

/// The region places simulated tasks on any node, real ones included: a
/// real node runs them as a timer and reports their exit code. (It used to
/// report them FAILED, "could not start", which failed about one simulated
/// job in a thousand in `meridian dev`.)
///
/// The node runs on a manual clock: the timers end when the test moves time,
/// not when a machine under load gets round to it, and both end at the same
/// instant, so the test must not (and does not) expect one final report
/// before the other (docs/testing.md, "How tests wait").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_task_on_a_real_node_runs_as_a_timer_and_succeeds() {
    const DURATION_MS: u64 = 20;
    let clock = ManualClock::new();
    let mut fake = FakeRegion::start(clock.shared(), FakeOptions::default()).await;
    let work = tempfile::tempdir().unwrap();
    // The manual clock does not move by itself: no spacing between reports.
    let opts = AgentOptions {
        work_dir: Some(work.path().to_path_buf()),
        report_interval: Duration::ZERO,
        ..AgentOptions::default()
    };
    let host = Host::real(
        &fake.url(),
        real_node("n1"),
        opts,
        clock.shared(),
        Arc::new(Probe::default()),
    )
    .await
    .unwrap();
    fake.wait_stream("n1", 1).await;
    let epoch = fake.epoch_of("n1");

    let template = |exit_code| TaskTemplate {
        kind: Some(Kind::Simulated(Simulated {
            duration_ms: DURATION_MS,
            exit_code,
        })),
    };
    let ok = attempt("job-sim", 0, 1);
    let bad = attempt("job-sim", 1, 1);
    for (a, code) in [(&ok, 0), (&bad, 4)] {
        fake.send(
            "n1",
            run(
                a.clone(),
                template(code),
                epoch,
                1,
                RegionLossPolicy::KeepRunning,
                1000,
            ),
        )
        .await;
    }
    // Both run (their timers exist from the launch on) and neither has
    // ended: time has not moved.
    let mut running = BTreeMap::new();
    while running.len() < 2 {
        let (_, r) = fake.next_report().await;
        assert_eq!(r.finished_at_unix_ms, 0, "ended before its time: {r:?}");
        assert_eq!(r.state, TaskState::Running as i32, "{r:?}");
        running.insert(r.task.clone().and_then(|t| t.task).map(|t| t.index), r);
    }

    clock.advance(Duration::from_millis(DURATION_MS));
    // Both timers end at this one instant: the final reports come in
    // whatever order the node loop takes the two exits, in one batch or two.
    let mut finals = BTreeMap::new();
    while finals.len() < 2 {
        let (_, r) = fake.next_report().await;
        if r.finished_at_unix_ms != 0
            && let Some(t) = r.task.clone()
        {
            finals.insert(t.task.map(|t| t.index), r);
        }
    }
    let done = &finals[&ok.task.as_ref().map(|t| t.index)];
    assert_eq!(done.state, TaskState::Succeeded as i32, "{done:?}");
    assert_eq!(done.exit_code, Some(0));
    let done = &finals[&bad.task.as_ref().map(|t| t.index)];
    assert_eq!(done.state, TaskState::Failed as i32, "{done:?}");
    assert_eq!(done.exit_code, Some(4));
    for done in finals.values() {
        assert_eq!(
            done.finished_at_unix_ms - done.started_at_unix_ms,
            DURATION_MS,
            "ran exactly as long as its timer: {done:?}"
        );
    }
    // No process, no files.
    assert!(!work.path().join("tasks/job-sim").exists());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_whole_process_tree() {
    let mut fake = FakeRegion::start(SystemClock::shared(), FakeOptions::default()).await;
    let work = tempfile::tempdir().unwrap();
    let host = real_host(&fake, work.path()).await;
    fake.wait_stream("n1", 1).await;
    let epoch = fake.epoch_of("n1");

    // The task tells us its own pid and its child's through a FIFO: reading
    // it is an event, no polling.
    let fifo = common::wait::task_fifo(work.path(), "pids");
    let a = attempt("job-2", 0, 1);
    let script = "sleep 1000 & echo \"$$ $!\" > \"$PIDS\"; wait";
    let template = sh(script, &[("PIDS", fifo.to_str().unwrap())], "");
    fake.send(
        "n1",
        run(
            a.clone(),
            template,
            epoch,
            1,
            RegionLossPolicy::KeepRunning,
            5000,
        ),
    )
    .await;

    let fifo_path = fifo.clone();
    let line = tokio::task::spawn_blocking(move || std::fs::read_to_string(fifo_path).unwrap())
        .await
        .unwrap();
    let pids: Vec<i32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (shell, child) = (pids[0], pids[1]);
    assert!(
        is_running(shell) && is_running(child),
        "both run before the stop"
    );

    fake.send("n1", stop(a.clone(), epoch, 1, 5000)).await;
    let (done, _) = fake.wait_report(&a, |r| r.finished_at_unix_ms != 0).await;
    println!(
        "stopped: state {} signal {:?} message {:?}",
        done.state, done.signal, done.message
    );
    assert_eq!(done.state, TaskState::Killed as i32);
    assert_eq!(done.signal, Some(15), "SIGTERM ended the shell");
    assert!(!is_running(shell), "the shell is gone");
    assert!(
        !is_running(child),
        "its child, in the same process group, is gone too"
    );
    host.shutdown().await;
}

/// An array job's task learns its number from `MERIDIAN_TASK_INDEX` (the
/// index alone, where `MERIDIAN_TASK_ID` is `JOB/INDEX`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finds_its_index_in_meridian_task_index() {
    let mut fake = FakeRegion::start(SystemClock::shared(), FakeOptions::default()).await;
    let work = tempfile::tempdir().unwrap();
    let host = real_host(&fake, work.path()).await;
    fake.wait_stream("n1", 1).await;
    let epoch = fake.epoch_of("n1");

    let a = attempt("job-7", 99_999, 2);
    let script =
        "echo \"index=$MERIDIAN_TASK_INDEX id=$MERIDIAN_TASK_ID attempt=$MERIDIAN_ATTEMPT\"";
    let template = sh(script, &[], "");
    fake.send(
        "n1",
        run(
            a.clone(),
            template,
            epoch,
            1,
            RegionLossPolicy::KeepRunning,
            1000,
        ),
    )
    .await;

    let (done, _) = fake.wait_report(&a, |r| r.finished_at_unix_ms != 0).await;
    assert_eq!(done.state, TaskState::Succeeded as i32);
    let out = String::from_utf8(done.stdout_tail.clone()).unwrap();
    assert_eq!(out, "index=99999 id=job-7/99999 attempt=2\n");
    host.shutdown().await;
}

/// A real task exits 0 while its report waits on a slow region, and the
/// agent dies before the report is acknowledged (the host is dropped: its
/// node loops end where they stand, as in a crash). The next boot finds the
/// end in its state file and delivers it, naming the epoch the attempt ran
/// under, so the region can finish the task rather than run it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_unacknowledged_when_the_agent_dies_is_delivered_by_its_next_boot() {
    let mut fake = FakeRegion::start(SystemClock::shared(), FakeOptions::default()).await;
    let work = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let opts = AgentOptions {
        work_dir: Some(work.path().to_path_buf()),
        ..AgentOptions::default()
    };
    let host = Host::real(
        &fake.url(),
        real_node("n1"),
        opts,
        SystemClock::shared(),
        probe.clone(),
    )
    .await
    .unwrap();
    fake.wait_stream("n1", 1).await;
    let epoch = fake.epoch_of("n1");

    fake.hold_reports(true);
    let a = attempt("job-1", 0, 1);
    fake.send(
        "n1",
        run(
            a.clone(),
            sh("exit 0", &[], ""),
            epoch,
            1,
            RegionLossPolicy::KeepRunning,
            1000,
        ),
    )
    .await;
    probe.wait_for(|p| p.launched == 1 && p.running == 0).await;
    fake.wait_held_reports(1).await;
    // The end is on disk (a crash before that write would lose it, as it
    // loses any change of the last moment).
    let state = work.path().join("state.json");
    common::wait::file_until(
        &state,
        "the end in the state file",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&state).ok()?;
            text.contains("\"ends\"").then_some(())
        },
    )
    .await;
    drop(host);
    fake.hold_reports(false);

    let next = real_host(&fake, work.path()).await;
    let (end, _) = fake
        .wait_report(&a, |r| {
            r.state == TaskState::Succeeded as i32 && r.node_epoch != 0
        })
        .await;
    assert_eq!(end.node_epoch, epoch, "the epoch the attempt ran under");
    assert_eq!(end.exit_code, Some(0));
    assert!(
        fake.epoch_of("n1") > epoch,
        "the next boot registered under a new epoch"
    );
    next.shutdown().await;
}
