//! What the regional integration tests share: an in-memory region (a
//! `Fixture`) on a manual clock, node registration, leading its shards, and serving
//! `AgentLink` and `RegionAdmin` over real gRPC on 127.0.0.1:0.
//!
//! Owns nothing the tests assert on; it must never sleep or read the system
//! clock.

#![allow(dead_code)]

pub mod link;
pub mod recording;

use std::net::SocketAddr;

use meridian_control::{ManualClock, SharedClock};
use meridian_proto::v1;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use meridian_proto::v1::agent_link_server::AgentLinkServer;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use meridian_proto::v1::region_admin_server::RegionAdminServer;
use meridian_regional::agent::{AgentApiConfig, ApiParts, RegionApi};
use meridian_regional::fixture::Fixture;
use meridian_regional::model::{Keys, NodeRecord, RegionView, TaskRecord};
use meridian_regional::pipeline::report::Report;
use meridian_regional::pipeline::{Authority, Intent, Outcome};
use meridian_regional::placer::{PlacerConfig, ShardLoop};
use meridian_regional::shard::{Leading, ShardTerm};
use meridian_store::Database;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

pub const GIB: u64 = 1 << 30;
pub const START_MS: u64 = 1_000_000;

/// A region in memory, at wall time [`START_MS`] on a manual clock, whose
/// every shard is led by this process (a [`Fixture`]).
pub struct Region {
    pub db: Database,
    pub keys: Keys,
    pub clock: ManualClock,
    pub fx: Fixture,
}

impl Region {
    /// A one-shard region.
    pub async fn new() -> Self {
        Region::with_shards(1).await
    }

    /// A region of `shards` shards.
    pub async fn with_shards(shards: u32) -> Self {
        let db = meridian_store::open("sqlite::memory:")
            .await
            .expect("store");
        Region::on(db, shards).await
    }

    /// A one-shard region whose store records every commit's writes.
    pub async fn recorded() -> (Self, recording::CommitLog) {
        let inner = meridian_store::open_backend("sqlite::memory:")
            .await
            .expect("store");
        let (backend, log) = recording::Recording::wrap(inner);
        (Region::on(Database::new(backend), 1).await, log)
    }

    async fn on(db: Database, shards: u32) -> Self {
        let clock = ManualClock::starting_at_unix_ms(START_MS);
        let fx = Fixture::open(
            db.clone(),
            "r1",
            shards,
            clock.shared(),
            PlacerConfig::default(),
        )
        .await
        .expect("fixture");
        Region {
            db,
            keys: fx.keys.clone(),
            clock,
            fx,
        }
    }

    pub fn shared_clock(&self) -> SharedClock {
        self.clock.shared()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.shared().now_unix_ms()
    }

    /// The term this process holds on shard 0.
    pub fn term(&self) -> ShardTerm {
        self.fx.term(0).expect("term")
    }

    /// Registers `node` as its agent would (fenced by its shard's term).
    pub async fn register(&self, node: &str, boot: &str) -> NodeRecord {
        self.fx
            .register(registration(node, boot))
            .await
            .expect("register")
    }

    /// Gives the region job `job` (an ASSIGN at epoch 1).
    pub async fn insert(&self, job: &str, spec: v1::JobSpec) {
        self.fx
            .insert_jobs(vec![(job.to_string(), spec)])
            .await
            .expect("insert");
    }

    /// The placement loop of `shard`.
    pub async fn shard_loop(&self, shard: u32) -> ShardLoop {
        self.fx.shard_loop(shard).await.expect("shard loop")
    }

    /// Submits `intent` to the pipeline under the term of `shard`.
    pub async fn submit(
        &self,
        shard: u32,
        intent: Intent,
    ) -> meridian_regional::error::Result<Outcome> {
        let authority = Authority {
            fence: self.fx.fence(shard).expect("fence"),
            generation: None,
        };
        self.fx.path.pipeline.submit(Some(authority), intent).await
    }

    /// The epoch of `node`'s registration as memory holds it.
    pub fn node_epoch(&self, node: &str) -> u64 {
        self.fx.path.state.read().nodes[node]
            .record
            .as_ref()
            .expect("node record")
            .epoch
    }

