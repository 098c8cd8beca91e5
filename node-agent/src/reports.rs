//! A node's report call in flight.
//!
//! Owns the one `ReportTaskStatus` call a node has outstanding, run beside
//! the node's loop instead of inside it. While a region works through a
//! backlog of reports (a shard takeover, a burst of 100,000 task starts), a
//! report call can take seconds; a node loop waiting on it did not
//! heartbeat, so its view of the region lease was not refreshed, ran out,
//! and the node stopped the failover tasks of a region that was alive. With
//! the call beside the loop, heartbeats, commands and the region lease go
//! on while reports wait.
//!
//! Must never have two calls of one node outstanding: the outbox hands out
//! the same unacknowledged reports until a call answers.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use meridian_control::SharedClock;
use meridian_proto::v1::{ReportTaskStatusRequest, ReportTaskStatusResponse, TaskReport};

use crate::error::AgentError;
use crate::uplink::Uplink;

/// The batch sent and the region's answer (or why there is none).
pub(crate) type Answered = (
    Vec<TaskReport>,
    Result<ReportTaskStatusResponse, AgentError>,
);

/// A report call on its way.
pub(crate) type InFlight = Pin<Box<dyn Future<Output = Answered> + Send>>;

/// Sends `request` (carrying `batch`) through `uplink`, giving up after
/// `timeout` on `clock`.
pub(crate) fn send(
    uplink: Uplink,
    request: ReportTaskStatusRequest,
    batch: Vec<TaskReport>,
    clock: SharedClock,
    timeout: Duration,
) -> InFlight {
    Box::pin(async move {
        let answer = tokio::select! {
            r = uplink.report(request) => r.map_err(AgentError::from),
            () = clock.sleep(timeout) => Err(AgentError::Timeout),
        };
        (batch, answer)
    })
}

/// The answer of the call in flight, if there is one; never resolves
/// otherwise.
pub(crate) async fn answer(inflight: &mut Option<InFlight>) -> Answered {
    match inflight {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}
