//! Nodes' assignment streams: a snapshot or the log after a cursor, then
//! commands as they commit.
//!
//! Owns the cursor format (12-byte versionstamp of the log entry, then the
//! 4-byte big-endian index of the command within it), the registry of open
//! streams in this process ([`Streams`], the write pipeline's command sink:
//! committed commands are pushed to the node's stream at once, no store read
//! in between), and the streams' end conditions: FAILED_PRECONDITION once the
//! node epoch it was opened with is superseded, UNAVAILABLE when this replica
//! stops leading the node's shard or the stream falls behind (the agent
//! resumes from its cursor). An empty cursor starts from a snapshot of the
//! node's bound tasks in memory, followed by a BOOKMARK at the log's head.
//! Must never send a command of another node or an older epoch, or a command
//! twice: everything forwarded is after the last cursor sent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meridian_proto::v1;
use meridian_store::Database;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::Status;

use super::RegionApi;
use crate::error::{RegionalError, Result};
use crate::model::view::scan;
use crate::model::{CommandRecord, Keys, NodeLiveness, decode};
use crate::pipeline::CommandSink;
use crate::shard::Leading;
use crate::state::{RegionState, SharedState, Stamp};

/// Commands a stream may hold unsent before it is cut (the agent then
/// resumes from its cursor, reading the log).
const STREAM_BUFFER: usize = 1_024;

/// How often the pruner looks whether this replica's shard leadership
/// changed (which ends the streams of the shards it lost).
const LEADERSHIP_CHECK_EVERY: Duration = Duration::from_millis(250);

/// How often every stream is checked against memory, changed or not: a
/// repair pass, not the path any change relies on.
const FULL_PRUNE_EVERY: Duration = Duration::from_secs(5);

/// A position in a node's command log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub stamp: [u8; 12],
    pub index: u32,
}

impl Cursor {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.stamp.to_vec();
        v.extend_from_slice(&self.index.to_be_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Option<Cursor> {
        if bytes.len() != 16 {
            return None;
        }
        let mut stamp = [0u8; 12];
        stamp.copy_from_slice(&bytes[..12]);
        let index = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        Some(Cursor { stamp, index })
    }

    /// Whether commands after this cursor may be among those the
    /// compaction cleared (every entry of commits at or before `trim`):
    /// the cursor is in an older commit, or within the trimmed one.
    pub fn before_trim(&self, trim: Stamp) -> bool {
        let commit = &self.stamp[..10];
        commit < &trim[..] || (commit == &trim[..] && self.index != u32::MAX)
    }

    /// Just after every command of the log entry of commit `stamp`.
    pub fn after_entry(stamp: Stamp) -> Cursor {
        Cursor {
            stamp: entry_stamp(stamp),
            index: u32::MAX,
        }
    }
}

/// The 12-byte stamp of the log entry a commit writes (one entry per node
/// per transaction, user version 0).
fn entry_stamp(stamp: Stamp) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[..10].copy_from_slice(&stamp);
    s
}

/// Log entries after `after` (all when `None`), flattened with cursors;
/// what the log still holds when `after` is in its trimmed part.
pub async fn read_log(
    db: &Database,
    keys: &Keys,
    node: &str,
    after: Option<Cursor>,
) -> Result<Vec<(Cursor, CommandRecord)>> {
    Ok(match read_since(db, keys, node, after).await? {
        Since::Entries(e) => e,
        Since::Trimmed(_) => read_since(db, keys, node, None).await?.entries(),
    })
}

/// The log after a cursor, or the news that part of it is gone.
pub enum Since {
    Entries(Vec<(Cursor, CommandRecord)>),
    /// Entries after the cursor may have been cleared by the compaction
    /// (`link::compact`) up to this stamp: only a snapshot can bring the
    /// node up to date.
    Trimmed(Stamp),
}

