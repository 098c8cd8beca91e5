//! `ListJobs`: one page of jobs matching a request's filters, ordered by
//! job id, with an opaque token for the next page.
//!
//! Owns the choice of what a list reads and the merge of its ranges. A
//! request filtered by tenant, state or region reads the secondary indexes
//! (`job_index.rs`): one range per state asked for (every state when none
//! is), each ordered by job id, merged in id order; a round reads a chunk
//! of each range, and only ids up to the smallest last id of a range that
//! returned a full chunk are taken, so nothing of a range not yet read can
//! sort before what is returned. The records of the candidates are read in
//! the same transaction and checked against every filter again, the label
//! selector among them (it has no index). A request with no such filter,
//! and every request while the indexes of an older store are still being
//! built, scans the job records in id order. Either way one call examines
//! at most [`BUDGET`] jobs: a sparse label selector returns a short page
//! with a token to continue. It must never write, and never return a job
//! twice or skip one across the pages of one listing.

use std::collections::BTreeSet;

use meridian_proto::v1::{Job, JobState, ListJobsRequest, ListJobsResponse};
use meridian_store::{Database, RangeOption, Subspace};
use prost::Message;

use crate::error::{GlobalError, Result};
use crate::job_index;
use crate::keys::Keys;
use crate::lifecycle::state_of;
use crate::validate;

/// Jobs one call examines at most.
pub const BUDGET: usize = 20_000;

/// Index entries (or records) read per range and round at most.
const CHUNK: usize = 500;

/// Every state a job can be in, for a request that names none.
const ALL_STATES: [JobState; 8] = [
    JobState::Unspecified,
    JobState::Pending,
    JobState::Routed,
    JobState::Placed,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

/// One page of the jobs `req` asks for.
pub async fn list(db: &Database, keys: &Keys, req: &ListJobsRequest) -> Result<ListJobsResponse> {
    let page_size = validate::page_size(req.page_size)?;
    let states = validate::states("states", &req.states)?;
    validate::selector("label_selector", &req.label_selector)?;
    let after = decode_page_token(&req.page_token)?;
    let query = Query {
        req,
        states: &states,
        page_size,
    };
    let filtered = !req.tenant.is_empty() || !states.is_empty() || !req.region.is_empty();
    if filtered && indexes_ready(db, keys).await? {
        from_indexes(db, &sources(keys, req, &states), &query, keys, after).await
    } else {
        scan(db, keys, &query, after).await
    }
}

/// What a call is asked for.
struct Query<'a> {
    req: &'a ListJobsRequest,
    states: &'a [JobState],
    page_size: usize,
}

impl Query<'_> {
    fn matches(&self, job: &Job) -> bool {
        let spec = job.spec.clone().unwrap_or_default();
        let req = self.req;
        (req.tenant.is_empty() || spec.tenant == req.tenant)
            && (self.states.is_empty() || self.states.contains(&state_of(job)))
            && (req.region.is_empty() || job.region == req.region)
            && validate::matches(&spec.labels, &req.label_selector)
    }

    /// `job` as a list shows it.
    fn shown(&self, mut job: Job) -> Job {
        if !self.req.include_tasks {
            job.history.clear();
        }
        job
    }
}

async fn indexes_ready(db: &Database, keys: &Keys) -> Result<bool> {
    db.run(|tx, _| {
        let keys = keys.clone();
        async move { job_index::ready(&tx, &keys).await }
    })
    .await
}

/// The index ranges whose union is exactly the jobs matching the tenant,
/// states and region of `req` (at least one of them is set).
fn sources(keys: &Keys, req: &ListJobsRequest, states: &[JobState]) -> Vec<Subspace> {
    let wanted: BTreeSet<i32> = if states.is_empty() {
        ALL_STATES.iter().map(|s| *s as i32).collect()
    } else {
        states.iter().map(|s| *s as i32).collect()
    };
    let (tenant, region) = (req.tenant.as_str(), req.region.as_str());
    match (tenant.is_empty(), region.is_empty()) {
        // A tenant alone has an index of its own: one range, not eight.
        (false, true) if states.is_empty() => vec![keys.jobs_by_tenant(tenant)],
        (false, true) => wanted
            .iter()
            .map(|s| keys.jobs_by_tenant_state(tenant, *s))
            .collect(),
        (true, true) => wanted.iter().map(|s| keys.jobs_by_state(*s)).collect(),
        (true, false) => wanted
            .iter()
            .map(|s| keys.jobs_by_region_state(region, *s))
            .collect(),
        (false, false) => wanted
            .iter()
            .map(|s| keys.jobs_by_tenant_region_state(tenant, region, *s))
            .collect(),
    }
}

/// What one round of [`from_indexes`] read.
struct Round {
    /// Candidates that match, in id order.
    jobs: Vec<Job>,
    /// The last id this round covers (every id up to it was read).
    through: Option<String>,
    /// Every range ended within this round.
    exhausted: bool,
    /// Candidates examined.
    examined: usize,
}

