//! The integration tests of this crate, built as one test binary: one link
//! instead of one per file, a fraction of the disk and build time. Each
//! file of this folder is a module here; the shared helpers are declared
//! once, above them. nextest still runs every test in its own process.

mod access_support;
mod common;
mod sse;

mod access;
mod api;
mod audit;
mod console_sign_in;
mod dependencies;
mod handoff;
mod history;
mod http;
mod http_gone;
mod http_nodes;
mod http_watch;
mod idempotency;
mod limits;
mod listing;
mod metrics;
mod openapi;
mod parking;
mod queued;
mod reflection;
mod report_batches;
mod retention;
mod router;
mod schedule_runs;
mod schedules;
mod tls_links;
mod usage;
mod waiting;
mod watch;