impl Since {
    fn entries(self) -> Vec<(Cursor, CommandRecord)> {
        match self {
            Since::Entries(e) => e,
            Since::Trimmed(_) => Vec::new(),
        }
    }
}

/// [`read_log`], telling a trimmed cursor apart: one transaction reads the
/// trim mark and the entries, so no clear can fall in between.
pub async fn read_since(
    db: &Database,
    keys: &Keys,
    node: &str,
    after: Option<Cursor>,
) -> Result<Since> {
    db.run(|tx, _| {
        let keys = keys.clone();
        let node = node.to_string();
        async move {
            let (mut begin, end) = keys.commands(&node);
            if let Some(c) = after {
                let trim = tx.get(&keys.command_trim()).await?;
                if let Some(t) = trim.as_deref().and_then(crate::model::feed::stamp_of)
                    && c.before_trim(t)
                {
                    return Ok(Since::Trimmed(t));
                }
                begin = keys.command_at(&node, c.stamp);
            }
            let mut out = Vec::new();
            for (k, v) in scan(&tx, (begin, end), true).await? {
                let Some(stamp) = keys.command_stamp(&k) else {
                    continue;
                };
                let cmds: Vec<CommandRecord> = decode("command", &v)?;
                for (i, c) in cmds.into_iter().enumerate() {
                    let cur = Cursor {
                        stamp,
                        index: i as u32,
                    };
                    if after.is_none_or(|a| cur > a) {
                        out.push((cur, c));
                    }
                }
            }
            Ok::<_, RegionalError>(Since::Entries(out))
        }
    })
    .await
}

/// What the registry hands a stream.
enum Live {
    Commands(Vec<(Cursor, CommandRecord)>),
    /// Read the log again after the last cursor sent.
    Resync,
    /// End the stream with this status.
    End(Status),
}

struct Slot {
    id: u64,
    epoch: u64,
    tx: mpsc::Sender<Live>,
}

/// The assignment streams open in this process, by node.
#[derive(Default)]
pub struct Streams {
    slots: Mutex<BTreeMap<String, Slot>>,
    next: AtomicU64,
}

impl Streams {
    pub fn new() -> Arc<Self> {
        Arc::new(Streams::default())
    }

