//! Group commit: transactions that only write share one SQLite transaction.
//!
//! Owns the commit queue of one database in one process. A transaction that
//! never read (its commit is the first time it touches SQLite) joins the
//! queue; whoever holds the committer lock takes everything queued and
//! commits it as one SQLite transaction in one round trip to the blocking
//! pool, each transaction inside its own savepoint so one failure does not
//! sink the others. While a batch is in flight, new commits queue up for the
//! next one, so under concurrency the round-trip cost (two thread wake-ups,
//! as much as a small SQLite commit) and SQLite's commit cost are paid once
//! per batch, the way FoundationDB's commit proxies batch. It also serializes
//! this process's blind writers before SQLite's write lock, so they never meet
//! SQLite's sleeping busy handler.
//!
//! Versionstamps: a batch takes one commit version; transactions in it are
//! told apart by the two batch-order bytes, in commit order.
//!
//! Must never: let a transaction see another's writes half-applied, report
//! success for writes that were rolled back, or reorder transactions of one
//! caller.

use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::exec::{self, Work};
use super::{Shared, apply, map_err};
use crate::backend::Mutation;
use crate::error::{Result, StoreError};

/// Largest number of transactions committed together; bounds the latency a
/// batch adds to its first member.
const MAX_BATCH: usize = 1_024;

/// What a committed transaction learns: its versionstamp (if it asked for
/// one) and the values of the keys it watches, as of its commit.
pub(crate) type Committed = (Option<[u8; 10]>, Vec<Option<Vec<u8>>>);

/// One transaction waiting in the queue.
pub(crate) struct Entry {
    pub(crate) mutations: Vec<Mutation>,
    pub(crate) need_stamp: bool,
    pub(crate) watch_keys: Vec<Vec<u8>>,
    done: Option<oneshot::Sender<Result<Committed>>>,
}

impl Entry {
    pub(crate) fn new(
        mutations: Vec<Mutation>,
        need_stamp: bool,
        watch_keys: Vec<Vec<u8>>,
    ) -> Self {
        Entry {
            mutations,
            need_stamp,
            watch_keys,
            done: None,
        }
    }
}

#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Vec<Entry>>,
    committer: Arc<tokio::sync::Mutex<()>>,
}

impl GroupCommit {
    /// Commits `entry`, alone or with whatever else is queued.
    pub(crate) async fn commit(shared: &Arc<Shared>, mut entry: Entry) -> Result<Committed> {
        let (sender, mut receiver) = oneshot::channel();
        entry.done = Some(sender);
        shared.group.queue.lock().push(entry);
        loop {
            let turn = shared.group.committer.clone().lock_owned().await;
            // A batch run by an earlier lock holder may have carried ours.
            match receiver.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Backend(
                        "group commit dropped a transaction".into(),
                    ));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<Entry> = {
                let mut queue = shared.group.queue.lock();
                let take = queue.len().min(MAX_BATCH);
                queue.drain(..take).collect()
            };
            if batch.is_empty() {
                continue;
            }
            // The batch carries other callers' transactions: it runs on its
            // own task, so dropping this caller's future (a timeout, a lost
            // `select!`) cannot drop theirs half-way.
            let shared = shared.clone();
            let _ = tokio::spawn(async move {
                run_batch(&shared, batch).await;
                drop(turn);
            })
            .await;
        }
    }
}

async fn run_batch(shared: &Arc<Shared>, mut batch: Vec<Entry>) {
    let senders: Vec<_> = batch.iter_mut().filter_map(|e| e.done.take()).collect();
    // Connection first, then the write turn: whoever holds the turn already
    // has a connection, so waiters for the turn cannot starve it of one.
    let ready = match shared.pool.acquire(false).await {
        Ok(conn) => shared.gate.enter(false).await.map(|turn| (conn, turn)),
        Err(err) => Err(err),
    };
    let (conn, turn) = match ready {
        Ok(ready) => ready,
        Err(err) => {
            for sender in senders {
                let _ = sender.send(Err(err.clone()));
            }
            return;
        }
    };
    let mut touched = super::watch::Touched::default();
    for e in &batch {
        touched.add_all(&e.mutations);
    }
    let (conn, outcome) = exec::execute(conn, Batch { entries: batch }).await;
    drop(conn);
    drop(turn);
    match outcome {
        Ok(results) => {
            shared.watches.poke(touched);
            for (sender, result) in senders.into_iter().zip(results) {
                let _ = sender.send(result);
            }
        }
        Err(err) => {
            for sender in senders {
                let _ = sender.send(Err(err.clone()));
            }
        }
    }
}

struct Batch {
    entries: Vec<Entry>,
}

impl Work for Batch {
    type Output = Vec<Result<Committed>>;
    const KIND: &'static str = "group_commit";

    fn run(&mut self, c: &Connection) -> Result<Self::Output> {
        exec_sql(c, "BEGIN IMMEDIATE")?;
        let outcome = self.apply_all(c).and_then(|results| {
            exec_sql(c, "COMMIT")?;
            Ok(results)
        });
        if outcome.is_err() && !c.is_autocommit() {
            let _ = c.execute_batch("ROLLBACK");
        }
        outcome
    }
}

