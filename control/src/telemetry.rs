//! Metrics of meridian-control, through the `metrics` facade.
//!
//! Owns the metric names, their labels and their handles. Handles are
//! registered once, when a queue is built, so a recorder installed around
//! construction (globally or with `metrics::with_local_recorder`) receives
//! everything that queue records afterwards.
//!
//! Must never: create a label value from a key (unbounded cardinality), or
//! register metrics on a hot path.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `meridian_control_queue_depth` | gauge | `queue`, `lane` | keys waiting in the lane: pending (eligible or delayed) plus dirty reruns |
//! | `meridian_control_queue_processing` | gauge | `queue` | keys handed out and not yet done |
//! | `meridian_control_queue_adds_total` | counter | `queue`, `lane` | add calls, merged ones included |
//! | `meridian_control_queue_drops_total` | counter | `queue`, `lane` | entries dropped because the queue was full (evicted or refused), by the dropped entry's lane |
//! | `meridian_control_queue_wait_seconds` | histogram | `queue`, `lane` | from eligible to handed out |
//! | `meridian_control_lease_transitions_total` | counter | `lease`, `to` | lease terms gained and lost; `to` is `leader` (acquired), `follower` (lost: fenced, deadline passed or renewal too slow) or `released` (given up on shutdown) |
//! | `meridian_control_lease_epoch` | gauge | `lease` | epoch of this candidate's last term |
//! | `meridian_control_lease_renew_failures_total` | counter | `lease`, `reason` | failed renewals; `reason` is `fenced` (taken over), `error` (retried until the deadline) or `timeout` (deadline passed mid-renewal) |
//! | `meridian_control_fenced_writes_total` | counter | | transactions refused by a fence check: a deposed owner's write that did not commit |
//!
//! Lease names are fixed or bounded (`global`, `link`, `shard-N` for the
//! configured shard count), so the `lease` label stays bounded.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::queue::Lane;

pub const QUEUE_DEPTH: &str = "meridian_control_queue_depth";
pub const QUEUE_PROCESSING: &str = "meridian_control_queue_processing";
pub const QUEUE_ADDS: &str = "meridian_control_queue_adds_total";
pub const QUEUE_DROPS: &str = "meridian_control_queue_drops_total";
pub const QUEUE_WAIT: &str = "meridian_control_queue_wait_seconds";
pub const LEASE_RENEW_FAILURES: &str = "meridian_control_lease_renew_failures_total";
pub const FENCED_WRITES: &str = "meridian_control_fenced_writes_total";

/// A lease renewal failed (`reason`: `fenced`, `error` or `timeout`).
pub(crate) fn renew_failed(lease: &str, reason: &'static str) {
    counter!(LEASE_RENEW_FAILURES, "lease" => lease.to_owned(), "reason" => reason).increment(1);
}

/// Shows the failure series of lease `lease` at zero from the start, so a
/// dashboard can tell "none yet" from "not exported".
pub(crate) fn register_lease(lease: &str) {
    for reason in ["fenced", "error", "timeout"] {
        let _ = counter!(LEASE_RENEW_FAILURES, "lease" => lease.to_owned(), "reason" => reason);
    }
}

/// Shows the process-wide series of this crate at zero; call once the
/// process's recorder is installed.
pub fn register_series() {
    let _ = counter!(FENCED_WRITES);
}

/// A fence check refused a transaction.
pub(crate) fn fenced_write() {
    counter!(FENCED_WRITES).increment(1);
}

pub(crate) struct QueueMetrics {
    depth: [Gauge; Lane::COUNT],
    processing: Gauge,
    adds: [Counter; Lane::COUNT],
    drops: [Counter; Lane::COUNT],
    wait: [Histogram; Lane::COUNT],
}

impl QueueMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        QueueMetrics {
            depth: Lane::ALL
                .map(|l| gauge!(QUEUE_DEPTH, "queue" => queue.to_owned(), "lane" => l.as_str())),
            processing: gauge!(QUEUE_PROCESSING, "queue" => queue.to_owned()),
            adds: Lane::ALL
                .map(|l| counter!(QUEUE_ADDS, "queue" => queue.to_owned(), "lane" => l.as_str())),
            drops: Lane::ALL
                .map(|l| counter!(QUEUE_DROPS, "queue" => queue.to_owned(), "lane" => l.as_str())),
            wait: Lane::ALL
                .map(|l| histogram!(QUEUE_WAIT, "queue" => queue.to_owned(), "lane" => l.as_str())),
        }
    }

    pub(crate) fn set_depth(&self, lane: Lane, depth: usize) {
        self.depth[lane.index()].set(depth as f64);
    }

    pub(crate) fn set_processing(&self, n: usize) {
        self.processing.set(n as f64);
    }

    pub(crate) fn add(&self, lane: Lane) {
        self.adds[lane.index()].increment(1);
    }

    pub(crate) fn drop_in(&self, lane: Lane) {
        self.drops[lane.index()].increment(1);
    }

    pub(crate) fn waited(&self, lane: Lane, seconds: f64) {
        self.wait[lane.index()].record(seconds);
    }
}

/// Registers descriptions of every metric above with the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        QUEUE_DEPTH,
        "Keys waiting in a work queue lane (pending plus dirty reruns)"
    );
    describe_gauge!(
        QUEUE_PROCESSING,
        "Keys handed out by a work queue and not yet done"
    );
    describe_counter!(QUEUE_ADDS, "Adds to a work queue, merged ones included");
    describe_counter!(
        QUEUE_DROPS,
        "Work queue entries dropped because the queue was full"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from eligible to handed out"
    );
    describe_counter!(
        LEASE_RENEW_FAILURES,
        "Failed lease renewals by lease and reason"
    );
    describe_counter!(
        FENCED_WRITES,
        "Transactions refused by a fence check (a deposed owner's writes)"
    );
}
