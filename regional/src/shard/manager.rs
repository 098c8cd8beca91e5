//! Shard leadership for one scheduler replica: compete, balance, give away.
//!
//! Owns, per shard id, an [`Elector`] on the shard's lease (one key per shard
//! id in the region store, so a shard id's epoch only grows, across
//! re-sharding too), the worker that runs while this replica leads the shard,
//! and the balancing rule: a replica leading more than `ceil(shards / live
//! replicas)` shards, while another live replica leads fewer, gives the
//! excess away and stays out of those shards' elections for a cool-down of
//! one lease length, so the replica below its share takes them.
//!
//! Giving a shard away is fence-first: its worker is stopped and awaited (no
//! decision of this term is in flight any more), then the lease is released,
//! and the next holder's acquire bumps the epoch, which fails any straggling
//! write of this term at its fence check.
//!
//! Must never: run a worker for a shard without having won its lease, or keep
//! a worker running after the elector stepped down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use meridian_control::lease::{Elector, ElectorConfig, Fence, Identity, Lease, LeaseRuntime, Term};
use meridian_control::{Instant, SharedClock};
use meridian_store::Database;
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::layout::{Presence, read_presences, write_presence};
use crate::model::Keys;
use crate::model::view::read_layout;

/// One term of leadership of one shard.
#[derive(Debug, Clone)]
pub struct ShardTerm {
    pub shard: u32,
    pub epoch: u64,
    /// Proof to check inside every write of this term.
    pub fence: Fence,
}

/// What runs while this replica leads a shard (the placement loop and the
/// node sweep). `lead` must return soon after `stop` turns true.
pub trait ShardWork: Send + Sync + 'static {
    fn lead(&self, term: ShardTerm, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()>;
}

/// Timings and identity of a replica's shard manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Stable replica name.
    pub replica: String,
    /// Endpoint advertised in the presence record.
    pub endpoint: String,
    /// Shard lease duration.
    pub lease: Duration,
    /// Local safety margin of the lease.
    pub safety_margin: Duration,
    /// Seed of the electors' jitter.
    pub seed: u64,
    /// Where the shard leases are renewed (a thread of their own in
    /// production, so a saturated data path cannot delay a renewal).
    pub leases: LeaseRuntime,
    /// Where the shard lease records live: a store of their own on SQLite
    /// (`meridian_store::open_leases`), so a renewal never waits behind
    /// the region's writes; their fences are published into the region's
    /// store, where the writes check them.
    pub lease_store: Database,
}

/// Which shards this replica leads, at which epoch.
pub type Leading = Arc<Mutex<BTreeMap<u32, u64>>>;

struct Slot {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A replica's shard leadership.
pub struct ShardManager {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    identity: Identity,
    config: ManagerConfig,
    work: Arc<dyn ShardWork>,
    slots: BTreeMap<u32, Slot>,
    cooldown: BTreeMap<u32, Instant>,
    leading: Leading,
    stopping: Vec<JoinHandle<()>>,
}

impl ShardManager {
    pub fn new(
        db: Database,
        keys: Keys,
        clock: SharedClock,
        identity: Identity,
        config: ManagerConfig,
        work: Arc<dyn ShardWork>,
    ) -> Self {
        ShardManager {
            db,
            keys,
            clock,
            identity,
            config,
            work,
            slots: BTreeMap::new(),
            cooldown: BTreeMap::new(),
            leading: Arc::new(Mutex::new(BTreeMap::new())),
            stopping: Vec::new(),
        }
    }

    /// Shared view of the shards this replica leads.
    pub fn leading(&self) -> Leading {
        self.leading.clone()
    }