    /// Submits `reports` as `node`'s agent does under `node_epoch`, through
    /// the write pipeline as the agent API submits them; the verdict of
    /// each.
    pub async fn report_as(
        &self,
        node: &str,
        node_epoch: u64,
        reports: Vec<v1::TaskReport>,
    ) -> Vec<v1::ItemResult> {
        let out = self
            .fx
            .path
            .pipeline
            .submit(
                None,
                Intent::Report(Report {
                    request: v1::ReportTaskStatusRequest {
                        node_id: node.into(),
                        node_epoch,
                        reports,
                    },
                    now_unix_ms: self.now_ms(),
                }),
            )
            .await
            .expect("report");
        let Outcome::Reported(out) = out else {
            panic!("a report answered {out:?}");
        };
        out.results
    }

    /// The region as stored (not as remembered).
    pub async fn view(&self) -> RegionView {
        self.db
            .run(|tx, _| {
                let keys = self.keys.clone();
                async move { RegionView::read(&tx, &keys).await }
            })
            .await
            .expect("view")
    }

    /// Task `index` of `job` as stored.
    pub async fn task(&self, job: &str, index: u32) -> TaskRecord {
        let view = self.view().await;
        view.blocks
            .iter()
            .find_map(|((j, _), b)| {
                (j == job && index >= b.first && index < b.first + b.tasks.len() as u32)
                    .then(|| b.tasks[(index - b.first) as usize].clone())
            })
            .expect("task exists")
    }

    /// Serves `AgentLink` and `RegionAdmin` on 127.0.0.1:0 from this
    /// process's data path; the replica leads the shards in the returned
    /// [`Leading`] (shard 0 at its term's epoch).
    pub async fn serve(&self, config: AgentApiConfig) -> (SocketAddr, Leading) {
        let leading: Leading = Default::default();
        leading.lock().insert(0, self.term().epoch);
        let api = RegionApi::new(ApiParts {
            db: self.db.clone(),
            lease_store: self.db.clone(),
            keys: self.keys.clone(),
            clock: self.shared_clock(),
            region: "r1".into(),
            identity: self.fx.identity.clone(),
            leading: leading.clone(),
            config,
            pipeline: self.fx.path.pipeline.clone(),
            state: self.fx.path.state.clone(),
            beats: self.fx.path.beats.clone(),
            streams: self.fx.path.streams.clone(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentLinkServer::new(api.clone()))
                .add_service(RegionAdminServer::new(api))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (addr, leading)
    }
}

impl Region {
    /// Serves the replica's API as production wires it
    /// (`server::api_router`) on a TLS listener of `security`.
    pub async fn serve_secure(
        &self,
        config: AgentApiConfig,
        security: &meridian_control::tls::Security,
    ) -> SocketAddr {
        let leading: Leading = Default::default();
        leading.lock().insert(0, self.term().epoch);
        let api = RegionApi::new(ApiParts {
            db: self.db.clone(),
            lease_store: self.db.clone(),
            keys: self.keys.clone(),
            clock: self.shared_clock(),
            region: "r1".into(),
            identity: self.fx.identity.clone(),
            leading,
            config,
            pipeline: self.fx.path.pipeline.clone(),
            state: self.fx.path.state.clone(),
            beats: self.fx.path.beats.clone(),
            streams: self.fx.path.streams.clone(),
        })
        .with_security(security.clone());
        let listener = meridian_control::net::listen("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr;
        let listener = meridian_control::tls::stream::secure_listener(listener, security);
        tokio::spawn(
            meridian_regional::server::api_router(api).serve_with_incoming(listener.incoming),
        );
        addr
    }
}

pub async fn agent_client(addr: SocketAddr) -> AgentLinkClient<Channel> {
    AgentLinkClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

pub async fn admin_client(addr: SocketAddr) -> RegionAdminClient<Channel> {
    RegionAdminClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

/// A registration of `node` (4 cores, 8 GiB) with boot id `boot`.
pub fn registration(node: &str, boot: &str) -> v1::RegisterNodeRequest {
    v1::RegisterNodeRequest {
        node_id: node.into(),
        boot_id: boot.into(),
        allocatable: Some(v1::Resources {
            cpu_millis: 4_000,
            memory_bytes: 8 * GIB,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        ..Default::default()
    }
}

/// A report of `state` for attempt `attempt` of task `index` of `job`.
pub fn report(job: &str, index: u32, attempt: u32, state: v1::TaskState) -> v1::TaskReport {
    v1::TaskReport {
        task: Some(v1::TaskAttempt {
            task: Some(v1::TaskId {
                job_id: job.into(),
                index,
            }),
            assignment_epoch: 0,
            attempt,
        }),
        state: state as i32,
        exit_code: matches!(state, v1::TaskState::Succeeded).then_some(0),
        ..Default::default()
    }
}
