//! The secondary indexes of job records: by tenant, by state, by tenant
//! and state, by region and state, by tenant, region and state (what
//! `ListJobs` reads, `listing.rs`), and the index of finished jobs by the
//! time they finished (what the job retention removes, `history.rs`).
//!
//! Owns every write of a job record: [`write_job`] reads the record as
//! stored in the same transaction (callers have read it already, so the
//! read is answered from the transaction's cache) and moves the job's index
//! entries from the old record's values to the new one's, so no caller can
//! change a job's state or region and leave an index behind. It also owns
//! the one-time backfill of a store written before the indexes existed
//! ([`backfill`], run by the leader, fenced, in batches), and the version
//! key that says the indexes are complete ([`ready`]). It must never write
//! without the caller's transaction (and so the caller's leader fence),
//! never index a job by a value the record does not hold, and never let
//! `ListJobs` read the indexes before the backfill finished.

use meridian_control::lease::Fence;
use meridian_proto::v1::Job;
use meridian_store::{Database, RangeOption, Transaction};
use prost::Message;

use crate::error::{GlobalError, Result};
use crate::keys::Keys;
use crate::lifecycle::{self, state_of};

/// The version of the index layout written by this build.
pub const VERSION: &[u8] = b"1";

/// Job records indexed per backfill transaction.
pub const BACKFILL_BATCH: usize = 256;

/// The index keys of `job` as it is (its finished entry aside).
pub fn entries(keys: &Keys, job: &Job) -> Vec<Vec<u8>> {
    let tenant = job.spec.as_ref().map_or("", |s| s.tenant.as_str());
    let (id, state, region) = (job.job_id.as_str(), job.state, job.region.as_str());
    let mut out = vec![
        keys.job_by_tenant(tenant, id),
        keys.job_by_state(state, id),
        keys.job_by_tenant_state(tenant, state, id),
    ];
    // A job outside every region is never asked for by region (an empty
    // region in a request means "any"), so it costs no region entries.
    if !region.is_empty() {
        out.push(keys.job_by_region_state(region, state, id));
        out.push(keys.job_by_tenant_region_state(tenant, region, state, id));
    }
    out
}

/// When `job` finished: the time of its last transition into a terminal
/// state, else its last update (a record whose history was cut short).
/// `None` for a job that has not finished. The same record always gives
/// the same time, so the backfill and [`write_job`] agree.
pub fn finished_at(job: &Job) -> Option<u64> {
    if !lifecycle::is_terminal(state_of(job)) {
        return None;
    }
    let ended =
        job.history.iter().rev().find(|t| {
            meridian_proto::v1::JobState::try_from(t.to).is_ok_and(lifecycle::is_terminal)
        });
    Some(ended.map_or(job.updated_at_unix_ms, |t| t.at_unix_ms))
}

/// Writes a job record (without its tasks) inside `tx` and moves its index
/// entries from the record as stored to `job`; a job that finishes here
/// enters the finished index.
pub async fn write_job(tx: &Transaction, keys: &Keys, job: &Job) -> Result<()> {
    let old = match tx.get(&keys.job(&job.job_id)).await? {
        Some(raw) => Some(Job::decode(raw.as_slice())?),
        None => None,
    };
    put(tx, keys, old.as_ref(), job)
}

/// Writes a job known to be new (its id was just issued, so no record can
/// exist) with its index entries, without reading.
pub fn create_job(tx: &Transaction, keys: &Keys, job: &Job) -> Result<()> {
    put(tx, keys, None, job)
}

fn put(tx: &Transaction, keys: &Keys, old: Option<&Job>, job: &Job) -> Result<()> {
    let new_entries = entries(keys, job);
    if let Some(old) = old {
        for key in entries(keys, old) {
            if !new_entries.contains(&key) {
                tx.clear(&key)?;
            }
        }
    }
    let old_entries = old.map(|o| entries(keys, o)).unwrap_or_default();
    for key in &new_entries {
        if !old_entries.contains(key) {
            tx.set(key, b"")?;
        }
    }
    // Terminal states are final, so a job enters the finished index once,
    // in the commit that ends it.
    if let Some(at) = finished_at(job)
        && old.and_then(finished_at).is_none()
    {
        tx.set(&keys.finished(at, &job.job_id), b"")?;
    }
    let stored = Job {
        tasks: Vec::new(),
        ..job.clone()
    };
    tx.set(&keys.job(&job.job_id), &stored.encode_to_vec())?;
    Ok(())
}

/// Clears every index entry of `job` (its finished entry included), for
/// the removal of the job.
pub fn clear_entries(tx: &Transaction, keys: &Keys, job: &Job) -> Result<()> {
    for key in entries(keys, job) {
        tx.clear(&key)?;
    }
    if let Some(at) = finished_at(job) {
        tx.clear(&keys.finished(at, &job.job_id))?;
    }
    Ok(())
}

/// Whether the indexes are complete (the backfill finished, or the store
/// was created with them), read in `tx`.
pub async fn ready(tx: &Transaction, keys: &Keys) -> Result<bool> {
    Ok(tx.get(&keys.job_index_version()).await?.is_some())
}

/// Indexes every job record of a store written before the indexes existed,
/// then records the version, so `ListJobs` reads the indexes from then on.
/// A no-op once the version is recorded. Runs on the leader, a batch of
/// [`BACKFILL_BATCH`] records per fenced transaction, resuming from its
/// progress key after a restart or a change of leader; writes of jobs
/// meanwhile keep their entries right through [`write_job`] (indexing a
/// record again sets the same keys). Returns the records indexed.
pub async fn backfill(db: &Database, keys: &Keys, fence: &Fence) -> Result<usize> {
    let mut total = 0;
    loop {
        let (indexed, done) = db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    if ready(&tx, &keys).await? {
                        return Ok::<_, GlobalError>((0, true));
                    }
                    let (begin, end) = keys.jobs().range();
                    let from = match tx.get(&keys.job_index_backfill()).await? {
                        Some(mut last) => {
                            last.push(0);
                            last
                        }
                        None => begin,
                    };
                    let rows = tx
                        .get_range(RangeOption::new(from, end).limit(BACKFILL_BATCH))
                        .await?;
                    for kv in &rows {
                        // A record that does not decode (the controller
                        // parks it) must not hold every list back on the
                        // scan; it is left out of the indexes.
                        let job = match Job::decode(kv.value.as_slice()) {
                            Ok(job) => job,
                            Err(err) => {
                                tracing::warn!(error = %err, "backfill skips a job record");
                                continue;
                            }
                        };
                        for key in entries(&keys, &job) {
                            tx.set(&key, b"")?;
                        }
                        if let Some(at) = finished_at(&job) {
                            tx.set(&keys.finished(at, &job.job_id), b"")?;
                        }
                    }
                    let done = rows.len() < BACKFILL_BATCH;
                    if done {
                        tx.set(&keys.job_index_version(), VERSION)?;
                        tx.clear(&keys.job_index_backfill())?;
                    } else if let Some(last) = rows.last() {
                        tx.set(&keys.job_index_backfill(), &last.key)?;
                    }
                    Ok((rows.len(), done))
                }
            })
            .await?;
        total += indexed;
        if done {
            return Ok(total);
        }
    }
}
