//! Time, the only way meridian-control reads it.
//!
//! The [`Clock`] trait, its [`Instant`], [`SystemClock`] and [`ManualClock`]
//! live in `meridian_store::clock`, the lowest crate, so the store's
//! transaction retry waits through the same clock as everything above it;
//! this module is their name inside the control kit.
//!
//! Must never: define a second clock, or read `std::time`/`tokio::time` for
//! a decision anywhere in this crate.

pub use meridian_store::clock::*;
