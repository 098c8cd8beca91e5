//! The command streams of a host's nodes, on one call per replica.
//!
//! Owns the host's `HostAssignments` call to one replica endpoint. A node
//! opens its command stream through the downlink of the replica it talks
//! to and reads it as it would read its own `Assignments` stream: the
//! region admits or refuses it the same way, and the same statuses end it.
//! The call is started by the first node that needs it and carries every
//! node stream of the host to that replica; a host of 10,000 simulated
//! nodes costs the region one HTTP/2 stream, not 10,000. The call ending
//! (the replica went away, the connection broke) ends every node stream on
//! it with the call's status, and each node comes back on its own schedule
//! (its retry rule, with jitter), which starts the next call.
//!
//! The reader of the call never waits for a node. Each node stream has a
//! credit of commands (`HOST_STREAM_WINDOW`), given back as the node reads
//! them, and the region sends no more: a busy node loop slows its own
//! stream only, as HTTP/2 flow control did for a stream of its own, and
//! never holds back the others' commands or the connection's window,
//! which the host's heartbeats share. A node stream whose buffer fills
//! anyway (a region that ignores the credit) is cut off: the node resumes
//! from its cursor.
//!
//! A replica of an older build does not serve `HostAssignments`; each node
//! then opens its own `Assignments` call, as agents did before
//! (`crate::skew`).
//!
//! Must never: give a node another node's items, deliver anything on a
//! stream after its end, or keep a stream open at the region that no node
//! reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_control::host_stream::node_status;
use meridian_proto::limits::HOST_STREAM_WINDOW;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use meridian_proto::v1::host_stream_item::Event;
use meridian_proto::v1::{
    AssignmentCommand, HostAssignmentsRequest, HostStreamItem, HostStreamOpen,
    NodeAssignmentsRequest, StreamCredit,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use crate::skew::Skew;

/// Room for a stream's whole credit and its end: a region that keeps to
/// the credit never finds it full.
const NODE_BUFFER: usize = HOST_STREAM_WINDOW as usize + 1;

/// Commands a node reads before the credit for them goes back to the
/// region (half the window: the region is never held up while the node
/// keeps reading).
const GRANT_EVERY: u32 = HOST_STREAM_WINDOW / 2;

type Commands = mpsc::Sender<Result<AssignmentCommand, Status>>;

/// The host's command streams to one replica endpoint.
#[derive(Clone)]
pub struct Downlink {
    shared: Arc<Shared>,
}

struct Shared {
    client: AgentLinkClient<Channel>,
    state: Mutex<State>,
    /// Whether the replica serves `HostAssignments` (an older build does
    /// not: then each node makes its own `Assignments` call).
    skew: Skew,
}

#[derive(Default)]
struct State {
    /// The calls not yet ended by their drivers, by number; new streams
    /// open on the last one while it takes requests. An earlier call whose
    /// requests have closed is ending: its nodes stay here until its
    /// driver ends them with the call's own status (which may be the
    /// UNIMPLEMENTED of an older build, the one status that sends a node
    /// to its own call).
    calls: BTreeMap<u64, Call>,
    /// Calls started so far; tells a finished call's driver from the next.
    started: u64,
    /// Stream ids are never reused, across calls too.
    next_id: u64,
}

struct Call {
    requests: mpsc::UnboundedSender<HostAssignmentsRequest>,
    nodes: BTreeMap<u64, Slot>,
}

struct Slot {
    /// Told the region's admission once, then `None`.
    opened: Option<oneshot::Sender<Result<(), Status>>>,
    commands: Commands,
}

impl Downlink {
    /// The downlink over `channel` (no call is made until a node opens).
    pub fn new(channel: Channel) -> Downlink {
        Downlink {
            shared: Arc::new(Shared {
                client: AgentLinkClient::new(channel),
                state: Mutex::new(State::default()),
                skew: Skew::default(),
            }),
        }
    }

    /// Opens a node's command stream: `Ok` once the region accepted it,
    /// the status its own `Assignments` call would have been refused with
    /// otherwise. On a replica of an older build (crate::skew), the node's
    /// own `Assignments` call.
    pub async fn open(&self, request: NodeAssignmentsRequest) -> Result<NodeStream, Status> {
        if self.shared.skew.host_call() {
            match self.open_on_host(request.clone()).await {
                Err(status) if self.shared.skew.older_build(&status) => {}
                opened => return opened,
            }
        }
        let mut client = self.shared.client.clone();
        let stream = client.assignments(request).await?.into_inner();
        Ok(NodeStream(Inner::Single(stream)))
    }

    async fn open_on_host(&self, request: NodeAssignmentsRequest) -> Result<NodeStream, Status> {
        let (opened_tx, opened) = oneshot::channel();
        let (commands, rx) = mpsc::channel(NODE_BUFFER);
        let (id, number) = {
            let mut state = self.shared.state.lock();
            state.next_id += 1;
            let id = state.next_id;
            let open = HostAssignmentsRequest {
                open: vec![HostStreamOpen {
                    stream_id: id,
                    request: Some(request),
                }],
                ..Default::default()
            };
            let taking = state
                .calls
                .last_key_value()
                .filter(|(_, call)| !call.requests.is_closed())
                .map(|(&number, _)| number);
            let number = taking.unwrap_or_else(|| {
                state.started += 1;
                state.started
            });
            let call = state
                .calls
                .entry(number)
                .or_insert_with(|| self.start(number));
            // Should the call have closed since, the open is not sent and
            // the node waits with the others for the call's end status.
            let _ = call.requests.send(open);
            call.nodes.insert(
                id,
                Slot {
                    opened: Some(opened_tx),
                    commands,
                },
            );
            (id, number)
        };
        // Built before the wait, so a caller that gives up on the open
        // (its deadline) closes the stream at the region by dropping it.
        let stream = NodeStream(Inner::Host(HostStream {
            id,
            call: number,
            rx,
            read: 0,
            shared: self.shared.clone(),
        }));
        match opened.await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::unavailable("the host command stream has ended")),
        }
    }

    /// Starts call `number`: its driver makes the call and dispatches what
    /// comes back until it ends.
    fn start(&self, number: u64) -> Call {
        let (requests, outbound) = mpsc::unbounded_channel();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut client = shared.client.clone();
            let end = match client
                .host_assignments(UnboundedReceiverStream::new(outbound))
                .await
            {
                Err(status) => status,
                Ok(response) => {
                    let mut inbound = response.into_inner();
                    loop {
                        match inbound.message().await {
                            Ok(Some(message)) => shared.dispatch(number, message.items),
                            Ok(None) => {
                                break Status::unavailable("the host command stream ended");
                            }
                            Err(status) => break status,
                        }
                    }
                }
            };
            shared.end_call(number, &end);
        });
        Call {
            requests,
            nodes: BTreeMap::new(),
        }
    }
}

