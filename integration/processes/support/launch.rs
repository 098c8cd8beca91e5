//! Starting a child process for a test and ending it with the test.
//!
//! Owns the one way the multi-process tests spawn a program: stdout piped
//! and read until every expected marker line appeared, or until a caller
//! that reads each line itself has seen what it waits for (a process says
//! it is up; nothing waits by sleeping), then drained on a thread so the
//! child never blocks on a full pipe; and [`Proc`], which ends the child
//! when the test ends, passing or failing, so no test leaves a process
//! behind. A stopping child is awaited on its pidfd ([`super::wait`]), a
//! captured log line on a condition variable the reading thread signals.
//! What to run is not decided here: `meridian` command lines come from
//! `meridian_cli::dev::line`.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long a process stopped with SIGINT by [`Proc`]'s drop gets to exit
/// (an agent stops its tasks, a server flushes its spans) before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(20);
/// Failure guard of [`Proc::interrupt`]: a stop that takes this long hangs.
const INTERRUPT_GUARD: Duration = Duration::from_secs(90);

/// Where a child's standard error goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stderr {
    /// The test's own: a failing process's complaint shows in the test output.
    Inherit,
    /// Discarded: a noisy program (a browser driver) would drown the test's.
    Null,
    /// Kept line by line for the test to search ([`Proc::logged`]).
    Capture,
    /// Kept as with [`Stderr::Capture`], and also copied to the test's own
    /// standard error line by line, so a failing test shows it.
    Tee,
}

/// How dropping a [`Proc`] ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// SIGKILL at once.
    Kill,
    /// SIGINT, so it shuts down as an operator's Ctrl-C would; SIGKILL if it
    /// lingers past [`DROP_GRACE`].
    Interrupt,
}

/// A program to start, with how to run it and how to end it.
pub struct Launch {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
    stderr: Stderr,
    group: bool,
    stop: Stop,
    /// How long the lines a start waits for may take; unbounded when none.
    ready_within: Option<Duration>,
}

impl Launch {
    /// The `meridian` binary under test with `args`.
    pub fn meridian(args: Vec<String>) -> Launch {
        Launch::program(env!("CARGO_BIN_EXE_meridian"), args)
    }

    /// `program` with `args`. By default: `RUST_LOG=warn` (the tests read
    /// stdout; logs go to stderr and only warnings are worth seeing),
    /// `MERIDIAN_INSECURE=1` (the roles these tests start one by one talk
    /// plain text to each other and to the tests' own clients; the
    /// production path, mutual TLS, is what `meridian dev` runs and what
    /// `e2e_federation`, `dev_supervisor` and `tls_links` test) and
    /// `MERIDIAN_NO_AUTH=1` (a global replica they start serves their
    /// clients without tokens; tokens and roles are tested against real
    /// servers in `global/tests/access.rs`),
    /// stderr inherited, same process group, SIGKILLed when dropped.
    pub fn program(program: &str, args: Vec<String>) -> Launch {
        Launch {
            program: program.into(),
            args,
            env: vec![
                ("RUST_LOG".into(), "warn".into()),
                ("MERIDIAN_INSECURE".into(), "1".into()),
                ("MERIDIAN_NO_AUTH".into(), "1".into()),
            ],
            env_remove: Vec::new(),
            stderr: Stderr::Inherit,
            group: false,
            stop: Stop::Kill,
            ready_within: None,
        }
    }

    /// Sets an environment variable (a later one wins, so `RUST_LOG` may be
    /// overridden).
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs(self, vars: &[(&str, &str)]) -> Launch {
        vars.iter().fold(self, |l, (k, v)| l.env(k, v))
    }

    /// Removes a variable: the one inherited from the test's environment
    /// and any set on this launch so far, a default included (one set with
    /// [`Launch::env`] afterwards applies again).
    pub fn env_remove(mut self, key: &str) -> Launch {
        self.env.retain(|(k, _)| k != key);
        self.env_remove.push(key.into());
        self
    }

    pub fn stderr(mut self, stderr: Stderr) -> Launch {
        self.stderr = stderr;
        self
    }

    /// Starts it in its own process group and SIGKILLs the whole group when
    /// dropped, so what it started (a browser a driver launched) goes too.
    pub fn own_group(mut self) -> Launch {
        self.group = true;
        self
    }

    /// Ends it with SIGINT when dropped (SIGKILL if it lingers).
    pub fn interrupt_on_drop(mut self) -> Launch {
        self.stop = Stop::Interrupt;
        self
    }

