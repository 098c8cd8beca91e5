//! Real processes: one child per attempt, leading its own process group.
//!
//! Owns an attempt's start (program lookup, args, a minimal environment
//! plus the task's, working directory, resource limits, the task's
//! isolation from [`super::isolation`]; the child itself is
//! [`super::spawn`]'s), output capture to capped files,
//! and stopping: SIGTERM to the whole group, the grace period on the
//! agent's clock, then SIGKILL. After the leader exits the rest of its
//! group (and of its cgroup) is killed too, so no descendant outlives its
//! attempt; an attempt whose cgroup saw an OOM kill is reported so.
//!
//! Must never: wait on the async runtime's threads for a process (all waits
//! are async), or signal a pid it cannot prove is still the same process.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meridian_control::SharedClock;
use meridian_proto::v1::LogStream;
use meridian_proto::v1::task_template::Kind;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::cgroup::{TaskCgroup, TaskLimits};
use super::deadline::StartDeadline;
use super::isolation::{ChildSetup, Isolation, TOO_LATE_ERRNO};
use super::live::{AttemptOutput, LiveLogs, Ring};
use super::output::{Owner, Sink, capture};
use super::retention::InUse;
use super::simulated::SimulatedExecutor;
use super::spawn::{self, Process, Program, Spawned};
use super::{
    Executor, Exit, ExitTx, Launch, LaunchError, ProcessIds, Started, Tail, TaskControl, TaskEvent,
    TaskExit,
};

/// How long to wait for output pipes to close after the group was killed
/// (a descendant that left the group may hold them open).
const OUTPUT_DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// `PATH` of a task that does not set one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `Command` templates as child processes, and `Simulated` ones as
/// timers (no process, no files): the region may place a simulated task on
/// any node, real ones included.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    clock: SharedClock,
    simulated: SimulatedExecutor,
    file_cap: u64,
    enforce_memory_limit: bool,
    cpu_time_limit: Option<Duration>,
    isolation: Arc<Isolation>,
    /// Where the output of running attempts is kept for live followers;
    /// `None`: nobody follows, each capture keeps its tail privately.
    live: Option<Arc<LiveLogs>>,
    /// The attempt directories of running attempts, which the retention
    /// pass leaves alone.
    in_use: Arc<InUse>,
}

impl ProcessExecutor {
    pub fn new(
        clock: SharedClock,
        file_cap: u64,
        enforce_memory_limit: bool,
        cpu_time_limit: Option<Duration>,
        isolation: Arc<Isolation>,
    ) -> Self {
        ProcessExecutor {
            simulated: SimulatedExecutor::new(clock.clone(), None),
            clock,
            file_cap,
            enforce_memory_limit,
            cpu_time_limit,
            isolation,
            live: None,
            in_use: Arc::default(),
        }
    }

    /// The attempt directories this executor's running attempts use.
    pub fn in_use(&self) -> Arc<InUse> {
        self.in_use.clone()
    }

    /// Keeps each attempt's output in `live` while it runs, for followers.
    #[must_use]
    pub fn with_live_logs(mut self, live: Arc<LiveLogs>) -> Self {
        self.live = Some(live);
        self
    }
}

/// Rlimits the child sets on itself before exec.
#[derive(Debug, Clone, Copy)]
struct Limits {
    address_space: Option<u64>,
    cpu_seconds: Option<u64>,
}

impl Limits {
    /// `(resource, soft, hard)` of every limit to set.
    fn rlimits(self) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
        let mut out = Vec::new();
        if let Some(bytes) = self.address_space {
            out.push((libc::RLIMIT_AS, bytes, bytes));
        }
        if let Some(secs) = self.cpu_seconds {
            // Soft limit sends SIGXCPU, the hard limit one second later SIGKILL.
            out.push((libc::RLIMIT_CPU, secs, secs.saturating_add(1)));
        }
        out.push((libc::RLIMIT_CORE, 0, 0));
        out
    }
}

