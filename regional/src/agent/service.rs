//! The `AgentLink` gRPC service.
//!
//! Owns the translation between the wire and the replica's memory and write
//! pipeline: verdicts for stale epochs in the response body (never a gRPC
//! error), FAILED_PRECONDITION for a stream whose epoch is superseded,
//! UNAVAILABLE with the `meridian-leader` hint when this replica does not
//! lead the node's shard, RESOURCE_EXHAUSTED when a node reports faster than
//! its rate, and the batched calls of agent processes that host many nodes,
//! where each node gets its own answer or its own error (`HostAssignments`
//! carries many nodes' command streams on one call, each opened as its own
//! `Assignments` would be); under TLS, every call naming a node is refused
//! unless the caller's certificate names it. Must never write the store
//! except through the pipeline.

use std::collections::BTreeMap;
use std::pin::Pin;

use meridian_control::host_stream;
use meridian_control::tls::{Caller, Peer};
use meridian_proto::v1;
use meridian_proto::v1::agent_link_server::AgentLink;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::stream::{Cursor, open};
use super::{RegionApi, ms};
use crate::metrics as m;
use crate::model::NodeLiveness;
use crate::pipeline::node::Register;
use crate::pipeline::report::{EpochCheck, Report, check_epoch};
use crate::pipeline::{Intent, Outcome};

type CommandStream = Pin<Box<dyn Stream<Item = Result<v1::AssignmentCommand, Status>> + Send>>;

/// Leaders found during one call, per shard.
type Hints = BTreeMap<u32, Option<String>>;

impl RegionApi {
    /// UNAVAILABLE naming the shard's leader, when it can be found.
    async fn not_leader(&self, shard: u32, hints: &mut Hints) -> Status {
        let mut status = Status::unavailable(format!("this replica does not lead shard {shard}"));
        let leader = match hints.get(&shard) {
            Some(l) => l.clone(),
            None => {
                let l = self.leader_of(shard).await;
                hints.insert(shard, l.clone());
                l
            }
        };
        if let Some(value) = leader.and_then(|l| l.parse().ok()) {
            status
                .metadata_mut()
                .insert(meridian_proto::LEADER_METADATA_KEY, value);
        }
        status
    }

    /// `hints` is shared by the registrations of one call: a replica that
    /// leads none of a batch's shards looks up each shard's leader once, not
    /// once per node.
    async fn register_one(
        &self,
        req: v1::RegisterNodeRequest,
        hints: &tokio::sync::Mutex<Hints>,
    ) -> Result<v1::RegisterNodeResponse, Status> {
        Register::validate(&req)?;
        let (shard, authority) = self.lead_of(&req.node_id);
        let Some(authority) = authority else {
            m::agent_call("register", "not_leader");
            return Err(self.not_leader(shard, &mut *hints.lock().await).await);
        };
        let every = self.heartbeat_every();
        // A node that calls is alive: it counts as heard now, whether or not
        // this call lives to see its commit. An agent that gives up on a slow
        // registration and tries again must not find its node declared dead
        // for silence in the meantime (a registration committed after its
        // caller left would otherwise start with no beat at all).
        self.beats.beat(&req.node_id, self.clock.now(), ms(every));
        // The same boot registering again while its node is not DOWN keeps
        // its epoch (`Register::apply` writes nothing then): answered from
        // memory, so retries under load add nothing to the pipeline.
        let known = {
            let s = self.state.read();
            s.nodes
                .get(&req.node_id)
                .and_then(|e| e.record.as_ref())
                .filter(|n| n.boot_id == req.boot_id && n.liveness != NodeLiveness::Down)
                .cloned()
        };
        if let Some(node) = known {
            m::agent_call("register", "ok");
            return Ok(self.registered(&node, shard, every));
        }
        let node = self
            .pipeline
            .submit(
                Some(authority),
                Intent::Register(Register {
                    request: req,
                    now_unix_ms: self.clock.now_unix_ms(),
                }),
            )
            .await;
        let node = match node {
            Ok(Outcome::Node(Some(n))) => *n,
            Ok(_) => {
                m::agent_call("register", "error");
                return Err(Status::internal("registration answered nothing"));
            }
            Err(err) => {
                m::agent_call("register", "error");
                return Err(err.into());
            }
        };
        self.beats.beat(&node.node_id, self.clock.now(), ms(every));
        m::agent_call("register", "ok");
        Ok(self.registered(&node, shard, every))
    }

