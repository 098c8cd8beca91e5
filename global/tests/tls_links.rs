//! The global tier under mutual TLS, on real sockets: a region speaks only
//! for the region its certificate names, only regions speak RegionLink,
//! node agents have no business with the federation API, and the HTTP
//! server is HTTPS. Certificates come from the PKI code `meridian dev` uses.

use crate::common;

use common::Harness;
use meridian_control::tls::pki::Authority;
use meridian_control::tls::stream::{channel, dial_http};
use meridian_control::tls::{Role, Security};
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::{
    CheckConsoleTokenRequest, ListRegionsRequest, RegisterRegionRequest, ReplicaIdentity,
    Role as RoleOfToken,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

struct Tiers {
    global: Harness,
    pki: tempfile::TempDir,
    ca: Authority,
}

impl Tiers {
    async fn start() -> Tiers {
        let pki = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(pki.path()).unwrap();
        let files = ca.issue(pki.path(), "global", &[Role::Global]).unwrap();
        let security = Security::tls(files).unwrap();
        let global = Harness::start(|c| c.security = security).await;
        Tiers { global, pki, ca }
    }

    fn security(&self, name: &str, roles: &[Role]) -> Security {
        Security::tls(self.ca.issue(self.pki.path(), name, roles).unwrap()).unwrap()
    }

    fn channel(&self, security: &Security) -> Channel {
        let url = format!("http://{}", self.global.grpc());
        channel(Endpoint::from_shared(url).unwrap(), security)
    }
}

fn registration(region: &str) -> RegisterRegionRequest {
    RegisterRegionRequest {
        region: region.into(),
        replica: Some(ReplicaIdentity {
            replica_id: format!("{region}-0"),
            boot_id: format!("boot-{region}"),
            ..ReplicaIdentity::default()
        }),
        leader_epoch: 1,
        ..RegisterRegionRequest::default()
    }
}

#[tokio::test]
async fn a_region_claiming_another_regions_id_is_refused_and_its_own_is_registered() {
    let tiers = Tiers::start().await;
    let eu = tiers.security("eu-west", &[Role::Region("eu-west".into())]);
    let mut link = RegionLinkClient::new(tiers.channel(&eu));

    let refused = link
        .register_region(registration("us-east"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("\"us-east\""), "{refused}");

    let own = link
        .register_region(registration("eu-west"))
        .await
        .expect("eu-west registers as eu-west")
        .into_inner();
    assert!(own.region_lease_epoch > 0);

    // Nothing was registered under the claimed name.
    let client = tiers.security("ops", &[Role::Client("ops".into())]);
    let regions = FederationClient::new(tiers.channel(&client))
        .list_regions(ListRegionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .regions;
    let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["eu-west"]);
}

#[tokio::test]
async fn only_regions_speak_region_link_and_agents_are_kept_off_the_federation_api() {
    let tiers = Tiers::start().await;
    let agent = tiers.security("n1", &[Role::Agent("n1".into())]);
    let refused = RegionLinkClient::new(tiers.channel(&agent))
        .register_region(registration("n1"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("RegionLink"), "{refused}");

    let refused = FederationClient::new(tiers.channel(&agent))
        .list_regions(ListRegionsRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");

    let plain = FederationClient::new(tiers.channel(&Security::Insecure))
        .list_regions(ListRegionsRequest {})
        .await
        .unwrap_err();
    assert_eq!(plain.message(), "transport error", "{plain}");
}

/// `GET /healthz` over `security`: the status line, or the dial's error.
async fn healthz(tiers: &Tiers, security: &Security) -> std::io::Result<String> {
    let addr = tiers.global.running.http_addr.unwrap();
    let mut io = dial_http(addr, security).await?;
    io.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    io.read_to_string(&mut answer).await?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn the_http_server_speaks_https_and_refuses_plain_text() {
    let tiers = Tiers::start().await;
    let client = tiers.security("ops", &[Role::Client("ops".into())]);
    assert_eq!(healthz(&tiers, &client).await.unwrap(), "HTTP/1.0 200 OK");
    // Plain HTTP gets no answer: the server wants a TLS handshake.
    let plain = healthz(&tiers, &Security::Insecure).await;
    assert!(
        !plain.as_ref().is_ok_and(|line| line.starts_with("HTTP/")),
        "{plain:?}"
    );
}

#[tokio::test]
async fn a_region_learns_who_a_console_token_stands_for_and_only_for_its_own_console() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Authority::open_or_create(pki.path()).unwrap();
    let files = ca.issue(pki.path(), "global", &[Role::Global]).unwrap();
    let admin = meridian_cli::dev::token::generate().unwrap();
    let bootstrap = admin.clone();
    let global = Harness::start(move |c| {
        c.security = Security::tls(files).unwrap();
        c.auth_enabled = true;
        c.bootstrap_token = Some(meridian_global::auth::Secret(bootstrap));
    })
    .await;
    let tiers = Tiers { global, pki, ca };
    let region = tiers.security("eu-west-0", &[Role::Region("eu-west".into())]);
    let mut link = RegionLinkClient::new(tiers.channel(&region));
    let ask = |region: &str, token: &str| CheckConsoleTokenRequest {
        region: region.into(),
        token: token.into(),
    };
    let answer = link
        .check_console_token(ask("eu-west", &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.role, RoleOfToken::Admin as i32);
    assert_eq!(answer.name, "bootstrap");
    assert!(!answer.token_id.is_empty());

    let unknown = meridian_cli::dev::token::generate().unwrap();
    let refused = link
        .check_console_token(ask("eu-west", &unknown))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");

    // A region asks only for its own console.
    let refused = link
        .check_console_token(ask("us-east", &admin))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    // And an agent not at all.
    let agent = tiers.security("n1", &[Role::Agent("n1".into())]);
    let refused = RegionLinkClient::new(tiers.channel(&agent))
        .check_console_token(ask("n1", &admin))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
}
