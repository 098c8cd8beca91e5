//! Following the change feed: other processes' writes into this memory.
//!
//! Owns the replica's feed cursor. Woken by a watch on the feed head, it
//! reads the entries after its cursor, skips every change its memory already
//! reflects (its own commits, applied by the pipeline at their stamps), reads
//! the named records of the rest again in a couple of batched reads of one
//! transaction, and applies them at their entries' stamps. A cursor older
//! than the feed's trim point means entries were lost to it: the replica
//! loads afresh. Must never apply a value under a stamp older than the entry
//! that named it, and never move the cursor past an entry it has not applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::SharedClock;
use meridian_proto::v1;
use meridian_store::{Database, RangeOption, Transaction};
use prost::Message;
use tokio::sync::watch;

use super::{Delta, SharedState, Stamp};
use crate::error::{RegionalError, Result};
use crate::link::LinkState;
use crate::model::feed::{Change, Changed, decode_entry, stamp_of};
use crate::model::view::read_layout;
use crate::model::{JobRecord, Keys, NodeRecord, TASK_BLOCK, TaskBlock, decode};

/// Entries read per catch-up step.
const ENTRIES_PER_STEP: usize = 2_000;

/// The feed follower of one replica.
#[derive(Clone)]
pub struct Tailer {
    db: Database,
    keys: Keys,
    state: SharedState,
    clock: SharedClock,
}

/// What one catch-up found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caught {
    /// Entries read.
    pub entries: usize,
    /// Records read again and applied.
    pub applied: usize,
    /// The state was loaded afresh (the cursor had fallen behind the trim).
    pub reloaded: bool,
}

impl Tailer {
    pub fn new(db: Database, keys: Keys, state: SharedState, clock: SharedClock) -> Self {
        Tailer {
            db,
            keys,
            state,
            clock,
        }
    }

    /// Follows the feed until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            // Arm the wake-up before reading, so no entry is missed.
            let wake = self
                .db
                .run(|tx, _| {
                    let head = self.keys.feed_head();
                    async move { tx.watch(&head) }
                })
                .await;
            let caught = self.catch_up().await;
            let pause = match (&caught, &wake) {
                (Ok(_), Ok(_)) => {
                    failures = 0;
                    None
                }
                (Err(e), _) => Some(e.to_string()),
                (_, Err(e)) => Some(e.to_string()),
            };
            if let Some(why) = pause {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %why, "following the change feed failed; retrying");
                let wait = Duration::from_millis(50u64 << failures.min(5));
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = self.clock.sleep(wait) => {}
                }
                continue;
            }
            let Ok(wake) = wake else { continue };
            tokio::select! {
                _ = stop.changed() => return,
                _ = wake => {}
            }
        }
    }

    /// Applies every entry committed so far. A shard leader calls it once
    /// its term begins, so it decides on everything its predecessor wrote.
    pub async fn catch_up(&self) -> Result<Caught> {
        let mut total = Caught::default();
        loop {
            let (step, more) = self.step().await?;
            total.entries += step.entries;
            total.applied += step.applied;
            total.reloaded |= step.reloaded;
            if step.reloaded || !more {
                return Ok(total);
            }
        }
    }

    /// One page of the feed; also whether the page was full (more entries
    /// may follow).
    async fn step(&self) -> Result<(Caught, bool)> {
        let cursor = self.state.read().cursor;
        let read = self
            .db
            .run(|tx, _| {
                let keys = self.keys.clone();
                let state = self.state.clone();
                async move { read_step(&tx, &keys, &state, cursor).await }
            })
            .await?;
        match read {
            Step::Reload => {
                tracing::warn!("the feed was trimmed past this replica's cursor: loading afresh");
                let fresh = super::load::load(&self.db, &self.keys).await?;
                self.state.replace(fresh);
                Ok((
                    Caught {
                        reloaded: true,
                        ..Caught::default()
                    },
                    false,
                ))
            }
            Step::Read {
                entries,
                page_full,
                last,
                values,
            } => {
                let applied = values.len();
                self.state.update(|s, delta| {
                    for (change, (stamp, value)) in values {
                        apply(s, &change, stamp, value, delta);
                    }
                    if let Some(last) = last {
                        s.advance_cursor(last);
                    }
                });
                Ok((
                    Caught {
                        entries,
                        applied,
                        reloaded: false,
                    },
                    page_full,
                ))
            }
        }
    }
}

