//! A replica's data path, put together: memory, its feed follower, the
//! write pipeline, the agents' streams and heartbeats.
//!
//! Owns the order these start in (memory is loaded before anything reads
//! it; the follower starts from the load's position; the pipeline hands its
//! commands to the streams) and their life: dropping the [`DataPath`] stops
//! the follower. The server builds one per process; tests and tools build
//! one to drive a region in process. Must never decide anything itself.

use std::sync::Arc;

use meridian_control::SharedClock;
use meridian_store::Database;
use tokio::sync::watch;

use crate::agent::stream::Streams;
use crate::error::Result;
use crate::liveness::Beats;
use crate::model::Keys;
use crate::pipeline::Pipeline;
use crate::state::tail::Tailer;
use crate::state::{SharedState, StateHandle};

/// The data path of one replica.
pub struct DataPath {
    pub state: SharedState,
    pub pipeline: Pipeline,
    pub tailer: Tailer,
    pub streams: Arc<Streams>,
    pub beats: Arc<Beats>,
    stop: watch::Sender<bool>,
}

impl DataPath {
    /// Loads the region into memory and starts following the feed and
    /// committing. `writer` names this process in feed entries.
    pub async fn start(db: Database, keys: Keys, clock: SharedClock, writer: &str) -> Result<Self> {
        let state = StateHandle::new(crate::state::load::load(&db, &keys).await?);
        let tailer = Tailer::new(db.clone(), keys.clone(), state.clone(), clock);
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(tailer.clone().run(stopped));
        let streams = Streams::new();
        let pipeline =
            Pipeline::start(db, keys, state.clone(), writer.to_string(), streams.clone());
        Ok(DataPath {
            state,
            pipeline,
            tailer,
            streams,
            beats: Beats::new(),
            stop,
        })
    }
}

impl Drop for DataPath {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
