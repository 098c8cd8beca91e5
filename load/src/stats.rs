//! Measurements: latency histograms and time series.
//!
//! Owns recording (microsecond `hdrhistogram`s, per-second counters,
//! sampled gauges) and turning them into the plain numbers a report prints.
//! Must never decide whether a number is good: targets live in the reports.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, from 1 µs to 10 minutes, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts.
        let hist = Histogram::new_with_bounds(1, 600_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_hist()));
        Latency { hist }
    }

    /// Records one latency (clamped into the histogram's range).
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        self.hist.saturating_record(us);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at `q` (0..=1) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// The summary a report prints.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50_ms: self.quantile_ms(0.5),
            p90_ms: self.quantile_ms(0.9),
            p99_ms: self.quantile_ms(0.99),
            p999_ms: self.quantile_ms(0.999),
            max_ms: self.hist.max() as f64 / 1000.0,
            mean_ms: self.hist.mean() / 1000.0,
        }
    }

    /// The latency curve, `(percentile, ms)`, for a percentile plot.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        [
            0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
        ]
        .iter()
        .map(|p| (*p, self.quantile_ms(p / 100.0)))
        .collect()
    }
}

fn unreachable_hist() -> Histogram<u64> {
    // Histogram::new(1) cannot fail either; this is the last fallback of a
    // constructor that is infallible for the constants above.
    Histogram::new_with_max(1 << 40, 2).unwrap_or_else(|_| std::process::abort())
}

/// What a report prints about a latency histogram.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
}

/// Events counted per whole second since a start.
#[derive(Debug, Clone)]
pub struct Timeline {
    start: Instant,
    counts: BTreeMap<u64, u64>,
}

impl Timeline {
    /// A timeline starting at `start`.
    pub fn new(start: Instant) -> Self {
        Timeline {
            start,
            counts: BTreeMap::new(),
        }
    }

    /// Counts `n` events at `at`.
    pub fn add(&mut self, at: Instant, n: u64) {
        let s = at.saturating_duration_since(self.start).as_secs();
        *self.counts.entry(s).or_default() += n;
    }

    /// Merges another timeline with the same start.
    pub fn merge(&mut self, other: &Timeline) {
        for (s, n) in &other.counts {
            *self.counts.entry(*s).or_default() += n;
        }
    }

    /// `(second, events in it)` for every second up to the last with events.
    pub fn series(&self) -> Vec<(f64, f64)> {
        let last = self.counts.keys().next_back().copied().unwrap_or(0);
        (0..=last)
            .map(|s| (s as f64, self.counts.get(&s).copied().unwrap_or(0) as f64))
            .collect()
    }
}

/// Rate of `n` events over `d`, per second.
pub fn rate(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_recorded_latencies() {
        let mut l = Latency::new();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.5, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.5, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.5, "{s:?}");
    }

    #[test]
    fn a_timeline_fills_quiet_seconds_with_zero() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.add(t0, 3);
        t.add(t0 + Duration::from_millis(2500), 4);
        assert_eq!(t.series(), vec![(0.0, 3.0), (1.0, 0.0), (2.0, 4.0)]);
    }
}
