//! The error type of every command and its exit code.
//!
//! Owns turning a failure (a gRPC status, a bad local input, a job that did
//! not succeed) into one clear line for the user and a process exit code.
//! Must never hide the server's message: for `INVALID_ARGUMENT` that message
//! starts with the proto path of the offending field, and it is shown as is.

use meridian_control::rpc::Refusal;
use tonic::{Code, Status};

/// Exit codes of `meridian` commands (also listed in `docs/cli.md`).
pub mod exit {
    /// The operation failed for a reason not listed below.
    pub const FAILURE: i32 = 1;
    /// Bad command line or local input (unreadable or malformed spec file).
    pub const USAGE: i32 = 2;
    /// The server refused the request as invalid (`INVALID_ARGUMENT`).
    pub const INVALID: i32 = 3;
    /// The job, task, region or node does not exist (`NOT_FOUND`).
    pub const NOT_FOUND: i32 = 4;
    /// No replica could serve the request in time (`UNAVAILABLE`, timeouts).
    pub const UNAVAILABLE: i32 = 5;
    /// `--wait` followed a job that ended FAILED or CANCELLED.
    pub const JOB_FAILED: i32 = 6;
    /// `--wait --timeout` ran out before the job ended (it goes on).
    pub const TIMED_OUT: i32 = 7;
}

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input given on this machine (flags, spec file).
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error status.
    #[error("{}", describe(.0))]
    Status(Box<Status>),
    /// No replica answered in time.
    #[error("{0}")]
    Unavailable(String),
    /// A followed job ended without succeeding.
    #[error("{0}")]
    JobFailed(String),
    /// `--timeout` ran out while waiting.
    #[error("{0}")]
    TimedOut(String),
    /// Anything else (I/O on this machine, a child process that would not
    /// start, a malformed answer).
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Status(s) => match Refusal::of(s) {
                Refusal::Invalid => exit::INVALID,
                Refusal::NotFound => exit::NOT_FOUND,
                Refusal::Unavailable => exit::UNAVAILABLE,
                _ => exit::FAILURE,
            },
            CliError::Unavailable(_) => exit::UNAVAILABLE,
            CliError::JobFailed(_) => exit::JOB_FAILED,
            CliError::TimedOut(_) => exit::TIMED_OUT,
            CliError::Other(_) => exit::FAILURE,
        }
    }

    /// A usage error with a message.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::Usage(message.into())
    }

    /// Any other failure with a message.
    pub fn other(message: impl Into<String>) -> Self {
        CliError::Other(message.into())
    }
}

impl meridian_control::Retryable for CliError {
    /// Retryable: nobody could serve the call, or control's retry rule says
    /// the same request may succeed later or at another replica.
    fn is_retryable(&self) -> bool {
        match self {
            CliError::Unavailable(_) => true,
            CliError::Status(s) => meridian_control::RpcVerdict::of(s).is_retryable(),
            CliError::Usage(_)
            | CliError::JobFailed(_)
            | CliError::TimedOut(_)
            | CliError::Other(_) => false,
        }
    }
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        CliError::Status(Box::new(status))
    }
}

fn describe(status: &Status) -> String {
    let what = match status.code() {
        Code::InvalidArgument => "invalid request",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "failed precondition",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::PermissionDenied | Code::Unauthenticated => "not allowed",
        Code::ResourceExhausted => "resource exhausted",
        Code::OutOfRange => "out of range",
        _ => "server error",
    };
    let message = status.message();
    if message.is_empty() {
        format!("{what} ({})", status.code())
    } else if message.starts_with(&format!("{what}: ")) {
        // The server said it already ("not found: job J finished ... and
        // was removed"); saying it twice reads as a stutter.
        message.to_string()
    } else {
        format!("{what}: {message}")
    }
}

/// Result of a command.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_keeps_the_field_in_the_message_and_exits_3() {
        let e = CliError::from(Status::invalid_argument(
            "spec.task_count: must be 1 to 10000",
        ));
        assert_eq!(
            e.to_string(),
            "invalid request: spec.task_count: must be 1 to 10000"
        );
        assert_eq!(e.exit_code(), exit::INVALID);
    }

    #[test]
    fn a_message_that_names_its_kind_already_is_not_prefixed_twice() {
        let removed = "not found: job j1-9 finished SUCCEEDED at 2026-12-06T08:02:25Z and was \
                       removed after the retention period (at 2026-12-13T08:02:40Z)";
        let e = CliError::from(Status::not_found(removed));
        assert_eq!(e.to_string(), removed);
        assert_eq!(e.exit_code(), exit::NOT_FOUND);
        assert_eq!(
            CliError::from(Status::not_found("job j1-9")).to_string(),
            "not found: job j1-9"
        );
    }

    #[test]
    fn not_found_and_unavailable_have_their_own_exit_codes() {
        assert_eq!(
            CliError::from(Status::not_found("job j1-9")).exit_code(),
            exit::NOT_FOUND
        );
        assert_eq!(
            CliError::Unavailable("x".into()).exit_code(),
            exit::UNAVAILABLE
        );
    }
}
