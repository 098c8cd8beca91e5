//! The work queue's bookkeeping as a plain synchronous state machine.
//!
//! Owns every rule of the queue (dedup, eligibility times, per-key rate
//! limit, lanes, bound and eviction, processing and dirty reruns, shutdown)
//! with time passed in explicitly, so the rules can be tested without a
//! runtime. Must never: block, read a clock, wake anyone, or record metrics;
//! the async wrapper in `mod.rs` does those.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use super::lane::Lane;
use crate::clock::Instant;

/// A pending entry's place in its lane: first eligible first out, ties in
/// order of arrival.
pub(crate) type Pos = (Instant, u64);

/// What happened to an add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddOutcome<K> {
    /// The key was not known; it is now pending. `evicted` is the entry that
    /// was dropped to make room, if the queue was full.
    Queued { evicted: Option<(K, Lane)> },
    /// The key was already pending; its lane was raised and its eligibility
    /// moved earlier as the new add asked, never later.
    Merged,
    /// The key is being processed; it will be handed out once more after the
    /// current holder is done (however many adds arrive meanwhile).
    MarkedDirty { evicted: Option<(K, Lane)> },
    /// The queue was full and held nothing in a lower lane to evict; the add
    /// was dropped and counted.
    Refused,
    /// The queue is shutting down and accepts nothing new.
    ShutDown,
}

impl<K> AddOutcome<K> {
    /// Whether the key will be handed out (again) because of this add or an
    /// earlier one.
    pub fn is_accepted(&self) -> bool {
        matches!(
            self,
            AddOutcome::Queued { .. } | AddOutcome::Merged | AddOutcome::MarkedDirty { .. }
        )
    }
}

/// Where a key is, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Waiting to be handed out, at or after `eligible_at`.
    Pending { lane: Lane, eligible_at: Instant },
    /// Handed out and not yet done; `dirty` if it will run once more.
    Processing { dirty: bool },
}

/// How the queue stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShutdownMode {
    /// Hand out what is already eligible, drop what is not.
    Drain,
    /// Drop everything not already being processed.
    Discard,
}

#[derive(Debug)]
enum Slot {
    Pending { lane: Lane, pos: Pos },
    Processing { claim: u64, rerun: Option<Rerun> },
}

#[derive(Debug, Clone, Copy)]
enum Found {
    Absent,
    Pending(Lane, Pos),
    Clean,
    Dirty(Rerun),
}

#[derive(Debug, Clone, Copy)]
struct Rerun {
    lane: Lane,
    at: Instant,
    seq: u64,
}

/// A key handed out by [`QueueState::pop_ready`].
#[derive(Debug)]
pub(crate) struct Popped<K> {
    pub key: K,
    pub lane: Lane,
    pub claim: u64,
    pub eligible_at: Instant,
}

/// Result of an add, with what the wrapper needs to decide whom to wake.
#[derive(Debug)]
pub(crate) struct Added<K> {
    pub outcome: AddOutcome<K>,
    /// Eligibility of the pending entry this add created or changed.
    pub pending_at: Option<Instant>,
    /// Lane of the entry this add dropped, if it dropped one (evicted or the
    /// refused add itself).
    pub dropped_lane: Option<Lane>,
}

#[derive(Debug)]
pub(crate) struct QueueState<K> {
    capacity: usize,
    min_interval: Duration,
    lanes: [BTreeMap<Pos, K>; Lane::COUNT],
    slots: HashMap<K, Slot>,
    rerun_by_lane: [usize; Lane::COUNT],
    // Pending entries plus dirty marks: what the bound counts.
    pending: usize,
    processing: usize,
    next_seq: u64,
    next_claim: u64,
    last_start: HashMap<K, Instant>,
    // Starts in time order, to forget `last_start` entries once they no
    // longer constrain anything.
    start_log: VecDeque<(Instant, K)>,
    drops_by_lane: [u64; Lane::COUNT],
    discarded: u64,
    shutdown: Option<ShutdownMode>,
}

impl<K: Hash + Eq + Clone> QueueState<K> {
    pub(crate) fn new(capacity: usize, min_interval: Duration) -> Self {
        QueueState {
            capacity,
            min_interval,
            lanes: Default::default(),
            slots: HashMap::new(),
            rerun_by_lane: [0; Lane::COUNT],
            pending: 0,
            processing: 0,
            next_seq: 0,
            next_claim: 0,
            last_start: HashMap::new(),
            start_log: VecDeque::new(),
            drops_by_lane: [0; Lane::COUNT],
            discarded: 0,
            shutdown: None,
        }
    }

