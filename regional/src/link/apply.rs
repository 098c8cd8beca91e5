//! The stored cursor of the global tier's assignment stream.
//!
//! Owns reading the cursor the intake stores with every batch of events it
//! applies (`pipeline::intake`), so a resumed stream starts exactly after the
//! last applied event. Must never write: the cursor only changes together
//! with the events it follows.

use meridian_store::Database;

use crate::error::{RegionalError, Result};
use crate::model::Keys;

/// The persisted cursor (empty when none).
pub async fn read_cursor(db: &Database, keys: &Keys) -> Result<Vec<u8>> {
    db.run(|tx, _| {
        let key = keys.link_cursor();
        async move { Ok::<_, RegionalError>(tx.get(&key).await?.unwrap_or_default()) }
    })
    .await
}
