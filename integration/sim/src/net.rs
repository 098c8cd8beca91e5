//! The simulated network under the product's network seam.
//!
//! Owns [`TurmoilNet`], the [`meridian_control::net::Net`] that servers and
//! clients use inside the simulation: listeners and streams of `turmoil`'s
//! simulated TCP, so partitions, delays, loss and crashes reach real gRPC
//! connections. Must never be installed outside a simulation test process.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use hyper_util::rt::TokioIo;
use meridian_control::net::{Conn, Listener, Net};
use tonic::transport::{Channel, Endpoint, Uri};

/// `turmoil` TCP behind the product's network seam.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurmoilNet;

impl TurmoilNet {
    /// Makes this process's network the simulated one. Every simulation
    /// calls it; only the first call installs, the rest find it there.
    pub fn install() {
        let _ = meridian_control::net::install(Arc::new(TurmoilNet));
    }
}

fn connector() -> impl tower::Service<
    Uri,
    Response = TokioIo<turmoil::net::TcpStream>,
    Error = io::Error,
    Future = BoxFuture<'static, io::Result<TokioIo<turmoil::net::TcpStream>>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(
        |uri: Uri| -> BoxFuture<'static, io::Result<TokioIo<turmoil::net::TcpStream>>> {
            Box::pin(async move {
                let host = uri
                    .host()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in uri"))?
                    .to_string();
                let port = uri.port_u16().unwrap_or(80);
                let stream = turmoil::net::TcpStream::connect((host, port)).await?;
                Ok(TokioIo::new(stream))
            })
        },
    )
}

impl Net for TurmoilNet {
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Listener>> {
        Box::pin(async move {
            // turmoil binds only the unspecified address; a host's own
            // address is what the product advertises to its peers, so that
            // is the address reported.
            let unspecified = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            let listener = turmoil::net::TcpListener::bind(unspecified).await?;
            let bound = listener.local_addr()?;
            let local_addr = if addr.ip().is_unspecified() {
                bound
            } else {
                SocketAddr::new(addr.ip(), bound.port())
            };
            let incoming = stream::unfold(listener, move |listener| async move {
                let accepted = listener
                    .accept()
                    .await
                    .map(|(s, peer)| Conn::new(s, Some(local_addr), Some(peer)));
                Some((accepted, listener))
            })
            .boxed();
            Ok(Listener {
                local_addr,
                incoming,
            })
        })
    }

    fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(connector())
    }

    fn connect(
        &self,
        endpoint: Endpoint,
    ) -> BoxFuture<'static, Result<Channel, tonic::transport::Error>> {
        Box::pin(async move { endpoint.connect_with_connector(connector()).await })
    }
}
