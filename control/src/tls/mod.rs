//! Mutual TLS for every link between Meridian's processes.
//!
//! Owns the choice a process makes about its transport ([`Security`]: TLS
//! from PEM files, or plain text when the operator said `--insecure`), the
//! rustls server and client configurations built from a CA bundle, a
//! certificate and a key, and their reload: the files are read again at each
//! handshake and, when their bytes changed, the configurations are rebuilt,
//! so a certificate rotated on disk is presented by the next connection
//! without a restart. Client certificates are always required on gRPC
//! servers and verified against the CA; see [`identity`] for what a verified
//! certificate names and [`stream`] for the handshakes on both sides.
//!
//! Must never: fall back to plain text when TLS was asked for, use a
//! configuration whose files failed to load (a half-written rotation keeps
//! the previous configuration), or log key material.

pub mod identity;
pub mod pki;
pub mod stream;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use identity::{Caller, Peer, Role};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file held no usable PEM of the kind expected.
    #[error("{what} {path}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// rustls refused the material (a key that does not match the
    /// certificate, a CA bundle with no usable certificate, ...).
    #[error("building the TLS configuration: {0}")]
    Config(String),
    /// Writing generated material failed.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Generating a key or a certificate failed.
    #[error("generating {what}: {reason}")]
    Generate { what: String, reason: String },
}

/// Where a process's TLS material lives: the CA bundle its peers'
/// certificates are verified against, its own certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The three files in one directory, as `meridian dev` lays them out.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }
}

/// How a process talks to its peers.
#[derive(Clone, Default)]
pub enum Security {
    /// Plain text, no identities: only when the operator asked for it
    /// (`--insecure`), and in in-process tests and the simulation.
    #[default]
    Insecure,
    /// Mutual TLS with the material of [`Tls`].
    Tls(Tls),
}

impl Security {
    /// TLS from `files`, loaded now so a bad file stops the process at start.
    pub fn tls(files: TlsFiles) -> Result<Self, TlsError> {
        Ok(Security::Tls(Tls::load(files)?))
    }

    /// Whether links are encrypted and authenticated.
    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }

    /// The URL scheme of this process's HTTP servers (`https` under TLS).
    /// gRPC endpoints are spelled `http://` either way: the security, not
    /// the scheme, decides how a channel dials ([`stream::channel`]).
    pub fn scheme(&self) -> &'static str {
        match self {
            Security::Insecure => "http",
            Security::Tls(_) => "https",
        }
    }
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Security::Insecure => f.write_str("Insecure"),
            Security::Tls(t) => f.debug_tuple("Tls").field(&t.inner.files).finish(),
        }
    }
}

/// The bytes a configuration was built from, to see whether they changed.
#[derive(PartialEq, Eq)]
struct Material {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

struct Built {
    material: Material,
    server: Arc<ServerConfig>,
    /// The server configuration for HTTP servers, where a browser has no
    /// client certificate: one is verified when presented, not required.
    server_optional: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

struct Inner {
    files: TlsFiles,
    built: Mutex<Arc<Built>>,
}

/// TLS material read from files, reloaded when the files change.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.inner.files)
            .finish()
    }
}

/// ALPN of gRPC (HTTP/2 only) and of the HTTP servers (both versions).
const ALPN_H2: &[u8] = b"h2";
const ALPN_H1: &[u8] = b"http/1.1";

impl Tls {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let material = read(&files)?;
        let built = build(&files, material)?;
        Ok(Tls {
            inner: Arc::new(Inner {
                files,
                built: Mutex::new(Arc::new(built)),
            }),
        })
    }

    /// The files this material comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// The configurations for the files as they are now: rebuilt when their
    /// bytes changed since the last handshake. A change that does not load
    /// (a rotation half written, a key that does not match) keeps the
    /// previous configurations and is logged; the next handshake tries again.
    fn current(&self) -> Arc<Built> {
        let files = &self.inner.files;
        let material = match read(files) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "TLS files unreadable: keeping the loaded ones");
                return self.inner.built.lock().clone();
            }
        };
        let mut built = self.inner.built.lock();
        if built.material == material {
            return built.clone();
        }
        match build(files, material) {
            Ok(fresh) => {
                tracing::info!(cert = %files.cert.display(), "TLS files changed: reloaded");
                *built = Arc::new(fresh);
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS files changed but do not load: keeping the loaded ones");
            }
        }
        built.clone()
    }

    /// The server configuration of gRPC servers: client certificate required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The server configuration of HTTP servers: a client certificate is
    /// verified when presented, and a browser without one may connect.
    pub fn server_config_optional_client(&self) -> Arc<ServerConfig> {
        self.current().server_optional.clone()
    }

    /// The client configuration: this process's certificate, the CA's roots.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read(files: &TlsFiles) -> Result<Material, TlsError> {
    Ok(Material {
        ca: read_file("CA bundle", &files.ca)?,
        cert: read_file("certificate", &files.cert)?,
        key: read_file("key", &files.key)?,
    })
}

fn certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The ring provider: it builds with a C compiler alone, where aws-lc-rs
/// needs more of a toolchain. rustls deprecates it for its lack of
/// post-quantum key exchange; moving to aws-lc-rs is one line here.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &TlsFiles, material: Material) -> Result<Built, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certs("CA bundle", &files.ca, &material.ca)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::Config(format!("CA bundle {}: {e}", files.ca.display())))?;
    }
    let roots = Arc::new(roots);
    let chain = certs("certificate", &files.cert, &material.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&material.key).map_err(|e| TlsError::Pem {
        what: "key",
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let config = |e: rustls::Error| TlsError::Config(e.to_string());
    let verifier = |optional: bool| {
        let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build()
            .map_err(|e| TlsError::Config(format!("client verifier: {e}")))
    };
    let server_with = |optional: bool, alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, TlsError> {
        let mut c = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(verifier(optional)?)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config)?;
        c.alpn_protocols = alpn;
        Ok(Arc::new(c))
    };
    let server = server_with(false, vec![ALPN_H2.to_vec()])?;
    let server_optional = server_with(true, vec![ALPN_H2.to_vec(), ALPN_H1.to_vec()])?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .map_err(config)?;
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Built {
        material,
        server,
        server_optional,
        client: Arc::new(client),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tls::load(TlsFiles::in_dir(dir.path(), "global")).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Authority::open_or_create(dir.path()).unwrap();
        let a = ca.issue(dir.path(), "a", &[Role::Global]).unwrap();
        let b = ca.issue(dir.path(), "b", &[Role::Global]).unwrap();
        let mixed = TlsFiles {
            key: b.key.clone(),
            ..a
        };
        assert!(Tls::load(mixed).is_err());
    }
}
