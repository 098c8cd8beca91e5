//! Starting a child process for a test and ending it with the test.
//!
//! Owns the one way the multi-process tests spawn a program: stdout piped
//! and read until every expected marker line appeared (a process says it is
//! up; nothing waits by sleeping), then drained on a thread so the child
//! never blocks on a full pipe; and [`Proc`], which ends the child when the
//! test ends, passing or failing, so no test leaves a process behind.
//! What to run is not decided here: `meridian` command lines come from
//! `meridian_cli::dev::line`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long a process stopped with SIGINT by [`Proc`]'s drop gets to exit
/// (an agent stops its tasks, a server flushes its spans) before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(20);
/// Failure guard of [`Proc::interrupt`]: a stop that takes this long hangs.
const INTERRUPT_GUARD: Duration = Duration::from_secs(90);
/// Interval of the exit polls while a process stops.
const POLL: Duration = Duration::from_millis(25);

/// Where a child's standard error goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stderr {
    /// The test's own: a failing process's complaint shows in the test output.
    Inherit,
    /// Discarded: a noisy program (a browser driver) would drown the test's.
    Null,
    /// Kept line by line for the test to search ([`Proc::logged`]).
    Capture,
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
}

impl Launch {
    /// The `meridian` binary under test with `args`.
    pub fn meridian(args: Vec<String>) -> Launch {
        Launch::program(env!("CARGO_BIN_EXE_meridian"), args)
    }

    /// `program` with `args`. By default: `RUST_LOG=warn` (the tests read
    /// stdout; logs go to stderr and only warnings are worth seeing),
    /// stderr inherited, same process group, SIGKILLed when dropped.
    pub fn program(program: &str, args: Vec<String>) -> Launch {
        Launch {
            program: program.into(),
            args,
            env: vec![("RUST_LOG".into(), "warn".into())],
            env_remove: Vec::new(),
            stderr: Stderr::Inherit,
            group: false,
            stop: Stop::Kill,
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

    /// Removes a variable inherited from the test's environment (variables
    /// set with [`Launch::env`] still apply).
    pub fn env_remove(mut self, key: &str) -> Launch {
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

    /// Starts it and reads its stdout until every one of `markers` appeared
    /// in a line; returns what follows each marker's first appearance on its
    /// line (trimmed), in the order of `markers`.
    pub fn start(self, markers: &[&str]) -> (Proc, Vec<String>) {
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
            Stderr::Capture => Stdio::piped(),
        });
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {} {:?}: {e}", self.program, self.args));
        let log = child.stderr.take().map(capture);
        // Owned by the Proc from here on, so a failing wait below still ends
        // the child.
        let stdout = child.stdout.take().expect("stdout is piped");
        let proc = Proc {
            child,
            group: self.group,
            stop: self.stop,
            log,
        };
        let mut lines = BufReader::new(stdout).lines();
        let mut found: Vec<Option<String>> = vec![None; markers.len()];
        while found.iter().any(Option::is_none) {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("{} ended before printing {markers:?}", self.program))
                .expect("read stdout");
            for (i, marker) in markers.iter().enumerate() {
                if found[i].is_none()
                    && let Some(at) = line.find(marker)
                {
                    found[i] = Some(line[at + marker.len()..].trim().to_string());
                }
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (proc, found.into_iter().flatten().collect())
    }
}

/// Collects the lines of a child's stderr as they come.
fn capture(stderr: std::process::ChildStderr) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().expect("log lock").push(line);
        }
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
    log: Option<Arc<Mutex<Vec<String>>>>,
}

impl Proc {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits an i32"))
    }

    /// Whether it has exited (and has been reaped).
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
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
    /// fails the test if it does not stop.
    pub fn interrupt(&mut self) {
        if self.exited() {
            return;
        }
        let _ = kill(self.pid(), Signal::SIGINT);
        let start = Instant::now();
        while !self.exited() {
            assert!(
                start.elapsed() < INTERRUPT_GUARD,
                "the process did not stop"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Whether a captured stderr line contains every one of `parts` (never,
    /// unless launched with [`Stderr::Capture`]).
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log.as_ref().is_some_and(|log| {
            log.lock()
                .expect("log lock")
                .iter()
                .any(|l| parts.iter().all(|p| l.contains(p)))
        })
    }

    /// The captured stderr so far, for a failure message.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .map(|log| log.lock().expect("log lock").join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stop == Stop::Interrupt && !self.exited() {
            let _ = kill(self.pid(), Signal::SIGINT);
            let deadline = Instant::now() + DROP_GRACE;
            while Instant::now() < deadline {
                if self.exited() {
                    return;
                }
                std::thread::sleep(POLL);
            }
        }
        self.kill_now();
    }
}