    fn registered(
        &self,
        node: &crate::model::NodeRecord,
        shard: u32,
        every: std::time::Duration,
    ) -> v1::RegisterNodeResponse {
        v1::RegisterNodeResponse {
            node_epoch: node.epoch,
            heartbeat_interval_ms: ms(every),
            node_timeout_ms: ms(self.config.node_timeout.max(every * 3)),
            region_lease_remaining_ms: self.region_lease_remaining_ms(),
            region: self.region.clone(),
            shard_id: shard,
        }
    }

    /// A heartbeat, answered from memory: nothing is written.
    async fn heartbeat_one(
        &self,
        req: &v1::HeartbeatRequest,
        hints: &mut Hints,
    ) -> Result<v1::HeartbeatResponse, Status> {
        let (shard, authority) = self.lead_of(&req.node_id);
        if authority.is_none() {
            m::agent_call("heartbeat", "not_leader");
            return Err(self.not_leader(shard, hints).await);
        }
        let every = self.heartbeat_every();
        let (check, orphans) = {
            let s = self.state.read();
            let entry = s.nodes.get(&req.node_id);
            let check = check_epoch(entry.and_then(|e| e.record.as_ref()), req.node_epoch);
            let orphans: Vec<v1::TaskAttempt> = match (check, entry) {
                (EpochCheck::Current, Some(e)) => req
                    .running
                    .iter()
                    .filter(|a| {
                        let Some(t) = &a.task else { return false };
                        let task = crate::placement::TaskRef::new(t.job_id.clone(), t.index);
                        // An attempt of an earlier hold of the job is an
                        // orphan even where the current hold's attempt of
                        // the same number is bound here.
                        !e.bound.get(&task).is_some_and(|b| {
                            b.attempt == a.attempt
                                && b.node_epoch == req.node_epoch
                                && crate::model::records::names_hold(
                                    a.assignment_epoch,
                                    b.assignment_epoch,
                                )
                        })
                    })
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            (check, orphans)
        };
        let (reregister, current) = match check {
            EpochCheck::Current => {
                self.beats.beat(&req.node_id, self.clock.now(), ms(every));
                m::agent_call("heartbeat", "ok");
                (false, req.node_epoch)
            }
            EpochCheck::Stale { current } => {
                m::agent_call("heartbeat", "stale_epoch");
                m::fencing_rejection("node");
                (true, current)
            }
            EpochCheck::Unknown => {
                m::agent_call("heartbeat", "stale_epoch");
                m::fencing_rejection("node");
                (true, 0)
            }
        };
        Ok(v1::HeartbeatResponse {
            reregister,
            current_node_epoch: current,
            heartbeat_interval_ms: ms(every),
            region_lease_remaining_ms: self.region_lease_remaining_ms(),
            stop: orphans,
        })
    }

    /// Checks a report call and makes its intent.
    fn report_intent(&self, req: v1::ReportTaskStatusRequest) -> Result<Intent, Status> {
        if req.reports.len() > meridian_proto::limits::MAX_BATCH_ITEMS {
            return Err(Status::invalid_argument("reports: at most 1000 per call"));
        }
        if !self.take_report_token(&req.node_id) {
            m::agent_call("report", "rate_limited");
            return Err(Status::resource_exhausted(
                "status reports of this node exceed the allowed rate: retry later, coalescing",
            ));
        }
        Ok(Intent::Report(Report {
            request: req,
            now_unix_ms: self.clock.now_unix_ms(),
        }))
    }

    /// The answer to a report call once its intent committed.
    fn report_answer(
        &self,
        req_states: &[i32],
        outcome: crate::error::Result<Outcome>,
    ) -> Result<v1::ReportTaskStatusResponse, Status> {
        let out = match outcome? {
            Outcome::Reported(out) => out,
            _ => return Err(Status::internal("a report answered nothing")),
        };
        let (verdict, current) = match out.check {
            EpochCheck::Current => (v1::Verdict::Accepted, 0),
            EpochCheck::Stale { current } => (v1::Verdict::StaleEpoch, current),
            EpochCheck::Unknown => (v1::Verdict::NotFound, 0),
        };
        if verdict == v1::Verdict::Accepted {
            m::agent_call("report", "ok");
            for (state, r) in req_states.iter().zip(&out.results) {
                if r.verdict == v1::Verdict::Accepted as i32 {
                    m::task_report(*state);
                }
            }
        } else {
            m::agent_call("report", "stale_epoch");
            m::fencing_rejection("node");
        }
        Ok(v1::ReportTaskStatusResponse {
            verdict: verdict as i32,
            current_epoch: current,
            results: out.results,
        })
    }
}

impl RegionApi {
    /// Admits one node's command stream (its certificate, its epoch, this
    /// replica's lead of its shard) and opens it.
    async fn open_assignments(
        &self,
        caller: &Caller,
        req: v1::NodeAssignmentsRequest,
    ) -> Result<mpsc::Receiver<Result<v1::AssignmentCommand, Status>>, Status> {
        caller.check_node(&req.node_id)?;
        let cursor = if req.cursor.is_empty() {
            None
        } else {
            Some(Cursor::decode(&req.cursor).ok_or_else(|| {
                Status::out_of_range(
                    "cursor is not one this region issued: reopen with an empty cursor",
                )
            })?)
        };
        let current = {
            let s = self.state.read();
            s.nodes
                .get(&req.node_id)
                .and_then(|e| e.record.as_ref())
                .is_some_and(|n| n.epoch == req.node_epoch && n.liveness != NodeLiveness::Down)
        };
        if !current {
            m::agent_call("assignments", "stale_epoch");
            m::fencing_rejection("node");
            return Err(Status::failed_precondition(format!(
                "node epoch {} of {} is not current: register again",
                req.node_epoch, req.node_id
            )));
        }
        let (shard, authority) = self.lead_of(&req.node_id);
        if authority.is_none() {
            m::agent_call("assignments", "not_leader");
            return Err(self.not_leader(shard, &mut Hints::new()).await);
        }
        m::agent_call("assignments", "ok");
        Ok(open(self, req.node_id, req.node_epoch, cursor))
    }
}

/// The request of a batched call and its caller, once the call holds no
/// more than the limit. The caller's certificate is checked per node by
/// the handler: a node it does not name is refused alone, so the host's
/// other nodes (their heartbeats above all) are not refused with it.
fn admit_batch<T, N>(
    request: Request<T>,
    nodes: impl Fn(&T) -> &Vec<N>,
) -> Result<(Caller, T), Status> {
    let caller = Peer::of(&request);
    caller.check_agent()?;
    let req = request.into_inner();
    if nodes(&req).len() > meridian_proto::limits::MAX_NODES_PER_CALL {
        return Err(Status::invalid_argument("nodes: at most 10000 per call"));
    }
    Ok((caller, req))
}

#[tonic::async_trait]
impl AgentLink for RegionApi {
    async fn register(
        &self,
        request: Request<v1::RegisterNodeRequest>,
    ) -> Result<Response<v1::RegisterNodeResponse>, Status> {
        // An agent speaks only for the nodes its certificate names
        // (docs/security.md); the same check opens every call below.
        Peer::of(&request).check_node(&request.get_ref().node_id)?;
        self.register_one(request.into_inner(), &Default::default())
            .await
            .map(Response::new)
    }

