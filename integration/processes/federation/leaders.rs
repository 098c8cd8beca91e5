//! Who leads what in a `meridian dev` federation, learnt from the event
//! itself: the line a replica's lease elector logs when it becomes leader
//! (`became leader lease=<name> epoch=<n>`) or steps down, in the log file
//! `meridian dev` keeps for each child (`<data>/logs/<child>.log`). A
//! thread follows those files through an inotify watch of their directory
//! and wakes every waiter at each new line; nothing here asks a replica on
//! a timer.
//!
//! Owns the reading of those lines and the terms they describe; it never
//! decides anything about the federation (what a test does with a leader is
//! the test's business). A term also ends when the harness itself kills
//! its holder ([`Leaders::killed`]), since a killed process logs nothing.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The filter `meridian dev` passes its children so that they log the
/// elector's transitions (and warnings, as before) and nothing else.
pub const LOG_FILTER: &str = "warn,meridian_control::lease::elector=info";

/// One term of one lease, as its holder logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The child of `meridian dev` that holds it (`global-1`, `us-east-2`).
    pub holder: String,
    pub epoch: u64,
    /// When the holder logged it (the line's own UTC stamp), in ns since
    /// the Unix epoch.
    pub at_unix_ns: u128,
}

/// A lease: the group its replicas belong to (`global`, or a region's name)
/// and its name there (`global`, `shard-3`, `link`).
pub type LeaseKey = (String, String);

/// Every term seen so far, and those not known to have ended.
#[derive(Debug, Default)]
pub struct Terms {
    /// Lease -> its current term; absent when none is known to lead.
    pub current: BTreeMap<LeaseKey, Term>,
    /// Every term begun, in the order the lines were read.
    pub begun: Vec<(LeaseKey, Term)>,
    /// Child -> when the harness last killed it (ns since the Unix epoch):
    /// a line it logged before then, read late, names no current term.
    killed_at: BTreeMap<String, u128>,
}

impl Terms {
    /// The current holder of the global tier's leader lease.
    pub fn global_leader(&self) -> Option<&Term> {
        self.current
            .get(&("global".to_string(), "global".to_string()))
    }

    /// Shard -> (holder, epoch) of `region`'s shards led now.
    pub fn shards(&self, region: &str) -> BTreeMap<u64, (String, u64)> {
        self.current
            .iter()
            .filter(|((group, _), _)| group == region)
            .filter_map(|((_, lease), term)| {
                let shard = lease.strip_prefix("shard-")?.parse().ok()?;
                Some((shard, (term.holder.clone(), term.epoch)))
            })
            .collect()
    }

    fn apply(&mut self, child: &str, line: &str) {
        let began = line.contains("became leader");
        if !began && !line.contains("stepped down") {
            return;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let (Some(lease), Some(epoch)) = (
            field("lease"),
            field("epoch").and_then(|e| e.parse::<u64>().ok()),
        ) else {
            return;
        };
        let key = (group_of(child).to_string(), lease);
        let term = Term {
            holder: child.to_string(),
            epoch,
            at_unix_ns: line_stamp_ns(line).unwrap_or_else(now_unix_ns),
        };
        if began {
            // A late line of an older term (read from another file after
            // its successor's) leaves the newer term current; so does a
            // line of a process killed since it wrote it.
            let dead = self
                .killed_at
                .get(child)
                .is_some_and(|at| term.at_unix_ns <= *at);
            if !dead && self.current.get(&key).is_none_or(|t| t.epoch <= epoch) {
                self.current.insert(key.clone(), term.clone());
            }
            self.begun.push((key, term));
        } else if self
            .current
            .get(&key)
            .is_some_and(|t| t.holder == child && t.epoch == epoch)
        {
            self.current.remove(&key);
        }
    }
}

/// The group of a child's leases: its name without the replica number
/// (`us-east-2` -> `us-east`, `global-1` -> `global`).
fn group_of(child: &str) -> &str {
    match child.rsplit_once('-') {
        Some((group, n)) if n.parse::<u32>().is_ok() => group,
        _ => child,
    }
}

/// The UTC stamp a log line starts with (`2026-12-06T18:00:00.123456Z`), in
/// ns since the Unix epoch.
fn line_stamp_ns(line: &str) -> Option<u128> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(9).collect();
    let nanos = format!("{digits:0<9}").parse::<i64>().ok()?;
    // Days from the civil date (proleptic Gregorian), as in H. Hinnant's
    // `days_from_civil`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3_600 + min * 60 + s;
    u128::try_from(secs)
        .ok()
        .map(|s| s * 1_000_000_000 + nanos as u128)
}

fn now_unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Follows the elector lines of every child's log; see the module doc.
pub struct Leaders {
    shared: Arc<(Mutex<Terms>, Condvar)>,
}

