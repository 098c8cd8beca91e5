//! Watches: wake a waiter once a key's value differs from what it was at the
//! commit that registered the watch.
//!
//! Owns one background thread per database with its own connection. Commits
//! of this process poke the thread with the keys they wrote ([`Touched`]),
//! and only the watched keys among those are read again, so a commit costs
//! the same with ten or ten thousand watches. Commits of other processes are
//! noticed by polling `PRAGMA data_version` (it changes whenever another
//! connection commits, this process's pool included): then every watched key
//! is read, in one read transaction, at most once per poll interval and at
//! most 1/20 of the time, but at least every 20 poll intervals (so with many
//! watches, other processes' commits are seen a little later, never at the
//! cost of a core). A new
//! watch is checked on its own key. The thread idles on its channel when
//! nothing is watched. It must never hold a lock that a writer needs: each
//! check is one short read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::SqliteOptions;
use super::pool::open_connection;
use super::{apply, map_err};
use crate::backend::Mutation;
use crate::error::{Result, StoreError};

type Waiter = (Option<Vec<u8>>, oneshot::Sender<Result<()>>);

enum Message {
    Register {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        sender: oneshot::Sender<Result<()>>,
    },
    Poke(Touched),
}

/// The keys a commit of this process may have changed.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    keys: Vec<Vec<u8>>,
    /// `[begin, end)` ranges: cleared ranges, and the prefixes of
    /// versionstamped keys (their final bytes are known only at commit).
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// A write whose key cannot be bounded: every watch is checked.
    all: bool,
}

impl Touched {
    /// Adds what `m` writes.
    pub(crate) fn add(&mut self, m: &Mutation) {
        match m {
            Mutation::Set { key, .. }
            | Mutation::Clear { key }
            | Mutation::Add { key, .. }
            | Mutation::SetVersionstampedValue { key, .. } => self.keys.push(key.clone()),
            Mutation::ClearRange { begin, end } => self.ranges.push((begin.clone(), end.clone())),
            Mutation::SetVersionstampedKey { key, .. } => {
                // The template's last four bytes are the placeholder's offset;
                // the key starts with the bytes before the placeholder.
                let offset = key
                    .len()
                    .checked_sub(4)
                    .and_then(|at| key.get(at..))
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, |b| u32::from_le_bytes(b) as usize);
                let prefix = key
                    .get(..offset.min(key.len().saturating_sub(4)))
                    .unwrap_or(&[]);
                match strinc(prefix) {
                    Some(end) => self.ranges.push((prefix.to_vec(), end)),
                    None => self.all = true,
                }
            }
        }
    }

    /// Adds what every mutation of `ms` writes.
    pub(crate) fn add_all<'a>(&mut self, ms: impl IntoIterator<Item = &'a Mutation>) {
        for m in ms {
            self.add(m);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.ranges.is_empty() && !self.all
    }

    fn merge(&mut self, other: Touched) {
        self.keys.extend(other.keys);
        self.ranges.extend(other.ranges);
        self.all |= other.all;
    }
}

