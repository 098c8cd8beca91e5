//! Live output of attempts: the last bytes of each stream, numbered by
//! offset, that followers read while the process writes.
//!
//! Owns the per-stream ring ([`Ring`], at most [`RING_BYTES`]), the
//! per-attempt output ([`AttemptOutput`]: both rings, whether the attempt
//! has ended, a wake-up for followers) and the registry of a node's
//! attempts ([`LiveLogs`]: every running attempt plus the last
//! [`FINISHED_KEPT`] finished ones). Memory is bounded by construction:
//! writers overwrite the oldest bytes, never wait for a reader; a reader
//! that fell behind the ring learns how many bytes it skipped.
//!
//! Must never block a writer on a reader, or hold a lock across an await.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use meridian_proto::limits::MAX_OUTPUT_TAIL_BYTES;
use meridian_proto::v1::{LogStream, TaskAttempt, TaskId};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::Tail;

/// Bytes kept per stream of an attempt: also the tail reported to the
/// region when the attempt ends.
pub const RING_BYTES: usize = MAX_OUTPUT_TAIL_BYTES;
/// Finished attempts whose output stays readable here (for a follower that
/// arrives just after the end), per registry.
pub const FINISHED_KEPT: usize = 32;

/// The last [`RING_BYTES`] bytes of one stream and how many were written.
#[derive(Debug, Default)]
pub struct Ring {
    buf: VecDeque<u8>,
    end: u64,
}

/// What a read of a ring returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// Bytes between the offset asked for and `offset` that are gone.
    pub skipped: u64,
    /// Offset of `data[0]`.
    pub offset: u64,
    pub data: Vec<u8>,
}

impl Ring {
    /// Appends `data`, forgetting the oldest bytes past the bound.
    pub fn push(&mut self, data: &[u8]) {
        self.end += data.len() as u64;
        if data.len() >= RING_BYTES {
            self.buf.clear();
            self.buf.extend(&data[data.len() - RING_BYTES..]);
            return;
        }
        let excess = (self.buf.len() + data.len()).saturating_sub(RING_BYTES);
        self.buf.drain(..excess);
        self.buf.extend(data);
    }

    /// Offset of the oldest byte kept.
    pub fn start(&self) -> u64 {
        self.end - self.buf.len() as u64
    }

    /// Bytes written in all.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Up to `max` bytes from offset `from` (or from the oldest byte kept,
    /// when `from` is older). An offset past the end reads nothing.
    pub fn read(&self, from: u64, max: usize) -> Read {
        let start = self.start();
        let at = from.clamp(start, self.end);
        let skip = usize::try_from(at - start).unwrap_or(usize::MAX);
        let data: Vec<u8> = self.buf.iter().skip(skip).take(max).copied().collect();
        Read {
            skipped: at.saturating_sub(from),
            offset: at,
            data,
        }
    }

