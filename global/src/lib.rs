//! meridian-global: the top tier of Meridian.
//!
//! Owns the federation API (gRPC and HTTP/JSON), the persisted job lifecycle,
//! the router, the region registry with region leases, the fence-first
//! hand-off of jobs between regions, and the election of one global leader
//! among replicas sharing a store. See `docs/global.md`.
//!
//! Must never: import another tier (`meridian-regional`, `meridian-agent`:
//! they are reached only through `meridian-proto`), write to the store
//! without checking the leader fence inside the same transaction, read time
//! except through [`meridian_control::Clock`], or accept a region's write
//! under an assignment epoch that is not the job's current one.

pub mod admin_channels;
pub mod audit;
pub mod auth;
pub mod config;
pub mod console;
pub mod controller;
pub mod decode_errors;
pub mod dependencies;
pub mod descriptors;
pub mod error;
pub mod events;
pub mod federation;
pub mod gate;
pub mod handoff;
pub mod history;
pub mod http;
pub mod job_index;
pub mod jobs;
pub mod json;
pub mod keys;
pub mod leader;
pub mod lifecycle;
pub mod limits;
pub mod link;
pub mod listing;
pub mod metrics_endpoint;
pub mod openapi;
pub mod parking;
pub mod reach;
pub mod registry;
pub mod reports;
pub mod retention;
pub mod router;
pub mod schedules;
pub mod server;
pub mod submitter;
pub mod usage;
pub mod validate;

pub use config::GlobalConfig;
pub use error::{GlobalError, Result};
pub use server::{Running, run, start};
