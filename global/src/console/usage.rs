//! The usage page's data: GetUsage's answer, with its hourly records for
//! the chart, as the console's views.
//!
//! Owns the conversion only. Must never read the store or sum anything
//! itself: the figures are the ones GetUsage answers (and `meridian usage`
//! prints).

use meridian_console::view::{UsageQuery, UsageRow, UsageView};
use meridian_proto::v1::{GetUsageRequest, UsageRecord};

use crate::error::Result;
use crate::federation::FederationService;

/// GetUsage over the query's range, with hourly records.
pub async fn read(api: &FederationService, q: &UsageQuery) -> Result<UsageView> {
    let answer = api
        .usage(&GetUsageRequest {
            tenant: q.tenant.clone(),
            region: q.region.clone(),
            since_unix_ms: q.since_unix_ms,
            until_unix_ms: q.until_unix_ms,
            hourly: true,
        })
        .await?;
    Ok(UsageView {
        since_unix_ms: answer.since_unix_ms,
        until_unix_ms: answer.until_unix_ms,
        records: answer.records.iter().map(usage_row).collect(),
        total: answer.total.as_ref().map(usage_row).unwrap_or_default(),
        hours: answer.hours.iter().map(usage_row).collect(),
    })
}

fn usage_row(r: &UsageRecord) -> UsageRow {
    let wait = r.wait.unwrap_or_default();
    UsageRow {
        tenant: r.tenant.clone(),
        region: r.region.clone(),
        start_unix_ms: r.start_unix_ms,
        end_unix_ms: r.end_unix_ms,
        cpu_seconds: r.cpu_seconds,
        memory_gib_seconds: r.memory_gib_seconds,
        gpu_seconds: r.gpu_seconds,
        tasks_run: r.tasks_run,
        task_run_ms: r.task_run_ms,
        wait_jobs: wait.jobs,
        wait_p50_ms: wait.p50_ms,
        wait_p90_ms: wait.p90_ms,
        wait_p99_ms: wait.p99_ms,
        wait_max_ms: wait.max_ms,
        wait_mean_ms: wait.mean_ms,
    }
}
