//! The `RegionAdmin` gRPC service: list, cordon, uncordon and drain nodes,
//! read captured task output, and page through a job's tasks
//! ([`super::tasks`]).
//!
//! Owns the operator view of nodes (`NodeInfo`, with allocation computed
//! from the bound tasks). Must never stop tasks itself: a drain is recorded
//! here and carried out by the node's shard leader.

use std::collections::BTreeMap;

use meridian_proto::v1;
use meridian_proto::v1::region_admin_server::RegionAdmin;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::RegionApi;
use crate::model::view::scan;
use crate::model::{NodeRecord, Res, decode};
use crate::pipeline::node::{Cordon, SetCordon};
use crate::pipeline::{Intent, Outcome};
use crate::state::NodeEntry;

/// Captured output of one task attempt, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLogs {
    pub node: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub at: u64,
    /// Bytes written to each stream in all (the tail is the last of them);
    /// 0 from an agent that did not say.
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
}

// Stored in a compact record that always fits a value: `super::stored`.

fn check_region(api: &RegionApi, region: &str) -> Result<(), Status> {
    if region.is_empty() || region == api.region {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "region {region} is not served here"
        )))
    }
}

fn info(api: &RegionApi, entry: &NodeEntry, n: &NodeRecord) -> v1::NodeInfo {
    // Heartbeats are kept in memory by the shard's leader only; elsewhere
    // the last one is unknown (0).
    let hb = api.beats.last(&n.node_id).map_or(0, |b| {
        let ago = api.clock.now().saturating_duration_since(b.at);
        api.clock
            .now_unix_ms()
            .saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))
    });
    v1::NodeInfo {
        node_id: n.node_id.clone(),
        region: api.region.clone(),
        zone: n.zone.clone(),
        rack: n.rack.clone(),
        state: n.liveness.to_proto() as i32,
        cordoned: n.cordoned,
        draining: n.draining,
        cordon_reason: n.cordon_reason.clone(),
        node_epoch: n.epoch,
        boot_id: n.boot_id.clone(),
        shard_id: entry.shard,
        allocatable: Some(n.allocatable.to_proto()),
        allocated: Some(entry.allocated.to_proto()),
        labels: n.labels.clone().into_iter().collect(),
        running_tasks: entry.bound.len() as u32,
        agent_version: n.agent_version.clone(),
        last_heartbeat_unix_ms: hb,
        registered_at_unix_ms: n.registered_at_unix_ms,
    }
}

impl RegionApi {
    fn node_info(&self, node: &NodeRecord) -> v1::NodeInfo {
        let s = self.state.read();
        match s.nodes.get(&node.node_id) {
            Some(entry) => info(self, entry, node),
            None => info(self, &NodeEntry::default(), node),
        }
    }

    async fn cordon(&self, node: String, change: Cordon) -> Result<v1::NodeInfo, Status> {
        let out = self
            .pipeline
            .submit(
                None,
                Intent::Cordon(SetCordon {
                    node: node.clone(),
                    change,
                }),
            )
            .await?;
        match out {
            Outcome::Node(Some(n)) => Ok(self.node_info(&n)),
            _ => Err(Status::not_found(format!("node {node}"))),
        }
    }
}

#[tonic::async_trait]
impl RegionAdmin for RegionApi {
    async fn list_job_tasks(
        &self,
        request: Request<v1::ListJobTasksRequest>,
    ) -> Result<Response<v1::ListJobTasksResponse>, Status> {
        let now = self.clock.now_unix_ms();
        let s = self.state.read();
        super::tasks::page(&s, &self.region, request.get_ref(), now).map(Response::new)
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let req = request.into_inner();
        check_region(self, &req.region)?;
        let page_size = match req.page_size {
            0 => meridian_proto::limits::DEFAULT_PAGE_SIZE,
            n if n > meridian_proto::limits::MAX_PAGE_SIZE => {
                return Err(Status::invalid_argument("page_size: at most 1000"));
            }
            n => n,
        } as usize;
        let selector: Vec<crate::placement::LabelConstraint> = req
            .label_selector
            .iter()
            .map(|r| {
                let job = crate::model::JobRecord {
                    constraints: vec![(r.key.clone(), r.op, r.values.clone())],
                    ..empty_job()
                };
                crate::model::pending_task(&job, 0).constraints.remove(0)
            })
            .collect();
        let mut nodes: Vec<v1::NodeInfo> = {
            let state = self.state.read();
            state
                .node_records()
                .filter(|(_, n)| n.node_id.as_str() > req.page_token.as_str())
                .filter(|(_, n)| {
                    req.states.is_empty() || req.states.contains(&(n.liveness.to_proto() as i32))
                })
                .filter(|(_, n)| selector.iter().all(|c| c.matches(&n.labels)))
                .take(page_size + 1)
                .map(|(e, n)| info(self, e, n))
                .collect()
        };
        let next_page_token = if nodes.len() > page_size {
            nodes.truncate(page_size);
            nodes.last().map(|n| n.node_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListNodesResponse {
            nodes,
            next_page_token,
        }))
    }

