//! The records one group transaction read, and the changes its intents make.
//!
//! Owns the typed view a group transaction decides on: what was read from
//! the store (in one batched read), and per intent a layer of changes on top
//! of it ([`Tx`]), merged into the group's view only when the intent
//! succeeds, so an intent that is refused halfway leaves nothing behind.
//! Must never let an intent read a record the group did not read from the
//! store: a decision on a record not read would escape the transaction's
//! conflict checks. Such a read is a [`Missing`] error, not a default.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{CommandRecord, JobRecord, NodeRecord, Res, TaskBlock, TaskRecord};

/// What a group must read before its intents decide.
#[derive(Debug, Clone, Default)]
pub struct ReadSet {
    pub nodes: BTreeSet<String>,
    pub jobs: BTreeSet<String>,
    pub specs: BTreeSet<String>,
    pub blocks: BTreeSet<(String, u32)>,
    pub raw: BTreeSet<Vec<u8>>,
}

impl ReadSet {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.jobs.is_empty()
            && self.specs.is_empty()
            && self.blocks.is_empty()
            && self.raw.is_empty()
    }

    /// Drops what `read` already holds.
    pub fn without(mut self, read: &Overlay) -> Self {
        self.nodes.retain(|k| !read.nodes.contains_key(k));
        self.jobs.retain(|k| !read.jobs.contains_key(k));
        self.specs.retain(|k| !read.specs.contains_key(k));
        self.blocks.retain(|k| !read.blocks.contains_key(k));
        self.raw.retain(|k| !read.raw.contains_key(k));
        self
    }
}

/// An intent used a record its group never read: a bug in the intent's
/// read set, refused rather than decided on a guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("internal: {0} was not read in this transaction")]
pub struct Missing(pub String);

/// The group's view: values read, then the accepted intents' changes.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub nodes: BTreeMap<String, Option<NodeRecord>>,
    pub jobs: BTreeMap<String, Option<JobRecord>>,
    /// Job specs in the wire encoding.
    pub specs: BTreeMap<String, Option<Vec<u8>>>,
    pub blocks: BTreeMap<(String, u32), Option<TaskBlock>>,
    pub raw: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// What the accepted intents changed, to write.
    pub changes: Changes,
}

/// Writes decided by intents.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub nodes: BTreeMap<String, NodeRecord>,
    pub jobs: BTreeMap<String, JobRecord>,
    pub specs: BTreeMap<String, Vec<u8>>,
    pub blocks: BTreeMap<(String, u32), TaskBlock>,
    /// Blocks deleted (a job held again with fewer tasks than before).
    pub cleared_blocks: BTreeSet<(String, u32)>,
    /// Jobs removed with their spec, blocks and status (retired).
    pub removed: BTreeSet<String>,
    /// Other keys: `Some` sets, `None` clears.
    pub raw: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Commands for agents, per node, in order.
    pub commands: BTreeMap<String, Vec<CommandRecord>>,
    /// Bindings committed (the region's counter).
    pub bound: i64,
    /// Per node, what the accepted bindings take, and what the preemption
    /// victims they stop give back: what later binding intents of the same
    /// group must count on top of the committed allocation.
    pub taken: BTreeMap<String, Res>,
    pub freed: BTreeMap<String, Res>,
    /// The link state changed.
    pub link: Option<crate::link::LinkState>,
}

impl Changes {
    fn absorb(&mut self, other: Changes) {
        for job in &other.removed {
            self.jobs.remove(job);
            self.specs.remove(job);
            self.blocks.retain(|(j, _), _| j != job);
        }
        self.removed.extend(other.removed);
        self.nodes.extend(other.nodes);
        self.jobs.extend(other.jobs);
        self.specs.extend(other.specs);
        for key in &other.cleared_blocks {
            self.blocks.remove(key);
        }
        for key in other.blocks.keys() {
            self.cleared_blocks.remove(key);
        }
        self.cleared_blocks.extend(other.cleared_blocks);
        self.blocks.extend(other.blocks);
        self.raw.extend(other.raw);
        for (node, cmds) in other.commands {
            self.commands.entry(node).or_default().extend(cmds);
        }
        self.bound += other.bound;
        for (node, res) in other.taken {
            self.taken.entry(node).or_default().add(&res);
        }
        for (node, res) in other.freed {
            self.freed.entry(node).or_default().add(&res);
        }
        if other.link.is_some() {
            self.link = other.link;
        }
    }
}

/// One intent's window on the group: reads fall through its own changes to
/// the group's view; changes stay its own until [`Tx::accept`].
pub struct Tx<'a> {
    base: &'a Overlay,
    mine: Changes,
}

impl<'a> Tx<'a> {
    pub fn new(base: &'a Overlay) -> Self {
        Tx {
            base,
            mine: Changes::default(),
        }
    }

