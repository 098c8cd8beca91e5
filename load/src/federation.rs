//! A federation of real processes started for one load run.
//!
//! Owns the layout a scenario asks for (global replicas, regions with their
//! scheduler replicas, one simulated-node agent per region, real agents),
//! planned by `meridian dev`'s plan (the same processes and command lines)
//! on free loopback ports under a temporary directory, and started by its
//! child runner (each child is the same `meridian` binary, waited for by the
//! line it prints once serving, and restarted with backoff when it dies),
//! with mutual TLS and tokens as `meridian dev` or in plain text with auth
//! off as `meridian dev --insecure` (`meridian_cli::dev::pki` and `token`
//! decide the flags either way). It
//! also finds a child's process id so a scenario can kill it for real. Must never wait for a child by sleeping and never
//! touch a process it did not start.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_cli::dev::child;
use meridian_cli::dev::plan::{self, Process, Role};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{LoadError, Result};

/// What to start.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Replicas of the global tier.
    pub global_replicas: u16,
    /// Regions.
    pub regions: u16,
    /// Scheduler replicas per region.
    pub region_replicas: u16,
    /// Shards per region.
    pub shards: u32,
    /// Simulated nodes per region (one agent process each).
    pub simulated_nodes: u32,
    /// Real-process agents per region (4 cores, 8 GiB, label `real=true`),
    /// as `meridian dev` starts them.
    pub real_agents: u32,
    /// Shard lease, ms.
    pub shard_lease_ms: u64,
    /// The global tier's per-tenant submit limits as `meridian dev` has
    /// them. Off (`--tenant-submit-rate 0 --tenant-max-queued 0`) for a
    /// scenario that measures the tier's own capacity with the one tenant
    /// load submits as: the default rate (10,000 a second) sits below the
    /// batched target, and jobs of a region without nodes stay queued past
    /// the default cap (100,000) within a run.
    pub tenant_limits: bool,
}

/// How a started federation's links are secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Security {
    /// As `meridian dev`: mutual TLS on every link, bearer tokens on the
    /// API (load presents the admin token).
    #[serde(rename = "tls+auth")]
    TlsAuth,
    /// As `meridian dev --insecure`: plain text, no certificates, the
    /// global tier without auth (load presents no token).
    #[serde(rename = "insecure")]
    Insecure,
}

impl Security {
    /// Whether this is `--insecure`.
    pub fn insecure(self) -> bool {
        self == Security::Insecure
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Security::TlsAuth => "tls+auth",
            Security::Insecure => "insecure",
        }
    }
}

/// What this run's clients present to a federation: TLS material (or
/// plain text) and a bearer token (or none).
#[derive(Debug, Clone)]
pub struct ClientSide {
    /// How clients dial.
    pub tls: meridian_cli::tls::ClientTlsArgs,
    /// The token they present.
    pub token: Option<String>,
}

/// Secures `plan` (data under `data`) as `security` says, with
/// `meridian dev`'s own code: its PKI and admin token, or `--insecure` and,
/// on the global replicas, no auth. Returns what load's clients present.
pub fn secure(data: &Path, plan: &mut plan::Plan, security: Security) -> Result<ClientSide> {
    meridian_cli::dev::pki::apply(data, plan, security.insecure())
        .map_err(|e| LoadError::Federation(e.to_string()))?;
    // After the PKI: an insecure plan's global replicas run without auth.
    let token = meridian_cli::dev::token::apply(data, plan)
        .map_err(|e| LoadError::Federation(format!("the admin token: {e}")))?;
    match security {
        Security::Insecure => Ok(ClientSide {
            tls: meridian_cli::tls::ClientTlsArgs::plain(),
            token: None,
        }),
        Security::TlsAuth => {
            let token = meridian_cli::auth::read_token_file(&token)
                .map_err(|e| LoadError::Federation(format!("the admin token: {e}")))?;
            Ok(ClientSide {
                tls: meridian_cli::tls::ClientTlsArgs::files(&load_certificate(data)?),
                token: Some(token),
            })
        }
    }
}

/// Load's own certificate in the run's PKI: a client, and the global tier
/// for the herd scenario's direct RegionAdmin reads.
fn load_certificate(data: &Path) -> Result<meridian_control::tls::TlsFiles> {
    let pki = meridian_cli::dev::pki::pki_dir(data);
    meridian_control::tls::pki::Authority::open_or_create(&pki)
        .and_then(|ca| {
            ca.ensure(
                &pki,
                "load",
                &[
                    meridian_control::tls::Role::Client("load".into()),
                    meridian_control::tls::Role::Global,
                ],
            )
        })
        .map_err(|e| LoadError::Federation(format!("load's certificate: {e}")))
}

