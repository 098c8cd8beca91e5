//! TLS on the command line: the server binaries' `--tls-*` flags and
//! `--insecure`, and the TLS material a client command dials with.
//!
//! Owns the rule a server follows at start (TLS files, else `--insecure`
//! with a warning, else refuse to start), the client's search for its
//! material (flags, then environment, then a client config file: the one
//! named by `--config`/`MERIDIAN_CONFIG`, else the one `meridian dev` wrote
//! in its data directory), and that file's format. Must never dial plain
//! text unless `--insecure` was given, and never read a key it was not
//! pointed to.

use std::path::{Path, PathBuf};

use meridian_control::tls::{Security, TlsFiles};
use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

/// Where `meridian dev` keeps its data unless told otherwise.
pub const DEFAULT_DEV_DATA_DIR: &str = "data/dev";

/// The client config `meridian dev` writes in its data directory.
pub const DEV_CLIENT_CONFIG: &str = "client.toml";

/// `--tls-ca`, `--tls-cert`, `--tls-key` and `--insecure` of `meridian
/// global`, `meridian regional` and `meridian agent`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// CA bundle (PEM) peers' certificates are verified against.
    #[arg(long, env = "MERIDIAN_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate chain (PEM); its URI names say its role
    /// (docs/security.md). Re-read when it changes.
    #[arg(long, env = "MERIDIAN_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, env = "MERIDIAN_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Serve and dial in plain text, with no identities: anyone who reaches
    /// a port can act as any tier. For tests on one machine only.
    #[arg(long, env = "MERIDIAN_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
}

fn all_three(
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    names: [&str; 3],
) -> Result<Option<TlsFiles>> {
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })),
        _ => Err(CliError::usage(format!(
            "{}, {} and {} go together: give all three or none",
            names[0], names[1], names[2]
        ))),
    }
}

fn load(files: TlsFiles) -> Result<Security> {
    Security::tls(files).map_err(|e| CliError::usage(format!("TLS: {e}")))
}

impl ServerTlsArgs {
    /// The flags for `files`, as `meridian dev` hands them to a child.
    pub fn args_for(files: &TlsFiles) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            files.ca.display().to_string(),
            "--tls-cert".into(),
            files.cert.display().to_string(),
            "--tls-key".into(),
            files.key.display().to_string(),
        ]
    }

    /// What `who` serves and dials with: TLS from the files; plain text
    /// with `--insecure` (warned about); else a usage error.
    pub fn security(&self, who: &str) -> Result<Security> {
        let files = all_three(
            &self.tls_ca,
            &self.tls_cert,
            &self.tls_key,
            ["--tls-ca", "--tls-cert", "--tls-key"],
        )?;
        match files {
            Some(files) => load(files),
            None if self.insecure => {
                eprintln!(
                    "{who}: WARNING: --insecure: links are plain text and unauthenticated; \
                     anyone who reaches a port can act as any tier"
                );
                Ok(Security::Insecure)
            }
            None => Err(CliError::usage(format!(
                "{who} needs --tls-ca, --tls-cert and --tls-key (docs/security.md), \
                 or --insecure to run in plain text"
            ))),
        }
    }
}

/// A client config file: where the federation is and the TLS material to
/// reach it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    /// Global tier endpoints, comma-separated.
    pub endpoint: String,
    /// Plain text (a federation of `meridian dev --insecure`): no files.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// A bearer token file for the API, when the config names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl ClientConfig {
    pub fn read(path: &Path) -> Result<ClientConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("client config {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| CliError::usage(format!("client config {}: {e}", path.display())))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self)
            .map_err(|e| CliError::other(format!("client config {}: {e}", path.display())))?;
        let text = format!(
            "# Written by `meridian dev`: where its federation is and the TLS\n\
             # material the CLI reaches it with (docs/security.md).\n{text}"
        );
        std::fs::write(path, text)
            .map_err(|e| CliError::other(format!("writing {}: {e}", path.display())))
    }

    /// A client config of TLS `files` for `endpoint`.
    pub fn tls(endpoint: impl Into<String>, files: &TlsFiles) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.into(),
            insecure: false,
            ca_cert: Some(files.ca.clone()),
            client_cert: Some(files.cert.clone()),
            client_key: Some(files.key.clone()),
            token_file: None,
        }
    }

    /// What the config says to dial with.
    pub fn security(&self, path: &Path) -> Result<Security> {
        if self.insecure {
            return Ok(Security::Insecure);
        }
        let files = all_three(
            &self.ca_cert,
            &self.client_cert,
            &self.client_key,
            ["ca_cert", "client_cert", "client_key"],
        )
        .map_err(|e| CliError::usage(format!("client config {}: {e}", path.display())))?;
        match files {
            Some(files) => load(files),
            None => Err(CliError::usage(format!(
                "client config {}: names no ca_cert, client_cert and client_key, and is not insecure",
                path.display()
            ))),
        }
    }
}

