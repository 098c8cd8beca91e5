//! Per-tenant admission limits of submits: a rate (token bucket) and a cap
//! on queued jobs (submitted and not finished).
//!
//! Owns both checks, made by the leader before a submit reaches the group
//! commit, and the RESOURCE_EXHAUSTED answer with its retry hint
//! ([`GlobalError::TenantLimited`]). The router's fair share and CPU quota
//! (`router.rs`) decide what runs among admitted jobs; these limits decide
//! what is admitted, so one tenant cannot fill the queue or the store.
//! The queued count is read from the tenant-and-state index only when an
//! upper bound (the last count plus what was admitted since; jobs only
//! leave the queue) reaches the cap, so a tenant far below it costs no
//! read. Buckets live in the leader's memory: a new leader starts them
//! full. It must never admit past the cap a count it has just read, and
//! never hold a lock across a store read.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_control::SharedClock;
use meridian_proto::v1::JobState;
use meridian_store::{Database, RangeOption};
use parking_lot::Mutex;

use crate::error::{GlobalError, Result};
use crate::keys::Keys;

/// The limits every tenant gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantLimits {
    /// Sustained submits per second per tenant (jobs, batch items count one
    /// each); 0 turns the rate limit off.
    pub submits_per_sec: f64,
    /// Submits a tenant may make at once after a quiet spell.
    pub burst: u32,
    /// Most queued (not finished) jobs per tenant; 0 turns the cap off.
    pub max_queued: u64,
}

impl Default for TenantLimits {
    /// Generous enough that no single well-behaved client meets them (the
    /// load suite's 5,000 jobs/s of one tenant included), tight enough
    /// that one tenant cannot bury the others' submits.
    fn default() -> Self {
        TenantLimits {
            submits_per_sec: 10_000.0,
            burst: 20_000,
            max_queued: 100_000,
        }
    }
}

/// Retry hint of a tenant at its queued cap: about one controller pass
/// of finished jobs later.
pub const QUEUED_RETRY_MS: u64 = 1000;

/// The states of a queued job.
const QUEUED: [JobState; 4] = [
    JobState::Pending,
    JobState::Routed,
    JobState::Placed,
    JobState::Running,
];

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: meridian_control::Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct Queued {
    /// Queued jobs at the last count, plus those admitted since: never
    /// below the true number, as jobs only leave the queue.
    bound: u64,
}

/// The leader's admission limits.
#[derive(Clone)]
pub struct Limits {
    config: TenantLimits,
    db: Database,
    keys: Keys,
    clock: SharedClock,
    buckets: Arc<Mutex<BTreeMap<String, Bucket>>>,
    queued: Arc<Mutex<BTreeMap<String, Queued>>>,
}

impl Limits {
    /// Limits `config` over the jobs in `db`.
    pub fn new(config: TenantLimits, db: Database, keys: Keys, clock: SharedClock) -> Limits {
        Limits {
            config,
            db,
            keys,
            clock,
            buckets: Arc::default(),
            queued: Arc::default(),
        }
    }

    /// Admits `n` submits of `tenant`, or says when to retry.
    pub async fn admit(&self, tenant: &str, n: u32) -> Result<()> {
        self.take_rate(tenant, n)?;
        self.check_queued(tenant, n).await
    }

    fn take_rate(&self, tenant: &str, n: u32) -> Result<()> {
        let rate = self.config.submits_per_sec;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(self.config.burst.max(1));
        let now = self.clock.now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        let want = f64::from(n);
        if bucket.tokens >= want {
            bucket.tokens -= want;
            return Ok(());
        }
        let wait_ms = ((want - bucket.tokens) / rate * 1000.0).ceil().max(1.0) as u64;
        Err(GlobalError::TenantLimited {
            message: format!(
                "tenant {tenant:?} is over its submit rate ({rate} per second, burst {burst})"
            ),
            retry_after_ms: wait_ms,
        })
    }

    async fn check_queued(&self, tenant: &str, n: u32) -> Result<()> {
        let cap = self.config.max_queued;
        if cap == 0 {
            return Ok(());
        }
        let n = u64::from(n);
        {
            let mut queued = self.queued.lock();
            let entry = queued
                .entry(tenant.to_string())
                .or_insert(Queued { bound: cap });
            if entry.bound + n <= cap {
                entry.bound += n;
                return Ok(());
            }
        }
        let counted = self.count(tenant, cap + 1).await?;
        let mut queued = self.queued.lock();
        let entry = queued.entry(tenant.to_string()).or_default();
        entry.bound = counted;
        if counted + n <= cap {
            entry.bound += n;
            return Ok(());
        }
        Err(GlobalError::TenantLimited {
            message: format!("tenant {tenant:?} has {counted} queued jobs, its cap is {cap}"),
            retry_after_ms: QUEUED_RETRY_MS,
        })
    }

    /// Returns `n` admissions of `tenant` that did not create a job (a
    /// failed or duplicate submit), so the bound stays close.
    pub fn unused(&self, tenant: &str, n: u32) {
        if let Some(entry) = self.queued.lock().get_mut(tenant) {
            entry.bound = entry.bound.saturating_sub(u64::from(n));
        }
    }

    /// Queued jobs of `tenant`, counting up to `most`.
    async fn count(&self, tenant: &str, most: u64) -> Result<u64> {
        let ranges: Vec<_> = QUEUED
            .iter()
            .map(|s| self.keys.jobs_by_tenant_state(tenant, *s as i32).range())
            .collect();
        self.db
            .run(|tx, _| {
                let ranges = ranges.clone();
                async move {
                    let mut total = 0u64;
                    for (begin, end) in ranges {
                        let left = most.saturating_sub(total);
                        if left == 0 {
                            break;
                        }
                        let rows = tx
                            .get_range(
                                RangeOption::new(begin, end)
                                    .limit(left as usize)
                                    .snapshot(true),
                            )
                            .await?;
                        total += rows.len() as u64;
                    }
                    Ok::<_, GlobalError>(total)
                }
            })
            .await
    }
}
