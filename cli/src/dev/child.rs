//! One supervised child process of `meridian dev`.
//!
//! Owns starting a child (the same binary, its own process group, output
//! appended to its log file), recognising readiness by a line it prints on
//! standard output, restarting it with backoff when it dies unexpectedly,
//! and stopping it: SIGTERM, then SIGKILL after the grace period. Must never
//! decide readiness by time: a child is ready when it says so (or, for a
//! child that announces nothing, once it runs).

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{CliError, Result};

/// Longest a child may take to announce itself before its start counts as
/// failed (a guard against a hung child, not a readiness wait).
const READY_GUARD: Duration = Duration::from_secs(60);
/// Lines of the log file shown when a child fails.
const TAIL_LINES: usize = 15;

/// What to run and how to know it is up.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Short unique name (`global-1`, `us-east-2`, `us-east-sim`).
    pub name: String,
    /// Arguments after the binary.
    pub args: Vec<String>,
    /// Prefix of the stdout line that says the child is serving; `None`
    /// for a child that announces nothing (it counts as up once started).
    pub ready: Option<&'static str>,
    /// Where its output goes.
    pub log: PathBuf,
}

/// The last lines of a log file, for error reports.
pub fn tail(path: &Path) -> String {
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    // Stack frames would push the error itself out of the tail.
    let frame = |l: &str| {
        let t = l.trim_start();
        t.starts_with("at ")
            || t.split_once(": ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .map_while(std::result::Result::ok)
        .filter(|l| !frame(l))
        .collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..]
        .iter()
        .map(|l| format!("    | {l}\n"))
        .collect()
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| CliError::other(format!("opening log {}: {e}", path.display())))
}

/// Starts the child and waits until it is ready; returns it with its
/// readiness line.
async fn start(exe: &Path, spec: &ChildSpec) -> Result<(Child, String)> {
    let log = open_log(&spec.log)?;
    let mut child = spawn(exe, spec, &log)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CliError::other(format!("{}: no stdout", spec.name)))?;
    let ready_rx = copy_output(stdout, log, spec.ready);
    tokio::select! {
        line = ready_rx => match line {
            Ok(line) => Ok((child, line)),
            Err(_) => {
                let status = child.wait().await.ok();
                Err(failed(spec, "closed its output before it was ready", status))
            }
        },
        status = child.wait() => Err(failed(spec, "exited before it was ready", status.ok())),
        () = tokio::time::sleep(READY_GUARD) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(failed(spec, &format!("was not ready after {} s", READY_GUARD.as_secs()), None))
        }
    }
}

/// Spawns the child in its own process group, standard error into `log`.
fn spawn(exe: &Path, spec: &ChildSpec, log: &std::fs::File) -> Result<Child> {
    let mut log = log;
    let _ = writeln!(
        log,
        "=== meridian dev: starting {} ({} {}) ===",
        spec.name,
        exe.display(),
        spec.args.join(" ")
    );
    let stderr = log
        .try_clone()
        .map_err(|e| CliError::other(format!("log {}: {e}", spec.log.display())))?;
    let mut command = Command::new(exe);
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        // Its own process group: a Ctrl-C in the terminal reaches only the
        // supervisor, which then stops the children in order.
        .process_group(0)
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one async-signal-safe system call (prctl).
    unsafe {
        command.pre_exec(|| {
            // If the supervisor dies without stopping its children, they
            // get SIGTERM rather than living on.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    command
        .spawn()
        .map_err(|e| CliError::other(format!("starting {}: {e}", spec.name)))
}

/// Copies the child's standard output into its log for the child's whole
/// life (so it never blocks on a full pipe); the receiver gets the first
/// line starting with `ready` (at once, empty, when there is no `ready`).
fn copy_output(
    stdout: tokio::process::ChildStdout,
    mut log: std::fs::File,
    ready: Option<&'static str>,
) -> oneshot::Receiver<String> {
    let (ready_tx, ready_rx) = oneshot::channel::<String>();
    let mut ready_tx = Some(ready_tx);
    if ready.is_none()
        && let Some(tx) = ready_tx.take()
    {
        let _ = tx.send(String::new());
    }
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(log, "{line}");
            if let Some(prefix) = ready
                && line.starts_with(prefix)
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(line);
            }
        }
    });
    ready_rx
}

fn failed(spec: &ChildSpec, what: &str, status: Option<ExitStatus>) -> CliError {
    let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
    CliError::other(format!(
        "{} {what}{status}; last lines of {}:\n{}",
        spec.name,
        spec.log.display(),
        tail(&spec.log)
    ))
}

/// Stops a child: SIGTERM, then SIGKILL if it is still there after `grace`.
async fn stop(name: &str, child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            eprintln!(
                "meridian dev: {name} did not stop within {} s; killing it",
                grace.as_secs()
            );
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// Resolves once `rx` turns true (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs one child until `stop_rx` turns true: reports the first start (its
/// readiness line, or why it failed) through `ready`, then restarts the
/// child with exponential backoff whenever it dies.
pub async fn supervise(
    exe: PathBuf,
    spec: ChildSpec,
    grace: Duration,
    mut stop_rx: watch::Receiver<bool>,
    ready: oneshot::Sender<Result<String>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            r = start(&exe, &spec) => r,
            () = stopped(&mut stop_rx) => return,
        };
        match outcome {
            Ok((mut child, line)) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Ok(line));
                } else {
                    eprintln!("meridian dev: {} restarted", spec.name);
                }
                tokio::select! {
                    status = child.wait() => {
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        eprintln!(
                            "meridian dev: {} exited unexpectedly ({status}); last lines of {}:\n{}",
                            spec.name,
                            spec.log.display(),
                            tail(&spec.log)
                        );
                    }
                    () = stopped(&mut stop_rx) => {
                        stop(&spec.name, &mut child, grace).await;
                        return;
                    }
                }
            }
            Err(e) => match ready.take() {
                Some(tx) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                None => eprintln!("meridian dev: restarting failed: {e}"),
            },
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        eprintln!(
            "meridian dev: restarting {} in {} ms",
            spec.name,
            backoff.as_millis()
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop_rx) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Starts `specs` one after the other, each once the previous one is ready
/// (so the first global replica is the first candidate for leader, and logs
/// read in a stable order), calling `on_ready` for each. Every child is
/// supervised until `stop` turns true. Returns the supervisors and, if a
/// child could not start, why; the ones started before it keep running
/// until `stop`.
pub async fn start_in_order<'a>(
    exe: &Path,
    specs: impl IntoIterator<Item = &'a ChildSpec>,
    grace: Duration,
    stop: &watch::Receiver<bool>,
    mut on_ready: impl FnMut(&ChildSpec),
) -> (Vec<JoinHandle<()>>, Result<()>) {
    let mut tasks = Vec::new();
    for spec in specs {
        let (tx, rx) = oneshot::channel();
        tasks.push(tokio::spawn(supervise(
            exe.to_path_buf(),
            spec.clone(),
            grace,
            stop.clone(),
            tx,
        )));
        match rx.await {
            Ok(Ok(_)) => on_ready(spec),
            Ok(Err(e)) => return (tasks, Err(e)),
            Err(_) => {
                let why = format!("{} was never started", spec.name);
                return (tasks, Err(CliError::other(why)));
            }
        }
    }
    (tasks, Ok(()))
}
