//! meridian-store: the FoundationDB data model, on SQLite or on FoundationDB
//! (or in memory, for deterministic simulation).
//!
//! Every tier of Meridian keeps its state here and only here: ordered byte
//! keys (tuple-encoded, one [`Subspace`] per tier, region or shard),
//! serializable transactions with automatic retry ([`Database::run`]), range
//! reads, atomic adds, versionstamps and watches, with FoundationDB's limits
//! enforced on every backend. Moving from one machine to a FoundationDB
//! cluster is a change of URL ([`open`]).
//!
//! This crate owns storage semantics, plus the two primitives its retry loop
//! shares with every tier above it: the [`clock`] and the full-jitter
//! [`backoff`] formula. It must never know what Meridian
//! stores (jobs, leases, bindings): those key layouts belong to the tiers.

pub mod backend;
pub mod backoff;
pub mod clock;
pub mod database;
pub mod error;
pub mod fault;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod limits;
pub mod memory;
pub mod sqlite;
pub mod transaction;

use std::sync::Arc;

pub use backend::{Backend, BackendTx, CommitInfo, KeyValue, Mutation, TxOptions, WatchFuture};
pub use backoff::{Backoff, BackoffConfig, BackoffConfigError};
pub use clock::{Clock, Instant, ManualClock, SharedClock, Sleep, SystemClock};
pub use database::{Database, MaybeCommitted, Once, RetryOptions};
pub use error::{Limit, Result, Retryable, StoreError, TxError};
pub use transaction::{RangeOption, Transaction, strinc};

/// The tuple layer (FoundationDB's key encoding), re-exported so every tier
/// encodes keys the same way.
pub mod tuple {
    pub use foundationdb_tuple::{
        Element, PackError, Subspace, TuplePack, TupleUnpack, Versionstamp, pack,
        pack_with_versionstamp, unpack,
    };
}

pub use tuple::Subspace;

/// Opens a database from a URL:
///
/// - `sqlite:PATH` — a SQLite file, shareable by several processes;
/// - `sqlite::memory:` — a private, throw-away database for tests;
/// - `memory:` — a fresh in-process database ([`memory::MemoryBackend`]):
///   deterministic, no threads, no files; for simulation and fast tests.
///   Each call opens a new, empty one; to share one between several
///   simulated processes, clone a `MemoryBackend` and pass it to
///   [`Database::new`] instead;
/// - `fdb:CLUSTER_FILE` — a FoundationDB cluster (cargo feature `fdb`).
pub async fn open(url: &str) -> Result<Database> {
    Ok(Database::new(open_backend(url).await?))
}

/// Opens the store for the lease records that guard the data at `url`
/// (`data`, already open). On SQLite, where one write lock covers a whole
/// file, that is a file of its own beside the data's (`NAME.leases.db` for
/// `NAME.db`), so a renewal never waits behind the data's writes; the
/// fences writes check stay with the data (see the lease module of
/// `meridian-control`). Every other backend has no such lock, and leases
/// stay in `data`.
pub async fn open_leases(url: &str, data: &Database) -> Result<Database> {
    match url.strip_prefix("sqlite:") {
        Some(path) if !path.is_empty() && path != ":memory:" => {
            open(&format!("sqlite:{}", leases_path(path))).await
        }
        _ => Ok(data.clone()),
    }
}

fn leases_path(data: &str) -> String {
    match data.strip_suffix(".db") {
        Some(stem) => format!("{stem}.leases.db"),
        None => format!("{data}.leases"),
    }
}

/// Opens just the backend named by a URL (see [`open`]), for wrappers.
pub async fn open_backend(url: &str) -> Result<Arc<dyn Backend>> {
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if let Some(rest) = url.strip_prefix("sqlite:") {
        if rest.is_empty() {
            return Err(invalid("sqlite: needs a path or :memory:"));
        }
        let backend = if rest == ":memory:" {
            sqlite::SqliteBackend::open_ephemeral(sqlite::SqliteOptions::default()).await?
        } else {
            sqlite::SqliteBackend::open(rest, sqlite::SqliteOptions::default()).await?
        };
        return Ok(Arc::new(backend));
    }
    if let Some(rest) = url.strip_prefix("memory:") {
        if !rest.is_empty() {
            return Err(invalid("memory: takes nothing after the colon"));
        }
        return Ok(Arc::new(memory::MemoryBackend::new()));
    }
    if let Some(rest) = url.strip_prefix("fdb:") {
        #[cfg(feature = "fdb")]
        {
            return Ok(Arc::new(fdb::FdbBackend::open(rest)?));
        }
        #[cfg(not(feature = "fdb"))]
        {
            let _ = rest;
            return Err(invalid(
                "this build has no FoundationDB support (build with --features fdb)",
            ));
        }
    }
    Err(invalid(
        "expected sqlite:PATH, sqlite::memory:, memory: or fdb:CLUSTER_FILE",
    ))
}

#[cfg(test)]
mod tests {
    use super::leases_path;

    #[test]
    fn the_lease_store_is_a_sibling_file_of_the_data() {
        assert_eq!(leases_path("/d/r1.db"), "/d/r1.leases.db");
        assert_eq!(leases_path("/d/region"), "/d/region.leases");
    }
}