impl Executor for ProcessExecutor {
    fn launch(&self, launch: Launch, exits: ExitTx) -> Result<Started, LaunchError> {
        if matches!(launch.template.kind, Some(Kind::Simulated(_))) {
            return self.simulated.launch(launch, exits);
        }
        let cmd = match launch.template.kind {
            Some(Kind::Command(c)) => c,
            Some(Kind::Simulated(_)) => return Err(LaunchError::Unsupported("simulated")),
            None => return Err(LaunchError::NoKind),
        };
        if cmd.program.is_empty() {
            return Err(LaunchError::Spawn("command.program is empty".into()));
        }
        let dir = launch.dir.ok_or_else(|| {
            LaunchError::Spawn("no attempt directory (agent has no work dir)".into())
        })?;
        let memory = launch.resources.memory_bytes;
        let in_cgroup = self.isolation.cgroups.is_some();
        let limits = Limits {
            // A cgroup holds the task to its memory; an address-space limit
            // on top would make allocations fail long before (mappings
            // count, resident or not) instead of an OOM kill at the limit.
            address_space: (self.enforce_memory_limit && memory > 0 && !in_cgroup)
                .then_some(memory),
            cpu_seconds: self.cpu_time_limit.map(|d| d.as_secs().max(1)),
        };
        let task_limits = TaskLimits {
            memory_bytes: if self.enforce_memory_limit { memory } else { 0 },
            cpu_millis: launch.resources.cpu_millis,
            pids: self.isolation.pids_limit,
        };
        let held = self.in_use.hold(dir.clone());
        let (control, stop_rx) = TaskControl::new();
        let clock = self.clock.clone();
        let cap = self.file_cap;
        let attempt = launch.attempt;
        let trace_id = launch.trace_id;
        let start_by = launch.start_by;
        let isolation = self.isolation.clone();
        let live = self.live.clone();
        // The directories and the spawn itself (the calling thread waits
        // until the program has been exec'd) happen on a blocking thread:
        // the node's loop goes on with its next command, and several
        // attempts start at once.
        tokio::spawn(async move {
            let spawn_attempt = attempt.clone();
            let spawn_clock = clock.clone();
            let spawned = tokio::task::spawn_blocking(move || {
                let task = SpawnTask {
                    cmd: &cmd,
                    dir: &dir,
                    attempt: &spawn_attempt,
                    trace_id: &trace_id,
                    limits,
                    task_limits,
                    isolation: &isolation,
                    start_by: start_by.map(|by| (by, &spawn_clock)),
                };
                start_attempt(&task).map(|c| (c, dir, isolation))
            })
            .await
            .unwrap_or_else(|e| Err(LaunchError::Spawn(format!("spawn thread failed: {e}"))));
            let (child, dir, isolation) = match spawned {
                Ok(s) => s,
                Err(LaunchError::TooLate(why)) => {
                    let exit = Exit {
                        message: why,
                        not_started: true,
                        ..Exit::default()
                    };
                    let _ = exits.send(TaskEvent::Exited(TaskExit { attempt, exit }));
                    return;
                }
                Err(e) => {
                    let exit = Exit {
                        message: format!("could not start: {e}"),
                        ..Exit::default()
                    };
                    let _ = exits.send(TaskEvent::Exited(TaskExit { attempt, exit }));
                    return;
                }
            };
            let _ = exits.send(TaskEvent::Spawned {
                attempt: attempt.clone(),
                process: child.ids,
            });
            let owner = isolation.user.as_ref().map(|u| (u.uid, u.gid));
            let output = live.as_ref().map(|l| l.open(&attempt));
            let exit = run_to_exit(child, &dir, cap, owner, output.clone(), stop_rx, &clock).await;
            if let (Some(l), Some(o)) = (&live, &output) {
                // After the last bytes were captured (or given up on):
                // followers see the end only once nothing more can come.
                l.finish(&attempt, o);
            }
            // The node loop may be gone (shutdown): nobody to tell.
            let _ = exits.send(TaskEvent::Exited(TaskExit { attempt, exit }));
            drop(held);
        });
        Ok(Started {
            process: None,
            control,
            running: false,
        })
    }
}

