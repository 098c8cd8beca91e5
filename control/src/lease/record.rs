//! The lease record as stored, and the identity of the process holding it.
//!
//! Owns the encoding of `(holder, epoch, expires_at)`; it must never decide
//! anything about leadership, only describe it.

use std::fmt;

use meridian_store::tuple;
use uuid::Uuid;

use super::LeaseError;

/// Who a process is: a stable name plus a per-boot UUID, so a restarted
/// process never inherits its previous incarnation's lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// Stable name (host, replica name, node id).
    pub name: String,
    /// New on every start of the process.
    pub boot_id: Uuid,
}

impl Identity {
    /// `name` with a fresh boot id.
    pub fn new_boot(name: impl Into<String>) -> Self {
        Identity {
            name: name.into(),
            boot_id: Uuid::new_v4(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let boot = self.boot_id.simple().to_string();
        write!(f, "{}#{}", self.name, &boot[..8])
    }
}

/// A lease as it sits in the store. `expires_at_unix_ms` is a liveness hint
/// for other candidates (they may take over once it passed); safety rests on
/// the epoch alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holder.
    pub holder: Identity,
    /// Grows by one on every change of holder; never reused.
    pub epoch: u64,
    /// Wall time after which others may take over; 0 once released.
    pub expires_at_unix_ms: u64,
}

impl LeaseRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        tuple::pack(&(
            self.holder.name.as_str(),
            self.holder.boot_id,
            self.epoch,
            self.expires_at_unix_ms,
        ))
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, LeaseError> {
        let (name, boot_id, epoch, expires_at_unix_ms): (String, Uuid, u64, u64) =
            tuple::unpack(bytes).map_err(|e| LeaseError::Corrupt(e.to_string()))?;
        Ok(LeaseRecord {
            holder: Identity { name, boot_id },
            epoch,
            expires_at_unix_ms,
        })
    }

    /// True when others may take the lease over at wall time `now_unix_ms`.
    pub fn is_expired_at(&self, now_unix_ms: u64) -> bool {
        now_unix_ms >= self.expires_at_unix_ms
    }
}
