//! The TLS material of `meridian dev`.
//!
//! Owns the development federation's PKI under its data directory
//! (`pki/`: a local CA and one certificate per process, each naming its
//! role: `meridian://global`, `meridian://region/<id>`,
//! `meridian://agent/<node>` and, for the agent hosting simulated nodes,
//! `meridian://agent/<node>-*`; plus `cli`, naming `meridian://client/dev`),
//! handing every planned process its `--tls-*` flags, and the client config
//! (`client.toml`) the CLI finds by default. Files are reused on restart,
//! so the CA a browser or a script was told to trust stays the same. With
//! `--insecure` it hands out `--insecure` instead and the client config
//! says so. Must never issue a certificate naming a role its holder does
//! not play.

use std::path::{Path, PathBuf};

use meridian_control::tls::pki::Authority;
use meridian_control::tls::{Role as TlsRole, TlsFiles};

use super::plan::{Plan, Role};
use crate::error::{CliError, Result};
use crate::tls::{ClientConfig, DEV_CLIENT_CONFIG, ServerTlsArgs};

/// The name of the CLI's certificate, and of the client it names.
pub const CLIENT_NAME: &str = "cli";

/// Where `meridian dev` keeps its CA and certificates.
pub fn pki_dir(data: &Path) -> PathBuf {
    data.join("pki")
}

/// What [`apply`] set up.
pub struct DevTls {
    /// The client config written for the CLI.
    pub client_config: PathBuf,
    /// The CA certificate to trust (None under `--insecure`).
    pub ca: Option<PathBuf>,
}

fn tls_error(e: meridian_control::tls::TlsError) -> CliError {
    CliError::other(format!("meridian dev PKI: {e}"))
}

/// The roles the certificate of a planned process names, from its role and
/// its node id (`--node-id`, an agent's).
fn roles_of(role: &Role, args: &[String]) -> Vec<TlsRole> {
    match role {
        Role::Global => vec![TlsRole::Global],
        Role::Regional { region } => vec![TlsRole::Region(region.clone())],
        Role::Agent { simulated, .. } => {
            let node = args
                .iter()
                .position(|a| a == "--node-id")
                .and_then(|i| args.get(i + 1))
                .cloned()
                .unwrap_or_default();
            let mut roles = vec![TlsRole::Agent(node.clone())];
            if *simulated {
                // A host of simulated nodes names them `<node>-NNNNNN`.
                roles.push(TlsRole::Agent(format!("{node}-*")));
            }
            roles
        }
    }
}

/// Gives every process of `plan` its TLS flags (certificates made or
/// reused under `data/pki`), or `--insecure`; writes the client config.
pub fn apply(data: &Path, plan: &mut Plan, insecure: bool) -> Result<DevTls> {
    let client_config = data.join(DEV_CLIENT_CONFIG);
    let endpoint = plan.global_endpoints();
    if insecure {
        for p in plan.processes_mut() {
            p.spec.args.push("--insecure".into());
        }
        let config = ClientConfig {
            endpoint,
            insecure: true,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            token_file: None,
        };
        config.write(&client_config)?;
        return Ok(DevTls {
            client_config,
            ca: None,
        });
    }
    let dir = pki_dir(data);
    let ca = Authority::open_or_create(&dir).map_err(tls_error)?;
    for p in plan.processes_mut() {
        let roles = roles_of(&p.role, &p.spec.args);
        let files = ca.ensure(&dir, &p.spec.name, &roles).map_err(tls_error)?;
        p.spec.args.extend(ServerTlsArgs::args_for(&files));
    }
    let cli: TlsFiles = ca
        .ensure(&dir, CLIENT_NAME, &[TlsRole::Client("dev".into())])
        .map_err(tls_error)?;
    ClientConfig::tls(endpoint, &cli).write(&client_config)?;
    Ok(DevTls {
        client_config,
        ca: Some(ca.ca_path()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_hosting_simulated_nodes_is_named_for_them_and_a_real_one_for_itself() {
        let args: Vec<String> = ["agent", "--node-id", "us-east-sim"]
            .map(String::from)
            .to_vec();
        let sim = Role::Agent {
            region: "us-east".into(),
            simulated: true,
        };
        assert_eq!(
            roles_of(&sim, &args),
            vec![
                TlsRole::Agent("us-east-sim".into()),
                TlsRole::Agent("us-east-sim-*".into())
            ]
        );
        let real = Role::Agent {
            region: "us-east".into(),
            simulated: false,
        };
        assert_eq!(
            roles_of(&real, &args),
            vec![TlsRole::Agent("us-east-sim".into())]
        );
        assert_eq!(
            roles_of(
                &Role::Regional {
                    region: "eu".into()
                },
                &args
            ),
            vec![TlsRole::Region("eu".into())]
        );
    }
}
