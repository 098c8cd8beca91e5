//! Where a term's fence lives when it is not the lease record itself.
//!
//! A lease guards data. On a store with one write lock per file (SQLite),
//! a lease record kept beside busy data waits behind every write of that
//! data to be renewed, so a saturated data path costs a healthy holder its
//! lease. Such a lease keeps its record in a store of its own (renewals
//! then wait for nothing but other renewals) and publishes each new term's
//! fence, `(holder, epoch)`, into the guarded store at a key of its own:
//! the fencing token kept at the resource. Writes to the guarded data check
//! that fence in their own transaction, exactly as they would check the
//! lease record.
//!
//! Why this is as safe as one record: a new holder acts only after its
//! fence is committed in the guarded store. A write of an older term either
//! commits before that publication (and the new holder, which loads its
//! state after it, sees the write) or after it (and its fence check finds
//! the newer epoch and refuses). Epochs stay monotonic across both stores:
//! an acquisition starts above the epoch of the published fence, so losing
//! the lease store never lets an old epoch return.
//!
//! Owns reading and publishing the fence record. Must never publish an
//! epoch at or below the one already published, nor renew anything: the
//! fence record carries no expiry.

use meridian_store::{Database, Transaction};

use super::{Identity, LeaseError, LeaseRecord};

/// The guarded store and the key of the fence record in it.
#[derive(Clone)]
pub(crate) struct FenceHome {
    pub(crate) db: Database,
    pub(crate) key: Vec<u8>,
}

async fn read(tx: &Transaction, key: &[u8]) -> Result<Option<LeaseRecord>, LeaseError> {
    match tx.get(key).await? {
        Some(bytes) => Ok(Some(LeaseRecord::decode(&bytes)?)),
        None => Ok(None),
    }
}

impl FenceHome {
    /// The epoch of the fence published last (0 when none was).
    pub(crate) async fn published_epoch(&self) -> Result<u64, LeaseError> {
        let key = self.key.clone();
        let found = self
            .db
            .run(|tx, _| {
                let key = key.clone();
                async move { read(&tx, &key).await }
            })
            .await?;
        Ok(found.map_or(0, |r| r.epoch))
    }

    /// Publishes `holder` at `epoch` as the fence writes must present.
    /// `Ok(Err(found))`: a term at or above `epoch` was published first,
    /// and the caller must not act.
    pub(crate) async fn publish(
        &self,
        holder: &Identity,
        epoch: u64,
    ) -> Result<Result<(), LeaseRecord>, LeaseError> {
        let key = self.key.clone();
        let holder = holder.clone();
        self.db
            .run(|tx, _| {
                let (key, holder) = (key.clone(), holder.clone());
                async move {
                    if let Some(found) = read(&tx, &key).await?
                        && found.epoch >= epoch
                    {
                        return Ok(Err(found));
                    }
                    let fence = LeaseRecord {
                        holder,
                        epoch,
                        expires_at_unix_ms: 0,
                    };
                    tx.set(&key, &fence.encode())?;
                    Ok(Ok(()))
                }
            })
            .await
    }
}