/// A started attempt, not yet watched by the runtime: its process and
/// output pipes, and its cgroup when it has one.
struct Child {
    spawned: Spawned,
    ids: ProcessIds,
    cgroup: Option<TaskCgroup>,
}

/// Captures the process's output while it runs and waits for it to end:
/// the exit, with the tails of its output when the pipes closed in time.
/// Nothing of the task is left running when it returns.
async fn run_to_exit(
    child: Child,
    dir: &Path,
    cap: u64,
    owner: Owner,
    output: Option<Arc<AttemptOutput>>,
    stop_rx: tokio::sync::oneshot::Receiver<Duration>,
    clock: &SharedClock,
) -> Exit {
    let pgid = child.ids.pgid;
    let (process, stdout, stderr) = match Process::register(child.spawned) {
        Ok(p) => p,
        Err(e) => {
            // Killed with its group and reaped by `register`; whatever
            // left the group is still in the cgroup.
            if let Some(cg) = child.cgroup {
                cg.kill_until_empty().await;
                cg.remove().await;
            }
            return Exit {
                message: format!("cannot watch the process: {e}"),
                ..Exit::default()
            };
        }
    };
    let sink = |stream| match &output {
        Some(o) => Sink::Live(o.clone(), stream),
        None => Sink::Private(Ring::default()),
    };
    let (out_sink, err_sink) = (sink(LogStream::Stdout), sink(LogStream::Stderr));
    let out = tokio::spawn(capture(stdout, dir.join("stdout"), cap, owner, out_sink));
    let err = tokio::spawn(capture(stderr, dir.join("stderr"), cap, owner, err_sink));
    let mut exit = supervise(process, pgid, stop_rx, clock).await;
    let mut emptied = false;
    if let Some(cg) = &child.cgroup {
        // Whatever left the process group (setsid) is still in the cgroup.
        emptied = cg.kill_until_empty().await;
        if cg.oom_kills() > 0 {
            exit.oom_killed = true;
            let limit = cg.limits.memory_bytes;
            exit.message = if exit.message.is_empty() {
                oom_message(limit)
            } else {
                format!("{}; {}", oom_message(limit), exit.message)
            };
        }
    }
    let drained = async {
        let o: Tail = out.await.unwrap_or_default();
        let e: Tail = err.await.unwrap_or_default();
        (o, e)
    };
    tokio::select! {
        (o, e) = drained => { exit.stdout = o; exit.stderr = e; }
        () = clock.sleep(OUTPUT_DRAIN_LIMIT) => {
            exit.message.push_str("; output pipes held open by an escaped descendant");
        }
    }
    if let Some(cg) = child.cgroup {
        cg.finish(emptied).await;
    }
    exit
}

/// The report's words for an attempt the kernel OOM-killed.
fn oom_message(limit: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    let size = if limit.is_multiple_of(MIB) {
        format!("{} MiB", limit / MIB)
    } else {
        format!("{limit} bytes")
    };
    format!("OOM-killed: exceeded its memory limit of {size}")
}

/// Everything [`start_attempt`] needs about one attempt.
struct SpawnTask<'a> {
    cmd: &'a meridian_proto::v1::Command,
    dir: &'a Path,
    attempt: &'a meridian_proto::v1::TaskAttempt,
    trace_id: &'a str,
    limits: Limits,
    task_limits: TaskLimits,
    isolation: &'a Isolation,
    /// [`Launch::start_by`](super::Launch::start_by) and the clock it is on.
    start_by: Option<(meridian_control::Instant, &'a SharedClock)>,
}

/// Why an attempt that reached the spawn did not start.
const TOO_LATE: &str = "not started: its start deadline passed before the program ran (the agent was stopped or stalled; the region may have declared this node dead)";

