//! Local state of a real agent, kept in `<work-dir>/state.json`, so that a
//! restarted agent finds the attempts of its previous boot.
//!
//! Owns the file format, atomic replacement (write a temporary file, fsync,
//! rename), and the [`Persister`] that does it off the node's loop: a real
//! node starts and ends hundreds of attempts a second, and an fsync per
//! change in the loop would bound it to a few dozen. The persister writes
//! the latest state as soon as the previous write is done, so changes made
//! during a write share the next one; a crash loses at most the changes of
//! about one fsync (the same window as an attempt started just before the
//! crash had before). Must never decide what to do with what it loads: the
//! host cleans up and reports. Simulated nodes keep no state file.

use std::io::Write;
use std::path::{Path, PathBuf};

use meridian_proto::v1::{TaskAttempt, TaskId, TaskReport};
use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::exec::ProcessIds;
use crate::fence::ShardEpochs;

/// What survives an agent restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    pub node_id: String,
    pub boot_id: String,
    pub node_epoch: u64,
    pub shard_epochs: ShardEpochs,
    /// Attempts live when the state was written.
    pub tasks: Vec<PersistedTask>,
    /// Ends of finished attempts the region had not acknowledged when the
    /// state was written: a restarted agent delivers them, so an attempt
    /// that finished is not run again for want of its report. Their output
    /// tails are not kept (the file stays small; the end is what matters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ends: Vec<PersistedEnd>,
}

/// The end of one finished attempt, not yet acknowledged by the region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedEnd {
    pub job_id: String,
    pub index: u32,
    pub attempt: u32,
    /// The hold of the job the attempt belongs to (0 in state written
    /// before holds were sent).
    #[serde(default)]
    pub assignment_epoch: u64,
    /// The node epoch the attempt ran under.
    pub node_epoch: u64,
    /// `TaskState` as i32 (SUCCEEDED or FAILED).
    pub state: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    pub observed_at_unix_ms: u64,
}

impl PersistedEnd {
    /// The end as kept on disk (without output tails).
    pub fn of(r: &TaskReport) -> Option<Self> {
        let a = r.task.as_ref()?;
        let t = a.task.as_ref()?;
        Some(PersistedEnd {
            job_id: t.job_id.clone(),
            index: t.index,
            attempt: a.attempt,
            assignment_epoch: a.assignment_epoch,
            node_epoch: r.node_epoch,
            state: r.state,
            exit_code: r.exit_code,
            signal: r.signal,
            message: r.message.clone(),
            started_at_unix_ms: r.started_at_unix_ms,
            finished_at_unix_ms: r.finished_at_unix_ms,
            observed_at_unix_ms: r.observed_at_unix_ms,
        })
    }

    /// The report to deliver again, carrying its node epoch.
    pub fn report(&self) -> TaskReport {
        TaskReport {
            task: Some(TaskAttempt {
                task: Some(TaskId::new(self.job_id.clone(), self.index)),
                assignment_epoch: self.assignment_epoch,
                attempt: self.attempt,
            }),
            state: self.state,
            exit_code: self.exit_code,
            signal: self.signal,
            message: self.message.clone(),
            started_at_unix_ms: self.started_at_unix_ms,
            finished_at_unix_ms: self.finished_at_unix_ms,
            observed_at_unix_ms: self.observed_at_unix_ms,
            node_epoch: self.node_epoch,
            ..TaskReport::default()
        }
    }
}

/// One live attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedTask {
    pub job_id: String,
    pub index: u32,
    pub attempt: u32,
    /// The hold of the job the attempt belongs to (0 in state written
    /// before holds were sent).
    #[serde(default)]
    pub assignment_epoch: u64,
    pub process: Option<ProcessIds>,
    pub started_at_unix_ms: u64,
}

impl PersistedTask {
    pub fn attempt(&self) -> TaskAttempt {
        TaskAttempt {
            task: Some(TaskId::new(self.job_id.clone(), self.index)),
            assignment_epoch: self.assignment_epoch,
            attempt: self.attempt,
        }
    }
}

/// The state file of one agent.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file inside `work_dir`.
    pub fn in_dir(work_dir: &Path) -> Self {
        StateFile {
            path: work_dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The previous state, `None` when there is no file.
    pub fn load(&self) -> Result<Option<PersistedState>, AgentError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                AgentError::CorruptState {
                    path: self.path.clone(),
                    source,
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::io("reading", &self.path, e)),
        }
    }

    /// Replaces the file atomically.
    pub fn save(&self, state: &PersistedState) -> Result<(), AgentError> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec_pretty(state).map_err(|source| AgentError::CorruptState {
                path: self.path.clone(),
                source,
            })?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| AgentError::io("writing", &self.path, e))
    }
}

/// Writes a node's state in the background, always the latest.
pub struct Persister {
    latest: tokio::sync::watch::Sender<Option<(u64, PersistedState)>>,
    written: tokio::sync::watch::Receiver<u64>,
    next: u64,
}

impl Persister {
    /// Starts writing to `file`.
    pub fn start(file: StateFile) -> Self {
        let (latest, mut rx) = tokio::sync::watch::channel::<Option<(u64, PersistedState)>>(None);
        let (done, written) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some((seq, state)) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let file = file.clone();
                match tokio::task::spawn_blocking(move || file.save(&state)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot persist agent state"),
                    Err(e) => tracing::error!(error = %e, "persisting agent state failed"),
                }
                let _ = done.send(seq);
            }
        });
        Persister {
            latest,
            written,
            next: 0,
        }
    }

    /// Hands over the state to write next (replacing any not written yet).
    pub fn save(&mut self, state: PersistedState) {
        self.next += 1;
        self.latest.send_replace(Some((self.next, state)));
    }

    /// Waits until the last state handed over is on disk.
    pub async fn flush(&mut self) {
        let want = self.next;
        let _ = self.written.wait_for(|w| *w >= want).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_loads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path());
        assert_eq!(file.load().unwrap(), None);
        let state = PersistedState {
            node_id: "n1".into(),
            boot_id: "b".into(),
            node_epoch: 3,
            shard_epochs: ShardEpochs::default(),
            tasks: vec![PersistedTask {
                job_id: "j".into(),
                index: 2,
                attempt: 1,
                assignment_epoch: 2,
                process: Some(ProcessIds {
                    pid: 10,
                    pgid: 10,
                    start_ticks: 99,
                }),
                started_at_unix_ms: 5,
            }],
            ends: vec![PersistedEnd {
                job_id: "j".into(),
                index: 1,
                attempt: 2,
                assignment_epoch: 1,
                node_epoch: 3,
                state: meridian_proto::v1::TaskState::Succeeded as i32,
                exit_code: Some(0),
                signal: None,
                message: String::new(),
                started_at_unix_ms: 4,
                finished_at_unix_ms: 6,
                observed_at_unix_ms: 6,
            }],
        };
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), Some(state));
    }

    #[tokio::test]
    async fn the_persister_writes_the_latest_state_and_flush_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path());
        let mut p = Persister::start(file.clone());
        for epoch in 1..=50 {
            p.save(PersistedState {
                node_id: "n1".into(),
                node_epoch: epoch,
                ..PersistedState::default()
            });
        }
        p.flush().await;
        assert_eq!(file.load().unwrap().map(|s| s.node_epoch), Some(50));
    }
}
