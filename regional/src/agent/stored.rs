//! How a task attempt's captured output ([`StoredLogs`]) is written to the
//! store: a compact binary record that always fits the store's value
//! limit.
//!
//! Owns the encoding (protobuf wire format; records of older builds, JSON,
//! are still read) and the budget: an agent reports up to 64 KiB of each
//! stream, two of which do not fit one 100,000-byte value, so the oldest
//! bytes of the longer stream are dropped first until the record fits, its
//! `*_truncated` flag set. The stream totals stay, so the first kept byte's
//! offset is still known. Must never write a record the store refuses: a
//! refused write would fail the whole status report, again at every retry.

use meridian_store::limits::MAX_VALUE_BYTES;
use prost::Message;

use super::admin::StoredLogs;
use crate::model::codec::Record;

/// Room left in a value for the output bytes after the other fields.
const OUTPUT_BUDGET: usize = MAX_VALUE_BYTES - 4 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
struct StoredWire {
    #[prost(string, tag = "1")]
    node: String,
    #[prost(bytes = "vec", tag = "2")]
    stdout: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    stderr: Vec<u8>,
    #[prost(bool, tag = "4")]
    stdout_truncated: bool,
    #[prost(bool, tag = "5")]
    stderr_truncated: bool,
    #[prost(uint64, tag = "6")]
    at: u64,
    #[prost(uint64, tag = "7")]
    stdout_bytes: u64,
    #[prost(uint64, tag = "8")]
    stderr_bytes: u64,
}

/// The last `keep` bytes of `bytes`, and whether any were dropped.
fn last(bytes: &[u8], keep: usize) -> (Vec<u8>, bool) {
    let from = bytes.len().saturating_sub(keep);
    (bytes[from..].to_vec(), from > 0)
}

/// How many bytes of each stream to keep within `budget`: all of both when
/// they fit, otherwise the shorter one whole if it takes at most half, and
/// the rest to the longer one.
fn split(out: usize, err: usize, budget: usize) -> (usize, usize) {
    if out + err <= budget {
        return (out, err);
    }
    let half = budget / 2;
    if out <= half {
        (out, budget - out)
    } else if err <= half {
        (budget - err, err)
    } else {
        (half, budget - half)
    }
}

impl Record for StoredLogs {
    fn to_bytes(&self) -> Vec<u8> {
        let node = self.node.clone();
        let budget = OUTPUT_BUDGET.saturating_sub(node.len());
        let (keep_out, keep_err) = split(self.stdout.len(), self.stderr.len(), budget);
        let (stdout, out_cut) = last(&self.stdout, keep_out);
        let (stderr, err_cut) = last(&self.stderr, keep_err);
        StoredWire {
            node,
            stdout,
            stderr,
            stdout_truncated: self.stdout_truncated || out_cut,
            stderr_truncated: self.stderr_truncated || err_cut,
            at: self.at,
            // A total below what is kept (an agent that sent none) is the
            // tail's length: the tail is then all there was.
            stdout_bytes: self.stdout_bytes.max(self.stdout.len() as u64),
            stderr_bytes: self.stderr_bytes.max(self.stderr.len() as u64),
        }
        .encode_to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.first() == Some(&b'{') {
            // Written by a build that stored the output as JSON. A wire
            // record never starts so: its first byte is field 1's tag.
            return serde_json::from_slice(bytes).map_err(|e| e.to_string());
        }
        let w = StoredWire::decode(bytes).map_err(|e| e.to_string())?;
        Ok(StoredLogs {
            node: w.node,
            stdout: w.stdout,
            stderr: w.stderr,
            stdout_truncated: w.stdout_truncated,
            stderr_truncated: w.stderr_truncated,
            at: w.at,
            stdout_bytes: w.stdout_bytes,
            stderr_bytes: w.stderr_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(out: usize, err: usize) -> StoredLogs {
        StoredLogs {
            node: "node-1".into(),
            stdout: (0..out).map(|i| b'a' + (i % 26) as u8).collect(),
            stderr: vec![b'e'; err],
            stdout_truncated: false,
            stderr_truncated: false,
            at: 7,
            stdout_bytes: out as u64 + 1000,
            stderr_bytes: err as u64,
        }
    }

    #[test]
    fn two_full_tails_fit_one_value_keeping_the_newest_bytes_of_each() {
        let full = logs(64 * 1024, 64 * 1024);
        let bytes = full.to_bytes();
        assert!(bytes.len() <= MAX_VALUE_BYTES, "{} bytes", bytes.len());
        let back = StoredLogs::from_bytes(&bytes).expect("decodes");
        assert!(back.stdout_truncated && back.stderr_truncated);
        assert!(full.stdout.ends_with(&back.stdout));
        assert!(back.stdout.len() + back.stderr.len() >= OUTPUT_BUDGET - 16);
        assert_eq!(back.stdout_bytes, full.stdout_bytes, "totals stay");
    }

    #[test]
    fn a_short_stream_is_kept_whole_beside_a_long_one() {
        let back = StoredLogs::from_bytes(&logs(64 * 1024, 100).to_bytes()).expect("decodes");
        assert_eq!(back.stderr.len(), 100);
        assert!(!back.stderr_truncated);
        assert_eq!(back.stdout.len(), 64 * 1024, "64 KiB and 100 bytes fit");
    }

    #[test]
    fn a_small_record_reads_back_equal_and_a_json_one_of_an_older_build_still_reads() {
        let small = logs(10, 3);
        assert_eq!(StoredLogs::from_bytes(&small.to_bytes()), Ok(small.clone()));
        let json = serde_json::to_vec(&small).expect("json");
        assert_eq!(StoredLogs::from_bytes(&json), Ok(small));
    }
}
