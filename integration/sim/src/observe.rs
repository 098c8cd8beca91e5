//! What the simulation reads from the real components for the history.
//!
//! Owns the lease observer installed into `meridian-control` (takeovers and
//! fenced writes, reported by the product's own write paths, routed to the
//! run on the current thread), and the store observer that reads the
//! stores as the components left them: jobs at the global tier, node
//! capacity, placed resources and bindings in each region. Must never write
//! to a store, and never record anything it did not read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_control::lease::observe::LeaseObserver;
use meridian_control::lease::{Fence, Identity};
use meridian_proto::v1;
use meridian_regional::model::view::RegionView;
use meridian_store::{Database, RangeOption, StoreError};
use prost::Message;

use crate::history::{Event, JobState, Recorder, Resources, Scope};

/// Which lease key belongs to which authority, and where to record.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub recorder: Recorder,
    pub scopes: BTreeMap<Vec<u8>, Scope>,
}

thread_local! {
    // A simulation runs every host on the thread that drives it, so the
    // thread identifies the run (several tests may run at once).
    static CURRENT: RefCell<Option<Arc<RunContext>>> = const { RefCell::new(None) };
}

/// Routes lease observations of this thread to `ctx` until the guard drops.
pub fn enter(ctx: Arc<RunContext>) -> ContextGuard {
    install_observer();
    CURRENT.with(|c| *c.borrow_mut() = Some(ctx));
    ContextGuard(())
}

/// Ends a run's routing when dropped.
pub struct ContextGuard(());

impl Drop for ContextGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
    }
}

fn with_ctx(f: impl FnOnce(&RunContext)) {
    CURRENT.with(|c| {
        if let Some(ctx) = c.borrow().as_ref() {
            f(ctx);
        }
    });
}

struct ThreadRouted;

impl LeaseObserver for ThreadRouted {
    fn acquired(&self, key: &[u8], holder: &Identity, epoch: u64) {
        with_ctx(|ctx| {
            if let Some(scope) = ctx.scopes.get(key) {
                ctx.recorder.record(
                    &holder.name,
                    Event::LeaderChanged {
                        scope: scope.clone(),
                        holder: holder.to_string(),
                        epoch,
                    },
                );
            }
        });
    }

    fn fenced_write(&self, fence: &Fence, committed: bool) {
        with_ctx(|ctx| {
            if let Some(scope) = ctx.scopes.get(fence.key()) {
                ctx.recorder.record(
                    &fence.holder().name,
                    Event::WriteAttempt {
                        scope: scope.clone(),
                        owner: fence.holder().to_string(),
                        epoch: fence.epoch(),
                        committed,
                    },
                );
            }
        });
    }
}

fn install_observer() {
    // Installed once per process; later runs find it there.
    let _ = meridian_control::lease::observe::install(Arc::new(ThreadRouted));
}

/// The global tier's job state as the history's.
pub fn job_state(job: &v1::Job) -> JobState {
    match v1::JobState::try_from(job.state).unwrap_or(v1::JobState::Unspecified) {
        v1::JobState::Placed => JobState::Placed,
        v1::JobState::Running => JobState::Running,
        v1::JobState::Succeeded => JobState::Succeeded,
        v1::JobState::Failed => JobState::Failed(job.failure_reason.clone()),
        v1::JobState::Cancelled => JobState::Cancelled,
        v1::JobState::Unspecified | v1::JobState::Pending | v1::JobState::Routed => {
            JobState::Pending
        }
    }
}

/// Every job record of the global tier.
pub async fn read_jobs(db: &Database, keys: &meridian_global::keys::Keys) -> Vec<v1::Job> {
    let range = keys.jobs().range();
    let read = db
        .run(|tx, _| {
            let range = range.clone();
            async move {
                let kvs = tx.get_range(RangeOption::from(range)).await?;
                Ok::<_, StoreError>(kvs)
            }
        })
        .await;
    match read {
        Ok(kvs) => kvs
            .iter()
            .filter_map(|kv| v1::Job::decode(kv.value.as_slice()).ok())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "observer could not read the global jobs");
            Vec::new()
        }
    }
}

/// Records every global job as observed now.
pub async fn observe_jobs(
    db: &Database,
    keys: &meridian_global::keys::Keys,
    recorder: &Recorder,
) -> Vec<v1::Job> {
    let jobs = read_jobs(db, keys).await;
    for job in &jobs {
        recorder.record(
            "observer",
            Event::JobObserved {
                job_id: job.job_id.clone(),
                request_id: job.request_id.clone(),
                state: job_state(job),
            },
        );
    }
    jobs
}

/// What one region observation found that the next one compares against.
#[derive(Debug, Default)]
pub struct RegionMemory {
    /// `(task, attempt)` bindings already recorded.
    bound: BTreeMap<String, (u32, String)>,
}

/// Records each node's capacity and placed resources, and every binding
/// not seen before, from one snapshot of the region store.
pub async fn observe_region(
    db: &Database,
    keys: &meridian_regional::model::Keys,
    recorder: &Recorder,
    memory: &mut RegionMemory,
) {
    let view = db
        .run(|tx, _| async move { RegionView::read(&tx, keys).await })
        .await;
    let view = match view {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "observer could not read a region");
            return;
        }
    };
    let mut placed: BTreeMap<&str, Resources> = BTreeMap::new();
    for ((job_id, _), block) in &view.blocks {
        let Some(job) = view.jobs.get(job_id) else {
            continue;
        };
        for (i, task) in block.tasks.iter().enumerate() {
            if !task.is_bound() {
                continue;
            }
            let p = placed.entry(task.node.as_str()).or_default();
            p.cpu_millis = p.cpu_millis.saturating_add(job.resources.cpu);
            p.memory_bytes = p.memory_bytes.saturating_add(job.resources.mem);
            p.gpus = p.gpus.saturating_add(job.resources.gpus);
            let name = format!("{job_id}/{}", block.first + i as u32);
            let seen = (task.attempt, task.node.clone());
            if memory.bound.get(&name) != Some(&seen) {
                memory.bound.insert(name.clone(), seen);
                recorder.record(
                    "observer",
                    Event::Binding {
                        task: name,
                        node: task.node.clone(),
                        shard: task.shard,
                        epoch: task.shard_epoch,
                    },
                );
            }
        }
    }
    for (id, node) in &view.nodes {
        recorder.record(
            "observer",
            Event::NodeLoad {
                node: id.clone(),
                capacity: Resources {
                    cpu_millis: node.allocatable.cpu,
                    memory_bytes: node.allocatable.mem,
                    gpus: node.allocatable.gpus,
                },
                placed: placed.get(id.as_str()).copied().unwrap_or_default(),
            },
        );
    }
}
