//! Accounting: usage per tenant and region, rolled into hourly records
//! kept apart from the jobs.
//!
//! Owns the usage records and their keys: what a region's status report (or
//! release) adds to them, inside the transaction that applies it, and the
//! per-job record of what was already counted, which makes a report applied
//! twice, reordered or replayed after a leader change count nothing twice.
//! What is counted is the resources a task was ALLOCATED (its job's
//! `spec.resources`) times the run time the region reports for its attempts
//! (agent clock, end minus start, retries included), as Slurm's
//! AllocCPUS x Elapsed; measured consumption is not used.
//!
//! Must never: count usage outside the transaction that applies the report
//! (it would drift from the job's state under retries), read or write a
//! job's records (it is handed what it needs), or be cleared by the job
//! retention (only the per-job record of what was counted goes with the
//! job).
//!
//! - `histogram`: the wait-time histogram and its percentiles.
//! - `query`: GetUsage, read on any replica.
//! - `prometheus`: the all-time counters on `/metrics`.

pub mod histogram;
pub mod prometheus;
pub mod query;

use meridian_proto::v1::{Job, JobState};
use meridian_store::{Database, KeyValue, RangeOption, Subspace, Transaction, tuple};

use crate::error::{GlobalError, Result};
use crate::keys::Keys;
use crate::lifecycle;

pub use query::get;

/// One hour, the width of a usage record.
pub const HOUR_MS: u64 = 3_600_000;

/// Counter fields of a usage record (one atomic counter key each).
pub mod field {
    /// Task run time, ms.
    pub const RUN_MS: &str = "run_ms";
    /// Task attempts that ran.
    pub const RUNS: &str = "runs";
    /// Allocated millicores x ms.
    pub const CPU: &str = "cpu";
    /// Allocated MiB x ms.
    pub const MEM: &str = "mem";
    /// Allocated GPUs x ms.
    pub const GPU: &str = "gpu";
    /// Sum of job waits, ms.
    pub const WAIT_SUM: &str = "wait_sum";
    /// Jobs whose wait was counted.
    pub const WAIT_COUNT: &str = "wait_n";
    /// Prefix of a wait histogram bucket (`w` then the bucket number).
    pub const WAIT_BUCKET: &str = "w";

    /// The histogram bucket a field counts, when it is one.
    pub fn bucket_of(name: &str) -> Option<u32> {
        name.strip_prefix(WAIT_BUCKET)?.parse().ok()
    }
}

/// Where usage lives: `("usage", ...)` under the deployment's root.
#[derive(Debug, Clone)]
pub struct UsageKeys {
    root: Subspace,
}

impl UsageKeys {
    /// The usage keys of a deployment.
    pub fn new(keys: &Keys) -> Self {
        UsageKeys {
            root: keys.root().subspace(&("usage",)),
        }
    }

    /// A counter of one hour of a tenant in a region, by tenant first:
    /// `("t", tenant, hour, region, field)`.
    pub fn by_tenant(&self, tenant: &str, hour: u64, region: &str, field: &str) -> Vec<u8> {
        self.root.pack(&("t", tenant, hour, region, field))
    }

    /// A tenant's hourly counters.
    pub fn tenant(&self, tenant: &str) -> Subspace {
        self.root.subspace(&("t", tenant))
    }

    /// The same counter by hour first: `("h", hour, tenant, region, field)`,
    /// what a query over every tenant reads.
    pub fn by_hour(&self, hour: u64, tenant: &str, region: &str, field: &str) -> Vec<u8> {
        self.root.pack(&("h", hour, tenant, region, field))
    }

    /// Every hourly counter, by hour.
    pub fn hours(&self) -> Subspace {
        self.root.subspace(&("h",))
    }

    /// An all-time counter of a tenant in a region (`/metrics`).
    pub fn total(&self, tenant: &str, region: &str, field: &str) -> Vec<u8> {
        self.root.pack(&("all", tenant, region, field))
    }

    /// Every all-time counter.
    pub fn totals(&self) -> Subspace {
        self.root.subspace(&("all",))
    }

    /// What was counted of one job: `(epoch, run_ms, runs, waited)`.
    pub fn counted(&self, job_id: &str) -> Vec<u8> {
        self.root.pack(&("job", job_id))
    }
}

/// What a region says its attempts of a job ran, cumulative for one
/// assignment epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    /// The assignment epoch the totals are for.
    pub epoch: u64,
    /// Run time summed over the attempts, ms.
    pub run_ms: u64,
    /// Attempts that ran.
    pub runs: u64,
}

/// What was counted of one job so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counted {
    epoch: u64,
    run_ms: u64,
    runs: u64,
    waited: bool,
}

impl Counted {
    async fn read(tx: &Transaction, keys: &UsageKeys, job_id: &str) -> Result<Counted> {
        let Some(raw) = tx.get(&keys.counted(job_id)).await? else {
            return Ok(Counted::default());
        };
        let (epoch, run_ms, runs, waited): (u64, u64, u64, bool) =
            tuple::unpack(&raw).map_err(|e| GlobalError::Corrupt(format!("usage counted: {e}")))?;
        Ok(Counted {
            epoch,
            run_ms,
            runs,
            waited,
        })
    }

    fn write(&self, tx: &Transaction, keys: &UsageKeys, job_id: &str) -> Result<()> {
        tx.set(
            &keys.counted(job_id),
            &tuple::pack(&(self.epoch, self.run_ms, self.runs, self.waited)),
        )?;
        Ok(())
    }
}

