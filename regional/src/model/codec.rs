//! How each stored record is turned into bytes and back.
//!
//! Owns the [`Record`] trait and its encodings: protobuf (prost) for the hot
//! records every placement batch reads or rewrites (task blocks, command-log
//! entries, nodes), JSON for the cold ones (layout, jobs, presence, link
//! state, logs, counters). A protobuf record decodes older bytes that lack a
//! newer field (it reads as its default), so fields may be added but never
//! renumbered. Must never panic on bad bytes: a record that does not decode
//! is [`Corrupt`].

use std::collections::BTreeMap;

use prost::Message;

use super::records::{CommandRecord, JobRecord, Layout, NodeLiveness, NodeRecord, Res, TaskBlock};

/// Why a stored record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {what} record: {detail}")]
pub struct Corrupt {
    /// Which kind of record.
    pub what: &'static str,
    /// The decoder's message.
    pub detail: String,
}

/// A value stored under one key.
pub trait Record: Sized {
    /// The stored bytes.
    fn to_bytes(&self) -> Vec<u8>;
    /// Reads stored bytes back; the error is the decoder's message.
    fn from_bytes(bytes: &[u8]) -> Result<Self, String>;
}

/// Encodes a record.
pub fn encode<T: Record>(value: &T) -> Vec<u8> {
    value.to_bytes()
}

/// Decodes a record of kind `what`.
pub fn decode<T: Record>(what: &'static str, bytes: &[u8]) -> Result<T, Corrupt> {
    T::from_bytes(bytes).map_err(|detail| Corrupt { what, detail })
}

/// Implements [`Record`] as JSON for serde types.
macro_rules! json_record {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::model::codec::Record for $t {
            fn to_bytes(&self) -> Vec<u8> {
                // Serializing these plain types (string keys only) cannot fail.
                serde_json::to_vec(self).unwrap_or_default()
            }
            fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
                serde_json::from_slice(bytes).map_err(|e| e.to_string())
            }
        }
    )*};
}
pub(crate) use json_record;

json_record!(u32, u64, Layout, JobRecord);

impl Record for TaskBlock {
    fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        TaskBlock::decode(bytes).map_err(|e| e.to_string())
    }
}

/// One command-log entry: the commands of one transaction for one node.
#[derive(Clone, PartialEq, Message)]
struct CommandEntry {
    #[prost(message, repeated, tag = "1")]
    commands: Vec<CommandRecord>,
}

impl Record for Vec<CommandRecord> {
    fn to_bytes(&self) -> Vec<u8> {
        let len: usize = self
            .iter()
            .map(|c| prost::encoding::message::encoded_len(1, c))
            .sum();
        let mut buf = Vec::with_capacity(len);
        for c in self {
            prost::encoding::message::encode(1, c, &mut buf);
        }
        buf
    }
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        CommandEntry::decode(bytes)
            .map(|e| e.commands)
            .map_err(|e| e.to_string())
    }
}

/// The stored form of a [`NodeRecord`].
#[derive(Clone, PartialEq, Message)]
struct NodeWire {
    #[prost(string, tag = "1")]
    node_id: String,
    #[prost(uint64, tag = "2")]
    epoch: u64,
    #[prost(string, tag = "3")]
    boot_id: String,
    #[prost(message, optional, tag = "4")]
    allocatable: Option<Res>,
    #[prost(btree_map = "string, string", tag = "5")]
    labels: BTreeMap<String, String>,
    #[prost(string, tag = "6")]
    zone: String,
    #[prost(string, tag = "7")]
    rack: String,
    /// 0 ready, 1 suspect, 2 down.
    #[prost(uint32, tag = "8")]
    liveness: u32,
    #[prost(bool, tag = "9")]
    cordoned: bool,
    #[prost(bool, tag = "10")]
    draining: bool,
    #[prost(string, tag = "11")]
    cordon_reason: String,
    #[prost(uint64, tag = "12")]
    drain_deadline_ms: u64,
    #[prost(uint64, tag = "13")]
    version: u64,
    #[prost(uint64, tag = "14")]
    registered_at_unix_ms: u64,
    #[prost(string, tag = "15")]
    agent_version: String,
    #[prost(string, tag = "16")]
    logs_endpoint: String,
}

