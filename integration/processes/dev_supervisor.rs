//! `meridian dev` as a user runs it: a federation of separate processes
//! that announces its endpoints once every child is serving, restarts a
//! child that dies, keeps its data across restarts, and stops every child
//! on SIGINT.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Failure guard only: every step waits for a line or an exit, never for time.
const GUARD: Duration = Duration::from_secs(90);

/// A running `meridian dev` with its output as line streams.
struct Dev {
    child: Option<Child>,
    out: Receiver<String>,
    err: Receiver<String>,
}

fn lines(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A base port below the ephemeral range, different per test process.
fn base_port(salt: u32) -> u16 {
    (10_000 + (std::process::id() % 35 + salt * 35) * 300) as u16
}

impl Dev {
    fn start(data: &Path, base: u16) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["dev", "--data-dir"])
            .arg(data)
            .args([
                "--base-port",
                &base.to_string(),
                "--regions",
                "1",
                "--simulated-nodes",
                "5",
                "--grace-secs",
                "10",
            ])
            .env_remove("RUST_LOG")
            .env_remove("MERIDIAN_INSECURE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start meridian dev");
        let out = lines(child.stdout.take().expect("stdout"));
        let err = lines(child.stderr.take().expect("stderr"));
        Dev {
            child: Some(child),
            out,
            err,
        }
    }

    /// Waits for a stdout line starting with `prefix`, returning the lines seen.
    fn until_out(&self, prefix: &str) -> Vec<String> {
        until(&self.out, prefix)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().map(Child::id).unwrap_or_default() as i32)
    }

    /// Sends SIGINT and waits for the exit.
    fn interrupt(mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGINT).expect("SIGINT");
        let (tx, rx) = channel();
        let mut child = self.child.take().expect("running");
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        rx.recv_timeout(GUARD)
            .expect("meridian dev did not stop")
            .expect("wait")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn until(rx: &Receiver<String>, prefix: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(GUARD)
            .unwrap_or_else(|e| panic!("no line {prefix:?} ({e}); saw {seen:#?}"));
        let done = line.starts_with(prefix);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// Direct children of `parent`, from /proc.
fn children(parent: Pid) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(parent.as_raw()) {
            out.push(pid);
        }
    }
    out
}

/// Whether `pid` is still a process running on `data` (not a reused pid).
fn alive_on(pid: i32, data: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*data.to_string_lossy()))
        .unwrap_or(false)
}

/// Runs the CLI against `endpoint` with what `meridian dev` wrote in its
/// data directory `data` (the client config: its CA and the CLI's
/// certificate).
fn meridian(endpoint: &str, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .env("MERIDIAN_ENDPOINT", endpoint)
        .env("MERIDIAN_DATA_DIR", data)
        .env_remove("MERIDIAN_CONFIG")
        .env_remove("MERIDIAN_INSECURE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run meridian")
}

fn endpoint_of(ready: &str) -> String {
    ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("MERIDIAN_ENDPOINT="))
        .expect("endpoint in the ready line")
        .to_string()
}

#[test]
fn dev_prints_endpoints_restarts_a_killed_child_and_stops_every_child_on_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("dev");
    let base = base_port(0);
    let dev = Dev::start(&data, base);
    let lines = dev.until_out("meridian dev: ready");
    let text = lines.join("\n");
    for name in ["global-1", "global-2", "us-east-1", "us-east-2"] {
        assert!(
            text.contains(&format!("meridian dev: {name} grpc=https://127.0.0.1:")),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "global-1 grpc=https://127.0.0.1:{base} http=https://"
        )),
        "{text}"
    );
    // The federation overview and every region replica's console.
    assert_eq!(text.matches("/console").count(), 4, "{text}");
    let endpoint = endpoint_of(lines.last().expect("ready line"));
    // Mutual TLS by default: the consoles are https, the CLI is told
    // where its material is.
    assert_eq!(text.matches("console=https://").count(), 4, "{text}");
    assert!(text.contains("client.toml"), "{text}");
    let regions = meridian(&endpoint, &data, &["region", "list"]);
    assert!(regions.status.success(), "{regions:?}");

    // 2 global + 2 region replicas + simulated agent + real agent.
    let kids = children(dev.pid());
    assert_eq!(kids.len(), 6, "{kids:?}");

    // A region replica killed with SIGKILL is reported and started again.
    let victim = kids
        .iter()
        .copied()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("us-east-2"))
                .unwrap_or(false)
        })
        .expect("the us-east-2 process");
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("SIGKILL");
    let report = until(&dev.err, "meridian dev: us-east-2 restarted").join("\n");
    assert!(report.contains("us-east-2 exited unexpectedly"), "{report}");

    let kids = children(dev.pid());
    assert_eq!(kids.len(), 6, "{kids:?}");
    let status = dev.interrupt();
    assert!(status.success(), "{status:?}");
    let left: Vec<i32> = kids.into_iter().filter(|p| alive_on(*p, &data)).collect();
    assert!(left.is_empty(), "children left running: {left:?}");
}

#[test]
fn dev_restarted_on_the_same_data_dir_keeps_the_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("dev");
    let base = base_port(1);
    let dev = Dev::start(&data, base);
    let endpoint = endpoint_of(dev.until_out("meridian dev: ready").last().expect("ready"));
    let submitted = meridian(&endpoint, &data, &["job", "submit", "--simulate", "1"]);
    assert!(submitted.status.success(), "{submitted:?}");
    let id = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string();
    assert!(dev.interrupt().success());

    let dev = Dev::start(&data, base);
    let again = endpoint_of(dev.until_out("meridian dev: ready").last().expect("ready"));
    assert_eq!(again, endpoint, "ports are deterministic");
    let got = meridian(&endpoint, &data, &["job", "get", &id, "-o", "json"]);
    assert!(got.status.success(), "{got:?}");
    let job: serde_json::Value = serde_json::from_slice(&got.stdout).expect("json");
    assert_eq!(job["job_id"], id.as_str());
    assert!(dev.interrupt().success());
}
