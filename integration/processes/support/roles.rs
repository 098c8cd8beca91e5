//! The federation's roles started for a test from their command lines
//! (`meridian_cli::dev::line`), each awaited by the line it prints once up,
//! with the addresses it printed there.
//!
//! Owns what each role prints when it is up and how to read its addresses
//! from it; how the process is run and ended is [`super::launch`]'s.

use meridian_cli::dev::line::{AgentLine, GlobalLine, LOOPBACK_ANY_PORT, RegionalLine};

use super::launch::{Launch, Proc};

/// A `meridian global` replica.
pub struct Global {
    pub proc: Proc,
    /// gRPC endpoint, `http://ADDR`.
    pub grpc: String,
    /// HTTP endpoint, `http://ADDR`, when it serves HTTP.
    pub http: Option<String>,
}

impl Global {
    /// What a replica prints once it serves, followed by
    /// `http://ADDR` and, with `--http`, ` http=http://ADDR`.
    pub const SERVING: &str = "meridian global: serving grpc=";

    pub fn start(line: &GlobalLine) -> Global {
        Global::start_with(line, |l| l)
    }

    /// Starts it with the launch adjusted by `launch` (environment, stderr,
    /// how it ends).
    pub fn start_with(line: &GlobalLine, launch: impl FnOnce(Launch) -> Launch) -> Global {
        let (proc, found) = launch(Launch::meridian(line.args())).start(&[Global::SERVING]);
        let mut parts = found[0].split_whitespace();
        let grpc = parts.next().expect("grpc address").to_string();
        let http = parts
            .next()
            .and_then(|p| p.strip_prefix("http="))
            .map(str::to_string);
        Global { proc, grpc, http }
    }

    /// A replica named `name` on the store at `store`, serving gRPC only, on
    /// a free loopback port.
    pub fn replica(store: &str, name: &str) -> Global {
        Global::start(&GlobalLine::new(store, LOOPBACK_ANY_PORT).name(name))
    }
}

/// A `meridian regional` replica.
pub struct Regional {
    pub proc: Proc,
    /// gRPC address (AgentLink, RegionAdmin), `ADDR`.
    pub grpc: String,
    /// `/metrics` and console address, `ADDR`, when it serves them.
    pub metrics: Option<String>,
}

impl Regional {
    /// What a replica prints once it serves gRPC, followed by `ADDR`.
    pub const LISTENING: &str = "listening on ";
    /// What it prints once it serves `/metrics`, followed by `ADDR`.
    pub const METRICS: &str = "metrics on ";

    pub fn start(line: &RegionalLine) -> Regional {
        Regional::start_with(line, |l| l)
    }

    /// Starts it with the launch adjusted by `launch`.
    pub fn start_with(line: &RegionalLine, launch: impl FnOnce(Launch) -> Launch) -> Regional {
        let markers: &[&str] = match line.metrics_listen {
            Some(_) => &[Regional::LISTENING, Regional::METRICS],
            None => &[Regional::LISTENING],
        };
        let (proc, mut found) = launch(Launch::meridian(line.args())).start(markers);
        let metrics = (found.len() > 1).then(|| found.remove(1));
        Regional {
            proc,
            grpc: found.remove(0),
            metrics,
        }
    }

    /// The gRPC endpoint as clients dial it.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// A `meridian agent`.
pub struct Agent {
    pub proc: Proc,
    /// `http://ADDR/metrics`, when it serves them.
    pub metrics: Option<String>,
}

impl Agent {
    /// What an agent prints once it serves `/metrics`, followed by
    /// `http://ADDR/metrics`. It prints nothing else: without metrics it
    /// counts as started once spawned.
    pub const METRICS: &str = "meridian agent: metrics on ";

    pub fn start(line: &AgentLine) -> Agent {
        Agent::start_with(line, |l| l)
    }

    /// Starts it with the launch adjusted by `launch`.
    pub fn start_with(line: &AgentLine, launch: impl FnOnce(Launch) -> Launch) -> Agent {
        let markers: &[&str] = match line.metrics_listen {
            Some(_) => &[Agent::METRICS],
            None => &[],
        };
        let (proc, found) = launch(Launch::meridian(line.args())).start(markers);
        Agent {
            proc,
            metrics: found.into_iter().next(),
        }
    }
}