impl Shared {
    /// Hands each item to its node, without waiting for any.
    fn dispatch(&self, number: u64, items: Vec<HostStreamItem>) {
        let mut state = self.state.lock();
        let Some(call) = state.calls.get_mut(&number) else {
            return;
        };
        let mut cut = Vec::new();
        for item in items {
            let id = item.stream_id;
            // Items of a stream already closed here may still be on the way.
            let Some(slot) = call.nodes.get_mut(&id) else {
                continue;
            };
            match item.event {
                Some(Event::Opened(_)) => {
                    if let Some(opened) = slot.opened.take() {
                        let _ = opened.send(Ok(()));
                    }
                }
                Some(Event::Command(command)) => {
                    let refused = slot.commands.try_send(Ok(command)).is_err();
                    // Full, or nobody reads it any more: the node resumes
                    // from its cursor on a new stream.
                    if refused {
                        call.nodes.remove(&id);
                        cut.push(id);
                    }
                }
                Some(Event::Ended(error)) => {
                    if let Some(slot) = call.nodes.remove(&id) {
                        slot.end(node_status(&error));
                    }
                }
                None => {}
            }
        }
        if !cut.is_empty() {
            let _ = call.requests.send(HostAssignmentsRequest {
                close: cut,
                ..Default::default()
            });
        }
    }

    /// Ends every node stream of call `number` with its end status.
    fn end_call(&self, number: u64, end: &Status) {
        let Some(call) = self.state.lock().calls.remove(&number) else {
            return;
        };
        let nodes = call.nodes;
        for slot in nodes.into_values() {
            slot.end(end.clone());
        }
    }

    /// The node is done with stream `id`: the region stops it.
    fn close(&self, number: u64, id: u64) {
        let mut state = self.state.lock();
        if let Some(call) = state.calls.get_mut(&number)
            && call.nodes.remove(&id).is_some()
        {
            let _ = call.requests.send(HostAssignmentsRequest {
                close: vec![id],
                ..Default::default()
            });
        }
    }

    /// The node read `commands` more of stream `id`: the region may send
    /// as many more.
    fn grant(&self, number: u64, id: u64, commands: u32) {
        let state = self.state.lock();
        if let Some(call) = state.calls.get(&number)
            && call.nodes.contains_key(&id)
        {
            let _ = call.requests.send(HostAssignmentsRequest {
                credit: vec![StreamCredit {
                    stream_id: id,
                    commands,
                }],
                ..Default::default()
            });
        }
    }
}

impl Slot {
    fn end(self, status: Status) {
        match self.opened {
            Some(opened) => {
                let _ = opened.send(Err(status));
            }
            // A full stream just drops: the node reads "fell behind".
            None => {
                let _ = self.commands.try_send(Err(status));
            }
        }
    }
}

/// One node's command stream: on the host's call, or on the node's own
/// call where the replica serves no host call.
pub struct NodeStream(Inner);

enum Inner {
    Host(HostStream),
    Single(tonic::Streaming<AssignmentCommand>),
}

impl NodeStream {
    /// The next command; the stream's end status once it ended.
    pub async fn message(&mut self) -> Result<Option<AssignmentCommand>, Status> {
        match &mut self.0 {
            Inner::Host(stream) => stream.message().await,
            Inner::Single(stream) => stream.message().await,
        }
    }
}

/// A node's stream on the host's call.
struct HostStream {
    id: u64,
    call: u64,
    rx: mpsc::Receiver<Result<AssignmentCommand, Status>>,
    /// Commands read since credit for them was last given back.
    read: u32,
    shared: Arc<Shared>,
}

impl HostStream {
    async fn message(&mut self) -> Result<Option<AssignmentCommand>, Status> {
        match self.rx.recv().await {
            Some(Ok(command)) => {
                self.read += 1;
                if self.read >= GRANT_EVERY {
                    self.shared.grant(self.call, self.id, self.read);
                    self.read = 0;
                }
                Ok(Some(command))
            }
            Some(Err(status)) => Err(status),
            None => Err(Status::unavailable(
                "the node's command stream fell behind: reopen from the last cursor",
            )),
        }
    }
}

impl Drop for HostStream {
    fn drop(&mut self) {
        self.shared.close(self.call, self.id);
    }
}

#[cfg(test)]
mod tests;
