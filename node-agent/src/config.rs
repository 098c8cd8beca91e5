//! What a node is and how its agent behaves: [`NodeSpec`] (identity,
//! resources, labels) and [`AgentOptions`] (timings, limits, seed).
//!
//! Owns the defaults and their validation. Must never perform I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use meridian_control::BackoffConfig;
use meridian_proto::limits::{MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES, MAX_LABELS};
use meridian_proto::v1::Resources;

use crate::error::AgentError;
use crate::exec::isolation::IsolationOptions;

/// Node label every simulated node advertises (value [`SIMULATED_VALUE`]),
/// so the region can keep tasks that run real commands off simulated nodes.
/// A real node never carries it.
pub const SIMULATED_LABEL: &str = "meridian.io/simulated";
/// Value of [`SIMULATED_LABEL`] on a simulated node.
pub const SIMULATED_VALUE: &str = "true";

/// The node one agent (or one virtual node) stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Stable id within the region.
    pub node_id: String,
    /// Resources offered to tasks.
    pub allocatable: Resources,
    /// Labels for job node constraints.
    pub labels: BTreeMap<String, String>,
    /// Availability zone; empty when not configured.
    pub zone: String,
    /// Rack; empty when not configured.
    pub rack: String,
}

impl NodeSpec {
    /// Virtual node `index` of a `--simulate` host built on `self`: its own
    /// id, and the simulated label (whatever `self` said about it).
    pub fn simulated(&self, index: usize) -> NodeSpec {
        let mut spec = self.clone();
        spec.node_id = format!("{}-{index:06}", self.node_id);
        spec.labels
            .insert(SIMULATED_LABEL.to_string(), SIMULATED_VALUE.to_string());
        spec
    }

    /// Refuses a real node's spec that claims to be simulated.
    pub fn check_real(&self) -> Result<(), AgentError> {
        if self.labels.contains_key(SIMULATED_LABEL) {
            return Err(AgentError::Config(format!(
                "label {SIMULATED_LABEL} is reserved for simulated nodes (--simulate)"
            )));
        }
        Ok(())
    }
}

/// Timings and limits of an agent. Every node of a host shares one.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Reconnect backoff (full jitter). Defaults: 100 ms doubling to 10 s.
    pub reconnect: BackoffConfig,
    /// Seed of every RNG of the host; node `i` derives its own from it.
    pub seed: u64,
    /// Heartbeat interval used until the region names one.
    pub default_heartbeat: Duration,
    /// Heartbeats are never sent more often than this, whatever the region
    /// asks (bounded rate).
    pub min_heartbeat: Duration,
    /// Minimum spacing of two ReportTaskStatus calls of one node; state
    /// changes in between are coalesced into one batch.
    pub report_interval: Duration,
    /// Stop grace period when a command leaves it at 0.
    pub default_grace: Duration,
    /// Deadline of every unary call to the region: one attempt, after which
    /// the node tries the next replica (control's per-attempt deadline).
    pub call_timeout: Duration,
    /// Largest size of one output file (stdout or stderr) of an attempt;
    /// beyond it the file is rotated once (`stdout.1`), so at most twice this
    /// is kept on disk.
    pub output_file_cap: u64,
    /// Enforce the attempt's memory reservation as `RLIMIT_AS`.
    pub enforce_memory_limit: bool,
    /// Optional `RLIMIT_CPU` (total CPU seconds) for every real process.
    pub cpu_time_limit: Option<Duration>,
    /// Where real attempts get their scratch directories and the agent keeps
    /// its state file; `None` for simulated nodes (nothing on disk).
    pub work_dir: Option<PathBuf>,
    /// Finished attempts remembered per node for idempotent RUN/STOP.
    pub finished_memory: usize,
    /// How long a finished attempt's directory (its output files and
    /// scratch space) stays on a real node after its last write.
    pub attempt_retention: Duration,
    /// Which user real tasks run as and whether each gets a cgroup.
    pub isolation: IsolationOptions,
    /// Where a real node serves the live output of its attempts
    /// (`AgentLogs`); `None`: it serves none.
    pub logs_listen: Option<std::net::SocketAddr>,
    /// The endpoint advertised to the region for `AgentLogs`
    /// (`http://host:port`); empty: `http://` and the address bound.
    pub logs_endpoint: String,
    /// TLS to the region and on the log server: the certificate names this
    /// host's nodes (`meridian://agent/<node>`, or `<prefix>*` for a host
    /// of simulated nodes). Plain by default (tests, the simulation); the
    /// `meridian agent` binary needs TLS files or `--insecure`.
    pub security: meridian_control::tls::Security,
}

