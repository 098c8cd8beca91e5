//! The node-facing and operator-facing APIs of a region replica.
//!
//! Owns the gRPC services `AgentLink` ([`service`]) and `RegionAdmin`
//! ([`admin`]), their store transactions ([`nodes`]) and the assignment
//! stream ([`stream`]). Every replica serves them; only the shard leader
//! serves a node's assignment stream. Must never place tasks.

pub mod admin;
pub mod nodes;
pub mod service;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::{Instant, SharedClock};
use meridian_store::Database;
use parking_lot::Mutex;

use crate::model::Keys;
use crate::shard::Leading;

/// Timings the agent API hands out and enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentApiConfig {
    /// Heartbeat interval told to agents in a small region (the base).
    pub heartbeat_interval: Duration,
    /// Heartbeats per second the region accepts at most: the interval told
    /// to agents grows with the number of nodes so the rate stays under it
    /// (as Nomad's `max_heartbeats_per_second`).
    pub max_heartbeats_per_second: u32,
    /// The interval never grows past this, so a node still beats several
    /// times per region lease (agents stop work when that lease runs out).
    pub max_heartbeat_interval: Duration,
    /// Node timeout told to agents (when the region may declare it dead).
    pub node_timeout: Duration,
    /// Status report calls per second allowed per node (burst: twice that).
    pub reports_per_second: u32,
}

impl Default for AgentApiConfig {
    fn default() -> Self {
        AgentApiConfig {
            heartbeat_interval: Duration::from_secs(1),
            max_heartbeats_per_second: 500,
            max_heartbeat_interval: Duration::from_secs(10),
            node_timeout: Duration::from_secs(15),
            reports_per_second: 20,
        }
    }
}

/// Per-node rate state on this replica.
#[derive(Debug, Clone, Copy)]
struct Rate {
    last_heartbeat_write: Option<Instant>,
    tokens: f64,
    refilled: Instant,
}

/// What the services of one replica share.
#[derive(Clone)]
pub struct RegionApi {
    pub(crate) db: Database,
    pub(crate) keys: Keys,
    pub(crate) clock: SharedClock,
    pub(crate) region: String,
    pub(crate) leading: Leading,
    pub(crate) config: AgentApiConfig,
    rates: Arc<Mutex<BTreeMap<String, Rate>>>,
    /// The region's node count and when it was read.
    nodes_seen: Arc<Mutex<Option<(Instant, u64)>>>,
}

/// The heartbeat interval for a region of `nodes` nodes: the base, or
/// longer so that all nodes together beat at most `max_per_second` times a
/// second, capped at `cap`.
pub fn beat_every(base: Duration, nodes: u64, max_per_second: u32, cap: Duration) -> Duration {
    let spread = Duration::from_secs_f64(nodes as f64 / f64::from(max_per_second.max(1)));
    base.max(spread.min(cap))
}

impl RegionApi {
    pub fn new(
        db: Database,
        keys: Keys,
        clock: SharedClock,
        region: &str,
        leading: Leading,
        config: AgentApiConfig,
    ) -> Self {
        RegionApi {
            db,
            keys,
            clock,
            region: region.to_string(),
            leading,
            config,
            rates: Arc::new(Mutex::new(BTreeMap::new())),
            nodes_seen: Arc::new(Mutex::new(None)),
        }
    }

    /// The interval to tell agents now. The node count is read at most once
    /// a second per replica; if it cannot be read, the last known one (or
    /// none) stands.
    async fn heartbeat_every(&self) -> Duration {
        let now = self.clock.now();
        let cached = *self.nodes_seen.lock();
        let nodes = match cached {
            Some((at, n)) if now.saturating_duration_since(at) < Duration::from_secs(1) => n,
            _ => {
                let n = nodes::node_count(&self.db, &self.keys)
                    .await
                    .unwrap_or_else(|_| cached.map_or(0, |(_, n)| n));
                *self.nodes_seen.lock() = Some((now, n));
                n
            }
        };
        beat_every(
            self.config.heartbeat_interval,
            nodes,
            self.config.max_heartbeats_per_second,
            self.config.max_heartbeat_interval,
        )
    }

    /// Whether this heartbeat should be written to the store: at most one
    /// write per node per half interval on this replica; the rest are
    /// answered from the epoch check alone.
    fn heartbeat_write_due(&self, node: &str) -> bool {
        let now = self.clock.now();
        let mut rates = self.rates.lock();
        let rate = rates.entry(node.to_string()).or_insert(Rate {
            last_heartbeat_write: None,
            tokens: f64::from(self.config.reports_per_second) * 2.0,
            refilled: now,
        });
        let due = rate
            .last_heartbeat_write
            .is_none_or(|t| now.saturating_duration_since(t) >= self.config.heartbeat_interval / 2);
        if due {
            rate.last_heartbeat_write = Some(now);
        }
        due
    }

    /// Takes one report token of `node`; false when it has none left.
    fn take_report_token(&self, node: &str) -> bool {
        let now = self.clock.now();
        let per_second = f64::from(self.config.reports_per_second.max(1));
        let mut rates = self.rates.lock();
        let rate = rates.entry(node.to_string()).or_insert(Rate {
            last_heartbeat_write: None,
            tokens: per_second * 2.0,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(rate.refilled).as_secs_f64();
        rate.tokens = (rate.tokens + elapsed * per_second).min(per_second * 2.0);
        rate.refilled = now;
        if rate.tokens >= 1.0 {
            rate.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Milliseconds the region lease at the global tier has left, as far
    /// as this replica knows (0 when none is held).
    async fn region_lease_remaining_ms(&self) -> u64 {
        let key = self.keys.link_state();
        let state = self
            .db
            .run(|tx, _| {
                let key = key.clone();
                async move { Ok::<_, crate::error::RegionalError>(tx.get(&key).await?) }
            })
            .await
            .ok()
            .flatten()
            .and_then(|b| crate::model::decode::<crate::link::LinkState>("link state", &b).ok());
        state.map_or(0, |s| {
            s.lease_expires_unix_ms
                .saturating_sub(self.clock.now_unix_ms())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_interval_grows_with_the_region_and_stops_at_the_cap() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(beat_every(base, 0, 500, cap), base);
        assert_eq!(beat_every(base, 400, 500, cap), base);
        assert_eq!(beat_every(base, 1_500, 500, cap), Duration::from_secs(3));
        assert_eq!(beat_every(base, 100_000, 500, cap), cap);
        assert_eq!(
            beat_every(base, 10, 0, cap),
            cap,
            "a zero budget counts as one"
        );
    }
}
