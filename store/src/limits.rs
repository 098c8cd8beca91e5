//! The FoundationDB limits, enforced identically on every backend.
//!
//! Owns the numbers and the checks. It must never truncate: an oversize
//! request is refused with an error naming the limit.

use std::time::Duration;

use crate::error::{Limit, Result, StoreError};

/// Largest key, in bytes (FoundationDB: 10,000).
pub const MAX_KEY_BYTES: usize = 10_000;
/// Largest value, in bytes (FoundationDB: 100,000).
pub const MAX_VALUE_BYTES: usize = 100_000;
/// Largest total of written keys and values in one transaction (FoundationDB: 10,000,000).
pub const MAX_TRANSACTION_BYTES: usize = 10_000_000;
/// Oldest a transaction may get before it can no longer read or commit.
pub const MAX_TRANSACTION_AGE: Duration = Duration::from_secs(5);

pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    check(Limit::KeySize, key.len(), MAX_KEY_BYTES)
}

pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    check(Limit::ValueSize, value.len(), MAX_VALUE_BYTES)
}

pub(crate) fn check_transaction_size(bytes: usize) -> Result<()> {
    check(Limit::TransactionSize, bytes, MAX_TRANSACTION_BYTES)
}

fn check(limit: Limit, actual: usize, max: usize) -> Result<()> {
    if actual > max {
        Err(StoreError::LimitExceeded { limit, actual, max })
    } else {
        Ok(())
    }
}
