//! meridian-sim: the whole federation inside one deterministic simulation,
//! and the checker that judges a run.
//!
//! Owns the history vocabulary and recorder ([`history`]), the invariant
//! checker of the invariants of docs/architecture.md ([`checker`]), and the simulation: the
//! simulated network and clock behind the product's seams ([`net`],
//! [`clock`]), the pause fault ([`gate`]), what is recorded from the real
//! components ([`exec`], [`observe`]) and the run itself ([`world`]). The
//! checker and history are shared with the multi-process chaos test. This
//! crate must never hold product logic: it drives the real crates and
//! records what they do.

pub mod checker;
pub mod clock;
pub mod exec;
pub mod gate;
pub mod history;
pub mod net;
pub mod observe;
pub mod world;

pub use checker::{CheckConfig, Violation, check};
pub use history::{Event, History, JobState, Record, Recorder, Resources, Scope, StopReason};
pub use meridian_control::planted::Bug;
pub use world::{Outcome, SimConfig, SimError, run};
