//! A region console's sign-in, and the actions of whoever signed in.
//!
//! Owns the [`Gate`] of this replica's console and the calls a signed-in
//! operator's actions make. Tokens live in the global store, so the region
//! asks the global tier who a token stands for (`RegionLink.
//! CheckConsoleToken`, over its link, authenticated by this replica's
//! certificate) and never decides that itself. A signed-in operator's node
//! and region actions go through the federation API with their own token:
//! the global tier checks the role again and records the change in its
//! audit log, exactly as for `meridian node drain`.
//!
//! Which gate: a replica served over TLS and linked to a global tier signs
//! people in; one started with `--insecure` serves its console open (it
//! warned at start); one served over TLS without a global tier has nothing
//! to check tokens with and refuses every sign-in, rather than open a
//! console on a port it protects. Must never keep a token beyond the
//! console's session, or act with the replica's own authority for a
//! signed-in person.

use std::sync::Arc;

use futures::future::BoxFuture;
use meridian_console::view::NodeAction;
use meridian_console::{ConsoleError, ConsoleRole, Gate, TokenCheck, Viewer};
use meridian_control::rpc::{self, RpcVerdict};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use tonic::transport::{Channel, Endpoint};

use super::{ConsoleDeps, from_status};

/// The gate of this replica's console (see the module's doc).
pub fn gate(deps: &ConsoleDeps) -> Result<Arc<Gate>, ConsoleError> {
    let security = &deps.api.security;
    if !security.is_tls() {
        return Gate::open();
    }
    let check: Arc<dyn TokenCheck> = match Global::of(deps) {
        Some(global) => Arc::new(GlobalCheck {
            region: deps.api.region.clone(),
            global,
        }),
        None => Arc::new(NoGlobal),
    };
    Gate::sign_in(check, ConsoleRole::Viewer, deps.api.clock.clone(), true)
}

/// The global tier's replicas (`--global`, comma separated), dialled under
/// this replica's certificate, each channel connected on first use.
struct Global {
    channels: Vec<(String, Channel)>,
}

impl Global {
    /// `None` for a region without a global tier.
    fn of(deps: &ConsoleDeps) -> Option<Global> {
        let list = deps.global.as_deref()?;
        let channels: Vec<(String, Channel)> = rpc::parse_endpoints(list)
            .into_iter()
            .filter_map(|url| {
                let endpoint = Endpoint::from_shared(url.clone()).ok()?;
                Some((
                    url,
                    meridian_control::tls::stream::channel(endpoint, &deps.api.security),
                ))
            })
            .collect();
        (!channels.is_empty()).then_some(Global { channels })
    }

    /// `call` on the replica that answers it: a refusal naming the leader
    /// is sent there, an unreachable replica passes to the next. A console
    /// action is interactive: no backoff, one pass over the replicas (and
    /// the leaders they name) at most, then the last error.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut next = 0;
        let mut hinted: Option<String> = None;
        let mut last = tonic::Status::unavailable("no global tier replica answered");
        for _ in 0..self.channels.len() * 2 {
            let at = match hinted.take() {
                Some(url) => self.channels.iter().position(|(u, _)| *u == url),
                None => None,
            }
            .unwrap_or_else(|| {
                let at = next % self.channels.len();
                next += 1;
                at
            });
            match call(self.channels[at].1.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(status) => {
                    match RpcVerdict::of(&status) {
                        RpcVerdict::RetryAt(leader) => hinted = Some(rpc::normalize(&leader)),
                        RpcVerdict::Fail => return Err(status),
                        _ => {}
                    }
                    last = status;
                }
            }
        }
        Err(last)
    }
}

/// Tokens checked by the global tier over the region link.
struct GlobalCheck {
    region: String,
    global: Global,
}

impl TokenCheck for GlobalCheck {
    fn check<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Viewer, ConsoleError>> {
        Box::pin(async move {
            let request = v1::CheckConsoleTokenRequest {
                region: self.region.clone(),
                token: token.to_string(),
            };
            let answer = self
                .global
                .call(|channel| {
                    let request = request.clone();
                    async move {
                        RegionLinkClient::new(channel)
                            .check_console_token(request)
                            .await
                    }
                })
                .await
                .map_err(from_status)?
                .into_inner();
            Viewer::of_check(answer)
        })
    }
}

