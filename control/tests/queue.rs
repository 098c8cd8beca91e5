//! Work queue behaviour, one guarantee per test, on a manual clock.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_control::clock::{Clock, Instant, ManualClock};
use meridian_control::queue::{AddOutcome, KeyState, Lane, QueueConfig, WorkQueue};

fn queue(clock: &ManualClock, capacity: usize, min_interval: Duration) -> WorkQueue<&'static str> {
    WorkQueue::new(
        QueueConfig {
            name: "test".to_owned(),
            capacity,
            min_interval,
        },
        clock.shared(),
    )
    .expect("valid config")
}

fn drain(q: &WorkQueue<&'static str>) -> Vec<&'static str> {
    let mut out = Vec::new();
    while let Some(g) = q.try_get() {
        out.push(*g.key());
    }
    out
}

fn lanes(pairs: &[(Lane, usize)]) -> BTreeMap<Lane, usize> {
    let mut m: BTreeMap<Lane, usize> = Lane::ALL.into_iter().map(|l| (l, 0)).collect();
    for (l, n) in pairs {
        m.insert(*l, *n);
    }
    m
}

#[test]
fn a_key_added_many_times_is_queued_once() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    assert!(matches!(
        q.add("a", Lane::Normal),
        AddOutcome::Queued { evicted: None }
    ));
    for _ in 0..5 {
        assert_eq!(q.add("a", Lane::Normal), AddOutcome::Merged);
    }
    q.add("b", Lane::Normal);
    assert_eq!(q.len(), 2);
    assert_eq!(drain(&q), vec!["a", "b"]);
}

#[test]
fn key_added_while_processing_runs_once_more_after_done() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add("a", Lane::Normal);
    let guard = q.try_get().expect("a is ready");
    for _ in 0..3 {
        assert!(matches!(
            q.add("a", Lane::Normal),
            AddOutcome::MarkedDirty { .. }
        ));
    }
    assert_eq!(
        q.key_state(&"a"),
        Some(KeyState::Processing { dirty: true })
    );
    assert!(
        q.try_get().is_none(),
        "a must not be handed out while processing"
    );
    guard.done();
    let again = q.try_get().expect("a runs once more");
    assert_eq!(*again.key(), "a");
    assert!(q.try_get().is_none());
    again.done();
    assert!(q.try_get().is_none(), "exactly once more, not once per add");
    assert!(q.is_empty());
}

#[test]
fn dropping_a_guard_ends_processing() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add("a", Lane::Normal);
    {
        let _guard = q.try_get().expect("ready");
        assert_eq!(q.processing(), 1);
    }
    assert_eq!(q.processing(), 0);
    assert_eq!(q.key_state(&"a"), None);
}

#[test]
fn higher_lanes_are_served_first_and_each_lane_is_fifo() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add("low1", Lane::Low);
    q.add("norm1", Lane::Normal);
    q.add("crit1", Lane::Critical);
    q.add("low2", Lane::Low);
    q.add("high1", Lane::High);
    q.add("norm2", Lane::Normal);
    q.add("crit2", Lane::Critical);
    assert_eq!(
        drain(&q),
        vec!["crit1", "crit2", "high1", "norm1", "norm2", "low1", "low2"]
    );
}

#[test]
fn re_adding_a_key_in_a_higher_lane_promotes_it_and_keeps_its_place_in_line() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add("a", Lane::Low);
    q.add("b", Lane::High);
    q.add("a", Lane::High);
    q.add("c", Lane::High);
    // Lower-lane re-adds never demote.
    q.add("c", Lane::Low);
    assert_eq!(q.len_by_lane(), lanes(&[(Lane::High, 3)]));
    assert_eq!(drain(&q), vec!["a", "b", "c"]);
}

#[test]
fn an_earlier_add_wins_over_a_later_delayed_add() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    let t0 = clock.now();

    q.add("now_then_later", Lane::Normal);
    q.add_after("now_then_later", Lane::Normal, Duration::from_secs(10));
    q.add_after("later_then_now", Lane::Normal, Duration::from_secs(10));
    q.add("later_then_now", Lane::Normal);
    q.add_after("ten_then_five", Lane::Normal, Duration::from_secs(10));
    q.add_after("ten_then_five", Lane::Normal, Duration::from_secs(5));
    q.add_after("five_then_ten", Lane::Normal, Duration::from_secs(5));
    q.add_after("five_then_ten", Lane::Normal, Duration::from_secs(10));

    assert_eq!(drain(&q), vec!["now_then_later", "later_then_now"]);
    let five = t0 + Duration::from_secs(5);
    for k in ["ten_then_five", "five_then_ten"] {
        assert_eq!(
            q.key_state(&k),
            Some(KeyState::Pending {
                lane: Lane::Normal,
                eligible_at: five
            })
        );
    }
    clock.advance(Duration::from_secs(5));
    assert_eq!(drain(&q), vec!["ten_then_five", "five_then_ten"]);
}

