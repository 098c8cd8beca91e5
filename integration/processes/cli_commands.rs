//! The `meridian` client commands against real `meridian global` processes
//! on loopback ports: what they print, their JSON output, their exit codes
//! on bad input, and following the leader from a standby replica.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support;

use support::Global;

fn store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    (dir, url)
}

fn meridian(endpoint: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .env("MERIDIAN_ENDPOINT", endpoint)
        .env("MERIDIAN_INSECURE", "1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run meridian")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {o:?}\n{}", stderr(&o));
    stdout(&o)
}

#[test]
fn submit_prints_a_job_id_that_job_list_and_job_get_then_show() {
    let (_dir, url) = store();
    let g = Global::replica(&url, "g1");
    let id = ok(meridian(
        &g.grpc,
        &["job", "submit", "--simulate", "10", "--name", "nap"],
    ));
    let id = id.trim();
    assert!(
        id.starts_with('j') && !id.contains(char::is_whitespace),
        "{id:?}"
    );
    let list = ok(meridian(&g.grpc, &["job", "list"]));
    let row = list
        .lines()
        .find(|l| l.starts_with(id))
        .expect("job in list");
    assert!(row.contains("nap") && row.contains("PENDING"), "{row}");
    assert!(list.starts_with("JOB"), "{list}");
    let get = ok(meridian(&g.grpc, &["job", "get", id]));
    assert!(get.contains("simulated 10 ms"), "{get}");
}

#[test]
fn json_output_parses_and_carries_the_job() {
    let (_dir, url) = store();
    let g = Global::replica(&url, "g1");
    let submitted: Value = serde_json::from_str(&ok(meridian(
        &g.grpc,
        &[
            "job", "submit", "-o", "json", "--count", "3", "--label", "team=a", "--", "true",
        ],
    )))
    .expect("submit JSON");
    assert_eq!(submitted["created"], true);
    let id = submitted["job_id"].as_str().expect("job_id").to_string();
    let job: Value = serde_json::from_str(&ok(meridian(
        &g.grpc,
        &["job", "get", &id, "--output", "json"],
    )))
    .expect("get JSON");
    assert_eq!(job["job_id"], id.as_str());
    assert_eq!(job["state"], "JOB_STATE_PENDING");
    assert_eq!(job["spec"]["task_count"], 3);
    assert_eq!(job["spec"]["labels"]["team"], "a");
    assert_eq!(job["spec"]["task"]["command"]["program"], "true");
    let list: Value = serde_json::from_str(&ok(meridian(&g.grpc, &["job", "list", "-o", "json"])))
        .expect("list JSON");
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1));
}

#[test]
fn a_bad_spec_exits_non_zero_and_names_the_field() {
    let (_dir, url) = store();
    let g = Global::replica(&url, "g1");
    let o = meridian(
        &g.grpc,
        &["job", "submit", "--count", "0", "--simulate", "5"],
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(stderr(&o).contains("spec.task_count"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());

    let o = meridian(&g.grpc, &["job", "submit", "--cpu", "0", "--", "echo"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(
        stderr(&o).contains("spec.resources.cpu_millis"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, "name: x\ntask_cuont: 2\n").expect("write spec");
    let o = meridian(
        &g.grpc,
        &["job", "submit", "-f", &file.display().to_string()],
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(stderr(&o).contains("task_cuont"), "{}", stderr(&o));

    let list = ok(meridian(&g.grpc, &["job", "list", "-o", "json"]));
    assert!(!list.contains("job_id"), "nothing was created: {list}");
}

#[test]
fn a_spec_file_submits_like_flags_and_a_repeated_request_id_gives_the_same_job() {
    let (_dir, url) = store();
    let g = Global::replica(&url, "g1");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("job.toml");
    std::fs::write(
        &file,
        "name = \"batch\"\ntask_count = 2\n[task.simulated]\nduration_ms = 50\n",
    )
    .expect("write spec");
    let file = file.display().to_string();
    let args = ["job", "submit", "-f", &file, "--request-id", "req-1"];
    let first = ok(meridian(&g.grpc, &args));
    let second = ok(meridian(&g.grpc, &args));
    assert_eq!(first, second);
    let job: Value = serde_json::from_str(&ok(meridian(
        &g.grpc,
        &["job", "get", first.trim(), "-o", "json"],
    )))
    .expect("get JSON");
    assert_eq!(job["spec"]["name"], "batch");
    assert_eq!(job["request_id"], "req-1");
}

#[test]
fn region_list_works_and_an_unknown_job_or_region_is_not_found() {
    let (_dir, url) = store();
    let g = Global::replica(&url, "g1");
    let table = ok(meridian(&g.grpc, &["region", "list"]));
    assert!(table.starts_with("REGION"), "{table}");
    let json: Value =
        serde_json::from_str(&ok(meridian(&g.grpc, &["region", "list", "-o", "json"])))
            .expect("regions JSON");
    assert_eq!(json["regions"], Value::Array(vec![]));

    let o = meridian(&g.grpc, &["job", "get", "j-nope"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(stderr(&o).starts_with("error: not found"), "{}", stderr(&o));
    let o = meridian(&g.grpc, &["region", "drain", "atlantis"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
}

#[test]
fn submits_sent_to_either_replica_reach_the_leader() {
    let (_dir, url) = store();
    let a = Global::replica(&url, "g1");
    let b = Global::replica(&url, "g2");
    // One of the two is a standby: it answers UNAVAILABLE with the leader
    // hint, which the command follows with the same request id.
    let via_a = ok(meridian(
        &a.grpc,
        &["job", "submit", "--simulate", "1", "--request-id", "r-a"],
    ));
    let via_b = ok(meridian(
        &b.grpc,
        &["job", "submit", "--simulate", "1", "--request-id", "r-b"],
    ));
    assert_ne!(via_a.trim(), via_b.trim());
    let list = ok(meridian(&a.grpc, &["job", "list"]));
    assert!(
        list.contains(via_a.trim()) && list.contains(via_b.trim()),
        "{list}"
    );
}

#[test]
fn an_unreachable_endpoint_fails_with_the_unavailable_exit_code() {
    let o = meridian(
        "http://127.0.0.1:1",
        &["region", "list", "--timeout-secs", "1"],
    );
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(
        stderr(&o).contains("no global replica could serve"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(meridian("http://unused", &["completions", shell]));
        assert!(
            out.contains("submit") && out.contains("meridian"),
            "{shell}"
        );
    }
}
