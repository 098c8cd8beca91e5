//! meridian-cli: the command layer of the `meridian` binary.
//!
//! Owns the client commands (`job`, `schedule`, `usage`, `region`, `node`), which
//! talk to the global tier's `Federation` API and follow its leader, shell
//! completions, and `meridian dev`, the supervisor that runs a whole
//! federation on one machine as child processes of the same binary, and the
//! process's logging and OpenTelemetry span export ([`telemetry`]). `src/main.rs` only parses
//! the command line (with the argument types defined here) and dispatches.
//!
//! Must never: depend on a tier crate (`meridian-global`, `-regional`,
//! `-agent`): it reaches them only through `meridian-proto` or as child
//! processes; or hold scheduling logic.
//!
//! Errors: every command returns [`CliError`] (thiserror), whose
//! [`CliError::exit_code`] gives the process exit code ([`error::exit`]).
//! No `anyhow` here: exit codes need the kind of each failure, which a
//! typed error keeps.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod client;
pub mod dev;
pub mod error;
pub mod follow;
pub mod job;
pub mod queued;
pub mod render;
pub mod schedule;
pub mod spec;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod usage;
pub mod wait;
pub mod watch;

pub use admin::{NodeArgs, RegionArgs};
pub use client::{ConnectArgs, DEFAULT_ENDPOINT};
pub use dev::DevArgs;
pub use error::{CliError, Result};
pub use job::JobArgs;
pub use schedule::ScheduleArgs;
pub use telemetry::TelemetryArgs;
pub use usage::UsageArgs;

/// Shells `meridian completions` writes scripts for.
pub use clap_complete::Shell;

/// Writes the completion script of `command` (the whole `meridian` command
/// tree) for `shell` to standard output.
pub fn completions(shell: Shell, mut command: clap::Command) {
    let name = command.get_name().to_string();
    clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
}

/// Ends a command: on error prints `error: ...` to standard error and exits
/// with the error's code; on success returns `Ok` (of any error type, to fit
/// the caller's).
pub fn finish<E>(result: Result<()>) -> std::result::Result<(), E> {
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
    Ok(())
}