impl Leaders {
    /// Starts following the log files in `logs` (created if missing, so the
    /// watch is in place before `meridian dev` writes the first line).
    pub fn follow(logs: &Path) -> Leaders {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        std::fs::create_dir_all(logs).unwrap_or_else(|e| panic!("{}: {e}", logs.display()));
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).expect("inotify");
        inotify
            .add_watch(logs, AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE)
            .unwrap_or_else(|e| panic!("watch {}: {e}", logs.display()));
        let shared = Arc::new((Mutex::new(Terms::default()), Condvar::new()));
        let (dir, follower) = (logs.to_path_buf(), Arc::downgrade(&shared));
        std::thread::spawn(move || {
            let mut files: BTreeMap<PathBuf, (u64, String)> = BTreeMap::new();
            loop {
                // Read before blocking: lines written before the watch
                // began, or since the last notice, are all in the files.
                let Some(shared) = follower.upgrade() else {
                    return;
                };
                read_new_lines(&dir, &mut files, &shared);
                drop(shared);
                // Blocks until the kernel reports a write; ends when the
                // directory is gone (its watch is removed).
                match inotify.read_events() {
                    Ok(events)
                        if events.iter().any(|e| {
                            e.mask
                                .contains(nix::sys::inotify::AddWatchFlags::IN_IGNORED)
                        }) =>
                    {
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Leaders { shared }
    }

    /// Waits until `check` gives a value from the terms seen, looking again
    /// at each new elector line; panics after `guard`, naming `what`.
    pub fn until<T>(
        &self,
        what: &str,
        guard: Duration,
        mut check: impl FnMut(&Terms) -> Option<T>,
    ) -> T {
        let (terms, changed) = &*self.shared;
        let deadline = Instant::now() + guard;
        let mut terms = terms.lock().expect("terms");
        loop {
            if let Some(v) = check(&terms) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: not within {guard:?}");
            terms = changed.wait_timeout(terms, left).expect("terms").0;
        }
    }

    /// Runs `read` on the terms seen so far, without waiting.
    pub fn now<T>(&self, read: impl FnOnce(&Terms) -> T) -> T {
        read(&self.shared.0.lock().expect("terms"))
    }

    /// Ends every current term of `child`, which the harness just killed
    /// (a `kill -9` leaves no line behind).
    pub fn killed(&self, child: &str) {
        let (terms, changed) = &*self.shared;
        let mut terms = terms.lock().expect("terms");
        terms.current.retain(|_, t| t.holder != child);
        terms.killed_at.insert(child.to_string(), now_unix_ns());
        drop(terms);
        changed.notify_all();
    }
}

/// Reads what was appended to each `*.log` in `dir` since the last look,
/// applies its complete lines, and wakes the waiters.
fn read_new_lines(
    dir: &Path,
    files: &mut BTreeMap<PathBuf, (u64, String)>,
    shared: &(Mutex<Terms>, Condvar),
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut appended: Vec<(String, String)> = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let Some(child) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        let (offset, partial) = files.entry(path.clone()).or_default();
        let Ok(mut file) = std::fs::File::open(&path) else {
            continue;
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(*offset)).is_err() || file.read_to_end(&mut bytes).is_err() {
            continue;
        }
        *offset += bytes.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&bytes));
        // Only whole lines; a line still being written waits for its end.
        if let Some(end) = partial.rfind('\n') {
            let whole: String = partial.drain(..=end).collect();
            appended.push((child, whole));
        }
    }
    if appended.is_empty() {
        return;
    }
    let (terms, changed) = shared;
    let mut terms = terms.lock().expect("terms");
    for (child, text) in appended {
        for line in text.lines() {
            terms.apply(&child, line);
        }
    }
    changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_stamp_reads_as_ns_since_the_unix_epoch() {
        assert_eq!(
            line_stamp_ns("1970-01-02T00:00:01.5Z  INFO x: became leader"),
            Some(86_401_500_000_000)
        );
        assert_eq!(
            line_stamp_ns("2026-12-06T18:00:00.123456Z  INFO"),
            Some(1_796_580_000_123_456_000)
        );
    }

    #[test]
    fn a_newer_term_replaces_the_current_one_and_a_step_down_ends_only_its_own() {
        let mut terms = Terms::default();
        let line = |what: &str, lease: &str, epoch: u64| {
            format!(
                "2026-12-06T18:00:00.000001Z  INFO meridian_control::lease::elector: {what} \
                 lease={lease} epoch={epoch} holder=x#0"
            )
        };
        terms.apply("us-east-1", &line("became leader", "shard-2", 3));
        terms.apply("us-east-2", &line("became leader", "shard-2", 4));
        terms.apply("us-east-1", &line("stepped down", "shard-2", 3));
        assert_eq!(
            terms.shards("us-east"),
            BTreeMap::from([(2, ("us-east-2".to_string(), 4))])
        );
        terms.apply("us-east-2", &line("stepped down", "shard-2", 4));
        assert!(terms.shards("us-east").is_empty());
        terms.apply("global-2", &line("became leader", "global", 9));
        assert_eq!(
            terms.global_leader().map(|t| t.holder.as_str()),
            Some("global-2")
        );
        assert_eq!(terms.begun.len(), 3);
    }

    #[test]
    fn a_line_written_before_its_process_was_killed_names_no_current_term() {
        let mut terms = Terms::default();
        terms
            .killed_at
            .insert("global-1".into(), 1_796_580_000_500_000_000);
        let at = |stamp: &str| {
            format!(
                "{stamp}  INFO meridian_control::lease::elector: became leader lease=global epoch=3"
            )
        };
        terms.apply("global-1", &at("2026-12-06T18:00:00.400000Z"));
        assert!(terms.global_leader().is_none(), "read after the kill");
        assert_eq!(terms.begun.len(), 1, "still a term of the history");
        terms.apply("global-1", &at("2026-12-06T18:00:01.000000Z"));
        assert_eq!(
            terms.global_leader().map(|t| t.epoch),
            Some(3),
            "its next incarnation"
        );
    }
}
