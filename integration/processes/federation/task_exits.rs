//! When each task's process really ended, whatever ended it. A task's own
//! `exit`/`term` line ([`super::task_lines`]) is written by its shell, so a
//! task killed with SIGKILL (a restarted agent emptying the cgroups of its
//! previous boot, a stop whose grace ran out) ends without a line. This
//! follows the shared file through an inotify watch, opens a pidfd for the
//! shell of each new `start` line (its pid is on the line; the process is
//! taken only if its environment names that task and attempt, so a reused
//! pid is never mistaken for it) and notes the wall-clock time at which
//! the pidfd became readable: the process had ended by then.
//!
//! Owns that watch; it never signals a process and decides nothing about
//! what ran.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::wait::{DirWrites, pidfd, pidfd_exit};
use crate::task_lines::{self, Kind};

/// An attempt on a node: (task id, attempt, node).
pub type Attempt = (String, u32, String);

/// The follower of one shared file; stops when dropped.
pub struct Exits {
    ended: Arc<Mutex<BTreeMap<Attempt, u128>>>,
    watched: Arc<Mutex<usize>>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Exits {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Whether process `pid` runs attempt `attempt` of `task` (its environment
/// says so); false once it has exited (a zombie has no environment left).
fn runs(pid: i32, task: &str, attempt: u32) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    let has = |v: String| vars.contains(&v.as_bytes());
    has(format!("MERIDIAN_TASK_ID={task}")) && has(format!("MERIDIAN_ATTEMPT={attempt}"))
}

impl Exits {
    /// Starts following `file` (which exists) from its first line.
    pub fn follow(file: &Path) -> Exits {
        let ended = Arc::new(Mutex::new(BTreeMap::new()));
        let watched = Arc::new(Mutex::new(0));
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        // Watching before the first read, so no line falls in between.
        let writes = DirWrites::watch(&dir);
        let follower = tokio::spawn(follow(
            file.to_path_buf(),
            writes,
            ended.clone(),
            watched.clone(),
        ));
        Exits {
            ended,
            watched,
            follower,
        }
    }

    /// Attempt -> when its process was seen to have ended (ns since the
    /// Unix epoch).
    pub fn ended(&self) -> BTreeMap<Attempt, u128> {
        self.ended.lock().expect("exits").clone()
    }

    /// How many processes were watched (found running their attempt).
    pub fn watched(&self) -> usize {
        *self.watched.lock().expect("watched")
    }
}

async fn follow(
    file: PathBuf,
    mut writes: DirWrites,
    ended: Arc<Mutex<BTreeMap<Attempt, u128>>>,
    watched: Arc<Mutex<usize>>,
) {
    let mut offset = 0u64;
    let mut partial = String::new();
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&file)
            && f.seek(SeekFrom::Start(offset)).is_ok()
            && let Ok(n) = f.read_to_string(&mut text)
        {
            offset += n as u64;
        }
        partial.push_str(&text);
        // Only whole lines; the rest waits for its newline.
        let whole = partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = partial.drain(..whole).collect();
        for line in lines.lines() {
            let Some((l, pid)) = task_lines::parse_with_pid(line) else {
                continue;
            };
            if l.kind != Kind::Start {
                continue;
            }
            let Some(fd) = pidfd(pid) else { continue };
            if !runs(pid, &l.task, l.attempt) {
                continue;
            }
            *watched.lock().expect("watched") += 1;
            let ended = ended.clone();
            tokio::spawn(async move {
                // A guard against nothing: the task is aborted with the
                // runtime at the end of the test long before.
                if pidfd_exit(fd, Duration::from_secs(3600)).await {
                    ended
                        .lock()
                        .expect("exits")
                        .insert((l.task, l.attempt, l.node), unix_ns());
                }
            });
        }
        // A guard against nothing at all; the follower is aborted with
        // its owner long before.
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        if !writes.next(far).await {
            return;
        }
    }
}