    /// The changes, for the group to merge.
    pub fn accept(self) -> Changes {
        self.mine
    }

    fn gone(&self, job: &str) -> bool {
        self.mine.removed.contains(job) || self.base.changes.removed.contains(job)
    }

    /// The node as this intent sees it, borrowed (no copy per decision).
    pub fn node(&self, id: &str) -> Result<Option<&NodeRecord>, Missing> {
        if let Some(n) = self
            .mine
            .nodes
            .get(id)
            .or_else(|| self.base.changes.nodes.get(id))
        {
            return Ok(Some(n));
        }
        self.base
            .nodes
            .get(id)
            .map(Option::as_ref)
            .ok_or_else(|| Missing(format!("node {id}")))
    }

    pub fn set_node(&mut self, node: NodeRecord) {
        self.mine.nodes.insert(node.node_id.clone(), node);
    }

    /// The job as this intent sees it, borrowed.
    pub fn job(&self, id: &str) -> Result<Option<&JobRecord>, Missing> {
        if self.gone(id) {
            return Ok(None);
        }
        if let Some(j) = self
            .mine
            .jobs
            .get(id)
            .or_else(|| self.base.changes.jobs.get(id))
        {
            return Ok(Some(j));
        }
        self.base
            .jobs
            .get(id)
            .map(Option::as_ref)
            .ok_or_else(|| Missing(format!("job {id}")))
    }

    pub fn set_job(&mut self, job: JobRecord) {
        self.mine.removed.remove(&job.job_id);
        self.mine.jobs.insert(job.job_id.clone(), job);
    }

    pub fn set_spec(&mut self, job: &str, spec: Vec<u8>) {
        self.mine.specs.insert(job.to_string(), spec);
    }

    /// Removes a job with its spec, task blocks and status bookkeeping.
    pub fn remove_job(&mut self, job: &str) {
        self.mine.jobs.remove(job);
        self.mine.specs.remove(job);
        self.mine.blocks.retain(|(j, _), _| j != job);
        self.mine.removed.insert(job.to_string());
    }

    /// A task block as this intent sees it, borrowed.
    pub fn block(&self, job: &str, block: u32) -> Result<Option<&TaskBlock>, Missing> {
        if self.gone(job) {
            return Ok(None);
        }
        let key = (job.to_string(), block);
        if let Some(b) = self.mine.blocks.get(&key) {
            return Ok(Some(b));
        }
        if self.mine.cleared_blocks.contains(&key) {
            return Ok(None);
        }
        self.base_block(&key)
    }

    /// The block as the group sees it, before this intent's changes.
    fn base_block(&self, key: &(String, u32)) -> Result<Option<&TaskBlock>, Missing> {
        if let Some(b) = self.base.changes.blocks.get(key) {
            return Ok(Some(b));
        }
        if self.base.changes.cleared_blocks.contains(key) {
            return Ok(None);
        }
        self.base
            .blocks
            .get(key)
            .map(Option::as_ref)
            .ok_or_else(|| Missing(format!("block {} of job {}", key.1, key.0)))
    }

    /// A task block to change in place: copied into this intent's layer on
    /// its first change only, so an intent that changes many tasks of one
    /// block copies it once, and writes it once.
    pub fn block_mut(&mut self, job: &str, block: u32) -> Result<Option<&mut TaskBlock>, Missing> {
        if self.gone(job) {
            return Ok(None);
        }
        let key = (job.to_string(), block);
        if !self.mine.blocks.contains_key(&key) {
            if self.mine.cleared_blocks.contains(&key) {
                return Ok(None);
            }
            let Some(copy) = self.base_block(&key)?.cloned() else {
                return Ok(None);
            };
            self.mine.blocks.insert(key.clone(), copy);
        }
        Ok(self.mine.blocks.get_mut(&key))
    }

    /// Task `index` of `job` as this intent sees it.
    pub fn task(&self, job: &str, index: u32) -> Result<Option<&TaskRecord>, Missing> {
        Ok(self
            .block(job, index / crate::model::TASK_BLOCK)?
            .and_then(|b| b.tasks.get((index - b.first) as usize)))
    }

    /// Task `index` of `job` to change: its block is copied into this
    /// intent's layer on the first change (see [`Tx::block_mut`]). Check
    /// with [`Tx::task`] first where the change may not happen, so a refusal
    /// copies nothing.
    pub fn task_mut(&mut self, job: &str, index: u32) -> Result<Option<&mut TaskRecord>, Missing> {
        Ok(self
            .block_mut(job, index / crate::model::TASK_BLOCK)?
            .and_then(|b| b.tasks.get_mut((index - b.first) as usize)))
    }

