//! `job_id/index` text form of task ids, used in logs and on the command line.

use std::fmt;
use std::str::FromStr;

use crate::v1::{TaskAttempt, TaskId};

impl TaskId {
    /// Builds the id of task `index` of job `job_id`.
    pub fn new(job_id: impl Into<String>, index: u32) -> Self {
        Self {
            job_id: job_id.into(),
            index,
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job_id, self.index)
    }
}

/// Error returned when text is not of the form `job_id/index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTaskIdError {
    input: String,
}

impl fmt::Display for ParseTaskIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid task id {:?}: expected JOB_ID/INDEX with a non-negative integer index",
            self.input
        )
    }
}

impl std::error::Error for ParseTaskIdError {}

impl FromStr for TaskId {
    type Err = ParseTaskIdError;

    /// Parses `job_id/index`; the split is at the last `/`, and the job id
    /// must not be empty.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTaskIdError {
            input: s.to_owned(),
        };
        let (job_id, index) = s.rsplit_once('/').ok_or_else(err)?;
        if job_id.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let index = index.parse().map_err(|_| err())?;
        Ok(Self::new(job_id, index))
    }
}

impl fmt::Display for TaskAttempt {
    /// `job_id/index#attempt`, or `?#attempt` when the task is unset.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.task {
            Some(task) => write!(f, "{task}#{}", self.attempt),
            None => write!(f, "?#{}", self.attempt),
        }
    }
}
