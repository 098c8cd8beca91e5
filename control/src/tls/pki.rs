//! A small certificate authority on local files, for `meridian dev` and
//! the tests: one CA, and a certificate for each process naming its roles.
//!
//! Owns the layout of a PKI directory (`ca.pem`, `ca-key.pem`, and
//! `<name>.pem` with `<name>-key.pem` per holder) and issuing certificates
//! whose subject alternative names are the holder's roles
//! ([`super::identity`]) plus the loopback names servers are dialled by.
//! Existing files are reused, so a restarted `meridian dev` keeps its CA
//! and the certificates clients already trust. Must never be what a
//! production federation uses as its CA (keys on local disk, no
//! revocation): operators bring their own (docs/security.md).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::identity::{Peer, Role};
use super::{TlsError, TlsFiles};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CA_NAME: &str = "Meridian local CA";

fn generate(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |e| TlsError::Generate {
        what,
        reason: e.to_string(),
    }
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    // Written beside and renamed over, so a process reloading its files
    // never reads half a certificate.
    let tmp = path.with_extension("pem.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Positive, as DER integers for serials must be.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A CA whose key is on local disk.
pub struct Authority {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// Whether this CA was made by [`Authority::open_or_create`] just now:
    /// certificates of an older CA in the directory are then issued again.
    fresh: bool,
}

impl Authority {
    /// The CA in `dir`, made there when it has none.
    pub fn open_or_create(dir: &Path) -> Result<Authority, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if cert_path.exists() && key_path.exists() {
            let pem = std::fs::read_to_string(&key_path).map_err(|source| TlsError::Read {
                what: "CA key",
                path: key_path.clone(),
                source,
            })?;
            let key = KeyPair::from_pem(&pem).map_err(|e| TlsError::Pem {
                what: "CA key",
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
            return Ok(Authority {
                dir: dir.to_path_buf(),
                issuer: Issuer::new(ca_params(), key),
                fresh: false,
            });
        }
        let key = KeyPair::generate().map_err(generate("the CA key"))?;
        let mut params = ca_params();
        params.serial_number = Some(serial());
        let cert = params
            .self_signed(&key)
            .map_err(generate("the CA certificate"))?;
        write(&key_path, &key.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        Ok(Authority {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(ca_params(), key),
            fresh: true,
        })
    }

    /// The CA certificate's file (the bundle every holder trusts).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// Issues (or issues again) `name`'s certificate for `roles`, valid for
    /// the loopback names, written into `dir`.
    pub fn issue(&self, dir: &Path, name: &str, roles: &[Role]) -> Result<TlsFiles, TlsError> {
        self.issue_for_hosts(dir, name, roles, &[])
    }

    /// [`Authority::issue`], also valid for server names `hosts`.
    pub fn issue_for_hosts(
        &self,
        dir: &Path,
        name: &str,
        roles: &[Role],
        hosts: &[String],
    ) -> Result<TlsFiles, TlsError> {
        let what = format!("the certificate of {name}");
        let mut sans = Vec::new();
        for role in roles {
            let uri = role.uri().try_into().map_err(generate(what.clone()))?;
            sans.push(SanType::URI(uri));
        }
        for host in ["localhost".to_string()].iter().chain(hosts) {
            match host.parse::<IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName(
                    host.clone().try_into().map_err(generate(what.clone()))?,
                )),
            }
        }
        sans.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        sans.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.serial_number = Some(serial());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(generate(what.clone()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate(what))?;
        let files = TlsFiles {
            ca: self.ca_path(),
            ..TlsFiles::in_dir(dir, name)
        };
        // The key first: a reloading holder that reads a new certificate
        // with the old key refuses the pair and keeps its loaded one.
        write(&files.key, &key.serialize_pem(), true)?;
        write(&files.cert, &cert.pem(), false)?;
        Ok(files)
    }

    /// `name`'s certificate in `dir`, reused when it exists, is of this CA
    /// and names exactly `roles`; issued otherwise.
    pub fn ensure(&self, dir: &Path, name: &str, roles: &[Role]) -> Result<TlsFiles, TlsError> {
        let files = TlsFiles {
            ca: self.ca_path(),
            ..TlsFiles::in_dir(dir, name)
        };
        if !self.fresh && files.key.exists() && names_roles(&files.cert, roles) {
            return Ok(files);
        }
        self.issue(dir, name, roles)
    }
}

/// Whether the certificate at `path` names exactly `roles`.
fn names_roles(path: &Path, roles: &[Role]) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Ok(der) = CertificateDer::from_pem_file(path) else {
        return false;
    };
    let Some(peer) = Peer::from_der(der.as_ref()) else {
        return false;
    };
    let mut wanted = roles.to_vec();
    wanted.sort();
    peer.roles == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_authority_reuses_its_ca_and_the_certificates_it_issued() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::open_or_create(dir.path()).unwrap();
        let first = ca
            .ensure(dir.path(), "region-a", &[Role::Region("a".into())])
            .unwrap();
        let cert = std::fs::read(&first.cert).unwrap();
        let ca_pem = std::fs::read(ca.ca_path()).unwrap();

        let again = Authority::open_or_create(dir.path()).unwrap();
        let second = again
            .ensure(dir.path(), "region-a", &[Role::Region("a".into())])
            .unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&second.cert).unwrap(), cert);
        assert_eq!(std::fs::read(again.ca_path()).unwrap(), ca_pem);

        // Other roles wanted: issued again.
        again
            .ensure(dir.path(), "region-a", &[Role::Region("b".into())])
            .unwrap();
        assert_ne!(std::fs::read(&second.cert).unwrap(), cert);
    }
}
