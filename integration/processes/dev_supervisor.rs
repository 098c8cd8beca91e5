//! `meridian dev` as a user runs it: a federation of separate processes
//! that announces its endpoints once every child is serving, restarts a
//! child that dies, keeps its data across restarts, and stops every child
//! on SIGINT.

use crate::support;

use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::Dev;
use support::dev::base_port_of_process;

/// `meridian dev` as a user runs it, on `data`: mutual TLS (dev's own
/// PKI), one region, its output kept as lines for the test to read.
fn start(data: &Path, base: u16) -> Dev {
    Dev::on(data)
        .base_port(base)
        .regions(1)
        .simulated_nodes(5)
        .grace_secs(10)
        .env_remove("RUST_LOG")
        .start()
}

/// Whether `pid` is still a process running on `data` (not a reused pid).
fn alive_on(pid: i32, data: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*data.to_string_lossy()))
        .unwrap_or(false)
}

#[test]
fn dev_prints_endpoints_restarts_a_killed_child_and_stops_every_child_on_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("dev");
    let base = base_port_of_process(10_000, 0);
    let mut dev = start(&data, base);
    let text = dev.printed.join("\n");
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
    // Mutual TLS by default: the consoles are https, the CLI is told
    // where its material is.
    assert_eq!(text.matches("console=https://").count(), 4, "{text}");
    assert!(text.contains("client.toml"), "{text}");
    let regions = dev.run(&["region", "list"]);
    assert!(regions.status.success(), "{regions:?}");

    // 2 global + 2 region replicas + simulated agent + real agent.
    let kids = dev.child_pids();
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
    let report = dev
        .stderr_through("us-east-2 restarted", |l| {
            l.starts_with("meridian dev: us-east-2 restarted")
        })
        .join("\n");
    assert!(report.contains("us-east-2 exited unexpectedly"), "{report}");

    let kids = dev.child_pids();
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
    let base = base_port_of_process(10_000, 1);
    let mut dev = start(&data, base);
    let endpoint = dev.endpoint.clone();
    let submitted = dev.run(&["job", "submit", "--simulate", "1"]);
    assert!(submitted.status.success(), "{submitted:?}");
    let id = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .to_string();
    assert!(dev.interrupt().success());

    let mut dev = start(&data, base);
    let again = dev.endpoint.clone();
    assert_eq!(again, endpoint, "ports are deterministic");
    let got = dev.run(&["job", "get", &id, "-o", "json"]);
    assert!(got.status.success(), "{got:?}");
    let job: serde_json::Value = serde_json::from_slice(&got.stdout).expect("json");
    assert_eq!(job["job_id"], id.as_str());
    assert!(dev.interrupt().success());
}
