//! The FoundationDB backend (cargo feature `fdb`).
//!
//! Owns the translation between the store's seam (`Backend`, `BackendTx`) and
//! the `foundationdb` client crate: one FoundationDB transaction per store
//! transaction, FoundationDB error codes mapped onto `StoreError`, and the
//! process-wide client network thread. It must never re-implement what lives
//! above the seam (limits, the 5 s age, retries, `on_error` backoff) and never
//! report a commit that may have been applied as one that was not.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::options::{ConflictRangeType, MutationType, StreamingMode, TransactionOption};
use foundationdb::{FdbError, KeySelector};
use parking_lot::Mutex;

use crate::backend::{
    Backend, BackendTx, CommitInfo, KeyValue, Mutation, RangeChunk, RangeRequest, TxOptions,
    WatchFuture,
};
use crate::error::{Limit, Result, StoreError};
use crate::limits::{MAX_KEY_BYTES, MAX_TRANSACTION_AGE, MAX_TRANSACTION_BYTES, MAX_VALUE_BYTES};

/// FoundationDB error codes the store gives a meaning of its own.
mod code {
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    pub const NOT_COMMITTED: i32 = 1020;
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    pub const TRANSACTION_CANCELLED: i32 = 1025;
    pub const NO_COMMIT_VERSION: i32 = 2021;
    pub const TRANSACTION_TOO_LARGE: i32 = 2101;
    pub const KEY_TOO_LARGE: i32 = 2102;
    pub const VALUE_TOO_LARGE: i32 = 2103;
}

/// The key a transaction that asked for a versionstamp but wrote nothing adds
/// a write conflict on. FoundationDB treats a transaction with neither
/// mutations nor write conflict ranges as read-only and gives it no commit
/// version, hence no versionstamp; the conflict range makes it commit for real
/// without writing any data. Nothing reads this key, so it conflicts only with
/// range reads that span it.
const VERSIONSTAMP_CONFLICT_KEY: &[u8] = b"\xfe\xffmeridian-store/versionstamp";

/// The client network: started once per process, stopped once at exit.
///
/// The FoundationDB C client allows `select_api_version`, `setup_network` and
/// `run_network` once per process and cannot restart its network after it has
/// been stopped, so the guard `foundationdb::boot` returns belongs to the
/// process, not to any backend: dropping it with the last backend would leave
/// every later `FdbBackend::open` in the process (another test, a reconnect)
/// with a dead client. It is therefore kept in a process-wide `OnceLock` and
/// lives until exit. The client also requires the network to be stopped and
/// its thread joined before the process exits (otherwise the thread races the
/// library's static destructors), and statics are never dropped, so an
/// `atexit` hook does that, as the official Python and Ruby bindings do.
static NETWORK: OnceLock<std::result::Result<Network, String>> = OnceLock::new();

struct Network {
    /// Taken exactly once, by the exit hook.
    guard: Mutex<Option<NetworkAutoStop>>,
}

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn stop_network_at_exit() {
    if let Some(Ok(network)) = NETWORK.get() {
        // Dropping the guard stops the network and joins its thread.
        drop(network.guard.lock().take());
    }
}

fn boot_network() -> std::result::Result<Network, String> {
    let builder = FdbApiBuilder::default()
        .build()
        .map_err(|e| format!("selecting the client API version: {e}"))?;
    // SAFETY: `boot` requires that the returned guard be dropped before the
    // process exits. It is stored in `NETWORK` and dropped by the exit hook
    // registered just below; a process that aborts needs no clean-up.
    let guard =
        unsafe { builder.boot() }.map_err(|e| format!("starting the client network: {e}"))?;
    // SAFETY: registering a plain `extern "C" fn` without arguments is what
    // `atexit` expects; the hook only touches a static.
    if unsafe { atexit(stop_network_at_exit) } != 0 {
        tracing::warn!(
            "could not register the FoundationDB network stop at exit; \
             the process may crash while exiting"
        );
    }
    Ok(Network {
        guard: Mutex::new(Some(guard)),
    })
}