impl Record for NodeRecord {
    fn to_bytes(&self) -> Vec<u8> {
        NodeWire {
            node_id: self.node_id.clone(),
            epoch: self.epoch,
            boot_id: self.boot_id.clone(),
            allocatable: Some(self.allocatable.clone()),
            labels: self.labels.clone(),
            zone: self.zone.clone(),
            rack: self.rack.clone(),
            liveness: match self.liveness {
                NodeLiveness::Ready => 0,
                NodeLiveness::Suspect => 1,
                NodeLiveness::Down => 2,
            },
            cordoned: self.cordoned,
            draining: self.draining,
            cordon_reason: self.cordon_reason.clone(),
            drain_deadline_ms: self.drain_deadline_ms,
            version: self.version,
            registered_at_unix_ms: self.registered_at_unix_ms,
            agent_version: self.agent_version.clone(),
            logs_endpoint: self.logs_endpoint.clone(),
        }
        .encode_to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let w = NodeWire::decode(bytes).map_err(|e| e.to_string())?;
        Ok(NodeRecord {
            node_id: w.node_id,
            epoch: w.epoch,
            boot_id: w.boot_id,
            allocatable: w.allocatable.unwrap_or_default(),
            labels: w.labels,
            zone: w.zone,
            rack: w.rack,
            liveness: match w.liveness {
                0 => NodeLiveness::Ready,
                1 => NodeLiveness::Suspect,
                2 => NodeLiveness::Down,
                other => return Err(format!("unknown liveness {other}")),
            },
            cordoned: w.cordoned,
            draining: w.draining,
            cordon_reason: w.cordon_reason,
            drain_deadline_ms: w.drain_deadline_ms,
            version: w.version,
            registered_at_unix_ms: w.registered_at_unix_ms,
            agent_version: w.agent_version,
            logs_endpoint: w.logs_endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskRecord;

    fn node() -> NodeRecord {
        NodeRecord {
            node_id: "n1".into(),
            epoch: 3,
            boot_id: "b".into(),
            allocatable: Res {
                cpu: 4000,
                mem: 1 << 30,
                gpus: 2,
                gpu_type: "a100".into(),
            },
            labels: [("disk".to_string(), "ssd".to_string())].into(),
            zone: "z".into(),
            rack: "r".into(),
            liveness: NodeLiveness::Suspect,
            cordoned: true,
            draining: false,
            cordon_reason: "maintenance".into(),
            drain_deadline_ms: 7,
            version: 9,
            registered_at_unix_ms: 11,
            agent_version: "0.1".into(),
            logs_endpoint: "http://127.0.0.1:7600".into(),
        }
    }

    #[test]
    fn every_hot_record_reads_back_equal_to_what_was_written() {
        let n = node();
        assert_eq!(decode::<NodeRecord>("node", &encode(&n)), Ok(n));
        let mut t = TaskRecord::new_pending();
        t.exit_code = Some(0);
        t.node = "n1".into();
        let block = TaskBlock {
            first: 256,
            tasks: vec![t.clone(), TaskRecord::new_pending()],
        };
        assert_eq!(
            decode::<TaskBlock>("task block", &encode(&block)),
            Ok(block)
        );
        let cmds = vec![
            CommandRecord {
                kind: 1,
                job: "j".into(),
                index: 3,
                attempt: 1,
                shard: 0,
                shard_epoch: 2,
                node_epoch: 1,
                reason: String::new(),
                grace_ms: 0,
                assignment_epoch: 2,
            };
            3
        ];
        assert_eq!(
            decode::<Vec<CommandRecord>>("command", &encode(&cmds)),
            Ok(cmds)
        );
    }

    #[test]
    fn bytes_that_are_not_a_record_are_reported_corrupt_with_their_kind() {
        let err = decode::<NodeRecord>("node", &[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.what, "node");
        assert!(decode::<u64>("counter", b"{").is_err());
        assert!(decode::<JobRecord>("job", b"{").is_err());
    }
}