    /// Asks for `key` to be handed out in `lane` no earlier than `at`.
    pub(crate) fn add(&mut self, key: K, lane: Lane, at: Instant) -> Added<K> {
        if self.shutdown.is_some() {
            return Added {
                outcome: AddOutcome::ShutDown,
                pending_at: None,
                dropped_lane: None,
            };
        }
        let at = at.max(self.floor(&key));
        let found = match self.slots.get(&key) {
            None => Found::Absent,
            Some(Slot::Pending { lane, pos }) => Found::Pending(*lane, *pos),
            Some(Slot::Processing { rerun: None, .. }) => Found::Clean,
            Some(Slot::Processing {
                rerun: Some(rerun), ..
            }) => Found::Dirty(*rerun),
        };
        match found {
            Found::Pending(old_lane, old_pos) => {
                self.merge_pending(key, lane, at, old_lane, old_pos)
            }
            Found::Dirty(old) => self.merge_rerun(&key, lane, at, old),
            Found::Clean => self.mark_dirty(&key, lane, at),
            Found::Absent => self.queue_new(key, lane, at),
        }
    }

    /// An add for a key already pending: raise its lane and move its
    /// eligibility earlier, never later.
    fn merge_pending(
        &mut self,
        key: K,
        lane: Lane,
        at: Instant,
        old_lane: Lane,
        old_pos: Pos,
    ) -> Added<K> {
        let new_lane = old_lane.max(lane);
        let new_pos = (old_pos.0.min(at), old_pos.1);
        if (new_lane, new_pos) != (old_lane, old_pos) {
            self.lanes[old_lane.index()].remove(&old_pos);
            self.lanes[new_lane.index()].insert(new_pos, key.clone());
            self.slots.insert(
                key,
                Slot::Pending {
                    lane: new_lane,
                    pos: new_pos,
                },
            );
        }
        Added {
            outcome: AddOutcome::Merged,
            pending_at: Some(new_pos.0),
            dropped_lane: None,
        }
    }

    /// An add for a key being processed that already has a rerun: the rerun
    /// keeps its place and takes the higher lane and the earlier time.
    fn merge_rerun(&mut self, key: &K, lane: Lane, at: Instant, old: Rerun) -> Added<K> {
        let merged = Rerun {
            lane: old.lane.max(lane),
            at: old.at.min(at),
            seq: old.seq,
        };
        self.set_rerun(key, Some(merged));
        self.rerun_by_lane[old.lane.index()] -= 1;
        self.rerun_by_lane[merged.lane.index()] += 1;
        Added {
            outcome: AddOutcome::MarkedDirty { evicted: None },
            pending_at: None,
            dropped_lane: None,
        }
    }

    /// An add for a key being processed with no rerun yet: the rerun counts
    /// as pending, so it needs room like a new key.
    fn mark_dirty(&mut self, key: &K, lane: Lane, at: Instant) -> Added<K> {
        let evicted = match self.make_room(lane) {
            Ok(evicted) => evicted,
            Err(()) => return self.refuse(lane),
        };
        let seq = self.bump_seq();
        self.set_rerun(key, Some(Rerun { lane, at, seq }));
        self.rerun_by_lane[lane.index()] += 1;
        self.pending += 1;
        Added {
            dropped_lane: evicted.as_ref().map(|(_, l)| *l),
            outcome: AddOutcome::MarkedDirty { evicted },
            pending_at: None,
        }
    }

    fn queue_new(&mut self, key: K, lane: Lane, at: Instant) -> Added<K> {
        let evicted = match self.make_room(lane) {
            Ok(evicted) => evicted,
            Err(()) => return self.refuse(lane),
        };
        let pos = (at, self.bump_seq());
        self.lanes[lane.index()].insert(pos, key.clone());
        self.slots.insert(key, Slot::Pending { lane, pos });
        self.pending += 1;
        Added {
            dropped_lane: evicted.as_ref().map(|(_, l)| *l),
            outcome: AddOutcome::Queued { evicted },
            pending_at: Some(at),
        }
    }

    fn set_rerun(&mut self, key: &K, new: Option<Rerun>) {
        if let Some(Slot::Processing { rerun, .. }) = self.slots.get_mut(key) {
            *rerun = new;
        }
    }

