//! The command line of each federation role.
//!
//! Owns how `meridian global`, `meridian regional` and `meridian agent` are
//! spelled as arguments: the subcommand, every flag name, and how each value
//! is written. `meridian dev` and the load suite (through [`super::plan`])
//! and the multi-process tests build their command lines here, so a renamed
//! or added flag changes in one place. The flags themselves are defined by
//! the binary's argument types (`src/main.rs`, [`crate::TelemetryArgs`]);
//! these builders follow them.
//!
//! Must never start, signal or wait for anything: it only builds argument
//! lists (without the program name).

use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Loopback with port 0: the process binds a free port and prints it.
pub const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// `--otlp-endpoint URL`: span export, a flag every role takes. Also used to
/// hand the supervisor's own endpoint on to its planned children.
pub fn otlp_endpoint(url: &str) -> [String; 2] {
    ["--otlp-endpoint".into(), url.into()]
}

/// Appends `--flag value`.
fn push(args: &mut Vec<String>, flag: &str, value: impl Display) {
    args.push(flag.into());
    args.push(value.to_string());
}

/// Appends `--flag value` when there is a value.
fn push_some(args: &mut Vec<String>, flag: &str, value: Option<impl Display>) {
    if let Some(v) = value {
        push(args, flag, v);
    }
}

/// `meridian global`: one replica of the global tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalLine {
    /// Store URL (`sqlite:PATH`, shared by the replicas, or `fdb:CLUSTER_FILE`).
    pub store: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// HTTP/JSON API, console and `/metrics`; none when `None`.
    pub http: Option<SocketAddr>,
    /// Stable replica name; the binary's default when `None`.
    pub name: Option<String>,
    /// OTLP span export endpoint.
    pub otlp_endpoint: Option<String>,
    /// Further arguments, appended as given.
    pub extra: Vec<String>,
}

impl GlobalLine {
    pub fn new(store: impl Into<String>, listen: SocketAddr) -> GlobalLine {
        GlobalLine {
            store: store.into(),
            listen,
            http: None,
            name: None,
            otlp_endpoint: None,
            extra: Vec::new(),
        }
    }