    /// Runs until `shutdown`, then gives every shard away.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(err) = self.tick().await {
                tracing::warn!(error = %err, "shard manager tick failed");
            }
            let sleep = self.clock.sleep(self.config.lease / 4);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = sleep => {}
            }
        }
        let slots = std::mem::take(&mut self.slots);
        for (_, slot) in slots {
            let _ = slot.stop.send(());
            self.stopping.push(slot.task);
        }
        for task in self.stopping.drain(..) {
            let _ = task.await;
        }
        let gone = Presence {
            boot_id: self.identity.boot_id.to_string(),
            endpoint: self.config.endpoint.clone(),
            expires_at_unix_ms: 0,
            held: Vec::new(),
        };
        if let Err(err) = write_presence(&self.db, &self.keys, &self.config.replica, &gone).await {
            tracing::warn!(error = %err, "clearing the presence record failed");
        }
    }

    /// One balancing step: refresh presence, follow the layout, give away
    /// excess shards, compete for the others.
    pub async fn tick(&mut self) -> crate::error::Result<()> {
        self.stopping.retain(|t| !t.is_finished());
        let held: Vec<u32> = self.leading.lock().keys().copied().collect();
        let lease_ms = u64::try_from(self.config.lease.as_millis()).unwrap_or(u64::MAX);
        let me = Presence {
            boot_id: self.identity.boot_id.to_string(),
            endpoint: self.config.endpoint.clone(),
            expires_at_unix_ms: self.clock.now_unix_ms().saturating_add(lease_ms),
            held: held.clone(),
        };
        write_presence(&self.db, &self.keys, &self.config.replica, &me).await?;
        let layout = self
            .db
            .run(|tx, _| {
                let keys = self.keys.clone();
                async move { read_layout(&tx, &keys).await }
            })
            .await?;
        let Some(layout) = layout else {
            return Ok(());
        };
        let now_ms = self.clock.now_unix_ms();
        let others: Vec<Presence> = read_presences(&self.db, &self.keys)
            .await?
            .into_iter()
            .filter(|(name, p)| *name != self.config.replica && p.expires_at_unix_ms > now_ms)
            .map(|(_, p)| p)
            .collect();
        let live = others.len() as u32 + 1;
        let target = layout.count.div_ceil(live) as usize;
        let now = self.clock.now();

        // Shards beyond the layout: give away.
        let beyond: Vec<u32> = self
            .slots
            .keys()
            .copied()
            .filter(|s| *s >= layout.count)
            .collect();
        for shard in beyond {
            self.give_away(shard, None);
        }
        // Excess: give away only when someone live has room for it.
        let someone_below = others.iter().any(|p| p.held.len() < target);
        if held.len() > target && someone_below {
            let excess: Vec<u32> = held
                .iter()
                .rev()
                .take(held.len() - target)
                .copied()
                .collect();
            for shard in excess {
                tracing::info!(shard, target, "giving a shard away to balance");
                self.give_away(shard, Some(now + self.config.lease));
            }
        }
        self.cooldown.retain(|_, until| *until > now);
        for shard in 0..layout.count {
            if self.slots.contains_key(&shard) || self.cooldown.contains_key(&shard) {
                continue;
            }
            self.open_slot(shard);
        }
        Ok(())
    }

    fn give_away(&mut self, shard: u32, cooldown_until: Option<Instant>) {
        if let Some(slot) = self.slots.remove(&shard) {
            let _ = slot.stop.send(());
            self.stopping.push(slot.task);
        }
        if let Some(until) = cooldown_until {
            self.cooldown.insert(shard, until);
        }
    }

    fn open_slot(&mut self, shard: u32) {
        let lease = Lease::new(
            self.config.lease_store.clone(),
            self.keys.shard_lease(shard),
            self.identity.clone(),
            self.clock.clone(),
            self.config.lease,
            self.config.safety_margin,
        )
        .with_fence_in(self.db.clone(), self.keys.shard_fence(shard));
        let elector = Elector::new(
            lease,
            ElectorConfig::for_lease(self.config.lease),
            self.config.seed ^ u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            format!("shard-{shard}"),
        );
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (work, leading) = (self.work.clone(), self.leading.clone());
        let task = tokio::spawn(elector.lead(
            self.config.leases.clone(),
            async move {
                let _ = stop_rx.await;
            },
            move |term: Term| {
                let (work, leading) = (work.clone(), leading.clone());
                async move {
                    let epoch = term.epoch();
                    let _listed = Listed::new(leading, shard, epoch);
                    let shard_term = ShardTerm {
                        shard,
                        epoch,
                        fence: term.fence.clone(),
                    };
                    work.lead(shard_term, term.stop_signal()).await;
                }
            },
        ));
        self.slots.insert(shard, Slot { stop, task });
    }
}

/// Lists a shard in [`Leading`] for as long as its term's worker runs.
struct Listed {
    leading: Leading,
    shard: u32,
}

impl Listed {
    fn new(leading: Leading, shard: u32, epoch: u64) -> Self {
        leading.lock().insert(shard, epoch);
        Listed { leading, shard }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.leading.lock().remove(&self.shard);
    }
}