    async fn cordon_node(
        &self,
        request: Request<v1::CordonNodeRequest>,
    ) -> Result<Response<v1::CordonNodeResponse>, Status> {
        let req = request.into_inner();
        check_region(self, &req.region)?;
        let node = self
            .cordon(req.node_id, Cordon::Cordon { reason: req.reason })
            .await?;
        Ok(Response::new(v1::CordonNodeResponse { node: Some(node) }))
    }

    async fn uncordon_node(
        &self,
        request: Request<v1::UncordonNodeRequest>,
    ) -> Result<Response<v1::UncordonNodeResponse>, Status> {
        let req = request.into_inner();
        check_region(self, &req.region)?;
        let node = self.cordon(req.node_id, Cordon::Uncordon).await?;
        Ok(Response::new(v1::UncordonNodeResponse { node: Some(node) }))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        let req = request.into_inner();
        check_region(self, &req.region)?;
        let change = Cordon::Drain {
            reason: req.reason,
            deadline_ms: req.deadline_ms,
        };
        let node = self.cordon(req.node_id, change).await?;
        Ok(Response::new(v1::DrainNodeResponse { node: Some(node) }))
    }

    type FollowTaskLogsStream =
        tokio_stream::wrappers::ReceiverStream<Result<v1::TaskLogChunk, Status>>;

    async fn follow_task_logs(
        &self,
        request: Request<v1::FollowTaskLogsRequest>,
    ) -> Result<Response<Self::FollowTaskLogsStream>, Status> {
        let stream = super::follow::start(self.clone(), request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn get_task_logs(
        &self,
        request: Request<v1::GetTaskLogsRequest>,
    ) -> Result<Response<v1::GetTaskLogsResponse>, Status> {
        let req = request.into_inner();
        let task = req
            .task
            .ok_or_else(|| Status::invalid_argument("task: required"))?;
        let found = self
            .db
            .run(|tx, _| {
                let keys = self.keys.clone();
                let task = task.clone();
                async move {
                    let mut best: Option<(u32, StoredLogs)> = None;
                    for (k, v) in scan(&tx, keys.task_logs(&task.job_id, task.index), true).await? {
                        let attempt = keys.attempt_of_logs(&k).unwrap_or(0);
                        if req.attempt == 0 || req.attempt == attempt {
                            best = Some((attempt, decode("logs", &v)?));
                        }
                    }
                    Ok::<_, crate::error::RegionalError>(best)
                }
            })
            .await?;
        let Some((attempt, logs)) = found else {
            return Err(Status::not_found(meridian_proto::NO_TASK_OUTPUT));
        };
        let tail = |b: Vec<u8>| match req.max_bytes as usize {
            0 => b,
            n if b.len() > n => b[b.len() - n..].to_vec(),
            _ => b,
        };
        Ok(Response::new(v1::GetTaskLogsResponse {
            task: Some(task),
            attempt,
            node_id: logs.node,
            stdout_tail: tail(logs.stdout),
            stderr_tail: tail(logs.stderr),
            stdout_truncated: logs.stdout_truncated,
            stderr_truncated: logs.stderr_truncated,
            captured_at_unix_ms: logs.at,
        }))
    }
}

fn empty_job() -> crate::model::JobRecord {
    crate::model::JobRecord {
        job_id: String::new(),
        assignment_epoch: 0,
        request_id: String::new(),
        tenant: String::new(),
        priority: 0,
        task_count: 0,
        resources: Res::default(),
        labels: BTreeMap::new(),
        constraints: Vec::new(),
        anti_affinity: Vec::new(),
        affinity: Vec::new(),
        pack: false,
        gang: false,
        exclusive: false,
        on_region_loss: 0,
        max_attempts: 1,
        stop_grace_ms: 0,
        state: crate::model::JobPhase::Active,
        created_at_unix_ms: 0,
        trace_id: String::new(),
        shard: 0,
        waiting_reason: String::new(),
        parallelism: 0,
        retry_base_ms: 0,
        retry_cap_ms: 0,
    }
}
