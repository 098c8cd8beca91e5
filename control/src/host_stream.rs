//! The server side of `AgentLink.HostAssignments`: many nodes' command
//! streams multiplexed on one call of one agent process.
//!
//! Owns the multiplexing only: which node stream an item belongs to, the
//! order of items within a node stream, each stream's credit (the agent
//! grants commands as its node reads them, so a slow node slows only its
//! own stream), batching items that are ready together into one response
//! message, and ending every node stream when the call ends. What a node
//! stream carries, and whether it may be opened at all, is the caller's
//! `open` function: exactly what its single `Assignments` call does, so
//! the two paths cannot disagree. Also owns the
//! one spelling of a node's failure inside a batched answer
//! ([`node_error`], [`node_result`], [`node_status`]), which both ends of
//! every batched agent call use.
//!
//! Must never: let one node stream's slow or failed consumer stop the
//! others' items from being read off the call, send a stream more
//! commands than its credit, reorder the items of one node stream, or
//! send anything on a stream id after its `ended` item.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use meridian_proto::LEADER_METADATA_KEY;
use meridian_proto::limits::{HOST_STREAM_WINDOW, MAX_NODES_PER_CALL};
use meridian_proto::v1::host_stream_item::Event;
use meridian_proto::v1::{
    AssignmentCommand, HostAssignmentsRequest, HostAssignmentsResponse, HostStreamItem,
    NodeAssignmentsRequest, NodeCallError,
};
use prost::Message;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tonic::Status;

/// Items waiting to be written to the call before node streams wait.
const CALL_BUFFER: usize = 4_096;

/// Most items in one response message.
pub const MAX_ITEMS_PER_MESSAGE: usize = 1_024;

/// Bytes of items past which a response message is sent without waiting
/// for more (well under the 4 MiB a gRPC client decodes by default).
pub const MAX_BYTES_PER_MESSAGE: usize = 1 << 20;

/// What `HostAssignments` answers with.
pub type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<HostAssignmentsResponse, Status>> + Send>>;

/// A node's failure as a batched answer carries it: the status its own
/// call would have had, with the leader hint.
pub fn node_error(status: &Status) -> NodeCallError {
    NodeCallError {
        code: status.code() as i32,
        message: status.message().to_string(),
        leader: status
            .metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    }
}

/// One node's entry of a batched answer, built by `make` from its
/// response or its error.
pub fn node_result<T, R>(
    answer: Result<T, Status>,
    make: impl FnOnce(Option<T>, Option<NodeCallError>) -> R,
) -> R {
    match answer {
        Ok(r) => make(Some(r), None),
        Err(s) => make(None, Some(node_error(&s))),
    }
}

/// The status a node's own call would have failed with ([`node_error`]
/// read back).
pub fn node_status(e: &NodeCallError) -> Status {
    let mut status = Status::new(tonic::Code::from(e.code), e.message.clone());
    if !e.leader.is_empty()
        && let Ok(value) = e.leader.parse()
    {
        status.metadata_mut().insert(LEADER_METADATA_KEY, value);
    }
    status
}

/// Serves one `HostAssignments` call: reads `inbound` until it ends,
/// opening each requested node stream with `open` and ending those the
/// agent closes; answers with the items of every node stream.
pub fn serve<In, O, F, S>(inbound: In, open: O) -> ResponseStream
where
    In: Stream<Item = Result<HostAssignmentsRequest, Status>> + Send + Unpin + 'static,
    O: Fn(NodeAssignmentsRequest) -> F + Send + 'static,
    F: Future<Output = Result<S, Status>> + Send + 'static,
    S: Stream<Item = Result<AssignmentCommand, Status>> + Send + Unpin + 'static,
{
    let (out, items) = mpsc::channel(CALL_BUFFER);
    tokio::spawn(drive(inbound, open, out));
    Box::pin(futures::stream::unfold(
        (items, None),
        |(mut items, held): (Items, Option<Status>)| async move {
            if let Some(status) = held {
                return Some((Err(status), (items, None)));
            }
            let first = match items.recv().await? {
                Ok(item) => item,
                Err(status) => return Some((Err(status), (items, None))),
            };
            let mut bytes = first.encoded_len();
            let mut batch = vec![first];
            let mut held = None;
            while batch.len() < MAX_ITEMS_PER_MESSAGE && bytes < MAX_BYTES_PER_MESSAGE {
                match items.try_recv() {
                    Ok(Ok(item)) => {
                        bytes += item.encoded_len();
                        batch.push(item);
                    }
                    Ok(Err(status)) => {
                        held = Some(status);
                        break;
                    }
                    Err(_) => break,
                }
            }
            Some((Ok(HostAssignmentsResponse { items: batch }), (items, held)))
        },
    ))
}

/// What node streams hand the call: an item, or the call's own end.
type Out = mpsc::Sender<Result<HostStreamItem, Status>>;
type Items = mpsc::Receiver<Result<HostStreamItem, Status>>;

