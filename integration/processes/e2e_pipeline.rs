//! A pipeline of dependent jobs on a whole federation of processes
//! (`meridian dev`: global replicas, region replicas, real-process agents),
//! driven only through the `meridian` CLI: three steps submitted at once,
//! each `--after-ok` the one before, run in order on real agents; when the
//! first step fails, the later ones end FAILED with a reason naming it and
//! never run. Every step appends its name to one file, the ground truth of
//! what ran and in which order.
//!
//! The first step waits for a file the test creates (the task polls for it,
//! the test does not), so the test can hold and release the second step
//! while it is certainly still queued. Nothing in the test sleeps: `job
//! submit --wait` and `job watch` follow the jobs themselves.

use crate::federation;

use std::path::Path;
use std::process::Output;

use federation::{Dev, Sizes, file_for_tasks};

/// Runs the CLI against `dev` as tenant `e2e`; a run that outlives the
/// guard is killed and fails the test rather than hanging it.
fn meridian(dev: &Dev, args: &[&str]) -> Output {
    dev.run_with(args, &[("MERIDIAN_TENANT", "e2e")])
}

/// Runs the CLI and returns its standard output, failing the test unless
/// it exits 0.
fn ok(dev: &Dev, args: &[&str]) -> String {
    let out = meridian(dev, args);
    assert!(
        out.status.success(),
        "meridian {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Submits one step: `sh -c script` after the jobs in `after` succeeded;
/// returns the job id.
fn step(dev: &Dev, name: &str, after: &[&str], script: &str) -> String {
    let deps = after.join(",");
    let mut args = vec!["job", "submit", "--name", name, "--max-attempts", "1"];
    if !after.is_empty() {
        args.extend(["--after-ok", &deps]);
    }
    args.extend(["--constraint", "real=true", "--", "/bin/sh", "-c", script]);
    ok(dev, &args)
}

/// The job as `job get -o json` shows it.
fn job(dev: &Dev, id: &str) -> serde_json::Value {
    serde_json::from_str(&ok(dev, &["job", "get", id, "-o", "json"])).expect("job JSON")
}

fn ran(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .expect("the steps' file")
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_pipeline_runs_in_order_on_real_agents_and_when_its_first_step_fails_the_later_steps_fail_naming_it()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(
        &dir.path().join("dev"),
        Sizes {
            regions: 1,
            shards: 1,
            simulated_nodes: 0,
            base_port: 18100,
        },
    );
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("work directory");
    let file = file_for_tasks(&work, "ran");
    let go = work.join("go");
    let (file_s, go_s) = (file.display().to_string(), go.display().to_string());

    // Three steps submitted at once; A starts only once the test says so.
    let a = step(
        &dev,
        "a",
        &[],
        &format!("while [ ! -e {go_s} ]; do sleep 0.05; done; echo a >> {file_s}"),
    );
    let b = step(&dev, "b", &[&a], &format!("echo b >> {file_s}"));
    let c = step(&dev, "c", &[&b], &format!("echo c >> {file_s}"));
    let shown = ok(&dev, &["job", "get", &b]);
    assert!(
        shown.contains(&format!("depends on  after_ok {a}")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("waiting     waits for job {a} to succeed")),
        "{shown}"
    );
    // B is held while certainly queued (A cannot have finished), so A's
    // success leaves it pending until it is released.
    let held = ok(&dev, &["job", "hold", &b, "--reason", "checking the data"]);
    assert_eq!(held, format!("{b} held (PENDING: held)"));
    let raised = ok(&dev, &["job", "set-priority", &b, "-5"]);
    assert_eq!(raised, format!("{b} priority -5 (PENDING: held)"));
    std::fs::write(&go, b"").expect("let A start");
    ok(&dev, &["job", "watch", &a]);
    let after_a = job(&dev, &b);
    assert_eq!(after_a["state"], "JOB_STATE_PENDING");
    assert_eq!(after_a["waiting_reason"], "held");
    assert_eq!(after_a["priority"], -5);
    // A job that ran can no longer be held: the CLI says why and fails.
    let late = meridian(&dev, &["job", "hold", &a]);
    assert!(!late.status.success());
    let said = String::from_utf8_lossy(&late.stderr);
    assert!(said.contains(&format!("job {a} is SUCCEEDED")), "{said}");
    assert_eq!(ran(&file), ["a"]);
    ok(&dev, &["job", "release", &b]);
    // Follows C until it ends (B, released, runs first).
    let out = meridian(&dev, &["job", "watch", &c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in [&a, &b, &c] {
        assert_eq!(job(&dev, id)["state"], "JOB_STATE_SUCCEEDED", "{id}");
    }
    assert_eq!(
        ran(&file),
        ["a", "b", "c"],
        "each step after the one before"
    );

    // The same pipeline whose first step fails: the others never run. C is
    // submitted with `--wait`, which follows it until it ends and exits
    // non-zero with its failure.
    let failing = file_for_tasks(&work, "ran-failing");
    let failing_s = failing.display().to_string();
    let a = step(&dev, "a", &[], &format!("echo a >> {failing_s}; exit 3"));
    let b = step(&dev, "b", &[&a], &format!("echo b >> {failing_s}"));
    let c_args = [
        "job",
        "submit",
        "--name",
        "c",
        "--wait",
        "--after-ok",
        &b,
        "--constraint",
        "real=true",
        "--",
        "/bin/sh",
        "-c",
        &format!("echo c >> {failing_s}"),
    ];
    let out = meridian(&dev, &c_args);
    assert!(!out.status.success(), "C cannot succeed");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("ended FAILED"), "{said}");
    assert!(said.contains(&a), "C's failure names A: {said}");
    let a_job = job(&dev, &a);
    assert_eq!(a_job["state"], "JOB_STATE_FAILED");
    let b_job = job(&dev, &b);
    assert_eq!(b_job["state"], "JOB_STATE_FAILED");
    let reason = b_job["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("dependency {a} (after_ok) ended FAILED")),
        "{reason}"
    );
    assert!(b_job.get("region").is_none(), "B was never routed: {b_job}");
    assert_eq!(ran(&failing), ["a"], "B and C never ran");
}
