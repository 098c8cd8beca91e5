//! The shared state of one in-memory database: versioned data, the log of
//! recent commits' write ranges, live read versions and registered watches.
//!
//! Owns multi-version reads, conflict resolution at commit, versionstamps,
//! watch firing and the pruning that keeps memory bounded. Every method runs
//! to completion under the caller's lock: it must never await, spawn, sleep,
//! read a clock or iterate a hash map, so a simulation replays it exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use tokio::sync::oneshot;

use super::ranges::{RangeSet, key_after};
use crate::backend::Mutation;
use crate::error::{Result, StoreError};
use crate::limits::MAX_TRANSACTION_AGE;
use crate::sqlite::apply::add_le;
use crate::transaction::fill_placeholder;

/// The values a key held, oldest first: `(commit version, value)`, where
/// `None` records a clear.
type History = Vec<(u64, Option<Vec<u8>>)>;

/// What one commit wrote, kept while a live transaction may still conflict
/// with it.
struct LogEntry {
    version: u64,
    /// Write conflict ranges, `[begin, end)`.
    writes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys that received a history entry at `version`, so pruning knows
    /// which histories to compact once the entry leaves the window.
    touched: Vec<Vec<u8>>,
}

struct Watcher {
    baseline: Option<Vec<u8>>,
    sender: oneshot::Sender<Result<()>>,
}

/// A waiter for a watched key, handed over by a committing transaction.
pub(crate) type PendingWatch = (Vec<u8>, oneshot::Sender<Result<()>>);

/// Everything a transaction hands over when it commits.
pub(crate) struct CommitRequest {
    pub(crate) read_version: Option<u64>,
    pub(crate) reads: RangeSet,
    pub(crate) mutations: Vec<Mutation>,
    pub(crate) want_stamp: bool,
    pub(crate) watches: Vec<PendingWatch>,
}

/// A write with its versionstamp placeholder already filled.
enum Resolved {
    Set(Vec<u8>, Vec<u8>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
    Add(Vec<u8>, Vec<u8>),
}

/// Counts of what the database holds, to show that memory stays bounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// The latest commit version.
    pub version: u64,
    /// The oldest version a transaction may still read at.
    pub oldest_readable_version: u64,
    /// Keys with at least one retained version (live or cleared).
    pub keys: usize,
    /// Retained versions over all keys.
    pub versions: usize,
    /// Commits whose write ranges are kept for conflict checks.
    pub logged_commits: usize,
    /// Transactions holding a read version.
    pub live_readers: usize,
    /// Watches registered and not yet fired.
    pub watches: usize,
}

pub(crate) struct State {
    /// The latest commit version; 0 before the first commit.
    version: u64,
    /// Reads below this version may have lost their data to pruning.
    horizon: u64,
    /// The most commits kept behind the latest for readers; a reader
    /// further behind is refused as too old.
    window: u64,
    data: BTreeMap<Vec<u8>, History>,
    log: VecDeque<LogEntry>,
    /// Live read versions and how many transactions hold each.
    readers: BTreeMap<u64, usize>,
    watches: BTreeMap<Vec<u8>, Vec<Watcher>>,
    watcher_count: usize,
    /// Abandoned watchers are swept when the count reaches this.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 64;

fn too_old() -> StoreError {
    StoreError::TransactionTooOld {
        limit_ms: MAX_TRANSACTION_AGE.as_millis() as u64,
    }
}

/// Eight bytes of commit version, big-endian, then two bytes of batch order
/// (always zero: one transaction per version).
pub(crate) fn versionstamp(version: u64) -> [u8; 10] {
    let mut stamp = [0u8; 10];
    stamp[..8].copy_from_slice(&version.to_be_bytes());
    stamp
}

fn value_in(history: &History, version: u64) -> Option<&[u8]> {
    history
        .iter()
        .rev()
        .find(|(v, _)| *v <= version)
        .and_then(|(_, value)| value.as_deref())
}

impl State {
    pub(crate) fn new(window: u64) -> Self {
        State {
            version: 0,
            horizon: 0,
            window: window.max(1),
            data: BTreeMap::new(),
            log: VecDeque::new(),
            readers: BTreeMap::new(),
            watches: BTreeMap::new(),
            watcher_count: 0,
            sweep_at: MIN_SWEEP,
        }
    }

    /// Takes a read version for a transaction; it must be released with
    /// [`State::release_reader`].
    pub(crate) fn acquire_reader(&mut self) -> u64 {
        *self.readers.entry(self.version).or_default() += 1;
        self.version
    }

