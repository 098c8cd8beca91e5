//! A global leader that stops answering without going away: two
//! `meridian global` processes on one SQLite file, the leader frozen with
//! SIGSTOP (as a long GC pause, a stalled disk or a half-open connection
//! look to a client). `meridian job submit`, given the frozen leader first,
//! must give up on it after one attempt deadline and complete through the
//! standby, and the frozen process, once resumed, must not make the job a
//! second time: every attempt carried the same request id.
//!
//! The leader is frozen outside a write transaction of the shared files: a
//! process stopped while it holds SQLite's write lock of the store stops
//! every writer of it (of the lease database beside it: every lease
//! takeover) until it runs again (docs/global.md, "Global HA"). Before the
//! test checked for it, one run of the whole suite in a few dozen froze the
//! leader there, and the standby's submit waited on the lock past every
//! attempt deadline.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::*;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, waitid};

use crate::support;

use support::Global;

/// Failure guard only: how long a step may take before the test fails.
const GUARD: Duration = Duration::from_secs(60);
/// What the submit must take at most while the leader is frozen.
const BOUND: Duration = Duration::from_secs(5);
const REQUEST_ID: &str = "paused-leader-submit";

fn spec() -> JobSpec {
    support::tiny_job("paused", "test")
}

/// The index of the replica that accepts writes, found as the product's
/// leader-following client finds it: a probe submit sent where the
/// standby's hint points, again after a refusal as the retry rule says.
async fn leader(endpoints: &[String]) -> usize {
    let args = meridian_cli::client::ConnectArgs::new(endpoints.join(","), GUARD);
    let mut client = meridian_cli::client::Client::new(&args).expect("a client of the replicas");
    let probe = SubmitJobRequest {
        request_id: "probe".into(),
        spec: Some(spec()),
    };
    client
        .call(|mut c| {
            let probe = probe.clone();
            async move { c.submit_job(probe).await }
        })
        .await
        .expect("a replica leads");
    let at = meridian_control::rpc::normalize(client.endpoint());
    endpoints
        .iter()
        .position(|e| meridian_control::rpc::normalize(e) == at)
        .expect("the leader is one of the replicas")
}

/// Whether process `pid` holds a write lock on any file of `dir` (the
/// store, its lease database beside it, and their shared-memory files),
/// from the kernel's table of POSIX locks (`/proc/locks`; a line with `->`
/// is a waiter, not a holder). SQLite's WAL write lock is one of them:
/// held, it blocks every other writer of that database.
fn holds_a_write_lock(pid: i32, dir: &Path) -> bool {
    let files: Vec<u64> = std::fs::read_dir(dir)
        .expect("the store's directory")
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
        .collect();
    let table = std::fs::read_to_string("/proc/locks").expect("the kernel's lock table");
    table.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // `N: POSIX ADVISORY WRITE PID MAJ:MIN:INODE START END`
        if f.len() < 8 || f[1] != "POSIX" || f[3] != "WRITE" {
            return false;
        }
        let holder = f[4].parse::<i32>().ok();
        let file = f[5].rsplit(':').next().and_then(|i| i.parse::<u64>().ok());
        holder == Some(pid) && file.is_some_and(|i| files.contains(&i))
    })
}

