//! Per-key error isolation of the leader's controller: a job that cannot be
//! handled is parked, the others go on.
//!
//! Owns the set of parked jobs (a stored record that does not decode, for
//! now), each with its failure count and the instant it may be tried again:
//! a full-jitter backoff per key, as kube-rs's `error_policy` requeues one
//! object without holding up the rest. A parked job keeps its pending entry
//! and is tried again when its backoff ends, so a record repaired by hand is
//! routed without a restart. Counts parkings in
//! `meridian_global_jobs_parked_total` and shows how many are parked now in
//! `meridian_global_jobs_parked`.
//!
//! Must never: drop a job (parking only postpones it), or wait other than
//! by its caller's clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_control::{Backoff, Instant};

/// How long a parked job waits before its first retry at most; doubles on
/// every failure up to [`CAP`].
const BASE: Duration = Duration::from_millis(200);
/// The longest a parked job waits between tries.
const CAP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Parked {
    failures: u32,
    until: Instant,
}

/// The controller's parked jobs.
#[derive(Debug)]
pub struct Parking {
    backoff: Backoff,
    parked: BTreeMap<String, Parked>,
}

impl Parking {
    /// No job parked; `seed` drives the jitter.
    pub fn new(seed: u64) -> Self {
        Parking {
            backoff: Backoff::between(BASE, CAP, seed),
            parked: BTreeMap::new(),
        }
    }

    /// The jobs not to try at `now`.
    pub fn blocked(&self, now: Instant) -> BTreeSet<String> {
        self.parked
            .iter()
            .filter(|(_, p)| now < p.until)
            .map(|(job, _)| job.clone())
            .collect()
    }

    /// How many jobs are parked.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// Whether no job is parked.
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// `job` failed at `now` for `why`: it waits its backoff before the
    /// next try. Returns how long.
    pub fn fail(&mut self, job: &str, now: Instant, why: &str) -> Duration {
        let failures = self.parked.get(job).map_or(0, |p| p.failures);
        let delay = self.backoff.delay(failures);
        self.parked.insert(
            job.to_string(),
            Parked {
                failures: failures + 1,
                until: now.saturating_add(delay),
            },
        );
        metrics::counter!("meridian_global_jobs_parked_total").increment(1);
        metrics::gauge!("meridian_global_jobs_parked").set(self.parked.len() as f64);
        tracing::warn!(
            job_id = job,
            failures = failures + 1,
            retry_in_ms = delay.as_millis() as u64,
            error = why,
            "job parked: the controller cannot handle it; the others go on"
        );
        delay
    }

    /// `job` was handled: it is no longer parked.
    pub fn handled(&mut self, job: &str) {
        if self.parked.remove(job).is_some() {
            metrics::gauge!("meridian_global_jobs_parked").set(self.parked.len() as f64);
            tracing::info!(job_id = job, "parked job handled again");
        }
    }

    /// Forgets every parked job (a new term starts from the store).
    pub fn clear(&mut self) {
        self.parked.clear();
        metrics::gauge!("meridian_global_jobs_parked").set(0.0);
    }
}

/// Registers the parking series at zero.
pub(crate) fn register_series() {
    let _ = metrics::counter!("meridian_global_jobs_parked_total");
    metrics::gauge!("meridian_global_jobs_parked").set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_control::{BackoffConfig, Clock, ManualClock};

    #[test]
    fn a_parked_job_is_skipped_until_its_backoff_ends_and_others_are_not() {
        let clock = ManualClock::new();
        let mut parking = Parking::new(7);
        let now = clock.now();
        let delay = parking.fail("broken", now, "corrupt record");
        assert!(delay <= BASE);
        assert_eq!(
            parking.blocked(now).into_iter().collect::<Vec<_>>(),
            ["broken"]
        );
        clock.advance(delay + Duration::from_millis(1));
        assert!(parking.blocked(clock.now()).is_empty());
        assert_eq!(parking.len(), 1);
        parking.handled("broken");
        assert!(parking.is_empty());
    }

    #[test]
    fn every_failure_of_the_same_job_widens_its_backoff_up_to_the_cap() {
        let clock = ManualClock::new();
        let mut parking = Parking::new(1);
        let mut longest = Duration::ZERO;
        for attempt in 0..20u32 {
            let delay = parking.fail("broken", clock.now(), "corrupt record");
            assert!(
                delay
                    <= BackoffConfig {
                        base: BASE,
                        cap: CAP
                    }
                    .ceiling(attempt)
            );
            longest = longest.max(delay);
        }
        assert!(longest > BASE, "the ceiling grew: {longest:?}");
        assert!(longest <= CAP);
    }
}
