//! Property tests of the work queue against small reference models.
//!
//! Each property drives the real queue (on a manual clock) and a naive model
//! with the same random operations, and checks what the queue hands out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_control::clock::{Clock, Instant, ManualClock};
use meridian_control::queue::{AddOutcome, Lane, QueueConfig, WorkGuard, WorkQueue};
use proptest::prelude::*;

type Key = u8;

fn new_queue(clock: &ManualClock, capacity: usize, min_interval: Duration) -> WorkQueue<Key> {
    WorkQueue::new(
        QueueConfig {
            name: "props".to_owned(),
            capacity,
            min_interval,
        },
        clock.shared(),
    )
    .expect("valid config")
}

fn lane() -> impl Strategy<Value = Lane> {
    prop_oneof![
        Just(Lane::Low),
        Just(Lane::Normal),
        Just(Lane::High),
        Just(Lane::Critical)
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Add(Key, Lane),
    AddAfter(Key, Lane, u16),
    Get,
    /// Done on the n-th held guard (modulo how many are held).
    Done(usize),
    Advance(u16),
}

fn op(keys: Key) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..keys, lane()).prop_map(|(k, l)| Op::Add(k, l)),
        2 => (0..keys, lane(), 1u16..200).prop_map(|(k, l, d)| Op::AddAfter(k, l, d)),
        4 => Just(Op::Get),
        3 => any::<usize>().prop_map(Op::Done),
        1 => (0u16..150).prop_map(Op::Advance),
    ]
}

fn ms(n: u64) -> Instant {
    Instant::from_epoch(Duration::from_millis(n))
}

/// A naive model of every queue rule: linear scans, no clever structures.
#[derive(Debug, Default)]
struct Model {
    capacity: usize,
    min_interval: u64,
    now: u64,
    seq: u64,
    // key -> (lane, eligible_at ms, seq)
    pending: BTreeMap<Key, (Lane, u64, u64)>,
    // key -> dirty rerun (lane, at, seq)
    processing: BTreeMap<Key, Option<(Lane, u64, u64)>>,
    last_start: BTreeMap<Key, u64>,
    drops: BTreeMap<Lane, u64>,
}

impl Model {
    fn len(&self) -> usize {
        self.pending.len() + self.processing.values().filter(|r| r.is_some()).count()
    }

    fn floor(&self, k: Key) -> u64 {
        if self.min_interval == 0 {
            return 0;
        }
        self.last_start.get(&k).map_or(0, |t| t + self.min_interval)
    }

    fn make_room(&mut self, lane: Lane) -> Result<Option<(Key, Lane)>, ()> {
        if self.len() < self.capacity {
            return Ok(None);
        }
        let lowest = self
            .pending
            .values()
            .map(|(l, _, _)| *l)
            .filter(|l| *l < lane)
            .min()
            .ok_or(())?;
        let victim = self
            .pending
            .iter()
            .filter(|(_, (l, _, _))| *l == lowest)
            .max_by_key(|(_, (_, at, seq))| (*at, *seq))
            .map(|(k, _)| *k)
            .ok_or(())?;
        self.pending.remove(&victim);
        *self.drops.entry(lowest).or_default() += 1;
        Ok(Some((victim, lowest)))
    }

    fn add(&mut self, k: Key, lane: Lane, at: u64) -> AddOutcome<Key> {
        let at = at.max(self.floor(k));
        if let Some((l, a, _)) = self.pending.get_mut(&k) {
            *l = (*l).max(lane);
            *a = (*a).min(at);
            return AddOutcome::Merged;
        }
        if let Some(rerun) = self.processing.get(&k).copied() {
            if let Some((l, a, s)) = rerun {
                self.processing.insert(k, Some((l.max(lane), a.min(at), s)));
                return AddOutcome::MarkedDirty { evicted: None };
            }
            return match self.make_room(lane) {
                Ok(evicted) => {
                    self.seq += 1;
                    self.processing.insert(k, Some((lane, at, self.seq)));
                    AddOutcome::MarkedDirty { evicted }
                }
                Err(()) => {
                    *self.drops.entry(lane).or_default() += 1;
                    AddOutcome::Refused
                }
            };
        }
        match self.make_room(lane) {
            Ok(evicted) => {
                self.seq += 1;
                self.pending.insert(k, (lane, at, self.seq));
                AddOutcome::Queued { evicted }
            }
            Err(()) => {
                *self.drops.entry(lane).or_default() += 1;
                AddOutcome::Refused
            }
        }
    }

    fn get(&mut self) -> Option<(Key, Lane)> {
        let now = self.now;
        let (k, lane) = self
            .pending
            .iter()
            .filter(|(_, (_, at, _))| *at <= now)
            .max_by_key(|(_, (l, at, seq))| (*l, std::cmp::Reverse((*at, *seq))))
            .map(|(k, (l, _, _))| (*k, *l))?;
        self.pending.remove(&k);
        self.processing.insert(k, None);
        if self.min_interval > 0 {
            self.last_start.insert(k, now);
        }
        Some((k, lane))
    }

