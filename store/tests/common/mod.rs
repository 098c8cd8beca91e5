//! Code shared by the store's integration tests.
//!
//! Each test file that needs it declares `mod common;`; a file uses only some
//! of the checks, hence the `dead_code` allowance.

#![allow(dead_code)]

pub mod conformance;
