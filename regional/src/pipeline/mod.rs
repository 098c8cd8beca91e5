//! The write pipeline: every change a replica makes to its region, grouped.
//!
//! Owns the one path by which a replica writes the records it keeps in
//! memory. Callers (placement, agent reports and registrations, liveness,
//! the intake, the reporter, operators) submit an [`Intent`] and await its
//! own [`Outcome`]; a single committer takes whatever is queued, reads every
//! record the group needs in one batched read, lets each intent decide and
//! change a private layer on top of it (an intent that is refused leaves
//! nothing behind), checks each intent's fence (and layout generation)
//! against the lease records read in the same transaction, writes the
//! accepted changes with one change-feed entry, and commits once. After the
//! commit it applies what it read and wrote to memory at the commit's stamp,
//! hands the RUN and STOP commands to the open agent streams, and answers.
//!
//! So a store operation never costs a caller its own round trip, every write
//! is checked against the store (not memory) in the transaction that makes
//! it, and memory is current with this process's writes before any caller
//! hears of them. Must never answer before the group's commit is known, and
//! never commit an intent whose fence failed.

pub mod bind;
pub mod intake;
pub mod node;
pub mod overlay;
pub mod report;
pub mod retry;
pub mod sweep;
pub mod upward;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meridian_control::lease::Fence;
use meridian_proto::v1;
use meridian_store::{Database, MaybeCommitted, Retryable, Transaction};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::error::{RegionalError, Result};
use crate::jobs::Applied;
use crate::model::feed::{Change, FeedEntry};
use crate::model::{CommandBatch, CommandRecord, Keys, Layout, NodeRecord, decode, encode};
use crate::state::{RegionState, SharedState, Stamp};
use overlay::{Missing, Overlay, ReadSet, Tx};

/// Most intents committed in one transaction.
const MAX_GROUP: usize = 1_024;
/// And at most about this many bytes of writes (far below the store's
/// 10 MB transaction limit).
const MAX_GROUP_BYTES: usize = 4 << 20;

/// A change to make.
#[derive(Debug, Clone)]
pub enum Intent {
    Bind(bind::Bind),
    Report(report::Report),
    Register(node::Register),
    Liveness(node::Liveness),
    Cordon(node::SetCordon),
    Sweep(sweep::SweepTasks),
    Intake(intake::Intake),
    SetLink(upward::SetLink),
    Status(upward::RecordStatus),
    Release(upward::Release),
    Handoff(upward::Handoff),
    Explain(upward::Explain),
}

/// What an intent did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Bound(bind::BatchOutcome),
    Reported(report::ReportOutcome),
    /// The node after a registration or cordon; `None`: unknown node.
    /// Boxed: a node record is several times larger than any other outcome.
    Node(Option<Box<NodeRecord>>),
    Liveness(Vec<node::LivenessChange>),
    Swept(sweep::SweepDone),
    Intake(Vec<Applied>),
    Retired(u64),
    Moved(Vec<String>),
    Done,
}

/// The authority an intent writes under: a lease's fence, and for shard
/// intents the layout generation their decisions were made under.
#[derive(Debug, Clone)]
pub struct Authority {
    pub fence: Fence,
    pub generation: Option<u64>,
}

/// Where committed commands go: the agent streams open in this process.
pub trait CommandSink: Send + Sync + 'static {
    /// Commands of one commit, per node, appended to the logs at `stamp`.
    fn deliver(
        &self,
        state: &RegionState,
        stamp: Stamp,
        commands: &BTreeMap<String, Vec<CommandRecord>>,
    );
    /// These nodes' logs may hold entries no stream was handed (a commit
    /// whose outcome was unknown): streams read their logs again.
    fn resync(&self, nodes: &BTreeSet<String>);
}

/// A sink that drops commands (a replica that serves no agents).
pub struct NoStreams;

impl CommandSink for NoStreams {
    fn deliver(&self, _: &RegionState, _: Stamp, _: &BTreeMap<String, Vec<CommandRecord>>) {}
    fn resync(&self, _: &BTreeSet<String>) {}
}

struct Queued {
    authority: Option<Authority>,
    intent: Intent,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// A handle to submit intents. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Pipeline {
    /// Starts the committer of one replica.
    pub fn start(
        db: Database,
        keys: Keys,
        state: SharedState,
        writer: String,
        sink: Arc<dyn CommandSink>,
    ) -> Pipeline {
        let (queue, rx) = mpsc::unbounded_channel();
        let committer = Committer {
            db,
            keys,
            state,
            writer,
            sink,
        };
        tokio::spawn(committer.run(rx));
        Pipeline { queue }
    }

