//! A hook on lease outcomes, for the simulation's history.
//!
//! Owns the process-wide [`LeaseObserver`] and the two moments it hears of:
//! a takeover that committed (a holder won a lease at an epoch) and a write
//! that an owner made under its [`Fence`] (whether it committed). Production
//! installs no observer, and every call is then a no-op.
//!
//! Must never: influence the outcome it reports, or be called for anything
//! but what actually happened (the call sites sit after the commit returns).

use std::sync::{Arc, OnceLock};

use super::{Fence, Identity};

/// Hears of lease takeovers and fenced writes.
pub trait LeaseObserver: Send + Sync + 'static {
    /// `holder` won the lease stored at `key` at `epoch` (the takeover
    /// transaction committed).
    fn acquired(&self, key: &[u8], holder: &Identity, epoch: u64);

    /// The owner of `fence` tried a write under it; `committed` says whether
    /// the transaction committed.
    fn fenced_write(&self, fence: &Fence, committed: bool);
}

static OBSERVER: OnceLock<Arc<dyn LeaseObserver>> = OnceLock::new();

/// [`install`] was called twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a lease observer is already installed")]
pub struct AlreadyInstalled;

/// Installs this process's observer, once.
pub fn install(observer: Arc<dyn LeaseObserver>) -> Result<(), AlreadyInstalled> {
    OBSERVER.set(observer).map_err(|_| AlreadyInstalled)
}

pub(crate) fn acquired(key: &[u8], holder: &Identity, epoch: u64) {
    if let Some(o) = OBSERVER.get() {
        o.acquired(key, holder, epoch);
    }
}

/// Reports a write made under `fence`, after its transaction returned.
pub fn fenced_write(fence: &Fence, committed: bool) {
    if let Some(o) = OBSERVER.get() {
        o.fenced_write(fence, committed);
    }
}