async fn from_indexes(
    db: &Database,
    sources: &[Subspace],
    query: &Query<'_>,
    keys: &Keys,
    mut after: Option<String>,
) -> Result<ListJobsResponse> {
    let chunk = query.page_size.clamp(1, CHUNK);
    let mut jobs = Vec::new();
    let mut budget = BUDGET;
    loop {
        let round = db
            .run(|tx, _| {
                let (keys, after) = (keys.clone(), after.clone());
                async move {
                    let mut ids = BTreeSet::new();
                    // The smallest last id of a range cut short by the
                    // chunk: beyond it a range may hold ids not read yet.
                    let mut bound: Option<String> = None;
                    for source in sources {
                        let (begin, end) = source.range();
                        let from = match &after {
                            Some(id) => {
                                let mut key = source.pack(&(id.as_str(),));
                                key.push(0);
                                key
                            }
                            None => begin,
                        };
                        let rows = tx
                            .get_range(RangeOption::new(from, end).limit(chunk))
                            .await?;
                        let full = rows.len() == chunk;
                        let mut last = None;
                        for kv in &rows {
                            let (id,): (String,) = source
                                .unpack(&kv.key)
                                .map_err(|e| GlobalError::Corrupt(format!("job index key: {e}")))?;
                            last = Some(id.clone());
                            ids.insert(id);
                        }
                        if full && let Some(last) = last {
                            bound = Some(match bound {
                                Some(b) if b <= last => b,
                                _ => last,
                            });
                        }
                    }
                    let candidates: Vec<String> = ids
                        .into_iter()
                        .filter(|id| bound.as_ref().is_none_or(|b| id <= b))
                        .collect();
                    let wanted: Vec<Vec<u8>> = candidates.iter().map(|id| keys.job(id)).collect();
                    let records = tx.get_many(&wanted).await?;
                    let mut jobs = Vec::new();
                    for raw in records.into_iter().flatten() {
                        let job = Job::decode(raw.as_slice())?;
                        if query.matches(&job) {
                            jobs.push(job);
                        }
                    }
                    Ok::<_, GlobalError>(Round {
                        jobs,
                        examined: candidates.len(),
                        through: candidates.last().cloned(),
                        exhausted: bound.is_none(),
                    })
                }
            })
            .await?;
        for job in round.jobs {
            jobs.push(query.shown(job));
            if jobs.len() == query.page_size {
                return Ok(page(jobs, true));
            }
        }
        if round.exhausted {
            return Ok(page(jobs, false));
        }
        budget = budget.saturating_sub(round.examined);
        after = round.through;
        if budget == 0 {
            let token = after.as_deref().map(encode_page_token);
            return Ok(ListJobsResponse {
                jobs,
                next_page_token: token.unwrap_or_default(),
            });
        }
    }
}

/// The page of `jobs`, with a token after its last job when more may
/// follow.
fn page(jobs: Vec<Job>, more: bool) -> ListJobsResponse {
    let token = if more {
        jobs.last().map(|j| encode_page_token(&j.job_id))
    } else {
        None
    };
    ListJobsResponse {
        jobs,
        next_page_token: token.unwrap_or_default(),
    }
}

/// Reads the job records in id order and filters them.
async fn scan(
    db: &Database,
    keys: &Keys,
    query: &Query<'_>,
    after: Option<String>,
) -> Result<ListJobsResponse> {
    let subspace = keys.jobs();
    let (begin, end) = subspace.range();
    let mut from = match &after {
        Some(id) => {
            let mut k = keys.job(id);
            k.push(0);
            k
        }
        None => begin,
    };
    let mut jobs = Vec::new();
    let mut budget = BUDGET;
    loop {
        let chunk = db
            .run(|tx, _| {
                let (from, end) = (from.clone(), end.clone());
                async move { tx.get_range(RangeOption::new(from, end).limit(CHUNK)).await }
            })
            .await?;
        let exhausted = chunk.len() < CHUNK;
        let mut last = None;
        for kv in chunk {
            budget = budget.saturating_sub(1);
            from = kv.key.clone();
            from.push(0);
            last = Some(kv.key);
            let job = Job::decode(kv.value.as_slice())?;
            if !query.matches(&job) {
                continue;
            }
            jobs.push(query.shown(job));
            if jobs.len() == query.page_size {
                return Ok(page(jobs, true));
            }
        }
        if exhausted {
            return Ok(page(jobs, false));
        }
        if budget == 0 {
            let Some(last) = last else {
                return Ok(page(jobs, false));
            };
            let (id,): (String,) = subspace
                .unpack(&last)
                .map_err(|e| GlobalError::Corrupt(format!("job key: {e}")))?;
            return Ok(ListJobsResponse {
                jobs,
                next_page_token: encode_page_token(&id),
            });
        }
    }
}

const TOKEN_PREFIX: &str = "p1.";

/// The token of a page that ends at `job_id`: the same for the scan and
/// the indexes, so a listing goes on across the end of a backfill.
fn encode_page_token(job_id: &str) -> String {
    let hex: String = job_id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

fn decode_page_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || GlobalError::invalid("page_token", "not a token issued by this server");
    let hex = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>>>()?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}