#[test]
fn a_delayed_key_is_not_handed_out_before_its_time() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add_after("a", Lane::Critical, Duration::from_millis(500));
    q.add("b", Lane::Low);
    assert_eq!(drain(&q), vec!["b"]);
    clock.advance(Duration::from_millis(499));
    assert!(q.try_get().is_none());
    assert_eq!(q.ready_len(), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(q.ready_len(), 1);
    assert_eq!(drain(&q), vec!["a"]);
}

#[test]
fn per_key_rate_limit_spaces_processing_starts() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::from_secs(1));
    q.add("a", Lane::Normal);
    q.add("b", Lane::Normal);
    let start = clock.now();
    q.try_get().expect("a").done();
    q.add("a", Lane::Normal);
    assert_eq!(
        q.key_state(&"a"),
        Some(KeyState::Pending {
            lane: Lane::Normal,
            eligible_at: start + Duration::from_secs(1)
        })
    );
    // Other keys are not held back by a's limit.
    assert_eq!(drain(&q), vec!["b"]);
    clock.advance(Duration::from_millis(999));
    assert!(q.try_get().is_none());
    clock.advance(Duration::from_millis(1));
    assert_eq!(drain(&q), vec!["a"]);
}

#[test]
fn a_full_queue_evicts_the_newest_entry_of_the_lowest_lane_for_a_higher_lane_add() {
    let clock = ManualClock::new();
    let q = queue(&clock, 4, Duration::ZERO);
    q.add("low_old", Lane::Low);
    q.add("low_new", Lane::Low);
    q.add("norm_old", Lane::Normal);
    q.add("norm_new", Lane::Normal);
    assert_eq!(
        q.add("high", Lane::High),
        AddOutcome::Queued {
            evicted: Some(("low_new", Lane::Low))
        }
    );
    assert_eq!(
        q.add("crit", Lane::Critical),
        AddOutcome::Queued {
            evicted: Some(("low_old", Lane::Low))
        }
    );
    assert_eq!(
        q.add("high2", Lane::High),
        AddOutcome::Queued {
            evicted: Some(("norm_new", Lane::Normal))
        }
    );
    assert_eq!(q.len(), 4);
    assert_eq!(q.drops(), 3);
    let mut expected_drops: BTreeMap<Lane, u64> = Lane::ALL.into_iter().map(|l| (l, 0)).collect();
    expected_drops.insert(Lane::Low, 2);
    expected_drops.insert(Lane::Normal, 1);
    assert_eq!(q.drops_by_lane(), expected_drops);
    assert_eq!(drain(&q), vec!["crit", "high", "high2", "norm_old"]);
}

#[test]
fn adding_to_the_lowest_lane_of_a_full_queue_is_refused() {
    let clock = ManualClock::new();
    let q = queue(&clock, 2, Duration::ZERO);
    q.add("a", Lane::Low);
    q.add("b", Lane::High);
    assert_eq!(q.add("c", Lane::Low), AddOutcome::Refused);
    // A full queue holding nothing below the add's own lane refuses it too.
    q.add("a", Lane::High);
    assert_eq!(q.add("d", Lane::High), AddOutcome::Refused);
    // Merging an already queued key needs no room.
    assert_eq!(q.add("b", Lane::Critical), AddOutcome::Merged);
    assert_eq!(q.drops(), 2);
    assert_eq!(q.len(), 2);
}

#[test]
fn len_by_lane_counts_pending_delayed_and_dirty_keys() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add("a", Lane::High);
    let guard = q.try_get().expect("a");
    q.add("a", Lane::Critical);
    q.add_after("b", Lane::Low, Duration::from_secs(60));
    q.add("c", Lane::Low);
    assert_eq!(
        q.len_by_lane(),
        lanes(&[(Lane::Critical, 1), (Lane::Low, 2)])
    );
    assert_eq!(q.len(), 3);
    assert_eq!(q.processing(), 1);
    guard.done();
    assert_eq!(
        q.len_by_lane(),
        lanes(&[(Lane::Critical, 1), (Lane::Low, 2)])
    );
    assert_eq!(q.processing(), 0);
}