/// A TLS replica without a global tier: nobody can sign in.
struct NoGlobal;

impl TokenCheck for NoGlobal {
    fn check<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Viewer, ConsoleError>> {
        Box::pin(async {
            Err(ConsoleError::Unavailable(
                "this region runs without a global tier (no --global), which holds the tokens: \
                 its console cannot sign anyone in"
                    .into(),
            ))
        })
    }
}

/// `deps`' global tier, or why there is none.
fn global(deps: &ConsoleDeps) -> Result<Global, ConsoleError> {
    Global::of(deps).ok_or_else(|| {
        ConsoleError::Unavailable(format!(
            "region {} runs without a global tier (no --global): there is nothing to act through",
            deps.api.region
        ))
    })
}

/// `message` with `authorization` set to `value`.
fn with_auth<T>(
    message: T,
    value: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", value.clone());
    request
}

/// `bearer` as the value of an `authorization` header.
fn authorization(
    bearer: &str,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, tonic::Status> {
    bearer
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("token: not a valid header value"))
}

/// A node action through the federation API, as the holder of `bearer`.
pub(super) async fn node_action(
    deps: &ConsoleDeps,
    action: NodeAction,
    node_id: String,
    reason: String,
    bearer: &str,
) -> Result<Option<v1::NodeInfo>, tonic::Status> {
    let refused = |e: ConsoleError| tonic::Status::unavailable(e.to_string());
    let global = global(deps).map_err(refused)?;
    let region = deps.api.region.clone();
    let authorization = authorization(bearer)?;
    let asked = |channel: Channel| {
        let (region, node_id, reason) = (region.clone(), node_id.clone(), reason.clone());
        let authorization = authorization.clone();
        async move {
            let mut client = FederationClient::new(channel);
            match action {
                NodeAction::Cordon => client
                    .cordon_node(with_auth(
                        v1::CordonNodeRequest {
                            region,
                            node_id,
                            reason,
                        },
                        &authorization,
                    ))
                    .await
                    .map(|r| r.into_inner().node),
                NodeAction::Uncordon => client
                    .uncordon_node(with_auth(
                        v1::UncordonNodeRequest { region, node_id },
                        &authorization,
                    ))
                    .await
                    .map(|r| r.into_inner().node),
                NodeAction::Drain => client
                    .drain_node(with_auth(
                        v1::DrainNodeRequest {
                            region,
                            node_id,
                            reason,
                            deadline_ms: 0,
                        },
                        &authorization,
                    ))
                    .await
                    .map(|r| r.into_inner().node),
            }
        }
    };
    global.call(asked).await
}

/// Drains this region through the federation API: as the signed-in
/// operator when there is one, else under this replica's certificate (a
/// console without sign-in, whose global tier runs without authentication).
pub(super) async fn drain_region(
    deps: &ConsoleDeps,
    reason: &str,
    evacuate: bool,
    actor: &meridian_console::Actor,
) -> Result<String, ConsoleError> {
    let region = deps.api.region.clone();
    let global = global(deps)?;
    let request = v1::DrainRegionRequest {
        region: region.clone(),
        reason: if reason.is_empty() {
            "drained from the regional console".into()
        } else {
            reason.to_string()
        },
        evacuate,
    };
    let authorization = actor
        .bearer()
        .map(|b| authorization(&b))
        .transpose()
        .map_err(from_status)?;
    let info = global
        .call(|channel| {
            let request = match &authorization {
                Some(value) => with_auth(request.clone(), value),
                None => tonic::Request::new(request.clone()),
            };
            async move { FederationClient::new(channel).drain_region(request).await }
        })
        .await
        .map_err(from_status)?
        .into_inner()
        .region
        .unwrap_or_default();
    Ok(format!(
        "region {region} is draining{} (lease epoch {})",
        if info.evacuating {
            " and evacuating"
        } else {
            ""
        },
        info.lease_epoch
    ))
}
