//! Registrations, heartbeats and task reports of a host's nodes, batched
//! per replica.
//!
//! Owns every unary call a node makes. A node hands its registration, its
//! heartbeat or its reports to the uplink of the replica it talks to and
//! awaits its own answer; the uplink sends whatever is queued in one
//! `RegisterNodes`, `HeartbeatNodes` or `ReportNodes` call as soon as the
//! previous call of its kind is answered, so an idle uplink sends at once
//! and a busy one batches
//! by itself (a host of 1,000 simulated nodes makes a few calls a second,
//! not thousands). Heartbeats, whose timing does not matter to a few tens of
//! milliseconds, linger [`HEARTBEAT_LINGER`] first so that the beats of
//! many nodes share a call even when nothing else is going on;
//! registrations and reports go at once (a whole host booting registers in
//! a few calls). The linger is a batching delay, not a time the agent reasons
//! about, so it runs on the runtime's timer rather than the agent's clock
//! (a manual clock in tests would hold the beat for good). A node's own
//! failure comes back to that node alone, as the status its single call
//! would have had (with the leader hint). A replica of an older build that
//! serves only the per-node calls gets those instead (`crate::skew`).
//!
//! Must never change or drop the request of a node still waiting for its
//! answer, or answer a node with another node's result.

use std::sync::Arc;

use meridian_control::host_stream::node_status;
use meridian_proto::limits::MAX_NODES_PER_CALL;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use meridian_proto::v1::{
    HeartbeatNodesRequest, HeartbeatRequest, HeartbeatResponse, NodeCallError, NodeHeartbeatResult,
    NodeRegisterResult, NodeReportResult, RegisterNodeRequest, RegisterNodeResponse,
    RegisterNodesRequest, ReportNodesRequest, ReportTaskStatusRequest, ReportTaskStatusResponse,
};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::transport::Channel;

use crate::skew::Skew;

type Reply<T> = oneshot::Sender<Result<T, Status>>;

/// How long a heartbeat waits for others to share its call.
pub const HEARTBEAT_LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// The batchers of one replica endpoint.
#[derive(Clone)]
pub struct Uplink {
    registrations: Queue<RegisterNodeRequest, RegisterNodeResponse>,
    heartbeats: Queue<HeartbeatRequest, HeartbeatResponse>,
    reports: Queue<ReportTaskStatusRequest, ReportTaskStatusResponse>,
}

impl Uplink {
    /// Starts the batchers of `channel`.
    pub fn start(channel: Channel) -> Uplink {
        let client = AgentLinkClient::new(channel);
        let (registrations, reg_rx) = mpsc::unbounded_channel();
        let (heartbeats, hb_rx) = mpsc::unbounded_channel();
        let (reports, rep_rx) = mpsc::unbounded_channel();
        spawn_batcher(
            reg_rx,
            None,
            with(&client, |mut c, nodes| async move {
                let call = c.register_nodes(RegisterNodesRequest { nodes });
                Ok(parts(call.await?.into_inner().results))
            }),
            with(&client, |mut c, node| async move {
                Ok(c.register(node).await?.into_inner())
            }),
        );
        spawn_batcher(
            hb_rx,
            Some(HEARTBEAT_LINGER),
            with(&client, |mut c, nodes| async move {
                let call = c.heartbeat_nodes(HeartbeatNodesRequest { nodes });
                Ok(parts(call.await?.into_inner().results))
            }),
            with(&client, |mut c, node| async move {
                Ok(c.heartbeat(node).await?.into_inner())
            }),
        );
        spawn_batcher(
            rep_rx,
            None,
            with(&client, |mut c, nodes| async move {
                let call = c.report_nodes(ReportNodesRequest { nodes });
                Ok(parts(call.await?.into_inner().results))
            }),
            with(&client, |mut c, node| async move {
                Ok(c.report_task_status(node).await?.into_inner())
            }),
        );
        Uplink {
            registrations,
            heartbeats,
            reports,
        }
    }

    /// Sends one node's registration with the others' and waits for its
    /// answer.
    pub async fn register(&self, req: RegisterNodeRequest) -> Result<RegisterNodeResponse, Status> {
        ask(&self.registrations, req, "registration").await
    }