/// The hour `unix_ms` falls in (its start).
pub fn hour_of(unix_ms: u64) -> u64 {
    unix_ms - unix_ms % HOUR_MS
}

/// Counts what a report of `region` adds to its job's usage, in the
/// transaction applying it: the growth of the region's cumulative run time
/// since the last report counted for the same epoch (all of it for a newer
/// epoch, nothing for an older one), times the job's allocated resources;
/// and the job's wait, the first time a report finds it running (`to`). The
/// usage goes to the hour of `now` (global clock). Its one read is the
/// job's [`UsageKeys::counted`] record: a caller that applies many reports
/// in one transaction reads those records with its batch (`link.rs`), so
/// that no report costs a round trip of its own.
pub async fn count(
    tx: &Transaction,
    keys: &Keys,
    job: &Job,
    region: &str,
    ran: Ran,
    to: JobState,
    now: u64,
) -> Result<()> {
    let usage = UsageKeys::new(keys);
    let mut counted = Counted::read(tx, &usage, &job.job_id).await?;
    let (add_ms, add_runs) = if ran.epoch > counted.epoch {
        (ran.run_ms, ran.runs)
    } else if ran.epoch == counted.epoch {
        (
            ran.run_ms.saturating_sub(counted.run_ms),
            ran.runs.saturating_sub(counted.runs),
        )
    } else {
        // A report under an epoch older than one already counted: its
        // attempts were counted under it, or are lost with it.
        return Ok(());
    };
    let started = to == JobState::Running || (lifecycle::is_terminal(to) && ran.runs > 0);
    let wait = (started && !counted.waited).then(|| now.saturating_sub(job.created_at_unix_ms));
    if add_ms == 0 && add_runs == 0 && wait.is_none() && ran.epoch == counted.epoch {
        return Ok(());
    }
    let tenant = job.spec.as_ref().map_or("", |s| s.tenant.as_str());
    let resources = job
        .spec
        .as_ref()
        .and_then(|s| s.resources.clone())
        .unwrap_or_default();
    let mut adds: Vec<(String, u64)> = Vec::new();
    if add_ms > 0 || add_runs > 0 {
        let ms = u128::from(add_ms);
        adds.push((field::RUN_MS.into(), add_ms));
        adds.push((field::RUNS.into(), add_runs));
        adds.push((
            field::CPU.into(),
            clamp(ms * u128::from(resources.cpu_millis)),
        ));
        adds.push((
            field::MEM.into(),
            clamp((ms * u128::from(resources.memory_bytes)) >> 20),
        ));
        adds.push((
            field::GPU.into(),
            clamp(ms * u128::from(resources.gpu_count)),
        ));
    }
    if let Some(wait) = wait {
        adds.push((field::WAIT_SUM.into(), wait));
        adds.push((field::WAIT_COUNT.into(), 1));
        adds.push((
            format!("{}{}", field::WAIT_BUCKET, histogram::bucket(wait)),
            1,
        ));
        counted.waited = true;
    }
    let hour = hour_of(now);
    for (name, n) in &adds {
        if *n == 0 {
            continue;
        }
        let delta = i64::try_from(*n).unwrap_or(i64::MAX);
        tx.add_i64(&usage.by_tenant(tenant, hour, region, name), delta)?;
        tx.add_i64(&usage.by_hour(hour, tenant, region, name), delta)?;
        // The all-time totals feed `/metrics`, which shows no histogram.
        if field::bucket_of(name).is_none() {
            tx.add_i64(&usage.total(tenant, region, name), delta)?;
        }
    }
    if ran.epoch > counted.epoch {
        counted.run_ms = ran.run_ms;
        counted.runs = ran.runs;
    } else {
        counted.run_ms = counted.run_ms.max(ran.run_ms);
        counted.runs = counted.runs.max(ran.runs);
    }
    counted.epoch = ran.epoch;
    counted.write(tx, &usage, &job.job_id)
}

/// Counter keys read per transaction by the readers (a year of hourly
/// records of many tenants does not fit one transaction).
pub const PAGE: usize = 10_000;

/// Every pair of `[begin, end)`, read in transactions of [`PAGE`] pairs.
/// Not one snapshot: a report committed between two pages may be seen in
/// the later one only, as if it had come a moment later.
pub async fn read_pages(db: &Database, begin: Vec<u8>, end: Vec<u8>) -> Result<Vec<KeyValue>> {
    let mut begin = begin;
    let mut out = Vec::new();
    loop {
        let range = RangeOption {
            limit: PAGE,
            ..RangeOption::new(begin.clone(), end.clone())
        };
        let page = db
            .run(|tx, _| {
                let range = range.clone();
                async move { Ok::<_, GlobalError>(tx.get_range(range).await?) }
            })
            .await?;
        let full = page.len() == PAGE;
        if let Some(last) = page.last() {
            begin = last.key.clone();
            begin.push(0);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

fn clamp(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Forgets what was counted of a job the retention removes (its usage
/// stays in the hourly records).
pub fn forget(tx: &Transaction, keys: &Keys, job_id: &str) -> Result<()> {
    tx.clear(&UsageKeys::new(keys).counted(job_id))?;
    Ok(())
}

/// A little-endian counter value as written by `add_i64` (0 when
/// malformed, never negative).
pub fn counter_value(raw: &[u8]) -> u64 {
    let bytes: [u8; 8] = raw.try_into().unwrap_or([0; 8]);
    u64::try_from(i64::from_le_bytes(bytes)).unwrap_or(0)
}