    /// Hands out the first eligible key of the highest lane that has one.
    pub(crate) fn pop_ready(&mut self, now: Instant) -> Option<Popped<K>> {
        let lane = Lane::ALL.into_iter().rev().find(|l| {
            self.lanes[l.index()]
                .first_key_value()
                .is_some_and(|(p, _)| p.0 <= now)
        })?;
        let (pos, key) = self.lanes[lane.index()].pop_first()?;
        let claim = self.next_claim;
        self.next_claim += 1;
        self.slots
            .insert(key.clone(), Slot::Processing { claim, rerun: None });
        self.pending -= 1;
        self.processing += 1;
        self.record_start(&key, now);
        Some(Popped {
            key,
            lane,
            claim,
            eligible_at: pos.0,
        })
    }

    /// Ends processing of `key` under `claim`. A dirty key becomes pending
    /// again; returns its eligibility if so. A stale claim is ignored.
    pub(crate) fn done(&mut self, key: &K, claim: u64, now: Instant) -> Option<Instant> {
        let rerun = match self.slots.get(key) {
            Some(Slot::Processing { claim: c, rerun }) if *c == claim => *rerun,
            _ => return None,
        };
        self.processing -= 1;
        let Some(rerun) = rerun else {
            self.slots.remove(key);
            return None;
        };
        self.rerun_by_lane[rerun.lane.index()] -= 1;
        let at = rerun.at.max(self.floor(key));
        let keep = match self.shutdown {
            None => true,
            Some(ShutdownMode::Drain) => at <= now,
            Some(ShutdownMode::Discard) => false,
        };
        if !keep {
            self.slots.remove(key);
            self.pending -= 1;
            self.discarded += 1;
            return None;
        }
        let pos = (at, rerun.seq);
        self.lanes[rerun.lane.index()].insert(pos, key.clone());
        self.slots.insert(
            key.clone(),
            Slot::Pending {
                lane: rerun.lane,
                pos,
            },
        );
        Some(at)
    }

