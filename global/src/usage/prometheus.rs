//! The usage counters on the global tier's `/metrics`, read from the
//! store's all-time totals at each scrape.
//!
//! Owns their names and the text they render in. Read from the store, not
//! counted in memory, they are the same on every replica, survive restarts
//! and leader changes, and never go down (a Prometheus counter). They are
//! labelled by tenant and region: the one place the global tier labels by
//! tenant, bounded by [`MAX_SERIES_PAIRS`]. Must never write.
//!
//! | name | labels | meaning |
//! |---|---|---|
//! | `meridian_usage_cpu_seconds_total` | `tenant`, `region` | allocated cores x run seconds |
//! | `meridian_usage_memory_gib_seconds_total` | `tenant`, `region` | allocated GiB x run seconds |
//! | `meridian_usage_gpu_seconds_total` | `tenant`, `region` | allocated GPUs x run seconds |
//! | `meridian_usage_tasks_run_total` | `tenant`, `region` | task attempts that ran |
//! | `meridian_usage_task_run_seconds_total` | `tenant`, `region` | run time of those attempts |
//! | `meridian_usage_jobs_started_total` | `tenant`, `region` | jobs whose wait was counted |
//! | `meridian_usage_wait_seconds_total` | `tenant`, `region` | sum of their waits (submit to running) |

use std::collections::BTreeMap;
use std::fmt::Write;

use meridian_store::Database;

use super::{UsageKeys, counter_value, field, read_pages};
use crate::error::{GlobalError, Result};
use crate::keys::Keys;

/// Most (tenant, region) pairs exported; the rest are left out (and
/// `meridian_usage_series_dropped` says how many), GetUsage still has them.
pub const MAX_SERIES_PAIRS: usize = 10_000;

/// `(name, help, field, divisor)` of each exported counter.
const SERIES: [(&str, &str, &str, f64); 7] = [
    (
        "meridian_usage_cpu_seconds_total",
        "Allocated CPU cores times task run time, in core-seconds.",
        field::CPU,
        1e6,
    ),
    (
        "meridian_usage_memory_gib_seconds_total",
        "Allocated memory times task run time, in GiB-seconds.",
        field::MEM,
        1024.0 * 1000.0,
    ),
    (
        "meridian_usage_gpu_seconds_total",
        "Allocated GPUs times task run time, in GPU-seconds.",
        field::GPU,
        1000.0,
    ),
    (
        "meridian_usage_tasks_run_total",
        "Task attempts that ran and ended, retries included.",
        field::RUNS,
        1.0,
    ),
    (
        "meridian_usage_task_run_seconds_total",
        "Run time of those task attempts, in seconds.",
        field::RUN_MS,
        1000.0,
    ),
    (
        "meridian_usage_jobs_started_total",
        "Jobs whose wait from submit to running was counted.",
        field::WAIT_COUNT,
        1.0,
    ),
    (
        "meridian_usage_wait_seconds_total",
        "Sum of the waits of those jobs from submit to running, in seconds.",
        field::WAIT_SUM,
        1000.0,
    ),
];

/// Escapes a label value for the text exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The all-time totals: `(tenant, region) -> field -> value`.
async fn totals(
    db: &Database,
    keys: &Keys,
) -> Result<BTreeMap<(String, String), BTreeMap<String, u64>>> {
    let usage = UsageKeys::new(keys);
    let space = usage.totals();
    let (begin, end) = space.range();
    let pairs = read_pages(db, begin, end).await?;
    let mut out: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for kv in pairs {
        let (tenant, region, name): (String, String, String) = space
            .unpack(&kv.key)
            .map_err(|e| GlobalError::Corrupt(format!("usage total key: {e}")))?;
        out.entry((tenant, region))
            .or_default()
            .insert(name, counter_value(&kv.value));
    }
    Ok(out)
}

/// The usage counters in the Prometheus text format.
pub async fn render(db: &Database, keys: &Keys) -> Result<String> {
    let totals = totals(db, keys).await?;
    let dropped = totals.len().saturating_sub(MAX_SERIES_PAIRS);
    let mut out = String::new();
    for (name, help, field, divisor) in SERIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for ((tenant, region), fields) in totals.iter().take(MAX_SERIES_PAIRS) {
            let value = fields.get(field).copied().unwrap_or(0) as f64 / divisor;
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",region=\"{}\"}} {value}",
                escape(tenant),
                escape(region)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP meridian_usage_series_dropped (tenant, region) pairs left out of the usage counters."
    );
    let _ = writeln!(out, "# TYPE meridian_usage_series_dropped gauge");
    let _ = writeln!(out, "meridian_usage_series_dropped {dropped}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
