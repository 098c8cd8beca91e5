//! Task execution: the seam between the node loop and what actually runs.
//!
//! Owns the [`Executor`] trait, the [`Launch`] request, the [`TaskExit`]
//! outcome and the [`TaskControl`] handle used to stop an attempt. Real
//! processes live in [`process`], simulated ones in [`simulated`]; both are
//! driven by exactly the same node loop. Must never talk to the region.

pub mod cgroup;
pub mod deadline;
pub mod isolation;
pub mod live;
pub mod output;
pub mod process;
pub mod retention;
pub mod simulated;
pub mod spawn;

use std::path::PathBuf;
use std::time::Duration;

use meridian_control::Instant;
use meridian_proto::v1::{Resources, TaskAttempt, TaskTemplate};
use tokio::sync::{mpsc, oneshot};

/// What to start.
#[derive(Debug, Clone)]
pub struct Launch {
    pub attempt: TaskAttempt,
    pub template: TaskTemplate,
    pub resources: Resources,
    /// Per-attempt directory (output files, default working directory);
    /// `None` for executors that need none.
    pub dir: Option<PathBuf>,
    /// The job's trace id (empty when none), given to a process as
    /// `MERIDIAN_TRACE_ID`.
    pub trace_id: String,
    /// The attempt must not start at or after this instant of the agent's
    /// clock: from then on its region may have declared the node dead (or
    /// its lease may have run out) and placed the task elsewhere. The node
    /// checks it before launching; an executor that starts the attempt
    /// later (on another thread, in the task's child) checks it again as
    /// late as it can, because the agent may be stopped in between
    /// (SIGSTOP, a long pause) and resume past it.
    pub start_by: Option<Instant>,
}

/// The name of an attempt's directory under its job's (and of its cgroup
/// after the job id): `<index>-<attempt>`, and `<index>-<attempt>.<hold>`
/// for the attempts of a later hold of the job in its region (taken away
/// and given back), whose numbers start from 1 again: a process of an
/// earlier hold may still run under the first name.
pub fn attempt_dir_name(attempt: &TaskAttempt) -> String {
    let index = attempt.task.as_ref().map_or(0, |t| t.index);
    if attempt.assignment_epoch > 1 {
        format!("{index}-{}.{}", attempt.attempt, attempt.assignment_epoch)
    } else {
        format!("{index}-{}", attempt.attempt)
    }
}

/// Captured end of one output stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// Last bytes, at most `MAX_OUTPUT_TAIL_BYTES`.
    pub bytes: Vec<u8>,
    /// The stream was longer than `bytes`.
    pub truncated: bool,
    /// Bytes written to the stream in all.
    pub total: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exit {
    /// Exit code when the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal that ended the process, when one did.
    pub signal: Option<i32>,
    pub stdout: Tail,
    pub stderr: Tail,
    /// Detail for humans (escalated to SIGKILL, ...).
    pub message: String,
    /// The kernel killed a process of the attempt for exceeding its memory
    /// limit (its cgroup counted an OOM kill); `message` says so first.
    pub oom_killed: bool,
    /// The attempt's program was not started
    /// because its [`Launch::start_by`] had passed; `message` says so.
    /// Reported as a stop of the agent's own, like a RUN the node refused.
    pub not_started: bool,
}

/// An attempt's exit, delivered to its node's loop.
#[derive(Debug, Clone)]
pub struct TaskExit {
    pub attempt: TaskAttempt,
    pub exit: Exit,
}

/// What an executor tells a node's loop about an attempt it launched.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// The attempt's process exists now (an executor that starts processes
    /// off the node's loop): it runs, and this is how to find it again.
    Spawned {
        attempt: TaskAttempt,
        process: ProcessIds,
    },
    /// The attempt ended (or never started: no exit code, a message).
    Exited(TaskExit),
}

/// Where executors deliver what happens to attempts.
pub type ExitTx = mpsc::UnboundedSender<TaskEvent>;

/// Handle to a launched attempt.
#[derive(Debug)]
pub struct Started {
    /// Process id and process group of a real process, when known already.
    pub process: Option<ProcessIds>,
    pub control: TaskControl,
    /// The attempt runs already. `false`: a [`TaskEvent::Spawned`] (or its
    /// [`TaskEvent::Exited`], if it could not start) follows.
    pub running: bool,
}

/// Identity of a real process, enough to find it again after an agent
/// restart without mistaking a recycled pid for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIds {
    pub pid: i32,
    /// Process group id (the pid: every attempt leads its own group).
    pub pgid: i32,
    /// Start time of the process in clock ticks since boot (Linux
    /// `/proc/PID/stat` field 22); 0 when unknown.
    pub start_ticks: u64,
}

/// Asks a launched attempt to stop. Dropping it does not stop anything.
#[derive(Debug)]
pub struct TaskControl {
    stop: Option<oneshot::Sender<Duration>>,
}

impl TaskControl {
    /// A control and the receiving end the executor watches.
    pub fn new() -> (TaskControl, oneshot::Receiver<Duration>) {
        let (tx, rx) = oneshot::channel();
        (TaskControl { stop: Some(tx) }, rx)
    }

    /// Starts stopping: SIGTERM now, SIGKILL after `grace` (or the simulated
    /// equivalent). A second call does nothing.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(tx) = self.stop.take() {
            // The executor may have finished already: nothing to stop.
            let _ = tx.send(grace);
        }
    }

    /// Whether a stop was already requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_none()
    }
}

/// Why an attempt could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("task template has no kind")]
    NoKind,
    #[error("this executor cannot run {0} tasks")]
    Unsupported(&'static str),
    #[error("{0}")]
    Spawn(String),
    /// [`Launch::start_by`] passed before the program started.
    #[error("{0}")]
    TooLate(String),
}

/// Runs attempts. One executor serves every node of a host.
pub trait Executor: Send + Sync + 'static {
    /// Starts `launch`; its exit is sent to `exits` exactly once, whether it
    /// ends by itself or after [`TaskControl::stop`] (and before it, once,
    /// `Spawned` when [`Started::running`] was false). Must not block.
    fn launch(&self, launch: Launch, exits: ExitTx) -> Result<Started, LaunchError>;
}
