//! What a run's work cost each process, per job: CPU time, context switches
//! and store round trips between two samples.
//!
//! Owns sampling these counters for every local process (from `/proc` and the
//! servers' `/metrics`) and turning two samples into per-job figures. Latency
//! on a shared 2-core machine moves with whatever else runs; these counts
//! move much less, so they are what a change of the data path is judged by.
//! Must never guess: a process that is gone or a counter that is absent
//! gives no figure, not zero.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::{procstat, scrape};

/// The counters of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub cpu_seconds: Option<f64>,
    pub context_switches: Option<f64>,
    pub store_round_trips: Option<f64>,
}

/// One process to sample: its pid and, for servers, its metrics address.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: String,
    pub pid: Option<i32>,
    pub metrics: Option<SocketAddr>,
}

/// Every probed process's counters, by name.
pub type Sample = BTreeMap<String, Counters>;

/// Reads the counters of every probe.
pub async fn sample(probes: &[Probe]) -> Sample {
    let mut out = Sample::new();
    for p in probes {
        let pid = p.pid.map(|pid| pid.to_string());
        let usage = pid.as_deref().and_then(procstat::usage);
        let store_round_trips = match p.metrics {
            Some(addr) => scrape::read(addr, "meridian_store_round_trips_total").await,
            None => None,
        };
        out.insert(
            p.name.clone(),
            Counters {
                cpu_seconds: usage.map(|u| u.cpu_seconds),
                context_switches: pid
                    .as_deref()
                    .and_then(procstat::context_switches)
                    .map(|n| n as f64),
                store_round_trips,
            },
        );
    }
    out
}

/// What one job cost one process, on average over a phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerJob {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_switches: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_round_trips: Option<f64>,
}

/// The per-job cost of each process between `before` and `after`, over
/// `jobs` jobs; empty when no job was done.
pub fn per_job(before: &Sample, after: &Sample, jobs: u64) -> BTreeMap<String, PerJob> {
    let mut out = BTreeMap::new();
    if jobs == 0 {
        return out;
    }
    let n = jobs as f64;
    let per = |a: Option<f64>, b: Option<f64>, scale: f64| match (a, b) {
        (Some(a), Some(b)) if b >= a => Some((b - a) * scale / n),
        _ => None,
    };
    for (name, b) in after {
        let Some(a) = before.get(name) else {
            continue;
        };
        out.insert(
            name.clone(),
            PerJob {
                cpu_ms: per(a.cpu_seconds, b.cpu_seconds, 1000.0),
                context_switches: per(a.context_switches, b.context_switches, 1.0),
                store_round_trips: per(a.store_round_trips, b.store_round_trips, 1.0),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(cpu: f64, switches: f64, trips: Option<f64>) -> Counters {
        Counters {
            cpu_seconds: Some(cpu),
            context_switches: Some(switches),
            store_round_trips: trips,
        }
    }

    #[test]
    fn per_job_cost_is_the_difference_of_two_samples_over_the_jobs() {
        let before = Sample::from([("g".to_string(), counters(1.0, 100.0, Some(10.0)))]);
        let after = Sample::from([("g".to_string(), counters(3.0, 500.0, Some(410.0)))]);
        let cost = per_job(&before, &after, 100);
        assert_eq!(
            cost["g"],
            PerJob {
                cpu_ms: Some(20.0),
                context_switches: Some(4.0),
                store_round_trips: Some(4.0),
            }
        );
    }

    #[test]
    fn a_counter_missing_on_either_side_or_gone_backwards_gives_no_figure() {
        let before = Sample::from([
            ("g".to_string(), counters(1.0, 100.0, None)),
            ("r".to_string(), counters(5.0, 100.0, Some(50.0))),
        ]);
        let after = Sample::from([
            ("g".to_string(), counters(2.0, 200.0, Some(10.0))),
            // A restarted process counts from zero again.
            ("r".to_string(), counters(1.0, 10.0, Some(5.0))),
            ("new".to_string(), counters(1.0, 10.0, Some(5.0))),
        ]);
        let cost = per_job(&before, &after, 10);
        assert_eq!(cost["g"].store_round_trips, None);
        assert_eq!(cost["g"].cpu_ms, Some(100.0));
        assert_eq!(
            cost["r"],
            PerJob {
                cpu_ms: None,
                context_switches: None,
                store_round_trips: None
            }
        );
        assert!(!cost.contains_key("new"));
    }

    #[test]
    fn no_job_done_gives_no_cost() {
        let s = Sample::from([("g".to_string(), counters(1.0, 1.0, Some(1.0)))]);
        assert!(per_job(&s, &s, 0).is_empty());
    }
}
