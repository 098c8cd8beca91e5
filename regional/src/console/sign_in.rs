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
    let check: Arc<dyn TokenCheck> = match &deps.global {
        Some(global) => Arc::new(GlobalCheck {
            region: deps.api.region.clone(),
            channel: channel(deps, global)?,
        }),
        None => Arc::new(NoGlobal),
    };
    Gate::sign_in(check, ConsoleRole::Viewer, deps.api.clock.clone(), true)
}

/// A channel to the global tier, under this replica's certificate;
/// connected on first use.
fn channel(deps: &ConsoleDeps, global: &str) -> Result<Channel, ConsoleError> {
    let endpoint = Endpoint::from_shared(global.to_string())
        .map_err(|e| ConsoleError::Unavailable(format!("global tier at {global}: {e}")))?;
    Ok(meridian_control::tls::stream::channel(
        endpoint,
        &deps.api.security,
    ))
}

/// Tokens checked by the global tier over the region link.
struct GlobalCheck {
    region: String,
    channel: Channel,
}

impl TokenCheck for GlobalCheck {
    fn check<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Viewer, ConsoleError>> {
        Box::pin(async move {
            let answer = RegionLinkClient::new(self.channel.clone())
                .check_console_token(v1::CheckConsoleTokenRequest {
                    region: self.region.clone(),
                    token: token.to_string(),
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

/// A federation API client for `deps`' global tier.
fn federation(deps: &ConsoleDeps) -> Result<FederationClient<Channel>, ConsoleError> {
    let Some(global) = &deps.global else {
        return Err(ConsoleError::Unavailable(format!(
            "region {} runs without a global tier (no --global): there is nothing to act through",
            deps.api.region
        )));
    };
    Ok(FederationClient::new(channel(deps, global)?))
}

/// `message` with `authorization: <bearer>` set.
fn as_caller<T>(message: T, bearer: &str) -> Result<tonic::Request<T>, ConsoleError> {
    let mut request = tonic::Request::new(message);
    let value = bearer
        .parse()
        .map_err(|_| ConsoleError::Invalid("token: not a valid header value".into()))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
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
    let mut client = federation(deps).map_err(refused)?;
    let region = deps.api.region.clone();
    match action {
        NodeAction::Cordon => {
            let request = v1::CordonNodeRequest {
                region,
                node_id,
                reason,
            };
            let r = client
                .cordon_node(as_caller(request, bearer).map_err(refused)?)
                .await?;
            Ok(r.into_inner().node)
        }
        NodeAction::Uncordon => {
            let request = v1::UncordonNodeRequest { region, node_id };
            let r = client
                .uncordon_node(as_caller(request, bearer).map_err(refused)?)
                .await?;
            Ok(r.into_inner().node)
        }
        NodeAction::Drain => {
            let request = v1::DrainNodeRequest {
                region,
                node_id,
                reason,
                deadline_ms: 0,
            };
            let r = client
                .drain_node(as_caller(request, bearer).map_err(refused)?)
                .await?;
            Ok(r.into_inner().node)
        }
    }
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
    let mut client = federation(deps)?;
    let request = v1::DrainRegionRequest {
        region: region.clone(),
        reason: if reason.is_empty() {
            "drained from the regional console".into()
        } else {
            reason.to_string()
        },
        evacuate,
    };
    let request = match actor.bearer() {
        Some(bearer) => as_caller(request, &bearer)?,
        None => tonic::Request::new(request),
    };
    let info = client
        .drain_region(request)
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
