//! Simulated time for the product's clock seam.
//!
//! Owns [`SimClock`]: monotonic time and timers from the host's tokio
//! runtime (which `turmoil` pauses and advances), and wall time from the
//! simulation's own epoch plus a per-process skew the harness may jump
//! within the configured bound; timers hold while the process is paused.
//! Must never read the machine's real clock:
//! a run's outcome has to depend on the seed alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use meridian_control::{Clock, Instant, SharedClock, Sleep, SystemClock};

use crate::gate::PauseGate;

/// Wall time the simulation starts at (2026-01-01T00:00:00Z): fixed, so a
/// run replays exactly.
pub const SIM_EPOCH_UNIX_MS: u64 = 1_767_225_600_000;

/// A process's clock in the simulation.
#[derive(Debug, Clone)]
pub struct SimClock {
    timers: SystemClock,
    skew_ms: Arc<AtomicI64>,
    gate: PauseGate,
}

impl SimClock {
    /// A clock for the current host, with its wall clock off by whatever
    /// `skew_ms` holds (shared with the harness, which jumps it). No timer
    /// fires while `gate` is paused: a paused process does not run, so it
    /// cannot notice that its lease ran out until it resumes.
    pub fn shared(skew_ms: Arc<AtomicI64>, gate: PauseGate) -> SharedClock {
        Arc::new(SimClock {
            timers: SystemClock::new(),
            skew_ms,
            gate,
        })
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.timers.now()
    }

    fn now_unix_ms(&self) -> u64 {
        let elapsed = turmoil::sim_elapsed().unwrap_or(Duration::ZERO);
        let ms = SIM_EPOCH_UNIX_MS as i64
            + i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX / 2)
            + self.skew_ms.load(Ordering::Relaxed);
        u64::try_from(ms).unwrap_or(0)
    }

    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let timer = self.timers.sleep_until(deadline);
        let gate = self.gate.clone();
        Box::pin(async move {
            timer.await;
            gate.wait_running().await;
        })
    }
}