/// A node stream open on the call.
struct Open {
    forwarder: AbortHandle,
    /// Commands the agent still takes on this stream.
    credit: Arc<Semaphore>,
}

async fn drive<In, O, F, S>(mut inbound: In, open: O, out: Out)
where
    In: Stream<Item = Result<HostAssignmentsRequest, Status>> + Send + Unpin + 'static,
    O: Fn(NodeAssignmentsRequest) -> F + Send + 'static,
    F: Future<Output = Result<S, Status>> + Send + 'static,
    S: Stream<Item = Result<AssignmentCommand, Status>> + Send + Unpin + 'static,
{
    // Dropping the set (the call ended) aborts every forwarder, which drops
    // its node stream: the server side sees its receiver gone.
    let mut running: JoinSet<()> = JoinSet::new();
    let mut streams: BTreeMap<u64, Open> = BTreeMap::new();
    // Which stream each forwarder serves, so a finished one is forgotten
    // without a walk of every stream (10,000 end at once when this replica
    // loses a shard).
    let mut by_task: BTreeMap<tokio::task::Id, u64> = BTreeMap::new();
    loop {
        tokio::select! {
            () = out.closed() => return,
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let task = match &done {
                    Ok((task, ())) => *task,
                    Err(e) => e.id(),
                };
                if let Some(id) = by_task.remove(&task)
                    && streams.get(&id).is_some_and(|s| s.forwarder.id() == task)
                {
                    streams.remove(&id);
                }
            }
            request = inbound.next() => {
                let Some(Ok(request)) = request else { return };
                if let Err(status) = check(&request, &streams) {
                    // A malformed call ends as a whole: the agent reopens.
                    let _ = out.send(Err(status)).await;
                    return;
                }
                for id in request.close {
                    if let Some(stream) = streams.remove(&id) {
                        stream.forwarder.abort();
                    }
                }
                for grant in request.credit {
                    if let Some(stream) = streams.get(&grant.stream_id) {
                        stream.credit.add_permits(grant.commands as usize);
                    }
                }
                for o in request.open {
                    let id = o.stream_id;
                    let opening = open(o.request.unwrap_or_default());
                    let credit = Arc::new(Semaphore::new(HOST_STREAM_WINDOW as usize));
                    let forwarder =
                        running.spawn(forward(id, opening, credit.clone(), out.clone()));
                    by_task.insert(forwarder.id(), id);
                    streams.insert(id, Open { forwarder, credit });
                }
            }
        }
    }
}

/// Why a request message ends the call: too many entries, an open
/// without its request, or a stream id already open (two streams must
/// never share an id: the agent could not tell their items apart).
fn check(request: &HostAssignmentsRequest, streams: &BTreeMap<u64, Open>) -> Result<(), Status> {
    if request.open.len() > MAX_NODES_PER_CALL
        || request.close.len() > MAX_NODES_PER_CALL
        || request.credit.len() > MAX_NODES_PER_CALL
    {
        return Err(Status::invalid_argument(
            "open, close, credit: at most 10000 per message",
        ));
    }
    let mut opening = std::collections::BTreeSet::new();
    for o in &request.open {
        if o.request.is_none() {
            return Err(Status::invalid_argument("open.request: required"));
        }
        let reopened = streams.contains_key(&o.stream_id) && !request.close.contains(&o.stream_id);
        if reopened || !opening.insert(o.stream_id) {
            return Err(Status::invalid_argument(format!(
                "open.stream_id: {} is already open on this call",
                o.stream_id
            )));
        }
    }
    Ok(())
}

/// One node stream: `opened` (or its refusal), its commands as the agent
/// grants credit for them, its end.
async fn forward<F, S>(id: u64, opening: F, credit: Arc<Semaphore>, out: Out)
where
    F: Future<Output = Result<S, Status>>,
    S: Stream<Item = Result<AssignmentCommand, Status>> + Unpin,
{
    let mut stream = match opening.await {
        Ok(s) => s,
        Err(status) => {
            let _ = out.send(Ok(ended(id, &status))).await;
            return;
        }
    };
    if out.send(Ok(item(id, Event::Opened(true)))).await.is_err() {
        return;
    }
    let end = loop {
        match stream.next().await {
            Some(Ok(command)) => {
                // Waiting here leaves the node's own pump waiting, and past
                // its buffer the region cuts the stream, as it would cut a
                // stream of its own whose reader fell behind.
                let Ok(permit) = credit.acquire().await else {
                    return;
                };
                permit.forget();
                if out
                    .send(Ok(item(id, Event::Command(command))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(Err(status)) => break status,
            None => break Status::unavailable("assignment stream ended"),
        }
    };
    let _ = out.send(Ok(ended(id, &end))).await;
}

fn item(stream_id: u64, event: Event) -> HostStreamItem {
    HostStreamItem {
        stream_id,
        event: Some(event),
    }
}

fn ended(stream_id: u64, status: &Status) -> HostStreamItem {
    item(stream_id, Event::Ended(node_error(status)))
}

#[cfg(test)]
mod tests;