/// The first key after every key that starts with `prefix`.
fn strinc(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

pub(crate) struct WatchHub {
    path: PathBuf,
    options: SqliteOptions,
    // The thread starts on the first watch; a database nobody watches pays
    // nothing.
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    active: Arc<AtomicUsize>,
}

impl WatchHub {
    pub(crate) fn new(path: PathBuf, options: SqliteOptions) -> Self {
        WatchHub {
            path,
            options,
            sender: Mutex::new(None),
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Wakes the thread after a commit of this process that wrote
    /// `touched`, if anything is watched.
    pub(crate) fn poke(&self, touched: Touched) {
        if self.active.load(Ordering::Acquire) == 0 || touched.is_empty() {
            return;
        }
        if let Ok(guard) = self.sender.lock()
            && let Some(sender) = guard.as_ref()
        {
            let _ = sender.send(Message::Poke(touched));
        }
    }

    /// Starts watching `key`, whose value at the registering commit was `value`.
    pub(crate) fn register(
        &self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        sender: oneshot::Sender<Result<()>>,
    ) {
        let mut guard = match self.sender.lock() {
            Ok(guard) => guard,
            Err(_) => {
                let _ = sender.send(Err(StoreError::Backend("watch hub poisoned".into())));
                return;
            }
        };
        if guard.is_none() {
            match self.start() {
                Ok(s) => *guard = Some(s),
                Err(e) => {
                    let _ = sender.send(Err(e));
                    return;
                }
            }
        }
        if let Some(s) = guard.as_ref() {
            self.active.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::SendError(Message::Register { sender, .. })) =
                s.send(Message::Register { key, value, sender })
            {
                self.active.fetch_sub(1, Ordering::AcqRel);
                let _ = sender.send(Err(StoreError::Backend("watch thread stopped".into())));
            }
        }
    }

    fn start(&self) -> Result<mpsc::Sender<Message>> {
        let (sender, receiver) = mpsc::channel();
        let path = self.path.clone();
        let (busy, sync) = (self.options.busy_timeout, self.options.synchronous);
        let poll = self.options.watch_poll;
        let active = self.active.clone();
        // The connection is opened on the watch thread, never on the caller's:
        // opening may wait for the write lock (schema check), and the caller
        // is often an async worker that the lock's holder needs to finish.
        std::thread::Builder::new()
            .name("meridian-store-watch".into())
            .spawn(move || {
                loop {
                    match open_connection(&path, busy, sync) {
                        Ok(conn) => return watch_loop(conn, receiver, poll, active),
                        // Refuse one waiting registration and try again on the
                        // next: a failure to open may pass (a busy file).
                        Err(e) => match receiver.recv() {
                            Ok(Message::Register { sender, .. }) => {
                                active.fetch_sub(1, Ordering::AcqRel);
                                let _ = sender.send(Err(StoreError::Backend(format!(
                                    "opening the watch connection: {e}"
                                ))));
                            }
                            Ok(Message::Poke(_)) => {}
                            Err(_) => return,
                        },
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the watch thread: {e}")))?;
        Ok(sender)
    }
}

fn data_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
        .map_err(map_err)
}

/// A full check may take at most one part in this many of the thread's time.
const FULL_CHECK_SHARE: u32 = 20;

fn watch_loop(
    conn: Connection,
    receiver: mpsc::Receiver<Message>,
    poll: Duration,
    active: Arc<AtomicUsize>,
) {
    let mut waiting: BTreeMap<Vec<u8>, Vec<Waiter>> = BTreeMap::new();
    let mut seen_version = data_version(&conn).unwrap_or(0);
    let mut last_full = Instant::now();
    // A full check reads every watched key; with thousands of watches it
    // costs milliseconds, so it runs at most 1/FULL_CHECK_SHARE of the time.
    let mut full_every = poll;
    loop {
        let first = if waiting.is_empty() {
            match receiver.recv() {
                Ok(m) => Some(m),
                Err(_) => return,
            }
        } else {
            let wait = full_every.saturating_sub(last_full.elapsed());
            match receiver.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        let mut touched = Touched::default();
        for message in first.into_iter().chain(receiver.try_iter()) {
            match message {
                Message::Register { key, value, sender } => {
                    // A change may have landed between the commit and now.
                    touched.keys.push(key.clone());
                    waiting.entry(key).or_default().push((value, sender));
                }
                Message::Poke(t) => touched.merge(t),
            }
        }
        if !touched.is_empty() {
            check(&conn, &mut waiting, &active, Some(&touched));
        }
        if last_full.elapsed() < full_every {
            continue;
        }
        last_full = Instant::now();
        match data_version(&conn) {
            Ok(v) if v != seen_version => {
                seen_version = v;
                let started = Instant::now();
                check(&conn, &mut waiting, &active, None);
                // One slow check (a descheduled thread, a lock wait) must
                // not hide other processes' commits for long: capped.
                full_every =
                    (started.elapsed() * FULL_CHECK_SHARE).clamp(poll, poll * FULL_CHECK_SHARE);
            }
            Ok(_) => drop_abandoned(&mut waiting, &active),
            Err(e) => fail_all(&mut waiting, &active, e),
        }
    }
}

/// Wakes the waiters whose key changed, among the keys in `touched` (every
/// watched key with `None`), all read in one read transaction.
fn check(
    conn: &Connection,
    waiting: &mut BTreeMap<Vec<u8>, Vec<Waiter>>,
    active: &AtomicUsize,
    touched: Option<&Touched>,
) {
    let keys: Vec<Vec<u8>> = match touched {
        None => waiting.keys().cloned().collect(),
        Some(t) if t.all => waiting.keys().cloned().collect(),
        Some(t) => {
            let mut keys: Vec<Vec<u8>> = t
                .keys
                .iter()
                .filter(|k| waiting.contains_key(*k))
                .cloned()
                .collect();
            for (begin, end) in &t.ranges {
                if begin < end {
                    keys.extend(
                        waiting
                            .range(begin.clone()..end.clone())
                            .map(|(k, _)| k.clone()),
                    );
                }
            }
            keys.sort();
            keys.dedup();
            keys
        }
    };
    if keys.is_empty() {
        return;
    }
    // One snapshot for all of them: a read transaction per key would pay
    // SQLite's lock and WAL-index round trip for each.
    let snapshot = conn.unchecked_transaction();
    let mut emptied = Vec::new();
    for key in keys {
        let Some(waiters) = waiting.get_mut(&key) else {
            continue;
        };
        let current = match apply::get(conn, &key) {
            Ok(v) => v,
            // A transient read failure: try again at the next poll.
            Err(_) => continue,
        };
        let mut kept = Vec::new();
        for (value, sender) in std::mem::take(waiters) {
            if sender.is_closed() {
                active.fetch_sub(1, Ordering::AcqRel);
            } else if value != current {
                active.fetch_sub(1, Ordering::AcqRel);
                // The waiter may have gone away meanwhile; nothing to do then.
                let _ = sender.send(Ok(()));
            } else {
                kept.push((value, sender));
            }
        }
        *waiters = kept;
        if waiters.is_empty() {
            emptied.push(key);
        }
    }
    if let Ok(tx) = snapshot {
        let _ = tx.finish();
    }
    for key in emptied {
        waiting.remove(&key);
    }
}

fn drop_abandoned(waiting: &mut BTreeMap<Vec<u8>, Vec<Waiter>>, active: &AtomicUsize) {
    waiting.retain(|_, waiters| {
        let before = waiters.len();
        waiters.retain(|(_, sender)| !sender.is_closed());
        active.fetch_sub(before - waiters.len(), Ordering::AcqRel);
        !waiters.is_empty()
    });
}

fn fail_all(waiting: &mut BTreeMap<Vec<u8>, Vec<Waiter>>, active: &AtomicUsize, err: StoreError) {
    for (_, waiters) in std::mem::take(waiting) {
        for (_, sender) in waiters {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = sender.send(Err(err.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(t: &Touched, key: &[u8]) -> bool {
        t.all
            || t.keys.iter().any(|k| k == key)
            || t.ranges
                .iter()
                .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    #[test]
    fn a_versionstamped_key_is_covered_by_the_range_of_its_prefix() {
        let mut template = b"cmd/node-7/".to_vec();
        let offset = template.len() as u32;
        template.extend_from_slice(&[0u8; 10]);
        template.extend_from_slice(b"/x");
        template.extend_from_slice(&offset.to_le_bytes());
        let mut t = Touched::default();
        t.add(&Mutation::SetVersionstampedKey {
            key: template,
            value: Vec::new(),
        });
        let mut written = b"cmd/node-7/".to_vec();
        written.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 0, 1]);
        written.extend_from_slice(b"/x");
        assert!(covers(&t, &written), "the key the commit wrote");
        assert!(!covers(&t, b"cmd/node-8/"), "another node's log");
        assert!(!covers(&t, b"cmdhead/node-7"), "a key outside the prefix");
    }

    #[test]
    fn cleared_ranges_and_plain_writes_are_covered_exactly() {
        let mut t = Touched::default();
        t.add_all(&[
            Mutation::Set {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            Mutation::ClearRange {
                begin: b"m".to_vec(),
                end: b"p".to_vec(),
            },
        ]);
        assert!(covers(&t, b"a"));
        assert!(!covers(&t, b"ab"));
        assert!(covers(&t, b"m"));
        assert!(covers(&t, b"o\xff"));
        assert!(!covers(&t, b"p"), "the end is exclusive");
    }

    #[test]
    fn the_successor_of_a_prefix_skips_trailing_ff_bytes() {
        assert_eq!(strinc(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(strinc(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(strinc(b"\xff\xff"), None);
    }
}
