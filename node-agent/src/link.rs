//! Which replica of the region a node talks to, and the channels to them.
//!
//! Owns a node's endpoint list (the replicas it was given, plus any replica
//! a `meridian-leader` hint named since), the rule for moving between them
//! and the connections, which every node of a host shares through a
//! [`ChannelPool`]: per endpoint, one HTTP/2 connection carries the host's
//! batched registrations, heartbeats and reports ([`Uplink`]) and every
//! node's command stream on one call ([`Downlink`]).
//!
//! Where to go after a failed call is control's retry rule
//! ([`meridian_control::rpc`]), applied by [`RegionLink::after`]: a hint
//! names the replica that leads the node's shard, so the node moves there
//! at once; a call that ran out of its deadline moves it to the next given
//! replica at once; a broken link moves it there after a backoff, so one
//! dead or frozen replica never cuts a node off from a region that still
//! has live ones. The replica that leads a node's shard serves all of the
//! node's calls (others answer with the hint), so every call follows the
//! same rule.
//!
//! Must never classify a status itself, or decide anything about tasks or
//! epochs (that is [`crate::node`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::BackoffConfig;
use meridian_control::rpc::{self, Replicas, RpcVerdict};
use meridian_control::tls::Security;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::downlink::Downlink;
use crate::error::AgentError;
use crate::uplink::Uplink;

/// Lazily connected channels of one host, one per endpoint, and the
/// host's uplink and downlink to each endpoint.
///
/// One connection per endpoint carries all of a host's calls. HTTP/2 flow
/// control is per connection too: when each node had its own command
/// stream, answers to heartbeats sharing a connection with those streams
/// waited while their unread commands filled its window, and node loops
/// waiting for those heartbeats read no commands (at 10,000 nodes the
/// nodes' view of the region lease ran out). The downlink's reader never
/// waits for a node (downlink.rs), so the one call that carries every
/// command stream keeps the window open.
pub struct ChannelPool {
    /// How the channels dial: plain, or TLS with the host's certificate.
    security: Security,
    endpoints: Mutex<BTreeMap<String, Links>>,
}

/// The host's links to one endpoint, over its one channel.
#[derive(Clone)]
struct Links {
    uplink: Uplink,
    downlink: Downlink,
}

impl Default for ChannelPool {
    fn default() -> Self {
        ChannelPool::new()
    }
}

impl ChannelPool {
    pub fn new() -> Self {
        ChannelPool::secured(Security::Insecure)
    }

    /// A pool whose channels dial with `security`.
    pub fn secured(security: Security) -> Self {
        ChannelPool {
            security,
            endpoints: Mutex::new(BTreeMap::new()),
        }
    }

    /// The downlink (every node's command stream on one call) of the host
    /// to `url`.
    pub fn downlink(&self, url: &str) -> Result<Downlink, AgentError> {
        Ok(self.links(url)?.downlink)
    }

    /// The uplink (batched registrations, heartbeats and reports) of the
    /// host to `url`.
    pub fn uplink(&self, url: &str) -> Result<Uplink, AgentError> {
        Ok(self.links(url)?.uplink)
    }

    /// The links to `url`, over a channel created (unconnected) on first
    /// use.
    fn links(&self, url: &str) -> Result<Links, AgentError> {
        let mut endpoints = self.endpoints.lock();
        if let Some(links) = endpoints.get(url) {
            return Ok(links.clone());
        }
        let channel = connect_lazy(url, &self.security)?;
        let links = Links {
            uplink: Uplink::start(channel.clone()),
            downlink: Downlink::new(channel),
        };
        endpoints.insert(url.to_string(), links.clone());
        Ok(links)
    }
}

/// A channel that connects on first use and reconnects by itself; each call
/// fails fast while the replica is unreachable.
pub fn connect_lazy(url: &str, security: &Security) -> Result<Channel, AgentError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| AgentError::Config(format!("region address {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    // Plain through the network seam, so the simulation's network carries
    // it; TLS with the host's certificate otherwise.
    Ok(meridian_control::tls::stream::channel(endpoint, security))
}

/// The comma-separated endpoint list of `--region`, spelled as control's
/// rule spells endpoints; an empty list is a configuration error.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, AgentError> {
    let urls = rpc::parse_endpoints(list);
    if urls.is_empty() {
        return Err(AgentError::Config("no region endpoint given".into()));
    }
    Ok(urls)
}