fn ensure_network() -> Result<()> {
    match NETWORK.get_or_init(boot_network) {
        Ok(_) => Ok(()),
        Err(reason) => Err(StoreError::Backend(format!(
            "FoundationDB client unavailable: {reason}"
        ))),
    }
}

/// Sizes a transaction has written so far, used only to describe a limit
/// error FoundationDB reports (the checks themselves happen above the seam).
#[derive(Debug, Default, Clone, Copy)]
struct SizeHint {
    key: usize,
    value: usize,
    total: usize,
}

/// Maps a FoundationDB error onto the store's vocabulary.
fn map_error(e: FdbError, hint: SizeHint) -> StoreError {
    match e.code() {
        code::NOT_COMMITTED => StoreError::NotCommitted,
        code::COMMIT_UNKNOWN_RESULT => StoreError::CommitUnknownResult,
        code::TRANSACTION_TOO_OLD => StoreError::TransactionTooOld {
            limit_ms: MAX_TRANSACTION_AGE.as_millis() as u64,
        },
        code::TRANSACTION_CANCELLED => StoreError::TransactionFinished,
        code::TRANSACTION_TOO_LARGE => StoreError::LimitExceeded {
            limit: Limit::TransactionSize,
            actual: hint.total,
            max: MAX_TRANSACTION_BYTES,
        },
        code::KEY_TOO_LARGE => StoreError::LimitExceeded {
            limit: Limit::KeySize,
            actual: hint.key,
            max: MAX_KEY_BYTES,
        },
        code::VALUE_TOO_LARGE => StoreError::LimitExceeded {
            limit: Limit::ValueSize,
            actual: hint.value,
            max: MAX_VALUE_BYTES,
        },
        // Besides 1021, FoundationDB has other "maybe committed" codes
        // (cluster_version_changed); calling them merely transient would let
        // a retry apply a non-idempotent transaction twice.
        _ if e.is_maybe_committed() => StoreError::CommitUnknownResult,
        _ if e.is_retryable() => StoreError::BackendTransient(describe(e)),
        _ => StoreError::Backend(describe(e)),
    }
}

fn describe(e: FdbError) -> String {
    format!("foundationdb error {}: {}", e.code(), e.message())
}

/// A FoundationDB cluster, reached through its cluster file.
pub struct FdbBackend {
    db: foundationdb::Database,
}

impl std::fmt::Debug for FdbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdbBackend").finish_non_exhaustive()
    }
}

impl FdbBackend {
    /// Connects to the cluster named by `cluster_file`; an empty string means
    /// the client's default cluster file. Starts the process's client network
    /// on first use.
    pub fn open(cluster_file: &str) -> Result<Self> {
        if cluster_file.contains('\0') {
            return Err(StoreError::InvalidUrl {
                url: format!("fdb:{cluster_file}"),
                reason: "the cluster file path contains a NUL byte".to_string(),
            });
        }
        ensure_network()?;
        let path = (!cluster_file.is_empty()).then_some(cluster_file);
        let db =
            foundationdb::Database::new(path).map_err(|e| map_error(e, SizeHint::default()))?;
        Ok(FdbBackend { db })
    }
}

#[async_trait]
impl Backend for FdbBackend {
    async fn begin(&self, options: TxOptions) -> Result<Box<dyn BackendTx>> {
        // `pessimistic` is a hint for single-writer backends; FoundationDB is
        // optimistic only and resolves conflicts at commit.
        let tx = self
            .db
            .create_trx()
            .map_err(|e| map_error(e, SizeHint::default()))?;
        if options.system {
            tx.set_option(TransactionOption::PrioritySystemImmediate)
                .map_err(|e| map_error(e, SizeHint::default()))?;
        }
        Ok(Box::new(FdbTx {
            tx: Mutex::new(Some(tx)),
            wrote: AtomicBool::new(false),
            versionstamp_wanted: AtomicBool::new(false),
            largest_key: AtomicUsize::new(0),
            largest_value: AtomicUsize::new(0),
            written_bytes: AtomicUsize::new(0),
        }))
    }

