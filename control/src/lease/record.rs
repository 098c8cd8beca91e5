//! The lease record as stored, and the identity of the process holding it.
//!
//! Owns the encoding of `(holder, epoch, expires_at)` and the boot ids of
//! identities (fresh per start, drawn through [`crate::entropy`]); it must
//! never decide anything about leadership, only describe it, and never draw
//! a boot id from anywhere but that seam.

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
    /// `name` with a fresh boot id, drawn through [`crate::entropy`]: from
    /// the operating system in production, from the run's seed inside a
    /// simulation (so a replayed seed names its holders alike).
    pub fn new_boot(name: impl Into<String>) -> Self {
        Identity {
            name: name.into(),
            boot_id: crate::entropy::uuid_v4(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_booting_twice_gets_two_different_boot_ids() {
        let first = Identity::new_boot("global-0");
        let second = Identity::new_boot("global-0");
        assert_eq!(first.name, second.name);
        assert_ne!(first.boot_id, second.boot_id);
        assert_ne!(first, second);
    }

    #[test]
    fn boot_ids_drawn_under_one_seed_repeat_in_a_replay() {
        let boots = || {
            let _seeded = crate::entropy::seed_this_thread(31);
            (Identity::new_boot("r1-a"), Identity::new_boot("r1-a"))
        };
        let (a1, a2) = boots();
        let (b1, b2) = boots();
        assert_eq!((&a1, &a2), (&b1, &b2));
        assert_ne!(
            a1.boot_id, a2.boot_id,
            "a restart inside a run is still a new boot"
        );
    }
}