/// How long finished attempts' directories stay by default: a day, long
/// enough to read a finished task's whole output from the node.
pub const DEFAULT_ATTEMPT_RETENTION: Duration = Duration::from_secs(86_400);

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            reconnect: BackoffConfig {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(10),
            },
            seed: 0,
            default_heartbeat: Duration::from_secs(5),
            min_heartbeat: Duration::from_millis(500),
            report_interval: Duration::from_millis(10),
            default_grace: Duration::from_secs(10),
            call_timeout: meridian_control::rpc::DEFAULT_ATTEMPT_DEADLINE,
            output_file_cap: 8 * 1024 * 1024,
            enforce_memory_limit: true,
            cpu_time_limit: None,
            work_dir: None,
            finished_memory: 256,
            attempt_retention: DEFAULT_ATTEMPT_RETENTION,
            isolation: IsolationOptions::default(),
            logs_listen: None,
            logs_endpoint: String::new(),
            security: meridian_control::tls::Security::Insecure,
        }
    }
}

impl AgentOptions {
    /// Checks the values that would make the agent misbehave.
    pub fn validate(&self) -> Result<(), AgentError> {
        self.reconnect
            .validate()
            .map_err(|e| AgentError::Config(format!("reconnect backoff: {e}")))?;
        if self.min_heartbeat.is_zero() {
            return Err(AgentError::Config("min_heartbeat must be > 0".into()));
        }
        if self.call_timeout.is_zero() {
            return Err(AgentError::Config("call_timeout must be > 0".into()));
        }
        if self.attempt_retention.is_zero() {
            return Err(AgentError::Config(
                "--attempt-retention must be longer than zero".into(),
            ));
        }
        if self.isolation.pids_limit == 0 {
            return Err(AgentError::Config("--pids-limit must be > 0".into()));
        }
        Ok(())
    }
}

/// Parses `k=v,k2=v2` (empty string: no labels), enforcing the wire limits.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, AgentError> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| AgentError::Config(format!("label {pair:?} is not k=v")))?;
        if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES {
            return Err(AgentError::Config(format!(
                "label key {k:?} must be 1 to {MAX_LABEL_KEY_BYTES} bytes"
            )));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(AgentError::Config(format!(
                "label value of {k:?} exceeds {MAX_LABEL_VALUE_BYTES} bytes"
            )));
        }
        labels.insert(k.to_string(), v.to_string());
    }
    if labels.len() > MAX_LABELS {
        return Err(AgentError::Config(format!("more than {MAX_LABELS} labels")));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_into_an_ordered_map() {
        let l = parse_labels("zone=a, gpu=yes,").unwrap();
        assert_eq!(
            l.into_iter().collect::<Vec<_>>(),
            vec![("gpu".into(), "yes".into()), ("zone".into(), "a".into())]
        );
        assert!(parse_labels("").unwrap().is_empty());
    }

    fn spec(labels: &str) -> NodeSpec {
        NodeSpec {
            node_id: "sim".into(),
            allocatable: Resources::default(),
            labels: parse_labels(labels).unwrap(),
            zone: String::new(),
            rack: String::new(),
        }
    }

    #[test]
    fn every_simulated_node_advertises_the_simulated_label_next_to_its_own_labels() {
        let v = spec("zone=a").simulated(7);
        assert_eq!(v.node_id, "sim-000007");
        assert_eq!(v.labels[SIMULATED_LABEL], "true");
        assert_eq!(v.labels["zone"], "a");
        let overridden = spec("meridian.io/simulated=false").simulated(0);
        assert_eq!(overridden.labels[SIMULATED_LABEL], "true");
    }

    #[test]
    fn a_real_node_may_not_claim_to_be_simulated() {
        assert!(spec("zone=a").check_real().is_ok());
        assert!(matches!(
            spec("meridian.io/simulated=true").check_real(),
            Err(AgentError::Config(_))
        ));
    }

    #[test]
    fn a_label_without_equals_sign_is_rejected() {
        assert!(matches!(parse_labels("zone"), Err(AgentError::Config(_))));
    }
}
