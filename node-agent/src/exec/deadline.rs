//! The last moment an attempt may start ([`super::Launch::start_by`]),
//! carried onto the kernel's monotonic clock so that it can be checked
//! where the agent's own clock cannot be read: in the task's child just
//! before exec.
//!
//! Owns the conversion and the check. The kernel's `CLOCK_MONOTONIC` keeps
//! running while the agent is stopped (SIGSTOP, a debugger, a long
//! scheduling stall), so a check against it after the agent resumes sees
//! the time it lost. Must never allocate or lock in [`StartDeadline::passed`]:
//! it runs in the task's child, which shares the agent's memory.

use std::time::Duration;

use meridian_control::{Instant, SharedClock};

/// A point on `CLOCK_MONOTONIC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartDeadline {
    at: Duration,
}

impl StartDeadline {
    /// `start_by` of `clock`, as a point on the monotonic clock; `None` when
    /// it has passed already. Read in one go, so that the two clocks are
    /// read microseconds apart: the agent's clock is the system's in
    /// production, and a test's manual clock only moves the deadline.
    pub fn from_clock(start_by: Instant, clock: &SharedClock) -> Option<StartDeadline> {
        let left = start_by.saturating_duration_since(clock.now());
        if left.is_zero() {
            return None;
        }
        Some(StartDeadline {
            at: monotonic_now().saturating_add(left),
        })
    }

    /// Whether the deadline has passed. Async-signal-safe: one system call
    /// on the stack, no allocation.
    pub fn passed(self) -> bool {
        monotonic_now() >= self.at
    }
}

#[cfg(test)]
impl StartDeadline {
    /// A deadline that has just passed.
    pub(crate) fn passed_now() -> StartDeadline {
        StartDeadline {
            at: monotonic_now(),
        }
    }

    /// A deadline an hour from now.
    pub(crate) fn in_an_hour() -> StartDeadline {
        StartDeadline {
            at: monotonic_now() + Duration::from_secs(3600),
        }
    }
}

/// `CLOCK_MONOTONIC` now.
fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a live stack value; with
    // a valid clock id it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_control::ManualClock;
    use std::sync::Arc;

    #[test]
    fn a_start_by_already_reached_gives_no_deadline() {
        let manual = ManualClock::new();
        let clock: SharedClock = Arc::new(manual.clone());
        let by = clock.now() + Duration::from_secs(1);
        manual.advance(Duration::from_secs(1));
        assert_eq!(StartDeadline::from_clock(by, &clock), None);
    }

    #[test]
    fn a_deadline_ahead_has_not_passed_and_one_now_has() {
        let manual = ManualClock::new();
        let clock: SharedClock = Arc::new(manual.clone());
        let ahead = StartDeadline::from_clock(clock.now() + Duration::from_secs(3600), &clock)
            .expect("an hour ahead");
        assert!(!ahead.passed());
        assert!(
            StartDeadline::passed_now().passed(),
            "the monotonic clock never goes back"
        );
    }
}
