//! The history of one run: what the real components did, in the order they
//! did it, as the checker reads it.
//!
//! Owns the event vocabulary ([`Event`]), the timestamped, sequenced record
//! ([`Record`]), the immutable [`History`] and the thread-safe [`Recorder`]
//! that components and harnesses append to. Both the deterministic
//! simulation and the multi-process chaos test produce histories in this
//! shape, so one checker serves both.
//!
//! Must never: guess. An event is recorded only when a component did or
//! observed the thing (a commit returned, a task process started, a lease
//! record was read); a harness's intention ("I asked for X") is not an event,
//! except for the harness's own actions on the world (faults, heal, control
//! plane down), which are facts about the run.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Who an authority belongs to: the global tier, one region's hold on its
/// jobs, or one shard of a region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// The global leader.
    Global,
    /// A region's lease at the global tier (its hold on assigned jobs).
    Region(String),
    /// One shard of a region.
    Shard { region: String, shard: u32 },
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Global => write!(f, "global"),
            Scope::Region(r) => write!(f, "region {r}"),
            Scope::Shard { region, shard } => write!(f, "shard {region}/{shard}"),
        }
    }
}

/// Resources in the units the placer uses.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

impl Resources {
    /// Whether `self` fits inside `capacity` in every dimension.
    pub fn fits_in(&self, capacity: &Resources) -> bool {
        self.cpu_millis <= capacity.cpu_millis
            && self.memory_bytes <= capacity.memory_bytes
            && self.gpus <= capacity.gpus
    }
}

/// Why a task stopped on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StopReason {
    /// The task ended by itself (exit, success or failure).
    Exited,
    /// The agent stopped it (unbound, fenced, cancelled, region lost).
    Stopped,
    /// The node's process died (crash of the agent host).
    NodeCrashed,
}

/// How a job ended up, as read from the store at an observation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Not yet placed anywhere.
    Pending,
    /// Bound to nodes (running or about to).
    Placed,
    /// Running on an agent.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed, with the reason written to the job's status.
    Failed(String),
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Whether the job has converged in the sense of the convergence invariant of docs/architecture.md:
    /// placed, running or failed with a reason.
    pub fn is_converged(&self) -> bool {
        !matches!(self, JobState::Pending)
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A client got a successful answer to `SubmitJob`.
    SubmitAcked { request_id: String, job_id: String },
    /// A binding of a task to a node was committed by a shard leader.
    Binding {
        task: String,
        node: String,
        shard: u32,
        epoch: u64,
    },
    /// An agent started a task.
    TaskStarted {
        node: String,
        task: String,
        job: String,
        exclusive: bool,
        keep_running: bool,
    },
    /// An agent's task stopped.
    TaskStopped {
        node: String,
        task: String,
        reason: StopReason,
    },
    /// A holder won an authority at an epoch (its takeover committed).
    LeaderChanged {
        scope: Scope,
        holder: String,
        epoch: u64,
    },
    /// An owner tried to commit a write under its authority; `epoch` is the
    /// epoch it believed it held.
    WriteAttempt {
        scope: Scope,
        owner: String,
        epoch: u64,
        committed: bool,
    },
    /// What a node offers and what is placed on it, read in one snapshot.
    NodeLoad {
        node: String,
        capacity: Resources,
        placed: Resources,
    },
    /// A job as found in the store at an observation.
    JobObserved {
        job_id: String,
        request_id: String,
        state: JobState,
    },
    /// The harness took every control plane process down.
    ControlPlaneDown,
    /// The harness brought the control plane back.
    ControlPlaneUp,
    /// The harness ended all faults: the heal phase starts.
    Healed,
    /// A fault the harness injected, for the report.
    Fault { description: String },
    /// The harness froze a node's whole host: its agent and its tasks stop
    /// running (no timer fires, nothing is sent or received) until
    /// [`Event::NodeResumed`]. A frozen task does nothing, so while frozen
    /// it does not count as running for exclusivity.
    NodePaused { node: String },
    /// The harness let a frozen host run again: its tasks run from here on
    /// until they are recorded stopped.
    NodeResumed { node: String },
    /// An operator's request (a drain, an undrain) was acknowledged by the
    /// API it was sent to.
    AdminAcked { action: String },
}

