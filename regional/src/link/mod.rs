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

/// What agents are told about the region lease (stored by the link leader),
/// and whether shard leaders may place under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    pub region_lease_epoch: u64,
    pub lease_expires_unix_ms: u64,
    /// The lease epoch under which the region has applied every assignment
    /// change the global tier had written when the stream caught up (the
    /// first bookmark of the stream opened under that epoch). Until it
    /// equals `region_lease_epoch`, the region may still hold jobs the
    /// global tier moved elsewhere while its lease had run out.
    #[serde(default)]
    pub synced_epoch: u64,
    /// The expiry of the last lease the region had caught up under: what
    /// agents are told while a new lease is not caught up yet, so a link
    /// handover inside a valid lease costs them nothing, and a region back
    /// from a lapsed lease tells them it has none until it has caught up.
    #[serde(default)]
    pub synced_expires_unix_ms: u64,
}

impl LinkState {
    /// Whether shard leaders may start new attempts at `now_unix_ms`: the
    /// region holds its lease, and has caught up with the assignment
    /// changes made before it got it. Once the lease has run out the
    /// global tier may hand any of the region's jobs to another region;
    /// placing one here would run it twice (for an exclusive job, on two
    /// nodes at once).
    pub fn may_place(&self, now_unix_ms: u64) -> bool {
        self.synced() && now_unix_ms < self.lease_expires_unix_ms
    }

    /// Caught up with the assignment changes of the current lease epoch.
    pub fn synced(&self) -> bool {
        self.synced_epoch == self.region_lease_epoch && self.region_lease_epoch != 0
    }

    /// The lease time agents are told is left at `now_unix_ms`: the current
    /// lease once caught up, else the last caught-up one (0 once that ran
    /// out: an agent then keeps the deadline it has and starts no failover
    /// task past it).
    pub fn agent_lease_remaining_ms(&self, now_unix_ms: u64) -> u64 {
        self.agent_expiry().saturating_sub(now_unix_ms)
    }

    /// The expiry agents are told: the current lease's once caught up, else
    /// the last caught-up one's (0: none).
    fn agent_expiry(&self) -> u64 {
        if self.synced() {
            self.lease_expires_unix_ms
        } else {
            self.synced_expires_unix_ms
        }
    }

    /// This lease state, caught up under its epoch or not yet; when not,
    /// agents go on being told what `prev` (the state stored before) told
    /// them.
    pub fn marked(self, caught_up: bool, prev: Option<LinkState>) -> LinkState {
        if caught_up {
            LinkState {
                synced_epoch: self.region_lease_epoch,
                synced_expires_unix_ms: self.lease_expires_unix_ms,
                ..self
            }
        } else {
            LinkState {
                synced_epoch: 0,
                synced_expires_unix_ms: prev.map_or(0, |p| p.agent_expiry()),
                ..self
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::LinkState;

    fn state(epoch: u64, expires: u64, synced: u64, synced_expires: u64) -> LinkState {
        LinkState {
            region_lease_epoch: epoch,
            lease_expires_unix_ms: expires,
            synced_epoch: synced,
            synced_expires_unix_ms: synced_expires,
        }
    }

    #[test]
    fn a_region_places_only_under_a_live_lease_it_has_caught_up_under() {
        assert!(state(3, 10_000, 3, 10_000).may_place(9_999));
        assert!(!state(3, 10_000, 3, 10_000).may_place(10_000), "ran out");
        assert!(
            !state(3, 10_000, 2, 8_000).may_place(5_000),
            "not caught up"
        );
        assert!(!state(0, 10_000, 0, 0).may_place(5_000), "never registered");
    }

    #[test]
    fn agents_are_told_the_last_caught_up_lease_until_the_new_one_is_caught_up() {
        // Caught up: the current lease.
        assert_eq!(
            state(3, 10_000, 3, 10_000).agent_lease_remaining_ms(4_000),
            6_000
        );
        // A new epoch inside a live caught-up lease (a link handover): the
        // agents' deadline does not move back.
        assert_eq!(
            state(4, 12_000, 3, 10_000).agent_lease_remaining_ms(4_000),
            6_000
        );
        // Back from a lapsed lease: nothing left until caught up (0 leaves
        // the agents' own, passed, deadline in place).
        assert_eq!(
            state(4, 12_000, 3, 3_000).agent_lease_remaining_ms(4_000),
            0
        );
    }

    #[test]
    fn a_link_state_stored_before_the_catch_up_fields_reads_as_not_caught_up() {
        let old: LinkState =
            serde_json::from_str(r#"{"region_lease_epoch":2,"lease_expires_unix_ms":9000}"#)
                .expect("decodes");
        assert!(!old.may_place(1_000));
        assert_eq!(old.agent_lease_remaining_ms(1_000), 0);
    }
}
