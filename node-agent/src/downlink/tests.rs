use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use meridian_control::host_stream;
use meridian_proto::LEADER_METADATA_KEY;
use meridian_proto::limits::HOST_STREAM_WINDOW;
use meridian_proto::v1::HostAssignmentsResponse;
use meridian_proto::v1::agent_link_server::{AgentLink, AgentLinkServer};
use meridian_proto::v1::{
    CommandKind, HeartbeatNodesRequest, HeartbeatNodesResponse, HeartbeatRequest,
    HeartbeatResponse, RegisterNodeRequest, RegisterNodeResponse, RegisterNodesRequest,
    RegisterNodesResponse, ReportNodesRequest, ReportNodesResponse, ReportTaskStatusRequest,
    ReportTaskStatusResponse,
};
use tokio::sync::watch;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response};

use super::*;

/// A region that only serves command streams, each fed by the test: an
/// accepted node's sender waits in `nodes`; `refuse-*` nodes are refused
/// with a leader hint; `cut` ends every call in progress.
#[derive(Clone, Default)]
struct Region {
    /// When set, the call ignores credit: on the first open it answers
    /// `opened` and this many commands at once (a region that breaks the
    /// protocol).
    flood: Option<u32>,
    /// When set, the region plays an older build: `HostAssignments` is
    /// unknown to it, and each node's own `Assignments` call is served.
    older_build: bool,
    nodes: Arc<Mutex<BTreeMap<String, Commands>>>,
    calls: Arc<AtomicUsize>,
    cut: Arc<Mutex<Option<watch::Sender<bool>>>>,
}

#[tonic::async_trait]
impl AgentLink for Region {
    async fn register(
        &self,
        _: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        Err(Status::unimplemented("streams only"))
    }

    async fn register_nodes(
        &self,
        _: Request<RegisterNodesRequest>,
    ) -> Result<Response<RegisterNodesResponse>, Status> {
        Err(Status::unimplemented("streams only"))
    }

    type AssignmentsStream = ReceiverStream<Result<AssignmentCommand, Status>>;

    async fn assignments(
        &self,
        request: Request<NodeAssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        if !self.older_build {
            return Err(Status::unimplemented("host streams only"));
        }
        let (tx, rx) = mpsc::channel(NODE_BUFFER);
        self.nodes.lock().insert(request.into_inner().node_id, tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_task_status(
        &self,
        _: Request<ReportTaskStatusRequest>,
    ) -> Result<Response<ReportTaskStatusResponse>, Status> {
        Err(Status::unimplemented("streams only"))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("streams only"))
    }

    async fn heartbeat_nodes(
        &self,
        _: Request<HeartbeatNodesRequest>,
    ) -> Result<Response<HeartbeatNodesResponse>, Status> {
        Err(Status::unimplemented("streams only"))
    }

    async fn report_nodes(
        &self,
        _: Request<ReportNodesRequest>,
    ) -> Result<Response<ReportNodesResponse>, Status> {
        Err(Status::unimplemented("streams only"))
    }

    type HostAssignmentsStream = host_stream::ResponseStream;

    async fn host_assignments(
        &self,
        request: Request<tonic::Streaming<HostAssignmentsRequest>>,
    ) -> Result<Response<Self::HostAssignmentsStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.older_build {
            return Err(Status::unimplemented("unknown method HostAssignments"));
        }
        if let Some(flood) = self.flood {
            let mut inbound = request.into_inner();
            let first = inbound.next().await;
            let id = first
                .and_then(|r| r.ok())
                .and_then(|r| r.open.first().map(|o| o.stream_id))
                .ok_or_else(|| Status::invalid_argument("an open first"))?;
            let mut items = vec![HostStreamItem {
                stream_id: id,
                event: Some(Event::Opened(true)),
            }];
            items.extend((0..flood).map(|n| HostStreamItem {
                stream_id: id,
                event: Some(Event::Command(command(n))),
            }));
            let answer = futures::stream::iter([Ok(HostAssignmentsResponse { items })])
                .chain(futures::stream::pending());
            // Keep reading the agent's messages (its close) while answering.
            tokio::spawn(async move { while inbound.next().await.is_some() {} });
            return Ok(Response::new(Box::pin(answer)));
        }
        let nodes = self.nodes.clone();
        let served = host_stream::serve(request.into_inner(), move |req| {
            let nodes = nodes.clone();
            async move {
                if req.node_id.starts_with("refuse") {
                    let mut status = Status::unavailable("not the leader");
                    status.metadata_mut().insert(
                        LEADER_METADATA_KEY,
                        "http://127.0.0.1:9".parse().expect("ascii"),
                    );
                    return Err(status);
                }
                let (tx, rx) = mpsc::channel(4 * NODE_BUFFER);
                nodes.lock().insert(req.node_id, tx);
                Ok(ReceiverStream::new(rx))
            }
        });
        let (cut, mut until) = watch::channel(false);
        *self.cut.lock() = Some(cut);
        let cut_off = async move {
            let _ = until.wait_for(|cut| *cut).await;
        };
        Ok(Response::new(Box::pin(served.take_until(cut_off))))
    }
}

