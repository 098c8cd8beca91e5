//! Who is on the other end of a connection: the roles a verified
//! certificate names, and the checks services make with them.
//!
//! A Meridian certificate names its holder's roles in URI subject
//! alternative names:
//!
//! - `meridian://global`: a replica of the global tier (may call
//!   `RegionAdmin` on regions);
//! - `meridian://region/<id>`: a replica of region `<id>` (may call
//!   `RegionLink` for that region only);
//! - `meridian://agent/<node>`: a node agent carrying node `<node>`;
//!   `meridian://agent/<prefix>*` grants every node id that starts with
//!   `<prefix>`, for one agent process hosting many simulated nodes
//!   (`meridian dev` issues `meridian://agent/<node>-*` next to the node's
//!   own name);
//! - `meridian://client/<name>`: a user or tool of the federation API.
//!
//! DNS and IP names are for the server side of the handshake (checked by the
//! client against the address it dialled), not for roles.
//!
//! Owns parsing those names from a certificate, [`Peer::of`] for a request,
//! the interceptor that keeps a gRPC service to the roles allowed on it, and
//! the per-call checks of a node or region id against the caller. A
//! connection without TLS (the operator ran `--insecure`) carries no
//! identity and passes every check: that is what insecure means. Must never
//! grant anything on a name it did not read from a certificate the TLS
//! handshake verified.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::Status;

/// The URI scheme of role names.
pub const ROLE_SCHEME: &str = "meridian://";

/// The kinds of role, as a service lists who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RoleKind {
    Global,
    Region,
    Agent,
    Client,
}

impl RoleKind {
    fn name(self) -> &'static str {
        match self {
            RoleKind::Global => "global",
            RoleKind::Region => "region",
            RoleKind::Agent => "agent",
            RoleKind::Client => "client",
        }
    }
}

/// One role a certificate grants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Global,
    Region(String),
    /// A node id, or a prefix ending in `*`.
    Agent(String),
    Client(String),
}

impl Role {
    /// The URI subject alternative name that grants this role.
    pub fn uri(&self) -> String {
        match self {
            Role::Global => format!("{ROLE_SCHEME}global"),
            Role::Region(id) => format!("{ROLE_SCHEME}region/{id}"),
            Role::Agent(node) => format!("{ROLE_SCHEME}agent/{node}"),
            Role::Client(name) => format!("{ROLE_SCHEME}client/{name}"),
        }
    }

    /// The role a URI names, if it is one of Meridian's.
    pub fn parse(uri: &str) -> Option<Role> {
        let rest = uri.strip_prefix(ROLE_SCHEME)?;
        if rest == "global" {
            return Some(Role::Global);
        }
        let (kind, name) = rest.split_once('/')?;
        if name.is_empty() {
            return None;
        }
        match kind {
            "region" => Some(Role::Region(name.to_string())),
            "agent" => Some(Role::Agent(name.to_string())),
            "client" => Some(Role::Client(name.to_string())),
            _ => None,
        }
    }

    pub fn kind(&self) -> RoleKind {
        match self {
            Role::Global => RoleKind::Global,
            Role::Region(_) => RoleKind::Region,
            Role::Agent(_) => RoleKind::Agent,
            Role::Client(_) => RoleKind::Client,
        }
    }

    /// Whether this role lets its holder speak for node `node`.
    fn grants_node(&self, node: &str) -> bool {
        match self {
            Role::Agent(name) => match name.strip_suffix('*') {
                Some(prefix) => node.starts_with(prefix) && node.len() > prefix.len(),
                None => name == node,
            },
            _ => false,
        }
    }
}

/// The verified certificate of a connection's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Every subject alternative name (DNS, URI), for logs and errors.
    pub names: Vec<String>,
    /// The Meridian roles among them.
    pub roles: Vec<Role>,
    /// The certificate's serial number, hex with colons.
    pub serial: String,
}

impl Peer {
    /// The names of a DER certificate (one the handshake verified).
    pub fn from_der(der: &[u8]) -> Option<Peer> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names = Vec::new();
        let mut roles = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => {
                        names.push((*uri).to_string());
                        if let Some(role) = Role::parse(uri) {
                            roles.push(role);
                        }
                    }
                    GeneralName::DNSName(dns) => names.push((*dns).to_string()),
                    _ => {}
                }
            }
        }
        roles.sort();
        Some(Peer {
            names,
            roles,
            serial: cert.raw_serial_as_string(),
        })
    }

    /// The connection a gRPC request came on, when it came through
    /// [`crate::net`] (every server of Meridian's does).
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        Caller::from_extensions(request.extensions())
    }

    fn has_kind(&self, allowed: &[RoleKind]) -> bool {
        self.roles.iter().any(|r| allowed.contains(&r.kind()))
    }

    fn describe(&self) -> String {
        if self.names.is_empty() {
            "a certificate without names".to_string()
        } else {
            format!("certificate {}", self.names.join(", "))
        }
    }
}

