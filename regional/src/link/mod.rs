//! The link to the global tier, run by the replica that wins the region's
//! link lease.
//!
//! Owns the region side of `RegionLink`: register for the region lease
//! (presenting the link lease epoch as `leader_epoch`), renew it, pull the
//! assignment stream from the persisted cursor and apply each event
//! ([`apply`]), acknowledge ASSIGNs with their epochs, report capacity and job
//! status, and release revoked jobs once none of their tasks is bound. Every
//! store write checks the link lease's fence. Must never talk to the global
//! tier except through the proto client, and never act on a region lease
//! epoch the global tier called stale.

mod ack;
pub mod apply;
pub mod compact;
mod refuse;
mod report;
mod session;
pub mod trim;

pub use report::Reported;

use std::time::Duration;

use meridian_control::SharedClock;
use meridian_control::lease::{Elector, ElectorConfig, Identity, Lease, LeaseRuntime, Term};
use meridian_store::Database;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::model::Keys;
use crate::pipeline::Pipeline;
use crate::state::SharedState;

/// What agents are told about the region lease (stored by the link leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    pub region_lease_epoch: u64,
    pub lease_expires_unix_ms: u64,
}

crate::model::codec::json_record!(LinkState);

/// Settings of the link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub region: String,
    /// Global tier endpoints (`http://host:port`, comma separated): the
    /// link follows the `meridian-leader` hint and otherwise tries the next.
    pub global: String,
    pub replica: String,
    /// This replica's own endpoint (RegionAdmin is served there too).
    pub endpoint: String,
    /// Duration of the link lease inside the region.
    pub lease: Duration,
    /// How often capacity and status go up.
    pub report_every: Duration,
    /// How long tombstones of retired jobs (and their captured output) are
    /// kept; must be longer than the global tier's event retention.
    pub tombstone_retention: Duration,
    /// TLS to the global tier, with this region's certificate.
    pub security: meridian_control::tls::Security,
}

/// What the link runs with.
#[derive(Clone)]
pub struct LinkCtx {
    pub db: Database,
    pub keys: Keys,
    pub clock: SharedClock,
    pub identity: Identity,
    pub pipeline: Pipeline,
    pub state: SharedState,
    /// Where the link lease is renewed.
    pub leases: LeaseRuntime,
    /// Where the link lease record lives (see `ManagerConfig::lease_store`).
    pub lease_store: Database,
}

/// Runs the link election and, while leading, the link session, until
/// `shutdown`.
pub async fn run(
    ctx: LinkCtx,
    config: LinkConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let LinkCtx {
        db,
        keys,
        clock,
        identity,
        leases,
        lease_store,
        ..
    } = ctx.clone();
    let lease = Lease::new(
        lease_store,
        keys.link_lease(),
        identity.clone(),
        clock.clone(),
        config.lease,
        config.lease / 10,
    )
    .with_fence_in(db.clone(), keys.link_fence());
    let elector = Elector::new(lease, ElectorConfig::for_lease(config.lease), 7, "link");
    elector
        .lead(leases, shutdown, move |mut term: Term| {
            let (ctx, config) = (ctx.clone(), config.clone());
            let trimmer = trim::Trimmer {
                db: db.clone(),
                keys: keys.clone(),
                clock: clock.clone(),
                state: ctx.state.clone(),
                tombstone_retention: config.tombstone_retention,
            };
            async move {
                let (stop_session, session_rx) = oneshot::channel();
                let (stop_trim, trim_rx) = oneshot::channel();
                let work = futures::future::join(
                    session::run(ctx, config, term.fence.clone(), session_rx),
                    trim::run(trimmer, term.fence.clone(), trim_rx),
                );
                tokio::pin!(work);
                tokio::select! {
                    _ = &mut work => return,
                    _ = term.ended() => {}
                }
                // Both are told, and the session may finish its report.
                let _ = stop_session.send(());
                let _ = stop_trim.send(());
                work.await;
            }
        })
        .await;
}
