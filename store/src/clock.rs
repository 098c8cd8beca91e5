//! Time, the only way Meridian's libraries read it.
//!
//! Defined here, in the lowest crate, so the store's transaction retry and
//! every tier above it wait through the same [`Clock`]; `meridian_control`
//! re-exports it as `meridian_control::clock`.
//!
//! Owns the [`Clock`] trait, the monotonic [`Instant`] it hands out, the
//! production [`SystemClock`] (tokio timers) and the test [`ManualClock`]
//! (time moves only when a test says so).
//!
//! Must never: let safety depend on wall time. Wall time (`now_unix_ms`) exists only to be
//! written into records for humans and for lease expiry hints; every decision
//! uses the monotonic [`Instant`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::{Add, Sub};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A point on a clock's monotonic time line: the time elapsed since that
/// clock's own epoch (its creation). Instants from different clocks are not
/// comparable in any meaningful way.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(Duration);

impl Instant {
    /// The clock's epoch.
    pub const ZERO: Instant = Instant(Duration::ZERO);

    /// The instant `since_epoch` after the clock's epoch.
    pub const fn from_epoch(since_epoch: Duration) -> Self {
        Instant(since_epoch)
    }

    /// Time elapsed since the clock's epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later than `self`.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        self.0.checked_add(d).map(Instant)
    }

    /// `self + d`, clamped to the largest representable instant: a deadline
    /// that far away means "never", which is what callers want on overflow.
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        self.saturating_add(rhs)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "T+{:?}", self.0)
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A future that completes when a clock reaches a deadline.
///
/// `'static` so that it can be stored in a struct or raced in `select!`
/// without borrowing the clock.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The source of time for the store's retry and everything in meridian-control.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic now: never goes backwards.
    fn now(&self) -> Instant;

    /// Wall time in milliseconds since the unix epoch, for records stored in
    /// a database. May jump in either direction; never use it to order events.
    fn now_unix_ms(&self) -> u64;

    /// Completes once [`Clock::now`] is at or past `deadline`; at once if it
    /// already is.
    fn sleep_until(&self, deadline: Instant) -> Sleep;

    /// Completes `d` after now.
    fn sleep(&self, d: Duration) -> Sleep {
        self.sleep_until(self.now().saturating_add(d))
    }
}

/// How clocks are passed around: one clock shared by a whole component.
pub type SharedClock = Arc<dyn Clock>;

/// Real time, with tokio timers. Honours tokio's paused test time too, since
/// it reads `tokio::time::Instant`.
#[derive(Debug, Clone)]
pub struct SystemClock {
    epoch: tokio::time::Instant,
}

impl SystemClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        SystemClock {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// This clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant(self.epoch.elapsed())
    }

    fn now_unix_ms(&self) -> u64 {
        // A wall clock set before 1970 is a broken host; 0 keeps records
        // well-formed rather than failing the caller.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        match self.epoch.checked_add(deadline.since_epoch()) {
            // The tokio timer is created on first poll so that building a
            // Sleep outside a runtime does not panic.
            Some(at) => Box::pin(async move { tokio::time::sleep_until(at).await }),
            None => Box::pin(std::future::pending()),
        }
    }
}

/// Errors from moving a [`ManualClock`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// Monotonic time cannot go backwards; use
    /// [`ManualClock::set_unix_ms`] to make the wall clock jump back.
    #[error("monotonic time cannot go backwards: now {now}, requested {requested}")]
    WouldGoBackwards { now: Instant, requested: Instant },
}

/// A clock that moves only when told to. Timers fire inside
/// [`ManualClock::advance`] in deadline order, ties in registration order.
///
/// Cloning gives another handle to the same clock.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    state: Mutex<ManualState>,
    // Lets tests await "n timers are registered" without sleeping.
    pending_tx: tokio::sync::watch::Sender<usize>,
}

struct ManualState {
    now: Instant,
    wall_anchor_ms: u64,
    wall_anchor_at: Instant,
    next_seq: u64,
    // Keyed by (deadline, registration order): iteration order is firing order.
    timers: BTreeMap<(Instant, u64), Option<Waker>>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("ManualClock")
            .field("now", &st.now)
            .field("pending_timers", &st.timers.len())
            .finish()
    }
}

/// Wall time a fresh [`ManualClock`] starts at: 2023-11-14T22:13:20Z. Fixed so
/// that records written in tests are reproducible.
pub const MANUAL_CLOCK_DEFAULT_UNIX_MS: u64 = 1_700_000_000_000;

impl ManualClock {
    /// A clock at [`Instant::ZERO`], wall time [`MANUAL_CLOCK_DEFAULT_UNIX_MS`].
    pub fn new() -> Self {
        ManualClock::starting_at_unix_ms(MANUAL_CLOCK_DEFAULT_UNIX_MS)
    }

    /// A clock at [`Instant::ZERO`] whose wall time reads `unix_ms`.
    pub fn starting_at_unix_ms(unix_ms: u64) -> Self {
        let (pending_tx, _) = tokio::sync::watch::channel(0);
        ManualClock {
            inner: Arc::new(ManualInner {
                state: Mutex::new(ManualState {
                    now: Instant::ZERO,
                    wall_anchor_ms: unix_ms,
                    wall_anchor_at: Instant::ZERO,
                    next_seq: 0,
                    timers: BTreeMap::new(),
                }),
                pending_tx,
            }),
        }
    }

