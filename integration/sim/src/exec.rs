//! Task starts and stops, recorded where they happen: in the executor.
//!
//! Owns [`RecordingExecutor`], which wraps the agent's own simulated
//! executor for one node and records every launch and every exit it
//! delivers, and the node's set of running tasks the harness reads when it
//! crashes the node. Must never change what the wrapped executor does.

use std::collections::BTreeSet;
use std::sync::Arc;

use meridian_agent::exec::simulated::SimulatedExecutor;
use meridian_agent::exec::{Executor, ExitTx, Launch, LaunchError, Started, TaskEvent};
use meridian_proto::v1::TaskAttempt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::history::{Event, Recorder, StopReason};

/// Tasks running on one node, by task name.
pub type Running = Arc<Mutex<BTreeSet<String>>>;

/// `job/index`, the task's name in the history.
pub fn task_name(attempt: &TaskAttempt) -> (String, String) {
    let (job, index) = attempt
        .task
        .as_ref()
        .map(|t| (t.job_id.clone(), t.index))
        .unwrap_or_default();
    (format!("{job}/{index}"), job)
}

/// The simulated executor of one node, with every start and stop recorded.
pub struct RecordingExecutor {
    inner: SimulatedExecutor,
    node: String,
    recorder: Recorder,
    running: Running,
}

impl RecordingExecutor {
    pub fn new(inner: SimulatedExecutor, node: &str, recorder: Recorder, running: Running) -> Self {
        RecordingExecutor {
            inner,
            node: node.to_string(),
            recorder,
            running,
        }
    }
}

impl Executor for RecordingExecutor {
    fn launch(&self, launch: Launch, exits: ExitTx) -> Result<Started, LaunchError> {
        let (task, job) = task_name(&launch.attempt);
        let (tx, mut rx) = mpsc::unbounded_channel::<TaskEvent>();
        let started = self.inner.launch(launch, tx)?;
        self.running.lock().insert(task.clone());
        // Exclusivity and region-loss policy are filled in from the job
        // specs in the global store when the run ends (see `world::finish`).
        self.recorder.record(
            &self.node,
            Event::TaskStarted {
                node: self.node.clone(),
                task: task.clone(),
                job,
                exclusive: false,
                keep_running: false,
            },
        );
        let recorder = self.recorder.clone();
        let node = self.node.clone();
        let running = self.running.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let exit = match event {
                    TaskEvent::Exited(exit) => exit,
                    spawned => {
                        let _ = exits.send(spawned);
                        continue;
                    }
                };
                let reason = if exit.exit.signal.is_some() {
                    StopReason::Stopped
                } else {
                    StopReason::Exited
                };
                running.lock().remove(&task);
                recorder.record(
                    &node,
                    Event::TaskStopped {
                        node: node.clone(),
                        task,
                        reason,
                    },
                );
                let _ = exits.send(TaskEvent::Exited(exit));
                break;
            }
        });
        Ok(started)
    }
}
