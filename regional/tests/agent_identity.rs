//! Who may speak for a node: the region's API as production wires it
//! (`server::api_router`) on a real TLS socket, called by node agents whose
//! certificates (from the PKI code `meridian dev` uses) name their nodes.

use crate::support;

use std::net::SocketAddr;

use meridian_control::tls::pki::Authority;
use meridian_control::tls::stream::channel;
use meridian_control::tls::{Role, Security, TlsFiles};
use meridian_proto::v1;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use meridian_regional::agent::AgentApiConfig;
use support::{Region, registration};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::open_or_create(dir.path()).expect("CA");
        Pki { dir, ca }
    }

    fn security(&self, name: &str, roles: &[Role]) -> Security {
        let files: TlsFiles = self.ca.issue(self.dir.path(), name, roles).expect("issue");
        Security::tls(files).expect("load")
    }
}

/// A region replica serving over TLS with a region certificate.
async fn serve(pki: &Pki) -> (Region, SocketAddr) {
    let region = Region::new().await;
    let security = pki.security("r1", &[Role::Region("r1".into())]);
    let addr = region
        .serve_secure(AgentApiConfig::default(), &security)
        .await;
    (region, addr)
}

fn dial(addr: SocketAddr, security: &Security) -> Channel {
    channel(
        Endpoint::from_shared(format!("http://{addr}")).expect("endpoint"),
        security,
    )
}

fn agent(addr: SocketAddr, security: &Security) -> AgentLinkClient<Channel> {
    AgentLinkClient::new(dial(addr, security))
}

fn assert_denied(status: tonic::Status, naming: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(status.message().contains(naming), "{status}");
}

/// A node's own error in a batched answer: PERMISSION_DENIED naming it.
fn assert_denied_alone(error: Option<&v1::NodeCallError>, naming: &str) {
    let error = error.expect("the node is refused");
    assert_eq!(error.code, Code::PermissionDenied as i32, "{error:?}");
    assert!(error.message.contains(naming), "{error:?}");
}

#[tokio::test]
async fn an_agent_claiming_another_nodes_id_is_refused_on_every_call_naming_a_node() {
    let pki = Pki::new();
    let (_region, addr) = serve(&pki).await;
    let n1 = pki.security("n1", &[Role::Agent("n1".into())]);
    let mut client = agent(addr, &n1);

    // Its own node registers.
    let own = client
        .register(registration("n1", "boot-1"))
        .await
        .expect("n1 registers as n1")
        .into_inner();
    assert!(own.node_epoch > 0);

    // Another node's id is refused, whatever the call.
    assert_denied(
        client
            .register(registration("n2", "boot-1"))
            .await
            .unwrap_err(),
        "\"n2\"",
    );
    assert_denied(
        client
            .heartbeat(v1::HeartbeatRequest {
                node_id: "n2".into(),
                node_epoch: 1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "\"n2\"",
    );
    assert_denied(
        client
            .assignments(v1::NodeAssignmentsRequest {
                node_id: "n2".into(),
                node_epoch: 1,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err(),
        "\"n2\"",
    );
    assert_denied(
        client
            .report_task_status(v1::ReportTaskStatusRequest {
                node_id: "n2".into(),
                node_epoch: 1,
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "\"n2\"",
    );
    // In a batch, a foreign node is refused alone: the certificate's own
    // node is answered as its single call would be.
    let beat = |node: &str| v1::HeartbeatRequest {
        node_id: node.into(),
        node_epoch: own.node_epoch,
        ..Default::default()
    };
    let beats = client
        .heartbeat_nodes(v1::HeartbeatNodesRequest {
            nodes: vec![beat("n1"), beat("n2")],
        })
        .await
        .expect("the batch is answered")
        .into_inner()
        .results;
    assert!(beats[0].response.is_some(), "n1 beats: {beats:?}");
    assert_denied_alone(beats[1].error.as_ref(), "\"n2\"");
    let reports = client
        .report_nodes(v1::ReportNodesRequest {
            nodes: vec![v1::ReportTaskStatusRequest {
                node_id: "n2".into(),
                node_epoch: 1,
                ..Default::default()
            }],
        })
        .await
        .expect("the batch is answered")
        .into_inner()
        .results;
    assert_denied_alone(reports[0].error.as_ref(), "\"n2\"");
    let registrations = client
        .register_nodes(v1::RegisterNodesRequest {
            nodes: vec![registration("n1", "boot-1"), registration("n2", "boot-1")],
        })
        .await
        .expect("the batch is answered")
        .into_inner()
        .results;
    assert_eq!(
        registrations[0].response.as_ref().map(|r| r.node_epoch),
        Some(own.node_epoch),
        "n1 registers again with its epoch: {registrations:?}"
    );
    assert_denied_alone(registrations[1].error.as_ref(), "\"n2\"");
    // Its own heartbeat still goes through.
    client.heartbeat(beat("n1")).await.expect("n1 beats as n1");
}

#[tokio::test]
async fn a_host_of_simulated_nodes_speaks_for_the_nodes_its_prefix_names_and_no_other() {
    let pki = Pki::new();
    let (_region, addr) = serve(&pki).await;
    let host = pki.security(
        "sim",
        &[Role::Agent("sim".into()), Role::Agent("sim-*".into())],
    );
    let mut client = agent(addr, &host);
    client
        .register(registration("sim-000001", "boot-1"))
        .await
        .expect("a node under the prefix registers");
    assert_denied(
        client
            .register(registration("other-000001", "boot-1"))
            .await
            .unwrap_err(),
        "\"other-000001\"",
    );
}

#[tokio::test]
async fn only_agents_speak_agent_link_and_only_the_global_tier_calls_region_admin() {
    let pki = Pki::new();
    let (_region, addr) = serve(&pki).await;

    // A region's certificate is no agent's.
    let other_region = pki.security("r2", &[Role::Region("r2".into())]);
    assert_denied(
        agent(addr, &other_region)
            .register(registration("r2", "boot-1"))
            .await
            .unwrap_err(),
        "AgentLink",
    );

    let list = v1::ListNodesRequest {
        region: "r1".into(),
        ..Default::default()
    };
    let n1 = pki.security("n1", &[Role::Agent("n1".into())]);
    assert_denied(
        RegionAdminClient::new(dial(addr, &n1))
            .list_nodes(list.clone())
            .await
            .unwrap_err(),
        "RegionAdmin",
    );
    let global = pki.security("global", &[Role::Global]);
    RegionAdminClient::new(dial(addr, &global))
        .list_nodes(list)
        .await
        .expect("the global tier lists the region's nodes");
}

#[tokio::test]
async fn an_agent_without_a_certificate_of_the_regions_ca_is_refused() {
    let pki = Pki::new();
    let (_region, addr) = serve(&pki).await;
    // Its certificate is of another CA; it trusts the region's, so the
    // region alone can tell it is a stranger.
    let stranger_pki = Pki::new();
    let files = stranger_pki
        .ca
        .issue(stranger_pki.dir.path(), "n1", &[Role::Agent("n1".into())])
        .expect("issue");
    let stranger = Security::tls(TlsFiles {
        ca: pki.ca.ca_path(),
        ..files
    })
    .expect("load");
    let err = agent(addr, &stranger)
        .register(registration("n1", "boot-1"))
        .await
        .unwrap_err();
    // Refused in the handshake: no call reached the service.
    assert_eq!(err.message(), "transport error", "{err}");

    let plain = agent(addr, &Security::Insecure)
        .register(registration("n1", "boot-1"))
        .await
        .unwrap_err();
    assert_eq!(plain.message(), "transport error", "{plain}");
}