    /// The bytes kept, as the report's tail.
    pub fn tail(&self) -> Tail {
        Tail {
            bytes: self.buf.iter().copied().collect(),
            truncated: self.end > self.buf.len() as u64,
            total: self.end,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    stdout: Ring,
    stderr: Ring,
    /// Set once the process has exited and its pipes were drained (or
    /// given up on): nothing more will be written.
    ended: bool,
}

/// Both output streams of one attempt while it runs (and a while after).
#[derive(Debug)]
pub struct AttemptOutput {
    inner: Mutex<Inner>,
    /// Bumped on every change; followers wait on it (a watch keeps one
    /// value, so a slow follower costs nothing here).
    changed: watch::Sender<u64>,
}

impl Default for AttemptOutput {
    fn default() -> Self {
        AttemptOutput {
            inner: Mutex::new(Inner::default()),
            changed: watch::Sender::new(0),
        }
    }
}

impl AttemptOutput {
    fn with<T>(&self, stream: LogStream, f: impl FnOnce(&mut Ring) -> T) -> T {
        let mut inner = self.inner.lock();
        match stream {
            LogStream::Stderr => f(&mut inner.stderr),
            _ => f(&mut inner.stdout),
        }
    }

    /// Appends bytes the process wrote to `stream`.
    pub fn write(&self, stream: LogStream, data: &[u8]) {
        self.with(stream, |r| r.push(data));
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Reads `stream` from `from` (see [`Ring::read`]).
    pub fn read(&self, stream: LogStream, from: u64, max: usize) -> Read {
        self.with(stream, |r| r.read(from, max))
    }

    /// Offset of the oldest byte kept and bytes written in all.
    pub fn bounds(&self, stream: LogStream) -> (u64, u64) {
        self.with(stream, |r| (r.start(), r.end()))
    }

    /// What `stream` holds, as a report's tail.
    pub fn tail(&self, stream: LogStream) -> Tail {
        self.with(stream, |r| r.tail())
    }

    /// Marks the attempt ended: every byte has been written.
    pub fn end(&self) {
        self.inner.lock().ended = true;
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Whether the attempt has ended (every byte is written).
    pub fn ended(&self) -> bool {
        self.inner.lock().ended
    }

    /// Wakes on every write and on the end.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

type Key = (String, u32, u32);

#[derive(Debug, Default)]
struct Registry {
    attempts: BTreeMap<Key, Arc<AttemptOutput>>,
    /// Finished attempts, oldest first, forgotten past [`FINISHED_KEPT`].
    finished: VecDeque<Key>,
}

/// The live output of every attempt a node runs, for its log server.
#[derive(Debug, Default)]
pub struct LiveLogs {
    inner: Mutex<Registry>,
}

fn key(attempt: &TaskAttempt) -> Key {
    let (job, index) = attempt
        .task
        .as_ref()
        .map_or((String::new(), 0), |t| (t.job_id.clone(), t.index));
    (job, index, attempt.attempt)
}

impl LiveLogs {
    /// The output of a starting attempt (the same one if opened already).
    pub fn open(&self, attempt: &TaskAttempt) -> Arc<AttemptOutput> {
        self.inner
            .lock()
            .attempts
            .entry(key(attempt))
            .or_default()
            .clone()
    }

    /// Ends an attempt's output and keeps it readable among the last
    /// [`FINISHED_KEPT`] finished ones.
    pub fn finish(&self, attempt: &TaskAttempt, output: &AttemptOutput) {
        output.end();
        let k = key(attempt);
        let mut reg = self.inner.lock();
        if !reg.finished.contains(&k) {
            reg.finished.push_back(k);
        }
        while reg.finished.len() > FINISHED_KEPT {
            if let Some(old) = reg.finished.pop_front() {
                reg.attempts.remove(&old);
            }
        }
    }

    /// The output of `task`'s attempt `attempt` (0: the highest known here)
    /// and its number.
    pub fn get(&self, task: &TaskId, attempt: u32) -> Option<(u32, Arc<AttemptOutput>)> {
        let reg = self.inner.lock();
        let lo = (task.job_id.clone(), task.index, 0);
        let hi = (task.job_id.clone(), task.index, u32::MAX);
        reg.attempts
            .range(lo..=hi)
            .rfind(|((_, _, a), _)| attempt == 0 || *a == attempt)
            .map(|((_, _, a), out)| (*a, out.clone()))
    }

    /// Attempts held (running and kept finished ones).
    pub fn len(&self) -> usize {
        self.inner.lock().attempts.len()
    }

    /// Whether no attempt is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_only_its_bound_and_a_late_reader_learns_what_it_skipped() {
        let mut ring = Ring::default();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            ring.push(piece);
        }
        assert_eq!(ring.end(), 200_000);
        assert_eq!(ring.start(), 200_000 - RING_BYTES as u64);
        let read = ring.read(10, 100);
        assert_eq!(read.offset, ring.start());
        assert_eq!(read.skipped, ring.start() - 10);
        let at = usize::try_from(ring.start()).unwrap();
        assert_eq!(read.data, &data[at..at + 100]);
        let tail = ring.tail();
        assert!(tail.truncated);
        assert_eq!(tail.bytes, &data[data.len() - RING_BYTES..]);
        assert_eq!(tail.total, 200_000);
    }

    #[test]
    fn a_reader_at_the_end_reads_nothing_and_skips_nothing() {
        let mut ring = Ring::default();
        ring.push(b"hello\n");
        let read = ring.read(6, 100);
        assert_eq!(
            read,
            Read {
                skipped: 0,
                offset: 6,
                data: Vec::new()
            }
        );
        assert_eq!(ring.read(3, 2).data, b"lo");
    }

    #[test]
    fn only_the_last_finished_attempts_stay_readable() {
        let logs = LiveLogs::default();
        let attempt = |i: u32| TaskAttempt {
            task: Some(TaskId {
                job_id: "j".into(),
                index: i,
            }),
            assignment_epoch: 1,
            attempt: 1,
        };
        for i in 0..(FINISHED_KEPT as u32 + 5) {
            let out = logs.open(&attempt(i));
            out.write(LogStream::Stdout, b"x");
            logs.finish(&attempt(i), &out);
        }
        assert_eq!(logs.len(), FINISHED_KEPT);
        let first = TaskId {
            job_id: "j".into(),
            index: 0,
        };
        assert!(logs.get(&first, 0).is_none());
        let last = TaskId {
            job_id: "j".into(),
            index: FINISHED_KEPT as u32 + 4,
        };
        assert_eq!(logs.get(&last, 0).map(|(a, _)| a), Some(1));
    }
}
