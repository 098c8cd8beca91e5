//! The Prometheus recorder of the process, its `/metrics` rendering, and
//! the global tier's metric names.
//!
//! Owns installing one recorder per process (several replicas in one test
//! process share it). It must never fail a replica's start because a
//! recorder was already installed by someone else, and never label a series
//! with a job id, request id or tenant (unbounded).
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `meridian_global_submits_total` | counter | `outcome` | SubmitJob calls; `outcome` is `created`, `duplicate`, `invalid` or `error` |
//! | `meridian_global_submits_shed_total` | counter | `call` | submits refused RESOURCE_EXHAUSTED at admission; `call` is `unary` or `batch` |
//! | `meridian_global_submit_group_size` | histogram | | submits per group-commit transaction |
//! | `meridian_global_submit_queue_depth` | gauge | | submits waiting for the next group commit |
//! | `meridian_global_route_pending_jobs` | gauge | | pending jobs the last routing pass saw (at most one routing batch) |
//! | `meridian_global_jobs_routed_total` | counter | | jobs assigned to a region |
//! | `meridian_global_region_items_total` | counter | `kind`, `verdict` | region batch items (`ack`, `status`, `release`) by verdict |
//! | `meridian_global_fencing_rejections_total` | counter | `epoch` | region writes refused as stale; `epoch` is `region_lease` (a call or stream under a superseded region lease) or `assignment` (an item under a superseded assignment epoch) |
//! | `meridian_global_leader` | gauge | | 1 while this replica leads |
//!
//! The lease (`lease="global"`), fence, work-queue and store series of
//! `meridian-control` and `meridian-store` appear on the same endpoint.
//! So do the usage counters per tenant and region, which are not recorded
//! here: `crate::usage::prometheus` reads them from the store at each
//! scrape (the one place a series carries a tenant, capped).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use;
/// `None` when another recorder was installed first.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let installed = metrics::set_global_recorder(recorder).ok().map(|_| handle);
            if installed.is_some() {
                register_series();
            }
            installed
        })
        .clone()
}

/// A region write refused as stale (`epoch`: `region_lease` or
/// `assignment`).
pub fn fencing_rejection(epoch: &'static str) {
    metrics::counter!("meridian_global_fencing_rejections_total", "epoch" => epoch).increment(1);
}

/// Shows the series that count rare events (fencing, retries) at zero from
/// the start, so "none yet" differs from "not exported".
fn register_series() {
    for epoch in ["region_lease", "assignment"] {
        let _ = metrics::counter!("meridian_global_fencing_rejections_total", "epoch" => epoch);
    }
    crate::parking::register_series();
    meridian_control::telemetry::register_series();
    meridian_store::database::register_metrics();
}