/// Creates the attempt's directories (the default working directory owned
/// by the task's user) and its cgroup, and starts
/// its process, limited. Blocks until the program has been exec'd.
fn start_attempt(t: &SpawnTask<'_>) -> Result<Child, LaunchError> {
    let cmd = t.cmd;
    // Read on the spawning thread: the agent may have been stopped since
    // the node's loop checked it.
    let start_by = match t.start_by {
        Some((by, clock)) => {
            Some(StartDeadline::from_clock(by, clock).ok_or_else(|| too_late(TOO_LATE))?)
        }
        None => None,
    };
    let own_workdir = cmd.working_dir.is_empty();
    let workdir = if own_workdir {
        t.dir.join("work")
    } else {
        PathBuf::from(&cmd.working_dir)
    };
    // The default working directory is inside the attempt's: one call
    // makes both.
    (if own_workdir {
        Ok(())
    } else {
        std::fs::create_dir_all(t.dir)
    })
    .and_then(|()| std::fs::create_dir_all(&workdir))
    .map_err(|e| LaunchError::Spawn(format!("cannot create {}: {e}", workdir.display())))?;
    if let Some(u) = &t.isolation.user
        && own_workdir
    {
        // The task writes its own directory; one the task named is its own
        // business. Its output files are given to it as they are created
        // (`output::capture`).
        std::os::unix::fs::chown(&workdir, Some(u.uid), Some(u.gid)).map_err(|e| {
            LaunchError::Spawn(format!(
                "cannot give {} to {}: {e}",
                workdir.display(),
                u.name
            ))
        })?;
    }
    // Looked up here, in the task's own PATH: exec does not search one.
    let path_var = cmd.env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    let program = resolve(&cmd.program, path_var, &workdir).ok_or_else(|| {
        LaunchError::Spawn(format!(
            "cannot start {:?}: not found in PATH {path_var}",
            cmd.program
        ))
    })?;
    // The task's variables last: it may set its own PATH or HOME.
    let task_id = t.attempt.task.as_ref();
    let var = |k: &str, v: String| (OsString::from(k), OsString::from(v));
    let mut env = BTreeMap::from([
        var("PATH", DEFAULT_PATH.to_string()),
        (OsString::from("HOME"), workdir.clone().into_os_string()),
        var(
            "MERIDIAN_TASK_ID",
            task_id.map(ToString::to_string).unwrap_or_default(),
        ),
        var(
            "MERIDIAN_TASK_INDEX",
            task_id.map(|t| t.index.to_string()).unwrap_or_default(),
        ),
        var("MERIDIAN_ATTEMPT", t.attempt.attempt.to_string()),
        var("MERIDIAN_TRACE_ID", t.trace_id.to_string()),
    ]);
    env.extend(cmd.env.iter().map(|(k, v)| var(k, v.clone())));
    let program = Program::new(&program, &cmd.args, &env)
        .map_err(|e| LaunchError::Spawn(format!("cannot start {:?}: {e}", cmd.program)))?;
    // A task running as root could change its cgroup's limits or make
    // cgroups inside it: its cgroup is never given to another task. (A
    // task keeping the agent's own user has no `user` here.)
    let reusable = t.isolation.user.as_ref().is_some_and(|u| u.uid != 0);
    let mut cgroup = match &t.isolation.cgroups {
        Some(cgroups) => Some(
            cgroups
                .create_task(t.task_limits, reusable)
                .map_err(|e| LaunchError::Spawn(format!("cannot make its cgroup: {e}")))?,
        ),
        None => None,
    };
    // Everything the child does before exec, so that the program's first
    // instruction runs in its cgroup, under its limits, as its user.
    let mut setup = ChildSetup::new(&workdir)
        .map_err(|e| LaunchError::Spawn(format!("{}: {e}", workdir.display())))?;
    setup.cgroup_fds = cgroup
        .as_ref()
        .map(TaskCgroup::join_fds)
        .unwrap_or_default();
    setup.rlimits = t.limits.rlimits();
    setup.user = t.isolation.user.clone();
    setup.start_by = start_by;
    // The cgroup descriptors stay open until the spawn has returned
    // (`cgroup` outlives it).
    let spawned = match spawn::start(&program, &setup) {
        Ok(s) => s,
        Err(e) => {
            if let Some(cg) = &cgroup {
                // Nothing joined it: the directories are empty.
                for d in cg.dirs() {
                    let _ = std::fs::remove_dir(d);
                }
            }
            if e.raw_os_error() == Some(TOO_LATE_ERRNO) && start_by.is_some() {
                return Err(too_late(TOO_LATE));
            }
            return Err(LaunchError::Spawn(format!(
                "cannot start {:?}: {e}",
                cmd.program
            )));
        }
    };
    if let Some(cg) = cgroup.as_mut() {
        cg.close_join();
    }
    let pid = spawned.pid;
    let ids = ProcessIds {
        pid,
        pgid: pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
    };
    Ok(Child {
        spawned,
        ids,
        cgroup,
    })
}