/// What a server knows of one accepted connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub local_addr: Option<SocketAddr>,
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub secure: bool,
    /// The peer's verified certificate, when it presented one.
    pub peer: Option<Arc<Peer>>,
}

/// Who made a call.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A plain-text connection (an `--insecure` server): no identity.
    Plain,
    /// TLS without a client certificate (only HTTP servers allow that).
    Anonymous,
    /// A verified certificate.
    Verified(Arc<Peer>),
}

impl Caller {
    /// The caller a request's extensions describe. A request that did not
    /// come through [`crate::net`] (in-process calls) is treated as plain.
    pub fn from_extensions(ext: &http::Extensions) -> Caller {
        let info = ext.get::<ConnInfo>().or_else(|| {
            ext.get::<axum::extract::ConnectInfo<ConnInfo>>()
                .map(|c| &c.0)
        });
        match info {
            None => Caller::Plain,
            Some(i) if !i.secure => Caller::Plain,
            Some(i) => match &i.peer {
                Some(p) => Caller::Verified(p.clone()),
                None => Caller::Anonymous,
            },
        }
    }

    /// The verified peer, if any.
    pub fn peer(&self) -> Option<&Peer> {
        match self {
            Caller::Verified(p) => Some(p),
            _ => None,
        }
    }

    /// Refuses a caller holding none of the `allowed` roles.
    pub fn require(&self, allowed: &[RoleKind], service: &str) -> Result<(), Status> {
        match self {
            Caller::Plain => Ok(()),
            Caller::Anonymous => Err(Status::unauthenticated(format!(
                "{service} needs a client certificate of the federation's CA"
            ))),
            Caller::Verified(p) if p.has_kind(allowed) => Ok(()),
            Caller::Verified(p) => {
                let wanted: Vec<&str> = allowed.iter().map(|k| k.name()).collect();
                Err(Status::permission_denied(format!(
                    "{service} is for {} certificates; the caller's {} names no such role",
                    wanted.join(" or "),
                    p.describe()
                )))
            }
        }
    }

    /// Refuses a caller whose certificate does not name node `node`.
    pub fn check_node(&self, node: &str) -> Result<(), Status> {
        match self {
            Caller::Plain | Caller::Anonymous => self.check_agent(),
            Caller::Verified(p) if p.roles.iter().any(|r| r.grants_node(node)) => Ok(()),
            Caller::Verified(p) => Err(Status::permission_denied(format!(
                "node_id {node:?} is not named by the caller's {}",
                p.describe()
            ))),
        }
    }

    /// Refuses a caller that could speak for no node at all: TLS without a
    /// certificate. (Which nodes a certificate names is checked per node.)
    pub fn check_agent(&self) -> Result<(), Status> {
        match self {
            Caller::Anonymous => Err(Status::unauthenticated(
                "agents must present a certificate of the region's CA",
            )),
            Caller::Plain | Caller::Verified(_) => Ok(()),
        }
    }

    /// Refuses a caller whose certificate does not name region `region`.
    pub fn check_region(&self, region: &str) -> Result<(), Status> {
        match self {
            Caller::Plain => Ok(()),
            Caller::Anonymous => Err(Status::unauthenticated(
                "regions must present a certificate of the federation's CA",
            )),
            Caller::Verified(p) if p.roles.contains(&Role::Region(region.to_string())) => Ok(()),
            Caller::Verified(p) => Err(Status::permission_denied(format!(
                "region {region:?} is not named by the caller's {}",
                p.describe()
            ))),
        }
    }
}

/// An interceptor keeping a gRPC service to callers with one of `allowed`'s
/// roles: `XServer::with_interceptor(svc, only(&[RoleKind::Agent], "AgentLink"))`.
pub fn only(
    allowed: &'static [RoleKind],
    service: &'static str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
    move |request: tonic::Request<()>| {
        Peer::of(&request).require(allowed, service)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_read_back_as_the_same_role() {
        for role in [
            Role::Global,
            Role::Region("eu-west".into()),
            Role::Agent("n1".into()),
            Role::Agent("host-7-*".into()),
            Role::Client("ops".into()),
        ] {
            assert_eq!(Role::parse(&role.uri()), Some(role));
        }
        assert_eq!(Role::parse("meridian://region/"), None);
        assert_eq!(Role::parse("spiffe://region/a"), None);
    }

    #[test]
    fn an_agent_prefix_grants_the_nodes_under_it_and_no_other() {
        let host = Role::Agent("h1-*".into());
        assert!(host.grants_node("h1-000001"));
        assert!(!host.grants_node("h1-"));
        assert!(!host.grants_node("h2-000001"));
        let one = Role::Agent("n1".into());
        assert!(one.grants_node("n1"));
        assert!(!one.grants_node("n10"));
        assert!(!Role::Region("n1".into()).grants_node("n1"));
    }
}
