//! The embedded descriptors of package `meridian.v1`, decoded once.
//!
//! Owns finding a message's descriptor by its short name, for the modules
//! that read or describe JSON by the proto definitions (query strings of
//! the HTTP API, the OpenAPI document). It must never hold a definition of
//! its own: the `.proto` files are the only source.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

use crate::error::{GlobalError, Result};

/// Package of every message of the API.
pub const PACKAGE: &str = "meridian.v1";

static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();

/// The decoded descriptor set.
pub fn pool() -> Result<&'static DescriptorPool> {
    POOL.get_or_init(|| DescriptorPool::decode(meridian_proto::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
        .ok_or_else(|| GlobalError::Corrupt("embedded descriptor set does not decode".into()))
}

/// The descriptor of message `meridian.v1.{name}`.
pub fn message(name: &str) -> Result<MessageDescriptor> {
    pool()?
        .get_message_by_name(&format!("{PACKAGE}.{name}"))
        .ok_or_else(|| GlobalError::Corrupt(format!("no message {PACKAGE}.{name}")))
}
