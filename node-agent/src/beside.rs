//! A node's calls in flight beside its loop: its task reports and its
//! heartbeat.
//!
//! Owns the one call of each kind a node has outstanding, run beside the
//! node's loop instead of inside it. While a region works through a backlog
//! of reports (a shard takeover, a burst of 100,000 task starts), a report
//! call can take seconds; a node loop waiting on it did not heartbeat, so
//! its view of the region lease was not refreshed, ran out, and the node
//! stopped the failover tasks of a region that was alive. A heartbeat call
//! waits for the uplink's batching delay (and for the region under load); a
//! loop waiting on it held back the report of a task that had just ended by
//! as long. With both calls beside the loop, heartbeats, reports, commands
//! and the region lease go on while either waits.
//!
//! Must never have two calls of one kind outstanding for a node within a
//! session: the loop starts a call only when the previous one of its kind
//! answered, and the outbox hands out the same unacknowledged reports until
//! a call answers. (A call dropped with its session may still be sent by the
//! uplink beside the next session's first; the region judges each by epoch.)

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use meridian_control::SharedClock;

use crate::error::AgentError;

/// What a call was sent with, and the region's answer (or why there is
/// none).
pub(crate) type Answered<Tag, Resp> = (Tag, Result<Resp, AgentError>);

/// A call on its way.
pub(crate) type InFlight<Tag, Resp> = Pin<Box<dyn Future<Output = Answered<Tag, Resp>> + Send>>;

/// Runs `call`, giving up after `timeout` on `clock`; its answer comes back
/// with `tag`.
pub(crate) fn send<Tag, Resp, F>(
    tag: Tag,
    call: F,
    clock: SharedClock,
    timeout: Duration,
) -> InFlight<Tag, Resp>
where
    Tag: Send + 'static,
    F: Future<Output = Result<Resp, tonic::Status>> + Send + 'static,
{
    Box::pin(async move {
        let answer = tokio::select! {
            r = call => r.map_err(AgentError::from),
            () = clock.sleep(timeout) => Err(AgentError::Timeout),
        };
        (tag, answer)
    })
}

/// The answer of the call in flight, if there is one; never resolves
/// otherwise.
pub(crate) async fn answer<Tag, Resp>(
    inflight: &mut Option<InFlight<Tag, Resp>>,
) -> Answered<Tag, Resp> {
    match inflight {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}