/// An event with its place in the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the total order of the run (0, 1, 2, ...).
    pub seq: u64,
    /// Run time when it was recorded (simulated time in the simulation).
    pub at: Duration,
    /// Which process recorded it.
    pub source: String,
    pub event: Event,
}

/// A finished, immutable history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    records: Vec<Record>,
}

impl History {
    /// A history from records; they are put in `seq` order.
    pub fn from_records(mut records: Vec<Record>) -> Self {
        records.sort_by_key(|r| r.seq);
        History { records }
    }

    /// A history from bare events at the given times, sequenced in the order
    /// given. Handy for hand-made histories in tests.
    pub fn from_events(events: impl IntoIterator<Item = (Duration, Event)>) -> Self {
        let records = events
            .into_iter()
            .enumerate()
            .map(|(i, (at, event))| Record {
                seq: i as u64,
                at,
                source: String::new(),
                event,
            })
            .collect();
        History { records }
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How many records hold an event of the kind `pred` selects.
    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.records.iter().filter(|r| pred(&r.event)).count()
    }

    /// Every record as one line of text (sequence, time, source, the event
    /// with all its fields), in order: what [`History::digest`] hashes, and
    /// what to diff when two replays of a seed differ.
    pub fn lines(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| format!("{} {:?} {} {:?}", r.seq, r.at, r.source, r.event))
            .collect()
    }

    /// A hash of the whole history, every record and every field in order
    /// (64-bit FNV-1a over [`History::lines`]): equal for two runs exactly
    /// when they recorded the same thing at the same simulated times. FNV,
    /// not std's hasher, so the value is the same in every process.
    pub fn digest(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = OFFSET;
        for line in self.lines() {
            for byte in line.bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(PRIME);
            }
        }
        hash
    }
}

/// Where the recorder reads time from; the simulation passes simulated time,
/// the chaos test wall time since its start.
pub type TimeSource = Arc<dyn Fn() -> Duration + Send + Sync>;

/// Appends events from any thread or task; cloning gives another handle to
/// the same history.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Vec<Record>>>,
    time: TimeSource,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("records", &self.inner.lock().len())
            .finish()
    }
}

impl Recorder {
    /// A recorder stamping events with `time`.
    pub fn new(time: TimeSource) -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(Vec::new())),
            time,
        }
    }

    /// A recorder on real time elapsed since its creation.
    pub fn wall() -> Self {
        let start = std::time::Instant::now();
        Recorder::new(Arc::new(move || start.elapsed()))
    }

    /// Appends one event; the sequence number is taken under the same lock,
    /// so the order of records is the order of `record` calls.
    pub fn record(&self, source: &str, event: Event) {
        let at = (self.time)();
        let mut records = self.inner.lock();
        let seq = records.len() as u64;
        records.push(Record {
            seq,
            at,
            source: source.to_string(),
            event,
        });
    }

    /// Records so far.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> History {
        History::from_records(self.inner.lock().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_sequenced_in_call_order_and_stamped_with_the_time_source() {
        let t = Arc::new(Mutex::new(Duration::from_secs(1)));
        let src = t.clone();
        let rec = Recorder::new(Arc::new(move || *src.lock()));
        rec.record("a", Event::Healed);
        *t.lock() = Duration::from_secs(2);
        rec.clone().record("b", Event::ControlPlaneDown);
        let h = rec.snapshot();
        assert_eq!(h.len(), 2);
        assert_eq!(h.records()[0].seq, 0);
        assert_eq!(h.records()[0].at, Duration::from_secs(1));
        assert_eq!(h.records()[1].source, "b");
        assert_eq!(h.records()[1].at, Duration::from_secs(2));
    }

    #[test]
    fn only_non_pending_jobs_count_as_converged() {
        assert!(!JobState::Pending.is_converged());
        assert!(JobState::Failed("no fit".into()).is_converged());
        assert!(JobState::Placed.is_converged());
    }
}
