//! ManualClock and SystemClock behaviour, observed through the Clock trait.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use meridian_control::clock::{Clock, Instant, ManualClock, SystemClock};

fn secs(s: u64) -> Instant {
    Instant::from_epoch(Duration::from_secs(s))
}

#[tokio::test]
async fn timers_wake_in_deadline_order_and_ties_in_registration_order() {
    let clock = ManualClock::new();
    // (id, deadline): ids 1 and 3 share a deadline; 1 registered first.
    let plan = [(0, 30), (1, 10), (2, 20), (3, 10), (4, 40)];
    let mut sleepers: FuturesUnordered<_> = plan
        .iter()
        .map(|&(id, at)| {
            let sleep = clock.sleep_until(secs(at));
            async move {
                sleep.await;
                id
            }
        })
        .collect();
    assert_eq!(clock.pending_timers(), 5);
    // One poll registers every waker; FuturesUnordered then yields futures
    // in the order their wakers were called.
    assert!(futures::poll!(sleepers.next()).is_pending());

    assert_eq!(clock.advance(Duration::from_secs(50)), 5);
    let woken: Vec<i32> = sleepers.collect().await;
    assert_eq!(woken, vec![1, 3, 2, 0, 4]);
    assert_eq!(clock.pending_timers(), 0);
}

#[tokio::test]
async fn advancing_past_several_deadlines_wakes_all_of_them_and_no_later_one() {
    let clock = ManualClock::new();
    let mut tasks = Vec::new();
    for s in [1, 2, 3] {
        let sleep = clock.sleep(Duration::from_secs(s));
        tasks.push(tokio::spawn(sleep));
    }
    let late = clock.sleep(Duration::from_secs(10));
    clock.wait_for_timers(4).await;

    assert_eq!(clock.advance(Duration::from_secs(5)), 3);
    for t in tasks {
        t.await.expect("sleeper task");
    }
    assert_eq!(clock.pending_timers(), 1);
    assert_eq!(clock.next_deadline(), Some(secs(10)));
    let mut late = late;
    assert!(futures::poll!(&mut late).is_pending());
    clock.advance(Duration::from_secs(5));
    assert!(futures::poll!(&mut late).is_ready());
}

#[tokio::test]
async fn a_sleep_with_a_deadline_in_the_past_returns_at_once() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(10));
    let mut past = clock.sleep_until(secs(5));
    let mut now = clock.sleep_until(secs(10));
    let mut zero = clock.sleep(Duration::ZERO);
    assert_eq!(clock.pending_timers(), 0);
    assert!(futures::poll!(&mut past).is_ready());
    assert!(futures::poll!(&mut now).is_ready());
    assert!(futures::poll!(&mut zero).is_ready());

    let system = SystemClock::new();
    // Completes without the test driving time: the deadline already passed.
    system.sleep_until(Instant::ZERO).await;
}

#[tokio::test]
async fn a_sleep_is_pending_until_its_exact_deadline() {
    let clock = ManualClock::new();
    let mut sleep = clock.sleep(Duration::from_millis(1_000));
    assert!(futures::poll!(&mut sleep).is_pending());
    clock.advance(Duration::from_millis(999));
    assert!(futures::poll!(&mut sleep).is_pending());
    clock.advance(Duration::from_millis(1));
    assert!(futures::poll!(&mut sleep).is_ready());
}

#[tokio::test]
async fn wait_for_timers_resolves_once_the_sleeper_is_registered() {
    let clock = ManualClock::new();
    let c = clock.clone();
    let task = tokio::spawn(async move {
        c.sleep(Duration::from_secs(3)).await;
        c.now()
    });
    clock.wait_for_timers(1).await;
    assert_eq!(clock.next_deadline(), Some(secs(3)));
    assert_eq!(clock.advance_to_next_deadline(), Some(secs(3)));
    assert_eq!(task.await.expect("sleeper"), secs(3));
    assert_eq!(clock.advance_to_next_deadline(), None);
}

#[tokio::test]
async fn a_jump_fires_every_timer_up_to_the_new_time() {
    let clock = ManualClock::new();
    let a = tokio::spawn(clock.sleep(Duration::from_secs(100)));
    let b = tokio::spawn(clock.sleep(Duration::from_secs(200)));
    clock.wait_for_timers(2).await;
    assert_eq!(clock.advance_to(secs(150)), Ok(1));
    a.await.expect("a");
    assert_eq!(clock.now(), secs(150));
    assert_eq!(clock.pending_timers(), 1);
    assert_eq!(clock.advance_to(secs(200)), Ok(1));
    b.await.expect("b");
}

#[test]
fn the_system_clock_is_monotonic_and_reads_plausible_wall_time() {
    let clock = SystemClock::new();
    let a = clock.now();
    let b = clock.now();
    assert!(b >= a);
    // After 2020-09-13: a wall clock reading this low means a broken host
    // or a broken conversion.
    assert!(clock.now_unix_ms() > 1_600_000_000_000);
}
