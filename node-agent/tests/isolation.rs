//! Task isolation with real processes: the task's user, its cgroup's
//! memory and pids limits, the OOM report. The cgroup tests require cgroups
//! (`require_cgroups`): on a machine without usable ones they fail saying
//! what is missing, they never pass without having been isolated.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use common::{FakeOptions, FakeRegion, attempt, real_node, run};
use meridian_agent::exec::isolation::{DEFAULT_TASK_USER, IsolationOptions, RunAs};
use meridian_agent::exec::process::is_running;
use meridian_agent::{AgentOptions, Host, Probe};
use meridian_control::SystemClock;
use meridian_proto::v1::task_template::Kind;
use meridian_proto::v1::{
    AssignmentCommand, Command, RegionLossPolicy, Resources, TaskReport, TaskState, TaskTemplate,
};
use nix::unistd::{Uid, User};

fn sh(script: &str) -> TaskTemplate {
    TaskTemplate {
        kind: Some(Kind::Command(Command {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Default::default(),
            working_dir: String::new(),
        })),
    }
}

/// A node with `isolation`, its fake region, its work dir and its epoch.
async fn node(isolation: IsolationOptions) -> (FakeRegion, Host, tempfile::TempDir, u64) {
    let fake = FakeRegion::start(SystemClock::shared(), FakeOptions::default()).await;
    let work = tempfile::tempdir().unwrap();
    let opts = AgentOptions {
        work_dir: Some(work.path().to_path_buf()),
        isolation,
        ..AgentOptions::default()
    };
    let host = Host::real(
        &fake.url(),
        real_node("n1"),
        opts,
        SystemClock::shared(),
        Arc::new(Probe::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("the agent must start with task isolation: {e}"));
    fake.wait_stream("n1", 1).await;
    let epoch = fake.epoch_of("n1");
    (fake, host, work, epoch)
}

/// Isolation that fails the agent's start when cgroups are not usable.
fn with_cgroups(pids_limit: u64) -> IsolationOptions {
    IsolationOptions {
        require_cgroups: true,
        pids_limit,
        ..IsolationOptions::default()
    }
}

fn run_with(template: TaskTemplate, epoch: u64, memory_bytes: u64, job: &str) -> AssignmentCommand {
    let mut cmd = run(
        attempt(job, 0, 1),
        template,
        epoch,
        1,
        RegionLossPolicy::KeepRunning,
        1000,
    );
    cmd.resources = Some(Resources {
        cpu_millis: 1000,
        memory_bytes,
        gpu_count: 0,
        gpu_type: String::new(),
    });
    cmd
}

async fn final_report(fake: &mut FakeRegion, job: &str) -> TaskReport {
    let (done, _) = fake
        .wait_report(&attempt(job, 0, 1), |r| r.finished_at_unix_ms != 0)
        .await;
    println!(
        "{job}: state {} exit {:?} signal {:?} message {:?}\nstdout {:?}\nstderr {:?}",
        done.state,
        done.exit_code,
        done.signal,
        done.message,
        String::from_utf8_lossy(&done.stdout_tail),
        String::from_utf8_lossy(&done.stderr_tail)
    );
    done
}

/// The memory line of `/proc/self/cgroup` as the task printed it: v1 has
/// a `memory` hierarchy, v2 a single `0::` line.
fn memory_cgroup(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find(|l| l.contains(":memory:") || l.starts_with("0::"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_allocates_past_its_memory_limit_is_reported_oom_killed_with_its_limit() {
    let (mut fake, host, _work, epoch) = node(with_cgroups(1024)).await;
    // The shell itself keeps 200 MB of command output in memory, so the
    // task's leader is what the kernel kills; without a limit it would
    // print "survived".
    let script =
        "cat /proc/self/cgroup; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    fake.send("n1", run_with(sh(script), epoch, 64 << 20, "oom"))
        .await;
    let done = final_report(&mut fake, "oom").await;
    assert_eq!(done.state, TaskState::Failed as i32);
    assert!(
        done.message
            .starts_with("OOM-killed: exceeded its memory limit of 64 MiB"),
        "{:?}",
        done.message
    );
    assert_eq!(
        done.signal,
        Some(9),
        "the kernel's SIGKILL ended the leader"
    );
    let out = String::from_utf8_lossy(&done.stdout_tail).into_owned();
    assert!(!out.contains("survived"), "{out}");
    let line = memory_cgroup(&out).unwrap_or_else(|| panic!("no memory cgroup in {out:?}"));
    let name = task_cgroup_of(line);
    let cgroups = host
        .isolation()
        .and_then(|i| i.cgroups.clone())
        .expect("cgroups are in use");
    println!(
        "cgroup {:?}, scopes {:?}",
        cgroups.version(),
        cgroups.scopes()
    );
    for scope in cgroups.scopes() {
        let procs = std::fs::read_to_string(scope.join(name).join("cgroup.procs")).unwrap();
        assert!(procs.is_empty(), "nothing of the task is left: {procs:?}");
    }

    // The next task with the same limits gets the emptied cgroup, and is
    // not blamed for the kill its predecessor counted there.
    fake.send(
        "n1",
        run_with(sh("cat /proc/self/cgroup"), epoch, 64 << 20, "next"),
    )
    .await;
    let next = final_report(&mut fake, "next").await;
    assert_eq!(
        next.state,
        TaskState::Succeeded as i32,
        "{:?}",
        next.message
    );
    let out = String::from_utf8_lossy(&next.stdout_tail).into_owned();
    let line = memory_cgroup(&out).unwrap_or_else(|| panic!("no memory cgroup in {out:?}"));
    assert_eq!(task_cgroup_of(line), name, "the cgroup was reused");

    host.shutdown().await;
    for scope in cgroups.scopes() {
        assert!(
            !scope.exists(),
            "the agent's scope and its kept cgroups go at shutdown"
        );
    }
}

/// The name of the task cgroup in a `/proc/self/cgroup` line, checked to
/// be one of the agent's under its scope.
fn task_cgroup_of(line: &str) -> &str {
    let (scope, name) = line.rsplit_once('/').unwrap();
    assert!(
        scope.contains("/meridian-n1-") && name.starts_with("task-"),
        "the task ran in a task cgroup under the agent's scope: {line}"
    );
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cgroup_of_a_task_running_as_root_is_removed_not_reused() {
    // `--run-as-root`: the agent (root, as cgroups need) keeps its user.
    let (mut fake, host, _work, epoch) = node(IsolationOptions {
        run_as: RunAs::AgentUser,
        ..with_cgroups(1024)
    })
    .await;
    let cgroups = host
        .isolation()
        .and_then(|i| i.cgroups.clone())
        .expect("cgroups are in use");
    let mut seen = Vec::new();
    for job in ["first", "second"] {
        fake.send(
            "n1",
            run_with(sh("cat /proc/self/cgroup"), epoch, 64 << 20, job),
        )
        .await;
        let done = final_report(&mut fake, job).await;
        assert_eq!(done.state, TaskState::Succeeded as i32);
        let out = String::from_utf8_lossy(&done.stdout_tail).into_owned();
        let line = memory_cgroup(&out).unwrap_or_else(|| panic!("no memory cgroup in {out:?}"));
        let name = task_cgroup_of(line).to_string();
        for scope in cgroups.scopes() {
            assert!(!scope.join(&name).exists(), "{name} is removed");
        }
        seen.push(name);
    }
    assert_ne!(seen[0], seen[1], "each root task got a new cgroup");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_pids_limit_and_nothing_of_it_outlives_the_task() {
    let (mut fake, host, work, epoch) = node(with_cgroups(64)).await;
    // Each child leaves the task's process group (setsid): only the cgroup
    // still knows them when the shell ends.
    let script = "for i in $(seq 1 5000); do setsid sleep 300 & echo $! >> pids; done; wait";
    fake.send("n1", run_with(sh(script), epoch, 0, "bomb"))
        .await;
    let done = final_report(&mut fake, "bomb").await;
    let stderr = String::from_utf8_lossy(&done.stderr_tail).to_lowercase();
    assert!(stderr.contains("fork"), "the task saw fork fail: {stderr}");
    assert_eq!(done.state, TaskState::Failed as i32);
    let pids: Vec<i32> = std::fs::read_to_string(work.path().join("tasks/bomb/0-1/work/pids"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    println!("{} children were started", pids.len());
    assert!(
        !pids.is_empty() && pids.len() < 64,
        "stopped at the limit: {}",
        pids.len()
    );
    let alive: Vec<i32> = pids.into_iter().filter(|p| is_running(*p)).collect();
    assert!(
        alive.is_empty(),
        "still running after the report: {alive:?}"
    );

    // The agent and the node are fine: the next task runs normally.
    fake.send("n1", run_with(sh("echo fine"), epoch, 0, "after"))
        .await;
    let after = final_report(&mut fake, "after").await;
    assert_eq!(after.state, TaskState::Succeeded as i32);
    assert_eq!(after.stdout_tail, b"fine\n");
    host.shutdown().await;
}

/// The user a task of this test's agent gets by default.
fn default_task_user() -> User {
    if Uid::effective().is_root() {
        User::from_name(DEFAULT_TASK_USER).unwrap().unwrap()
    } else {
        User::from_uid(Uid::effective()).unwrap().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_task_creates_and_its_output_belong_to_the_run_as_user() {
    let (mut fake, host, work, epoch) = node(IsolationOptions::default()).await;
    let user = default_task_user();
    fake.send(
        "n1",
        run_with(
            sh("touch made && id -u && echo noted >&2"),
            epoch,
            0,
            "files",
        ),
    )
    .await;
    let done = final_report(&mut fake, "files").await;
    assert_eq!(done.state, TaskState::Succeeded as i32);
    assert_eq!(done.stdout_tail, format!("{}\n", user.uid).into_bytes());
    let attempt_dir = work.path().join("tasks/files/0-1");
    for file in ["work/made", "work", "stdout", "stderr"] {
        let meta = std::fs::metadata(attempt_dir.join(file)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (user.uid.as_raw(), user.gid.as_raw()),
            "{file} belongs to {}",
            user.name
        );
    }
    host.shutdown().await;
}

/// Set in the copy of this test binary that runs as an unprivileged user.
const AS_AGENT_USER: &str = "MERIDIAN_TEST_UNPRIVILEGED_AGENT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_of_a_non_root_agent_runs_as_the_agents_user_and_another_user_is_refused() {
    if Uid::effective().is_root() {
        // Run this very test again as `nobody`: the agent must not be root.
        use std::os::unix::process::CommandExt;
        let nobody = User::from_name(DEFAULT_TASK_USER).unwrap().unwrap();
        let name = "a_task_of_a_non_root_agent_runs_as_the_agents_user_and_another_user_is_refused";
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env(AS_AGENT_USER, "1")
                .current_dir("/")
                .uid(nobody.uid.as_raw())
                .gid(nobody.gid.as_raw())
                .status()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(status.success(), "the unprivileged copy failed: {status}");
        return;
    }
    let me = Uid::effective();
    let (mut fake, host, _work, epoch) = node(IsolationOptions::default()).await;
    fake.send("n1", run_with(sh("id -u"), epoch, 0, "mine"))
        .await;
    let done = final_report(&mut fake, "mine").await;
    assert_eq!(done.state, TaskState::Succeeded as i32);
    assert_eq!(done.stdout_tail, format!("{me}\n").into_bytes());
    host.shutdown().await;

    let own = User::from_uid(me).unwrap().unwrap().name;
    let other = if own == "daemon" { "bin" } else { "daemon" };
    for (run_as, says) in [
        (
            RunAs::User(other.into()),
            "cannot switch tasks to another user",
        ),
        (RunAs::AgentUser, "cannot run as root"),
    ] {
        let fake = FakeRegion::start(SystemClock::shared(), FakeOptions::default()).await;
        let work = tempfile::tempdir().unwrap();
        let opts = AgentOptions {
            work_dir: Some(work.path().to_path_buf()),
            isolation: IsolationOptions {
                run_as: run_as.clone(),
                ..IsolationOptions::default()
            },
            ..AgentOptions::default()
        };
        let refused = Host::real(
            &fake.url(),
            real_node("n1"),
            opts,
            SystemClock::shared(),
            Arc::new(Probe::default()),
        )
        .await;
        match refused {
            Ok(_) => panic!("{run_as:?} accepted by an agent running as uid {me}"),
            Err(e) => assert!(e.to_string().contains(says), "{run_as:?}: {e}"),
        }
    }
}