impl Batch {
    fn apply_all(&self, c: &Connection) -> Result<Vec<Result<Committed>>> {
        let stamp_base = if self.entries.iter().any(|e| e.need_stamp) {
            Some(apply::next_versionstamp(c)?)
        } else {
            None
        };
        let mut results = Vec::with_capacity(self.entries.len());
        for (order, entry) in self.entries.iter().enumerate() {
            let stamp = match (entry.need_stamp, stamp_base) {
                (true, Some(mut stamp)) => {
                    // `order` < MAX_BATCH, which fits the two batch-order bytes.
                    stamp[8..].copy_from_slice(&(order as u16).to_be_bytes());
                    Some(stamp)
                }
                _ => None,
            };
            exec_sql(c, "SAVEPOINT entry")?;
            let applied = apply_entry(c, entry, stamp.as_ref());
            match applied {
                Ok(values) => {
                    exec_sql(c, "RELEASE entry")?;
                    results.push(Ok((stamp, values)));
                }
                Err(err) => {
                    exec_sql(c, "ROLLBACK TO entry")?;
                    exec_sql(c, "RELEASE entry")?;
                    results.push(Err(err));
                }
            }
        }
        Ok(results)
    }
}

fn apply_entry(
    c: &Connection,
    entry: &Entry,
    stamp: Option<&[u8; 10]>,
) -> Result<Vec<Option<Vec<u8>>>> {
    let held = apply::apply(c, &entry.mutations, stamp)?;
    if !held.is_empty() {
        return Err(StoreError::Backend(
            "versionstamped write without a commit versionstamp".into(),
        ));
    }
    entry.watch_keys.iter().map(|k| apply::get(c, k)).collect()
}

fn exec_sql(c: &Connection, sql: &str) -> Result<()> {
    c.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(|_| ())
        .map_err(map_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::{SqliteBackend, SqliteOptions};

    fn set(key: &str) -> Mutation {
        Mutation::Set {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_transaction_in_a_batch_does_not_sink_the_others() {
        let backend = SqliteBackend::open_ephemeral(SqliteOptions::default())
            .await
            .expect("store");
        let shared = backend.shared.clone();
        let mut tasks = Vec::new();
        for i in 0..32 {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let entry = if i == 7 {
                    // A template whose placeholder lies outside it: refused
                    // while its batch is applied.
                    let mut bad = b"bad-key-template".to_vec();
                    bad.extend_from_slice(&100u32.to_le_bytes());
                    let mutations = vec![
                        set("bad-first"),
                        Mutation::SetVersionstampedKey {
                            key: bad,
                            value: vec![],
                        },
                    ];
                    Entry::new(mutations, true, vec![])
                } else {
                    Entry::new(vec![set(&format!("good-{i:02}"))], false, vec![])
                };
                (i, GroupCommit::commit(&shared, entry).await)
            }));
        }
        for task in tasks {
            let (i, result) = task.await.expect("task");
            assert_eq!(result.is_err(), i == 7, "transaction {i}: {result:?}");
        }
        let tx = crate::sqlite::tx::SqliteTx::new(shared.clone(), Default::default());
        use crate::backend::{BackendTx, RangeRequest};
        let all = tx
            .get_range(&RangeRequest {
                begin: b"".to_vec(),
                end: b"\xff".to_vec(),
                limit: 0,
                reverse: false,
                snapshot: false,
            })
            .await
            .expect("range");
        let keys: Vec<String> = all
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        assert_eq!(keys.len(), 31, "{keys:?}");
        assert!(
            !keys.iter().any(|k| k.starts_with("bad")),
            "half of the failed transaction stayed: {keys:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactions_committed_together_get_distinct_increasing_versionstamps() {
        let backend = SqliteBackend::open_ephemeral(SqliteOptions::default())
            .await
            .expect("store");
        let shared = backend.shared.clone();
        let mut tasks = Vec::new();
        for i in 0..64 {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                GroupCommit::commit(
                    &shared,
                    Entry::new(vec![set(&format!("k{i}"))], true, vec![]),
                )
                .await
            }));
        }
        let mut stamps = Vec::new();
        for task in tasks {
            let (stamp, _) = task.await.expect("task").expect("commit");
            stamps.push(stamp.expect("a stamp was asked for"));
        }
        let distinct: std::collections::BTreeSet<_> = stamps.iter().collect();
        assert_eq!(distinct.len(), stamps.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_committer_giving_up_midway_does_not_fail_the_others_in_its_batch() {
        let backend = SqliteBackend::open_ephemeral(SqliteOptions::default())
            .await
            .expect("store");
        let shared = backend.shared.clone();
        // Hold the committer lock so both transactions queue up, and the
        // write turn so the batch stops inside `run_batch`.
        let committer = shared.group.committer.clone().lock_owned().await;
        let write_turn = shared.gate.enter(false).await.expect("turn");
        let spawn = |key: &'static str| {
            let shared = shared.clone();
            tokio::spawn(async move {
                GroupCommit::commit(&shared, Entry::new(vec![set(key)], false, vec![])).await
            })
        };
        let first = spawn("first");
        while shared.group.queue.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let second = spawn("second");
        while shared.group.queue.lock().len() < 2 {
            tokio::task::yield_now().await;
        }
        // The first waiter becomes the committer and takes both.
        drop(committer);
        while !shared.group.queue.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        first.abort();
        assert!(first.await.expect_err("aborted").is_cancelled());
        drop(write_turn);
        second
            .await
            .expect("task")
            .expect("the other member of the batch commits");
    }
}