    fn done(&mut self, k: Key) {
        if let Some(Some((l, at, seq))) = self.processing.remove(&k) {
            let at = at.max(self.floor(k));
            self.pending.insert(k, (l, at, seq));
        }
    }

    fn len_by_lane(&self) -> BTreeMap<Lane, usize> {
        let mut m: BTreeMap<Lane, usize> = Lane::ALL.into_iter().map(|l| (l, 0)).collect();
        for (l, _, _) in self.pending.values() {
            *m.entry(*l).or_default() += 1;
        }
        for (l, _, _) in self.processing.values().flatten() {
            *m.entry(*l).or_default() += 1;
        }
        m
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_queue_matches_a_reference_model_under_random_operations(
        capacity in 1usize..8,
        min_interval in prop_oneof![Just(0u64), 1u64..100],
        ops in proptest::collection::vec(op(10), 1..200),
    ) {
        let clock = ManualClock::new();
        let q = new_queue(&clock, capacity, Duration::from_millis(min_interval));
        let mut model = Model { capacity, min_interval, ..Model::default() };
        let mut held: Vec<WorkGuard<Key>> = Vec::new();

        for op in ops {
            match op {
                Op::Add(k, l) => {
                    let got = q.add(k, l);
                    let want = model.add(k, l, model.now);
                    prop_assert_eq!(got, want, "add {} {:?}", k, l);
                }
                Op::AddAfter(k, l, d) => {
                    let got = q.add_after(k, l, Duration::from_millis(u64::from(d)));
                    let want = model.add(k, l, model.now + u64::from(d));
                    prop_assert_eq!(got, want, "add_after {} {:?} {}", k, l, d);
                }
                Op::Get => {
                    let got = q.try_get();
                    let want = model.get();
                    prop_assert_eq!(got.as_ref().map(|g| (*g.key(), g.lane())), want);
                    if let Some(g) = got {
                        prop_assert!(
                            held.iter().all(|h| h.key() != g.key()),
                            "key {} handed out while already held", g.key()
                        );
                        held.push(g);
                    }
                }
                Op::Done(i) => {
                    if !held.is_empty() {
                        let g = held.swap_remove(i % held.len());
                        model.done(*g.key());
                        g.done();
                    }
                }
                Op::Advance(d) => {
                    clock.advance(Duration::from_millis(u64::from(d)));
                    model.now += u64::from(d);
                }
            }
            prop_assert_eq!(clock.now(), ms(model.now));
            prop_assert!(q.len() <= capacity);
            prop_assert_eq!(q.len(), model.len());
            prop_assert_eq!(q.len_by_lane(), model.len_by_lane());
            prop_assert_eq!(q.processing(), held.len());
            let drops: u64 = model.drops.values().sum();
            prop_assert_eq!(q.drops(), drops);
        }
    }

    #[test]
    fn any_sequence_of_adds_queues_each_key_exactly_once(
        adds in proptest::collection::vec((0u8..20, lane()), 0..300),
    ) {
        let clock = ManualClock::new();
        let q = new_queue(&clock, 1_000, Duration::ZERO);
        let mut distinct = BTreeSet::new();
        for (k, l) in adds {
            q.add(k, l);
            distinct.insert(k);
        }
        prop_assert_eq!(q.len(), distinct.len());
        let mut seen = Vec::new();
        while let Some(g) = q.try_get() {
            seen.push(*g.key());
            g.done();
        }
        seen.sort_unstable();
        prop_assert_eq!(seen, distinct.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn no_key_is_held_twice_and_a_dirty_key_reruns_exactly_once(
        ops in proptest::collection::vec(
            prop_oneof![
                3 => (0u8..6).prop_map(|k| Op::Add(k, Lane::Normal)),
                3 => Just(Op::Get),
                2 => any::<usize>().prop_map(Op::Done),
            ],
            1..300,
        ),
    ) {
        let clock = ManualClock::new();
        let q = new_queue(&clock, 1_000, Duration::ZERO);
        // Sets only: which keys are queued, held, owed a rerun.
        let mut queued = BTreeSet::new();
        let mut dirty = BTreeSet::new();
        let mut held: Vec<WorkGuard<Key>> = Vec::new();
        for op in ops {
            match op {
                Op::Add(k, l) => {
                    q.add(k, l);
                    if held.iter().any(|g| *g.key() == k) {
                        dirty.insert(k);
                    } else {
                        queued.insert(k);
                    }
                }
                Op::Get => match q.try_get() {
                    Some(g) => {
                        let k = *g.key();
                        prop_assert!(held.iter().all(|h| *h.key() != k), "{} held twice", k);
                        prop_assert!(queued.remove(&k), "{} handed out but never queued", k);
                        held.push(g);
                    }
                    None => prop_assert!(queued.is_empty(), "queued keys {:?} not handed out", queued),
                },
                Op::Done(i) => {
                    if !held.is_empty() {
                        let g = held.swap_remove(i % held.len());
                        let k = *g.key();
                        g.done();
                        if dirty.remove(&k) {
                            queued.insert(k);
                        }
                    }
                }
                _ => unreachable!("not generated"),
            }
        }
        // Release everything; each queued or owed key comes out exactly once.
        for g in held.drain(..) {
            let k = *g.key();
            g.done();
            if dirty.remove(&k) {
                queued.insert(k);
            }
        }
        let mut out = Vec::new();
        while let Some(g) = q.try_get() {
            out.push(*g.key());
            g.done();
        }
        out.sort_unstable();
        prop_assert_eq!(out, queued.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_higher_lane_is_always_handed_out_before_a_lower_one(
        ops in proptest::collection::vec(
            prop_oneof![
                3 => (0u8..30, lane()).prop_map(|(k, l)| Op::Add(k, l)),
                2 => Just(Op::Get),
            ],
            1..300,
        ),
    ) {
        let clock = ManualClock::new();
        let q = new_queue(&clock, 1_000, Duration::ZERO);
        // key -> highest lane asked for while queued
        let mut queued: BTreeMap<Key, Lane> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Add(k, l) => {
                    let e = queued.entry(k).or_insert(l);
                    *e = (*e).max(l);
                    q.add(k, l);
                }
                Op::Get => {
                    let best = queued.values().max().copied();
                    let got = q.try_get();
                    prop_assert_eq!(got.as_ref().map(|g| g.lane()), best);
                    if let Some(g) = got {
                        prop_assert_eq!(queued.remove(g.key()), Some(g.lane()));
                        // Done at once: the key may be queued again later.
                        g.done();
                    }
                }
                _ => unreachable!("not generated"),
            }
        }
    }

    #[test]
    fn the_bound_is_respected_and_every_drop_is_counted(
        capacity in 1usize..10,
        ops in proptest::collection::vec(
            prop_oneof![
                5 => (0u8..50, lane()).prop_map(|(k, l)| Op::Add(k, l)),
                1 => Just(Op::Get),
            ],
            1..300,
        ),
    ) {
        let clock = ManualClock::new();
        let q = new_queue(&clock, capacity, Duration::ZERO);
        let mut refused = 0u64;
        let mut evicted = 0u64;
        for op in ops {
            match op {
                Op::Add(k, l) => {
                    let before = q.len_by_lane();
                    match q.add(k, l) {
                        AddOutcome::Refused => {
                            refused += 1;
                            prop_assert_eq!(q.len(), capacity);
                            prop_assert!(
                                before.iter().all(|(lane, n)| *lane >= l || *n == 0),
                                "refused although a lower lane had entries: {:?}", before
                            );
                        }
                        AddOutcome::Queued { evicted: Some((_, victim_lane)) } => {
                            evicted += 1;
                            prop_assert!(victim_lane < l);
                            let lowest = before.iter().find(|(_, n)| **n > 0).map(|(l, _)| *l);
                            prop_assert_eq!(Some(victim_lane), lowest);
                        }
                        _ => {}
                    }
                }
                Op::Get => {
                    if let Some(g) = q.try_get() {
                        g.done();
                    }
                }
                _ => unreachable!("not generated"),
            }
            prop_assert!(q.len() <= capacity);
            prop_assert_eq!(q.drops(), refused + evicted);
        }
    }

    #[test]
    fn delayed_keys_are_never_handed_out_before_their_time(
        ops in proptest::collection::vec(
            prop_oneof![
                3 => (0u8..10, 0u16..300).prop_map(|(k, d)| Op::AddAfter(k, Lane::Normal, d)),
                3 => Just(Op::Get),
                2 => any::<usize>().prop_map(Op::Done),
                2 => (0u16..100).prop_map(Op::Advance),
            ],
            1..200,
        ),
    ) {
        let clock = ManualClock::new();
        let q = new_queue(&clock, 1_000, Duration::ZERO);
        // key -> earliest time any add since its last hand-out asked for
        let mut due: BTreeMap<Key, Instant> = BTreeMap::new();
        let mut held: Vec<WorkGuard<Key>> = Vec::new();
        for op in ops {
            match op {
                Op::AddAfter(k, l, d) => {
                    let at = clock.now() + Duration::from_millis(u64::from(d));
                    let e = due.entry(k).or_insert(at);
                    *e = (*e).min(at);
                    q.add_after(k, l, Duration::from_millis(u64::from(d)));
                }
                Op::Get => {
                    if let Some(g) = q.try_get() {
                        let at = due.remove(g.key());
                        prop_assert!(at.is_some_and(|at| at <= clock.now()),
                            "{} handed out at {:?}, due {:?}", g.key(), clock.now(), at);
                        held.push(g);
                    }
                }
                Op::Done(i) => {
                    if !held.is_empty() {
                        held.swap_remove(i % held.len()).done();
                    }
                }
                Op::Advance(d) => {
                    clock.advance(Duration::from_millis(u64::from(d)));
                }
                Op::Add(..) => unreachable!("not generated"),
            }
        }
        // Liveness: once everything is due and released, all of it comes out.
        held.clear();
        clock.advance(Duration::from_secs(1));
        while let Some(g) = q.try_get() {
            prop_assert!(due.remove(g.key()).is_some());
        }
        prop_assert!(due.is_empty(), "never handed out: {:?}", due);
    }
}
