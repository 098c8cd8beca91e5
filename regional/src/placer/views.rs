//! One region read shared by the shard loops of a replica.
//!
//! Owns the single-flight read of the [`RegionView`]: a replica leading
//! several shards is woken for each by the same change, and each round used
//! to read the whole region on its own. A round asks for a view read after
//! its own start ([`SharedViews::ticket`]); if another shard's read began
//! after that, it is handed the same view, otherwise it reads (while the
//! others wait for it). Must never hand out a view read before the asking
//! round began: a round woken by a commit must see that commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_store::Database;
use tokio::sync::Mutex;

use crate::error::Result;
use crate::model::{Keys, RegionView};

/// The latest view of a replica, with the ticket its read began after.
pub struct SharedViews {
    db: Database,
    keys: Keys,
    tickets: AtomicU64,
    last: Mutex<Option<(u64, Arc<RegionView>)>>,
}

impl SharedViews {
    pub fn new(db: Database, keys: Keys) -> Arc<Self> {
        Arc::new(SharedViews {
            db,
            keys,
            tickets: AtomicU64::new(0),
            last: Mutex::new(None),
        })
    }

    /// A ticket taken now: views read after it began are fresh enough.
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst)
    }

    /// A view whose read began after `ticket` was taken.
    pub async fn read_after(&self, ticket: u64) -> Result<Arc<RegionView>> {
        let mut last = self.last.lock().await;
        if let Some((began, view)) = last.as_ref()
            && *began > ticket
        {
            return Ok(view.clone());
        }
        let began = self.ticket();
        let view = Arc::new(
            self.db
                .run(|tx, _| {
                    let keys = self.keys.clone();
                    async move { RegionView::read(&tx, &keys).await }
                })
                .await?,
        );
        *last = Some((began, view.clone()));
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_view_is_shared_only_with_rounds_that_began_before_its_read() {
        let db = meridian_store::open("sqlite::memory:")
            .await
            .expect("store");
        let keys = Keys::new("r1");
        crate::shard::ensure_layout(&db, &keys, 2)
            .await
            .expect("layout");
        let views = SharedViews::new(db.clone(), keys.clone());
        let early = views.ticket();
        let first = views.read_after(early).await.expect("read");
        let also_early = views.read_after(early).await.expect("read");
        assert!(
            Arc::ptr_eq(&first, &also_early),
            "a round that began before the read gets the same view"
        );
        // A change commits, then a round begins: it must not get the old view.
        crate::jobs::insert_job(
            &db,
            &keys,
            "j1",
            1,
            &crate::jobs::simple_spec("t", 1, 1, 1),
            0,
        )
        .await
        .expect("insert");
        let late = views.ticket();
        let fresh = views.read_after(late).await.expect("read");
        assert!(!Arc::ptr_eq(&first, &fresh));
        assert!(
            fresh.jobs.contains_key("j1"),
            "the later round sees the change"
        );
    }
}
