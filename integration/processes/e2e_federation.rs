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

use crate::support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Instant;

use support::Dev;
use support::dev::{GUARD, output_within};

/// One federation at a time on the machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Starts `meridian dev` with small sizes, over mutual TLS with dev's own
/// PKI (the production path).
fn start_dev(data: &Path, base_port: u16, regions: u16, simulated_nodes: u32) -> Dev {
    Dev::on(data)
        .base_port(base_port)
        .regions(regions)
        .simulated_nodes(simulated_nodes)
        .shards(2)
        .grace_secs(5)
        .start()
}

/// Runs the CLI in `workdir`, as a user in a second shell in the directory
/// `meridian dev` was started in: no endpoint, TLS material or token given,
/// all found through the client config dev wrote under `data/dev`. A run
/// that outlives the guard is killed and fails the test rather than
/// hanging it.
fn meridian(workdir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meridian"));
    command
        .args(args)
        .current_dir(workdir)
        .env_remove("MERIDIAN_ENDPOINT")
        .env_remove("MERIDIAN_DATA_DIR")
        .env_remove("MERIDIAN_CONFIG")
        .env_remove("MERIDIAN_INSECURE");
    output_within(command, GUARD)
}

#[test]
fn job_submit_wait_prints_what_a_real_task_wrote_and_nothing_for_a_silent_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    // Under data/dev, the default the CLI looks in.
    let _dev = start_dev(&dir.path().join("data/dev"), 12400, 2, 50);
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
