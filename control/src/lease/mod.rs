//! Leases with fencing epochs: who may act, and proof inside every write.
//!
//! Owns the lease protocol (docs/architecture.md, authority and fencing) on top of the store: acquire,
//! renew, release and observe a record `(holder, epoch, expires_at)`, and the
//! [`Fence`] an owner checks inside each of its write transactions. Taking over
//! is one transaction that bumps the epoch; only after it commits does the new
//! owner act. Clocks decide only when a candidate *tries*; whether a write may
//! commit is decided by the epoch read inside that write's own transaction.
//!
//! Must never: let a write that failed its fence check commit, reuse an epoch,
//! or treat a lease as held past the local deadline `start + duration -
//! safety_margin` (the [`elector`] steps down there by itself).

pub mod elector;
mod home;
mod lead;
pub mod observe;
mod record;
mod runtime;

use std::time::Duration;

use meridian_store::{Database, Retryable, StoreError, Transaction, TxError};

use crate::clock::{Instant, SharedClock};

pub use elector::{Elector, ElectorConfig, LeaderStatus, Role};
pub use lead::Term;
pub use record::{Identity, LeaseRecord};
pub use runtime::LeaseRuntime;

/// Why a lease operation or a fenced write failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseError {
    /// The lease moved on: another holder or a higher epoch. The caller is no
    /// longer the owner and must stop acting.
    #[error("fenced: expected {expected_holder} at epoch {expected_epoch}, found {found}")]
    Fenced {
        /// Who the caller thought held it.
        expected_holder: String,
        /// The epoch the caller held.
        expected_epoch: u64,
        /// What the store says now.
        found: String,
    },
    /// The stored record could not be decoded.
    #[error("corrupt lease record: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Retryable for LeaseError {
    fn is_retryable(&self) -> bool {
        match self {
            LeaseError::Store(e) => e.is_retryable(),
            LeaseError::Fenced { .. } | LeaseError::Corrupt(_) => false,
        }
    }
}

impl TxError for LeaseError {
    fn as_store_error(&self) -> Option<&StoreError> {
        match self {
            LeaseError::Store(e) => Some(e),
            _ => None,
        }
    }
}

/// Proof of ownership to present inside a write transaction: the lease key,
/// the holder and the epoch it acquired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    key: Vec<u8>,
    holder: Identity,
    epoch: u64,
    rider: Option<std::sync::Arc<(Vec<u8>, Vec<u8>)>>,
}

impl Fence {
    /// A fence for `holder` at `epoch` on the lease stored at `key`.
    pub fn new(key: Vec<u8>, holder: Identity, epoch: u64) -> Self {
        Fence {
            key,
            holder,
            epoch,
            rider: None,
        }
    }

    /// This fence, also writing `value` at `key` in every transaction whose
    /// check passes: a record that must commit exactly when the fenced
    /// write does (the global tier's audit log), without each writer
    /// knowing of it. The write is the same on every retry, so a retried
    /// transaction writes it once.
    pub fn with_rider(mut self, key: Vec<u8>, value: Vec<u8>) -> Self {
        self.rider = Some(std::sync::Arc::new((key, value)));
        self
    }

    /// The epoch this fence proves.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The holder this fence proves.
    pub fn holder(&self) -> &Identity {
        &self.holder
    }

    /// The store key of the lease this fence is on.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Re-reads the lease inside `tx` and fails with [`LeaseError::Fenced`] if
    /// its holder or epoch changed. Because the read is part of `tx`, a
    /// takeover that commits first makes `tx` fail (conflict, then this check
    /// on retry), and one that commits later is ordered after `tx`: either
    /// way no write of a fenced owner commits.
    pub async fn check(&self, tx: &Transaction) -> Result<(), LeaseError> {
        let stored = tx.get(&self.key).await?;
        self.verify(stored.as_deref())?;
        if let Some(rider) = &self.rider {
            tx.set(&rider.0, &rider.1)?;
        }
        Ok(())
    }

    /// The check of [`Fence::check`] on a lease record the caller read
    /// itself, inside the transaction that writes (for a batched writer that
    /// reads many keys, fences among them, in one round trip). The read must
    /// be a conflicting read of that transaction, or the proof means nothing.
    pub fn verify(&self, stored: Option<&[u8]>) -> Result<(), LeaseError> {
        let found = match stored {
            Some(bytes) => LeaseRecord::decode(bytes)?,
            None => {
                crate::telemetry::fenced_write();
                return Err(self.fenced("no lease record".into()));
            }
        };
        if found.epoch != self.epoch || found.holder != self.holder {
            crate::telemetry::fenced_write();
            return Err(self.fenced(format!("{} at epoch {}", found.holder, found.epoch)));
        }
        Ok(())
    }

