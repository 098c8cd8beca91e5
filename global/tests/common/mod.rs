//! Shared helpers of the in-process gRPC tests: start a replica on
//! loopback, connect clients, build valid specs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use meridian_control::SystemClock;
use meridian_global::GlobalConfig;
use meridian_global::server::{Running, start_with};
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::*;
use meridian_store::RangeOption;
use tonic::transport::Channel;

/// A generous guard against hangs; tests never wait on it for a condition.
pub const GUARD: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test if it takes longer than the guard.
pub async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A replica on a fresh SQLite file, leading, with HTTP on.
pub struct Harness {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl Harness {
    pub async fn start(tune: impl FnOnce(&mut GlobalConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("global.db").display());
        let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
        config.http = Some("127.0.0.1:0".parse().unwrap());
        config.controller_every = Duration::from_millis(20);
        tune(&mut config);
        let db = meridian_store::open(&url).await.unwrap();
        let running = start_with(config, db, SystemClock::shared()).await.unwrap();
        guarded("leadership", running.wait_leader()).await;
        Harness { running, dir }
    }

    pub fn grpc(&self) -> SocketAddr {
        self.running.grpc_addr
    }

    pub async fn federation(&self) -> FederationClient<Channel> {
        FederationClient::connect(format!("http://{}", self.grpc()))
            .await
            .unwrap()
    }

    pub async fn link(&self) -> RegionLinkClient<Channel> {
        RegionLinkClient::connect(format!("http://{}", self.grpc()))
            .await
            .unwrap()
    }

    /// Keys stored under the deployment, other than the leader's own
    /// records (lease, published fence and advertisement) and the version
    /// of the job indexes (written by the leader at start).
    pub async fn stored_keys(&self) -> Vec<Vec<u8>> {
        let keys = self.running.keys.clone();
        let (lease, fence, info) = (keys.leader_lease(), keys.leader_fence(), keys.leader_info());
        let version = keys.job_index_version();
        let rows = self
            .running
            .db
            .run(|tx, _| {
                let range = keys.root().range();
                async move { tx.get_range(RangeOption::from(range)).await }
            })
            .await
            .unwrap();
        rows.into_iter()
            .map(|kv| kv.key)
            .filter(|k| *k != lease && *k != fence && *k != info && *k != version)
            .collect()
    }
}

/// A valid spec for `tenant`.
pub fn spec(tenant: &str) -> JobSpec {
    JobSpec {
        name: "sleepy".into(),
        tenant: tenant.into(),
        task_count: 2,
        task: Some(TaskTemplate {
            kind: Some(task_template::Kind::Simulated(Simulated {
                duration_ms: 1000,
                exit_code: 0,
            })),
        }),
        resources: Some(Resources {
            cpu_millis: 500,
            memory_bytes: 1 << 28,
            ..Resources::default()
        }),
        ..JobSpec::default()
    }
}

/// A submit request.
pub fn submit(request_id: &str, spec: JobSpec) -> SubmitJobRequest {
    SubmitJobRequest {
        request_id: request_id.into(),
        spec: Some(spec),
    }
}

/// Ample capacity for a region's report.
pub fn capacity() -> RegionCapacity {
    RegionCapacity {
        nodes_total: 10,
        nodes_ready: 10,
        cpu_millis_allocatable: 1_000_000,
        memory_bytes_allocatable: 1 << 40,
        max_node_free: Some(Resources {
            cpu_millis: 100_000,
            memory_bytes: 1 << 36,
            ..Resources::default()
        }),
        ..RegionCapacity::default()
    }
}

/// Registers `region` and reports ample capacity; returns its lease epoch.
pub async fn register(link: &mut RegionLinkClient<Channel>, region: &str) -> u64 {
    let reg = link
        .register_region(RegisterRegionRequest {
            region: region.into(),
            replica: Some(ReplicaIdentity {
                replica_id: format!("{region}-0"),
                boot_id: format!("boot-{region}"),
                ..ReplicaIdentity::default()
            }),
            leader_epoch: 1,
            ..RegisterRegionRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.verdict, Verdict::Accepted as i32);
    let cap = link
        .report_capacity(ReportCapacityRequest {
            region: region.into(),
            region_lease_epoch: reg.region_lease_epoch,
            capacity: Some(capacity()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.verdict, Verdict::Accepted as i32);
    reg.region_lease_epoch
}

/// Opens `region`'s assignment stream from the start, under region lease
/// `lease`.
pub async fn assignments(
    link: &mut RegionLinkClient<Channel>,
    region: &str,
    lease: u64,
) -> tonic::Streaming<AssignmentEvent> {
    link.assignments(AssignmentsRequest {
        region: region.into(),
        region_lease_epoch: lease,
        cursor: Vec::new(),
    })
    .await
    .expect("open the assignment stream")
    .into_inner()
}

/// A minimal HTTP/1.1 exchange: returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
