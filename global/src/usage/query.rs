//! GetUsage: the usage records of a range, summed per tenant and region.
//!
//! Owns the validation of a usage request (every bad field named), the
//! rounding of the range to whole hours, and the sums. Reads on any
//! replica, in pages of bounded transactions (`super::read_pages`). Must
//! never write.

use std::collections::BTreeMap;

use meridian_control::SharedClock;
use meridian_proto::v1::{GetUsageRequest, GetUsageResponse, UsageRecord, WaitTime};
use meridian_store::{Database, Subspace};

use super::histogram::Histogram;
use super::{HOUR_MS, UsageKeys, counter_value, field, hour_of, read_pages};
use crate::error::{GlobalError, Result};
use crate::keys::Keys;
use crate::validate;

/// Longest range one request may cover.
pub const MAX_RANGE_MS: u64 = 366 * 24 * HOUR_MS;

/// Sums of one (tenant, region) over some hours.
#[derive(Debug, Clone, Default)]
struct Acc {
    run_ms: u64,
    runs: u64,
    cpu: u64,
    mem: u64,
    gpu: u64,
    wait_sum: u64,
    wait_count: u64,
    wait: Histogram,
}

impl Acc {
    fn add(&mut self, name: &str, n: u64) {
        let slot = match name {
            field::RUN_MS => &mut self.run_ms,
            field::RUNS => &mut self.runs,
            field::CPU => &mut self.cpu,
            field::MEM => &mut self.mem,
            field::GPU => &mut self.gpu,
            field::WAIT_SUM => &mut self.wait_sum,
            field::WAIT_COUNT => &mut self.wait_count,
            other => {
                if let Some(b) = field::bucket_of(other) {
                    self.wait.add(b, n);
                }
                return;
            }
        };
        *slot = slot.saturating_add(n);
    }

    fn merge(&mut self, other: &Acc) {
        self.run_ms = self.run_ms.saturating_add(other.run_ms);
        self.runs = self.runs.saturating_add(other.runs);
        self.cpu = self.cpu.saturating_add(other.cpu);
        self.mem = self.mem.saturating_add(other.mem);
        self.gpu = self.gpu.saturating_add(other.gpu);
        self.wait_sum = self.wait_sum.saturating_add(other.wait_sum);
        self.wait_count = self.wait_count.saturating_add(other.wait_count);
        self.wait.merge(&other.wait);
    }

    fn record(&self, tenant: &str, region: &str, start: u64, end: u64) -> UsageRecord {
        UsageRecord {
            tenant: tenant.to_string(),
            region: region.to_string(),
            start_unix_ms: start,
            end_unix_ms: end,
            cpu_seconds: self.cpu as f64 / 1e6,
            memory_gib_seconds: self.mem as f64 / 1024.0 / 1000.0,
            gpu_seconds: self.gpu as f64 / 1000.0,
            tasks_run: self.runs,
            task_run_ms: self.run_ms,
            cpu_millicore_ms: self.cpu,
            memory_mib_ms: self.mem,
            gpu_ms: self.gpu,
            wait: Some(WaitTime {
                jobs: self.wait_count,
                p50_ms: self.wait.percentile(500),
                p90_ms: self.wait.percentile(900),
                p99_ms: self.wait.percentile(990),
                max_ms: self.wait.max(),
                mean_ms: self.wait_sum.checked_div(self.wait_count).unwrap_or(0),
            }),
        }
    }
}

/// The range of a request after validation and rounding: `[since, until)`
/// on whole hours.
pub fn range_of(req: &GetUsageRequest, now: u64) -> Result<(u64, u64)> {
    if !req.tenant.is_empty() && req.tenant.len() > validate::MAX_TENANT_BYTES {
        return Err(GlobalError::invalid(
            "tenant",
            format!(
                "{} bytes, at most {}",
                req.tenant.len(),
                validate::MAX_TENANT_BYTES
            ),
        ));
    }
    if !req.region.is_empty() {
        validate::region_name("region", &req.region)?;
    }
    if req.since_unix_ms == 0 {
        return Err(GlobalError::invalid("since_unix_ms", "required"));
    }
    let until = if req.until_unix_ms == 0 {
        now
    } else {
        req.until_unix_ms
    };
    if until <= req.since_unix_ms {
        return Err(GlobalError::invalid(
            "until_unix_ms",
            format!("{until} is not after since_unix_ms ({})", req.since_unix_ms),
        ));
    }
    if until - req.since_unix_ms > MAX_RANGE_MS {
        return Err(GlobalError::invalid(
            "until_unix_ms",
            "the range is longer than 366 days",
        ));
    }
    let since = hour_of(req.since_unix_ms);
    let until = hour_of(until.saturating_add(HOUR_MS - 1));
    Ok((since, until))
}

