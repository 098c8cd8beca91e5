//! Mutual TLS over real sockets: a gRPC server (the health service) behind
//! `tls::stream::secure_listener`, and clients with certificates of the same
//! CA, of another CA, or none. Certificates come from `tls::pki`, the code
//! `meridian dev` uses.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use meridian_control::net;
use meridian_control::tls::identity::{Caller, RoleKind, only};
use meridian_control::tls::pki::Authority;
use meridian_control::tls::stream::{channel, secure_listener};
use meridian_control::tls::{Peer, Role, Security, Tls, TlsFiles};
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Serials of the client certificates the server saw, call by call.
type Seen = Arc<Mutex<Vec<String>>>;

struct Server {
    addr: SocketAddr,
    seen: Seen,
}

/// A health server on a real socket with `security`, open to `allowed`.
async fn serve(security: &Security, allowed: &'static [RoleKind]) -> Server {
    let listener = net::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let addr = listener.local_addr;
    let listener = secure_listener(listener, security);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let seen = Seen::default();
    let record = seen.clone();
    let mut gate = only(allowed, "Health");
    let service = tonic::service::interceptor::InterceptedService::new(
        health,
        move |request: tonic::Request<()>| {
            let request = gate(request)?;
            if let Some(peer) = Peer::of(&request).peer() {
                record.lock().push(peer.serial.clone());
            }
            Ok(request)
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(listener.incoming),
    );
    Server { addr, seen }
}

async fn check(addr: SocketAddr, security: &Security) -> Result<(), tonic::Status> {
    let endpoint = Endpoint::from_shared(format!("{}://{addr}", security.scheme())).unwrap();
    let mut client = HealthClient::new(channel(endpoint, security));
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

/// A call the server never answered: the connection was closed during or
/// right after the handshake (tonic reports that as a transport error).
fn assert_refused_at_handshake(err: &tonic::Status) {
    assert!(
        matches!(err.code(), Code::Unknown | Code::Unavailable),
        "{err}"
    );
    assert_eq!(err.message(), "transport error", "{err}");
}

fn tls(files: TlsFiles) -> Security {
    Security::Tls(Tls::load(files).unwrap())
}

fn pki(dir: &Path) -> (Authority, Security) {
    let ca = Authority::open_or_create(dir).unwrap();
    let server = tls(ca.issue(dir, "global", &[Role::Global]).unwrap());
    (ca, server)
}

#[tokio::test]
async fn a_client_with_a_certificate_of_the_ca_is_served_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server_tls) = pki(dir.path());
    let server = serve(&server_tls, &[RoleKind::Client]).await;
    let files = ca
        .issue(dir.path(), "ops", &[Role::Client("ops".into())])
        .unwrap();
    check(server.addr, &tls(files.clone())).await.unwrap();

    let der = rustls::pki_types::pem::PemObject::from_pem_file(&files.cert).unwrap();
    let cert: rustls::pki_types::CertificateDer<'static> = der;
    let peer = Peer::from_der(cert.as_ref()).unwrap();
    assert_eq!(peer.roles, vec![Role::Client("ops".into())]);
    assert_eq!(*server.seen.lock(), vec![peer.serial]);
}

#[tokio::test]
async fn a_client_with_a_certificate_of_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, server_tls) = pki(dir.path());
    let server = serve(&server_tls, &[RoleKind::Client]).await;

    // A certificate of a second CA, trusting the server's CA: the server
    // alone can tell it is a stranger.
    let other = dir.path().join("other");
    let other_ca = Authority::open_or_create(&other).unwrap();
    let stranger = other_ca
        .issue(&other, "ops", &[Role::Client("ops".into())])
        .unwrap();
    let stranger = TlsFiles {
        ca: dir.path().join("ca.pem"),
        ..stranger
    };
    let err = check(server.addr, &tls(stranger)).await.unwrap_err();
    assert_refused_at_handshake(&err);
    assert!(server.seen.lock().is_empty());
}

#[tokio::test]
async fn a_plain_text_client_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, server_tls) = pki(dir.path());
    let server = serve(&server_tls, &[RoleKind::Client]).await;
    let err = check(server.addr, &Security::Insecure).await.unwrap_err();
    assert_refused_at_handshake(&err);
    assert!(server.seen.lock().is_empty());
}

#[tokio::test]
async fn a_certificate_without_the_services_role_is_denied_naming_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server_tls) = pki(dir.path());
    let server = serve(&server_tls, &[RoleKind::Agent]).await;
    let region = ca
        .issue(dir.path(), "region-a", &[Role::Region("a".into())])
        .unwrap();
    let err = check(server.addr, &tls(region)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("agent"), "{err}");
    assert!(err.message().contains("meridian://region/a"), "{err}");
}

/// The serial of the certificate the server at `addr` presents to a new
/// connection, read from the handshake.
async fn presented_serial(addr: SocketAddr, client: &Tls) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(client.client_config())
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    Peer::from_der(leaf.as_ref()).unwrap().serial
}

fn serial_of(path: &Path) -> String {
    let der: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_file(path).unwrap();
    Peer::from_der(der.as_ref()).unwrap().serial
}

#[tokio::test]
async fn a_server_certificate_rotated_on_disk_is_presented_by_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server_tls) = pki(dir.path());
    let server = serve(&server_tls, &[RoleKind::Client]).await;
    let client = Tls::load(
        ca.issue(dir.path(), "ops", &[Role::Client("ops".into())])
            .unwrap(),
    )
    .unwrap();
    let before = serial_of(&dir.path().join("global.pem"));
    assert_eq!(presented_serial(server.addr, &client).await, before);

    let rotated = ca.issue(dir.path(), "global", &[Role::Global]).unwrap();
    let after = serial_of(&rotated.cert);
    assert_ne!(before, after);
    assert_eq!(presented_serial(server.addr, &client).await, after);
}

#[tokio::test]
async fn a_client_certificate_rotated_on_disk_is_used_by_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server_tls) = pki(dir.path());
    let server = serve(&server_tls, &[RoleKind::Client]).await;
    let files = ca
        .issue(dir.path(), "ops", &[Role::Client("ops".into())])
        .unwrap();
    let client = tls(files.clone());
    check(server.addr, &client).await.unwrap();
    let first = serial_of(&files.cert);

    ca.issue(dir.path(), "ops", &[Role::Client("ops".into())])
        .unwrap();
    let second = serial_of(&files.cert);
    // A new channel is a new connection: the same `Tls` reads the new files.
    check(server.addr, &client).await.unwrap();
    assert_eq!(*server.seen.lock(), vec![first, second]);
}

#[tokio::test]
async fn a_rotation_that_does_not_load_keeps_the_loaded_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, server_tls) = pki(dir.path());
    let server = serve(&server_tls, &[RoleKind::Client]).await;
    let client = Tls::load(
        ca.issue(dir.path(), "ops", &[Role::Client("ops".into())])
            .unwrap(),
    )
    .unwrap();
    let before = serial_of(&dir.path().join("global.pem"));
    std::fs::write(dir.path().join("global.pem"), "not a certificate").unwrap();
    assert_eq!(presented_serial(server.addr, &client).await, before);
}

#[test]
fn a_plain_caller_passes_every_check_and_names_no_peer() {
    let caller = Caller::Plain;
    assert!(caller.check_node("n1").is_ok());
    assert!(caller.check_region("a").is_ok());
    assert!(caller.peer().is_none());
}
