//! Job records in the store: submit (idempotent by request id), read, list
//! and cancel.
//!
//! Owns the job record and its indexes (request id -> job id, pending jobs)
//! and writes them together with their events in one transaction. A repeated
//! `(tenant, request_id)` returns its job only when the spec is the one the
//! job was created with; another spec is refused. It must never write
//! without the caller's leader fence checked in the same transaction, never
//! create a second job for a `(tenant, request_id)`, and never rewrite a
//! job's spec, which is what a repeated request id is judged against.

use std::sync::Arc;

use meridian_control::SharedClock;
use meridian_control::lease::Fence;
use meridian_control::planted::{Bug, on};
use meridian_control::trace::TraceId;
use meridian_proto::limits;
use meridian_proto::v1::{
    AssignmentEvent, AssignmentEventKind, Job, JobEvent, JobEventKind, JobSpec, JobState,
    JobTransition, ListJobsRequest, ListJobsResponse, SubmitJobRequest, SubmitJobResponse,
    TaskState, TaskStatus,
};
use meridian_store::{Database, RangeOption, Transaction};
use prost::Message;
use tokio::sync::Notify;

use crate::dependencies;
use crate::error::{GlobalError, Result};
use crate::events::EventWriter;
use crate::gate;
use crate::history;
use crate::job_index;
use crate::keys::Keys;
use crate::lifecycle::{self, state_of};
use crate::listing;
use crate::validate;

pub use crate::job_index::write_job;

/// Reads a job record inside `tx`. Read through the transaction's cache so
/// that it keeps the value: [`write_job`] reads the record again to
/// move its index entries, and is answered without a round trip.
pub async fn read_job(tx: &Transaction, keys: &Keys, job_id: &str) -> Result<Option<Job>> {
    let key = keys.job(job_id);
    // A key read before in this transaction (a caller's prefetch) costs
    // nothing here.
    tx.prefetch(std::slice::from_ref(&key)).await?;
    match tx.get(&key).await? {
        Some(raw) => Ok(Some(Job::decode(raw.as_slice())?)),
        None => Ok(None),
    }
}

/// A job event about `job` as it is now.
pub fn job_event(
    kind: JobEventKind,
    job: &Job,
    transition: Option<JobTransition>,
    at: u64,
) -> JobEvent {
    JobEvent {
        cursor: Vec::new(),
        kind: kind as i32,
        job: Some(lifecycle::summary(job)),
        transition,
        task: None,
        at_unix_ms: at,
    }
}

/// Moves `job` to `to` and appends the STATE_CHANGED event; a no-op when
/// already there. Illegal transitions are refused as corrupt requests. A
/// job that ends while others wait on it is queued as settled, for
/// `gate::unblock` to judge them.
pub fn change_state(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    job: &mut Job,
    to: JobState,
    reason: &str,
    now: u64,
) -> Result<bool> {
    let changed = lifecycle::transition(job, to, reason, now)
        .map_err(|e| GlobalError::invalid("state", e.to_string()))?;
    if changed && job.has_dependents && lifecycle::is_terminal(to) {
        // In the commit that ends the job, so no end is missed by the jobs
        // waiting on it (`gate::unblock` judges them).
        tx.set(&keys.settled(&job.job_id), b"")?;
    }
    if changed {
        let event = job_event(
            JobEventKind::StateChanged,
            job,
            lifecycle::last_transition(job),
            now,
        );
        events.job(tx, keys, &event)?;
    }
    Ok(changed)
}

/// A validated submit with the id and trace id its job gets if it is new.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The request.
    pub request: SubmitJobRequest,
    /// The id the job gets if the request is new.
    pub job_id: String,
    /// The trace id the job gets if the request is new.
    pub trace: TraceId,
}

/// The job store of the global tier.
#[derive(Clone)]
pub struct Jobs {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    kick: Arc<Notify>,
}

impl Jobs {
    /// Jobs in `db` under `keys`; `kick` is notified when there is routing
    /// work.
    pub fn new(db: Database, keys: Keys, clock: SharedClock, kick: Arc<Notify>) -> Self {
        Jobs {
            db,
            keys,
            clock,
            kick,
        }
    }

