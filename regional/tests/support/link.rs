//! Running a test region's link against a fake global tier served on
//! 127.0.0.1:0. Unlike the rest of the support, the link runs on the system
//! clock: its backoff, reports and coalescing need time to pass on their
//! own (the tests await what they see, and never sleep).

use std::time::Duration;

use meridian_control::SystemClock;
use meridian_control::lease::{Identity, LeaseRuntime};
use meridian_proto::v1::region_link_server::{RegionLink, RegionLinkServer};
use meridian_regional::link::{LinkConfig, LinkCtx, run};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

use super::Region;

/// The link of `region`'s replica: its store, memory and write pipeline,
/// with lease duties on the test's runtime.
fn link_ctx(region: &Region) -> LinkCtx {
    LinkCtx {
        db: region.db.clone(),
        keys: region.keys.clone(),
        clock: SystemClock::shared(),
        identity: Identity::new_boot("replica-a"),
        pipeline: region.fx.path.pipeline.clone(),
        state: region.fx.path.state.clone(),
        leases: LeaseRuntime::inline(),
        lease_store: region.db.clone(),
    }
}

/// Serves `fake` on a loopback port and runs `region`'s link against it,
/// sending capacity and a status catch-up every `report_every`; the sender stops the link.
pub async fn start_link<S: RegionLink>(
    region: &Region,
    fake: S,
    report_every: Duration,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegionLinkServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let link = tokio::spawn(run(
        link_ctx(region),
        LinkConfig {
            security: meridian_control::tls::Security::Insecure,
            region: "r1".into(),
            global: format!("http://{addr}"),
            replica: "replica-a".into(),
            endpoint: "http://127.0.0.1:1".into(),
            lease: Duration::from_secs(5),
            report_every,
            tombstone_retention: meridian_regional::link::compact::DEFAULT_TOMBSTONE_RETENTION,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    (stop, link)
}

/// Answers of a fake global tier that accepts everything under region lease
/// epoch 1, for the methods a test does not script.
pub mod accept {
    use meridian_proto::v1;
    use tonic::Response;

    fn ok() -> i32 {
        v1::Verdict::Accepted as i32
    }

    /// A registration at epoch 1, for `lease_ms`, renewed every third of it.
    pub fn registered(lease_ms: u64) -> Response<v1::RegisterRegionResponse> {
        Response::new(v1::RegisterRegionResponse {
            verdict: ok(),
            region_lease_epoch: 1,
            lease_duration_ms: lease_ms,
            renew_interval_ms: lease_ms / 3,
            current_leader_epoch: 0,
        })
    }

    /// A renewal at epoch 1 for `lease_ms`.
    pub fn renewed(lease_ms: u64) -> Response<v1::RenewRegionLeaseResponse> {
        Response::new(v1::RenewRegionLeaseResponse {
            verdict: ok(),
            current_epoch: 1,
            lease_duration_ms: lease_ms,
        })
    }

    /// A capacity report taken.
    pub fn capacity() -> Response<v1::ReportCapacityResponse> {
        Response::new(v1::ReportCapacityResponse {
            verdict: ok(),
            current_epoch: 1,
        })
    }

    /// `n` items accepted.
    pub fn items(n: usize) -> Vec<v1::ItemResult> {
        vec![
            v1::ItemResult {
                verdict: ok(),
                ..Default::default()
            };
            n
        ]
    }

    /// `n` status updates accepted.
    pub fn statuses(n: usize) -> Response<v1::ReportStatusResponse> {
        Response::new(v1::ReportStatusResponse {
            verdict: ok(),
            current_epoch: 1,
            results: items(n),
        })
    }
}