/// One started child.
#[derive(Debug, Clone)]
pub struct Proc {
    /// Its name (`global-1`, `r01-2`, `r01-sim`).
    pub name: String,
    /// Its gRPC endpoint, `http://...` (none for agents).
    pub grpc: Option<String>,
    /// Its Prometheus endpoint, `host:port` (none for agents).
    pub metrics: Option<SocketAddr>,
}

/// A region's processes.
#[derive(Debug, Clone)]
pub struct Region {
    /// Region name.
    pub name: String,
    /// Scheduler replicas.
    pub replicas: Vec<Proc>,
    /// Its agents in plan order: the one hosting the simulated nodes, then
    /// the real-process ones.
    pub agents: Vec<Proc>,
}

/// A running local federation; stopped by [`LocalFederation::shut_down`].
pub struct LocalFederation {
    dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The global replicas.
    pub globals: Vec<Proc>,
    /// The regions.
    pub regions: Vec<Region>,
    /// The layout it was started with.
    pub layout: Layout,
}

/// A free loopback port, with its listener: the caller holds every
/// listener until all ports are chosen, so the kernel cannot hand one port
/// out twice. They are closed before the children bind; another process
/// taking a port in between makes the child fail to start, which is
/// reported, never hidden.
fn free_port() -> Result<(SocketAddr, TcpListener)> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| LoadError::io("binding a free port", e))?;
    let addr = l
        .local_addr()
        .map_err(|e| LoadError::io("reading a free port", e))?;
    Ok((addr, l))
}

/// Name of region `r` (zero-padded so sorted order is numeric order).
pub fn region_name(r: u16) -> String {
    format!("r{:02}", r + 1)
}

fn proc_of(p: &Process) -> Proc {
    Proc {
        name: p.spec.name.clone(),
        grpc: p.endpoint(),
        metrics: p.http,
    }
}