fn too_late(why: &str) -> LaunchError {
    LaunchError::TooLate(why.into())
}

/// The file `program` names: itself when it has a slash (relative to the
/// task's working directory), otherwise the first executable file of that
/// name in `path_var`.
fn resolve(program: &str, path_var: &str, workdir: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        let p = PathBuf::from(program);
        return Some(if p.is_absolute() { p } else { workdir.join(p) });
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Waits for the child, handling a stop request; kills what is left of the
/// group afterwards.
async fn supervise(
    mut child: Process,
    pgid: i32,
    mut stop_rx: tokio::sync::oneshot::Receiver<Duration>,
    clock: &SharedClock,
) -> Exit {
    let mut message = String::new();
    let status = tokio::select! {
        s = child.wait() => s,
        grace = &mut stop_rx => match grace {
            Ok(grace) => {
                signal_group(pgid, Signal::SIGTERM);
                tokio::select! {
                    s = child.wait() => s,
                    () = clock.sleep(grace) => {
                        signal_group(pgid, Signal::SIGKILL);
                        message = format!("did not exit within the {grace:?} grace period: killed");
                        child.wait().await
                    }
                }
            }
            // The control was dropped without a stop: just wait.
            Err(_) => child.wait().await,
        },
    };
    // Descendants left in the group must not outlive the attempt.
    signal_group(pgid, Signal::SIGKILL);
    match status {
        Ok(s) => Exit {
            exit_code: s.code(),
            signal: s.signal(),
            message,
            ..Exit::default()
        },
        Err(e) => Exit {
            message: format!("cannot wait for the process: {e}"),
            ..Exit::default()
        },
    }
}

fn signal_group(pgid: i32, sig: Signal) {
    if let Err(e) = killpg(Pid::from_raw(pgid), sig)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid, signal = ?sig, error = %e, "cannot signal process group");
    }
}

/// Start time of `pid` in clock ticks since boot, from `/proc/PID/stat`.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True when `pid` exists and is not a zombie.
pub fn is_running(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        // No procfs: trust kill(0).
        Err(_) => true,
    }
}

/// What happened to a process group left by a previous agent boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Its leader was no longer running (or the pid now belongs to another
    /// process); nothing was signalled.
    AlreadyGone,
    /// It exited after SIGTERM.
    Terminated,
    /// It had to be killed with SIGKILL.
    Killed,
}