    fn fenced(&self, found: String) -> LeaseError {
        LeaseError::Fenced {
            expected_holder: self.holder.to_string(),
            expected_epoch: self.epoch,
            found,
        }
    }
}

/// The lease held after a successful acquire or renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Proof to check inside writes.
    pub fence: Fence,
    /// Local monotonic deadline after which the holder must stop acting:
    /// measured from *before* the transaction started, minus the safety
    /// margin, so it always falls before the stored expiry.
    pub act_until: Instant,
}

/// What an acquire attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The caller holds the lease now.
    Held(Held),
    /// Someone else holds it; retry after it expires.
    Busy(LeaseRecord),
}

/// One lease in the store, seen by one candidate.
#[derive(Clone)]
pub struct Lease {
    db: Database,
    key: Vec<u8>,
    identity: Identity,
    clock: SharedClock,
    duration: Duration,
    safety_margin: Duration,
    /// Where fences are checked, when not on the lease record itself.
    home: Option<home::FenceHome>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("identity", &self.identity.to_string())
            .field("duration", &self.duration)
            .finish()
    }
}

impl Lease {
    /// A lease stored at `key`, held for `duration` per acquire or renew,
    /// acted on only until `duration - safety_margin` has passed locally.
    pub fn new(
        db: Database,
        key: Vec<u8>,
        identity: Identity,
        clock: SharedClock,
        duration: Duration,
        safety_margin: Duration,
    ) -> Self {
        Lease {
            db,
            key,
            identity,
            clock,
            duration,
            safety_margin: safety_margin.min(duration),
            home: None,
        }
    }

