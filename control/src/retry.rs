//! Retry classification: the one question every error answers.
//!
//! Owns the re-export of [`Retryable`]: "is this transient (retry with
//! backoff) or permanent (never retry)?". The decisions built on it live
//! where the retries happen: the store's transaction loop, the RPC rule of
//! [`crate::rpc`], and each tier's loop.
//!
//! Must never: decide retryability by inspecting error text.

/// Whether an error is transient. Defined once, in meridian-store (the
/// lowest crate), so store errors and every tier's errors answer the same
/// question through the same method.
pub use meridian_store::Retryable;