    fn add(&self, node: &str, epoch: u64) -> (u64, mpsc::Receiver<Live>) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        // A newer stream of the node replaces an older one (its sender is
        // dropped, so the older stream ends).
        self.slots
            .lock()
            .insert(node.to_string(), Slot { id, epoch, tx });
        (id, rx)
    }

    fn remove(&self, node: &str, id: u64) {
        let mut slots = self.slots.lock();
        if slots.get(node).is_some_and(|s| s.id == id) {
            slots.remove(node);
        }
    }

    fn send(&self, node: &str, live: Live) {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(node)
            && slot.tx.try_send(live).is_err()
        {
            // Full or gone: cut it; the agent resumes from its cursor.
            slots.remove(node);
        }
    }

    /// Ends the streams that must not go on: nodes whose epoch moved or who
    /// are down, and nodes of shards this replica no longer leads.
    pub fn prune(&self, state: &RegionState, leading: &BTreeMap<u32, u64>) {
        self.prune_some(state, leading, None);
    }

    /// [`Streams::prune`] of the streams of `only` (all when `None`).
    fn prune_some(
        &self,
        state: &RegionState,
        leading: &BTreeMap<u32, u64>,
        only: Option<&std::collections::BTreeSet<String>>,
    ) {
        let mut ended = Vec::new();
        {
            let slots = self.slots.lock();
            let picked: Box<dyn Iterator<Item = (&String, &Slot)>> = match only {
                Some(nodes) => Box::new(nodes.iter().filter_map(|n| slots.get_key_value(n))),
                None => Box::new(slots.iter()),
            };
            for (node, slot) in picked {
                let entry = state.nodes.get(node);
                let current = entry
                    .and_then(|e| e.record.as_ref())
                    .is_some_and(|r| r.epoch == slot.epoch && r.liveness != NodeLiveness::Down);
                if !current {
                    ended.push((
                        node.clone(),
                        Status::failed_precondition(format!(
                            "node epoch {} of {node} has been superseded: register again",
                            slot.epoch
                        )),
                    ));
                } else if !entry.is_some_and(|e| leading.contains_key(&e.shard)) {
                    ended.push((
                        node.clone(),
                        Status::unavailable("this replica no longer leads the node's shard"),
                    ));
                }
            }
        }
        for (node, status) in ended {
            self.send(&node, Live::End(status));
            self.slots.lock().remove(&node);
        }
    }

    /// Prunes streams whenever memory or leadership changes, until the
    /// state handle goes away.
    pub async fn keep_pruned(
        self: Arc<Self>,
        state: SharedState,
        leading: Leading,
        clock: meridian_control::SharedClock,
    ) {
        let watcher = state.subscribe();
        let mut led = leading.lock().clone();
        let mut next_full = clock.now() + FULL_PRUNE_EVERY;
        loop {
            // Only a node whose epoch or liveness moved can lose its stream
            // on a change. Leadership changes are not state changes: they are
            // looked for every LEADERSHIP_CHECK_EVERY (a few shards, compared
            // whole), and only a change, or the slow repair pass, walks every
            // stream; walking 10,000 streams four times a second cost a large
            // region a fifth of its idle CPU.
            let only = tokio::select! {
                delta = watcher.changed() => {
                    (!delta.reload && !delta.layout).then_some(delta.epochs)
                }
                _ = clock.sleep(LEADERSHIP_CHECK_EVERY) => Some(Default::default()),
            };
            let now_led = leading.lock().clone();
            let full = only.is_none() || now_led != led || clock.now() >= next_full;
            led = now_led;
            if full {
                next_full = clock.now() + FULL_PRUNE_EVERY;
                self.prune_some(&state.read(), &led, None);
            } else if let Some(nodes) = only.filter(|n| !n.is_empty()) {
                self.prune_some(&state.read(), &led, Some(&nodes));
            }
        }
    }
}

impl CommandSink for Streams {
    fn deliver(
        &self,
        _state: &RegionState,
        stamp: Stamp,
        commands: &BTreeMap<String, Vec<CommandRecord>>,
    ) {
        let stamp = entry_stamp(stamp);
        for (node, cmds) in commands {
            let list = cmds
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    (
                        Cursor {
                            stamp,
                            index: i as u32,
                        },
                        c.clone(),
                    )
                })
                .collect();
            self.send(node, Live::Commands(list));
        }
    }

    fn resync(&self, nodes: &BTreeSet<String>) {
        for node in nodes {
            self.send(node, Live::Resync);
        }
    }
}

type Out = mpsc::Sender<std::result::Result<v1::AssignmentCommand, Status>>;

/// Opens the stream of `node` at `epoch` from `cursor`; returns what the
/// gRPC response streams.
pub(super) fn open(
    api: &RegionApi,
    node: String,
    epoch: u64,
    cursor: Option<Cursor>,
) -> mpsc::Receiver<std::result::Result<v1::AssignmentCommand, Status>> {
    let (out, rx) = mpsc::channel(STREAM_BUFFER);
    // Registered before anything is read, so no commit falls in between:
    // what the read already covers is skipped by cursor.
    let (id, live) = api.streams.add(&node, epoch);
    let pump = Pump {
        db: api.db.clone(),
        keys: api.keys.clone(),
        state: api.state.clone(),
        node,
        epoch,
        last: None,
        out,
    };
    let streams = api.streams.clone();
    tokio::spawn(async move {
        let node = pump.node.clone();
        pump.run(cursor, live).await;
        streams.remove(&node, id);
    });
    rx
}

struct Pump {
    db: Database,
    keys: Keys,
    state: SharedState,
    node: String,
    epoch: u64,
    last: Option<Cursor>,
    out: Out,
}