/// A record as read again for a change.
enum Value {
    Node(Option<Box<NodeRecord>>),
    Job(
        Box<Option<(JobRecord, Option<v1::JobSpec>)>>,
        Vec<(u32, Option<TaskBlock>)>,
    ),
    Block(Option<TaskBlock>),
    Commands(Option<Stamp>),
    Layout(Option<crate::model::Layout>),
    Link(Option<LinkState>),
}

enum Step {
    Reload,
    Read {
        entries: usize,
        /// The read filled its page: more entries may follow.
        page_full: bool,
        last: Option<Stamp>,
        values: BTreeMap<Change, (Stamp, Value)>,
    },
}

async fn read_step(
    tx: &Transaction,
    keys: &Keys,
    state: &SharedState,
    cursor: Stamp,
) -> Result<Step> {
    // The read starts at the cursor's own transaction. While its entries
    // are still in the feed nothing after them was trimmed (a trim clears a
    // prefix of the feed and records its cut in one transaction), so the
    // trim record is read only when they are gone: one round trip per step
    // instead of two.
    let (_, end) = keys.feed();
    let mut kvs = tx
        .get_range(RangeOption::new(keys.feed_at(cursor), end).limit(ENTRIES_PER_STEP))
        .await?;
    let mut page_full = kvs.len() == ENTRIES_PER_STEP;
    let anchored = kvs
        .iter()
        .take_while(|kv| keys.feed_stamp(&kv.key).is_some_and(|(s, _)| s == cursor))
        .count();
    if anchored == 0 || anchored == kvs.len() {
        // The cursor's entries are gone (or fill the whole page): judge by
        // the trim record, and read what follows the cursor.
        let trimmed = tx
            .get(&keys.feed_trim())
            .await?
            .as_deref()
            .and_then(stamp_of);
        if trimmed.is_some_and(|t| t > cursor) {
            return Ok(Step::Reload);
        }
        if anchored > 0 {
            kvs = tx
                .get_range(RangeOption::from(keys.feed_after(cursor)).limit(ENTRIES_PER_STEP))
                .await?;
            page_full = kvs.len() == ENTRIES_PER_STEP;
        }
    } else {
        kvs.drain(..anchored);
    }
    let mut last = None;
    // Each change once, at the newest stamp that named it.
    let mut wanted: BTreeMap<Change, Stamp> = BTreeMap::new();
    for kv in &kvs {
        let Some((stamp, _)) = keys.feed_stamp(&kv.key) else {
            continue;
        };
        last = Some(stamp);
        for change in decode_entry(&kv.value)? {
            let at = wanted.entry(change).or_insert(stamp);
            *at = (*at).max(stamp);
        }
    }
    {
        let s = state.read();
        wanted.retain(|c, stamp| !reflected(&s, c, *stamp));
    }
    let values = read_values(tx, keys, wanted).await?;
    Ok(Step::Read {
        entries: kvs.len(),
        page_full,
        last,
        values,
    })
}

/// Whether memory already holds a value at least as new as `stamp`.
fn reflected(s: &super::RegionState, c: &Change, stamp: Stamp) -> bool {
    match c.kind {
        Changed::Node => s
            .nodes
            .get(&c.id)
            .is_some_and(|n| n.record.is_some() && n.label >= stamp),
        Changed::Commands => s
            .nodes
            .get(&c.id)
            .and_then(|n| n.cmd_head)
            .is_some_and(|h| h >= stamp),
        Changed::Job => s.jobs.get(&c.id).map_or_else(
            || s.removed.get(&c.id).is_some_and(|at| *at >= stamp),
            |j| j.label >= stamp,
        ),
        Changed::Block => s
            .jobs
            .get(&c.id)
            .and_then(|j| j.blocks.get(&c.block))
            .is_some_and(|b| b.label >= stamp),
        Changed::Layout => s.layout_label >= stamp && s.layout.is_some(),
        Changed::Link => s.link_label >= stamp && s.link.is_some(),
    }
}

fn key_of(keys: &Keys, c: &Change) -> Vec<Vec<u8>> {
    match c.kind {
        Changed::Node => vec![keys.node(&c.id)],
        Changed::Commands => vec![keys.command_head(&c.id)],
        Changed::Job => vec![keys.job(&c.id), keys.job_spec(&c.id)],
        Changed::Block => vec![keys.task_block(&c.id, c.block)],
        Changed::Layout => vec![keys.layout()],
        Changed::Link => vec![keys.link_state()],
    }
}

