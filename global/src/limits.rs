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
//! read. A tenant is counted once at a time: a count reads up to the
//! cap's worth of index entries, and every submit over the bound counting
//! at once made a tenant at a cap of 100,000 cost the leader one
//! 100,000-row scan per concurrent call, every tenant's submits waiting
//! behind them; submits over the bound while a count is under way wait
//! for it and are judged by it instead. Buckets live in the leader's memory:
//! a new leader starts them full. It must never admit past the cap a count
//! it has just read, and never hold a lock across a store read.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_control::SharedClock;
use meridian_proto::v1::JobState;
use meridian_store::{Database, RangeOption};
use parking_lot::Mutex;
use tokio::sync::watch;

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

#[derive(Debug, Clone, Default)]
struct Queued {
    /// Queued jobs at the last count, plus those admitted since: never
    /// below the true number, as jobs only leave the queue.
    bound: u64,
    /// A count is under way: submits over the bound meanwhile wait for
    /// it (the sender is dropped when it ends) instead of counting beside
    /// it.
    counting: Option<watch::Receiver<()>>,
    /// Counts completed, so a submit that waited knows one answered it.
    counts: u64,
    /// What the last completed count found.
    counted: u64,
}

impl Queued {
    /// Admits `n` more if the bound leaves room for them under `cap`.
    fn take(&mut self, n: u64, cap: u64) -> bool {
        let room = self.bound + n <= cap;
        if room {
            self.bound += n;
        }
        room
    }
}

/// Marks a tenant's count as no longer under way when dropped, then wakes
/// the submits that waited for it (dropping `_done`).
struct Counting<'a> {
    queued: &'a Mutex<BTreeMap<String, Queued>>,
    tenant: &'a str,
    _done: watch::Sender<()>,
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        if let Some(entry) = self.queued.lock().get_mut(self.tenant) {
            entry.counting = None;
        }
    }
}

