//! The region store's key layout: one [`Subspace`] per region, one tuple
//! prefix per kind of record.
//!
//! Owns every key the regional tier writes (see docs/regional.md, "Key
//! layout"). Must never be bypassed: no other module builds a key by hand, so
//! the layout can be read in one place.

use meridian_store::Subspace;
use meridian_store::tuple::{self, Versionstamp};

/// Size of a task block: the tasks of one job are stored `TASK_BLOCK` to a
/// record, so one write updates many tasks and a record stays far below the
/// 100 KB value limit.
pub const TASK_BLOCK: u32 = 256;

/// Keys of one region.
#[derive(Debug, Clone)]
pub struct Keys {
    root: Subspace,
}

impl Keys {
    /// The keys of region `region`.
    pub fn new(region: &str) -> Self {
        Keys {
            root: Subspace::from_bytes(tuple::pack(&("meridian", "region", region))),
        }
    }

    /// `(count, generation)` of the shard layout.
    pub fn layout(&self) -> Vec<u8> {
        self.root.pack(&("layout",))
    }

    /// Lease of shard `shard` (one key per shard id, whatever the count, so
    /// the epoch of a shard id only grows across re-sharding).
    pub fn shard_lease(&self, shard: u32) -> Vec<u8> {
        self.root.pack(&("shard_lease", shard))
    }

    /// The fence of shard `shard`'s current term, published here, beside
    /// the data, when its lease is kept in a store of its own.
    pub fn shard_fence(&self, shard: u32) -> Vec<u8> {
        self.root.pack(&("shard_fence", shard))
    }

    /// Lease of the link to the global tier.
    pub fn link_lease(&self) -> Vec<u8> {
        self.root.pack(&("link_lease",))
    }

    /// The fence of the link's current term (see [`Keys::shard_fence`]).
    pub fn link_fence(&self) -> Vec<u8> {
        self.root.pack(&("link_fence",))
    }

    /// Persisted cursor of the global assignment stream.
    pub fn link_cursor(&self) -> Vec<u8> {
        self.root.pack(&("link", "cursor"))
    }

    /// Region lease state obtained from the global tier (for agents).
    pub fn link_state(&self) -> Vec<u8> {
        self.root.pack(&("link", "state"))
    }

    /// Presence record of a scheduler replica.
    pub fn replica(&self, name: &str) -> Vec<u8> {
        self.root.pack(&("replica", name))
    }