async fn serve(region: Region) -> Downlink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentLinkServer::new(region))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = crate::link::connect_lazy(
        &format!("http://{addr}"),
        &meridian_control::tls::Security::Insecure,
    )
    .expect("channel");
    Downlink::new(channel)
}

fn request(node: &str) -> NodeAssignmentsRequest {
    NodeAssignmentsRequest {
        node_id: node.to_string(),
        node_epoch: 1,
        cursor: Vec::new(),
    }
}

fn command(n: u32) -> AssignmentCommand {
    AssignmentCommand {
        cursor: n.to_be_bytes().to_vec(),
        kind: CommandKind::Bookmark as i32,
        ..Default::default()
    }
}

fn sender(region: &Region, node: &str) -> Commands {
    region
        .nodes
        .lock()
        .remove(node)
        .expect("opened at the region")
}

#[tokio::test]
async fn nodes_of_a_host_share_one_call_and_each_reads_only_its_own_commands() {
    let region = Region::default();
    let downlink = serve(region.clone()).await;
    let mut a = downlink.open(request("a")).await.expect("a opens");
    let mut b = downlink.open(request("b")).await.expect("b opens");
    let (to_a, to_b) = (sender(&region, "a"), sender(&region, "b"));
    for n in 0..3 {
        to_a.send(Ok(command(n))).await.expect("a open");
        to_b.send(Ok(command(100 + n))).await.expect("b open");
    }
    for n in 0..3 {
        assert_eq!(a.message().await.expect("a"), Some(command(n)));
        assert_eq!(b.message().await.expect("b"), Some(command(100 + n)));
    }
    assert_eq!(region.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refusal_reaches_the_opening_node_with_the_leader_hint() {
    let region = Region::default();
    let downlink = serve(region.clone()).await;
    let Err(status) = downlink.open(request("refuse-a")).await else {
        panic!("refused");
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        meridian_control::rpc::leader_hint(&status).as_deref(),
        Some("http://127.0.0.1:9")
    );
    // The call goes on for the others.
    let _b = downlink.open(request("b")).await.expect("b opens");
    assert_eq!(region.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_node_that_stops_reading_holds_back_only_its_own_stream_and_loses_nothing() {
    let region = Region::default();
    let downlink = serve(region.clone()).await;
    let mut slow = downlink.open(request("slow")).await.expect("opens");
    let mut quick = downlink.open(request("quick")).await.expect("opens");
    let (to_slow, to_quick) = (sender(&region, "slow"), sender(&region, "quick"));
    // Twice the credit waits at the region for the slow node.
    let total = 2 * HOST_STREAM_WINDOW;
    for n in 0..total {
        to_slow.send(Ok(command(n))).await.expect("slow open");
    }
    to_quick.send(Ok(command(7))).await.expect("quick open");
    assert_eq!(quick.message().await.expect("quick"), Some(command(7)));
    // Reading gives the credit back: every command comes, in order, and
    // the stream is never cut.
    for n in 0..total {
        assert_eq!(slow.message().await.expect("in order"), Some(command(n)));
    }
    assert!(!to_slow.is_closed(), "the slow stream is still open");
}

#[tokio::test]
async fn a_stream_sent_past_its_credit_is_cut_off_with_unavailable() {
    let region = Region {
        flood: Some(NODE_BUFFER as u32 + 1),
        ..Default::default()
    };
    let downlink = serve(region).await;
    let mut flooded = downlink.open(request("a")).await.expect("opens");
    for n in 0..NODE_BUFFER as u32 {
        assert_eq!(flooded.message().await.expect("buffered"), Some(command(n)));
    }
    let cut = flooded.message().await.expect_err("cut off");
    assert_eq!(cut.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn a_node_stream_dropped_by_its_node_is_closed_at_the_region() {
    let region = Region::default();
    let downlink = serve(region.clone()).await;
    let a = downlink.open(request("a")).await.expect("opens");
    let to_a = sender(&region, "a");
    drop(a);
    to_a.closed().await;
}

#[tokio::test]
async fn a_stream_ended_by_the_region_reads_as_its_status() {
    let region = Region::default();
    let downlink = serve(region.clone()).await;
    let mut a = downlink.open(request("a")).await.expect("opens");
    let to_a = sender(&region, "a");
    to_a.send(Ok(command(1))).await.expect("open");
    to_a.send(Err(Status::failed_precondition("epoch superseded")))
        .await
        .expect("open");
    assert_eq!(a.message().await.expect("first"), Some(command(1)));
    let end = a.message().await.expect_err("ended");
    assert_eq!(end.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn the_call_ending_ends_every_node_stream_and_the_next_open_starts_a_new_call() {
    let region = Region::default();
    let downlink = serve(region.clone()).await;
    let mut a = downlink.open(request("a")).await.expect("opens");
    let mut b = downlink.open(request("b")).await.expect("opens");
    let cut = region.cut.lock().take().expect("a call");
    cut.send(true).expect("call running");
    assert_eq!(
        a.message().await.expect_err("ended").code(),
        tonic::Code::Unavailable
    );
    assert_eq!(
        b.message().await.expect_err("ended").code(),
        tonic::Code::Unavailable
    );
    let mut again = downlink.open(request("a")).await.expect("reopens");
    assert_eq!(region.calls.load(Ordering::SeqCst), 2);
    let to_a = sender(&region, "a");
    to_a.send(Ok(command(9))).await.expect("open");
    assert_eq!(again.message().await.expect("new call"), Some(command(9)));
}

/// Nodes that open while the host call is being refused may find that
/// call ending, or start the next: each must still get the refusal's own
/// UNIMPLEMENTED (and so its own call), never a status it would wait out
/// on its retry rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_opening_on_an_older_build_each_fall_back_to_their_own_call() {
    let region = Region {
        older_build: true,
        ..Default::default()
    };
    let downlink = serve(region.clone()).await;
    let nodes: Vec<String> = (0..1000).map(|n| format!("n{n}")).collect();
    // Opens spread over the time the host call takes to be refused.
    let mut opening = Vec::new();
    for node in &nodes {
        let downlink = downlink.clone();
        let request = request(node);
        opening.push(tokio::spawn(async move { downlink.open(request).await }));
        tokio::task::yield_now().await;
    }
    for (node, open) in nodes.iter().zip(opening) {
        let open = open.await.expect("joined");
        assert!(open.is_ok(), "{node}: {:?}", open.err());
    }
    let streams: BTreeSet<String> = region.nodes.lock().keys().cloned().collect();
    let expected: BTreeSet<String> = nodes.into_iter().collect();
    assert_eq!(streams, expected, "each node on its own call");
}

/// The window the test above can only hit by chance: a call whose
/// requests closed (its driver is about to end it) while a node waits on
/// it, and the next node's open starts the next call. The waiting node
/// gets the first call's own end status.
#[tokio::test]
async fn a_node_waiting_on_an_ending_call_gets_that_calls_status_after_the_next_call_started() {
    let region = Region::default();
    let downlink = serve(region.clone()).await;
    let (opened_tx, mut waiting) = oneshot::channel();
    let (commands, _rx) = mpsc::channel(NODE_BUFFER);
    {
        let (requests, outbound) = mpsc::unbounded_channel();
        drop(outbound);
        let mut state = downlink.shared.state.lock();
        state.started = 1;
        state.next_id = 1;
        let nodes = BTreeMap::from([(
            1,
            Slot {
                opened: Some(opened_tx),
                commands,
            },
        )]);
        state.calls.insert(1, Call { requests, nodes });
    }
    let _b = downlink.open(request("b")).await.expect("b opens");
    assert_eq!(region.calls.load(Ordering::SeqCst), 1, "b started call 2");
    assert!(
        matches!(waiting.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
        "still waiting for call 1's end, not dropped with it"
    );
    downlink
        .shared
        .end_call(1, &Status::unimplemented("unknown method"));
    let status = waiting
        .await
        .expect("ended by its call")
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}
