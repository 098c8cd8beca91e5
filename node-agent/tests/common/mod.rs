//! A fake regional tier for the agent's tests: a real tonic `AgentLink`
//! server on 127.0.0.1 that the test controls (send commands, bump node
//! epochs, go unavailable, stop and restart on the same port, serve a second
//! replica of the same state whose streams only the leader opens).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::host_stream::node_result;
use meridian_control::{Instant, SharedClock};
use meridian_proto::v1::agent_link_server::{AgentLink, AgentLinkServer};
use meridian_proto::v1::{
    AssignmentCommand, CommandKind, HeartbeatRequest, HeartbeatResponse, HostAssignmentsRequest,
    ItemResult, NodeAssignmentsRequest, NodeRegisterResult, RegionLossPolicy, RegisterNodeRequest,
    RegisterNodeResponse, RegisterNodesRequest, RegisterNodesResponse, ReportTaskStatusRequest,
    ReportTaskStatusResponse, Resources, TaskAttempt, TaskId, TaskReport, TaskTemplate, Verdict,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

type CmdTx = mpsc::Sender<Result<AssignmentCommand, Status>>;

#[derive(Default)]
struct State {
    available: bool,
    next_epoch: u64,
    nodes: BTreeMap<String, (String, u64)>,
    streams: BTreeMap<String, CmdTx>,
    /// First successful call per node since the last `reset_arrivals`.
    arrivals: BTreeMap<String, Instant>,
    /// Every register: (node id, epoch issued, value of the observer then).
    registrations: Vec<(String, u64, usize)>,
    cursor_seq: u64,
    /// Report calls that arrived while reports were held.
    held_reports: usize,
    /// Heartbeat calls that arrived while heartbeats were held.
    held_heartbeats: usize,
}

struct Shared {
    state: Mutex<State>,
    clock: SharedClock,
    lease_remaining_ms: u64,
    heartbeat_interval_ms: u64,
    reports: mpsc::UnboundedSender<(String, TaskReport)>,
    changed: watch::Sender<u64>,
    register_observer: Mutex<Option<Box<dyn Fn() -> usize + Send>>>,
    /// URL of the only replica that opens streams (the others refuse with
    /// the `meridian-leader` hint); `None`: every replica does.
    stream_leader: Mutex<Option<String>>,
    /// Streams refused by a replica that does not lead, per replica URL.
    refusals: Mutex<BTreeMap<String, usize>>,
    /// While true, report calls wait (a region working through a backlog).
    hold_reports: watch::Sender<bool>,
    /// While true, heartbeat calls wait.
    hold_heartbeats: watch::Sender<bool>,
    /// A region of an older build: the host-level calls are not served.
    per_node_calls_only: bool,
    /// Calls served, by method name.
    calls: Mutex<BTreeMap<&'static str, usize>>,
}

impl Shared {
    /// Counts a call of `method`; UNIMPLEMENTED for a host-level call when
    /// this region plays an older build, as tonic answers a method it does
    /// not know.
    fn serve(&self, method: &'static str, host_level: bool) -> Result<(), Status> {
        if host_level && self.per_node_calls_only {
            return Err(Status::unimplemented(format!("unknown method {method}")));
        }
        *self.calls.lock().entry(method).or_default() += 1;
        Ok(())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Waits while `hold` is set, counting the call in `held`.
    async fn wait_while_held(
        &self,
        hold: &watch::Sender<bool>,
        held: impl FnOnce(&mut State) -> &mut usize,
    ) {
        let mut hold = hold.subscribe();
        if *hold.borrow_and_update() {
            *held(&mut self.state.lock()) += 1;
            self.bump();
            let _ = hold.wait_for(|held| !*held).await;
        }
    }

    /// Refuses every call while unavailable; records the arrival.
    fn admit(&self, node_id: &str) -> Result<(), Status> {
        let mut st = self.state.lock();
        if !st.available {
            return Err(Status::unavailable("fake region unavailable"));
        }
        if !st.arrivals.contains_key(node_id) {
            let now = self.clock.now();
            st.arrivals.insert(node_id.to_string(), now);
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Service(Arc<Shared>, String);

impl Service {
    /// One registration, as the region answers it.
    fn register_one(&self, req: RegisterNodeRequest) -> Result<RegisterNodeResponse, Status> {
        self.0.admit(&req.node_id)?;
        let observed = self.0.register_observer.lock().as_ref().map_or(0, |f| f());
        let epoch = {
            let mut st = self.0.state.lock();
            let current = st.nodes.get(&req.node_id).cloned();
            let epoch = match current {
                Some((boot, e)) if boot == req.boot_id => e,
                _ => {
                    st.next_epoch += 1;
                    st.next_epoch
                }
            };
            st.nodes
                .insert(req.node_id.clone(), (req.boot_id.clone(), epoch));
            st.registrations
                .push((req.node_id.clone(), epoch, observed));
            epoch
        };
        self.0.bump();
        Ok(RegisterNodeResponse {
            node_epoch: epoch,
            heartbeat_interval_ms: self.0.heartbeat_interval_ms,
            node_timeout_ms: self.0.heartbeat_interval_ms * 3,
            region_lease_remaining_ms: self.0.lease_remaining_ms,
            region: "fake".into(),
            shard_id: 1,
        })
    }

    /// Admits one node's command stream as the region would: available,
    /// leading (or refusing with the hint), current epoch.
    fn open_stream(
        &self,
        req: NodeAssignmentsRequest,
    ) -> Result<ReceiverStream<Result<AssignmentCommand, Status>>, Status> {
        self.0.admit(&req.node_id)?;
        let leader = self.0.stream_leader.lock().clone();
        if let Some(leader) = leader.filter(|l| *l != self.1) {
            *self.0.refusals.lock().entry(self.1.clone()).or_default() += 1;
            let mut status = Status::unavailable("this replica does not lead the node's shard");
            status.metadata_mut().insert(
                meridian_proto::LEADER_METADATA_KEY,
                leader.parse().expect("url is ascii"),
            );
            return Err(status);
        }
        let (tx, rx) = mpsc::channel(1024);
        {
            let mut st = self.0.state.lock();
            if st.nodes.get(&req.node_id).map(|n| n.1) != Some(req.node_epoch) {
                return Err(Status::failed_precondition("stale node epoch"));
            }
            st.streams.insert(req.node_id.clone(), tx);
        }
        self.0.bump();
        Ok(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl AgentLink for Service {
    async fn register(
        &self,
        req: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        self.0.serve("register", false)?;
        self.register_one(req.into_inner()).map(Response::new)
    }

    async fn register_nodes(
        &self,
        req: Request<RegisterNodesRequest>,
    ) -> Result<Response<RegisterNodesResponse>, Status> {
        self.0.serve("register_nodes", true)?;
        let results = req
            .into_inner()
            .nodes
            .into_iter()
            .map(|node| {
                node_result(self.register_one(node), |response, error| {
                    NodeRegisterResult { response, error }
                })
            })
            .collect();
        Ok(Response::new(RegisterNodesResponse { results }))
    }

    type AssignmentsStream = ReceiverStream<Result<AssignmentCommand, Status>>;

    async fn assignments(
        &self,
        req: Request<NodeAssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        self.0.serve("assignments", false)?;
        self.open_stream(req.into_inner()).map(Response::new)
    }

    type HostAssignmentsStream = meridian_control::host_stream::ResponseStream;

    async fn host_assignments(
        &self,
        req: Request<tonic::Streaming<HostAssignmentsRequest>>,
    ) -> Result<Response<Self::HostAssignmentsStream>, Status> {
        self.0.serve("host_assignments", true)?;
        let service = self.clone();
        Ok(Response::new(meridian_control::host_stream::serve(
            req.into_inner(),
            move |node| std::future::ready(service.open_stream(node)),
        )))
    }

    async fn report_task_status(
        &self,
        req: Request<ReportTaskStatusRequest>,
    ) -> Result<Response<ReportTaskStatusResponse>, Status> {
        self.0.serve("report_task_status", false)?;
        let req = req.into_inner();
        self.0.admit(&req.node_id)?;
        self.0
            .wait_while_held(&self.0.hold_reports, |st| &mut st.held_reports)
            .await;
        let current = self
            .0
            .state
            .lock()
            .nodes
            .get(&req.node_id)
            .map_or(0, |n| n.1);
        if current != req.node_epoch {
            return Ok(Response::new(ReportTaskStatusResponse {
                verdict: Verdict::StaleEpoch as i32,
                current_epoch: current,
                results: vec![],
            }));
        }
        let results = req
            .reports
            .iter()
            .map(|_| ItemResult {
                verdict: Verdict::Accepted as i32,
                current_epoch: current,
                message: String::new(),
            })
            .collect();
        for r in req.reports {
            let _ = self.0.reports.send((req.node_id.clone(), r));
        }
        Ok(Response::new(ReportTaskStatusResponse {
            verdict: Verdict::Accepted as i32,
            current_epoch: current,
            results,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.0.serve("heartbeat", false)?;
        let req = req.into_inner();
        self.0.admit(&req.node_id)?;
        self.0
            .wait_while_held(&self.0.hold_heartbeats, |st| &mut st.held_heartbeats)
            .await;
        let current = self
            .0
            .state
            .lock()
            .nodes
            .get(&req.node_id)
            .map_or(0, |n| n.1);
        self.0.bump();
        Ok(Response::new(HeartbeatResponse {
            reregister: current != req.node_epoch,
            current_node_epoch: current,
            heartbeat_interval_ms: self.0.heartbeat_interval_ms,
            region_lease_remaining_ms: self.0.lease_remaining_ms,
            stop: vec![],
        }))
    }

    async fn heartbeat_nodes(
        &self,
        req: Request<meridian_proto::v1::HeartbeatNodesRequest>,
    ) -> Result<Response<meridian_proto::v1::HeartbeatNodesResponse>, Status> {
        self.0.serve("heartbeat_nodes", true)?;
        let mut results = Vec::new();
        for node in req.into_inner().nodes {
            results.push(match self.heartbeat(Request::new(node)).await {
                Ok(r) => meridian_proto::v1::NodeHeartbeatResult {
                    response: Some(r.into_inner()),
                    error: None,
                },
                Err(s) => meridian_proto::v1::NodeHeartbeatResult {
                    response: None,
                    error: Some(call_error(&s)),
                },
            });
        }
        Ok(Response::new(meridian_proto::v1::HeartbeatNodesResponse {
            results,
        }))
    }

    async fn report_nodes(
        &self,
        req: Request<meridian_proto::v1::ReportNodesRequest>,
    ) -> Result<Response<meridian_proto::v1::ReportNodesResponse>, Status> {
        self.0.serve("report_nodes", true)?;
        let mut results = Vec::new();
        for node in req.into_inner().nodes {
            results.push(match self.report_task_status(Request::new(node)).await {
                Ok(r) => meridian_proto::v1::NodeReportResult {
                    response: Some(r.into_inner()),
                    error: None,
                },
                Err(s) => meridian_proto::v1::NodeReportResult {
                    response: None,
                    error: Some(call_error(&s)),
                },
            });
        }
        Ok(Response::new(meridian_proto::v1::ReportNodesResponse {
            results,
        }))
    }
}

/// A node's error in a batched answer, as the region sends it.
fn call_error(s: &Status) -> meridian_proto::v1::NodeCallError {
    meridian_proto::v1::NodeCallError {
        code: s.code() as i32,
        message: s.message().to_string(),
        leader: s
            .metadata()
            .get(meridian_proto::LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    }
}

/// Options of a [`FakeRegion`].
pub struct FakeOptions {
    pub lease_remaining_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Play a region of an older build, which serves only the per-node
    /// calls (`Register`, `Heartbeat`, `ReportTaskStatus`, `Assignments`).
    pub per_node_calls_only: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            lease_remaining_ms: 600_000,
            heartbeat_interval_ms: 60_000,
            per_node_calls_only: false,
        }
    }
}

pub struct FakeRegion {
    shared: Arc<Shared>,
    pub addr: SocketAddr,
    server: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    pub reports: mpsc::UnboundedReceiver<(String, TaskReport)>,
}

impl FakeRegion {
    pub async fn start(clock: SharedClock, opts: FakeOptions) -> FakeRegion {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                available: true,
                ..State::default()
            }),
            clock,
            lease_remaining_ms: opts.lease_remaining_ms,
            heartbeat_interval_ms: opts.heartbeat_interval_ms,
            reports: reports_tx,
            changed: watch::Sender::new(0),
            register_observer: Mutex::new(None),
            stream_leader: Mutex::new(None),
            refusals: Mutex::new(BTreeMap::new()),
            hold_reports: watch::Sender::new(false),
            hold_heartbeats: watch::Sender::new(false),
            per_node_calls_only: opts.per_node_calls_only,
            calls: Mutex::new(BTreeMap::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fake = FakeRegion {
            shared,
            addr,
            server: None,
            reports,
        };
        fake.serve(listener);
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = oneshot::channel::<()>();
        let svc = AgentLinkServer::new(Service(self.shared.clone(), self.url()));
        let handle = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await;
        });
        self.server = Some((tx, handle));
    }

    /// Serves the same state on a second port, as another replica of the
    /// region; returns its URL. It lives as long as the runtime.
    pub async fn add_replica(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let svc = AgentLinkServer::new(Service(self.shared.clone(), url.clone()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        url
    }

    /// Only the replica at `url` opens streams from now on; the others
    /// answer UNAVAILABLE naming it in `meridian-leader`.
    pub fn set_stream_leader(&self, url: &str) {
        *self.shared.stream_leader.lock() = Some(url.to_string());
    }

    /// Streams the replica at `url` refused because it did not lead.
    /// Calls served so far, by method name (`register`, `register_nodes`,
    /// `assignments`, `host_assignments`, ...).
    pub fn calls(&self) -> BTreeMap<&'static str, usize> {
        self.shared.calls.lock().clone()
    }

    pub fn refusals(&self, url: &str) -> usize {
        self.shared.refusals.lock().get(url).copied().unwrap_or(0)
    }

    /// Drops the server: ends every stream, closes the port.
    pub async fn stop(&mut self) {
        self.end_streams(Status::unavailable("region going away"));
        if let Some((tx, handle)) = self.server.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Unavailable: ends every stream and refuses every call (the server
    /// stays up).
    pub fn set_available(&self, available: bool) {
        self.shared.state.lock().available = available;
        if !available {
            self.end_streams(Status::unavailable("fake region unavailable"));
        }
    }

    fn end_streams(&self, status: Status) {
        let streams = std::mem::take(&mut self.shared.state.lock().streams);
        for (_, tx) in streams {
            let _ = tx.try_send(Err(status.clone()));
        }
    }

    /// Fences a node: bumps its epoch and ends its stream with
    /// FAILED_PRECONDITION.
    pub fn bump_epoch(&self, node_id: &str) {
        let tx = {
            let mut st = self.shared.state.lock();
            st.next_epoch += 1;
            let e = st.next_epoch;
            if let Some(n) = st.nodes.get_mut(node_id) {
                // The registration is no longer current: registering again
                // gets a fresh epoch even with the same boot id.
                *n = (String::from("<fenced>"), e);
            }
            st.streams.remove(node_id)
        };
        if let Some(tx) = tx {
            let _ = tx.try_send(Err(Status::failed_precondition("node epoch superseded")));
        }
    }

    pub fn epoch_of(&self, node_id: &str) -> u64 {
        self.shared
            .state
            .lock()
            .nodes
            .get(node_id)
            .map_or(0, |n| n.1)
    }

    pub fn registrations(&self) -> Vec<(String, u64, usize)> {
        self.shared.state.lock().registrations.clone()
    }

    /// Called at every Register; its value is recorded with it.
    pub fn observe_registers(&self, f: impl Fn() -> usize + Send + 'static) {
        *self.shared.register_observer.lock() = Some(Box::new(f));
    }

    pub fn reset_arrivals(&self) {
        self.shared.state.lock().arrivals.clear();
    }

    pub fn arrivals(&self) -> BTreeMap<String, Instant> {
        self.shared.state.lock().arrivals.clone()
    }

    /// Waits until `node_id` has an open stream under epoch `min_epoch` or
    /// later.
    pub async fn wait_stream(&self, node_id: &str, min_epoch: u64) {
        let mut rx = self.shared.changed.subscribe();
        loop {
            {
                let st = self.shared.state.lock();
                let epoch = st.nodes.get(node_id).map_or(0, |n| n.1);
                if epoch >= min_epoch && st.streams.contains_key(node_id) {
                    return;
                }
            }
            rx.changed().await.unwrap();
        }
    }

    /// Makes report calls wait (`true`) or lets them through.
    pub fn hold_reports(&self, hold: bool) {
        self.shared.hold_reports.send_replace(hold);
    }

    /// Makes heartbeat calls wait (`true`) or lets them through.
    pub fn hold_heartbeats(&self, hold: bool) {
        self.shared.hold_heartbeats.send_replace(hold);
    }

    /// Waits until at least `n` report calls arrived while reports were
    /// held.
    pub async fn wait_held_reports(&self, n: usize) {
        self.wait_held(n, |st| st.held_reports).await;
    }

    /// Waits until at least `n` heartbeat calls arrived while heartbeats
    /// were held.
    pub async fn wait_held_heartbeats(&self, n: usize) {
        self.wait_held(n, |st| st.held_heartbeats).await;
    }

    async fn wait_held(&self, n: usize, held: impl Fn(&State) -> usize) {
        let mut rx = self.shared.changed.subscribe();
        loop {
            if held(&self.shared.state.lock()) >= n {
                return;
            }
            rx.changed().await.unwrap();
        }
    }

    /// Sends a command on the node's open stream.
    pub async fn send(&self, node_id: &str, cmd: AssignmentCommand) {
        let (tx, seq) = {
            let mut st = self.shared.state.lock();
            st.cursor_seq += 1;
            (
                st.streams.get(node_id).cloned().expect("stream open"),
                st.cursor_seq,
            )
        };
        let mut cmd = cmd;
        cmd.cursor = seq.to_be_bytes().to_vec();
        tx.send(Ok(cmd)).await.unwrap();
    }

    /// Next report from any node.
    pub async fn next_report(&mut self) -> (String, TaskReport) {
        tokio::time::timeout(Duration::from_secs(30), self.reports.recv())
            .await
            .expect("a report within the failure guard")
            .expect("fake region alive")
    }

    /// Waits for a report of `attempt` in state `state`, returning it and
    /// every report seen meanwhile.
    pub async fn wait_report(
        &mut self,
        attempt: &TaskAttempt,
        pred: impl Fn(&TaskReport) -> bool,
    ) -> (TaskReport, Vec<TaskReport>) {
        let mut seen = Vec::new();
        loop {
            let (_, r) = self.next_report().await;
            seen.push(r.clone());
            if r.task.as_ref() == Some(attempt) && pred(&r) {
                return (r, seen);
            }
        }
    }
}

/// A real node `id` offering 2 cores and 1 GiB, with no labels.
pub fn real_node(id: &str) -> meridian_agent::NodeSpec {
    meridian_agent::NodeSpec {
        node_id: id.into(),
        allocatable: meridian_proto::v1::Resources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            gpu_count: 0,
            gpu_type: String::new(),
        },
        labels: BTreeMap::new(),
        zone: String::new(),
        rack: String::new(),
    }
}

pub fn attempt(job: &str, index: u32, n: u32) -> TaskAttempt {
    TaskAttempt {
        task: Some(TaskId::new(job, index)),
        assignment_epoch: 1,
        attempt: n,
    }
}

/// A RUN command for `attempt` under the given epochs.
pub fn run(
    attempt: TaskAttempt,
    template: TaskTemplate,
    node_epoch: u64,
    shard_epoch: u64,
    policy: RegionLossPolicy,
    grace_ms: u64,
) -> AssignmentCommand {
    AssignmentCommand {
        cursor: vec![],
        kind: CommandKind::Run as i32,
        task: Some(attempt),
        template: Some(template),
        resources: Some(Resources {
            cpu_millis: 100,
            memory_bytes: 0,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        shard_id: 1,
        shard_epoch,
        node_epoch,
        on_region_loss: policy as i32,
        stop_grace_period_ms: grace_ms,
        reason: String::new(),
        priority: 0,
        ..AssignmentCommand::default()
    }
}

/// A STOP command.
pub fn stop(
    attempt: TaskAttempt,
    node_epoch: u64,
    shard_epoch: u64,
    grace_ms: u64,
) -> AssignmentCommand {
    AssignmentCommand {
        cursor: vec![],
        kind: CommandKind::Stop as i32,
        task: Some(attempt),
        shard_id: 1,
        shard_epoch,
        node_epoch,
        stop_grace_period_ms: grace_ms,
        reason: "cancelled".into(),
        ..AssignmentCommand::default()
    }
}

/// The event waits of the multi-process tests (a FIFO a task writes into,
/// a condition on a file looked at again at each inotify notice, a
/// process's exit through its pidfd), one copy shared by path: the root
/// package's tests and these are separate crates, and the helpers are test
/// code that no library should carry.
#[path = "../../../integration/processes/support/wait.rs"]
pub mod wait;