/// Every job the replica at `endpoint` lists.
async fn all_jobs(endpoint: &str) -> Result<Vec<Job>, tonic::Status> {
    let mut c = FederationClient::connect(endpoint.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut jobs = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_jobs(ListJobsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..ListJobsRequest::default()
            })
            .await?
            .into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_sent_to_a_frozen_global_leader_completes_through_the_standby_within_5_s_and_makes_one_job()
 {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let replicas = [Global::replica(&url, "g1"), Global::replica(&url, "g2")];
    let endpoints: Vec<String> = replicas.iter().map(|r| r.grpc.clone()).collect();
    let frozen = leader(&endpoints).await;
    let standby = 1 - frozen;
    let pid = replicas[frozen].proc.pid();

    // Frozen, it must hold no write lock of the shared file; caught inside
    // a transaction, it is let go and frozen again after the retry rule's
    // pause.
    let mut freezes = 0;
    support::retry::until_served("the leader frozen outside a transaction", || {
        freezes += 1;
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP the leader");
        // The signal is sent, not yet taken: the lock table is read once
        // the kernel reports the process stopped (left waitable for the
        // process's own supervisor).
        waitid(Id::Pid(pid), WaitPidFlag::WSTOPPED | WaitPidFlag::WNOWAIT)
            .expect("the leader stops");
        let inside = holds_a_write_lock(pid.as_raw(), dir.path());
        if inside {
            kill(pid, Signal::SIGCONT).expect("SIGCONT the leader");
        }
        async move {
            if inside {
                Err(tonic::Status::unavailable(
                    "frozen inside a write transaction",
                ))
            } else {
                Ok(())
            }
        }
    })
    .await;
    println!("leader frozen outside a write transaction after {freezes} freeze(s)");
    let started = Instant::now();
    // The frozen leader first: the order a client that knew the old leader
    // would try.
    let submit = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "job",
            "submit",
            "--simulate",
            "10",
            "--request-id",
            REQUEST_ID,
        ])
        .env(
            "MERIDIAN_ENDPOINT",
            format!("{},{}", endpoints[frozen], endpoints[standby]),
        )
        .env("RUST_LOG", "warn")
        .env("MERIDIAN_INSECURE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run meridian job submit");
    // The submit's exit is the event: waited for on a blocking thread.
    let output = tokio::time::timeout(
        GUARD,
        tokio::task::spawn_blocking(move || submit.wait_with_output()),
    )
    .await
    .expect("the submit ends within the guard")
    .expect("the wait ran")
    .expect("submit output");
    let status = output.status;
    let took = started.elapsed();
    println!(
        "submit with the global leader frozen: {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    assert!(
        status.success(),
        "submit failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(took < BOUND, "the submit took {took:?}");
    let job_id = String::from_utf8_lossy(&output.stdout).trim().to_string();

    kill(pid, Signal::SIGCONT).expect("SIGCONT the old leader");
    // The resumed process has caught up (with its lease, and with what was
    // sent to it while frozen) once it refuses a write naming the standby.
    let new_leader = endpoints[standby].clone();
    // No replica announces what it believes, so the resumed one is asked
    // with a probe submit until it refuses naming the standby; between two
    // answers that are not that yet, the pause is the product's retry rule
    // (support::retry).
    support::retry::until_served("the resumed replica names the new leader", || {
        let (endpoint, new_leader) = (endpoints[frozen].clone(), new_leader.clone());
        async move {
            let not_yet = |what: String| Err(tonic::Status::unavailable(what));
            let mut c = match FederationClient::connect(endpoint).await {
                Ok(c) => c,
                Err(e) => return not_yet(e.to_string()),
            };
            let probe = SubmitJobRequest {
                request_id: "probe-after-resume".into(),
                spec: Some(spec()),
            };
            let refused = match c.submit_job(probe).await {
                Ok(_) => return not_yet("accepted a write".into()),
                Err(refused) => refused,
            };
            let hint = refused
                .metadata()
                .get(meridian_proto::LEADER_METADATA_KEY)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string);
            match hint {
                Some(h) if h == new_leader => Ok(()),
                other => not_yet(format!("names {other:?}")),
            }
        }
    })
    .await;
    let seen_by_resumed =
        support::retry::until_served("the resumed replica lists the jobs", || {
            all_jobs(&endpoints[frozen])
        })
        .await;
    let jobs = support::retry::until_served("the standby lists the jobs", || {
        all_jobs(&endpoints[standby])
    })
    .await;
    for (who, jobs) in [("resumed", &seen_by_resumed), ("standby", &jobs)] {
        let made: Vec<&str> = jobs
            .iter()
            .filter(|j| j.request_id == REQUEST_ID)
            .map(|j| j.job_id.as_str())
            .collect();
        assert_eq!(
            made,
            vec![job_id.as_str()],
            "jobs seen by the {who} replica"
        );
    }
}

/// The check the freeze relies on reads the kernel's lock table right: a
/// POSIX write lock this process takes on a file is seen as held by it,
/// and not once it is released.
#[test]
fn a_write_lock_held_on_the_database_file_is_seen_in_the_kernels_table() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("global.db");
    let file = std::fs::File::create(&db).unwrap();
    let me = i32::try_from(std::process::id()).unwrap();
    let lock = |kind: i16| {
        let mut range: nix::libc::flock = unsafe { std::mem::zeroed() };
        range.l_type = kind;
        range.l_whence = nix::libc::SEEK_SET as i16;
        range.l_start = 120;
        range.l_len = 1;
        // SAFETY: F_SETLK reads `range`; the descriptor is open.
        let rc = unsafe { nix::libc::fcntl(file.as_raw_fd(), nix::libc::F_SETLK, &range) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    };
    assert!(!holds_a_write_lock(me, dir.path()));
    lock(nix::libc::F_WRLCK as i16);
    assert!(holds_a_write_lock(me, dir.path()));
    lock(nix::libc::F_UNLCK as i16);
    assert!(!holds_a_write_lock(me, dir.path()));
}