    async fn register_nodes(
        &self,
        request: Request<v1::RegisterNodesRequest>,
    ) -> Result<Response<v1::RegisterNodesResponse>, Status> {
        let (caller, req) = admit_batch(request, |r| &r.nodes)?;
        // Polled together, so their intents are queued (and committed)
        // together; and not spawned, so a call cancelled by its client
        // drops them all and the pipeline lets go of them. The agent's
        // uplink leaves out the nodes that gave up before the call is sent
        // but does not cancel a call once sent: a registration committed
        // after its node gave up is answered from memory when the node
        // asks again (same boot, same epoch, no write).
        let hints = tokio::sync::Mutex::new(Hints::new());
        let answers = futures::future::join_all(req.nodes.into_iter().map(|node| async {
            caller.check_node(&node.node_id)?;
            self.register_one(node, &hints).await
        }))
        .await;
        let results = answers
            .into_iter()
            .map(|answer| {
                host_stream::node_result(answer, |response, error| v1::NodeRegisterResult {
                    response,
                    error,
                })
            })
            .collect();
        Ok(Response::new(v1::RegisterNodesResponse { results }))
    }

    type AssignmentsStream = CommandStream;

    async fn assignments(
        &self,
        request: Request<v1::NodeAssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let caller = Peer::of(&request);
        let rx = self.open_assignments(&caller, request.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type HostAssignmentsStream = host_stream::ResponseStream;

    async fn host_assignments(
        &self,
        request: Request<tonic::Streaming<v1::HostAssignmentsRequest>>,
    ) -> Result<Response<Self::HostAssignmentsStream>, Status> {
        // Each node stream on the call is opened exactly as its own
        // Assignments call would be, certificate check included.
        let caller = Peer::of(&request);
        let api = self.clone();
        Ok(Response::new(host_stream::serve(
            request.into_inner(),
            move |req| {
                let api = api.clone();
                let caller = caller.clone();
                async move {
                    api.open_assignments(&caller, req)
                        .await
                        .map(ReceiverStream::new)
                }
            },
        )))
    }

    async fn report_task_status(
        &self,
        request: Request<v1::ReportTaskStatusRequest>,
    ) -> Result<Response<v1::ReportTaskStatusResponse>, Status> {
        Peer::of(&request).check_node(&request.get_ref().node_id)?;
        let req = request.into_inner();
        let states: Vec<i32> = req.reports.iter().map(|r| r.state).collect();
        let intent = self.report_intent(req)?;
        let outcome = self.pipeline.submit(None, intent).await;
        self.report_answer(&states, outcome).map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        Peer::of(&request).check_node(&request.get_ref().node_id)?;
        let req = request.into_inner();
        self.heartbeat_one(&req, &mut Hints::new())
            .await
            .map(Response::new)
    }

    async fn heartbeat_nodes(
        &self,
        request: Request<v1::HeartbeatNodesRequest>,
    ) -> Result<Response<v1::HeartbeatNodesResponse>, Status> {
        let (caller, req) = admit_batch(request, |r| &r.nodes)?;
        let mut hints = Hints::new();
        let mut results = Vec::with_capacity(req.nodes.len());
        for node in &req.nodes {
            let answer = match caller.check_node(&node.node_id) {
                Ok(()) => self.heartbeat_one(node, &mut hints).await,
                Err(denied) => Err(denied),
            };
            results.push(host_stream::node_result(answer, |response, error| {
                v1::NodeHeartbeatResult { response, error }
            }));
        }
        Ok(Response::new(v1::HeartbeatNodesResponse { results }))
    }

    async fn report_nodes(
        &self,
        request: Request<v1::ReportNodesRequest>,
    ) -> Result<Response<v1::ReportNodesResponse>, Status> {
        let (caller, req) = admit_batch(request, |r| &r.nodes)?;
        // Every node's intent is queued before any is awaited, so they
        // commit together.
        let mut pending = Vec::with_capacity(req.nodes.len());
        for node in req.nodes {
            let states: Vec<i32> = node.reports.iter().map(|r| r.state).collect();
            let intent = caller
                .check_node(&node.node_id)
                .and_then(|()| self.report_intent(node));
            match intent {
                Ok(intent) => {
                    let pipeline = self.pipeline.clone();
                    pending.push((
                        states,
                        Ok(tokio::spawn(
                            async move { pipeline.submit(None, intent).await },
                        )),
                    ));
                }
                Err(s) => pending.push((states, Err(s))),
            }
        }
        let mut results = Vec::with_capacity(pending.len());
        for (states, p) in pending {
            let answer = match p {
                Err(s) => Err(s),
                Ok(task) => match task.await {
                    Ok(outcome) => self.report_answer(&states, outcome),
                    Err(e) => Err(Status::internal(format!("report task failed: {e}"))),
                },
            };
            results.push(host_stream::node_result(answer, |response, error| {
                v1::NodeReportResult { response, error }
            }));
        }
        Ok(Response::new(v1::ReportNodesResponse { results }))
    }
}
