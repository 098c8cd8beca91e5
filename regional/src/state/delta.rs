//! What changed in a replica's memory, and who is told.
//!
//! Owns the [`Delta`] every change of the region state produces and the
//! [`Watcher`]s that receive them: each watcher accumulates the deltas it has
//! not taken yet (sets merge, so a slow watcher sees every change once, never
//! a backlog) and is woken by a [`Notify`]. Must never block the writer that
//! publishes: publishing only merges sets under a short lock.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Changes to the region state since a watcher last looked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Jobs whose record or tasks changed (new, retired, placed, ended...).
    pub jobs: BTreeSet<String>,
    /// Nodes whose record changed.
    pub nodes: BTreeSet<String>,
    /// Nodes that can take more than before: a task on them ended, they
    /// joined, became ready or were uncordoned. Waiting work may fit now.
    pub freed: BTreeSet<String>,
    /// Nodes whose registration epoch moved (streams of the old epoch end).
    pub epochs: BTreeSet<String>,
    /// The shard layout changed.
    pub layout: bool,
    /// The link state changed.
    pub link: bool,
    /// The whole state was loaded afresh: every watcher starts over.
    pub reload: bool,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.nodes.is_empty()
            && self.freed.is_empty()
            && self.epochs.is_empty()
            && !self.layout
            && !self.link
            && !self.reload
    }

    /// Adds `other`'s changes to these.
    pub fn merge(&mut self, other: &Delta) {
        self.jobs.extend(other.jobs.iter().cloned());
        self.nodes.extend(other.nodes.iter().cloned());
        self.freed.extend(other.freed.iter().cloned());
        self.epochs.extend(other.epochs.iter().cloned());
        self.layout |= other.layout;
        self.link |= other.link;
        self.reload |= other.reload;
    }
}

struct Inner {
    pending: Mutex<Delta>,
    notify: Notify,
}

/// A subscriber to changes. Dropping it unsubscribes.
pub struct Watcher {
    inner: Arc<Inner>,
}

impl Watcher {
    /// Waits until something changed, then takes everything that did.
    pub async fn changed(&self) -> Delta {
        loop {
            let notified = self.inner.notify.notified();
            let taken = self.take();
            if !taken.is_empty() {
                return taken;
            }
            notified.await;
        }
    }

    /// Takes whatever changed so far (possibly nothing), without waiting.
    pub fn take(&self) -> Delta {
        std::mem::take(&mut *self.inner.pending.lock())
    }
}

/// The list of watchers of one state.
#[derive(Default)]
pub struct Watchers {
    list: Mutex<Vec<Weak<Inner>>>,
}

impl Watchers {
    pub fn subscribe(&self) -> Watcher {
        let inner = Arc::new(Inner {
            pending: Mutex::new(Delta::default()),
            notify: Notify::new(),
        });
        self.list.lock().push(Arc::downgrade(&inner));
        Watcher { inner }
    }

    /// Hands `delta` to every live watcher and wakes it.
    pub fn publish(&self, delta: &Delta) {
        if delta.is_empty() {
            return;
        }
        let mut list = self.list.lock();
        list.retain(|w| match w.upgrade() {
            Some(inner) => {
                inner.pending.lock().merge(delta);
                inner.notify.notify_one();
                true
            }
            None => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watcher_gets_every_change_once_merged_and_a_dropped_one_is_forgotten() {
        let watchers = Watchers::default();
        let w = watchers.subscribe();
        let gone = watchers.subscribe();
        drop(gone);
        let mut a = Delta::default();
        a.jobs.insert("j1".into());
        let mut b = Delta::default();
        b.jobs.insert("j2".into());
        b.freed.insert("n1".into());
        watchers.publish(&a);
        watchers.publish(&b);
        let got = w.changed().await;
        assert_eq!(got.jobs.len(), 2);
        assert!(got.freed.contains("n1"));
        assert!(w.take().is_empty(), "taken once");
        assert_eq!(watchers.list.lock().len(), 1);
    }
}