    fn name(&self) -> &'static str {
        "fdb"
    }
}

/// One FoundationDB transaction. `commit` consumes the client's transaction
/// while the seam hands out `&self`, so it sits in an `Option` that commit
/// takes; `None` means finished.
struct FdbTx {
    tx: Mutex<Option<foundationdb::Transaction>>,
    wrote: AtomicBool,
    versionstamp_wanted: AtomicBool,
    largest_key: AtomicUsize,
    largest_value: AtomicUsize,
    written_bytes: AtomicUsize,
}

impl FdbTx {
    fn hint(&self) -> SizeHint {
        SizeHint {
            key: self.largest_key.load(Ordering::Relaxed),
            value: self.largest_value.load(Ordering::Relaxed),
            total: self.written_bytes.load(Ordering::Relaxed),
        }
    }

    fn note_write(&self, key: usize, value: usize, total: usize) {
        self.wrote.store(true, Ordering::Release);
        self.largest_key.fetch_max(key, Ordering::Relaxed);
        self.largest_value.fetch_max(value, Ordering::Relaxed);
        self.written_bytes.fetch_add(total, Ordering::Relaxed);
    }
}

#[async_trait]
impl BackendTx for FdbTx {
    async fn get(&self, key: &[u8], snapshot: bool) -> Result<Option<Vec<u8>>> {
        // The client's futures own what they need, so the lock is not held
        // across the await.
        let pending = {
            let guard = self.tx.lock();
            let tx = guard.as_ref().ok_or(StoreError::TransactionFinished)?;
            tx.get(key, snapshot)
        };
        let value = pending.await.map_err(|e| {
            map_error(
                e,
                SizeHint {
                    key: key.len(),
                    ..self.hint()
                },
            )
        })?;
        Ok(value.map(|slice| slice.to_vec()))
    }

    async fn get_many(&self, keys: &[Vec<u8>], snapshot: bool) -> Result<Vec<Option<Vec<u8>>>> {
        // Issued together, so the reads overlap on the network.
        let reads = keys.iter().map(|k| self.get(k, snapshot));
        futures::future::try_join_all(reads).await
    }

    async fn get_range(&self, request: &RangeRequest) -> Result<RangeChunk> {
        let option = foundationdb::RangeOption {
            begin: KeySelector::first_greater_or_equal(request.begin.clone()),
            end: KeySelector::first_greater_or_equal(request.end.clone()),
            limit: (request.limit > 0).then_some(request.limit),
            reverse: request.reverse,
            // The seam asks for one batch per call: `Exact` returns up to the
            // limit in one go; without a limit, `WantAll` returns as much as
            // the client finds reasonable for a single round trip.
            mode: if request.limit > 0 {
                StreamingMode::Exact
            } else {
                StreamingMode::WantAll
            },
            ..foundationdb::RangeOption::default()
        };
        let pending = {
            let guard = self.tx.lock();
            let tx = guard.as_ref().ok_or(StoreError::TransactionFinished)?;
            tx.get_range(&option, 1, request.snapshot)
        };
        let values = pending.await.map_err(|e| {
            map_error(
                e,
                SizeHint {
                    key: request.begin.len().max(request.end.len()),
                    ..self.hint()
                },
            )
        })?;
        let kvs = values
            .iter()
            .map(|kv| KeyValue {
                key: kv.key().to_vec(),
                value: kv.value().to_vec(),
            })
            .collect();
        Ok(RangeChunk {
            kvs,
            more: values.more(),
        })
    }

