//! TLS handshakes on both sides of a link, over the network seam.
//!
//! Owns: wrapping a gRPC [`Listener`] so that every accepted connection is
//! a verified TLS session ([`secure_listener`]), the listener of the HTTP
//! servers ([`HttpListener`], for `axum::serve`, TLS or plain), and the
//! channel a client dials ([`channel`]: plain through [`crate::net`], or
//! TCP then TLS with the process's client certificate). Handshakes run
//! concurrently, each bounded in time, so one slow or hostile client never
//! holds up the accepts of others.
//!
//! Must never: hand a server a connection whose handshake failed (it is
//! logged and dropped), or dial plain text when TLS is configured.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint, Uri};

use super::identity::{ConnInfo, Peer};
use super::{Security, Tls};
use crate::net::{Conn, Listener};

/// How long a peer has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections waiting for the server, between the handshakes
/// and the server's accept.
const ACCEPTED_BACKLOG: usize = 256;

fn peer_of(conn: &rustls::CommonState) -> Option<Arc<Peer>> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| Peer::from_der(leaf.as_ref()))
        .map(Arc::new)
}

/// The gRPC listener of a server with `security`: unchanged when plain,
/// else each connection is a TLS session whose client presented a
/// certificate of the CA.
pub fn secure_listener(listener: Listener, security: &Security) -> Listener {
    let tls = match security {
        Security::Insecure => return listener,
        Security::Tls(tls) => tls.clone(),
    };
    let Listener {
        local_addr,
        mut incoming,
    } = listener;
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        while let Some(accepted) = incoming.next().await {
            let conn = match accepted {
                Ok(c) => c,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let acceptor = TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let info = conn.info();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let peer = peer_of(stream.get_ref().1);
                        let info = ConnInfo {
                            secure: true,
                            peer,
                            ..info
                        };
                        let _ = tx.send(Ok(Conn::with_info(stream, info))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(remote = ?info.remote_addr, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        tracing::info!(remote = ?info.remote_addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    Listener {
        local_addr,
        incoming: tokio_stream::wrappers::ReceiverStream::new(rx).boxed(),
    }
}

/// One accepted HTTP connection.
pub type HttpIo = Box<dyn crate::net::Io>;

/// The listener of an HTTP server (`axum::serve`), TLS or plain. Under TLS
/// a client certificate is verified when presented but not required: a
/// browser has none. What a route then requires is the route's to say
/// ([`super::identity::Caller`] from the request's `ConnectInfo<ConnInfo>`).
pub struct HttpListener {
    local_addr: SocketAddr,
    rx: mpsc::Receiver<(HttpIo, ConnInfo)>,
}

impl HttpListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, security: &Security) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
        let tls = match security {
            Security::Insecure => None,
            Security::Tls(t) => Some(t.clone()),
        };
        tokio::spawn(accept_http(listener, local_addr, tls, tx));
        Ok(HttpListener { local_addr, rx })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection whose handshake (if any) succeeded, with what
    /// is known of it; for servers that run their own accept loop. Insert
    /// the [`ConnInfo`] into each request's extensions so
    /// [`super::identity::Caller::from_extensions`] finds it.
    pub async fn accept_conn(&mut self) -> (HttpIo, ConnInfo) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept loop ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }
}

async fn accept_http(
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<Tls>,
    tx: mpsc::Sender<(HttpIo, ConnInfo)>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: the same pause
                // axum's own TCP listener takes.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            local_addr: Some(local_addr),
            remote_addr: Some(remote),
            secure: tls.is_some(),
            peer: None,
        };
        let Some(tls) = &tls else {
            if tx.send((Box::new(stream), info)).await.is_err() {
                return;
            }
            continue;
        };
        let acceptor = TlsAcceptor::from(tls.server_config_optional_client());
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let peer = peer_of(stream.get_ref().1);
                    let _ = tx.send((Box::new(stream), ConnInfo { peer, ..info })).await;
                }
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused (HTTP)");
                }
                Err(_) => tracing::info!(%remote, "TLS handshake timed out (HTTP)"),
            }
        });
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = HttpIo;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.accept_conn().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnInfo {
            local_addr: Some(self.local_addr),
            remote_addr: None,
            secure: false,
            peer: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, HttpListener>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, HttpListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Why a TLS dial failed.
fn dial_error(e: impl std::fmt::Display, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, format!("{what}: {e}"))
}

/// Dials `uri` over TCP, then TLS with `tls`'s client certificate,
/// checking the server's certificate against the URI's host.
async fn dial_tls(
    tls: Tls,
    uri: Uri,
) -> io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let host = uri
        .host()
        .ok_or_else(|| dial_error("no host", "TLS dial"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.clone()).map_err(|e| dial_error(e, "server name"))?;
    let stream = TlsConnector::from(tls.client_config())
        .connect(name, tcp)
        .await
        .map_err(|e| dial_error(e, &format!("TLS handshake with {host}:{port}")))?;
    Ok(TokioIo::new(stream))
}

/// A connection to the HTTP server at `addr` (HTTP/1.1): plain TCP, or a
/// TLS session presenting this process's certificate and verifying the
/// server's for `addr`'s IP, as a scraper or a test reads a page.
pub async fn dial_http(addr: SocketAddr, security: &Security) -> io::Result<crate::net::BoxIo> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let tls = match security {
        Security::Insecure => return Ok(Box::new(tcp)),
        Security::Tls(tls) => tls,
    };
    let mut config = (*tls.client_config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::from(addr.ip());
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| dial_error(e, &format!("TLS handshake with {addr}")))?;
    Ok(Box::new(stream))
}

/// A channel to `endpoint` that connects on first use: through the process
/// network when plain, TCP then TLS when `security` says so. The endpoint's
/// scheme may be `http` or `https`: `security` decides.
pub fn channel(endpoint: Endpoint, security: &Security) -> Channel {
    match security {
        Security::Insecure => crate::net::connect_lazy(endpoint),
        Security::Tls(tls) => {
            let tls = tls.clone();
            endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                dial_tls(tls.clone(), uri)
            }))
        }
    }
}

/// [`channel`], connected now.
pub async fn connect(
    endpoint: Endpoint,
    security: &Security,
) -> Result<Channel, tonic::transport::Error> {
    match security {
        Security::Insecure => crate::net::connect(endpoint).await,
        Security::Tls(tls) => {
            let tls = tls.clone();
            endpoint
                .connect_with_connector(tower::service_fn(move |uri: Uri| {
                    dial_tls(tls.clone(), uri)
                }))
                .await
        }
    }
}
