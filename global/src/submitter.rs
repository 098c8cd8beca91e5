//! Group commit of submits: concurrent `SubmitJob` calls share one
//! transaction.
//!
//! Owns the queue between the API handlers and [`Jobs::submit`]: while one
//! transaction commits, new submits gather, and the next transaction takes
//! them all (up to a batch limit), the way FoundationDB's commit proxies
//! batch commits. Each caller still gets its own result. It is also the
//! admission point: a submit finding the queue full, or a batch finding
//! [`MAX_BATCHES_IN_FLIGHT`] batches ahead of it, is refused at once as
//! `Overloaded` (RESOURCE_EXHAUSTED, retryable) instead of waiting, so an
//! open-loop flood cannot pile up handlers until the leader's own lease
//! renewals miss their deadline. It must never answer a caller before the
//! transaction holding its job has committed.

use std::sync::Arc;

use meridian_control::trace::TraceId;
use meridian_proto::v1::{SubmitJobRequest, SubmitJobResponse};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::{GlobalError, Result};
use crate::jobs::{Jobs, NewJob};
use crate::leader::Leadership;

/// Most submits in one transaction.
pub const MAX_GROUP: usize = 500;

/// Unary submits waiting for a transaction at most (four groups).
pub const MAX_WAITING: usize = 4 * MAX_GROUP;

/// `SubmitJobs` calls committing at once at most.
pub const MAX_BATCHES_IN_FLIGHT: usize = 16;

type Reply = oneshot::Sender<Result<SubmitJobResponse>>;

/// Handle to the group-commit loop.
#[derive(Clone)]
pub struct Submitter {
    queue: mpsc::Sender<((SubmitJobRequest, TraceId), Reply)>,
    batches: Arc<Semaphore>,
}

impl Submitter {
    /// Starts the loop; it ends when every handle is dropped.
    pub fn start(jobs: Jobs, leadership: Arc<Leadership>) -> Self {
        let (queue, mut rx) = mpsc::channel::<((SubmitJobRequest, TraceId), Reply)>(MAX_WAITING);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                metrics::gauge!("meridian_global_submit_queue_depth").set(rx.len() as f64);
                let (requests, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                match submit_group(&jobs, &leadership, requests).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                    Err(err) => {
                        for reply in replies {
                            let _ = reply.send(Err(err.clone()));
                        }
                    }
                }
            }
        });
        Submitter {
            queue,
            batches: Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT)),
        }
    }

    /// A place for one `SubmitJobs` call, held while it commits; refused
    /// when [`MAX_BATCHES_IN_FLIGHT`] are committing.
    pub fn batch_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.batches.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("meridian_global_submits_shed_total", "call" => "batch").increment(1);
            GlobalError::Overloaded(format!(
                "{MAX_BATCHES_IN_FLIGHT} batches are committing; retry with backoff"
            ))
        })
    }

    /// Submits one validated request, whose job gets `trace` as its trace
    /// id, and waits for its commit.
    pub async fn submit(&self, req: SubmitJobRequest, trace: TraceId) -> Result<SubmitJobResponse> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(((req, trace), reply))
            .map_err(|e| match e {
                TrySendError::Full(_) => {
                    metrics::counter!("meridian_global_submits_shed_total", "call" => "unary")
                        .increment(1);
                    GlobalError::Overloaded(format!(
                        "{MAX_WAITING} submits are waiting; retry with backoff"
                    ))
                }
                TrySendError::Closed(_) => GlobalError::NotLeader { leader: None },
            })?;
        answer
            .await
            .map_err(|_| GlobalError::NotLeader { leader: None })?
    }
}

/// Submits validated requests, each with its job's trace id, as one
/// transaction (fenced by the leader).
pub async fn submit_group(
    jobs: &Jobs,
    leadership: &Leadership,
    requests: Vec<(SubmitJobRequest, TraceId)>,
) -> Result<Vec<Result<SubmitJobResponse>>> {
    let fence = leadership.fence().await?;
    let items: Vec<NewJob> = requests
        .into_iter()
        .map(|(request, trace)| NewJob {
            job_id: leadership.job_id(&fence),
            request,
            trace,
        })
        .collect();
    let results = jobs.submit(&fence, &items).await;
    metrics::histogram!("meridian_global_submit_group_size").record(items.len() as f64);
    results
}