/// One counter read back: `(hour, tenant, region, field, value)`.
type Counter = (u64, String, String, String, u64);

/// Reads every counter of `[since, until)` for the request's tenant (or
/// every tenant), in pages.
async fn read(
    db: &Database,
    keys: &UsageKeys,
    tenant: &str,
    since: u64,
    until: u64,
) -> Result<Vec<Counter>> {
    let space: Subspace = if tenant.is_empty() {
        keys.hours()
    } else {
        keys.tenant(tenant)
    };
    let page = read_pages(db, space.pack(&(since,)), space.pack(&(until,))).await?;
    let corrupt = |e| GlobalError::Corrupt(format!("usage key: {e}"));
    page.iter()
        .map(|kv| {
            if tenant.is_empty() {
                let (hour, t, region, name): (u64, String, String, String) =
                    space.unpack(&kv.key).map_err(corrupt)?;
                Ok((hour, t, region, name, counter_value(&kv.value)))
            } else {
                let (hour, region, name): (u64, String, String) =
                    space.unpack(&kv.key).map_err(corrupt)?;
                Ok((
                    hour,
                    tenant.to_string(),
                    region,
                    name,
                    counter_value(&kv.value),
                ))
            }
        })
        .collect()
}

/// Answers GetUsage.
pub async fn get(
    db: &Database,
    keys: &Keys,
    clock: &SharedClock,
    req: &GetUsageRequest,
) -> Result<GetUsageResponse> {
    let (since, until) = range_of(req, clock.now_unix_ms())?;
    let usage = UsageKeys::new(keys);
    let counters = read(db, &usage, &req.tenant, since, until).await?;
    let mut per_pair: BTreeMap<(String, String), Acc> = BTreeMap::new();
    let mut per_hour: BTreeMap<(u64, String, String), Acc> = BTreeMap::new();
    for (hour, tenant, region, name, n) in counters {
        if !req.region.is_empty() && region != req.region {
            continue;
        }
        if req.hourly {
            per_hour
                .entry((hour, tenant.clone(), region.clone()))
                .or_default()
                .add(&name, n);
        }
        per_pair.entry((tenant, region)).or_default().add(&name, n);
    }
    let mut total = Acc::default();
    let records = per_pair
        .iter()
        .map(|((tenant, region), acc)| {
            total.merge(acc);
            acc.record(tenant, region, since, until)
        })
        .collect();
    let hours = per_hour
        .iter()
        .map(|((hour, tenant, region), acc)| acc.record(tenant, region, *hour, hour + HOUR_MS))
        .collect();
    Ok(GetUsageResponse {
        records,
        total: Some(total.record(&req.tenant, &req.region, since, until)),
        hours,
        since_unix_ms: since,
        until_unix_ms: until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(since: u64, until: u64) -> GetUsageRequest {
        GetUsageRequest {
            since_unix_ms: since,
            until_unix_ms: until,
            ..GetUsageRequest::default()
        }
    }

    #[test]
    fn a_range_is_rounded_out_to_whole_hours_and_until_defaults_to_now() {
        let h = HOUR_MS;
        assert_eq!(range_of(&req(h + 1, 2 * h + 1), 0).unwrap(), (h, 3 * h));
        assert_eq!(range_of(&req(h, 2 * h), 0).unwrap(), (h, 2 * h));
        assert_eq!(range_of(&req(h, 0), 5 * h + 7).unwrap(), (h, 6 * h));
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        let field = |r: GetUsageRequest| match range_of(&r, 10 * HOUR_MS) {
            Err(GlobalError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(field(req(0, 5)), "since_unix_ms");
        assert_eq!(field(req(5, 5)), "until_unix_ms");
        assert_eq!(field(req(1, MAX_RANGE_MS + 2)), "until_unix_ms");
        let mut r = req(1, 2);
        r.region = "Not A Region".into();
        assert_eq!(field(r), "region");
        let mut r = req(1, 2);
        r.tenant = "t".repeat(65);
        assert_eq!(field(r), "tenant");
    }
}
