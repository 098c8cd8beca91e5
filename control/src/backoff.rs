//! Exponential backoff with full jitter.
//!
//! The one formula ([`Backoff`]) lives in `meridian_store::backoff`, the
//! lowest crate, because the store's transaction retry needs it too; this
//! module is its name inside the control kit.
//!
//! Must never: define a second delay formula, sleep, or use an unseeded RNG.

pub use meridian_store::backoff::*;
