//! meridian-control: the control-plane kit shared by every Meridian tier.
//!
//! Owns the building blocks controllers are made of: the [`clock`] through
//! which all time is read, [`backoff`] with full jitter and [`retry`]
//! classification, the per-key work [`queue`], the one retry rule for calls
//! between processes ([`rpc`]), leases with fencing epochs ([`lease`]), the
//! network seam every server and client goes through ([`net`]), the
//! [`telemetry`] they record, the jobs' [`trace`] ids every tier
//! carries, the [`entropy`] fresh ids are drawn from (seeded per run in
//! the simulation), and the switches of the [`planted`] bugs that only a
//! test build can turn on.
//!
//! Must never: read time except through [`clock::Clock`], use an unseeded
//! RNG, or depend on a tier crate (`global`, `regional`, `node-agent`).

pub mod backoff;
pub mod clock;
pub mod entropy;
pub mod host_stream;
pub mod lease;
pub mod net;
pub mod planted;
pub mod queue;
pub mod retry;
pub mod rpc;
pub mod telemetry;
pub mod tls;
pub mod trace;

pub use backoff::{Backoff, BackoffConfig, BackoffConfigError};
pub use clock::{Clock, Instant, ManualClock, SharedClock, Sleep, SystemClock};
pub use queue::{AddOutcome, KeyState, Lane, QueueConfig, QueueKey, WorkGuard, WorkQueue};
pub use retry::Retryable;
pub use rpc::{Replicas, RetryConfig, RpcVerdict};
