//! Channels from this replica to the regions' `RegionAdmin` services, one
//! per admin endpoint, kept between calls.
//!
//! Owns the dialing of a region's admin endpoint for the calls the global
//! tier forwards (task pages, logs, node drains and cordons). Dialing per
//! call cost every such call a TCP connect and, with TLS, a full mutual
//! handshake: measured at about 5 ms more per `ListJobTasks` than plain
//! text, most of the page's time. A kept channel pays that once; tonic
//! reconnects it when the connection drops, and each reconnect dials
//! through [`meridian_control::tls::stream`], which reads the certificate
//! files at that moment, so a rotated certificate is used from the next
//! connection on, as everywhere else.
//!
//! Must never decide which region or endpoint to call (the registry's
//! record does) and must never hold its lock across a dial.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_control::tls::Security;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

/// Endpoints kept: a federation has tens of regions with one admin
/// endpoint each; a registry churning through endpoints (replicas moving)
/// should not grow this without bound.
const KEPT: usize = 256;

/// This replica's channels to regions' admin endpoints.
#[derive(Clone)]
pub struct AdminChannels {
    security: Security,
    kept: Arc<Mutex<BTreeMap<String, Channel>>>,
}

/// Why a region's admin endpoint could not be dialed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("unusable admin endpoint {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("unreachable: {0}")]
    Unreachable(tonic::transport::Error),
}

impl AdminChannels {
    /// Channels dialed with `security` (this replica's own certificate).
    pub fn new(security: Security) -> Self {
        AdminChannels {
            security,
            kept: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// How this replica dials regions.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// A client of the `RegionAdmin` at `endpoint`: the kept channel, or a
    /// new connection (kept for the next call once it is up).
    pub async fn client(&self, endpoint: &str) -> Result<RegionAdminClient<Channel>, DialError> {
        if let Some(channel) = self.kept.lock().get(endpoint) {
            return Ok(RegionAdminClient::new(channel.clone()));
        }
        let target =
            Endpoint::from_shared(endpoint.to_string()).map_err(|source| DialError::Endpoint {
                endpoint: endpoint.to_string(),
                source,
            })?;
        // Connected now, so an unreachable region answers UNAVAILABLE at
        // once rather than on the forwarded call.
        let channel = meridian_control::tls::stream::connect(target, &self.security)
            .await
            .map_err(DialError::Unreachable)?;
        let mut kept = self.kept.lock();
        if kept.len() >= KEPT && !kept.contains_key(endpoint) {
            kept.pop_first();
        }
        kept.insert(endpoint.to_string(), channel.clone());
        Ok(RegionAdminClient::new(channel))
    }

    /// How many endpoints have a kept channel.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.kept.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endpoint_that_does_not_parse_is_refused_naming_it_and_nothing_is_kept() {
        let channels = AdminChannels::new(Security::Insecure);
        let err = channels.client("not a uri").await.err();
        assert!(
            matches!(&err, Some(DialError::Endpoint { endpoint, .. }) if endpoint == "not a uri"),
            "{err:?}"
        );
        assert_eq!(channels.kept(), 0);
    }

    #[tokio::test]
    async fn a_second_call_to_one_endpoint_reuses_the_first_connection() {
        // The kernel completes the TCP handshake and queues the connection
        // for accept; nobody accepts, so the queue counts the dials.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let channels = AdminChannels::new(Security::Insecure);
        channels.client(&endpoint).await.expect("first dial");
        channels.client(&endpoint).await.expect("kept channel");
        assert_eq!(channels.kept(), 1);
        assert!(listener.accept().is_ok(), "the first call connected");
        let second = listener.accept().map(|_| ());
        assert!(
            matches!(&second, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a second connection was made: {second:?}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_refused_and_nothing_is_kept() {
        // A port nobody listens on: bind one, note it, and close it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let channels = AdminChannels::new(Security::Insecure);
        let err = channels.client(&format!("http://{addr}")).await.err();
        assert!(matches!(err, Some(DialError::Unreachable(_))), "{err:?}");
        assert_eq!(channels.kept(), 0);
    }
}
