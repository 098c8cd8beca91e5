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
}

impl Fence {
    /// A fence for `holder` at `epoch` on the lease stored at `key`.
    pub fn new(key: Vec<u8>, holder: Identity, epoch: u64) -> Self {
        Fence { key, holder, epoch }
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
        self.verify(stored.as_deref())
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
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The lease duration.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The store key of the record.
    pub fn key(&self) -> &[u8] {
        &self.key
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
        let record = self
            .write(move |current| match current {
                Some(cur) if !cur.is_expired_at(now_ms) => Err(Some(cur.clone())),
                _ => Ok(current.map_or(1, |cur| cur.epoch + 1)),
            })
            .await?;
        Ok(match record {
            Ok(epoch) => {
                observe::acquired(&self.key, &self.identity, epoch);
                Acquired::Held(self.held(epoch, started))
            }
            Err(Some(busy)) => Acquired::Busy(busy),
            // `decide` refuses only when it found a live record.
            Err(None) => return Err(LeaseError::Corrupt("lease refused without a record".into())),
        })
    }

    /// Extends a held lease. Fails with [`LeaseError::Fenced`] when the
    /// epoch or holder moved.
    pub async fn renew(&self, held: &Held) -> Result<Held, LeaseError> {
        let started = self.clock.now();
        let fence = held.fence.clone();
        let outcome = self
            .write(move |current| match current {
                Some(cur) if cur.epoch == fence.epoch && cur.holder == fence.holder => {
                    Ok(cur.epoch)
                }
                other => Err(other.cloned()),
            })
            .await?;
        match outcome {
            Ok(epoch) => Ok(self.held(epoch, started)),
            Err(found) => Err(held.fence.fenced(found.map_or_else(
                || "no lease record".to_string(),
                |r| format!("{} at epoch {}", r.holder, r.epoch),
            ))),
        }
    }

    /// Gives the lease up so another candidate can take it at once. The epoch
    /// stays; the next holder bumps it.
    pub async fn release(&self, held: &Held) -> Result<(), LeaseError> {
        let key = self.key.clone();
        let fence = held.fence.clone();
        self.db
            .run_system(|tx, _| {
                let key = key.clone();
                let fence = fence.clone();
                async move {
                    fence.check(&tx).await?;
                    let released = LeaseRecord {
                        holder: fence.holder.clone(),
                        epoch: fence.epoch,
                        expires_at_unix_ms: 0,
                    };
                    tx.set(&key, &released.encode())?;
                    Ok(())
                }
            })
            .await
    }

    fn held(&self, epoch: u64, started: Instant) -> Held {
        let usable = self.duration.saturating_sub(self.safety_margin);
        Held {
            fence: Fence::new(self.key.clone(), self.identity.clone(), epoch),
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
        let key = self.key.clone();
        let identity = self.identity.clone();
        let duration_ms = u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX);
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
                        expires_at_unix_ms: clock.now_unix_ms().saturating_add(duration_ms),
                    };
                    tx.set(&key, &record.encode())?;
                    Ok(Ok(epoch))
                }
            })
            .await
    }
}
