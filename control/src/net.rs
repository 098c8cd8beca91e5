//! The network seam: how every tier listens for and dials gRPC connections.
//!
//! Owns the [`Net`] trait, the production implementation ([`TcpNet`]: tokio
//! TCP sockets, exactly what the servers and clients did before the seam
//! existed) and the process-wide choice of implementation. A process that
//! never calls [`install`] runs on TCP; the deterministic simulation installs
//! its own implementation once, before any component starts, so that the
//! whole federation talks over one simulated network.
//!
//! Must never: change how production connects (timeouts, keep-alives and the
//! like stay on the caller's [`Endpoint`]), carry protocol logic, or be
//! switched after a component has started using it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::tls::identity::ConnInfo;

/// A byte stream a connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection of either kind (plain or TLS), boxed.
pub type BoxIo = Box<dyn Io>;

/// One accepted connection, as the gRPC server consumes it.
pub struct Conn {
    io: Box<dyn Io>,
    info: ConnInfo,
}

impl Conn {
    /// A connection over `io` between `local` and `remote`.
    pub fn new(io: impl Io, local: Option<SocketAddr>, remote: Option<SocketAddr>) -> Self {
        Conn {
            io: Box::new(io),
            info: ConnInfo {
                local_addr: local,
                remote_addr: remote,
                secure: false,
                peer: None,
            },
        }
    }

    /// A connection over `io` described by `info` (a TLS session's peer).
    pub fn with_info(io: impl Io, info: ConnInfo) -> Self {
        Conn {
            io: Box::new(io),
            info,
        }
    }

    /// What the server will know of this connection.
    pub fn info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl Connected for Conn {
    // Meridian's own kind, carrying the TLS peer's verified certificate
    // (`tls::Peer::of(&request)`) next to the addresses.
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}

/// Accepted connections, for `serve_with_incoming(_shutdown)`.
pub type Incoming = BoxStream<'static, io::Result<Conn>>;

/// A bound listening socket.
pub struct Listener {
    /// The address actually bound (port 0 resolved).
    pub local_addr: SocketAddr,
    pub incoming: Incoming,
}

/// How connections are made.
pub trait Net: Send + Sync + 'static {
    /// Binds `addr` for a gRPC server.
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Listener>>;

    /// A channel to `endpoint` that connects on first use.
    fn connect_lazy(&self, endpoint: Endpoint) -> Channel;

    /// A channel to `endpoint`, connected now.
    fn connect(
        &self,
        endpoint: Endpoint,
    ) -> BoxFuture<'static, Result<Channel, tonic::transport::Error>>;
}

/// Production networking: tokio TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpNet;

impl Net for TcpNet {
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Listener>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let local_addr = listener.local_addr()?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
                .map(move |accepted| {
                    accepted.map(|stream| {
                        // gRPC answers and stream messages are small writes
                        // that follow one another: with Nagle's algorithm each
                        // waits for the peer's delayed ACK (tens of ms). The
                        // clients set the same on their side.
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
                        }
                        let remote = stream.peer_addr().ok();
                        Conn::new(stream, Some(local_addr), remote)
                    })
                })
                .boxed();
            Ok(Listener {
                local_addr,
                incoming,
            })
        })
    }

    fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_lazy()
    }

    fn connect(
        &self,
        endpoint: Endpoint,
    ) -> BoxFuture<'static, Result<Channel, tonic::transport::Error>> {
        Box::pin(async move { endpoint.connect().await })
    }
}

static NET: OnceLock<Arc<dyn Net>> = OnceLock::new();

/// [`install`] was called after the network was already chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the process network is already chosen")]
pub struct AlreadyChosen;

/// Chooses this process's network. Only before first use, and only once.
pub fn install(net: Arc<dyn Net>) -> Result<(), AlreadyChosen> {
    NET.set(net).map_err(|_| AlreadyChosen)
}

/// This process's network: the installed one, else [`TcpNet`].
pub fn current() -> &'static dyn Net {
    NET.get_or_init(|| Arc::new(TcpNet)).as_ref()
}

/// [`Net::listen`] on the process network.
pub async fn listen(addr: SocketAddr) -> io::Result<Listener> {
    current().listen(addr).await
}

/// [`Net::connect_lazy`] on the process network.
pub fn connect_lazy(endpoint: Endpoint) -> Channel {
    current().connect_lazy(endpoint)
}

/// [`Net::connect`] on the process network.
pub async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    current().connect(endpoint).await
}