/// One node's view of the region's replicas.
pub struct RegionLink {
    replicas: Replicas,
    pool: Arc<ChannelPool>,
    /// The endpoint the node's calls go to.
    connected: String,
}

impl RegionLink {
    /// Starts at `first` (an index into `given`, wrapped), so the nodes of a
    /// host can be spread over the replicas; pauses between attempts are
    /// drawn from `reconnect` with `seed`.
    pub fn new(
        given: Vec<String>,
        first: usize,
        pool: Arc<ChannelPool>,
        reconnect: BackoffConfig,
        seed: u64,
    ) -> Result<RegionLink, AgentError> {
        let replicas = Replicas::new(given, first, reconnect, seed)
            .map_err(|e| AgentError::Config(format!("region endpoints: {e}")))?;
        let connected = replicas.current().to_string();
        // An endpoint that cannot be dialled is a configuration error now,
        // not at the first call.
        pool.links(&connected)?;
        Ok(RegionLink {
            replicas,
            pool,
            connected,
        })
    }

    /// The replica calls go to now.
    pub fn current(&self) -> &str {
        &self.connected
    }

    /// The host's batched uplink to the current replica.
    pub fn uplink(&self) -> Result<Uplink, AgentError> {
        self.pool.uplink(&self.connected)
    }

    /// The host's command streams to the current replica.
    pub fn downlink(&self) -> Result<Downlink, AgentError> {
        self.pool.downlink(&self.connected)
    }

    /// The current replica answered: control's rule starts over.
    pub fn answered(&mut self) {
        self.replicas.answered();
    }

    /// Applies control's retry rule to a failed call and moves the link
    /// where it says; returns the pause before the next session. A verdict
    /// of failure still gets a next session (a node never gives up on its
    /// region, its tasks keep running), at the next replica after a pause
    /// drawn at the backoff's cap.
    pub fn after(&mut self, verdict: &RpcVerdict) -> Duration {
        let wait = match self.replicas.after(verdict) {
            Some(step) => step.wait,
            None => {
                self.replicas
                    .move_for(&RpcVerdict::Backoff { move_on: true });
                self.replicas.pause_at_cap()
            }
        };
        self.connect_current();
        wait
    }

    /// Points the node at the replica the rule chose. A hinted address
    /// that cannot be used leaves the node where it was.
    fn connect_current(&mut self) {
        let url = self.replicas.current().to_string();
        if url == self.connected {
            return;
        }
        match self.pool.links(&url) {
            Ok(_) => self.connected = url,
            Err(e) => {
                tracing::warn!(endpoint = %url, error = %e, "ignoring an unusable endpoint");
            }
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
            Arc::new(ChannelPool::default()),
            BackoffConfig::default(),
            1,
        )
        .expect("link")
    }

    fn unavailable() -> RpcVerdict {
        RpcVerdict::Backoff { move_on: true }
    }

    #[tokio::test]
    async fn a_broken_link_moves_to_the_next_given_replica_and_wraps() {
        let mut l = link("127.0.0.1:1,http://127.0.0.1:2/", 0);
        assert_eq!(l.current(), "http://127.0.0.1:1");
        l.after(&unavailable());
        assert_eq!(l.current(), "http://127.0.0.1:2");
        l.after(&unavailable());
        assert_eq!(l.current(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_hint_moves_the_node_at_once_and_a_later_break_returns_to_the_given_list() {
        let mut l = link("http://127.0.0.1:1,http://127.0.0.1:2", 1);
        assert_eq!(l.current(), "http://127.0.0.1:2");
        let wait = l.after(&RpcVerdict::RetryAt("http://127.0.0.1:3".into()));
        assert_eq!((l.current(), wait), ("http://127.0.0.1:3", Duration::ZERO));
        l.after(&unavailable());
        assert_eq!(l.current(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_refusal_still_gets_a_next_session_at_the_next_replica() {
        let mut l = link("http://127.0.0.1:1,http://127.0.0.1:2", 0);
        let wait = l.after(&RpcVerdict::Fail);
        assert_eq!(l.current(), "http://127.0.0.1:2");
        assert!(wait <= BackoffConfig::default().cap);
    }

    #[test]
    fn an_empty_endpoint_list_is_a_configuration_error() {
        assert!(matches!(parse_endpoints(" , "), Err(AgentError::Config(_))));
    }
}
