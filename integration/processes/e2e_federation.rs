//! The whole federation end to end, as `meridian dev` runs it: real global
//! replicas, region replicas and agents (simulated and real-process) as
//! separate OS processes on loopback ports, driven through the `meridian`
//! CLI and the Federation gRPC API, every link over mutual TLS with the
//! certificates dev made, the CLI finding them as a user's would.
//!
//! Nothing here sleeps to wait for a condition: readiness is the line
//! `meridian dev` prints, and `job submit --wait` follows the job itself.
//! The tests take one lock so that two federations never share the
//! machine's cores.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

/// Failure guard only: no step waits this long when things work.
const GUARD: Duration = Duration::from_secs(120);

/// One federation at a time on the machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running `meridian dev`, stopped with SIGINT (then waited for) when
/// dropped, so a failing test leaves no process behind.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}

/// Starts `meridian dev` with small sizes and returns it with the endpoint
/// list of its ready line.
fn start_dev(data: &Path, base_port: u16, regions: u16, simulated_nodes: u32) -> (Dev, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("dev")
        .arg("--data-dir")
        .arg(data)
        .args(["--base-port", &base_port.to_string()])
        .args(["--regions", &regions.to_string()])
        .args(["--simulated-nodes", &simulated_nodes.to_string()])
        .args(["--shards", "2", "--grace-secs", "5"])
        // The production path: mutual TLS with dev's own PKI.
        .env_remove("MERIDIAN_INSECURE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start meridian dev");
    let stdout = child.stdout.take().expect("stdout");
    let dev = Dev(child);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + GUARD;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("meridian dev printed its ready line in time");
        if let Some(endpoints) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("MERIDIAN_ENDPOINT="))
        {
            // Keep draining stdout so the supervisor never blocks on it.
            std::thread::spawn(move || for _ in rx {});
            return (dev, endpoints.to_string());
        }
    }
}

/// Runs the CLI in `workdir`, as a user in a second shell in the directory
/// `meridian dev` was started in: no endpoint, TLS material or token given,
/// all found through the client config dev wrote under `data/dev`. A run
/// that outlives the guard is killed and fails the test rather than
/// hanging it.
fn meridian(workdir: &Path, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .current_dir(workdir)
        .env_remove("MERIDIAN_ENDPOINT")
        .env_remove("MERIDIAN_DATA_DIR")
        .env_remove("MERIDIAN_CONFIG")
        .env_remove("MERIDIAN_INSECURE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run meridian");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(GUARD) {
        Ok(output) => output.expect("meridian output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("meridian {args:?} did not finish within {GUARD:?}");
        }
    }
}

#[test]
fn job_submit_wait_prints_what_a_real_task_wrote_and_nothing_for_a_silent_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    // Under data/dev, the default the CLI looks in.
    let (_dev, _endpoints) = start_dev(&dir.path().join("data/dev"), 12400, 2, 50);
    let started = Instant::now();
    let out = meridian(
        dir.path(),
        &[
            "job",
            "submit",
            "--wait",
            "--timeout-secs",
            "60",
            "--",
            "echo",
            "hello",
        ],
    );
    assert!(
        out.status.success(),
        "submit --wait failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    println!(
        "echo hello: submitted and printed in {} ms",
        started.elapsed().as_millis()
    );
    // A task that writes nothing has no stored output: nothing to print, and
    // nothing to warn about.
    let out = meridian(
        dir.path(),
        &[
            "job",
            "submit",
            "--wait",
            "--timeout-secs",
            "60",
            "--",
            "true",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "submit --wait -- true failed: {stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(!stderr.contains("warning"), "unexpected warning: {stderr}");
}
