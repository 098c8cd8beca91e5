//! A whole `meridian dev` federation started for a test, as a user starts
//! it: [`DevLaunch`] holds the flags the tests differ in, [`Dev`] what dev
//! printed once every child was serving (the endpoint list of its ready
//! line, each replica's addresses, the data directory), its supervised
//! children found by name, the lines of its standard error, and the CLI
//! run with dev's client config and admin token.
//!
//! Owns reading what `meridian dev` prints; how the process is run and
//! ended is [`super::launch`]'s (SIGINT when the test ends, so dev stops
//! its children first). It must never wait by sleeping or polling: start-up
//! is the ready line read as it comes, a restart is the supervisor's line
//! on stderr, a CLI run is its exit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::unistd::Pid;

use super::launch::{Launch, Log, Proc, Stderr};

/// Failure guard of start-up, of a wait for a stderr line and of a CLI
/// run: nothing waits this long when things work.
pub const GUARD: Duration = Duration::from_secs(120);

/// What every line `meridian dev` prints about itself starts with.
const PREFIX: &str = "meridian dev: ";
/// The line dev prints once every child serves, with the endpoint list.
const READY: &str = "meridian dev: ready";
/// The word of the ready line that holds the endpoint list.
const ENDPOINT: &str = "MERIDIAN_ENDPOINT=";

/// A base port below the ephemeral range, apart from those of other test
/// processes running at the same time (by pid) and from the other bases
/// of one test process (by `salt`); each base leaves room for the 300
/// ports a federation of up to ten regions of up to ten replicas takes.
pub fn base_port_of_process(first: u16, salt: u32) -> u16 {
    let slot = std::process::id() % 35 + salt * 35;
    u16::try_from(u32::from(first) + slot * 300).expect("a base port below 65536")
}

/// The flags of a `meridian dev` a test starts; [`Dev::on`] makes one.
/// Unset sizes are dev's own defaults.
pub struct DevLaunch {
    data: PathBuf,
    /// `--flag value` pairs by flag, so a later setting replaces one.
    flags: BTreeMap<&'static str, String>,
    extra: Vec<String>,
    insecure: bool,
    /// Variables set (`Some`) or removed (`None`), applied in order.
    env: Vec<(String, Option<String>)>,
    stderr: Stderr,
}

impl DevLaunch {
    fn flag(mut self, flag: &'static str, value: impl ToString) -> DevLaunch {
        self.flags.insert(flag, value.to_string());
        self
    }

    pub fn regions(self, n: u16) -> DevLaunch {
        self.flag("--regions", n)
    }

    pub fn global_replicas(self, n: u16) -> DevLaunch {
        self.flag("--global-replicas", n)
    }

    /// Scheduler replicas per region.
    pub fn region_replicas(self, n: u16) -> DevLaunch {
        self.flag("--region-replicas", n)
    }

    /// Shards per region.
    pub fn shards(self, n: u32) -> DevLaunch {
        self.flag("--shards", n)
    }

    /// Simulated nodes per region (0: no simulated agent).
    pub fn simulated_nodes(self, n: u32) -> DevLaunch {
        self.flag("--simulated-nodes", n)
    }

    /// Real-process agents per region.
    pub fn real_agents(self, n: u32) -> DevLaunch {
        self.flag("--real-agents", n)
    }

    /// The first of dev's ports; the rest follow at fixed offsets, so the
    /// same base on the same data directory finds everything again.
    pub fn base_port(self, port: u16) -> DevLaunch {
        self.flag("--base-port", port)
    }

    /// Seconds a child gets to stop before dev kills it.
    pub fn grace_secs(self, secs: u64) -> DevLaunch {
        self.flag("--grace-secs", secs)
    }