    /// Submits validated requests in one transaction, each with the id and
    /// trace id it gets if it is new. Per-item results: an existing `(tenant,
    /// request_id)` with the spec its job was created with returns that job
    /// with `created = false`, and with another spec is refused as
    /// `RequestIdReused`; a spec naming an unknown region is refused with
    /// nothing written for it.
    pub async fn submit(
        &self,
        fence: &Fence,
        items: &[NewJob],
    ) -> Result<Vec<Result<SubmitJobResponse>>> {
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        let results = self
            .db
            .run_locked(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    tx.prefetch(&submit_reads(&keys, &fence, items)).await?;
                    fence.check(&tx).await?;
                    let mut events = EventWriter::new();
                    let mut results = Vec::with_capacity(items.len());
                    for item in items {
                        results.push(submit_one(&tx, &keys, &mut events, item, now).await?);
                    }
                    Ok::<_, GlobalError>(results)
                }
            })
            .await?;
        if results.iter().any(|r| matches!(r, Ok(r) if r.created)) {
            self.kick.notify_one();
        }
        Ok(results)
    }

    /// One job with its tasks and history.
    pub async fn get(&self, job_id: &str) -> Result<Job> {
        validate::job_id("job_id", job_id)?;
        let keys = self.keys.clone();
        self.db
            .run(|tx, _| {
                let keys = keys.clone();
                async move {
                    let Some(mut job) = read_job(&tx, &keys, job_id).await? else {
                        return Err(history::not_found(&tx, &keys, job_id).await?);
                    };
                    let stored = tx
                        .get_range(RangeOption::from(keys.tasks(job_id).range()))
                        .await?;
                    let mut by_index = std::collections::BTreeMap::new();
                    for kv in stored {
                        let task = TaskStatus::decode(kv.value.as_slice())?;
                        by_index.insert(task.index, task);
                    }
                    let count = job.spec.as_ref().map_or(0, |s| s.task_count);
                    if count > limits::MAX_TASKS_REPORTED {
                        // Regions report a job this large by its counts
                        // only: no task is stored here, and 100,000 made-up
                        // PENDING rows would cost every read and say
                        // nothing `task_counts` does not.
                        job.tasks = by_index.into_values().collect();
                        return Ok(job);
                    }
                    job.tasks = (0..count)
                        .map(|index| {
                            by_index.remove(&index).unwrap_or(TaskStatus {
                                index,
                                state: TaskState::Pending as i32,
                                region: job.region.clone(),
                                ..TaskStatus::default()
                            })
                        })
                        .collect();
                    Ok(job)
                }
            })
            .await
    }

    /// One page of jobs matching the filters, ordered by id (`listing.rs`).
    pub async fn list(&self, req: &ListJobsRequest) -> Result<ListJobsResponse> {
        listing::list(&self.db, &self.keys, req).await
    }

    /// Records a cancel request. A pending job is cancelled at once; a job
    /// held by a region gets a CANCEL assignment event and ends CANCELLED
    /// when the region reports it; a terminal job is left as it is.
    pub async fn cancel(&self, fence: &Fence, job_id: &str, reason: &str) -> Result<Job> {
        validate::job_id("job_id", job_id)?;
        validate::reason("reason", reason)?;
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        self.db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let Some(mut job) = read_job(&tx, &keys, job_id).await? else {
                        return Err(GlobalError::NotFound(format!("job {job_id}")));
                    };
                    let state = state_of(&job);
                    if lifecycle::is_terminal(state) || job.cancel_requested {
                        return Ok(lifecycle::summary(&job));
                    }
                    job.cancel_requested = true;
                    job.cancel_reason = reason.to_string();
                    job.updated_at_unix_ms = now;
                    let mut events = EventWriter::new();
                    let moving = tx.get(&keys.moving(job_id)).await?.is_some();
                    if state == JobState::Pending && !moving {
                        tx.clear(&keys.pending(job_id))?;
                        tx.clear(&keys.blocked(job_id))?;
                        let why = format!("cancelled: {reason}");
                        change_state(
                            &tx,
                            &keys,
                            &mut events,
                            &mut job,
                            JobState::Cancelled,
                            &why,
                            now,
                        )?;
                    } else {
                        if !moving && !job.region.is_empty() {
                            let cancel = AssignmentEvent {
                                kind: AssignmentEventKind::Cancel as i32,
                                job_id: job.job_id.clone(),
                                assignment_epoch: job.assignment_epoch,
                                reason: reason.to_string(),
                                at_unix_ms: now,
                                ..AssignmentEvent::default()
                            };
                            events.region(&tx, &keys, &job.region, &cancel)?;
                        }
                        events.job(
                            &tx,
                            &keys,
                            &job_event(JobEventKind::Updated, &job, None, now),
                        )?;
                    }
                    write_job(&tx, &keys, &job).await?;
                    Ok(lifecycle::summary(&job))
                }
            })
            .await
            // Jobs waiting on this one are judged again.
            .inspect(|_| self.kick.notify_one())
    }
}