    /// Keeps the record where [`Lease::new`] put it (a store of its own,
    /// whose writes wait for nothing but other leases) and publishes each
    /// term's fence at `key` in `guarded`, the store of the data the lease
    /// guards; fences are checked there (see `home.rs` for why that is as
    /// safe as checking the lease record).
    pub fn with_fence_in(mut self, guarded: Database, key: Vec<u8>) -> Self {
        self.home = Some(home::FenceHome { db: guarded, key });
        self
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The key writes check their fence against: the published fence, or
    /// the lease record itself.
    pub fn fence_key(&self) -> &[u8] {
        self.home.as_ref().map_or(&self.key, |h| &h.key)
    }

    /// The record as it is now, if any.
    pub async fn observe(&self) -> Result<Option<LeaseRecord>, LeaseError> {
        let key = self.key.clone();
        self.db
            .run(|tx, _| {
                let key = key.clone();
                async move {
                    match tx.get(&key).await? {
                        Some(bytes) => Ok(Some(LeaseRecord::decode(&bytes)?)),
                        None => Ok(None),
                    }
                }
            })
            .await
    }

    /// Takes the lease if it is free, expired or released, bumping the epoch
    /// in the same transaction: acquiring always starts a new term. An
    /// unexpired lease is never taken, not even one this identity holds (a
    /// holder extends with [`Lease::renew`]).
    pub async fn try_acquire(&self) -> Result<Acquired, LeaseError> {
        let started = self.clock.now();
        let now_ms = self.clock.now_unix_ms();
        // Above any published fence too: a lost or replaced lease store
        // must not bring an old epoch back.
        let floor = match &self.home {
            Some(home) => home.published_epoch().await?,
            None => 0,
        };
        let record = self
            .write(move |current| match current {
                Some(cur) if !cur.is_expired_at(now_ms) => Err(Some(cur.clone())),
                _ => Ok(current.map_or(0, |cur| cur.epoch).max(floor) + 1),
            })
            .await?;
        let epoch = match record {
            Ok(epoch) => epoch,
            Err(Some(busy)) => return Ok(Acquired::Busy(busy)),
            // `decide` refuses only when it found a live record.
            Err(None) => return Err(LeaseError::Corrupt("lease refused without a record".into())),
        };
        let mut held = self.held(epoch, started);
        if let Some(home) = &self.home {
            match home.publish(&self.identity, epoch).await {
                Ok(Ok(())) => {}
                Ok(Err(newer)) => return Ok(Acquired::Busy(newer)),
                Err(err) => {
                    // Not acting on this term: let the next candidate in
                    // now rather than at expiry.
                    let _ = self.release(&held).await;
                    return Err(err);
                }
            }
            // Publishing waited for the guarded store's writers; the term
            // counts from a renewal after it, or (if that renewal failed)
            // from before the acquisition, which is shorter but still safe.
            match self.renew(&held).await {
                Ok(renewed) => held = renewed,
                // Taken over while publishing: this term is already over.
                Err(err @ LeaseError::Fenced { .. }) => return Err(err),
                Err(_) => {}
            }
        }
        observe::acquired(self.fence_key(), &self.identity, epoch);
        Ok(Acquired::Held(held))
    }

    /// Extends a held lease. Fails with [`LeaseError::Fenced`] when the
    /// epoch or holder moved.
    pub async fn renew(&self, held: &Held) -> Result<Held, LeaseError> {
        let started = self.clock.now();
        let epoch = self.rewrite_own(held, Some(self.lifetime_ms())).await?;
        Ok(self.held(epoch, started))
    }

    /// Gives the lease up so another candidate can take it at once. The epoch
    /// stays; the next holder bumps it.
    pub async fn release(&self, held: &Held) -> Result<(), LeaseError> {
        self.rewrite_own(held, None).await.map(|_| ())
    }

    /// Rewrites the record of `held`'s term with a new lifetime, or fails
    /// with [`LeaseError::Fenced`] if the term is over.
    async fn rewrite_own(&self, held: &Held, lifetime_ms: Option<u64>) -> Result<u64, LeaseError> {
        let fence = held.fence.clone();
        let outcome = self
            .write_with(
                move |current| match current {
                    Some(cur) if cur.epoch == fence.epoch && cur.holder == fence.holder => {
                        Ok(cur.epoch)
                    }
                    other => Err(other.cloned()),
                },
                lifetime_ms,
            )
            .await?;
        outcome.map_err(|found| {
            held.fence.fenced(found.map_or_else(
                || "no lease record".to_string(),
                |r| format!("{} at epoch {}", r.holder, r.epoch),
            ))
        })
    }

    fn held(&self, epoch: u64, started: Instant) -> Held {
        let usable = self.duration.saturating_sub(self.safety_margin);
        Held {
            fence: Fence::new(self.fence_key().to_vec(), self.identity.clone(), epoch),
            act_until: started.saturating_add(usable),
        }
    }

    /// Reads the record and, if `decide` returns an epoch, writes this
    /// identity as holder at that epoch with a fresh expiry, in one
    /// transaction.
    async fn write<F>(&self, decide: F) -> Result<Result<u64, Option<LeaseRecord>>, LeaseError>
    where
        F: Fn(Option<&LeaseRecord>) -> Result<u64, Option<LeaseRecord>> + Clone,
    {
        self.write_with(decide, Some(self.lifetime_ms())).await
    }

    fn lifetime_ms(&self) -> u64 {
        u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX)
    }

    /// [`Lease::write`] with the record's lifetime from now; `None` writes
    /// it released (expired at once).
    async fn write_with<F>(
        &self,
        decide: F,
        lifetime_ms: Option<u64>,
    ) -> Result<Result<u64, Option<LeaseRecord>>, LeaseError>
    where
        F: Fn(Option<&LeaseRecord>) -> Result<u64, Option<LeaseRecord>> + Clone,
    {
        let key = self.key.clone();
        let identity = self.identity.clone();
        let clock = self.clock.clone();
        self.db
            .run_system(|tx, _| {
                let key = key.clone();
                let identity = identity.clone();
                let decide = decide.clone();
                let clock = clock.clone();
                async move {
                    let current = match tx.get(&key).await? {
                        Some(bytes) => Some(LeaseRecord::decode(&bytes)?),
                        None => None,
                    };
                    let epoch = match decide(current.as_ref()) {
                        Ok(epoch) => epoch,
                        Err(found) => return Ok(Err(found)),
                    };
                    let record = LeaseRecord {
                        holder: identity,
                        epoch,
                        expires_at_unix_ms: lifetime_ms
                            .map_or(0, |ms| clock.now_unix_ms().saturating_add(ms)),
                    };
                    tx.set(&key, &record.encode())?;
                    Ok(Ok(epoch))
                }
            })
            .await
    }
}
