//! The integration tests of this crate, built as one test binary: one link
//! instead of one per file, a fraction of the disk and build time. Each
//! file of this folder is a module here; the shared helpers are declared
//! once, above them. nextest still runs every test in its own process.

mod federation;
mod planted;
mod replay;
mod schedules;
mod simulation;
