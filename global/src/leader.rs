//! Global leader election among replicas sharing one store.
//!
//! Owns this replica's candidacy (a `meridian_control` [`Elector`] on the
//! leader lease), the fence every leader write checks, the advertisement of
//! the leader's endpoints (so standbys can answer with a `meridian-leader`
//! hint) and the allocation of job ids. It must never let a write proceed
//! without a fence, and never hint at a leader whose advertisement is from
//! an older term than the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_control::SharedClock;
use meridian_control::lease::{
    Elector, ElectorConfig, Fence, Identity, LeaderStatus, Lease, LeaseRuntime, Role, Term,
};
use meridian_store::{Database, tuple};
use tokio::sync::watch;

use crate::config::GlobalConfig;
use crate::error::{GlobalError, Result};
use crate::keys::Keys;

/// Where the leader can be reached, as it advertised itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Leader term.
    pub epoch: u64,
    /// gRPC endpoint (URI).
    pub grpc: String,
    /// HTTP endpoint (URI); empty when none.
    pub http: String,
}

/// Where the leader lease lives and is renewed.
#[derive(Clone)]
pub struct Stores {
    /// The global records; the published leader fence is here.
    pub data: Database,
    /// The lease record (`meridian_store::open_leases`): on SQLite a file of
    /// its own, so a renewal never waits behind the submit path's commits.
    pub leases: Database,
    /// Where the elector runs: a thread of its own in production, so a
    /// saturated runtime cannot cost a healthy leader its lease.
    pub runtime: LeaseRuntime,
}

/// The endpoints a leader advertises.
pub struct Advertised {
    /// gRPC endpoint (URI).
    pub grpc: String,
    /// HTTP endpoint (URI); empty when none.
    pub http: String,
}

/// This replica's view of, and part in, the global leadership.
pub struct Leadership {
    db: Database,
    keys: Keys,
    identity: Identity,
    status: watch::Receiver<LeaderStatus>,
    next_seq: AtomicU64,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("identity", &self.identity.to_string())
            .finish()
    }
}

impl Leadership {
    /// Starts competing for the leader lease; the candidacy ends (and a
    /// held lease is released) when `shutdown` resolves. `grpc` and `http`
    /// are the endpoints advertised while leading.
    pub fn start(
        stores: &Stores,
        keys: Keys,
        config: &GlobalConfig,
        clock: SharedClock,
        advertised: Advertised,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let Advertised { grpc, http } = advertised;
        let db = stores.data.clone();
        let identity = Identity::new_boot(config.name.clone());
        let lease = Lease::new(
            stores.leases.clone(),
            keys.leader_lease(),
            identity.clone(),
            clock,
            config.leader_lease,
            config.leader_safety_margin,
        )
        .with_fence_in(db.clone(), keys.leader_fence());
        let elector = Elector::new(
            lease,
            ElectorConfig::for_lease(config.leader_lease),
            config.seed,
            "global",
        );
        let status = elector.subscribe();
        let leadership = Arc::new(Leadership {
            db,
            keys,
            identity,
            status,
            next_seq: AtomicU64::new(0),
        });
        let advertiser = leadership.clone();
        metrics::gauge!("meridian_global_leader").set(0.0);
        let handle =
            tokio::spawn(
                elector.lead(stores.runtime.clone(), shutdown, move |mut term: Term| {
                    let (advertiser, grpc, http) = (advertiser.clone(), grpc.clone(), http.clone());
                    async move {
                        metrics::gauge!("meridian_global_leader").set(1.0);
                        if let Err(err) = advertiser.advertise(&term.fence, &grpc, &http).await {
                            tracing::warn!(error = %err, "advertising the leader endpoints failed");
                        }
                        term.ended().await;
                        metrics::gauge!("meridian_global_leader").set(0.0);
                    }
                }),
            );
        (leadership, handle)
    }

    /// This replica's identity (name and boot id).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Leadership changes.
    pub fn subscribe(&self) -> watch::Receiver<LeaderStatus> {
        self.status.clone()
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        self.status.borrow().role == Role::Leader
    }

    /// The fence for a leader write, or `NotLeader` (with the leader's
    /// endpoint when known) when this replica does not lead.
    pub async fn fence(&self) -> Result<Fence> {
        let status = self.status.borrow().clone();
        if status.role == Role::Leader {
            return Ok(Fence::new(
                self.keys.leader_fence(),
                self.identity.clone(),
                status.epoch,
            ));
        }
        Err(self.not_leader().await)
    }

    /// A `NotLeader` error with the current leader's gRPC endpoint when it
    /// has advertised itself for the current term.
    pub async fn not_leader(&self) -> GlobalError {
        let leader = self.leader_info().await.ok().flatten().map(|i| i.grpc);
        GlobalError::NotLeader { leader }
    }

    /// The leader's advertisement, if the leader of the current term made one.
    pub async fn leader_info(&self) -> Result<Option<LeaderInfo>> {
        let key = self.keys.leader_info();
        let epoch = self.status.borrow().epoch;
        let raw = self
            .db
            .run(|tx, _| {
                let key = key.clone();
                async move { tx.get(&key).await }
            })
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        let (info_epoch, grpc, http): (u64, String, String) =
            tuple::unpack(&raw).map_err(|e| GlobalError::Corrupt(format!("leader info: {e}")))?;
        Ok((info_epoch >= epoch).then_some(LeaderInfo {
            epoch: info_epoch,
            grpc,
            http,
        }))
    }

    /// A fresh job id: the leader term, then a sequence number, so ids
    /// issued later sort after ids issued earlier (a term's writes are
    /// fenced off once a later term begins).
    pub fn job_id(&self, fence: &Fence) -> String {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        format!("j{:010}-{:012}", fence.epoch(), seq)
    }

    async fn advertise(&self, fence: &Fence, grpc: &str, http: &str) -> Result<()> {
        let key = self.keys.leader_info();
        let value = tuple::pack(&(fence.epoch(), grpc, http));
        self.db
            .run(|tx, _| {
                let (fence, key, value) = (fence.clone(), key.clone(), value.clone());
                async move {
                    fence.check(&tx).await?;
                    tx.set(&key, &value)?;
                    Ok::<_, GlobalError>(())
                }
            })
            .await
    }
}