    /// Further flags of `meridian dev`, after those set above.
    pub fn flags(mut self, flags: &[&str]) -> DevLaunch {
        self.extra.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// Every link in plain text and no tokens (`--insecure`), for tests
    /// that probe the replicas' pages over plain HTTP/1.1. Without it dev
    /// runs as a user runs it: mutual TLS with its own PKI, tokens checked.
    pub fn insecure(mut self) -> DevLaunch {
        self.insecure = true;
        self
    }

    /// An environment variable for dev and, through it, its children
    /// (`RUST_LOG` is `warn` unless set here).
    pub fn env(mut self, key: &str, value: &str) -> DevLaunch {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes a variable from dev's environment (and its children's),
    /// whether the test's or set before.
    pub fn env_remove(mut self, key: &str) -> DevLaunch {
        self.env.push((key.into(), None));
        self
    }

    /// Where dev's standard error goes; by default kept for
    /// [`Dev::stderr_through`] and copied to the test's.
    pub fn stderr(mut self, stderr: Stderr) -> DevLaunch {
        self.stderr = stderr;
        self
    }

    /// Starts it and reads its stdout until the ready line.
    pub fn start(self) -> Dev {
        let mut args: Vec<String> = vec!["dev".into(), "--data-dir".into()];
        args.push(self.data.display().to_string());
        for (flag, value) in &self.flags {
            args.extend([flag.to_string(), value.clone()]);
        }
        if self.insecure {
            args.push("--insecure".into());
        }
        args.extend(self.extra);
        // Launch's defaults are for roles started one by one; dev decides
        // its own security from the flag alone.
        let mut launch = Launch::meridian(args)
            .env_remove("MERIDIAN_INSECURE")
            .env_remove("MERIDIAN_NO_AUTH")
            .env_remove("MERIDIAN_DATA_DIR")
            .stderr(self.stderr)
            .interrupt_on_drop()
            .ready_within(GUARD);
        for (key, value) in &self.env {
            launch = match value {
                Some(value) => launch.env(key, value),
                None => launch.env_remove(key),
            };
        }
        let mut printed = Vec::new();
        let proc = launch.start_reading(|line| {
            printed.push(line.to_string());
            line.starts_with(READY)
        });
        let ready = printed.last().expect("the ready line");
        let endpoint = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(ENDPOINT))
            .unwrap_or_else(|| panic!("no {ENDPOINT} in {ready:?}"))
            .to_string();
        let children = printed.iter().filter_map(|l| addresses(l)).collect();
        Dev {
            proc,
            data: self.data,
            endpoint,
            children,
            printed,
            insecure: self.insecure,
            taken: Mutex::default(),
        }
    }
}

/// A child's name and addresses from a line of dev's stdout:
/// `meridian dev: NAME grpc=URL key=URL ...`.
fn addresses(line: &str) -> Option<(String, BTreeMap<String, String>)> {
    let mut words = line.strip_prefix(PREFIX)?.split_whitespace();
    let name = words.next()?;
    let pairs: BTreeMap<String, String> = words
        .map(|w| w.split_once('='))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs
        .contains_key("grpc")
        .then(|| (name.to_string(), pairs))
}

/// A running `meridian dev`, interrupted (SIGINT, then waited for) when
/// dropped, so a failing test leaves no process behind.
pub struct Dev {
    pub proc: Proc,
    /// The data directory it was started on.
    pub data: PathBuf,
    /// Comma-separated global gRPC endpoints, `MERIDIAN_ENDPOINT` of its
    /// ready line.
    pub endpoint: String,
    /// Addresses by child name (`global-1`, `us-east-2`, ...), key
    /// (`grpc`, `http`, `metrics`, `console`) -> URL, as printed.
    pub children: BTreeMap<String, BTreeMap<String, String>>,
    /// Every line of its stdout up to and including the ready line.
    pub printed: Vec<String>,
    insecure: bool,
    /// Indexes of stderr lines [`Dev::stderr_through`] has returned.
    taken: Mutex<BTreeSet<usize>>,
}

impl Dev {
    /// A `meridian dev` on the data directory `data`, to be configured.
    pub fn on(data: &Path) -> DevLaunch {
        DevLaunch {
            data: data.to_path_buf(),
            flags: BTreeMap::new(),
            extra: Vec::new(),
            insecure: false,
            env: Vec::new(),
            stderr: Stderr::Tee,
        }
    }