    /// Submits `intent` and waits for its outcome.
    pub async fn submit(&self, authority: Option<Authority>, intent: Intent) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued {
                authority,
                intent,
                reply,
            })
            .map_err(|_| RegionalError::Internal("the write pipeline has stopped".into()))?;
        answer
            .await
            .map_err(|_| RegionalError::Internal("the write pipeline dropped an intent".into()))?
    }
}

/// An agent's registration or report whose caller stopped waiting (its call
/// timed out or was cancelled): the agent still holds it and sends it again,
/// so committing it now would only lengthen the queue in front of the retry.
/// Counted, never silently: a queue full of these is a region too slow for
/// its agents' deadlines.
fn abandoned(q: &Queued) -> bool {
    let gone = matches!(q.intent, Intent::Register(_) | Intent::Report(_)) && q.reply.is_closed();
    if gone {
        crate::metrics::pipeline_abandoned();
    }
    gone
}

struct Committer {
    db: Database,
    keys: Keys,
    state: SharedState,
    writer: String,
    sink: Arc<dyn CommandSink>,
}

/// What an intent takes from memory before the transaction.
enum Prepared {
    None,
    Bind(bind::Prepared),
    Intake(intake::Prepared),
}

impl Committer {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Queued>) {
        while let Some(first) = rx.recv().await {
            if abandoned(&first) {
                continue;
            }
            let mut weight = weight(&first.intent);
            let mut group = vec![first];
            while group.len() < MAX_GROUP && weight < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(q) if abandoned(&q) => {}
                    Ok(q) => {
                        weight += self::weight(&q.intent);
                        group.push(q);
                    }
                    Err(_) => break,
                }
            }
            self.commit(group).await;
        }
    }

    /// Commits a group; if the store refuses it for good, each intent is
    /// tried alone so that one bad intent does not sink the others.
    async fn commit(&self, group: Vec<Queued>) {
        crate::metrics::pipeline_group(group.len());
        let result = self.attempt(&group).await;
        match result {
            Err(err) if group.len() > 1 && !err.is_retryable() => {
                for q in group {
                    Box::pin(self.commit(vec![q])).await;
                }
            }
            Err(err) => {
                for q in group {
                    let _ = q.reply.send(Err(err.clone()));
                }
            }
            Ok(outcomes) => {
                for (q, outcome) in group.into_iter().zip(outcomes) {
                    let _ = q.reply.send(outcome);
                }
            }
        }
    }

    async fn attempt(&self, group: &[Queued]) -> Result<Vec<Result<Outcome>>> {
        let prepared: Vec<Prepared> = {
            let state = self.state.read();
            group
                .iter()
                .map(|q| match &q.intent {
                    Intent::Bind(b) => Prepared::Bind(b.prepare(&state)),
                    Intent::Intake(i) => Prepared::Intake(i.prepare(&state)),
                    _ => Prepared::None,
                })
                .collect()
        };
        let mut uncertain = false;
        let started = std::time::Instant::now();
        let ((outcomes, mut overlay), info) = self
            .db
            .run_locked_with_info(|tx, maybe: MaybeCommitted| {
                uncertain |= maybe.0;
                let prepared = &prepared;
                async move { self.decide(&tx, group, prepared).await }
            })
            .await?;
        crate::metrics::pipeline_commit(started.elapsed());
        let stamp = info.versionstamp.unwrap_or([0; 10]);
        let commands = std::mem::take(&mut overlay.changes.commands);
        self.state
            .update(|s, delta| apply_to_state(s, overlay, &commands, stamp, delta));
        if !commands.is_empty() {
            let state = self.state.read();
            self.sink.deliver(&state, stamp, &commands);
        }
        if uncertain {
            // An earlier attempt may have committed commands no stream saw.
            let nodes: BTreeSet<String> = group
                .iter()
                .filter_map(|q| match &q.intent {
                    Intent::Bind(b) => Some(b.bindings.iter().map(|x| x.node.clone())),
                    _ => None,
                })
                .flatten()
                .collect();
            self.sink.resync(&nodes);
        }
        for (q, outcome) in group.iter().zip(&outcomes) {
            if let (Some(a), Intent::Bind(_)) = (&q.authority, &q.intent) {
                meridian_control::lease::observe::fenced_write(&a.fence, outcome.is_ok());
            }
        }
        Ok(outcomes)
    }

    /// One attempt of the group's transaction: read, decide, write.
    async fn decide(
        &self,
        tx: &Transaction,
        group: &[Queued],
        prepared: &[Prepared],
    ) -> Result<(Vec<Result<Outcome>>, Overlay)> {
        let mut want = ReadSet::default();
        for q in group {
            if let Some(a) = &q.authority {
                want.raw.insert(a.fence.key().to_vec());
                if a.generation.is_some() {
                    want.raw.insert(self.keys.layout());
                }
            }
            reads(&q.intent, &self.keys, &mut want);
        }
        let mut overlay = Overlay::default();
        read_into(tx, &self.keys, want, &mut overlay).await?;
        let mut more = ReadSet::default();
        for q in group {
            more_reads(&q.intent, &overlay, &mut more);
        }
        let more = more.without(&overlay);
        if !more.is_empty() {
            read_into(tx, &self.keys, more, &mut overlay).await?;
        }
        let layout: Option<Layout> = match overlay.raw.get(&self.keys.layout()) {
            Some(Some(b)) => Some(decode("layout", b)?),
            _ => None,
        };
        let mut outcomes = Vec::with_capacity(group.len());
        for (q, prep) in group.iter().zip(prepared) {
            let outcome = match check_authority(q, &overlay, layout) {
                Err(e) => Err(e),
                Ok(()) => {
                    let mut t = Tx::new(&overlay);
                    let epoch = q.authority.as_ref().map_or(0, |a| a.fence.epoch());
                    match self.apply(&q.intent, &mut t, prep, epoch, layout) {
                        Ok(out) => {
                            let changes = t.accept();
                            overlay.absorb(changes);
                            Ok(out)
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            outcomes.push(outcome);
        }
        write(tx, &self.keys, &overlay, &self.writer)?;
        Ok((outcomes, overlay))
    }

    fn apply(
        &self,
        intent: &Intent,
        t: &mut Tx<'_>,
        prep: &Prepared,
        epoch: u64,
        layout: Option<Layout>,
    ) -> Result<Outcome> {
        let missing = |m: Missing| RegionalError::Internal(m.to_string());
        Ok(match (intent, prep) {
            (Intent::Bind(b), Prepared::Bind(p)) => {
                Outcome::Bound(b.apply(t, p, epoch).map_err(missing)?)
            }
            (Intent::Report(r), _) => Outcome::Reported(r.apply(t, &self.keys).map_err(missing)?),
            (Intent::Register(r), _) => Outcome::Node(Some(Box::new(r.apply(t).map_err(missing)?))),
            (Intent::Liveness(l), _) => Outcome::Liveness(l.apply(t).map_err(missing)?),
            (Intent::Cordon(c), _) => Outcome::Node(c.apply(t).map_err(missing)?.map(Box::new)),
            (Intent::Sweep(s), _) => Outcome::Swept(s.apply(t, epoch).map_err(missing)?),
            (Intent::Intake(i), Prepared::Intake(p)) => {
                Outcome::Intake(i.apply(t, &self.keys, p).map_err(missing)??)
            }
            (Intent::SetLink(l), _) => {
                l.apply(t);
                Outcome::Done
            }
            (Intent::Status(s), _) => Outcome::Retired(s.apply(t, &self.keys).map_err(missing)?),
            (Intent::Release(r), _) => {
                r.apply(t).map_err(missing)?;
                Outcome::Done
            }
            (Intent::Handoff(h), _) => {
                let count = layout.map_or(1, |l| l.count);
                Outcome::Moved(h.apply(t, count).map_err(missing)?)
            }
            (Intent::Explain(e), _) => {
                e.apply(t, layout.map_or(1, |l| l.count)).map_err(missing)?;
                Outcome::Done
            }
            _ => return Err(RegionalError::Internal("intent prepared wrongly".into())),
        })
    }
}

/// The fence and layout generation of an intent, against the records read
/// in this very transaction.
fn check_authority(q: &Queued, overlay: &Overlay, layout: Option<Layout>) -> Result<()> {
    let Some(a) = &q.authority else {
        return Ok(());
    };
    let skip = matches!(q.intent, Intent::Bind(_)) && bind_fence_disabled();
    if !skip {
        let stored = overlay.raw.get(a.fence.key()).cloned().flatten();
        a.fence.verify(stored.as_deref())?;
    }
    if let Some(expected) = a.generation {
        let found = layout.map_or(0, |l| l.generation);
        if found != expected {
            return Err(RegionalError::Resharded { expected, found });
        }
    }
    Ok(())
}

fn weight(intent: &Intent) -> usize {
    match intent {
        Intent::Bind(b) => b.weight(),
        Intent::Report(r) => r.weight(),
        Intent::Sweep(s) => s.weight(),
        Intent::Intake(i) => i.weight(),
        Intent::Status(s) => s.weight(),
        _ => 200,
    }
}

fn reads(intent: &Intent, keys: &Keys, want: &mut ReadSet) {
    match intent {
        Intent::Bind(b) => b.reads(want),
        Intent::Report(r) => r.reads(want),
        Intent::Register(r) => r.reads(want),
        Intent::Liveness(l) => l.reads(want),
        Intent::Cordon(c) => c.reads(want),
        Intent::Sweep(s) => s.reads(want),
        Intent::Intake(i) => i.reads(keys, want),
        Intent::SetLink(_) => {}
        Intent::Status(s) => s.reads(want),
        Intent::Release(r) => r.reads(want),
        Intent::Handoff(h) => h.reads(want),
        Intent::Explain(e) => e.reads(want),
    }
}

fn more_reads(intent: &Intent, read: &Overlay, want: &mut ReadSet) {
    match intent {
        Intent::Intake(i) => i.more_reads(read, want),
        Intent::Status(s) => s.more_reads(read, want),
        _ => {}
    }
}

/// Reads `want` in one batched read into `overlay`.
async fn read_into(
    tx: &Transaction,
    keys: &Keys,
    want: ReadSet,
    overlay: &mut Overlay,
) -> Result<()> {
    let mut all = Vec::new();
    all.extend(want.nodes.iter().map(|n| keys.node(n)));
    all.extend(want.jobs.iter().map(|j| keys.job(j)));
    all.extend(want.specs.iter().map(|j| keys.job_spec(j)));
    all.extend(want.blocks.iter().map(|(j, n)| keys.task_block(j, *n)));
    all.extend(want.raw.iter().cloned());
    let mut values = tx.get_many(&all).await?.into_iter();
    for n in want.nodes {
        let v = values
            .next()
            .flatten()
            .map(|b| decode("node", &b))
            .transpose()?;
        overlay.nodes.insert(n, v);
    }
    for j in want.jobs {
        let v = values
            .next()
            .flatten()
            .map(|b| decode("job", &b))
            .transpose()?;
        overlay.jobs.insert(j, v);
    }
    for j in want.specs {
        overlay.specs.insert(j, values.next().flatten());
    }
    for (j, n) in want.blocks {
        let v = values
            .next()
            .flatten()
            .map(|b| decode("task block", &b))
            .transpose()?;
        overlay.blocks.insert((j, n), v);
    }
    for k in want.raw {
        overlay.raw.insert(k, values.next().flatten());
    }
    Ok(())
}

/// Writes the group's accepted changes and its feed entry.
fn write(tx: &Transaction, keys: &Keys, overlay: &Overlay, writer: &str) -> Result<()> {
    let c = &overlay.changes;
    let mut feed = FeedEntry::new();
    for job in &c.removed {
        let (begin, end) = keys.task_blocks(job);
        tx.clear_range(&begin, &end)?;
        tx.clear(&keys.job(job))?;
        tx.clear(&keys.job_spec(job))?;
        feed.add(Change::job(job));
    }
    for (job, n) in &c.cleared_blocks {
        tx.clear(&keys.task_block(job, *n))?;
        feed.add(Change::block(job, *n));
    }
    for (id, node) in &c.nodes {
        tx.set(&keys.node(id), &encode(node))?;
        feed.add(Change::node(id));
    }
    for (id, job) in &c.jobs {
        tx.set(&keys.job(id), &encode(job))?;
        feed.add(Change::job(id));
    }
    for (id, spec) in &c.specs {
        tx.set(&keys.job_spec(id), spec)?;
    }
    for ((job, n), block) in &c.blocks {
        tx.set(&keys.task_block(job, *n), &encode(block))?;
        if !c.jobs.contains_key(job) {
            feed.add(Change::block(job, *n));
        }
    }
    for (k, v) in &c.raw {
        match v {
            Some(v) => tx.set(k, v)?,
            None => tx.clear(k)?,
        }
    }
    if !c.commands.is_empty() {
        let mut batch = CommandBatch::new();
        for (node, cmds) in &c.commands {
            for cmd in cmds {
                batch.push(node, cmd.clone());
            }
            feed.add(Change::commands(node));
        }
        batch.write(tx, keys)?;
    }
    if c.bound != 0 {
        tx.add_i64(&keys.bound_counter(), c.bound)?;
    }
    if let Some(link) = &c.link {
        tx.set(&keys.link_state(), &encode(link))?;
        feed.add(Change::link());
    }
    // Every group asks for its stamp: memory labels what it applies with it.
    tx.request_versionstamp();
    feed.write(tx, keys, writer)?;
    Ok(())
}

/// Applies what a committed group read and wrote to memory, at its stamp.
/// Takes the group's records by value: what it read and wrote moves into
/// memory without a copy.
fn apply_to_state(
    s: &mut RegionState,
    overlay: Overlay,
    commands: &BTreeMap<String, Vec<CommandRecord>>,
    stamp: Stamp,
    delta: &mut crate::state::Delta,
) {
    let Overlay {
        nodes,
        jobs,
        specs,
        blocks,
        raw: _,
        changes: c,
    } = overlay;
    // Values read (and not changed) were current at the commit.
    for (id, v) in jobs {
        if c.jobs.contains_key(&id) || c.removed.contains(&id) {
            continue;
        }
        // A job new to memory needs its tasks too; without its blocks it
        // would look like a job with nothing to place, and the stamp would
        // make the tailer skip the feed entry that names it. Such a job is
        // left to the tailer (a retried intake reads an earlier attempt's
        // job, not its blocks).
        if !s.jobs.contains_key(&id) && !has_every_block(&blocks, &id, v.as_ref()) {
            continue;
        }
        let spec = spec_of(&specs, &id);
        s.put_job(&id, v.map(|r| (r, spec)), stamp, delta);
    }
    for (id, v) in nodes {
        if !c.nodes.contains_key(&id) {
            s.put_node(&id, v, stamp, delta);
        }
    }
    for (key, v) in blocks {
        if !c.blocks.contains_key(&key) && !c.cleared_blocks.contains(&key) {
            s.put_block(&key.0, key.1, v, stamp, delta);
        }
    }
    // Then the changes.
    for job in &c.removed {
        s.put_job(job, None, stamp, delta);
    }
    for (id, job) in c.jobs {
        let spec = c
            .specs
            .get(&id)
            .and_then(|b| v1::JobSpec::decode(b.as_slice()).ok())
            .map(Arc::new)
            .or_else(|| spec_of(&specs, &id));
        s.put_job(&id, Some((job, spec)), stamp, delta);
    }
    for (job, n) in &c.cleared_blocks {
        s.put_block(job, *n, None, stamp, delta);
    }
    for ((job, n), block) in c.blocks {
        s.put_block(&job, n, Some(block), stamp, delta);
    }
    for (id, node) in c.nodes {
        s.put_node(&id, Some(node), stamp, delta);
    }
    for node in commands.keys() {
        s.put_cmd_head(node, stamp);
    }
    if let Some(link) = c.link {
        s.put_link(Some(link), stamp, delta);
    }
}

/// Whether the group read every task block of `job` (trivially so for a
/// job that is not there).
fn has_every_block(
    blocks: &BTreeMap<(String, u32), Option<crate::model::TaskBlock>>,
    job: &str,
    record: Option<&crate::model::JobRecord>,
) -> bool {
    record.is_none_or(|r| {
        (0..r.task_count.div_ceil(crate::model::TASK_BLOCK))
            .all(|n| blocks.contains_key(&(job.to_string(), n)))
    })
}

fn spec_of(specs: &BTreeMap<String, Option<Vec<u8>>>, job: &str) -> Option<Arc<v1::JobSpec>> {
    specs
        .get(job)
        .and_then(Option::as_ref)
        .and_then(|b| v1::JobSpec::decode(b.as_slice()).ok())
        .map(Arc::new)
}

/// Test-only switch: while on (on the calling thread), binding intents skip
/// their shard fence check, so a deposed leader's batch can commit. It
/// exists to prove that the simulation's checker catches exactly that.
#[cfg(feature = "unfenced-writes-for-tests")]
pub mod unfenced_for_tests {
    use std::cell::Cell;

    thread_local! {
        static ON: Cell<bool> = const { Cell::new(false) };
    }

    /// Turns the bug on or off for this thread.
    pub fn set(on: bool) {
        ON.with(|c| c.set(on));
    }

    pub(super) fn on() -> bool {
        ON.with(Cell::get)
    }
}

fn bind_fence_disabled() -> bool {
    #[cfg(feature = "unfenced-writes-for-tests")]
    {
        unfenced_for_tests::on()
    }
    #[cfg(not(feature = "unfenced-writes-for-tests"))]
    {
        false
    }
}
