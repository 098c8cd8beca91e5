//! What the regional integration tests share: an in-memory region store
//! with a manual clock, node registration, leading a shard, and serving
//! `AgentLink` and `RegionAdmin` over real gRPC on 127.0.0.1:0.
//!
//! Owns nothing the tests assert on; it must never sleep or read the system
//! clock.

#![allow(dead_code)]

pub mod recording;

use std::net::SocketAddr;
use std::time::Duration;

use meridian_control::lease::{Acquired, Identity, Lease};
use meridian_control::{ManualClock, SharedClock};
use meridian_proto::v1;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use meridian_proto::v1::agent_link_server::AgentLinkServer;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use meridian_proto::v1::region_admin_server::RegionAdminServer;
use meridian_regional::agent::{AgentApiConfig, RegionApi};
use meridian_regional::model::{Keys, RegionView, TaskRecord};
use meridian_regional::shard::{Leading, ShardTerm, ensure_layout};
use meridian_store::Database;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

pub const GIB: u64 = 1 << 30;
pub const START_MS: u64 = 1_000_000;

/// A one-shard region in memory, at wall time [`START_MS`].
pub struct Region {
    pub db: Database,
    pub keys: Keys,
    pub clock: ManualClock,
}

impl Region {
    pub async fn new() -> Self {
        let db = meridian_store::open("sqlite::memory:")
            .await
            .expect("store");
        Region::on(db).await
    }

    /// A region whose store records every commit's writes.
    pub async fn recorded() -> (Self, recording::CommitLog) {
        let inner = meridian_store::open_backend("sqlite::memory:")
            .await
            .expect("store");
        let (backend, log) = recording::Recording::wrap(inner);
        (Region::on(Database::new(backend)).await, log)
    }

    async fn on(db: Database) -> Self {
        let keys = Keys::new("r1");
        ensure_layout(&db, &keys, 1).await.expect("layout");
        Region {
            db,
            keys,
            clock: ManualClock::starting_at_unix_ms(START_MS),
        }
    }

    pub fn shared_clock(&self) -> SharedClock {
        self.clock.shared()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.shared().now_unix_ms()
    }

    /// Takes the lease of shard 0 as `name`.
    pub async fn lead(&self, name: &str) -> ShardTerm {
        let lease = Lease::new(
            self.db.clone(),
            self.keys.shard_lease(0),
            Identity::new_boot(name),
            self.shared_clock(),
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        match lease.try_acquire().await.expect("acquire") {
            Acquired::Held(held) => ShardTerm {
                shard: 0,
                epoch: held.fence.epoch(),
                fence: held.fence,
            },
            Acquired::Busy(r) => panic!("lease busy: {r:?}"),
        }
    }

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

    /// Serves `AgentLink` and `RegionAdmin` on 127.0.0.1:0; the replica
    /// leads the shards in the returned [`Leading`] (shard 0 at `epoch`).
    pub async fn serve(&self, config: AgentApiConfig, epoch: u64) -> (SocketAddr, Leading) {
        let leading: Leading = Default::default();
        leading.lock().insert(0, epoch);
        let api = RegionApi::new(
            self.db.clone(),
            self.keys.clone(),
            self.shared_clock(),
            "r1",
            leading.clone(),
            config,
        );
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
            attempt,
        }),
        state: state as i32,
        exit_code: matches!(state, v1::TaskState::Succeeded).then_some(0),
        ..Default::default()
    }
}
