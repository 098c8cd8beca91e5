//! Real processes: one child per attempt, leading its own process group.
//!
//! Owns spawning (program, args, a minimal environment plus the task's,
//! working directory), output capture to capped files, resource limits set
//! between fork and exec, and stopping: SIGTERM to the whole group, the grace
//! period on the agent's clock, then SIGKILL. After the leader exits the rest
//! of its group is killed too, so no descendant outlives its attempt.
//!
//! Must never: wait on the async runtime's threads for a process (all waits
//! are async), or signal a pid it cannot prove is still the same process.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use meridian_control::SharedClock;
use meridian_proto::v1::task_template::Kind;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::output::capture;
use super::simulated::SimulatedExecutor;
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
}

impl ProcessExecutor {
    pub fn new(
        clock: SharedClock,
        file_cap: u64,
        enforce_memory_limit: bool,
        cpu_time_limit: Option<Duration>,
    ) -> Self {
        ProcessExecutor {
            simulated: SimulatedExecutor::new(clock.clone(), None),
            clock,
            file_cap,
            enforce_memory_limit,
            cpu_time_limit,
        }
    }
}

/// Limits applied in the child between fork and exec.
#[derive(Debug, Clone, Copy)]
struct Limits {
    address_space: Option<u64>,
    cpu_seconds: Option<u64>,
}

impl Limits {
    /// Sets the limits of the running process `pid` (prlimit). Applied just
    /// after the spawn rather than in a forked child before exec: a
    /// `pre_exec` hook forces a full fork of the agent (copying its page
    /// tables costs more than the whole life of a short task), while
    /// without one the process is started with `posix_spawn` (vfork). The
    /// limits are in place microseconds after the process starts, before a
    /// dynamically linked program is done loading; a program could exceed
    /// them only in that window (task cgroups will close it).
    fn apply_to(self, pid: i32) -> std::io::Result<()> {
        let set = |resource, soft: u64, hard: u64| -> std::io::Result<()> {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: prlimit reads `limit` and writes nothing (old is
            // null); `pid` is our own child.
            let rc = unsafe { libc::prlimit(pid, resource, &limit, std::ptr::null_mut()) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        if let Some(bytes) = self.address_space {
            set(libc::RLIMIT_AS, bytes, bytes)?;
        }
        if let Some(secs) = self.cpu_seconds {
            // Soft limit sends SIGXCPU, the hard limit one second later SIGKILL.
            set(libc::RLIMIT_CPU, secs, secs.saturating_add(1))?;
        }
        set(libc::RLIMIT_CORE, 0, 0)
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
        let limits = Limits {
            address_space: (self.enforce_memory_limit && launch.resources.memory_bytes > 0)
                .then_some(launch.resources.memory_bytes),
            cpu_seconds: self.cpu_time_limit.map(|d| d.as_secs().max(1)),
        };
        let (control, stop_rx) = TaskControl::new();
        let clock = self.clock.clone();
        let cap = self.file_cap;
        let attempt = launch.attempt;
        let trace_id = launch.trace_id;
        // The directories and the spawn itself (the calling thread waits
        // until the program has been exec'd) happen on a blocking thread:
        // the node's loop goes on with its next command, and several
        // attempts start at once.
        tokio::spawn(async move {
            let spawn_attempt = attempt.clone();
            let spawned = tokio::task::spawn_blocking(move || {
                spawn(&cmd, &dir, &spawn_attempt, &trace_id, limits).map(|c| (c, dir))
            })
            .await
            .unwrap_or_else(|e| Err(LaunchError::Spawn(format!("spawn thread failed: {e}"))));
            let (child, ids, dir) = match spawned {
                Ok(((child, ids), dir)) => (child, ids, dir),
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
                process: ids,
            });
            let exit = run_to_exit(child, ids.pgid, &dir, cap, stop_rx, &clock).await;
            // The node loop may be gone (shutdown): nobody to tell.
            let _ = exits.send(TaskEvent::Exited(TaskExit { attempt, exit }));
        });
        Ok(Started {
            process: None,
            control,
            running: false,
        })
    }
}

/// Captures the process's output while it runs and waits for it to end:
/// the exit, with the tails of its output when the pipes closed in time.
async fn run_to_exit(
    mut child: tokio::process::Child,
    pgid: i32,
    dir: &Path,
    cap: u64,
    stop_rx: tokio::sync::oneshot::Receiver<Duration>,
    clock: &SharedClock,
) -> Exit {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = stdout.map(|s| tokio::spawn(capture(s, dir.join("stdout"), cap)));
    let err = stderr.map(|s| tokio::spawn(capture(s, dir.join("stderr"), cap)));
    let mut exit = supervise(child, pgid, stop_rx, clock).await;
    let drained = async {
        let o = match out {
            Some(h) => h.await.unwrap_or_default(),
            None => Tail::default(),
        };
        let e = match err {
            Some(h) => h.await.unwrap_or_default(),
            None => Tail::default(),
        };
        (o, e)
    };
    tokio::select! {
        (o, e) = drained => { exit.stdout = o; exit.stderr = e; }
        () = clock.sleep(OUTPUT_DRAIN_LIMIT) => {
            exit.message.push_str("; output pipes held open by an escaped descendant");
        }
    }
    exit
}

/// Creates the attempt's directories and starts its process, limited.
/// Blocks until the program has been exec'd.
fn spawn(
    cmd: &meridian_proto::v1::Command,
    dir: &std::path::Path,
    attempt: &meridian_proto::v1::TaskAttempt,
    trace_id: &str,
    limits: Limits,
) -> Result<(tokio::process::Child, ProcessIds), LaunchError> {
    let workdir = if cmd.working_dir.is_empty() {
        dir.join("work")
    } else {
        PathBuf::from(&cmd.working_dir)
    };
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::create_dir_all(&workdir))
        .map_err(|e| LaunchError::Spawn(format!("cannot create {}: {e}", workdir.display())))?;
    // Looked up here, in the task's own PATH: a program left to the spawn
    // to look up in a PATH that differs from the agent's makes the standard
    // library fall back from posix_spawn to a full fork.
    let path_var = cmd.env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    let program = resolve(&cmd.program, path_var, &workdir).ok_or_else(|| {
        LaunchError::Spawn(format!(
            "cannot start {:?}: not found in PATH {path_var}",
            cmd.program
        ))
    })?;
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&cmd.args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &workdir)
        .env(
            "MERIDIAN_TASK_ID",
            attempt
                .task
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        )
        .env("MERIDIAN_ATTEMPT", attempt.attempt.to_string())
        .env("MERIDIAN_TRACE_ID", trace_id)
        .envs(&cmd.env)
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = command
        .spawn()
        .map_err(|e| LaunchError::Spawn(format!("cannot start {:?}: {e}", cmd.program)))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| LaunchError::Spawn("child exited before its pid was read".into()))?;
    if let Err(e) = limits.apply_to(pid)
        && e.raw_os_error() != Some(libc::ESRCH)
    {
        // A process we cannot limit does not run.
        signal_group(pid, Signal::SIGKILL);
        return Err(LaunchError::Spawn(format!("cannot limit the process: {e}")));
    }
    let ids = ProcessIds {
        pid,
        pgid: pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
    };
    Ok((child, ids))
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
    mut child: tokio::process::Child,
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
