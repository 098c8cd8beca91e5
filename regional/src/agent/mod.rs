//! The node-facing and operator-facing APIs of a region replica.
//!
//! Owns the gRPC services `AgentLink` ([`service`]) and `RegionAdmin`
//! ([`admin`]), and the agents' assignment streams ([`stream`]). A node talks
//! to the replica that leads its shard: that replica answers heartbeats from
//! memory (they are never written), checks epochs and orphans against its
//! memory, writes registrations and task reports through the write pipeline,
//! and pushes commands to the node's stream as soon as they commit. Other
//! replicas answer UNAVAILABLE with the `meridian-leader` hint. Must never
//! place tasks.

pub mod admin;
pub mod follow;
pub mod service;
pub mod stored;
pub mod stream;
pub mod tasks;

use meridian_control::tls::Security;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::lease::{Fence, Identity, Lease};
use meridian_control::{Instant, SharedClock};
use meridian_store::Database;
use parking_lot::Mutex;

use crate::liveness::Beats;
use crate::model::Keys;
use crate::pipeline::{Authority, Pipeline};
use crate::shard::Leading;
use crate::shard::layout::read_presences;
use crate::state::SharedState;
use stream::Streams;

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
    /// An agent sends at most one call per 10 ms, coalescing what changed
    /// in between, so a busy real node that starts and ends hundreds of
    /// tasks a second stays under it; a runaway agent does not.
    pub reports_per_second: u32,
}

impl Default for AgentApiConfig {
    fn default() -> Self {
        AgentApiConfig {
            heartbeat_interval: Duration::from_secs(1),
            max_heartbeats_per_second: 500,
            max_heartbeat_interval: Duration::from_secs(10),
            node_timeout: Duration::from_secs(15),
            reports_per_second: 200,
        }
    }
}

/// Per-node report rate on this replica.
#[derive(Debug, Clone, Copy)]
struct Rate {
    tokens: f64,
    refilled: Instant,
}

/// What the services of one replica share.
#[derive(Clone)]
pub struct RegionApi {
    pub(crate) db: Database,
    /// Where the shard lease records live (who leads a shard).
    pub(crate) lease_store: Database,
    pub(crate) keys: Keys,
    pub(crate) clock: SharedClock,
    pub(crate) region: String,
    pub(crate) identity: Identity,
    pub(crate) leading: Leading,
    pub(crate) config: AgentApiConfig,
    pub(crate) pipeline: Pipeline,
    pub(crate) state: SharedState,
    pub(crate) beats: Arc<Beats>,
    pub(crate) streams: Arc<Streams>,
    rates: Arc<Mutex<BTreeMap<String, Rate>>>,
    /// How agents' log servers are dialled (`follow`).
    pub(crate) security: Security,
}

/// What a [`RegionApi`] is built from.
pub struct ApiParts {
    pub db: Database,
    pub lease_store: Database,
    pub keys: Keys,
    pub clock: SharedClock,
    pub region: String,
    pub identity: Identity,
    pub leading: Leading,
    pub config: AgentApiConfig,
    pub pipeline: Pipeline,
    pub state: SharedState,
    pub beats: Arc<Beats>,
    pub streams: Arc<Streams>,
}

/// The heartbeat interval for a region of `nodes` nodes: the base, or
/// longer so that all nodes together beat at most `max_per_second` times a
/// second, capped at `cap`.
pub fn beat_every(base: Duration, nodes: u64, max_per_second: u32, cap: Duration) -> Duration {
    let spread = Duration::from_secs_f64(nodes as f64 / f64::from(max_per_second.max(1)));
    base.max(spread.min(cap))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RegionApi {
    pub fn new(parts: ApiParts) -> Self {
        RegionApi {
            db: parts.db,
            lease_store: parts.lease_store,
            keys: parts.keys,
            clock: parts.clock,
            region: parts.region,
            identity: parts.identity,
            leading: parts.leading,
            config: parts.config,
            pipeline: parts.pipeline,
            state: parts.state,
            beats: parts.beats,
            streams: parts.streams,
            rates: Arc::new(Mutex::new(BTreeMap::new())),
            security: Security::Insecure,
        }
    }

    /// Dials agents' log servers with `security` (plain by default).
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The heartbeat interval to tell agents now.
    pub(crate) fn heartbeat_every(&self) -> Duration {
        let nodes = self.state.read().nodes.len() as u64;
        beat_every(
            self.config.heartbeat_interval,
            nodes,
            self.config.max_heartbeats_per_second,
            self.config.max_heartbeat_interval,
        )
    }

    /// The shard of `node` and, when this replica leads it, the authority
    /// to write under.
    fn lead_of(&self, node: &str) -> (u32, Option<Authority>) {
        let shard = {
            let s = self.state.read();
            s.nodes.get(node).map_or_else(
                || crate::shard::shard_of_node(node, s.shard_count()),
                |n| n.shard,
            )
        };
        let epoch = self.leading.lock().get(&shard).copied();
        let authority = epoch.map(|epoch| Authority {
            fence: Fence::new(self.keys.shard_fence(shard), self.identity.clone(), epoch),
            generation: None,
        });
        (shard, authority)
    }

    /// Takes one report token of `node`; false when it has none left.
    fn take_report_token(&self, node: &str) -> bool {
        let now = self.clock.now();
        let per_second = f64::from(self.config.reports_per_second.max(1));
        let mut rates = self.rates.lock();
        let rate = rates.entry(node.to_string()).or_insert(Rate {
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
    fn region_lease_remaining_ms(&self) -> u64 {
        let link = self.state.read().link;
        link.map_or(0, |s| s.agent_lease_remaining_ms(self.clock.now_unix_ms()))
    }

    /// The endpoint of the replica leading `shard`, when it can be found.
    async fn leader_of(&self, shard: u32) -> Option<String> {
        let lease = Lease::new(
            self.lease_store.clone(),
            self.keys.shard_lease(shard),
            Identity::new_boot("observer"),
            self.clock.clone(),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        let record = lease.observe().await.ok().flatten()?;
        let presences = read_presences(&self.db, &self.keys).await.ok()?;
        presences
            .into_iter()
            .find(|(name, p)| {
                *name == record.holder.name && p.boot_id == record.holder.boot_id.to_string()
            })
            .map(|(_, p)| p.endpoint)
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
