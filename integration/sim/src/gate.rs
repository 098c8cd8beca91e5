//! The process-pause fault: a store wrapper whose commits wait while the
//! process is "paused".
//!
//! Owns [`PauseGate`] and the backend wrapper that consults it (the
//! process's clock consults it too). A paused process fires no timer and
//! commits no transaction until it resumes, so a leader paused past its
//! lease resumes holding a stale fence and tries to write with it: the
//! GC-pause case of the fencing protocol (docs/architecture.md). A pause is armed, and strikes at
//! the process's next commit into a chosen key range (the region's task
//! bindings), just before that commit. Must never drop or reorder a transaction, only delay its
//! commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use meridian_store::backend::{RangeChunk, RangeRequest};
use meridian_store::{Backend, BackendTx, CommitInfo, Mutation, Result, TxOptions, WatchFuture};
use parking_lot::Mutex;
use tokio::sync::watch;

/// `[begin, end)` of store keys.
type KeyRange = (Vec<u8>, Vec<u8>);

/// Paused or running; cloning gives another handle to the same gate.
#[derive(Debug, Clone)]
pub struct PauseGate {
    paused: Arc<watch::Sender<bool>>,
    /// Key range whose next committed write pauses the process.
    armed: Arc<Mutex<Option<KeyRange>>>,
}

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate {
            paused: Arc::new(watch::Sender::new(false)),
            armed: Arc::new(Mutex::new(None)),
        }
    }
}

impl PauseGate {
    /// Pauses the process at its next commit that writes a key in
    /// `[begin, end)`, just before that commit: the moment a pause hurts
    /// most, between deciding under a fence and committing.
    pub fn arm(&self, begin: Vec<u8>, end: Vec<u8>) {
        *self.armed.lock() = Some((begin, end));
    }

    /// Cancels an [`PauseGate::arm`] that has not fired.
    pub fn disarm(&self) {
        *self.armed.lock() = None;
    }

    fn fires_for(&self, key: &[u8]) -> bool {
        self.armed
            .lock()
            .as_ref()
            .is_some_and(|(b, e)| key >= b.as_slice() && key < e.as_slice())
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Completes once the process runs (at once if it does).
    pub async fn wait_running(&self) {
        let mut rx = self.paused.subscribe();
        // The sender lives in self, so the channel cannot close here.
        let _ = rx.wait_for(|p| !*p).await;
    }

    /// `inner` as seen by the paused-or-running process.
    pub fn wrap(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(Gated {
            inner,
            gate: self.clone(),
        })
    }
}

struct Gated {
    inner: Arc<dyn Backend>,
    gate: PauseGate,
}

#[async_trait]
impl Backend for Gated {
    async fn begin(&self, options: TxOptions) -> Result<Box<dyn BackendTx>> {
        let inner = self.inner.begin(options).await?;
        Ok(Box::new(GatedTx {
            inner,
            gate: self.gate.clone(),
            trigger: AtomicBool::new(false),
        }))
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

struct GatedTx {
    inner: Box<dyn BackendTx>,
    gate: PauseGate,
    /// This transaction writes into the armed range.
    trigger: AtomicBool,
}

#[async_trait]
impl BackendTx for GatedTx {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>> {
        self.inner.get(key, snapshot).await
    }

    async fn get_range(&self, request: &RangeRequest) -> Result<RangeChunk> {
        self.inner.get_range(request).await
    }

    fn mutate(&self, mutation: Mutation) {
        let key = match &mutation {
            Mutation::Set { key, .. }
            | Mutation::Clear { key }
            | Mutation::Add { key, .. }
            | Mutation::SetVersionstampedKey { key, .. }
            | Mutation::SetVersionstampedValue { key, .. } => key.as_slice(),
            Mutation::ClearRange { begin, .. } => begin.as_slice(),
        };
        if self.gate.fires_for(key) {
            self.trigger.store(true, Ordering::Relaxed);
        }
        self.inner.mutate(mutation);
    }

    fn request_versionstamp(&self) {
        self.inner.request_versionstamp();
    }

    fn watch(&self, key: &[u8]) -> WatchFuture {
        self.inner.watch(key)
    }

    async fn commit(&self) -> Result<CommitInfo> {
        if self.trigger.load(Ordering::Relaxed) && self.gate.armed.lock().take().is_some() {
            self.gate.pause();
        }
        self.gate.wait_running().await;
        self.inner.commit().await
    }
}
