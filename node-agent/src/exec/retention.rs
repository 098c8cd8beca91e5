//! Removal of finished attempts' directories once their retention ends.
//!
//! Owns the disk that old attempts take on a real node. An attempt
//! directory under `<work dir>/tasks/<job>/` that no running attempt uses
//! and that nothing has written for the retention period is removed, and
//! then the job's directory if that left it empty. Must never remove the
//! directory of a running attempt, nor anything outside `<work dir>/tasks`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

/// The attempt directories running attempts use.
#[derive(Debug, Default)]
pub struct InUse {
    dirs: Mutex<BTreeSet<PathBuf>>,
}

/// One running attempt's claim on its directory; dropped when it ends.
#[derive(Debug)]
pub struct Held {
    set: Arc<InUse>,
    dir: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set.dirs.lock().remove(&self.dir);
    }
}

impl InUse {
    /// Claims `dir` for an attempt about to start: taken before the
    /// directory is made, so a pass cannot remove a job directory between
    /// its creation and the attempt's.
    pub fn hold(self: &Arc<Self>, dir: PathBuf) -> Held {
        self.dirs.lock().insert(dir.clone());
        Held {
            set: self.clone(),
            dir,
        }
    }

    fn holds(&self, dir: &Path) -> bool {
        self.dirs.lock().contains(dir)
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub attempts: usize,
    pub jobs: usize,
}

/// One pass over `tasks` (the work dir's `tasks`): removes each attempt
/// directory not in use whose newest entry is older than `keep` at `now`,
/// then the job directories left empty. Entries it cannot read or remove are
/// left for the next pass (logged).
pub fn sweep(tasks: &Path, keep: Duration, now: SystemTime, in_use: &InUse) -> Swept {
    let mut swept = Swept::default();
    let Ok(jobs) = std::fs::read_dir(tasks) else {
        return swept;
    };
    for job in jobs.flatten() {
        let job_dir = job.path();
        if !job.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(attempts) = std::fs::read_dir(&job_dir) else {
            continue;
        };
        for attempt in attempts.flatten() {
            let dir = attempt.path();
            if !attempt.file_type().is_ok_and(|t| t.is_dir()) || in_use.holds(&dir) {
                continue;
            }
            let expired = last_written(&dir)
                .is_some_and(|at| now.duration_since(at).is_ok_and(|age| age >= keep));
            if !expired {
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => swept.attempts += 1,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an expired attempt directory")
                }
            }
        }
        // Under the lock, so no attempt claims a directory in this job
        // between the check and the removal (which fails unless empty).
        let dirs = in_use.dirs.lock();
        if !dirs.iter().any(|d| d.starts_with(&job_dir)) && std::fs::remove_dir(&job_dir).is_ok() {
            swept.jobs += 1;
        }
    }
    swept
}

/// The newest modification time of `dir` and its direct entries (its output
/// files and scratch directory): when the attempt last wrote anything there.
fn last_written(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::metadata(dir).and_then(|m| m.modified()).ok()?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if let Ok(at) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(at);
            }
        }
    }
    Some(newest)
}

/// How often a node looks for expired attempt directories: a quarter of
/// the retention, between a minute and an hour.
pub fn pass_every(keep: Duration) -> Duration {
    (keep / 4).clamp(Duration::from_secs(60), Duration::from_secs(3_600))
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// An attempt directory with an output file, everything last written at
    /// `at`.
    fn attempt(tasks: &Path, job: &str, name: &str, at: SystemTime) -> PathBuf {
        let dir = tasks.join(job).join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let out = dir.join("stdout");
        std::fs::write(&out, b"hello\n").expect("write");
        File::options()
            .write(true)
            .open(&out)
            .and_then(|f| f.set_modified(at))
            .expect("mtime of the file");
        File::open(&dir)
            .and_then(|f| f.set_modified(at))
            .expect("mtime of the directory");
        dir
    }

    #[test]
    fn an_attempt_past_its_retention_goes_with_its_emptied_job_and_a_recent_one_stays() {
        let root = tempfile::tempdir().expect("tempdir");
        let tasks = root.path().join("tasks");
        let now = SystemTime::now();
        let old = attempt(&tasks, "job-a", "0-1", now - 2 * DAY);
        let recent = attempt(&tasks, "job-b", "0-1", now - DAY / 2);
        let beside = attempt(&tasks, "job-b", "1-1", now - 2 * DAY);
        std::fs::write(root.path().join("state.json"), b"{}").expect("state file");

        let swept = sweep(&tasks, DAY, now, &InUse::default());

        assert_eq!(
            swept,
            Swept {
                attempts: 2,
                jobs: 1
            }
        );
        assert!(!old.exists() && !tasks.join("job-a").exists());
        assert!(!beside.exists());
        assert!(recent.join("stdout").exists(), "within its retention");
        assert!(root.path().join("state.json").exists(), "outside tasks/");
    }

    #[test]
    fn a_running_attempts_directory_stays_however_old_until_it_ends() {
        let root = tempfile::tempdir().expect("tempdir");
        let tasks = root.path().join("tasks");
        let now = SystemTime::now();
        let running = attempt(&tasks, "job-a", "0-1", now - 30 * DAY);
        let in_use = Arc::new(InUse::default());
        let held = in_use.hold(running.clone());

        assert_eq!(sweep(&tasks, DAY, now, &in_use), Swept::default());
        assert!(running.join("stdout").exists());

        drop(held);
        assert_eq!(
            sweep(&tasks, DAY, now, &in_use),
            Swept {
                attempts: 1,
                jobs: 1
            }
        );
    }

    #[test]
    fn a_new_file_in_an_old_attempt_directory_keeps_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let tasks = root.path().join("tasks");
        let now = SystemTime::now();
        let dir = attempt(&tasks, "job-a", "0-1", now - 2 * DAY);
        // Written since: the stream's rotation, say.
        std::fs::write(dir.join("stdout.1"), b"later").expect("write");

        assert_eq!(sweep(&tasks, DAY, now, &InUse::default()), Swept::default());
        assert!(dir.exists());
    }

    #[test]
    fn passes_come_a_quarter_of_the_retention_apart_within_a_minute_and_an_hour() {
        assert_eq!(pass_every(DAY), Duration::from_secs(3_600));
        assert_eq!(
            pass_every(Duration::from_secs(600)),
            Duration::from_secs(150)
        );
        assert_eq!(pass_every(Duration::from_secs(10)), Duration::from_secs(60));
    }
}