/// Stops the process group of a previous boot: SIGTERM, up to `grace`
/// (checking every 50 ms on `clock`), then SIGKILL. A pid whose start time no
/// longer matches is left alone (recycled).
pub async fn cleanup_previous(ids: ProcessIds, grace: Duration, clock: &SharedClock) -> Cleanup {
    let same = ids.start_ticks == 0 || start_ticks(ids.pid) == Some(ids.start_ticks);
    if !same || !is_running(ids.pid) {
        // The leader is gone, but descendants may remain in its group.
        if same {
            signal_group(ids.pgid, Signal::SIGKILL);
        }
        return Cleanup::AlreadyGone;
    }
    signal_group(ids.pgid, Signal::SIGTERM);
    let deadline = clock.now() + grace;
    while clock.now() < deadline {
        if !is_running(ids.pid) {
            signal_group(ids.pgid, Signal::SIGKILL);
            return Cleanup::Terminated;
        }
        clock.sleep(Duration::from_millis(50)).await;
    }
    signal_group(ids.pgid, Signal::SIGKILL);
    Cleanup::Killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_control::ManualClock;
    use meridian_proto::v1::{Command, Resources, TaskAttempt, TaskId, TaskTemplate};

    fn touch(marker: &Path) -> Launch {
        Launch {
            attempt: TaskAttempt {
                task: Some(TaskId {
                    job_id: "late".into(),
                    index: 0,
                }),
                assignment_epoch: 1,
                attempt: 1,
            },
            template: TaskTemplate {
                kind: Some(Kind::Command(Command {
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), format!("touch {}", marker.display())],
                    env: Default::default(),
                    working_dir: String::new(),
                })),
            },
            resources: Resources::default(),
            dir: marker.parent().map(|d| d.join("attempt")),
            trace_id: String::new(),
            start_by: None,
        }
    }

    /// The agent is stopped after its node's loop admitted a RUN and
    /// resumes past the RUN's start deadline before the spawning thread
    /// runs: the executor must not start the program.
    #[tokio::test]
    async fn an_attempt_whose_start_deadline_passed_before_its_spawn_is_not_started() {
        let manual = ManualClock::new();
        let clock: SharedClock = Arc::new(manual.clone());
        let executor = ProcessExecutor::new(
            clock.clone(),
            1 << 20,
            false,
            None,
            Arc::new(Isolation::none()),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("ran");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();

        let mut late = touch(&marker);
        late.start_by = Some(clock.now() + Duration::from_secs(5));
        // The node admitted it with 5 s to spare; the agent then lost 5 s.
        manual.advance(Duration::from_secs(5));
        let started = executor.launch(late, tx.clone()).expect("launch");
        assert!(!started.running);
        match rx.recv().await.expect("an event") {
            TaskEvent::Exited(e) => {
                assert!(e.exit.not_started, "{:?}", e.exit);
                assert!(
                    e.exit.message.starts_with("not started"),
                    "{}",
                    e.exit.message
                );
            }
            TaskEvent::Spawned { .. } => panic!("a late attempt was spawned"),
        }
        assert!(!marker.exists(), "the program ran");

        let mut in_time = touch(&marker);
        in_time.start_by = Some(clock.now() + Duration::from_secs(3600));
        executor.launch(in_time, tx).expect("launch");
        assert!(matches!(rx.recv().await, Some(TaskEvent::Spawned { .. })));
        match rx.recv().await.expect("an exit") {
            TaskEvent::Exited(e) => assert_eq!(e.exit.exit_code, Some(0), "{:?}", e.exit),
            TaskEvent::Spawned { .. } => panic!("spawned twice"),
        }
        assert!(marker.exists(), "the program in time ran");
    }

    #[test]
    fn a_bare_name_is_found_in_the_tasks_path_and_a_path_is_kept() {
        let dir = std::path::Path::new("/tmp");
        assert_eq!(
            resolve("sh", "/nonexistent:/bin:/usr/bin", dir)
                .and_then(|p| p.file_name().map(|f| f.to_owned())),
            Some("sh".into())
        );
        assert_eq!(resolve("no-such-program-here", "/bin:/usr/bin", dir), None);
        assert_eq!(resolve("./run.sh", "/bin", dir), Some(dir.join("./run.sh")));
        assert_eq!(resolve("/bin/sh", "", dir), Some(PathBuf::from("/bin/sh")));
    }
}