    pub fn set_block(&mut self, job: &str, block: TaskBlock) {
        let n = block.first / crate::model::TASK_BLOCK;
        self.mine.cleared_blocks.remove(&(job.to_string(), n));
        self.mine.blocks.insert((job.to_string(), n), block);
    }

    /// Deletes block `block` of `job`.
    pub fn clear_block(&mut self, job: &str, block: u32) {
        let key = (job.to_string(), block);
        self.mine.blocks.remove(&key);
        self.mine.cleared_blocks.insert(key);
    }

    pub fn raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Missing> {
        if let Some(v) = self
            .mine
            .raw
            .get(key)
            .or_else(|| self.base.changes.raw.get(key))
        {
            return Ok(v.clone());
        }
        self.base
            .raw
            .get(key)
            .cloned()
            .ok_or_else(|| Missing(format!("key {key:?}")))
    }

    pub fn set_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.mine.raw.insert(key, Some(value));
    }

    pub fn clear_raw(&mut self, key: Vec<u8>) {
        self.mine.raw.insert(key, None);
    }

    pub fn command(&mut self, node: &str, command: CommandRecord) {
        self.mine
            .commands
            .entry(node.to_string())
            .or_default()
            .push(command);
    }

    pub fn count_bound(&mut self, n: i64) {
        self.mine.bound += n;
    }

    /// What bindings of the group (accepted intents', and this one's) took
    /// on `node`, and what the victims they stop there give back.
    pub fn room(&self, node: &str) -> (Res, Res) {
        let sum = |a: &BTreeMap<String, Res>, b: &BTreeMap<String, Res>| {
            let mut r = a.get(node).cloned().unwrap_or_default();
            if let Some(more) = b.get(node) {
                r.add(more);
            }
            r
        };
        (
            sum(&self.base.changes.taken, &self.mine.taken),
            sum(&self.base.changes.freed, &self.mine.freed),
        )
    }

    /// A binding takes `taken` on `node`, its victims there give back `freed`.
    pub fn use_room(&mut self, node: &str, taken: &Res, freed: &Res) {
        self.mine
            .taken
            .entry(node.to_string())
            .or_default()
            .add(taken);
        self.mine
            .freed
            .entry(node.to_string())
            .or_default()
            .add(freed);
    }

    pub fn set_link(&mut self, state: crate::link::LinkState) {
        self.mine.link = Some(state);
    }
}

impl Overlay {
    /// Merges an accepted intent's changes into the group's view.
    pub fn absorb(&mut self, changes: Changes) {
        self.changes.absorb(changes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskRecord;

    fn block(state: i32) -> TaskBlock {
        let mut t = TaskRecord::new_pending();
        t.state = state;
        TaskBlock {
            first: 0,
            tasks: vec![t],
        }
    }

    #[test]
    fn a_refused_intent_leaves_nothing_and_an_accepted_one_is_seen_by_the_next() {
        let mut overlay = Overlay::default();
        overlay.blocks.insert(("j".into(), 0), Some(block(1)));
        {
            let mut tx = Tx::new(&overlay);
            tx.block_mut("j", 0).expect("read").expect("some").tasks[0].state = 2;
            assert_eq!(
                tx.block("j", 0).expect("read").expect("some").tasks[0].state,
                2
            );
            assert_eq!(
                overlay.blocks[&("j".to_string(), 0)]
                    .as_ref()
                    .expect("some")
                    .tasks[0]
                    .state,
                1,
                "a change stays in the intent's layer"
            );
            // Dropped without accept: refused.
        }
        let mut tx = Tx::new(&overlay);
        assert_eq!(
            tx.block("j", 0).expect("read").expect("some").tasks[0].state,
            1
        );
        tx.set_block("j", block(3));
        let accepted = tx.accept();
        overlay.absorb(accepted);
        let tx = Tx::new(&overlay);
        assert_eq!(
            tx.block("j", 0).expect("read").expect("some").tasks[0].state,
            3
        );
        assert_eq!(
            tx.block("other", 0),
            Err(Missing("block 0 of job other".into())),
            "a record the group never read is an error, not a guess"
        );
    }

    #[test]
    fn a_removed_job_reads_as_absent_with_its_blocks() {
        let mut overlay = Overlay::default();
        overlay.blocks.insert(("j".into(), 0), Some(block(1)));
        overlay.jobs.insert("j".into(), None);
        let mut tx = Tx::new(&overlay);
        tx.remove_job("j");
        overlay.absorb(tx.accept());
        let tx = Tx::new(&overlay);
        assert_eq!(tx.block("j", 0), Ok(None));
        let mut tx = Tx::new(&overlay);
        assert_eq!(
            tx.block_mut("j", 0),
            Ok(None),
            "nothing to change in a removed job"
        );
        assert_eq!(tx.job("j"), Ok(None::<&JobRecord>));
    }
}