async fn read_values(
    tx: &Transaction,
    keys: &Keys,
    wanted: BTreeMap<Change, Stamp>,
) -> Result<BTreeMap<Change, (Stamp, Value)>> {
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let changes: Vec<(Change, Stamp)> = wanted.into_iter().collect();
    let mut all_keys = Vec::new();
    for (c, _) in &changes {
        all_keys.extend(key_of(keys, c));
    }
    let mut values = tx.get_many_snapshot(&all_keys).await?.into_iter();
    let mut jobs_blocks: Vec<(usize, String, u32)> = Vec::new();
    let mut read: Vec<(Change, Stamp, Value)> = Vec::with_capacity(changes.len());
    for (c, stamp) in changes {
        let value = match c.kind {
            Changed::Node => Value::Node(
                values
                    .next()
                    .flatten()
                    .map(|b| decode("node", &b).map(Box::new))
                    .transpose()?,
            ),
            Changed::Commands => {
                Value::Commands(values.next().flatten().and_then(|b| stamp_of(&b)))
            }
            Changed::Job => {
                let record = values.next().flatten();
                let spec = values.next().flatten();
                match record {
                    Some(b) => {
                        let (job, spec) = decode_job(&b, spec)?;
                        jobs_blocks.push((read.len(), c.id.clone(), job.task_count));
                        Value::Job(Box::new(Some((job, spec))), Vec::new())
                    }
                    None => Value::Job(Box::new(None), Vec::new()),
                }
            }
            Changed::Block => Value::Block(
                values
                    .next()
                    .flatten()
                    .map(|b| decode("task block", &b))
                    .transpose()?,
            ),
            Changed::Layout => {
                values.next();
                Value::Layout(read_layout(tx, keys).await?)
            }
            Changed::Link => Value::Link(
                values
                    .next()
                    .flatten()
                    .map(|b| decode::<LinkState>("link state", &b))
                    .transpose()?,
            ),
        };
        read.push((c, stamp, value));
    }
    // The blocks of whole-job changes, in one more read.
    read_job_blocks(tx, keys, &jobs_blocks, &mut read).await?;
    for (c, stamp, value) in read {
        out.insert(c, (stamp, value));
    }
    Ok(out)
}

/// A job's record and spec, decoded.
fn decode_job(record: &[u8], spec: Option<Vec<u8>>) -> Result<(JobRecord, Option<v1::JobSpec>)> {
    let job: JobRecord = decode("job", record)?;
    let spec = spec
        .map(|s| v1::JobSpec::decode(s.as_slice()))
        .transpose()
        .map_err(|e| {
            RegionalError::Corrupt(crate::model::Corrupt {
                what: "job spec",
                detail: e.to_string(),
            })
        })?;
    Ok((job, spec))
}

/// Reads the task blocks of each job in `jobs` (the entry of `read` it
/// belongs to, its id, its task count) into that entry.
async fn read_job_blocks(
    tx: &Transaction,
    keys: &Keys,
    jobs: &[(usize, String, u32)],
    read: &mut [(Change, Stamp, Value)],
) -> Result<()> {
    let mut block_keys = Vec::new();
    let mut wanted_blocks: Vec<(usize, u32)> = Vec::new();
    for (at, job, tasks) in jobs {
        for n in 0..tasks.div_ceil(TASK_BLOCK) {
            block_keys.push(keys.task_block(job, n));
            wanted_blocks.push((*at, n));
        }
    }
    let blocks = tx.get_many_snapshot(&block_keys).await?;
    for ((at, n), b) in wanted_blocks.into_iter().zip(blocks) {
        let block = b
            .map(|b| decode::<TaskBlock>("task block", &b))
            .transpose()?;
        if let Some((_, _, Value::Job(_, list))) = read.get_mut(at) {
            list.push((n, block));
        }
    }
    Ok(())
}

fn apply(s: &mut super::RegionState, c: &Change, stamp: Stamp, value: Value, delta: &mut Delta) {
    match value {
        Value::Node(record) => s.put_node(&c.id, record.map(|r| *r), stamp, delta),
        Value::Commands(Some(head)) => s.put_cmd_head(&c.id, head),
        Value::Commands(None) => {}
        Value::Job(job, blocks) => {
            let present = job.is_some();
            s.put_job(
                &c.id,
                (*job).map(|(r, spec)| (r, spec.map(Arc::new))),
                stamp,
                delta,
            );
            if present {
                for (n, block) in blocks {
                    s.put_block(&c.id, n, block, stamp, delta);
                }
            }
        }
        Value::Block(block) => s.put_block(&c.id, c.block, block, stamp, delta),
        Value::Layout(layout) => s.put_layout(layout, stamp, delta),
        Value::Link(link) => s.put_link(link, stamp, delta),
    }
}