/// `meridian dev`'s data directory as client commands find it:
/// `$MERIDIAN_DATA_DIR`, else `data/dev`.
pub fn dev_data_dir() -> PathBuf {
    std::env::var_os("MERIDIAN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DEV_DATA_DIR))
}

/// TLS flags of client commands (`meridian job`, `node`, `load`, ...).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// CA bundle (PEM) the global tier's certificate is verified against.
    #[arg(long, env = "MERIDIAN_CA_CERT", value_name = "PEM", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), naming `meridian://client/<name>`.
    #[arg(long, env = "MERIDIAN_CLIENT_CERT", value_name = "PEM", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "MERIDIAN_CLIENT_KEY", value_name = "PEM", global = true)]
    pub client_key: Option<PathBuf>,
    /// A client config file (endpoint, CA, certificate, key); default: the
    /// one `meridian dev` wrote, `$MERIDIAN_DATA_DIR/client.toml` or
    /// `data/dev/client.toml`, when it exists.
    #[arg(long, env = "MERIDIAN_CONFIG", value_name = "TOML", global = true)]
    pub config: Option<PathBuf>,
    /// Dial in plain text (a federation started with --insecure).
    #[arg(long, env = "MERIDIAN_INSECURE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
}

/// What a client command dials with, and the endpoint a config file gave.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub security: Security,
    /// From the config file, when the security came from one.
    pub endpoint: Option<String>,
}

impl ClientTlsArgs {
    /// Plain text: for programs that build their arguments in code against
    /// an `--insecure` federation (tests).
    pub fn plain() -> ClientTlsArgs {
        ClientTlsArgs {
            insecure: true,
            ..ClientTlsArgs::default()
        }
    }

    /// TLS with `files`.
    pub fn files(files: &TlsFiles) -> ClientTlsArgs {
        ClientTlsArgs {
            ca_cert: Some(files.ca.clone()),
            client_cert: Some(files.cert.clone()),
            client_key: Some(files.key.clone()),
            ..ClientTlsArgs::default()
        }
    }

    /// Flags and environment first, then the config file; plain text only
    /// when asked for.
    pub fn resolve(&self) -> Result<Resolved> {
        let files = all_three(
            &self.ca_cert,
            &self.client_cert,
            &self.client_key,
            ["--ca-cert", "--client-cert", "--client-key"],
        )?;
        if let Some(files) = files {
            return Ok(Resolved {
                security: load(files)?,
                endpoint: None,
            });
        }
        if self.insecure {
            return Ok(Resolved {
                security: Security::Insecure,
                endpoint: None,
            });
        }
        let path = match &self.config {
            Some(p) => p.clone(),
            None => {
                let dev = dev_data_dir().join(DEV_CLIENT_CONFIG);
                if !dev.exists() {
                    return Err(CliError::usage(format!(
                        "no TLS material to reach the global tier: give --ca-cert, \
                         --client-cert and --client-key (or MERIDIAN_CA_CERT, \
                         MERIDIAN_CLIENT_CERT, MERIDIAN_CLIENT_KEY), or --config FILE; \
                         `meridian dev` writes {} for the CLI to find; --insecure \
                         dials a federation started with --insecure",
                        dev.display()
                    )));
                }
                dev
            }
        };
        let config = ClientConfig::read(&path)?;
        let security = config.security(&path)?;
        if !security.is_tls() {
            eprintln!(
                "meridian: WARNING: {} says --insecure: calls go in plain text",
                path.display()
            );
        }
        Ok(Resolved {
            security,
            endpoint: Some(config.endpoint),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_tls_files_or_insecure_refuses_to_start() {
        let err = ServerTlsArgs::default()
            .security("meridian global")
            .unwrap_err();
        assert!(err.to_string().contains("--tls-ca"), "{err}");
        let half = ServerTlsArgs {
            tls_ca: Some("/ca.pem".into()),
            ..ServerTlsArgs::default()
        };
        assert!(
            half.security("x")
                .unwrap_err()
                .to_string()
                .contains("go together")
        );
        let plain = ServerTlsArgs {
            insecure: true,
            ..ServerTlsArgs::default()
        };
        assert!(!plain.security("x").unwrap().is_tls());
    }

    #[test]
    fn a_client_config_names_its_files_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let config = ClientConfig::tls(
            "https://127.0.0.1:7400",
            &TlsFiles::in_dir(dir.path(), "cli"),
        );
        let path = dir.path().join(DEV_CLIENT_CONFIG);
        config.write(&path).unwrap();
        assert_eq!(ClientConfig::read(&path).unwrap(), config);
        // Its files missing: named in the error, never plain text instead.
        let args = ClientTlsArgs {
            config: Some(path),
            ..ClientTlsArgs::default()
        };
        let err = args.resolve().unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