impl Pump {
    async fn run(mut self, cursor: Option<Cursor>, mut live: mpsc::Receiver<Live>) {
        let started = match cursor {
            None => self.snapshot(None).await,
            Some(c) => {
                self.last = Some(c);
                self.resend_log().await
            }
        };
        if !started {
            return;
        }
        loop {
            tokio::select! {
                _ = self.out.closed() => return,
                msg = live.recv() => match msg {
                    Some(Live::Commands(list)) => {
                        if !self.send_all(list).await {
                            return;
                        }
                    }
                    Some(Live::Resync) => {
                        if !self.resend_log().await {
                            return;
                        }
                    }
                    Some(Live::End(status)) => {
                        let _ = self.out.send(Err(status)).await;
                        return;
                    }
                    None => {
                        let _ = self
                            .out
                            .send(Err(Status::unavailable(
                                "the stream fell behind: reopen from the last cursor",
                            )))
                            .await;
                        return;
                    }
                },
            }
        }
    }

    /// The node's live bindings from memory, then a bookmark at the head
    /// of its log, or at `trimmed` when that is later: the node has no
    /// entry between its head and the trim, so a cursor there is exact and
    /// the next resume reads the log instead of taking another snapshot.
    async fn snapshot(&mut self, trimmed: Option<Stamp>) -> bool {
        let (messages, head) = self.bound_now();
        for m in messages {
            if self.out.send(Ok(m)).await.is_err() {
                return false;
            }
        }
        self.bookmark(head.max(trimmed)).await
    }

    /// The RUN (and pending STOP) of every attempt bound to the node under
    /// this stream's epoch, and the node's log head.
    fn bound_now(&self) -> (Vec<v1::AssignmentCommand>, Option<Stamp>) {
        {
            let s = self.state.read();
            let Some(entry) = s.nodes.get(&self.node) else {
                return (Vec::new(), None);
            };
            let mut messages = Vec::new();
            for (task, b) in &entry.bound {
                if b.node_epoch != self.epoch {
                    continue;
                }
                let Some(job) = s.jobs.get(&task.job_id) else {
                    continue;
                };
                let Some(t) = job.task(task.index) else {
                    continue;
                };
                let active = job.record.state == crate::model::JobPhase::Active;
                let run = CommandRecord {
                    kind: v1::CommandKind::Run as i32,
                    job: task.job_id.clone(),
                    index: task.index,
                    attempt: b.attempt,
                    shard: t.shard,
                    shard_epoch: t.shard_epoch,
                    node_epoch: b.node_epoch,
                    reason: String::new(),
                    grace_ms: 0,
                    assignment_epoch: t.assignment_epoch,
                };
                // A job no longer active here (revoked, cancelled) gets no
                // RUN, only the STOP the sweep asked for.
                if active {
                    messages.push(to_wire(&s, None, &run));
                }
                if !t.stopping.is_empty() {
                    let stop = CommandRecord {
                        kind: v1::CommandKind::Stop as i32,
                        reason: t.stopping.clone(),
                        grace_ms: job.record.stop_grace_ms,
                        ..run
                    };
                    messages.push(to_wire(&s, None, &stop));
                }
            }
            (messages, entry.cmd_head)
        }
    }

    async fn bookmark(&mut self, head: Option<Stamp>) -> bool {
        let cursor = head.map(Cursor::after_entry);
        self.last = cursor;
        let bookmark = v1::AssignmentCommand {
            cursor: cursor.map(|c| c.encode()).unwrap_or_default(),
            kind: v1::CommandKind::Bookmark as i32,
            node_epoch: self.epoch,
            ..Default::default()
        };
        self.out.send(Ok(bookmark)).await.is_ok()
    }