impl LocalFederation {
    /// Starts `layout` tier by tier (globals, region replicas, agents),
    /// secured as `security` says, and points this run's clients at it.
    pub async fn start(layout: Layout, security: Security) -> Result<LocalFederation> {
        let exe = std::env::current_exe()
            .map_err(|e| LoadError::io("locating the meridian binary", e))?;
        let dir = tempfile::Builder::new()
            .prefix("meridian-load-")
            .tempdir()
            .map_err(|e| LoadError::io("creating the data directory", e))?;
        let data = dir.path().to_path_buf();
        for d in ["logs", "regions", "agents"] {
            std::fs::create_dir_all(data.join(d))
                .map_err(|e| LoadError::io(format!("creating {d}"), e))?;
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut fed = LocalFederation {
            dir,
            stop,
            tasks: Vec::new(),
            globals: Vec::new(),
            regions: Vec::new(),
            layout: layout.clone(),
        };
        let regions: Vec<String> = (0..layout.regions).map(region_name).collect();
        let mut held = Vec::new();
        let mut plan = plan::plan(
            &plan::Layout {
                global_replicas: layout.global_replicas,
                regions: regions.clone(),
                region_replicas: layout.region_replicas,
                shards: layout.shards,
                simulated_nodes: layout.simulated_nodes,
                real_agents: layout.real_agents,
                shard_lease_ms: Some(layout.shard_lease_ms),
            },
            &data,
            |_| {
                let (addr, listener) = free_port()?;
                held.push(listener);
                Ok::<_, LoadError>(addr)
            },
        )?;
        drop(held);
        if !layout.tenant_limits {
            for global in &mut plan.globals {
                global.spec.args.extend(
                    ["--tenant-submit-rate", "0", "--tenant-max-queued", "0"].map(String::from),
                );
            }
        }
        let side = secure(&data, &mut plan, security)?;
        crate::client::use_token(side.token);
        crate::client::use_tls(side.tls);
        fed.globals = plan.globals.iter().map(proc_of).collect();
        for name in regions {
            let replicas = plan
                .regionals
                .iter()
                .filter(|p| matches!(&p.role, Role::Regional { region } if *region == name))
                .map(proc_of)
                .collect();
            let agents = plan
                .agents
                .iter()
                .filter(|p| matches!(&p.role, Role::Agent { region, .. } if *region == name))
                .map(proc_of)
                .collect();
            fed.regions.push(Region {
                name,
                replicas,
                agents,
            });
        }
        for tier in plan.tiers() {
            fed.start_tier(&exe, tier, &stop_rx).await?;
        }
        Ok(fed)
    }

    /// Starts a tier's children one after the other, each once the
    /// previous is ready.
    async fn start_tier(
        &mut self,
        exe: &Path,
        tier: &[Process],
        stop_rx: &watch::Receiver<bool>,
    ) -> Result<()> {
        // How long a child gets between SIGTERM and SIGKILL at shut-down.
        let grace = Duration::from_secs(5);
        let specs = tier.iter().map(|p| &p.spec);
        let (tasks, outcome) = child::start_in_order(exe, specs, grace, stop_rx, |_| {}).await;
        self.tasks.extend(tasks);
        outcome.map_err(|e| LoadError::Federation(e.to_string()))
    }

    /// The global endpoints, comma-separated.
    pub fn global_endpoints(&self) -> String {
        self.globals
            .iter()
            .filter_map(|p| p.grpc.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where the stores and logs are.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file of child `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    /// The process id of the running child `name`, found by its command
    /// line (which names this run's data directory, so no other process
    /// can match).
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        let data = self.dir.path().display().to_string();
        let entries = std::fs::read_dir("/proc").ok()?;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            let names_it = args.windows(2).any(|w| {
                matches!(w[0], b"--name" | b"--replica" | b"--node-id") && w[1] == name.as_bytes()
            });
            let ours = args
                .iter()
                .any(|a| String::from_utf8_lossy(a).contains(&data));
            if names_it && ours {
                return Some(pid);
            }
        }
        None
    }

    /// Kills child `name` with SIGKILL (the supervisor restarts it after
    /// its backoff). Returns whether a process was found.
    pub fn kill(&self, name: &str) -> bool {
        match self.pid_of(name) {
            Some(pid) => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok(),
            None => false,
        }
    }

    /// Leaves the data directory behind when the federation is dropped;
    /// returns it.
    pub fn keep_data(&mut self) -> &std::path::Path {
        self.dir.disable_cleanup(true);
        self.dir.path()
    }

    /// Stops every child (agents first would only make them reconnect; all
    /// get SIGTERM at once and the supervisor waits for each).
    pub async fn shut_down(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A federation of every role (one global, one region replica, a
    /// simulated and a real agent), planned on made-up ports under `data`.
    fn small_plan(data: &Path) -> plan::Plan {
        let mut port = 20_000u16;
        let layout = plan::Layout {
            global_replicas: 1,
            regions: vec![region_name(0)],
            region_replicas: 1,
            shards: 1,
            simulated_nodes: 1,
            real_agents: 1,
            shard_lease_ms: None,
        };
        plan::plan(&layout, data, |_| {
            port += 1;
            Ok::<_, std::convert::Infallible>(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        })
        .expect("plan")
    }

    fn has(args: &[String], flag: &str) -> bool {
        args.iter().any(|a| a == flag)
    }

    #[test]
    fn an_insecure_federation_runs_every_process_in_plain_text_and_its_global_tier_without_auth() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut plan = small_plan(dir.path());
        let side = secure(dir.path(), &mut plan, Security::Insecure).expect("secure");
        for p in plan.processes_mut() {
            let args = &p.spec.args;
            assert!(has(args, "--insecure"), "{}: {args:?}", p.spec.name);
            assert!(
                !args.iter().any(|a| a.starts_with("--tls")),
                "{}: {args:?}",
                p.spec.name
            );
            assert!(!has(args, "--bootstrap-token-file"), "{args:?}");
        }
        assert!(plan.globals.iter().all(|p| has(&p.spec.args, "--no-auth")));
        assert!(side.tls.insecure);
        assert_eq!(side.tls.ca_cert, None);
        assert_eq!(side.token, None);
        assert!(!meridian_cli::dev::pki::pki_dir(dir.path()).exists());
    }

    #[test]
    fn a_tls_federation_gives_every_process_certificates_and_load_a_certificate_and_the_admin_token()
     {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut plan = small_plan(dir.path());
        let side = secure(dir.path(), &mut plan, Security::TlsAuth).expect("secure");
        for p in plan.processes_mut() {
            let args = &p.spec.args;
            for flag in ["--tls-ca", "--tls-cert", "--tls-key"] {
                assert!(has(args, flag), "{}: {args:?}", p.spec.name);
            }
            assert!(!has(args, "--insecure"), "{args:?}");
            assert!(!has(args, "--no-auth"), "{args:?}");
        }
        assert!(
            plan.globals
                .iter()
                .all(|p| has(&p.spec.args, "--bootstrap-token-file"))
        );
        assert!(!side.tls.insecure);
        for file in [
            &side.tls.ca_cert,
            &side.tls.client_cert,
            &side.tls.client_key,
        ] {
            assert!(file.as_ref().is_some_and(|f| f.exists()), "{file:?}");
        }
        let token = side.token.expect("the admin token");
        let stored =
            meridian_cli::auth::read_token_file(&meridian_cli::auth::dev_token_path(dir.path()))
                .expect("token file");
        assert_eq!(token, stored);
    }
}
