//! Tokens, roles and the audit log through the real `meridian` binary: a
//! `meridian global` process started with a bootstrap token file, and the
//! CLI's `token`, `job` and `audit` commands against it, each call
//! presenting its token through `MERIDIAN_TOKEN`.

use std::process::{Command, Output};

use meridian_cli::dev::line::{GlobalLine, LOOPBACK_ANY_PORT};
use serde_json::Value;

use crate::support;

use support::Global;

fn meridian(endpoint: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meridian"));
    command
        .args(args)
        .env("MERIDIAN_ENDPOINT", endpoint)
        .env("MERIDIAN_INSECURE", "1")
        .env("RUST_LOG", "warn")
        // No meridian dev token of the machine's may stand in.
        .env("MERIDIAN_DATA_DIR", "/nonexistent")
        .env_remove("MERIDIAN_TOKEN");
    if let Some(token) = token {
        command.env("MERIDIAN_TOKEN", token);
    }
    command.output().expect("run meridian")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {o:?}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: Output, says: &str) {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "succeeded: {o:?}");
    assert!(err.contains(says), "{err}");
}

/// A created token: its id and the token itself (the last line printed).
fn create(endpoint: &str, admin: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let out = ok(meridian(endpoint, Some(admin), &all));
    let token = out.lines().last().expect("a token line").trim().to_string();
    let id = token.split('_').nth(1).expect("an id").to_string();
    (id, token)
}

#[test]
fn roles_hold_and_every_change_and_refusal_is_in_meridian_audit_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let admin = ok(meridian("http://127.0.0.1:1", None, &["token", "generate"]))
        .trim()
        .to_string();
    let file = dir.path().join("admin.token");
    std::fs::write(&file, format!("{admin}\n")).expect("token file");
    let mut line = GlobalLine::new(url, LOOPBACK_ANY_PORT).name("g1");
    line.extra = vec!["--bootstrap-token-file".into(), file.display().to_string()];
    // Authentication on, as in production.
    let g = Global::start_with(&line, |l| l.env("MERIDIAN_NO_AUTH", "false"));
    let at = g.grpc.as_str();

    refused(meridian(at, None, &["job", "list"]), "unauthenticated");
    let (viewer_id, viewer) = create(at, &admin, &["--role", "viewer", "--tenant", "a"]);
    let (submitter_id, submitter) = create(
        at,
        &admin,
        &["--role", "submitter", "--tenant", "a", "--name", "ci"],
    );
    let job = ok(meridian(
        at,
        Some(&submitter),
        &["job", "submit", "--tenant", "a", "--simulate", "10"],
    ))
    .trim()
    .to_string();
    refused(
        meridian(at, Some(&viewer), &["job", "cancel", &job]),
        "role submitter required",
    );
    ok(meridian(at, Some(&submitter), &["job", "cancel", &job]));
    ok(meridian(at, Some(&admin), &["token", "revoke", &viewer_id]));
    refused(
        meridian(at, Some(&viewer), &["job", "list"]),
        "unauthenticated",
    );

    let listed: Value = serde_json::from_str(&ok(meridian(
        at,
        Some(&admin),
        &["audit", "list", "-o", "json", "--limit", "1000"],
    )))
    .expect("audit JSON");
    let records = listed["records"].as_array().expect("records").clone();
    let has = |action: &str, principal: &str, target: &str, outcome: &str| {
        records.iter().any(|r| {
            r["action"] == action
                && r["principal"] == principal
                && r["target"].as_str().unwrap_or_default() == target
                && r["outcome"] == outcome
        })
    };
    let admin_id = admin.split('_').nth(1).expect("admin id");
    for (action, principal, target, outcome) in [
        ("CreateToken", admin_id, viewer_id.as_str(), "OK"),
        ("CreateToken", admin_id, submitter_id.as_str(), "OK"),
        ("SubmitJob", submitter_id.as_str(), job.as_str(), "OK"),
        ("CancelJob", viewer_id.as_str(), "", "PERMISSION_DENIED"),
        ("CancelJob", submitter_id.as_str(), job.as_str(), "OK"),
        ("RevokeToken", admin_id, viewer_id.as_str(), "OK"),
        ("ListJobs", viewer_id.as_str(), "", "UNAUTHENTICATED"),
    ] {
        assert!(
            has(action, principal, target, outcome),
            "no {action} by {principal} on {target:?} with {outcome} in {records:#?}"
        );
    }
    let text = serde_json::to_string(&records).unwrap_or_default();
    for secret in [&admin, &viewer, &submitter] {
        assert!(!text.contains(secret.as_str()), "a token in the audit log");
    }
    // Filters narrow the list.
    let mine: Value = serde_json::from_str(&ok(meridian(
        at,
        Some(&admin),
        &[
            "audit",
            "list",
            "-o",
            "json",
            "--principal",
            &submitter_id,
            "--action",
            "CancelJob",
        ],
    )))
    .expect("audit JSON");
    let mine = mine["records"].as_array().expect("records");
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["target"], job.as_str());
}
