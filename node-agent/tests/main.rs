//! The integration tests of this crate, built as one test binary: one link
//! instead of one per file, a fraction of the disk and build time. Each
//! file of this folder is a module here; the shared helpers are declared
//! once, above them. nextest still runs every test in its own process.

mod common;

mod fencing;
mod herd;
mod isolation;
mod leader_hint;
mod metrics;
mod process;
mod retention;
mod static_stability;
mod version_skew;
