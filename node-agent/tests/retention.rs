//! A real node removes the directories of finished attempts once their
//! retention ends: at start, those a previous boot left, and then as time
//! passes on the node's clock. A directory still within its retention stays.

use crate::common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{FakeOptions, FakeRegion, real_node};
use meridian_agent::{AgentOptions, Host, Probe};
use meridian_control::ManualClock;

const HOUR: Duration = Duration::from_secs(3_600);

/// A finished attempt's directory, with its output, last written at `at`.
fn finished_attempt(work: &Path, job: &str, at: SystemTime) -> PathBuf {
    let dir = work.join("tasks").join(job).join("0-1");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let out = dir.join("stdout");
    std::fs::write(&out, b"done\n").expect("write");
    for path in [&out, &dir] {
        File::open(path)
            .and_then(|f| f.set_modified(at))
            .expect("set mtime");
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_attempts_directories_go_when_their_retention_ends_on_the_nodes_clock() {
    let wall = SystemTime::now();
    let now_ms = wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let clock = ManualClock::starting_at_unix_ms(u64::try_from(now_ms).expect("ms"));
    let fake = FakeRegion::start(clock.shared(), FakeOptions::default()).await;
    let work = tempfile::tempdir().expect("tempdir");
    let old = finished_attempt(work.path(), "old-job", wall - 48 * HOUR);
    let recent = finished_attempt(work.path(), "recent-job", wall - HOUR);
    let probe = Arc::new(Probe::default());
    let opts = AgentOptions {
        work_dir: Some(work.path().to_path_buf()),
        attempt_retention: 24 * HOUR,
        ..AgentOptions::default()
    };
    let host = Host::real(
        &fake.url(),
        real_node("n1"),
        opts,
        clock.shared(),
        probe.clone(),
    )
    .await
    .expect("host");

    // The pass at start: the previous boot's old attempt goes, with its job.
    probe.wait_for(|p| p.attempt_dirs_removed >= 1).await;
    assert!(!old.exists() && !work.path().join("tasks/old-job").exists());
    assert!(recent.join("stdout").exists(), "an hour old, kept a day");
    assert_eq!(probe.snapshot().attempt_dirs_removed, 1);

    // A day later on the node's clock, the recent one has had its day too.
    clock.advance(24 * HOUR);
    probe.wait_for(|p| p.attempt_dirs_removed >= 2).await;
    assert!(!recent.exists() && !work.path().join("tasks/recent-job").exists());
    assert!(work.path().join("tasks").exists());
    host.shutdown().await;
}