    /// Sends one node's heartbeat with the others' and waits for its answer.
    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatResponse, Status> {
        ask(&self.heartbeats, req, "heartbeat").await
    }

    /// Sends one node's reports with the others' and waits for its answer.
    pub async fn report(
        &self,
        req: ReportTaskStatusRequest,
    ) -> Result<ReportTaskStatusResponse, Status> {
        ask(&self.reports, req, "reports").await
    }
}

type Client = AgentLinkClient<Channel>;

/// A call made on a clone of `client` (tonic's calls take `&mut self`).
fn with<T, F, Fut>(client: &Client, call: F) -> impl Fn(T) -> Fut + Clone + Send + Sync + 'static
where
    F: Fn(Client, T) -> Fut + Clone + Send + Sync + 'static,
{
    let client = client.clone();
    move |arg| call(client.clone(), arg)
}

/// Starts the batcher of one kind of call: the host-level call `host`
/// where the replica serves it, the per-node call `single` where it is of
/// an older build (crate::skew), each endpoint and kind finding that out
/// for itself.
fn spawn_batcher<Req, Resp, H, HF, S, SF>(
    rx: mpsc::UnboundedReceiver<(Req, Reply<Resp>)>,
    linger: Option<std::time::Duration>,
    host: H,
    single: S,
) where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
    H: Fn(Vec<Req>) -> HF + Clone + Send + Sync + 'static,
    HF: Future<Output = Result<Vec<Result<Resp, Status>>, Status>> + Send,
    S: Fn(Req) -> SF + Clone + Send + Sync + 'static,
    SF: Future<Output = Result<Resp, Status>> + Send,
{
    let skew = Arc::new(Skew::default());
    tokio::spawn(batch(rx, linger, move |requests| {
        let (skew, host, single) = (skew.clone(), host.clone(), single.clone());
        async move { skew.call(requests, host, single).await }
    }));
}

type Queue<Req, Resp> = mpsc::UnboundedSender<(Req, Reply<Resp>)>;

/// Queues one node's request for the next call of its kind and waits for
/// that node's answer.
async fn ask<Req, Resp>(queue: &Queue<Req, Resp>, req: Req, what: &str) -> Result<Resp, Status> {
    let (tx, rx) = oneshot::channel();
    queue
        .send((req, tx))
        .map_err(|_| Status::unavailable("the uplink has stopped"))?;
    rx.await
        .map_err(|_| Status::unavailable(format!("the uplink dropped the {what}")))?
}

/// One node's entry of a batched answer: its response or its error.
trait Part {
    type Response;
    fn split(self) -> (Option<Self::Response>, Option<NodeCallError>);
}

impl Part for NodeRegisterResult {
    type Response = RegisterNodeResponse;
    fn split(self) -> (Option<RegisterNodeResponse>, Option<NodeCallError>) {
        (self.response, self.error)
    }
}

impl Part for NodeHeartbeatResult {
    type Response = HeartbeatResponse;
    fn split(self) -> (Option<HeartbeatResponse>, Option<NodeCallError>) {
        (self.response, self.error)
    }
}

impl Part for NodeReportResult {
    type Response = ReportTaskStatusResponse;
    fn split(self) -> (Option<ReportTaskStatusResponse>, Option<NodeCallError>) {
        (self.response, self.error)
    }
}

/// Every node's answer of a batched call, in request order.
fn parts<P: Part>(results: Vec<P>) -> Vec<Result<P::Response, Status>> {
    results
        .into_iter()
        .map(|p| {
            let (response, error) = p.split();
            one(response, error)
        })
        .collect()
}

/// One node's part of a batched answer.
fn one<T>(response: Option<T>, error: Option<NodeCallError>) -> Result<T, Status> {
    match (response, error) {
        (_, Some(e)) => Err(node_status(&e)),
        (Some(r), None) => Ok(r),
        (None, None) => Err(Status::internal(
            "the region answered nothing for this node",
        )),
    }
}

