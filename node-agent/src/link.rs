//! Which replica of the region a node talks to, and the channels to them.
//!
//! Owns a node's endpoint list (the replicas it was given, plus any replica
//! a `meridian-leader` hint named since), the rule for moving between them
//! and the connections, which every node of a host shares through a
//! [`ChannelPool`] (one HTTP/2 connection per endpoint and slot of
//! [`crate::host::NODES_PER_CONNECTION`] nodes).
//!
//! The rule: a hint names the replica that leads the node's shard, so the
//! node moves there at once; a broken link moves it to the next replica it
//! was given, so one dead replica never cuts a node off from a region that
//! still has live ones. The replica that leads a node's shard serves all
//! of the node's calls (others answer with the hint), so every call follows
//! the same rule.
//!
//! Must never decide anything about tasks, epochs or when to retry (that is
//! [`crate::node`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::LEADER_METADATA_KEY;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::error::AgentError;
use crate::uplink::Uplink;

/// Lazily connected channels of one host, by endpoint and slot, and the
/// host's uplink to each endpoint.
pub struct ChannelPool {
    channels: Mutex<BTreeMap<(String, usize), Channel>>,
    uplinks: Mutex<BTreeMap<String, Uplink>>,
}

impl Default for ChannelPool {
    fn default() -> Self {
        ChannelPool::new()
    }
}

impl ChannelPool {
    pub fn new() -> Self {
        ChannelPool {
            channels: Mutex::new(BTreeMap::new()),
            uplinks: Mutex::new(BTreeMap::new()),
        }
    }

    /// The uplink (batched heartbeats and reports) of the host to `url`.
    pub fn uplink(&self, url: &str) -> Result<Uplink, AgentError> {
        if let Some(u) = self.uplinks.lock().get(url) {
            return Ok(u.clone());
        }
        let uplink = Uplink::start(self.get(url, 0)?);
        Ok(self
            .uplinks
            .lock()
            .entry(url.to_string())
            .or_insert(uplink)
            .clone())
    }

    /// The channel of `slot` to `url`, created (unconnected) on first use.
    pub fn get(&self, url: &str, slot: usize) -> Result<Channel, AgentError> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(&(url.to_string(), slot)) {
            return Ok(c.clone());
        }
        let channel = connect_lazy(url)?;
        channels.insert((url.to_string(), slot), channel.clone());
        Ok(channel)
    }
}

/// A channel that connects on first use and reconnects by itself; each call
/// fails fast while the replica is unreachable.
pub fn connect_lazy(url: &str) -> Result<Channel, AgentError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| AgentError::Config(format!("region address {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    // Through the network seam, so the simulation's network carries it.
    Ok(meridian_control::net::connect_lazy(endpoint))
}

/// `host:port` gets `http://`; a trailing slash goes.
fn normalize(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// The comma-separated endpoint list of `--region`, normalized; an empty
/// list is a configuration error.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, AgentError> {
    let urls: Vec<String> = list
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .map(normalize)
        .collect();
    if urls.is_empty() {
        return Err(AgentError::Config("no region endpoint given".into()));
    }
    Ok(urls)
}

/// The replica named by a `meridian-leader` hint on `status`, if any.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.trim().is_empty())
        .map(normalize)
}

/// One node's view of the region's replicas.
pub struct RegionLink {
    given: Vec<String>,
    current: String,
    slot: usize,
    pool: Arc<ChannelPool>,
    client: AgentLinkClient<Channel>,
}

impl RegionLink {
    /// Starts at `first` (an index into `given`, wrapped), so the nodes of a
    /// host can be spread over the replicas.
    pub fn new(
        given: Vec<String>,
        first: usize,
        slot: usize,
        pool: Arc<ChannelPool>,
    ) -> Result<RegionLink, AgentError> {
        let Some(current) = given.get(first % given.len().max(1)).cloned() else {
            return Err(AgentError::Config("no region endpoint given".into()));
        };
        let client = AgentLinkClient::new(pool.get(&current, slot)?);
        Ok(RegionLink {
            given,
            current,
            slot,
            pool,
            client,
        })
    }

    /// The replica calls go to now.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// A client of the current replica.
    pub fn client(&self) -> AgentLinkClient<Channel> {
        self.client.clone()
    }

    /// The host's batched uplink to the current replica.
    pub fn uplink(&self) -> Result<Uplink, AgentError> {
        self.pool.uplink(&self.current)
    }

    /// Moves to the hinted replica. `false` when the hint names the current
    /// one or is not a usable address (then nothing changes).
    pub fn follow(&mut self, hint: &str) -> bool {
        let hint = normalize(hint);
        if hint == self.current {
            return false;
        }
        match self.pool.get(&hint, self.slot) {
            Ok(channel) => {
                self.client = AgentLinkClient::new(channel);
                self.current = hint;
                true
            }
            Err(e) => {
                tracing::warn!(hint = %hint, error = %e, "ignoring an unusable leader hint");
                false
            }
        }
    }

    /// Moves to the replica given after the current one (the first given
    /// one when the current replica came from a hint).
    pub fn next(&mut self) {
        let next = match self.given.iter().position(|u| *u == self.current) {
            Some(i) => (i + 1) % self.given.len(),
            None => 0,
        };
        let url = self.given[next].clone();
        if url == self.current {
            return;
        }
        // Every given endpoint was accepted by `new`'s caller through
        // `parse_endpoints`; a channel that cannot be built keeps the node
        // where it is rather than failing it.
        if let Ok(channel) = self.pool.get(&url, self.slot) {
            self.client = AgentLinkClient::new(channel);
            self.current = url;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(list: &str, first: usize) -> RegionLink {
        RegionLink::new(
            parse_endpoints(list).expect("endpoints"),
            first,
            0,
            Arc::new(ChannelPool::default()),
        )
        .expect("link")
    }

    #[tokio::test]
    async fn a_broken_link_moves_to_the_next_given_replica_and_wraps() {
        let mut l = link("127.0.0.1:1,http://127.0.0.1:2/", 0);
        assert_eq!(l.current(), "http://127.0.0.1:1");
        l.next();
        assert_eq!(l.current(), "http://127.0.0.1:2");
        l.next();
        assert_eq!(l.current(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_hint_moves_the_node_and_a_later_break_returns_to_the_given_list() {
        let mut l = link("http://127.0.0.1:1,http://127.0.0.1:2", 1);
        assert_eq!(l.current(), "http://127.0.0.1:2");
        assert!(l.follow("127.0.0.1:3"));
        assert_eq!(l.current(), "http://127.0.0.1:3");
        assert!(!l.follow("http://127.0.0.1:3"));
        l.next();
        assert_eq!(l.current(), "http://127.0.0.1:1");
    }

    #[test]
    fn an_empty_endpoint_list_is_a_configuration_error() {
        assert!(matches!(parse_endpoints(" , "), Err(AgentError::Config(_))));
    }

    #[test]
    fn a_status_without_hint_names_no_leader() {
        assert_eq!(leader_hint(&tonic::Status::unavailable("x")), None);
        let mut s = tonic::Status::unavailable("not leader");
        s.metadata_mut()
            .insert(LEADER_METADATA_KEY, "127.0.0.1:9".parse().expect("value"));
        assert_eq!(leader_hint(&s).as_deref(), Some("http://127.0.0.1:9"));
    }
}
