//! Appending to a node's command log.
//!
//! Owns the write side of the log the node's assignment stream reads: each
//! transaction appends at most one entry per node (a list of commands) under a
//! versionstamped key, and sets the node's head key to the entry's stamp so
//! open streams wake. Must never rewrite or reorder an entry: cursors point into the log.

use std::collections::BTreeMap;

use meridian_store::Transaction;

use super::keys::Keys;
use super::records::{CommandRecord, encode};
use crate::error::Result;

/// Value template of a node's head: a 10-byte versionstamp placeholder at
/// offset 0 (the four-byte little-endian suffix).
const HEAD_TEMPLATE: [u8; 14] = [0; 14];

/// Commands collected during one transaction, written at its end.
#[derive(Debug, Default)]
pub struct CommandBatch {
    by_node: BTreeMap<String, Vec<CommandRecord>>,
}

impl CommandBatch {
    pub fn new() -> Self {
        CommandBatch::default()
    }

    /// Queues `command` for `node`.
    pub fn push(&mut self, node: &str, command: CommandRecord) {
        self.by_node
            .entry(node.to_string())
            .or_default()
            .push(command);
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Number of commands queued.
    pub fn len(&self) -> usize {
        self.by_node.values().map(Vec::len).sum()
    }

    /// Writes one log entry per node into `tx`.
    pub fn write(self, tx: &Transaction, keys: &Keys) -> Result<()> {
        for (node, commands) in self.by_node {
            // Entries of one transaction share the stamp; the node is in the
            // key, so one entry per node never collides.
            tx.set_versionstamped_key(&keys.command_template(&node, 0), &encode(&commands))?;
            // The head holds the stamp of the last entry: a blind write
            // (no read, unlike an atomic add) that still changes with every
            // entry, which is all its watchers need.
            tx.set_versionstamped_value(&keys.command_head(&node), &HEAD_TEMPLATE)?;
        }
        Ok(())
    }
}