    pub fn http(mut self, addr: SocketAddr) -> GlobalLine {
        self.http = Some(addr);
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> GlobalLine {
        self.name = Some(name.into());
        self
    }

    pub fn otlp_endpoint(mut self, url: impl Into<String>) -> GlobalLine {
        self.otlp_endpoint = Some(url.into());
        self
    }

    /// Appends further arguments.
    pub fn with<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> GlobalLine {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["global".to_string()];
        push(&mut a, "--store", &self.store);
        push(&mut a, "--listen", self.listen);
        push_some(&mut a, "--http", self.http.as_ref());
        push_some(&mut a, "--name", self.name.as_ref());
        if let Some(url) = &self.otlp_endpoint {
            a.extend(otlp_endpoint(url));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// `meridian regional`: one scheduler replica of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionalLine {
    /// Region name.
    pub region: String,
    /// Global tier endpoints, comma-separated; a standalone region when `None`.
    pub global: Option<String>,
    /// Region store URL, shared by the region's replicas.
    pub store: String,
    /// gRPC listen address (AgentLink, RegionAdmin).
    pub listen: SocketAddr,
    /// `/metrics` and console; none when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Shards the region's nodes are split into.
    pub shards: u32,
    /// Stable replica name; region and process id when `None`.
    pub replica: Option<String>,
    /// Seed of the replica's random choices.
    pub seed: Option<u64>,
    /// Shard lease in ms; the binary's default when `None`.
    pub shard_lease_ms: Option<u64>,
    /// Heartbeat lateness that makes a node suspect, in ms.
    pub node_timeout_ms: Option<u64>,
    /// OTLP span export endpoint.
    pub otlp_endpoint: Option<String>,
    /// Further arguments, appended as given.
    pub extra: Vec<String>,
}

impl RegionalLine {
    pub fn new(
        region: impl Into<String>,
        store: impl Into<String>,
        listen: SocketAddr,
        shards: u32,
    ) -> RegionalLine {
        RegionalLine {
            region: region.into(),
            global: None,
            store: store.into(),
            listen,
            metrics_listen: None,
            shards,
            replica: None,
            seed: None,
            shard_lease_ms: None,
            node_timeout_ms: None,
            otlp_endpoint: None,
            extra: Vec::new(),
        }
    }

    pub fn global(mut self, endpoints: impl Into<String>) -> RegionalLine {
        self.global = Some(endpoints.into());
        self
    }

    pub fn metrics_listen(mut self, addr: SocketAddr) -> RegionalLine {
        self.metrics_listen = Some(addr);
        self
    }

    pub fn replica(mut self, name: impl Into<String>) -> RegionalLine {
        self.replica = Some(name.into());
        self
    }

    pub fn seed(mut self, seed: u64) -> RegionalLine {
        self.seed = Some(seed);
        self
    }

    pub fn shard_lease_ms(mut self, ms: u64) -> RegionalLine {
        self.shard_lease_ms = Some(ms);
        self
    }

    pub fn node_timeout_ms(mut self, ms: u64) -> RegionalLine {
        self.node_timeout_ms = Some(ms);
        self
    }

    pub fn otlp_endpoint(mut self, url: impl Into<String>) -> RegionalLine {
        self.otlp_endpoint = Some(url.into());
        self
    }

    /// Appends further arguments.
    pub fn with<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> RegionalLine {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["regional".to_string()];
        push(&mut a, "--region", &self.region);
        push_some(&mut a, "--global", self.global.as_ref());
        push(&mut a, "--store", &self.store);
        push(&mut a, "--listen", self.listen);
        push_some(&mut a, "--metrics-listen", self.metrics_listen.as_ref());
        push(&mut a, "--shards", self.shards);
        push_some(&mut a, "--replica", self.replica.as_ref());
        push_some(&mut a, "--seed", self.seed.as_ref());
        push_some(&mut a, "--shard-lease-ms", self.shard_lease_ms.as_ref());
        push_some(&mut a, "--node-timeout-ms", self.node_timeout_ms.as_ref());
        if let Some(url) = &self.otlp_endpoint {
            a.extend(otlp_endpoint(url));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// `meridian agent`: one node agent (a real node, or a set of simulated ones).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentLine {
    /// The region's replica endpoints, tried in this order.
    pub region_endpoints: Vec<String>,
    /// Node id (with `simulate`: the prefix of the ids).
    pub node_id: String,
    /// Task output and the agent's state file.
    pub work_dir: PathBuf,
    /// CPU cores offered to tasks.
    pub cpu: f64,
    /// Memory offered to tasks, in bytes.
    pub memory: u64,
    /// Node labels, `k=v,k2=v2`.
    pub labels: Option<String>,
    /// Seed of the agent's random choices.
    pub seed: Option<u64>,
    /// Host this many simulated nodes instead of one real node.
    pub simulate: Option<u32>,
    /// `/metrics`; none when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// OTLP span export endpoint.
    pub otlp_endpoint: Option<String>,
    /// Further arguments, appended as given.
    pub extra: Vec<String>,
}

impl AgentLine {
    pub fn new(
        region_endpoints: Vec<String>,
        node_id: impl Into<String>,
        work_dir: impl Into<PathBuf>,
        cpu: f64,
        memory: u64,
    ) -> AgentLine {
        AgentLine {
            region_endpoints,
            node_id: node_id.into(),
            work_dir: work_dir.into(),
            cpu,
            memory,
            labels: None,
            seed: None,
            simulate: None,
            metrics_listen: None,
            otlp_endpoint: None,
            extra: Vec::new(),
        }
    }

    pub fn labels(mut self, labels: impl Into<String>) -> AgentLine {
        self.labels = Some(labels.into());
        self
    }

    pub fn seed(mut self, seed: u64) -> AgentLine {
        self.seed = Some(seed);
        self
    }

    pub fn simulate(mut self, nodes: u32) -> AgentLine {
        self.simulate = Some(nodes);
        self
    }

    pub fn metrics_listen(mut self, addr: SocketAddr) -> AgentLine {
        self.metrics_listen = Some(addr);
        self
    }

    pub fn otlp_endpoint(mut self, url: impl Into<String>) -> AgentLine {
        self.otlp_endpoint = Some(url.into());
        self
    }

    /// Appends further arguments.
    pub fn with<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> AgentLine {
        self.extra.extend(args.into_iter().map(Into::into));
        self
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["agent".to_string()];
        push(&mut a, "--region", self.region_endpoints.join(","));
        push(&mut a, "--node-id", &self.node_id);
        push(&mut a, "--work-dir", self.work_dir.display());
        push_some(&mut a, "--seed", self.seed.as_ref());
        push_some(&mut a, "--simulate", self.simulate.as_ref());
        push(&mut a, "--cpu", self.cpu);
        push(&mut a, "--memory", self.memory);
        push_some(&mut a, "--labels", self.labels.as_ref());
        push_some(&mut a, "--metrics-listen", self.metrics_listen.as_ref());
        if let Some(url) = &self.otlp_endpoint {
            a.extend(otlp_endpoint(url));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn a_global_line_spells_only_the_flags_that_were_set_then_the_extra_arguments() {
        let bare = GlobalLine::new("sqlite:/g.db", LOOPBACK_ANY_PORT).args();
        assert_eq!(
            bare,
            [
                "global",
                "--store",
                "sqlite:/g.db",
                "--listen",
                "127.0.0.1:0"
            ]
        );
        let full = GlobalLine::new("sqlite:/g.db", addr(7400))
            .http(addr(7480))
            .name("g1")
            .otlp_endpoint("http://127.0.0.1:4317")
            .with(["--x", "1"])
            .args();
        assert_eq!(
            full,
            [
                "global",
                "--store",
                "sqlite:/g.db",
                "--listen",
                "127.0.0.1:7400",
                "--http",
                "127.0.0.1:7480",
                "--name",
                "g1",
                "--otlp-endpoint",
                "http://127.0.0.1:4317",
                "--x",
                "1"
            ]
        );
    }

    #[test]
    fn a_regional_line_spells_every_flag_it_carries() {
        let line = RegionalLine::new("r1", "sqlite:/r1.db", addr(7500), 2)
            .global("http://a,http://b")
            .metrics_listen(addr(7600))
            .replica("r1-a")
            .seed(7)
            .shard_lease_ms(500)
            .node_timeout_ms(60_000);
        assert_eq!(
            line.args(),
            [
                "regional",
                "--region",
                "r1",
                "--global",
                "http://a,http://b",
                "--store",
                "sqlite:/r1.db",
                "--listen",
                "127.0.0.1:7500",
                "--metrics-listen",
                "127.0.0.1:7600",
                "--shards",
                "2",
                "--replica",
                "r1-a",
                "--seed",
                "7",
                "--shard-lease-ms",
                "500",
                "--node-timeout-ms",
                "60000"
            ]
        );
        let standalone = RegionalLine::new("r1", "sqlite:/r1.db", addr(7500), 1).args();
        assert!(!standalone.contains(&"--global".to_string()));
    }

    #[test]
    fn an_agent_line_joins_the_region_endpoints_and_writes_whole_cores_without_a_fraction() {
        let line = AgentLine::new(
            vec!["http://a".into(), "http://b".into()],
            "n1",
            "/w/n1",
            2.0,
            4 << 30,
        )
        .labels("zone=z1")
        .simulate(3)
        .metrics_listen(LOOPBACK_ANY_PORT);
        assert_eq!(
            line.args(),
            [
                "agent",
                "--region",
                "http://a,http://b",
                "--node-id",
                "n1",
                "--work-dir",
                "/w/n1",
                "--simulate",
                "3",
                "--cpu",
                "2",
                "--memory",
                "4294967296",
                "--labels",
                "zone=z1",
                "--metrics-listen",
                "127.0.0.1:0"
            ]
        );
        let half = AgentLine::new(vec!["http://a".into()], "n", "/w", 0.5, 1).args();
        assert!(half.windows(2).any(|w| w == ["--cpu", "0.5"]));
    }
}