    pub fn pid(&self) -> Pid {
        self.proc.pid()
    }

    /// SIGINT, as an operator's Ctrl-C, then waits for dev to stop every
    /// child and exit; how it exited.
    pub fn interrupt(&mut self) -> ExitStatus {
        self.proc.interrupt()
    }

    /// The `key` address of child `name` (`grpc`, `http`, `metrics`,
    /// `console`).
    pub fn address(&self, name: &str, key: &str) -> String {
        self.children
            .get(name)
            .and_then(|c| c.get(key))
            .cloned()
            .unwrap_or_else(|| panic!("meridian dev printed no {key} address for {name}"))
    }

    /// Names of the global replicas.
    pub fn globals(&self) -> Vec<String> {
        self.children
            .keys()
            .filter(|n| n.starts_with("global-"))
            .cloned()
            .collect()
    }

    /// Names of the scheduler replicas of `region` (`us-east-1`, ...).
    pub fn region_replicas(&self, region: &str) -> Vec<String> {
        self.children
            .iter()
            .filter(|(n, c)| {
                n.strip_prefix(region)
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|i| i.parse::<u32>().is_ok())
                    && c.contains_key("metrics")
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Pids of dev's direct children now (a restarted child has a new one).
    pub fn child_pids(&self) -> Vec<i32> {
        let parent = self.pid().as_raw();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|&pid| parent_of(pid) == Some(parent))
            .collect()
    }

    /// The pid of the supervised child `name` now: a replica by its name,
    /// an agent by its node id (`us-east-node-1`).
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.child_pids().into_iter().find(|&pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.windows(2).any(|w| {
                matches!(w[0].as_str(), "--replica" | "--name" | "--node-id") && w[1] == name
            })
        })
    }

    /// Dev's standard error (launched with [`Stderr::Tee`] or
    /// [`Stderr::Capture`]).
    pub fn stderr(&self) -> Log {
        self.proc.log()
    }

    /// Waits for the first line of dev's standard error that `wanted`
    /// accepts and that no earlier call returned (two children may restart
    /// at once; each wait gets its own line); returns every line up to and
    /// including it. Panics after [`GUARD`], naming `what`.
    pub fn stderr_through(&self, what: &str, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut taken = self.taken.lock().expect("taken lines");
        let lines = self
            .stderr()
            .wait_line(what, GUARD, |i, l| !taken.contains(&i) && wanted(l))
            .unwrap_or_else(|e| panic!("{e}"));
        taken.insert(lines.len() - 1);
        lines
    }

    /// The CLI as a user in a second shell runs it against this
    /// federation: dev's endpoint, and dev's data directory, where the CLI
    /// finds the client config (CA, certificate) and the admin token.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_meridian"));
        command
            .args(args)
            .env("MERIDIAN_ENDPOINT", &self.endpoint)
            .env("MERIDIAN_DATA_DIR", &self.data)
            .env_remove("MERIDIAN_CONFIG")
            .env_remove("MERIDIAN_TOKEN")
            .env("RUST_LOG", "warn");
        if self.insecure {
            command.env("MERIDIAN_INSECURE", "1");
        } else {
            command.env_remove("MERIDIAN_INSECURE");
        }
        command
    }

    /// Runs the CLI with `args` (and `env`) to its end.
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        output_within(command, GUARD)
    }

    /// Runs the CLI with `args` to its end.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    /// Runs the CLI with `args`, fails the test unless it exits 0; its
    /// standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "meridian {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The parent pid of `pid`, from `/proc`; `None` when it is gone.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its ')' do not:
    // state, then the parent pid.
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `command` with its output captured; a run that outlives `guard` is
/// killed and fails the test rather than hanging it. The wait is the
/// child's exit, reported by the thread that reaps it.
pub fn output_within(mut command: Command, guard: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits an i32"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(guard) {
        Ok(output) => output.unwrap_or_else(|e| panic!("output of {command:?}: {e}")),
        Err(_) => {
            // Not reaped yet (its reaper is still waiting), so the pid is
            // still this child's.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("{command:?} did not finish within {guard:?}");
        }
    }
}