    /// Fails the start when the lines it waits for have not all come within
    /// `guard` (a failure guard: a process that is up returns at once).
    pub fn ready_within(mut self, guard: Duration) -> Launch {
        self.ready_within = Some(guard);
        self
    }

    /// Starts it and reads its stdout until every one of `markers` appeared
    /// in a line; returns what follows each marker's first appearance on its
    /// line (trimmed), in the order of `markers`. With no markers it counts
    /// as started once spawned.
    pub fn start(self, markers: &[&str]) -> (Proc, Vec<String>) {
        if markers.is_empty() {
            let (proc, stdout) = self.spawn();
            std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
            return (proc, Vec::new());
        }
        let mut found: Vec<Option<String>> = vec![None; markers.len()];
        let proc = self.start_reading(|line| {
            for (i, marker) in markers.iter().enumerate() {
                if found[i].is_none()
                    && let Some(at) = line.find(marker)
                {
                    found[i] = Some(line[at + marker.len()..].trim().to_string());
                }
            }
            found.iter().all(Option::is_some)
        });
        (proc, found.into_iter().flatten().collect())
    }

    /// Starts it and hands each line of its stdout, as it comes, to `each`
    /// until `each` says it has seen what it waits for (true): for a
    /// program whose up lines carry more than markers can pick out (a whole
    /// federation's addresses, line by line).
    pub fn start_reading(self, mut each: impl FnMut(&str) -> bool) -> Proc {
        let what = format!("{} {:?}", self.program, self.args);
        let deadline = self.ready_within.map(|guard| Instant::now() + guard);
        let (proc, stdout) = self.spawn();
        let (tx, rx) = channel();
        // Reads on after the start returned (its receiver gone, the sends
        // fail), so the child never blocks on a full pipe; a line that is
        // not UTF-8 is read lossily rather than taken for the end.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line);
                let _ = tx.send(line.trim_end_matches('\r').to_string());
            }
        });
        loop {
            let line = match deadline {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match line {
                Ok(line) if each(&line) => return proc,
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("{what} ended before it was up"),
                Err(RecvTimeoutError::Timeout) => panic!("{what}: not up within its guard"),
            }
        }
    }

    /// Spawns it; its stdout is the caller's to read.
    fn spawn(self) -> (Proc, ChildStdout) {
        let mut command = Command::new(&self.program);
        if self.group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        command.args(&self.args);
        for key in &self.env_remove {
            command.env_remove(key);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.stdout(Stdio::piped()).stderr(match self.stderr {
            Stderr::Inherit => Stdio::inherit(),
            Stderr::Null => Stdio::null(),
            Stderr::Capture | Stderr::Tee => Stdio::piped(),
        });
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {} {:?}: {e}", self.program, self.args));
        let tee = self.stderr == Stderr::Tee;
        let log = child.stderr.take().map(|stderr| capture(stderr, tee));
        let stdout = child.stdout.take().expect("stdout is piped");
        // Owned by the Proc from here on, so a failing wait for its lines
        // still ends the child.
        let proc = Proc {
            child,
            group: self.group,
            stop: self.stop,
            log,
            status: None,
        };
        (proc, stdout)
    }
}

/// A child's captured stderr: its lines so far, and whether it has ended.
#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    ended: bool,
}

/// A captured stderr that can be waited on: the reading thread signals
/// `grew` at every line and at the end.
#[derive(Default)]
struct LogInner {
    state: Mutex<Lines>,
    grew: Condvar,
}

/// A handle to a child's captured stderr, for a test (or a blocking task)
/// to wait for a line.
#[derive(Clone, Default)]
pub struct Log(Arc<LogInner>);

impl Log {
    /// Whether a line so far contains every one of `parts`.
    pub fn contains(&self, parts: &[&str]) -> bool {
        let st = self.0.state.lock().expect("log lock");
        st.lines.iter().any(|l| parts.iter().all(|p| l.contains(p)))
    }

    /// Every line so far, for a failure message.
    pub fn text(&self) -> String {
        self.0.state.lock().expect("log lock").lines.join("\n")
    }

    /// Blocks until a line contains every one of `parts`; `Err` with the
    /// log so far when the stream ends or `guard` passes first. Woken by
    /// each new line, never by a timer.
    pub fn wait_for(&self, parts: &[&str], guard: Duration) -> Result<(), String> {
        self.wait_line(&format!("with {parts:?}"), guard, |_, l| {
            parts.iter().all(|p| l.contains(p))
        })
        .map(|_| ())
    }

