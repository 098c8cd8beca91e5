//! `meridian load <scenario> --quick` as a real process, one test per
//! scenario: each must finish successfully (no invariant of docs/architecture.md violated) and write its JSON report with an empty list of
//! violations. Timings are never asserted. The scenarios start their own
//! federations of processes, so these tests run one at a time (a lock here,
//! and alone under nextest, see .config/nextest.toml).

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs the quick scenario and returns its parsed JSON report.
fn quick(scenario: &str) -> serde_json::Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["load", scenario, "--quick", "--seed", "7", "--out"])
        .arg(out.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running meridian load");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "meridian load {scenario} --quick failed ({}) after {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status,
        started.elapsed()
    );
    assert!(
        stdout.contains(&format!("meridian load {scenario}: no invariant violated")),
        "{stdout}"
    );
    let json = std::fs::read_to_string(out.path().join(format!("load-{scenario}.json")))
        .expect("the JSON report");
    let report: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(report["scenario"], scenario);
    assert_eq!(report["quick"], true);
    assert_eq!(report["violations"], serde_json::json!([]));
    assert!(out.path().join(format!("load-{scenario}.md")).exists());
    let svg =
        std::fs::read_to_string(out.path().join(format!("load-{scenario}.svg"))).expect("svg");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    // A guard against a scenario that no longer fits CI, far above its
    // usual time so a slow machine never fails it.
    assert!(started.elapsed() < Duration::from_secs(240));
    report
}

#[test]
fn quick_submit_acknowledges_distinct_jobs_that_read_back_and_dedupe() {
    let r = quick("submit");
    assert_eq!(r["security"], "tls+auth", "{r}");
    assert!(
        r["results"]["acknowledged_jobs"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    assert!(
        r["results"]["jobs_read_back_and_resubmitted"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{r}"
    );
}

#[test]
fn quick_e2e_sees_every_acknowledged_job_running() {
    let r = quick("e2e");
    assert!(
        r["results"]["acknowledged"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    assert_eq!(
        r["results"]["submit_to_running"]["count"], r["results"]["acknowledged"],
        "{r}"
    );
}

#[test]
fn quick_placement_binds_tasks_without_overcommitting_a_node() {
    let r = quick("placement");
    assert!(r["results"]["bindings"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn quick_scale_brings_every_region_s_nodes_up_and_runs_the_churn() {
    let r = quick("scale");
    assert_eq!(r["results"]["nodes_ready"], 400, "{r}");
    assert!(
        r["results"]["acknowledged"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
}

#[test]
fn quick_failover_recovers_from_killed_leaders_without_duplicate_placements() {
    let r = quick("failover");
    assert_eq!(r["results"]["duplicate_placements"], 0, "{r}");
    assert!(
        r["results"]["global_failovers"].as_u64().unwrap_or(0) >= 1,
        "{r}"
    );
}

#[test]
fn quick_herd_hears_from_every_node_again_after_the_region_outage() {
    let r = quick("herd");
    assert!(
        r["results"]["return_after_kill"]["count"]
            .as_u64()
            .unwrap_or(0)
            == 300,
        "{r}"
    );
}

#[test]
fn quick_history_measures_an_empty_and_a_filled_store_in_the_same_run() {
    let r = quick("history");
    assert_eq!(r["params"]["finished_jobs"], 20_000, "{r}");
    for store in ["empty", "full"] {
        assert!(
            r["results"][format!("submit_jobs_per_s_{store}")]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0,
            "{r}"
        );
        assert_eq!(
            r["results"][format!("list_pending_first_page_{store}")]["count"],
            400,
            "{r}"
        );
    }
}

#[test]
fn quick_array_completes_with_its_parallelism_never_exceeded_in_the_region_records() {
    let r = quick("array");
    assert_eq!(r["results"]["final_state"], "JOB_STATE_SUCCEEDED", "{r}");
    let most = r["results"]["most_bound_in_region_records"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let cap = r["params"]["parallelism"].as_u64().unwrap_or(0);
    assert!(
        most > 0 && most <= cap,
        "{most} bound at once, cap {cap}: {r}"
    );
    assert!(
        r["results"]["region_record_reads"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
}

#[test]
fn compare_insecure_runs_both_modes_in_one_pair_and_reports_their_ratio() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "load",
            "submit",
            "--quick",
            "--seed",
            "7",
            "--duration",
            "1",
        ])
        .args(["--compare-insecure", "--pairs", "1", "--out"])
        .arg(out.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running meridian load");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );
    assert!(
        stdout.contains("meridian load submit: no invariant violated"),
        "{stdout}"
    );
    let json = std::fs::read_to_string(out.path().join("load-submit-vs-insecure.json"))
        .expect("the comparison's JSON");
    let c: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let runs = c["runs"].as_array().expect("runs");
    let modes: Vec<&str> = runs
        .iter()
        .map(|r| r["security"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(modes, ["tls+auth", "insecure"], "{c}");
    for r in runs {
        assert_eq!(r["report"]["security"], r["security"], "{r}");
        assert!(
            r["report"]["results"]["acknowledged_jobs"]
                .as_u64()
                .unwrap_or(0)
                > 0,
            "the {} run acknowledged no job: {r}",
            r["security"]
        );
    }
    // Both modes answered, so both rates are figures and their ratio is one.
    let unary = &c["figures"]["unary_jobs_per_s"]["pairs"][0];
    assert!(unary["ratio"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
    assert_eq!(c["violations"], serde_json::json!([]));
    let md = std::fs::read_to_string(out.path().join("load-submit-vs-insecure.md"))
        .expect("the comparison's page");
    assert!(md.contains("| 2 | 1 | insecure |"), "{md}");
}