/// Sends what is queued, one call at a time, until every sender is gone.
async fn batch<Req, Resp, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<(Req, Reply<Resp>)>,
    linger: Option<std::time::Duration>,
    send: F,
) where
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = Result<Vec<Result<Resp, Status>>, Status>>,
{
    while let Some(first) = rx.recv().await {
        if let Some(d) = linger {
            tokio::time::sleep(d).await;
        }
        let mut queued = vec![first];
        while queued.len() < MAX_NODES_PER_CALL {
            match rx.try_recv() {
                Ok(q) => queued.push(q),
                Err(_) => break,
            }
        }
        // A node that stopped waiting (its call's deadline passed while the
        // previous batch was out) asks again itself: sending its old request
        // too would only make a slow region slower.
        queued.retain(|(_, reply)| !reply.is_closed());
        if queued.is_empty() {
            continue;
        }
        let (reqs, replies): (Vec<Req>, Vec<Reply<Resp>>) = queued.into_iter().unzip();
        match send(reqs).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for reply in replies {
                    let r = results.next().unwrap_or_else(|| {
                        Err(Status::internal(
                            "the region answered fewer nodes than asked",
                        ))
                    });
                    let _ = reply.send(r);
                }
            }
            Err(status) => {
                for reply in replies {
                    let _ = reply.send(Err(status.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_own_error_comes_back_as_its_status_with_the_leader_hint() {
        let error = NodeCallError {
            code: tonic::Code::Unavailable as i32,
            message: "not the leader".into(),
            leader: "http://127.0.0.1:9".into(),
        };
        let s = one::<u32>(None, Some(error)).expect_err("the node's own error");
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            meridian_control::rpc::leader_hint(&s).as_deref(),
            Some("http://127.0.0.1:9")
        );
        let r: Result<u32, Status> = one(None, None);
        assert_eq!(r.map_err(|s| s.code()), Err(tonic::Code::Internal));
    }

    #[tokio::test]
    async fn queued_requests_go_in_one_call_and_each_gets_its_own_answer() {
        let (tx, rx) = mpsc::unbounded_channel::<(u32, Reply<u32>)>();
        let mut waiting = Vec::new();
        for i in 0..5 {
            let (r, w) = oneshot::channel();
            tx.send((i, r)).expect("send");
            waiting.push(w);
        }
        drop(tx);
        let calls = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = calls.clone();
        batch(rx, None, move |reqs: Vec<u32>| {
            seen.lock().push(reqs.len());
            async move {
                Ok(reqs
                    .into_iter()
                    .map(|r| {
                        if r == 3 {
                            Err(Status::not_found("gone"))
                        } else {
                            Ok(r * 10)
                        }
                    })
                    .collect())
            }
        })
        .await;
        assert_eq!(*calls.lock(), vec![5], "one call for all five");
        let mut got = Vec::new();
        for w in waiting {
            got.push(w.await.expect("answered").map_err(|s| s.code()));
        }
        assert_eq!(
            got,
            vec![Ok(0), Ok(10), Ok(20), Err(tonic::Code::NotFound), Ok(40)]
        );
    }

    #[tokio::test]
    async fn a_request_whose_node_stopped_waiting_is_not_sent() {
        let (tx, rx) = mpsc::unbounded_channel::<(u32, Reply<u32>)>();
        let mut waiting = Vec::new();
        for i in 0..4 {
            let (r, w) = oneshot::channel();
            tx.send((i, r)).expect("send");
            // Nodes 1 and 2 gave up (their call's deadline passed).
            if i == 1 || i == 2 {
                drop(w);
            } else {
                waiting.push(w);
            }
        }
        let (r, gave_up) = oneshot::channel();
        tx.send((9, r)).expect("send");
        drop(gave_up);
        drop(tx);
        let sent = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = sent.clone();
        batch(rx, None, move |reqs: Vec<u32>| {
            seen.lock().push(reqs.clone());
            async move { Ok(reqs.into_iter().map(Ok).collect()) }
        })
        .await;
        assert_eq!(*sent.lock(), vec![vec![0, 3]], "only the waiting nodes'");
        let mut got = Vec::new();
        for w in waiting {
            got.push(w.await.expect("answered").map_err(|s| s.code()));
        }
        assert_eq!(got, vec![Ok(0), Ok(3)]);
    }
}