    /// Blocks until a line is one `wanted` accepts (given the line's index
    /// in the log, so a caller can pass over lines an earlier wait took);
    /// returns every line up to and including it. `Err` naming `what`, with
    /// the log so far, when the stream ends or `guard` passes first. Woken
    /// by each new line, never by a timer.
    pub fn wait_line(
        &self,
        what: &str,
        guard: Duration,
        mut wanted: impl FnMut(usize, &str) -> bool,
    ) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + guard;
        let mut st = self.0.state.lock().expect("log lock");
        let mut seen = 0;
        loop {
            if let Some(at) = (seen..st.lines.len()).find(|&i| wanted(i, &st.lines[i])) {
                return Ok(st.lines[..=at].to_vec());
            }
            seen = st.lines.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if st.ended || left.is_zero() {
                let why = if st.ended {
                    "the log ended"
                } else {
                    "guard passed"
                };
                return Err(format!(
                    "no log line {what} ({why} after {guard:?}); log:\n{}",
                    st.lines.join("\n")
                ));
            }
            st = self.0.grew.wait_timeout(st, left).expect("log lock").0;
        }
    }

    /// [`Log::wait_for`] from async code, on a blocking thread.
    pub async fn until(&self, parts: &[&str], guard: Duration) -> Result<(), String> {
        let log = self.clone();
        let parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
            log.wait_for(&parts, guard)
        })
        .await
        .expect("the log wait ran")
    }
}

/// Collects the lines of a child's stderr as they come; with `tee`, each
/// is also written to the test's own standard error.
fn capture(stderr: std::process::ChildStderr, tee: bool) -> Log {
    let log = Log::default();
    let sink = log.0.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tee {
                eprintln!("{line}");
            }
            sink.state.lock().expect("log lock").lines.push(line);
            sink.grew.notify_all();
        }
        sink.state.lock().expect("log lock").ended = true;
        sink.grew.notify_all();
    });
    log
}

/// A started child, ended when dropped (a failing test leaves nothing):
/// SIGKILL, or SIGINT first when it was launched with
/// [`Launch::interrupt_on_drop`].
pub struct Proc {
    child: Child,
    group: bool,
    stop: Stop,
    log: Option<Log>,
    /// How it exited, once reaped.
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits an i32"))
    }

    /// Whether it has exited (and has been reaped).
    fn exited(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.status = Some(status);
                true
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Waits for its exit on its pidfd, up to `within`, and reaps it; true
    /// when it exited. The child is not reaped before, so its pid cannot
    /// have been reused.
    fn exits_within(&mut self, within: Duration) -> bool {
        if self.exited() {
            return true;
        }
        let Some(fd) = super::wait::pidfd(self.pid().as_raw()) else {
            return self.exited();
        };
        super::wait::exited_within(&fd, within) && self.exited()
    }

    /// SIGKILL (its whole group when it has its own), and reap it.
    pub fn kill_now(&mut self) {
        if self.group {
            let _ = killpg(self.pid(), Signal::SIGKILL);
        }
        // Never signals a child already reaped, whose pid may be reused.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGINT, then waits for the exit (a server flushes its spans first);
    /// fails the test if it does not stop. Returns how it exited.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.stop_with(Signal::SIGINT)
    }

    /// `signal` (a stop signal), then waits for the exit as
    /// [`Proc::interrupt`] does.
    pub fn stop_with(&mut self, signal: Signal) -> ExitStatus {
        if !self.exited() {
            let _ = kill(self.pid(), signal);
            assert!(
                self.exits_within(INTERRUPT_GUARD),
                "the process did not stop within {INTERRUPT_GUARD:?}"
            );
        }
        self.status.expect("the exit status of the reaped process")
    }

    /// Whether a captured stderr line contains every one of `parts` (never,
    /// unless launched with [`Stderr::Capture`]).
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log.as_ref().is_some_and(|log| log.contains(parts))
    }

    /// The captured stderr so far, for a failure message.
    pub fn log_text(&self) -> String {
        self.log.as_ref().map(Log::text).unwrap_or_default()
    }

    /// Its captured stderr, to wait on (launched with [`Stderr::Capture`]).
    pub fn log(&self) -> Log {
        self.log
            .clone()
            .expect("the process was launched with Stderr::Capture")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stop == Stop::Interrupt && !self.exited() {
            let _ = kill(self.pid(), Signal::SIGINT);
            if self.exits_within(DROP_GRACE) {
                return;
            }
        }
        self.kill_now();
    }
}