    /// The log after the last cursor sent; a snapshot when that part of
    /// the log was trimmed.
    async fn resend_log(&mut self) -> bool {
        match read_since(&self.db, &self.keys, &self.node, self.last).await {
            Ok(Since::Entries(entries)) => self.send_all(entries).await,
            Ok(Since::Trimmed(t)) => {
                crate::metrics::stream_snapshot_after_trim();
                self.snapshot(Some(t)).await
            }
            Err(err) => {
                let _ = self.out.send(Err(err.into())).await;
                false
            }
        }
    }

    /// Sends the commands after the last cursor, of this stream's epoch.
    async fn send_all(&mut self, list: Vec<(Cursor, CommandRecord)>) -> bool {
        let messages: Vec<v1::AssignmentCommand> = {
            let s = self.state.read();
            list.iter()
                .filter(|(cur, _)| self.last.is_none_or(|l| *cur > l))
                .filter(|(_, c)| c.node_epoch == self.epoch)
                .filter(|(_, c)| run_still_wanted(&s, &self.node, c))
                .map(|(cur, c)| to_wire(&s, Some(*cur), c))
                .collect()
        };
        if let Some((cur, _)) = list
            .iter()
            .rev()
            .find(|(cur, _)| self.last.is_none_or(|l| *cur > l))
        {
            self.last = Some(*cur);
        }
        for m in messages {
            if self.out.send(Ok(m)).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Whether a command is still to be sent: any STOP, and a RUN only while
/// its job is active here and its attempt still bound to `node` under the
/// command's epoch. A RUN written before the region's lease ran out can
/// reach its node only after the region got a new lease and caught up
/// with the global tier; if the job was revoked meanwhile (and maybe runs
/// in another region already), memory says so by then, and the RUN is not
/// sent (the sweep's STOP is, and the node answers it as never run).
fn run_still_wanted(s: &RegionState, node: &str, c: &CommandRecord) -> bool {
    if c.kind != v1::CommandKind::Run as i32 {
        return true;
    }
    let active = s
        .jobs
        .get(&c.job)
        .is_some_and(|j| j.record.state == crate::model::JobPhase::Active);
    let bound = s.nodes.get(node).is_some_and(|n| {
        n.bound
            .get(&crate::placement::TaskRef::new(c.job.clone(), c.index))
            .is_some_and(|b| {
                b.attempt == c.attempt
                    && b.node_epoch == c.node_epoch
                    && b.assignment_epoch == c.assignment_epoch
            })
    });
    active && bound
}

/// Turns a stored command into the wire message, with the job's template
/// for a RUN (from memory; a job already retired goes without one).
fn to_wire(s: &RegionState, cursor: Option<Cursor>, c: &CommandRecord) -> v1::AssignmentCommand {
    let kind = v1::CommandKind::try_from(c.kind).unwrap_or(v1::CommandKind::Unspecified);
    let mut msg = v1::AssignmentCommand {
        cursor: cursor.map(|c| c.encode()).unwrap_or_default(),
        kind: c.kind,
        task: Some(v1::TaskAttempt {
            task: Some(v1::TaskId {
                job_id: c.job.clone(),
                index: c.index,
            }),
            assignment_epoch: c.assignment_epoch,
            attempt: c.attempt,
        }),
        shard_id: c.shard,
        shard_epoch: c.shard_epoch,
        node_epoch: c.node_epoch,
        reason: c.reason.clone(),
        stop_grace_period_ms: c.grace_ms,
        ..Default::default()
    };
    if kind == v1::CommandKind::Run
        && let Some(job) = s.jobs.get(&c.job)
    {
        msg.trace_id = job.record.trace_id.clone();
        if let Some(spec) = &job.spec {
            msg.template = spec.task.clone();
            msg.resources = spec.resources.clone();
            msg.on_region_loss = spec.on_region_loss;
            msg.priority = spec.priority;
            if msg.stop_grace_period_ms == 0 {
                msg.stop_grace_period_ms = spec.stop_grace_period_ms;
            }
        }
    }
    msg
}