#[tokio::test]
async fn a_waiting_getter_wakes_when_a_key_is_added() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    let mut get = Box::pin(q.get());
    assert!(futures::poll!(&mut get).is_pending());
    q.add("a", Lane::Normal);
    let guard = get.await.expect("a");
    assert_eq!(*guard.key(), "a");
}

#[tokio::test]
async fn a_waiting_getter_wakes_when_a_delayed_key_becomes_eligible() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    let mut get = Box::pin(q.get());
    assert!(futures::poll!(&mut get).is_pending());
    assert_eq!(clock.pending_timers(), 0, "nothing delayed, so no timer");

    q.add_after("a", Lane::Normal, Duration::from_secs(5));
    assert!(futures::poll!(&mut get).is_pending());
    assert_eq!(
        clock.next_deadline(),
        Some(Instant::ZERO + Duration::from_secs(5))
    );

    // A key due earlier re-arms the waiting getter.
    q.add_after("b", Lane::Normal, Duration::from_secs(2));
    assert!(futures::poll!(&mut get).is_pending());
    assert_eq!(
        clock.next_deadline(),
        Some(Instant::ZERO + Duration::from_secs(2))
    );

    clock.advance(Duration::from_millis(1_999));
    assert!(futures::poll!(&mut get).is_pending());
    clock.advance(Duration::from_millis(1));
    let b = get.await.expect("b");
    assert_eq!(*b.key(), "b");
    assert_eq!(clock.now(), Instant::ZERO + Duration::from_secs(2));
}

#[tokio::test]
async fn shut_down_drains_eligible_keys_then_getters_return_none() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add("a", Lane::Normal);
    q.add("b", Lane::High);
    q.add_after("later", Lane::Critical, Duration::from_secs(10));
    q.shut_down();
    assert!(q.is_shut_down());
    assert_eq!(q.add("c", Lane::Critical), AddOutcome::ShutDown);
    assert_eq!(q.discarded(), 1);
    let first = q.get().await.expect("b");
    assert_eq!(*first.key(), "b");
    first.done();
    assert_eq!(q.get().await.map(|g| *g.key()), Some("a"));
    assert!(q.get().await.is_none());
    clock.advance(Duration::from_secs(10));
    assert!(q.get().await.is_none());
}

#[tokio::test]
async fn shut_down_now_makes_getters_return_none_at_once_but_lets_holders_finish() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add("a", Lane::Normal);
    q.add("b", Lane::Normal);
    let held = q.try_get().expect("a");
    q.add("a", Lane::Normal);
    q.shut_down_now();
    assert!(q.get().await.is_none());
    assert_eq!(q.processing(), 1);
    held.done();
    assert!(q.get().await.is_none(), "a's rerun was discarded");
    assert!(q.is_empty());
    assert_eq!(q.discarded(), 2);
}

#[tokio::test]
async fn a_waiting_getter_returns_none_when_the_queue_shuts_down() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.add_after("a", Lane::Normal, Duration::from_secs(1));
    let mut get = Box::pin(q.get());
    assert!(futures::poll!(&mut get).is_pending());
    q.shut_down();
    assert!(get.await.is_none());
}

#[tokio::test]
async fn idle_resolves_only_once_nothing_is_processing_or_eligible() {
    let clock = ManualClock::new();
    let q = queue(&clock, 10, Duration::ZERO);
    q.idle().await;
    q.add("a", Lane::Normal);
    let mut idle = Box::pin(q.idle());
    assert!(futures::poll!(&mut idle).is_pending());
    let guard = q.try_get().expect("a");
    assert!(futures::poll!(&mut idle).is_pending());
    q.add_after("b", Lane::Normal, Duration::from_secs(1));
    guard.done();
    // b is not due yet, so nothing can run now: idle.
    idle.await;
    clock.advance(Duration::from_secs(1));
    let mut idle = Box::pin(q.idle());
    assert!(futures::poll!(&mut idle).is_pending());
}

#[test]
fn a_queue_without_capacity_is_refused() {
    let clock = ManualClock::new();
    let r = WorkQueue::<u32>::new(
        QueueConfig {
            capacity: 0,
            ..QueueConfig::default()
        },
        clock.shared(),
    );
    assert!(r.is_err());
}
