//! The `AgentLink` gRPC service.
//!
//! Owns the translation between the wire and [`super::nodes`]: verdicts for
//! stale epochs in the response body (never a gRPC error), FAILED_PRECONDITION
//! for a stream whose epoch is superseded, UNAVAILABLE with the
//! `meridian-leader` hint when this replica does not lead the node's shard,
//! RESOURCE_EXHAUSTED when a node reports faster than its rate. Must never
//! write the store except through `nodes`.

use std::pin::Pin;

use meridian_control::lease::{Identity, Lease};
use meridian_proto::v1;
use meridian_proto::v1::agent_link_server::AgentLink;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::RegionApi;
use super::nodes::{self, EpochCheck};
use super::stream::{Cursor, pump};
use crate::metrics as m;
use crate::model::HeartbeatRecord;
use crate::model::view::read_layout;
use crate::shard::layout::read_presences;
use crate::shard::shard_of_node;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RegionApi {
    async fn shard_count(&self) -> Result<u32, Status> {
        let layout = self
            .db
            .run(|tx, _| {
                let keys = self.keys.clone();
                async move { read_layout(&tx, &keys).await }
            })
            .await?;
        Ok(layout.map_or(1, |l| l.count))
    }

    /// UNAVAILABLE naming the shard's leader, when it can be found.
    async fn not_leader(&self, shard: u32) -> Status {
        let mut status = Status::unavailable(format!("this replica does not lead shard {shard}"));
        let lease = Lease::new(
            self.db.clone(),
            self.keys.shard_lease(shard),
            Identity::new_boot("observer"),
            self.clock.clone(),
            std::time::Duration::from_secs(1),
            std::time::Duration::ZERO,
        );
        if let Ok(Some(record)) = lease.observe().await
            && let Ok(presences) = read_presences(&self.db, &self.keys).await
            && let Some((_, p)) = presences.iter().find(|(name, p)| {
                *name == record.holder.name && p.boot_id == record.holder.boot_id.to_string()
            })
            && let Ok(value) = p.endpoint.parse()
        {
            status
                .metadata_mut()
                .insert(meridian_proto::LEADER_METADATA_KEY, value);
        }
        status
    }
}

type CommandStream = Pin<Box<dyn Stream<Item = Result<v1::AssignmentCommand, Status>> + Send>>;

#[tonic::async_trait]
impl AgentLink for RegionApi {
    async fn register(
        &self,
        request: Request<v1::RegisterNodeRequest>,
    ) -> Result<Response<v1::RegisterNodeResponse>, Status> {
        let req = request.into_inner();
        let every = self.heartbeat_every().await;
        let beat = HeartbeatRecord {
            at_unix_ms: self.clock.now_unix_ms(),
            every_ms: ms(every),
        };
        let node = nodes::register_beating(&self.db, &self.keys, &req, beat).await;
        let node = match node {
            Ok(n) => n,
            Err(err) => {
                m::agent_call("register", "error");
                return Err(err.into());
            }
        };
        m::agent_call("register", "ok");
        let count = self.shard_count().await?;
        Ok(Response::new(v1::RegisterNodeResponse {
            node_epoch: node.epoch,
            heartbeat_interval_ms: ms(every),
            node_timeout_ms: ms(self.config.node_timeout.max(every * 3)),
            region_lease_remaining_ms: self.region_lease_remaining_ms().await,
            region: self.region.clone(),
            shard_id: shard_of_node(&node.node_id, count),
        }))
    }

    type AssignmentsStream = CommandStream;

    async fn assignments(
        &self,
        request: Request<v1::NodeAssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let req = request.into_inner();
        let cursor = if req.cursor.is_empty() {
            None
        } else {
            Some(Cursor::decode(&req.cursor).ok_or_else(|| {
                Status::out_of_range(
                    "cursor is not one this region issued: reopen with an empty cursor",
                )
            })?)
        };
        let node = self
            .db
            .run(|tx, _| {
                let keys = self.keys.clone();
                let id = req.node_id.clone();
                async move { crate::model::view::read_node(&tx, &keys, &id).await }
            })
            .await?;
        match node {
            Some(n)
                if n.epoch == req.node_epoch && n.liveness != crate::model::NodeLiveness::Down => {}
            _ => {
                m::agent_call("assignments", "stale_epoch");
                m::fencing_rejection("node");
                return Err(Status::failed_precondition(format!(
                    "node epoch {} of {} is not current: register again",
                    req.node_epoch, req.node_id
                )));
            }
        }
        let shard = shard_of_node(&req.node_id, self.shard_count().await?);
        if !self.leading.lock().contains_key(&shard) {
            m::agent_call("assignments", "not_leader");
            return Err(self.not_leader(shard).await);
        }
        m::agent_call("assignments", "ok");
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(pump(
            self.db.clone(),
            self.keys.clone(),
            req.node_id,
            req.node_epoch,
            cursor,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_task_status(
        &self,
        request: Request<v1::ReportTaskStatusRequest>,
    ) -> Result<Response<v1::ReportTaskStatusResponse>, Status> {
        let req = request.into_inner();
        if req.reports.len() > meridian_proto::limits::MAX_BATCH_ITEMS {
            return Err(Status::invalid_argument("reports: at most 1000 per call"));
        }
        if !self.take_report_token(&req.node_id) {
            m::agent_call("report", "rate_limited");
            return Err(Status::resource_exhausted(
                "status reports of this node exceed the allowed rate: retry later, coalescing",
            ));
        }
        let (check, results) =
            nodes::report(&self.db, &self.keys, &req, self.clock.now_unix_ms()).await?;
        let (verdict, current) = match check {
            EpochCheck::Current => (v1::Verdict::Accepted, req.node_epoch),
            EpochCheck::Stale { current } => (v1::Verdict::StaleEpoch, current),
            EpochCheck::Unknown => (v1::Verdict::NotFound, 0),
        };
        m::agent_call(
            "report",
            if verdict == v1::Verdict::Accepted {
                "ok"
            } else {
                "stale_epoch"
            },
        );
        if verdict == v1::Verdict::Accepted {
            for r in &req.reports {
                m::task_report(r.state);
            }
        } else {
            m::fencing_rejection("node");
        }
        Ok(Response::new(v1::ReportTaskStatusResponse {
            verdict: verdict as i32,
            current_epoch: current,
            results,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let every = self.heartbeat_every().await;
        let beat = nodes::heartbeat(&self.db, &self.keys, &req).await?;
        if beat.check == EpochCheck::Current && self.heartbeat_write_due(&req.node_id) {
            let record = HeartbeatRecord {
                at_unix_ms: self.clock.now_unix_ms(),
                every_ms: ms(every),
            };
            nodes::record_beat(&self.db, &self.keys, &req.node_id, record).await?;
        }
        let (reregister, current) = match beat.check {
            EpochCheck::Current => (false, req.node_epoch),
            EpochCheck::Stale { current } => (true, current),
            EpochCheck::Unknown => (true, 0),
        };
        m::agent_call("heartbeat", if reregister { "stale_epoch" } else { "ok" });
        if reregister {
            m::fencing_rejection("node");
        }
        Ok(Response::new(v1::HeartbeatResponse {
            reregister,
            current_node_epoch: current,
            heartbeat_interval_ms: ms(every),
            region_lease_remaining_ms: beat
                .region_lease_expires_unix_ms
                .saturating_sub(self.clock.now_unix_ms()),
            stop: beat.orphans,
        }))
    }
}
