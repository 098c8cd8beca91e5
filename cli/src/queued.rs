//! `meridian job hold|release|set-priority`: changes to a job still queued
//! at the global tier.
//!
//! Owns these commands' arguments and what they print. Must never decide
//! whether a job may still be changed: the global tier answers that (a job
//! already routed to a region is FAILED_PRECONDITION, shown as the server's
//! message).

use meridian_proto::v1::{HoldJobRequest, Job, ReleaseJobRequest, SetJobPriorityRequest};

use crate::client::Client;
use crate::error::Result;
use crate::render::{self, Output};

/// Holds `job_id`: it stays pending, not routed, until released.
pub async fn hold(
    client: &mut Client,
    output: Output,
    job_id: String,
    reason: String,
) -> Result<()> {
    let request = HoldJobRequest { job_id, reason };
    let response = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.hold_job(r).await }
        })
        .await?;
    print(output, &response.job.unwrap_or_default(), "held")
}

/// Releases `job_id`: it is routed again once its dependencies are met.
pub async fn release(client: &mut Client, output: Output, job_id: String) -> Result<()> {
    let request = ReleaseJobRequest { job_id };
    let response = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.release_job(r).await }
        })
        .await?;
    print(output, &response.job.unwrap_or_default(), "released")
}

/// Sets the priority the router orders `job_id` by.
pub async fn set_priority(
    client: &mut Client,
    output: Output,
    job_id: String,
    priority: i32,
) -> Result<()> {
    let request = SetJobPriorityRequest { job_id, priority };
    let response = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.set_job_priority(r).await }
        })
        .await?;
    let job = response.job.unwrap_or_default();
    print(output, &job, &format!("priority {priority}"))
}

fn print(output: Output, job: &Job, what: &str) -> Result<()> {
    match output {
        Output::Json => render::print_message("Job", job),
        Output::Table => {
            let state = render::job_state(job.state);
            if job.waiting_reason.is_empty() {
                println!("{} {what} ({state})", job.job_id);
            } else {
                println!("{} {what} ({state}: {})", job.job_id, job.waiting_reason);
            }
            Ok(())
        }
    }
}
