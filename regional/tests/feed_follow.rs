//! A replica following the change feed: it reads on from its cursor while
//! the cursor's entries are still in the feed, and loads the region afresh
//! once a trim has passed its cursor, never skipping what was trimmed.

use crate::support;

use meridian_regional::model::Keys;
use meridian_regional::model::feed::stamp_of;
use meridian_regional::state::load::load;
use meridian_regional::state::tail::Tailer;
use meridian_regional::state::{SharedState, StateHandle};
use meridian_store::Database;
use support::Region;

/// A second replica's memory of the region as it is now, and its follower.
async fn follower(region: &Region) -> (SharedState, Tailer) {
    let state = StateHandle::new(load(&region.db, &region.keys).await.expect("load"));
    let tailer = Tailer::new(
        region.db.clone(),
        region.keys.clone(),
        state.clone(),
        region.shared_clock(),
    );
    (state, tailer)
}

/// Trims the feed through its current head, as the region leader's trimmer
/// does: the prefix and the trim record in one transaction.
async fn trim_through_head(db: &Database, keys: &Keys) {
    db.run(|tx, _| {
        let keys = keys.clone();
        async move {
            let head = tx
                .get(&keys.feed_head())
                .await?
                .as_deref()
                .and_then(stamp_of)
                .expect("the feed has a head");
            let (begin, _) = keys.feed();
            let (end, _) = keys.feed_after(head);
            tx.clear_range(&begin, &end)?;
            tx.set(&keys.feed_trim(), &head)?;
            Ok::<_, meridian_regional::RegionalError>(())
        }
    })
    .await
    .expect("trim");
}

#[tokio::test]
async fn a_follower_whose_cursor_was_trimmed_away_loads_afresh_and_misses_nothing() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    let (state, tailer) = follower(&region).await;
    region.register("node-b", "boot-b").await;
    trim_through_head(&region.db, &region.keys).await;
    region.register("node-c", "boot-c").await;

    let caught = tailer.catch_up().await.expect("catch up");
    assert!(caught.reloaded, "{caught:?}");
    let s = state.read();
    for node in ["node-a", "node-b", "node-c"] {
        assert!(
            s.nodes.contains_key(node),
            "{node} missing after the reload"
        );
    }
}

#[tokio::test]
async fn a_follower_whose_cursor_is_still_in_the_feed_reads_on_past_an_older_trim() {
    let region = Region::new().await;
    region.register("node-a", "boot-a").await;
    trim_through_head(&region.db, &region.keys).await;
    region.register("node-b", "boot-b").await;
    let (state, tailer) = follower(&region).await;
    region.register("node-c", "boot-c").await;
    region.register("node-d", "boot-d").await;

    let caught = tailer.catch_up().await.expect("catch up");
    assert!(!caught.reloaded, "{caught:?}");
    assert_eq!(caught.entries, 2, "the two registrations after the cursor");
    {
        let s = state.read();
        for node in ["node-a", "node-b", "node-c", "node-d"] {
            assert!(s.nodes.contains_key(node), "{node} missing");
        }
    }

    // Caught up: nothing more to read, and still no reload.
    let again = tailer.catch_up().await.expect("catch up again");
    assert_eq!((again.entries, again.reloaded), (0, false));
}