    /// Another handle to this clock, as a [`SharedClock`].
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }

    /// Moves time forward by `d` and fires every timer now due. Returns how
    /// many fired.
    pub fn advance(&self, d: Duration) -> usize {
        let target = self.now().saturating_add(d);
        self.fire_until(target)
    }

    /// Moves time forward to `t` (a jump) and fires every timer now due.
    pub fn advance_to(&self, t: Instant) -> Result<usize, ClockError> {
        let now = self.now();
        if t < now {
            return Err(ClockError::WouldGoBackwards { now, requested: t });
        }
        Ok(self.fire_until(t))
    }

    /// Jumps to the earliest pending deadline and fires the timers due there.
    /// Returns the deadline, or `None` when no timer is pending.
    pub fn advance_to_next_deadline(&self) -> Option<Instant> {
        let next = self.next_deadline()?;
        self.fire_until(next);
        Some(next)
    }

    /// Sets the wall clock; monotonic time is unaffected. Wall time may go
    /// backwards, as it can on a real host.
    pub fn set_unix_ms(&self, unix_ms: u64) {
        let mut st = self.inner.state.lock();
        st.wall_anchor_ms = unix_ms;
        st.wall_anchor_at = st.now;
    }

    /// Timers registered and not yet fired or dropped.
    pub fn pending_timers(&self) -> usize {
        self.inner.state.lock().timers.len()
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.inner
            .state
            .lock()
            .timers
            .keys()
            .next()
            .map(|(at, _)| *at)
    }

    /// Resolves once at least `n` timers are pending, so a test can wait for
    /// "everyone is now asleep" before it advances time.
    pub async fn wait_for_timers(&self, n: usize) {
        let mut rx = self.inner.pending_tx.subscribe();
        // The sender lives in `self.inner`, which we hold: the channel cannot
        // close while we wait.
        let _ = rx.wait_for(|pending| *pending >= n).await;
    }

    fn fire_until(&self, target: Instant) -> usize {
        let fired: Vec<Option<Waker>> = {
            let mut st = self.inner.state.lock();
            if target > st.now {
                st.now = target;
            }
            let mut fired = Vec::new();
            while let Some(entry) = st.timers.first_entry() {
                if entry.key().0 > target {
                    break;
                }
                fired.push(entry.remove());
            }
            self.publish_pending(&st);
            fired
        };
        let count = fired.len();
        // Wake outside the lock: a woken task on another thread may
        // immediately poll its Sleep, which takes the lock.
        for waker in fired.into_iter().flatten() {
            waker.wake();
        }
        count
    }

    fn publish_pending(&self, st: &ManualState) {
        self.inner.pending_tx.send_replace(st.timers.len());
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.inner.state.lock().now
    }

    fn now_unix_ms(&self) -> u64 {
        let st = self.inner.state.lock();
        let since = st.now.saturating_duration_since(st.wall_anchor_at);
        st.wall_anchor_ms
            .saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let mut st = self.inner.state.lock();
        if deadline <= st.now {
            return Box::pin(std::future::ready(()));
        }
        // Registered now rather than on first poll, so that "registration
        // order" is the order in which sleeps were created, and
        // `pending_timers` counts a sleeper as soon as it exists.
        let seq = st.next_seq;
        st.next_seq += 1;
        let key = (deadline, seq);
        st.timers.insert(key, None);
        self.publish_pending(&st);
        Box::pin(ManualSleep {
            clock: self.clone(),
            key: Some(key),
        })
    }
}

struct ManualSleep {
    clock: ManualClock,
    // None once fired and observed.
    key: Option<(Instant, u64)>,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(key) = self.key else {
            return Poll::Ready(());
        };
        let mut st = self.clock.inner.state.lock();
        match st.timers.get_mut(&key) {
            // Only firing removes a timer while its Sleep is alive.
            None => {
                drop(st);
                self.key = None;
                Poll::Ready(())
            }
            Some(slot) => {
                match slot {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut st = self.clock.inner.state.lock();
            if st.timers.remove(&key).is_some() {
                self.clock.publish_pending(&st);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_arithmetic_saturates_instead_of_panicking() {
        let far = Instant::from_epoch(Duration::MAX);
        assert_eq!(far + Duration::from_secs(1), far);
        assert_eq!(Instant::ZERO - far, Duration::ZERO);
        assert_eq!(Instant::ZERO.checked_add(Duration::MAX), Some(far));
        assert_eq!(far.checked_add(Duration::from_nanos(1)), None);
    }

    #[test]
    fn wall_time_follows_monotonic_time_and_can_jump_back() {
        let clock = ManualClock::starting_at_unix_ms(10_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now_unix_ms(), 11_500);
        clock.set_unix_ms(5_000);
        assert_eq!(clock.now_unix_ms(), 5_000);
        assert_eq!(
            clock.now(),
            Instant::from_epoch(Duration::from_millis(1_500))
        );
        clock.advance(Duration::from_millis(20));
        assert_eq!(clock.now_unix_ms(), 5_020);
    }

    #[test]
    fn advancing_backwards_is_an_error_and_leaves_time_alone() {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(5));
        let err = clock.advance_to(Instant::from_epoch(Duration::from_secs(1)));
        assert!(matches!(err, Err(ClockError::WouldGoBackwards { .. })));
        assert_eq!(clock.now(), Instant::from_epoch(Duration::from_secs(5)));
    }

    #[test]
    fn dropping_a_sleep_unregisters_its_timer() {
        let clock = ManualClock::new();
        let s = clock.sleep(Duration::from_secs(1));
        assert_eq!(clock.pending_timers(), 1);
        drop(s);
        assert_eq!(clock.pending_timers(), 0);
        assert_eq!(clock.next_deadline(), None);
    }
}