    /// Range of every replica presence record.
    pub fn replicas(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("replica",)).range()
    }

    /// Node record.
    pub fn node(&self, node: &str) -> Vec<u8> {
        self.root.pack(&("node", node))
    }

    /// Range of every node record.
    pub fn nodes(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("node",)).range()
    }

    /// The node id of a key from [`Keys::nodes`].
    pub fn node_id_of(&self, key: &[u8]) -> Option<String> {
        self.root
            .unpack::<(String, String)>(key)
            .ok()
            .map(|(_, id)| id)
    }

    /// Job record.
    pub fn job(&self, job: &str) -> Vec<u8> {
        self.root.pack(&("job", job))
    }

    /// Range of every job record.
    pub fn jobs(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("job",)).range()
    }

    /// A job's spec in the wire encoding.
    pub fn job_spec(&self, job: &str) -> Vec<u8> {
        self.root.pack(&("jobspec", job))
    }

    /// Range of every job spec.
    pub fn job_specs(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("jobspec",)).range()
    }

    /// Block `block` of a job's task records.
    pub fn task_block(&self, job: &str, block: u32) -> Vec<u8> {
        self.root.pack(&("tasks", job, block))
    }

    /// Range of a job's task blocks.
    pub fn task_blocks(&self, job: &str) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("tasks", job)).range()
    }

    /// Range of every task block of every job.
    pub fn all_task_blocks(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("tasks",)).range()
    }

    /// `(job, block)` of a key from [`Keys::all_task_blocks`].
    pub fn block_of(&self, key: &[u8]) -> Option<(String, u32)> {
        self.root
            .unpack::<(String, String, u32)>(key)
            .ok()
            .map(|(_, job, block)| (job, block))
    }

    /// The id in a key of the form `(kind, id)` (jobs, specs, command heads).
    pub fn second_of(&self, key: &[u8]) -> Option<String> {
        self.root
            .unpack::<(String, String)>(key)
            .ok()
            .map(|(_, id)| id)
    }

    /// Template of a versionstamped command-log key of a node, with
    /// `user_version` ordering the entries of one transaction.
    pub fn command_template(&self, node: &str, user_version: u16) -> Vec<u8> {
        self.root
            .pack_with_versionstamp(&("cmd", node, Versionstamp::incomplete(user_version)))
    }

    /// Range of a node's command log.
    pub fn commands(&self, node: &str) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("cmd", node)).range()
    }

    /// Key of the command-log entry at `stamp` (12 bytes) of a node.
    pub fn command_at(&self, node: &str, stamp: [u8; 12]) -> Vec<u8> {
        self.root.pack(&("cmd", node, Versionstamp::from(stamp)))
    }

    /// The stamp of a command-log key.
    pub fn command_stamp(&self, key: &[u8]) -> Option<[u8; 12]> {
        self.root
            .unpack::<(String, String, Versionstamp)>(key)
            .ok()
            .map(|(_, _, v)| *v.as_bytes())
    }

    /// Range of a node's command-log entries of commits at or before
    /// `stamp` (every command of those entries).
    pub fn commands_through(&self, node: &str, stamp: [u8; 10]) -> (Vec<u8>, Vec<u8>) {
        let mut last = [0xffu8; 12];
        last[..10].copy_from_slice(&stamp);
        let mut end = self.command_at(node, last);
        // Just past the last entry of that commit.
        end.push(0);
        (self.commands(node).0, end)
    }

    /// How far the command logs have been trimmed: a node's entries of
    /// commits at or before this stamp may be gone, so a stream resuming
    /// from an older cursor starts from a snapshot instead (set before the
    /// first entry is cleared).
    pub fn command_trim(&self) -> Vec<u8> {
        self.root.pack(&("cmdtrim",))
    }

    /// Where the last complete trim of the command logs stopped (set after
    /// its last entry was cleared): the next trim skips nodes whose head is
    /// not past it.
    pub fn command_trim_done(&self) -> Vec<u8> {
        self.root.pack(&("cmdtrimdone",))
    }

    /// Head of a node's command log: set to the stamp of every entry
    /// appended (watched by the node's assignment stream).
    pub fn command_head(&self, node: &str) -> Vec<u8> {
        self.root.pack(&("cmdhead", node))
    }

    /// Template of a versionstamped change-feed key: one entry per
    /// transaction that changed cached records, `part` ordering the entries
    /// of one transaction (an entry holds at most about 90 KB of changes).
    pub fn feed_template(&self, part: u16) -> Vec<u8> {
        self.root
            .pack_with_versionstamp(&("feed", Versionstamp::incomplete(part)))
    }

    /// Range of the whole change feed.
    pub fn feed(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("feed",)).range()
    }

    /// Range of the feed entries of transactions committed after `stamp`.
    pub fn feed_after(&self, stamp: [u8; 10]) -> (Vec<u8>, Vec<u8>) {
        let mut last = [0xffu8; 12];
        last[..10].copy_from_slice(&stamp);
        let mut begin = self.root.pack(&("feed", Versionstamp::from(last)));
        // Just past every part of the transaction at `stamp`.
        begin.push(0);
        (begin, self.feed().1)
    }

    /// First key of the feed entries of the transaction committed at
    /// `stamp` (its part 0).
    pub fn feed_at(&self, stamp: [u8; 10]) -> Vec<u8> {
        let mut first = [0u8; 12];
        first[..10].copy_from_slice(&stamp);
        self.root.pack(&("feed", Versionstamp::from(first)))
    }

    /// The commit stamp and part of a feed key.
    pub fn feed_stamp(&self, key: &[u8]) -> Option<([u8; 10], u16)> {
        self.root
            .unpack::<(String, Versionstamp)>(key)
            .ok()
            .map(|(_, v)| {
                let b = v.as_bytes();
                let mut stamp = [0u8; 10];
                stamp.copy_from_slice(&b[..10]);
                (stamp, u16::from_be_bytes([b[10], b[11]]))
            })
    }

    /// Head of the change feed: the stamp of its last entry (a versionstamped
    /// value written with every entry; replicas watch it).
    pub fn feed_head(&self) -> Vec<u8> {
        self.root.pack(&("feedhead",))
    }

    /// How far the feed has been trimmed: entries at or before this stamp
    /// are gone, and a replica whose cursor is older must load afresh.
    pub fn feed_trim(&self) -> Vec<u8> {
        self.root.pack(&("feedtrim",))
    }

    /// Range of every node's command-log head.
    pub fn command_heads(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("cmdhead",)).range()
    }

    /// Total bindings ever committed in the region (an atomic counter;
    /// metrics and tests watch it).
    pub fn bound_counter(&self) -> Vec<u8> {
        self.root.pack(&("stats", "bound"))
    }

    /// Tombstone of a finished job the region forgot: the assignment epoch
    /// it finished under, so a re-delivered ASSIGN of that epoch stays a
    /// no-op (see `jobs::retire`).
    pub fn retired(&self, job: &str) -> Vec<u8> {
        self.root.pack(&("retired", job))
    }

    /// Time index of tombstones: `(retired at, job)`, so tombstones older
    /// than the retention are found without reading the others.
    pub fn retired_at(&self, at_unix_ms: u64, job: &str) -> Vec<u8> {
        self.root.pack(&("retiredat", at_unix_ms, job))
    }

    /// When the tombstone of `job` was written: the index entry it matches
    /// (a job retired twice leaves an older index entry that must not take
    /// the newer tombstone with it).
    pub fn retired_time(&self, job: &str) -> Vec<u8> {
        self.root.pack(&("retiredtime", job))
    }

    /// Range of every tombstone.
    pub fn all_retired(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("retired",)).range()
    }

    /// How far tombstones written before the time index existed have been
    /// indexed: the next key to look at, empty once all are.
    pub fn retired_index_progress(&self) -> Vec<u8> {
        self.root.pack(&("retiredindexed",))
    }

    /// Range of the tombstone time index before `cutoff_unix_ms`.
    pub fn retired_before(&self, cutoff_unix_ms: u64) -> (Vec<u8>, Vec<u8>) {
        let begin = self.root.subspace(&("retiredat",)).range().0;
        (begin, self.root.pack(&("retiredat", cutoff_unix_ms)))
    }

    /// `(retired at, job)` of a key from [`Keys::retired_before`].
    pub fn retired_at_of(&self, key: &[u8]) -> Option<(u64, String)> {
        self.root
            .unpack::<(String, u64, String)>(key)
            .ok()
            .map(|(_, at, job)| (at, job))
    }

    /// Range of every task's captured output of a job.
    pub fn job_logs(&self, job: &str) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("logs", job)).range()
    }

    /// Status version and digest last reported upwards for a job.
    pub fn job_status(&self, job: &str) -> Vec<u8> {
        self.root.pack(&("jobstatus", job))
    }

    /// Range of every job's status digest.
    pub fn job_statuses(&self) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("jobstatus",)).range()
    }

    /// Captured output of a task attempt.
    pub fn logs(&self, job: &str, index: u32, attempt: u32) -> Vec<u8> {
        self.root.pack(&("logs", job, index, attempt))
    }

    /// The attempt of a key from [`Keys::task_logs`].
    pub fn attempt_of_logs(&self, key: &[u8]) -> Option<u32> {
        self.root
            .unpack::<(String, String, u32, u32)>(key)
            .ok()
            .map(|t| t.3)
    }

    /// Range of a task's captured output, all attempts.
    pub fn task_logs(&self, job: &str, index: u32) -> (Vec<u8>, Vec<u8>) {
        self.root.subspace(&("logs", job, index)).range()
    }
}
