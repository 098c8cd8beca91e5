//! A store backend that records every committed transaction's writes, in
//! commit order, so a test can assert the order of effects through store
//! state rather than through timing.

use std::sync::Arc;

use async_trait::async_trait;
use meridian_store::backend::{RangeChunk, RangeRequest};
use meridian_store::{Backend, BackendTx, CommitInfo, Mutation, TxOptions, WatchFuture};
use parking_lot::Mutex;

/// The writes of each committed transaction, oldest first.
pub type CommitLog = Arc<Mutex<Vec<Vec<Mutation>>>>;

pub struct Recording {
    inner: Arc<dyn Backend>,
    log: CommitLog,
}

impl Recording {
    pub fn wrap(inner: Arc<dyn Backend>) -> (Arc<Self>, CommitLog) {
        let log = CommitLog::default();
        (
            Arc::new(Recording {
                inner,
                log: log.clone(),
            }),
            log,
        )
    }
}

struct RecordingTx {
    inner: Box<dyn BackendTx>,
    writes: Mutex<Vec<Mutation>>,
    log: CommitLog,
}

#[async_trait]
impl Backend for Recording {
    async fn begin(&self, options: TxOptions) -> meridian_store::Result<Box<dyn BackendTx>> {
        Ok(Box::new(RecordingTx {
            inner: self.inner.begin(options).await?,
            writes: Mutex::new(Vec::new()),
            log: self.log.clone(),
        }))
    }

    fn name(&self) -> &'static str {
        "recording"
    }
}

#[async_trait]
impl BackendTx for RecordingTx {
    async fn get(&self, key: &[u8], snapshot: bool) -> meridian_store::Result<Option<Vec<u8>>> {
        self.inner.get(key, snapshot).await
    }

    async fn get_range(&self, request: &RangeRequest) -> meridian_store::Result<RangeChunk> {
        self.inner.get_range(request).await
    }

    fn mutate(&self, mutation: Mutation) {
        self.writes.lock().push(mutation.clone());
        self.inner.mutate(mutation);
    }

    fn request_versionstamp(&self) {
        self.inner.request_versionstamp();
    }

    fn watch(&self, key: &[u8]) -> WatchFuture {
        self.inner.watch(key)
    }

    async fn commit(&self) -> meridian_store::Result<CommitInfo> {
        let info = self.inner.commit().await?;
        let writes = std::mem::take(&mut *self.writes.lock());
        if !writes.is_empty() {
            self.log.lock().push(writes);
        }
        Ok(info)
    }
}