/// The refusal of a tenant at its queued cap.
fn at_cap(tenant: &str, counted: u64, cap: u64) -> GlobalError {
    GlobalError::TenantLimited {
        message: format!("tenant {tenant:?} has {counted} queued jobs, its cap is {cap}"),
        retry_after_ms: QUEUED_RETRY_MS,
    }
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
        let sender = loop {
            let (mut done, waited_from) = {
                let mut queued = self.queued.lock();
                let entry = queued.entry(tenant.to_string()).or_insert(Queued {
                    bound: cap,
                    ..Queued::default()
                });
                if entry.take(n, cap) {
                    return Ok(());
                }
                match &entry.counting {
                    Some(under_way) => (under_way.clone(), entry.counts),
                    None => {
                        let (sender, receiver) = watch::channel(());
                        entry.counting = Some(receiver);
                        break sender;
                    }
                }
            };
            // Judged by the count under way, not by one more beside it.
            let _ = done.changed().await;
            let mut queued = self.queued.lock();
            let entry = queued.entry(tenant.to_string()).or_default();
            if entry.take(n, cap) {
                return Ok(());
            }
            if entry.counts > waited_from {
                return Err(at_cap(tenant, entry.counted, cap));
            }
            // That count failed: try again, counting if no one else is.
        };
        // Cleared however the count ends, and only after its result is
        // recorded, so whoever waited sees it: a call dropped mid-count
        // (its client gone) must not leave the tenant waiting for good.
        let under_way = Counting {
            queued: &self.queued,
            tenant,
            _done: sender,
        };
        let counted = self.count(tenant, cap + 1).await?;
        let verdict = {
            let mut queued = self.queued.lock();
            let entry = queued.entry(tenant.to_string()).or_default();
            entry.counts += 1;
            entry.counted = counted;
            entry.bound = counted;
            if entry.take(n, cap) {
                Ok(())
            } else {
                Err(at_cap(tenant, counted, cap))
            }
        };
        drop(under_way);
        verdict
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meridian_control::ManualClock;
    use meridian_store::fault::{FaultConfig, FaultyBackend};
    use meridian_store::memory::MemoryBackend;

    use super::*;

    const CAP: u64 = 3;

    async fn queue(db: &Database, keys: &Keys, tenant: &str, job_id: &str) {
        let key = keys.job_by_tenant_state(tenant, JobState::Pending as i32, job_id);
        db.run(|tx, _| {
            let key = key.clone();
            async move {
                tx.set(&key, b"")?;
                Ok::<_, GlobalError>(())
            }
        })
        .await
        .unwrap();
    }

    async fn finish(db: &Database, keys: &Keys, tenant: &str, job_id: &str) {
        let key = keys.job_by_tenant_state(tenant, JobState::Pending as i32, job_id);
        db.run(|tx, _| {
            let key = key.clone();
            async move {
                tx.clear(&key)?;
                Ok::<_, GlobalError>(())
            }
        })
        .await
        .unwrap();
    }

    /// Limits with a cap of [`CAP`] queued jobs over a counted store in
    /// which tenant `a` has that many.
    async fn tenant_a_at_its_cap() -> (Arc<FaultyBackend>, Database, Keys, Limits) {
        let store = Arc::new(FaultyBackend::new(
            Arc::new(MemoryBackend::new()),
            FaultConfig::none(),
            1,
        ));
        let db = Database::new(store.clone());
        let keys = Keys::new("limits");
        let config = TenantLimits {
            submits_per_sec: 0.0,
            burst: 0,
            max_queued: CAP,
        };
        let clock = ManualClock::new().shared();
        let limits = Limits::new(config, db.clone(), keys.clone(), clock);
        for i in 0..CAP {
            queue(&db, &keys, "a", &format!("j{i}")).await;
        }
        (store, db, keys, limits)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submits_over_the_cap_at_once_cost_one_count_not_one_each() {
        let (store, db, keys, limits) = tenant_a_at_its_cap().await;
        let before = store.stats().reads;
        let refused = limits.admit("a", 1).await.unwrap_err();
        assert!(
            refused.to_string().contains("has 3 queued jobs"),
            "{refused}"
        );
        let one_count = store.stats().reads - before;
        assert!(one_count > 0);

        // Fifty submits at once while the count is slow: one counts, the
        // others wait for it and are judged by it, without reading.
        store.set_config(FaultConfig {
            latency: Duration::from_millis(50),
            ..FaultConfig::none()
        });
        let before = store.stats().reads;
        let answers = futures::future::join_all((0..50).map(|_| limits.admit("a", 1))).await;
        assert_eq!(store.stats().reads - before, one_count);
        for answer in &answers {
            assert!(
                matches!(answer, Err(e) if e.to_string().contains("has 3 queued jobs")),
                "{answer:?}"
            );
        }
        store.set_config(FaultConfig::none());

        // A job ends: the next submit counts again and is admitted.
        finish(&db, &keys, "a", "j0").await;
        limits.admit("a", 1).await.unwrap();
        // Another tenant is counted on its own.
        limits.admit("b", 1).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_tenant_s_first_submits_at_once_are_admitted_after_one_count() {
        let (store, _, _, limits) = tenant_a_at_its_cap().await;
        store.set_config(FaultConfig {
            latency: Duration::from_millis(50),
            ..FaultConfig::none()
        });
        let before = store.stats().reads;
        let answers = futures::future::join_all((0..CAP).map(|_| limits.admit("new", 1))).await;
        let one_count = store.stats().reads - before;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert!(one_count > 0);
        store.set_config(FaultConfig::none());
        // The bound holds the three admitted: the next one counts again.
        let before = store.stats().reads;
        limits.admit("new", 1).await.unwrap();
        assert!(store.stats().reads > before);
    }

    #[tokio::test]
    async fn a_submit_dropped_while_its_tenant_is_counted_leaves_no_count_under_way() {
        let (store, _, _, limits) = tenant_a_at_its_cap().await;

        // The count's commit is slow, and its caller goes away meanwhile.
        store.set_config(FaultConfig {
            latency: Duration::from_secs(1),
            ..FaultConfig::none()
        });
        {
            let dropped = limits.admit("a", 1);
            tokio::pin!(dropped);
            assert!(futures::poll!(&mut dropped).is_pending());
        }
        store.set_config(FaultConfig::none());

        let counted = limits.admit("a", 1).await.unwrap_err();
        assert!(
            counted.to_string().contains("has 3 queued jobs"),
            "{counted}"
        );
    }
}