/// The records every submit of a group reads (the fence, each request
/// record, each region a spec names), read in one round trip before the
/// items are judged one by one.
fn submit_reads(keys: &Keys, fence: &Fence, items: &[NewJob]) -> Vec<Vec<u8>> {
    let mut wanted = std::collections::BTreeSet::from([fence.key().to_vec()]);
    for item in items {
        let Some(spec) = &item.request.spec else {
            continue;
        };
        wanted.insert(keys.request(&spec.tenant, &item.request.request_id));
        for region in spec.allowed_regions.iter().chain(&spec.preferred_regions) {
            wanted.insert(keys.region(region));
        }
    }
    wanted.into_iter().collect()
}

async fn submit_one(
    tx: &Transaction,
    keys: &Keys,
    events: &mut EventWriter,
    item: &NewJob,
    now: u64,
) -> Result<Result<SubmitJobResponse>> {
    let (req, new_id) = (&item.request, item.job_id.as_str());
    let Some(spec) = req.spec.clone() else {
        return Ok(Err(GlobalError::invalid("spec", "required")));
    };
    let request_key = keys.request(&spec.tenant, &req.request_id);
    let existing = if on(Bug::SubmitIgnoresRequestId) {
        None
    } else {
        tx.get(&request_key).await?
    };
    if let Some(existing) = existing {
        let job_id = String::from_utf8(existing)
            .map_err(|_| GlobalError::Corrupt("request record is not UTF-8".into()))?;
        let job = read_job(tx, keys, &job_id).await?.ok_or_else(|| {
            GlobalError::Corrupt(format!("request points at missing job {job_id}"))
        })?;
        // Judged against the spec stored in the job itself, not a digest kept
        // in the request record: every job record, those written before this
        // check existed included, holds the spec it was created with, so no
        // old record has to be taken on trust, and the request record's
        // format (read by any replica of an older build) stays as it was.
        // Read in this transaction, so a racing submit that wrote the record
        // first is seen here or makes this transaction conflict and retry.
        if !same_spec(job.spec.as_ref(), &spec) {
            return Ok(Err(GlobalError::RequestIdReused {
                request_id: req.request_id.clone(),
                job_id,
            }));
        }
        return Ok(Ok(SubmitJobResponse {
            job_id,
            created: false,
            created_at_unix_ms: job.created_at_unix_ms,
        }));
    }
    for (field, list) in [
        ("spec.allowed_regions", &spec.allowed_regions),
        ("spec.preferred_regions", &spec.preferred_regions),
    ] {
        for (i, name) in list.iter().enumerate() {
            if tx.get(&keys.region(name)).await?.is_none() {
                return Ok(Err(GlobalError::invalid(
                    format!("{field}[{i}]"),
                    format!("unknown region {name:?}"),
                )));
            }
        }
    }
    let dependencies = match dependencies::resolve(tx, keys, &spec).await? {
        Ok(resolved) => resolved,
        Err(refused) => return Ok(Err(refused)),
    };
    let mut job = lifecycle::new_job(new_id.to_string(), req.request_id.clone(), spec, now);
    job.trace_id = item.trace.to_string();
    job.dependencies = dependencies;
    tx.set(&request_key, new_id.as_bytes())?;
    let verdict = gate::verdict_for(tx, keys, &job).await?;
    if let gate::Verdict::Wait(reason) = &verdict {
        job.waiting_reason.clone_from(reason);
    }
    let created = job_event(
        JobEventKind::Created,
        &job,
        lifecycle::last_transition(&job),
        now,
    );
    events.job(tx, keys, &created)?;
    // After CREATED: a dependency that can never be met fails the job now,
    // with its own event.
    if matches!(verdict, gate::Verdict::Wait(_)) {
        gate::link(tx, keys, &job).await?;
    }
    gate::place(tx, keys, events, &mut job, verdict, now)?;
    job_index::create_job(tx, keys, &job)?;
    Ok(Ok(SubmitJobResponse {
        job_id: new_id.to_string(),
        created: true,
        created_at_unix_ms: now,
    }))
}

/// Whether `stored` (a job's spec as created) and `submitted` are the same
/// spec, compared by their encodings: prost encodes fields in tag order and
/// the proto maps are `BTreeMap`s, so equal specs encode to equal bytes, and
/// a field this build does not know was dropped from both when decoded.
fn same_spec(stored: Option<&JobSpec>, submitted: &JobSpec) -> bool {
    stored.is_some_and(|stored| stored.encode_to_vec() == submitted.encode_to_vec())
}