    /// Stops accepting adds. `Drain` keeps what is eligible at `now`;
    /// `Discard` keeps nothing but the keys being processed (without reruns).
    pub(crate) fn shut_down(&mut self, mode: ShutdownMode, now: Instant) {
        let mode = match (self.shutdown, mode) {
            (Some(ShutdownMode::Discard), _) => ShutdownMode::Discard,
            (_, m) => m,
        };
        self.shutdown = Some(mode);
        for lane in Lane::ALL {
            let map = &mut self.lanes[lane.index()];
            let dropped = match mode {
                ShutdownMode::Discard => std::mem::take(map),
                ShutdownMode::Drain => map.split_off(&(now, u64::MAX)),
            };
            for key in dropped.into_values() {
                self.slots.remove(&key);
                self.pending -= 1;
                self.discarded += 1;
            }
        }
        if mode == ShutdownMode::Discard {
            for slot in self.slots.values_mut() {
                if let Slot::Processing { rerun, .. } = slot
                    && let Some(r) = rerun.take()
                {
                    self.rerun_by_lane[r.lane.index()] -= 1;
                    self.pending -= 1;
                    self.discarded += 1;
                }
            }
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// No pending entry is left to hand out (dirty marks aside).
    pub(crate) fn lanes_empty(&self) -> bool {
        self.lanes.iter().all(BTreeMap::is_empty)
    }

    /// Earliest eligibility among pending entries.
    pub(crate) fn next_eligible_at(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter_map(|m| m.first_key_value().map(|(p, _)| p.0))
            .min()
    }

    /// Nothing is being processed and nothing is eligible at `now`.
    pub(crate) fn is_idle(&self, now: Instant) -> bool {
        self.processing == 0 && self.next_eligible_at().is_none_or(|at| at > now)
    }

    pub(crate) fn len(&self) -> usize {
        self.pending
    }

    pub(crate) fn lane_len(&self, lane: Lane) -> usize {
        self.lanes[lane.index()].len() + self.rerun_by_lane[lane.index()]
    }

    pub(crate) fn ready_len(&self, now: Instant) -> usize {
        self.lanes
            .iter()
            .map(|m| m.range(..=(now, u64::MAX)).count())
            .sum()
    }

    pub(crate) fn processing(&self) -> usize {
        self.processing
    }

    pub(crate) fn drops(&self, lane: Lane) -> u64 {
        self.drops_by_lane[lane.index()]
    }

    pub(crate) fn discarded(&self) -> u64 {
        self.discarded
    }

    pub(crate) fn key_state(&self, key: &K) -> Option<KeyState> {
        self.slots.get(key).map(|slot| match slot {
            Slot::Pending { lane, pos } => KeyState::Pending {
                lane: *lane,
                eligible_at: pos.0,
            },
            Slot::Processing { rerun, .. } => KeyState::Processing {
                dirty: rerun.is_some(),
            },
        })
    }

    fn bump_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Earliest time `key` may start again under the per-key rate limit.
    fn floor(&self, key: &K) -> Instant {
        if self.min_interval.is_zero() {
            return Instant::ZERO;
        }
        self.last_start
            .get(key)
            .map_or(Instant::ZERO, |t| t.saturating_add(self.min_interval))
    }

    fn record_start(&mut self, key: &K, now: Instant) {
        if self.min_interval.is_zero() {
            return;
        }
        while let Some((t, k)) = self.start_log.front() {
            if t.saturating_add(self.min_interval) > now {
                break;
            }
            if self.last_start.get(k) == Some(t) {
                self.last_start.remove(k);
            }
            self.start_log.pop_front();
        }
        self.last_start.insert(key.clone(), now);
        self.start_log.push_back((now, key.clone()));
    }

    /// Frees one slot for an entry in `lane` if the queue is full, by
    /// evicting the last-in-line entry of the lowest non-empty lane below
    /// `lane`. Last in line rather than first: the entries that have waited
    /// longest are closest to being served, and dropping them would starve
    /// the low lane for good under sustained pressure.
    fn make_room(&mut self, lane: Lane) -> Result<Option<(K, Lane)>, ()> {
        if self.pending < self.capacity {
            return Ok(None);
        }
        let victim_lane = Lane::ALL
            .into_iter()
            .take_while(|l| *l < lane)
            .find(|l| !self.lanes[l.index()].is_empty())
            .ok_or(())?;
        let (_, key) = self.lanes[victim_lane.index()].pop_last().ok_or(())?;
        self.slots.remove(&key);
        self.pending -= 1;
        self.drops_by_lane[victim_lane.index()] += 1;
        Ok(Some((key, victim_lane)))
    }

    fn refuse(&mut self, lane: Lane) -> Added<K> {
        self.drops_by_lane[lane.index()] += 1;
        Added {
            outcome: AddOutcome::Refused,
            pending_at: None,
            dropped_lane: Some(lane),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_epoch(Duration::from_millis(ms))
    }

    #[test]
    fn dirty_rerun_keeps_its_place_from_when_it_was_requested() {
        let mut q = QueueState::new(10, Duration::ZERO);
        q.add("a", Lane::Normal, t(0));
        let a = q.pop_ready(t(0)).expect("a ready");
        assert!(matches!(
            q.add("a", Lane::Normal, t(1)).outcome,
            AddOutcome::MarkedDirty { .. }
        ));
        q.add("b", Lane::Normal, t(2));
        assert_eq!(q.done(&"a", a.claim, t(3)), Some(t(1)));
        assert_eq!(q.pop_ready(t(3)).map(|p| p.key), Some("a"));
        assert_eq!(q.pop_ready(t(3)).map(|p| p.key), Some("b"));
    }

    #[test]
    fn a_stale_claim_cannot_finish_a_later_processing_round() {
        let mut q = QueueState::new(10, Duration::ZERO);
        q.add(1, Lane::Normal, t(0));
        let first = q.pop_ready(t(0)).expect("ready");
        q.add(1, Lane::Normal, t(0));
        q.done(&1, first.claim, t(0));
        let second = q.pop_ready(t(0)).expect("rerun");
        assert_eq!(q.done(&1, first.claim, t(0)), None);
        assert_eq!(q.key_state(&1), Some(KeyState::Processing { dirty: false }));
        q.done(&1, second.claim, t(0));
        assert_eq!(q.key_state(&1), None);
    }

    #[test]
    fn discard_shutdown_forgets_dirty_marks_and_keeps_counts_consistent() {
        let mut q = QueueState::new(10, Duration::ZERO);
        q.add(1, Lane::High, t(0));
        q.add(2, Lane::Low, t(0));
        let p = q.pop_ready(t(0)).expect("1");
        q.add(1, Lane::High, t(0));
        assert_eq!(q.len(), 2);
        q.shut_down(ShutdownMode::Discard, t(0));
        assert_eq!(q.len(), 0);
        assert_eq!(q.lane_len(Lane::High), 0);
        assert_eq!(q.done(&1, p.claim, t(0)), None);
        assert_eq!(q.discarded(), 2);
        assert!(q.lanes_empty());
    }
}
