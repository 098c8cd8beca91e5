//! Shared helpers of the access tests: a replica with authentication on,
//! tokens of each role, clients presenting them over gRPC and HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;

use meridian_cli::auth::Bearer;
use meridian_global::GlobalConfig;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::common::{Harness, guarded};

/// A Federation client presenting a token (or none).
pub type Api = FederationClient<InterceptedService<Channel, Bearer>>;

/// A replica with authentication on and `admin` as its bootstrap token.
pub struct Secured {
    pub harness: Harness,
    pub admin: String,
}

impl Secured {
    pub async fn start(tune: impl FnOnce(&mut GlobalConfig)) -> Secured {
        let admin = meridian_cli::dev::token::generate().unwrap();
        let bootstrap = admin.clone();
        let harness = Harness::start(move |c| {
            c.auth_enabled = true;
            c.bootstrap_token = Some(meridian_global::auth::Secret(bootstrap));
            tune(c);
        })
        .await;
        Secured { harness, admin }
    }

    /// A client presenting `token`.
    pub async fn api(&self, token: Option<&str>) -> Api {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.harness.grpc()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        FederationClient::with_interceptor(channel, Bearer::new(token).unwrap())
    }

    /// A new token of `role` on `tenants`, made by the admin.
    pub async fn token(&self, name: &str, role: Role, tenants: &[&str]) -> (String, TokenInfo) {
        let mut admin = self.api(Some(&self.admin)).await;
        let r = admin
            .create_token(CreateTokenRequest {
                name: name.into(),
                role: role as i32,
                tenants: tenants.iter().map(|t| t.to_string()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        (r.secret, r.token.unwrap())
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.harness.running.http_addr.unwrap()
    }
}

/// An HTTP answer: status, head and body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request presenting `token`; reads the head and, unless the
/// answer is an event stream (which never ends), the body.
pub async fn http(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    send(addr, method, path, &headers, body).await
}

/// One HTTP/1.1 request with `headers`; reads the head and, unless the
/// answer is an event stream (which never ends), the body.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    guarded("an HTTP answer", async {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, _)) = text.split_once("\r\n\r\n")
                && head.to_ascii_lowercase().contains("text/event-stream")
            {
                break;
            }
        }
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Answer {
            status: text[9..12].parse().unwrap(),
            head: head.to_string(),
            body: body.to_string(),
        }
    })
    .await
}
