//! meridian-agent: the node agent, Meridian's data plane.
//!
//! Owns everything that happens on a node: registering with the region
//! ([`node`]), pulling the command stream and reporting task status over the
//! real `AgentLink` protocol, running real processes ([`exec::process`]) or
//! simulated tasks ([`exec::simulated`]), fencing stale commands ([`fence`]),
//! following the region's replicas and shard leaders ([`link`]), static
//! stability across region outages, local state that survives an agent
//! restart ([`persist`]), and hosting many virtual nodes in one process
//! ([`host`]).
//!
//! Must never: depend on the global or regional tiers (it talks to them only
//! through `meridian-proto`), read time except through a
//! [`meridian_control::Clock`], or use an unseeded RNG.

mod beside;
pub mod config;
pub mod downlink;
pub mod error;
pub mod exec;
pub mod fence;
pub mod host;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod persist;
pub mod probe;
pub mod skew;
pub mod tasks;
mod trace;
pub mod uplink;

pub use config::{AgentOptions, NodeSpec, SIMULATED_LABEL, SIMULATED_VALUE, parse_labels};
pub use error::AgentError;
pub use host::{AgentCommand, Host, run_agent};
pub use node::NodeAgent;
pub use probe::{Probe, ProbeSnapshot};