    pub(crate) fn release_reader(&mut self, version: u64) {
        if let Some(count) = self.readers.get_mut(&version) {
            *count -= 1;
            if *count == 0 {
                self.readers.remove(&version);
            }
        }
    }

    /// Fails when data a read at `version` needs may have been pruned.
    pub(crate) fn check_readable(&self, version: u64) -> Result<()> {
        if version < self.horizon {
            Err(too_old())
        } else {
            Ok(())
        }
    }

    /// The value of `key` as of `version`.
    pub(crate) fn value_at(&self, key: &[u8], version: u64) -> Option<&[u8]> {
        self.data.get(key).and_then(|h| value_in(h, version))
    }

    /// Keys in `[begin, end)` that have any retained history, in the
    /// requested direction. Their values at a version come from
    /// [`State::value_at`]; cleared keys are skipped by the caller.
    pub(crate) fn keys_in<'a>(
        &'a self,
        begin: &'a [u8],
        end: &'a [u8],
        reverse: bool,
    ) -> Box<dyn Iterator<Item = &'a [u8]> + 'a> {
        if begin >= end {
            return Box::new(std::iter::empty());
        }
        let range = self
            .data
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(k, _)| k.as_slice());
        if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        }
    }

    fn latest(&self, key: &[u8]) -> Option<&[u8]> {
        self.data
            .get(key)
            .and_then(|h| h.last())
            .and_then(|(_, v)| v.as_deref())
    }

    /// Resolves conflicts, applies the writes at a new version, fires and
    /// registers watches. On error nothing is applied and every watch of the
    /// transaction fails with the same error.
    pub(crate) fn commit(&mut self, request: CommitRequest) -> Result<Option<[u8; 10]>> {
        let CommitRequest {
            read_version,
            reads,
            mutations,
            want_stamp,
            watches,
        } = request;
        let outcome = self.commit_writes(read_version, &reads, mutations, want_stamp);
        match &outcome {
            Ok(_) => {
                for (key, sender) in watches {
                    self.register_watch(key, sender);
                }
            }
            Err(err) => {
                for (_, sender) in watches {
                    let _ = sender.send(Err(err.clone()));
                }
            }
        }
        outcome
    }

    fn commit_writes(
        &mut self,
        read_version: Option<u64>,
        reads: &RangeSet,
        mutations: Vec<Mutation>,
        want_stamp: bool,
    ) -> Result<Option<[u8; 10]>> {
        if mutations.is_empty() && !want_stamp {
            // Read-only: nothing to order, so nothing to conflict with
            // (FoundationDB does not even send it to the resolvers).
            return Ok(None);
        }
        if let Some(read_version) = read_version
            && !reads.is_empty()
        {
            self.check_readable(read_version)?;
            self.check_conflicts(read_version, reads)?;
        }
        let version = self.version + 1;
        let stamp = versionstamp(version);
        // Fill every placeholder before touching the data, so a bad template
        // leaves nothing half-applied.
        let resolved = mutations
            .into_iter()
            .map(|m| resolve(m, &stamp))
            .collect::<Result<Vec<_>>>()?;
        let mut writes = Vec::with_capacity(resolved.len());
        let mut touched = BTreeSet::new();
        for write in resolved {
            match write {
                Resolved::Set(key, value) => {
                    writes.push((key.clone(), key_after(&key)));
                    self.put(key, Some(value), version, &mut touched);
                }
                Resolved::Clear(key) => {
                    writes.push((key.clone(), key_after(&key)));
                    self.put(key, None, version, &mut touched);
                }
                Resolved::Add(key, param) => {
                    let sum = add_le(self.latest(&key), &param);
                    writes.push((key.clone(), key_after(&key)));
                    self.put(key, Some(sum), version, &mut touched);
                }
                Resolved::ClearRange(begin, end) => {
                    let present: Vec<Vec<u8>> = self
                        .keys_in(&begin, &end, false)
                        .filter(|k| self.latest(k).is_some())
                        .map(<[u8]>::to_vec)
                        .collect();
                    for key in present {
                        self.put(key, None, version, &mut touched);
                    }
                    writes.push((begin, end));
                }
            }
        }
        self.version = version;
        self.fire_watches(&touched);
        if !writes.is_empty() {
            self.log.push_back(LogEntry {
                version,
                writes,
                touched: touched.into_iter().collect(),
            });
        }
        self.prune();
        Ok(Some(stamp))
    }

    /// Conflict: a commit after `read_version` wrote into a range this
    /// transaction read.
    fn check_conflicts(&self, read_version: u64, reads: &RangeSet) -> Result<()> {
        let first_newer = self.log.partition_point(|e| e.version <= read_version);
        let conflict = self
            .log
            .range(first_newer..)
            .flat_map(|e| e.writes.iter())
            .any(|(b, e)| reads.intersects(b, e));
        if conflict {
            Err(StoreError::NotCommitted)
        } else {
            Ok(())
        }
    }

    fn put(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        version: u64,
        touched: &mut BTreeSet<Vec<u8>>,
    ) {
        if value.is_none() && self.latest(&key).is_none() {
            // Clearing an absent key changes nothing anyone can observe.
            return;
        }
        let history = self.data.entry(key.clone()).or_default();
        match history.last_mut() {
            Some(last) if last.0 == version => last.1 = value,
            _ => history.push((version, value)),
        }
        touched.insert(key);
    }

    fn fire_watches(&mut self, touched: &BTreeSet<Vec<u8>>) {
        if self.watches.is_empty() {
            return;
        }
        for key in touched {
            let Some(waiters) = self.watches.remove(key) else {
                continue;
            };
            let current = self.latest(key).map(<[u8]>::to_vec);
            let mut kept = Vec::with_capacity(waiters.len());
            for waiter in waiters {
                if waiter.sender.is_closed() {
                    self.watcher_count -= 1;
                } else if waiter.baseline != current {
                    self.watcher_count -= 1;
                    let _ = waiter.sender.send(Ok(()));
                } else {
                    kept.push(waiter);
                }
            }
            if !kept.is_empty() {
                self.watches.insert(key.clone(), kept);
            }
        }
    }

    fn register_watch(&mut self, key: Vec<u8>, sender: oneshot::Sender<Result<()>>) {
        if self.watcher_count >= self.sweep_at {
            self.sweep_watches();
        }
        let baseline = self.latest(&key).map(<[u8]>::to_vec);
        self.watches
            .entry(key)
            .or_default()
            .push(Watcher { baseline, sender });
        self.watcher_count += 1;
    }

    /// Drops watchers whose futures were dropped, so watches nobody awaits
    /// on keys nobody writes cannot grow without bound.
    fn sweep_watches(&mut self) {
        self.watches.retain(|_, waiters| {
            waiters.retain(|w| !w.sender.is_closed());
            !waiters.is_empty()
        });
        self.watcher_count = self.watches.values().map(Vec::len).sum();
        self.sweep_at = (self.watcher_count * 2).max(MIN_SWEEP);
    }

    /// Advances the oldest readable version as far as live readers allow,
    /// but never keeps more than `window` commits, then forgets log entries
    /// and superseded versions nobody can read any more.
    fn prune(&mut self) {
        let oldest_reader = self.readers.keys().next().copied().unwrap_or(self.version);
        let target = oldest_reader
            .min(self.version)
            .max(self.version.saturating_sub(self.window));
        if target <= self.horizon {
            return;
        }
        self.horizon = target;
        while self.log.front().is_some_and(|e| e.version <= target) {
            if let Some(entry) = self.log.pop_front() {
                for key in entry.touched {
                    self.compact(&key);
                }
            }
        }
    }

    /// Keeps only the versions of `key` a read at or after the horizon can
    /// see; a key whose visible state is "cleared" disappears entirely.
    fn compact(&mut self, key: &[u8]) {
        let horizon = self.horizon;
        let Some(history) = self.data.get_mut(key) else {
            return;
        };
        if let Some(visible) = history.iter().rposition(|(v, _)| *v <= horizon) {
            history.drain(..visible);
            if history.first().is_some_and(|(_, v)| v.is_none()) {
                history.remove(0);
            }
        }
        if history.is_empty() {
            self.data.remove(key);
        }
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        MemoryStats {
            version: self.version,
            oldest_readable_version: self.horizon,
            keys: self.data.len(),
            versions: self.data.values().map(Vec::len).sum(),
            logged_commits: self.log.len(),
            live_readers: self.readers.values().sum(),
            watches: self.watcher_count,
        }
    }
}

fn resolve(mutation: Mutation, stamp: &[u8; 10]) -> Result<Resolved> {
    Ok(match mutation {
        Mutation::Set { key, value } => Resolved::Set(key, value),
        Mutation::Clear { key } => Resolved::Clear(key),
        Mutation::ClearRange { begin, end } => Resolved::ClearRange(begin, end),
        Mutation::Add { key, param } => Resolved::Add(key, param),
        Mutation::SetVersionstampedKey { key, value } => {
            Resolved::Set(fill_placeholder(&key, stamp)?, value)
        }
        Mutation::SetVersionstampedValue { key, value } => {
            Resolved::Set(key, fill_placeholder(&value, stamp)?)
        }
    })
}
