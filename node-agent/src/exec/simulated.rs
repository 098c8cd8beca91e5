//! Simulated tasks: no process, just a timer on the agent's clock.
//!
//! Owns the meaning of `Simulated { duration_ms, exit_code }`: RUNNING for
//! the duration, then exit with the code; a stop ends it at once as if by
//! SIGTERM. Must never spawn a process or touch the disk, so that a host can
//! carry a hundred thousand virtual nodes.

use std::time::Duration;

use meridian_control::SharedClock;
use meridian_proto::v1::task_template::Kind;

use super::{
    Executor, Exit, ExitTx, Launch, LaunchError, Started, TaskControl, TaskEvent, TaskExit,
};

/// SIGTERM's number, reported for a stopped simulated task.
const SIGTERM: i32 = 15;

/// Runs `Simulated` templates (and, when told to, stands in for `Command`
/// ones with a fixed duration so load tests can submit ordinary jobs).
#[derive(Debug, Clone)]
pub struct SimulatedExecutor {
    clock: SharedClock,
    /// Duration given to `Command` templates; `None` refuses them.
    command_stand_in: Option<Duration>,
}

impl SimulatedExecutor {
    pub fn new(clock: SharedClock, command_stand_in: Option<Duration>) -> Self {
        SimulatedExecutor {
            clock,
            command_stand_in,
        }
    }
}

impl Executor for SimulatedExecutor {
    /// Starts at once, on the node's loop, right after the node checked
    /// [`Launch::start_by`]: there is no later moment to check it again.
    fn launch(&self, launch: Launch, exits: ExitTx) -> Result<Started, LaunchError> {
        let (duration, code) = match launch.template.kind {
            Some(Kind::Simulated(s)) => (Duration::from_millis(s.duration_ms), s.exit_code),
            Some(Kind::Command(_)) => match self.command_stand_in {
                Some(d) => (d, 0),
                None => return Err(LaunchError::Unsupported("command")),
            },
            None => return Err(LaunchError::NoKind),
        };
        let (control, mut stop_rx) = TaskControl::new();
        // Created now so that a manual clock counts the timer at once.
        let mut done = self.clock.sleep(duration);
        let attempt = launch.attempt;
        tokio::spawn(async move {
            // Some(true): stopped; Some(false): elapsed; None: control
            // dropped without a stop, so run to the end.
            let stopped = tokio::select! {
                () = &mut done => Some(false),
                stop = &mut stop_rx => stop.is_ok().then_some(true),
            };
            let stopped = match stopped {
                Some(s) => s,
                None => {
                    done.await;
                    false
                }
            };
            let exit = if stopped {
                Exit {
                    signal: Some(SIGTERM),
                    ..Exit::default()
                }
            } else {
                Exit {
                    exit_code: Some(code),
                    ..Exit::default()
                }
            };
            let _ = exits.send(TaskEvent::Exited(TaskExit { attempt, exit }));
        });
        Ok(Started {
            process: None,
            control,
            running: true,
        })
    }
}