    fn mutate(&self, mutation: Mutation) {
        let guard = self.tx.lock();
        let Some(tx) = guard.as_ref() else {
            // `Transaction` refuses writes after commit before they get here.
            tracing::warn!("write to a finished FoundationDB transaction ignored");
            return;
        };
        // The versionstamp placeholders use FoundationDB's own convention (a
        // 4-byte little-endian offset suffix, API version 520 and later), so
        // templates pass through untouched.
        match &mutation {
            Mutation::Set { key, value } => {
                tx.set(key, value);
                self.note_write(key.len(), value.len(), key.len() + value.len());
            }
            Mutation::Clear { key } => {
                tx.clear(key);
                self.note_write(key.len(), 0, key.len());
            }
            Mutation::ClearRange { begin, end } => {
                tx.clear_range(begin, end);
                self.note_write(begin.len().max(end.len()), 0, begin.len() + end.len());
            }
            Mutation::Add { key, param } => {
                tx.atomic_op(key, param, MutationType::Add);
                self.note_write(key.len(), param.len(), key.len() + param.len());
            }
            Mutation::SetVersionstampedKey { key, value } => {
                tx.atomic_op(key, value, MutationType::SetVersionstampedKey);
                self.versionstamp_wanted.store(true, Ordering::Release);
                self.note_write(key.len(), value.len(), key.len() + value.len());
            }
            Mutation::SetVersionstampedValue { key, value } => {
                tx.atomic_op(key, value, MutationType::SetVersionstampedValue);
                self.versionstamp_wanted.store(true, Ordering::Release);
                self.note_write(key.len(), value.len(), key.len() + value.len());
            }
        }
    }

    fn request_versionstamp(&self) {
        self.versionstamp_wanted.store(true, Ordering::Release);
    }

    fn watch(&self, key: &[u8]) -> WatchFuture {
        let pending = {
            let guard = self.tx.lock();
            match guard.as_ref() {
                Some(tx) => tx.watch(key),
                None => {
                    return Box::pin(futures::future::ready(Err(StoreError::TransactionFinished)));
                }
            }
        };
        // FoundationDB activates the watch at commit and fails it with the
        // commit's error, or with transaction_cancelled (mapped to
        // `TransactionFinished`) when the transaction is dropped uncommitted.
        Box::pin(async move { pending.await.map_err(|e| map_error(e, SizeHint::default())) })
    }

    async fn commit(&self) -> Result<CommitInfo> {
        let tx = self
            .tx
            .lock()
            .take()
            .ok_or(StoreError::TransactionFinished)?;
        let hint = self.hint();
        let wanted = self.versionstamp_wanted.load(Ordering::Acquire);
        if wanted && !self.wrote.load(Ordering::Acquire) {
            let mut end = VERSIONSTAMP_CONFLICT_KEY.to_vec();
            end.push(0);
            tx.add_conflict_range(VERSIONSTAMP_CONFLICT_KEY, &end, ConflictRangeType::Write)
                .map_err(|e| map_error(e, hint))?;
        }
        // The versionstamp future must be taken before commit consumes the
        // transaction; it is ready once the commit succeeds.
        let stamp = tx.get_versionstamp();
        let committed = tx
            .commit()
            .await
            .map_err(|e| map_error(FdbError::from(e), hint))?;
        let versionstamp = match stamp.await {
            Ok(bytes) => match <[u8; 10]>::try_from(&bytes[..]) {
                Ok(stamp) => Some(stamp),
                Err(_) => {
                    tracing::warn!(
                        len = bytes.len(),
                        "FoundationDB versionstamp is not 10 bytes"
                    );
                    None
                }
            },
            // A read-only transaction has no commit version.
            Err(e) if e.code() == code::NO_COMMIT_VERSION => None,
            Err(e) => {
                tracing::warn!(error = %describe(e), "versionstamp of a committed transaction unavailable");
                None
            }
        };
        drop(committed);
        if wanted && versionstamp.is_none() {
            // The writes are applied, but the caller cannot get what it asked
            // for; only "may have been applied" is both true and safe to
            // retry (idempotent callers find their marker).
            return Err(StoreError::CommitUnknownResult);
        }
        Ok(CommitInfo { versionstamp })
    }
}
