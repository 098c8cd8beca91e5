//! The global tier's key layout in the store.
//!
//! Owns every key the global tier reads or writes, all under one subspace
//! (`("meridian", "global", <namespace>)`), and the encoding of cursors. It
//! must never decide anything; it only names places.

use meridian_store::Subspace;
use meridian_store::tuple::{self, Versionstamp};

use crate::error::{GlobalError, Result};

/// Length of a cursor: one complete tuple-layer versionstamp.
pub const CURSOR_BYTES: usize = 12;

/// Keys of one global deployment.
#[derive(Debug, Clone)]
pub struct Keys {
    root: Subspace,
}

impl Keys {
    /// Keys under `("meridian", "global", namespace)`.
    pub fn new(namespace: &str) -> Self {
        Keys {
            root: Subspace::from_bytes(tuple::pack(&("meridian", "global", namespace))),
        }
    }

    /// Everything of this deployment.
    pub fn root(&self) -> &Subspace {
        &self.root
    }

    /// The leader lease record (written by `meridian_control::lease`).
    pub fn leader_lease(&self) -> Vec<u8> {
        self.root.pack(&("leader_lease",))
    }

    /// The current leader term's published fence, which every leader write
    /// checks (the lease record itself may live in a store of its own).
    pub fn leader_fence(&self) -> Vec<u8> {
        self.root.pack(&("leader_fence",))
    }

    /// Where the leader advertises its endpoints, with its epoch.
    pub fn leader_info(&self) -> Vec<u8> {
        self.root.pack(&("leader_info",))
    }

    /// One job record (the status view without tasks).
    pub fn job(&self, job_id: &str) -> Vec<u8> {
        self.root.pack(&("job", job_id))
    }

    /// The range of all job records.
    pub fn jobs(&self) -> Subspace {
        self.root.subspace(&("job",))
    }

    /// One task status of a job.
    pub fn task(&self, job_id: &str, index: u32) -> Vec<u8> {
        self.root.pack(&("task", job_id, index))
    }

    /// All task statuses of a job.
    pub fn tasks(&self, job_id: &str) -> Subspace {
        self.root.subspace(&("task", job_id))
    }

    /// The last applied region status version of a job: `(epoch, version)`.
    pub fn status_version(&self, job_id: &str) -> Vec<u8> {
        self.root.pack(&("status_version", job_id))
    }

    /// Idempotency record of a submit: `(tenant, request_id) -> job_id`.
    pub fn request(&self, tenant: &str, request_id: &str) -> Vec<u8> {
        self.root.pack(&("request", tenant, request_id))
    }

    /// Index of jobs waiting to be routed.
    pub fn pending(&self, job_id: &str) -> Vec<u8> {
        self.root.pack(&("pending", job_id))
    }

    /// The range of the pending index.
    pub fn pendings(&self) -> Subspace {
        self.root.subspace(&("pending",))
    }

    /// Index of pending jobs waiting for their dependencies (never routed
    /// while listed here; `gate.rs` moves them to the pending index when
    /// the last one is met).
    pub fn blocked(&self, job_id: &str) -> Vec<u8> {
        self.root.pack(&("blocked", job_id))
    }

    /// The range of the dependency-waiting index.
    pub fn blockeds(&self) -> Subspace {
        self.root.subspace(&("blocked",))
    }

    /// `dependency -> dependent` edge, written when the dependent is
    /// submitted (or released) while the dependency is unfinished.
    pub fn dependent(&self, dependency: &str, dependent: &str) -> Vec<u8> {
        self.root.pack(&("dependent", dependency, dependent))
    }

    /// The jobs waiting on `dependency`.
    pub fn dependents(&self, dependency: &str) -> Subspace {
        self.root.subspace(&("dependent", dependency))
    }

    /// Queue of jobs with dependents that have ended and whose dependents
    /// are still to be judged (written in the transaction that ends them).
    pub fn settled(&self, job_id: &str) -> Vec<u8> {
        self.root.pack(&("settled", job_id))
    }

    /// The range of the settled queue.
    pub fn settleds(&self) -> Subspace {
        self.root.subspace(&("settled",))
    }

    /// Index of unfinished jobs held by a region: value is the epoch.
    pub fn held(&self, region: &str, job_id: &str) -> Vec<u8> {
        self.root.pack(&("held", region, job_id))
    }

    /// The range of a region's held jobs.
    pub fn helds(&self, region: &str) -> Subspace {
        self.root.subspace(&("held", region))
    }

    /// A hand-off in progress: the job was revoked and its old region has
    /// not released it yet.
    pub fn moving(&self, job_id: &str) -> Vec<u8> {
        self.root.pack(&("moving", job_id))
    }

    /// The range of hand-offs in progress.
    pub fn movings(&self) -> Subspace {
        self.root.subspace(&("moving",))
    }

    /// CPU millis held by a tenant's routed, unfinished jobs (atomic counter).
    pub fn tenant_usage(&self, tenant: &str) -> Vec<u8> {
        self.root.pack(&("tenant_usage", tenant))
    }

    /// The range of tenant usage counters.
    pub fn tenant_usages(&self) -> Subspace {
        self.root.subspace(&("tenant_usage",))
    }

    /// Index entry of a job by tenant (`job_index.rs`), ordered by job id.
    pub fn job_by_tenant(&self, tenant: &str, job_id: &str) -> Vec<u8> {
        self.root.pack(&("job_ix", "t", tenant, job_id))
    }

    /// A tenant's jobs, by id.
    pub fn jobs_by_tenant(&self, tenant: &str) -> Subspace {
        self.root.subspace(&("job_ix", "t", tenant))
    }

    /// Index entry of a job by state (the `JobState` number).
    pub fn job_by_state(&self, state: i32, job_id: &str) -> Vec<u8> {
        self.root.pack(&("job_ix", "s", i64::from(state), job_id))
    }

    /// The jobs in one state, by id.
    pub fn jobs_by_state(&self, state: i32) -> Subspace {
        self.root.subspace(&("job_ix", "s", i64::from(state)))
    }

    /// Index entry of a job by tenant and state.
    pub fn job_by_tenant_state(&self, tenant: &str, state: i32, job_id: &str) -> Vec<u8> {
        self.root
            .pack(&("job_ix", "ts", tenant, i64::from(state), job_id))
    }

    /// A tenant's jobs in one state, by id.
    pub fn jobs_by_tenant_state(&self, tenant: &str, state: i32) -> Subspace {
        self.root
            .subspace(&("job_ix", "ts", tenant, i64::from(state)))
    }

    /// Index entry of a job by region and state (only jobs with a region).
    pub fn job_by_region_state(&self, region: &str, state: i32, job_id: &str) -> Vec<u8> {
        self.root
            .pack(&("job_ix", "rs", region, i64::from(state), job_id))
    }

    /// A region's jobs in one state, by id.
    pub fn jobs_by_region_state(&self, region: &str, state: i32) -> Subspace {
        self.root
            .subspace(&("job_ix", "rs", region, i64::from(state)))
    }

    /// Index entry of a job by tenant, region and state (only jobs with a
    /// region).
    pub fn job_by_tenant_region_state(
        &self,
        tenant: &str,
        region: &str,
        state: i32,
        job_id: &str,
    ) -> Vec<u8> {
        self.root
            .pack(&("job_ix", "trs", tenant, region, i64::from(state), job_id))
    }

    /// A tenant's jobs in one region and state, by id.
    pub fn jobs_by_tenant_region_state(&self, tenant: &str, region: &str, state: i32) -> Subspace {
        self.root
            .subspace(&("job_ix", "trs", tenant, region, i64::from(state)))
    }

    /// Version of the job indexes this store holds; absent until the
    /// backfill of a store written before them has finished.
    pub fn job_index_version(&self) -> Vec<u8> {
        self.root.pack(&("job_ix_version",))
    }

    /// How far the backfill of the job indexes has come (the last job key
    /// it indexed).
    pub fn job_index_backfill(&self) -> Vec<u8> {
        self.root.pack(&("job_ix_backfill",))
    }

    /// Index of finished jobs by the time they finished (ms), then id: what
    /// the job retention (`history.rs`) removes, oldest first.
    pub fn finished(&self, at_unix_ms: u64, job_id: &str) -> Vec<u8> {
        self.root.pack(&("finished", at_unix_ms, job_id))
    }

    /// The range of the finished index.
    pub fn finisheds(&self) -> Subspace {
        self.root.subspace(&("finished",))
    }

    /// Tombstone of a job removed after the retention period: what it was
    /// and when it finished, for GetJob and for the dependents still judged
    /// against it.
    pub fn removed(&self, job_id: &str) -> Vec<u8> {
        self.root.pack(&("removed", job_id))
    }

    /// Tombstones by the time they were written, then id: what the
    /// retention forgets once they are a retention period old.
    pub fn removed_at(&self, at_unix_ms: u64, job_id: &str) -> Vec<u8> {
        self.root.pack(&("removed_at", at_unix_ms, job_id))
    }

    /// The range of tombstones by time.
    pub fn removeds_at(&self) -> Subspace {
        self.root.subspace(&("removed_at",))
    }

    /// A schedule record (`schedules/`), by schedule id.
    pub fn schedule(&self, schedule_id: &str) -> Vec<u8> {
        self.root.pack(&("schedule", schedule_id))
    }

    /// The range of schedule records, in id order.
    pub fn schedules(&self) -> Subspace {
        self.root.subspace(&("schedule",))
    }

    /// A region's registry record.
    pub fn region(&self, name: &str) -> Vec<u8> {
        self.root.pack(&("region", name))
    }

    /// The range of region records.
    pub fn regions(&self) -> Subspace {
        self.root.subspace(&("region",))
    }

    /// Highest leadership epoch seen from a region's own election.
    pub fn region_leader_epoch(&self, name: &str) -> Vec<u8> {
        self.root.pack(&("region_leader_epoch", name))
    }

    /// The job event log, keyed by versionstamp.
    pub fn job_events(&self) -> Subspace {
        self.root.subspace(&("job_event",))
    }

    /// A counter bumped with every job event (what watchers wait on).
    pub fn job_events_head(&self) -> Vec<u8> {
        self.root.pack(&("job_event_head",))
    }

    /// How far the job event log has been trimmed (`events::Trim`): under
    /// the head key's tuple, so a reader that knows only the head finds it
    /// ([`trim_of`]).
    pub fn job_events_trim(&self) -> Vec<u8> {
        self.root.pack(&("job_event_head", "trim"))
    }

    /// A region's assignment event log, keyed by versionstamp.
    pub fn region_events(&self, region: &str) -> Subspace {
        self.root.subspace(&("region_event", region))
    }

    /// A counter bumped with every event of a region's log.
    pub fn region_events_head(&self, region: &str) -> Vec<u8> {
        self.root.pack(&("region_event_head", region))
    }

    /// How far a region's assignment log has been trimmed (see
    /// [`Keys::job_events_trim`]).
    pub fn region_events_trim(&self, region: &str) -> Vec<u8> {
        self.root.pack(&("region_event_head", region, "trim"))
    }
}

/// The trim record of the log whose head counter is `head`: the head's
/// tuple with one more element, outside every log's range.
pub fn trim_of(head: &[u8]) -> Vec<u8> {
    let mut key = head.to_vec();
    key.extend_from_slice(&tuple::pack(&("trim",)));
    key
}

/// Key of a not-yet-committed event in `log`; `n` orders the events of one
/// transaction.
pub fn event_key(log: &Subspace, n: u16) -> Vec<u8> {
    log.pack_with_versionstamp(&(Versionstamp::incomplete(n),))
}

/// The cursor of an event read back from `log` at `key`.
pub fn cursor_of(log: &Subspace, key: &[u8]) -> Result<Vec<u8>> {
    let (stamp,): (Versionstamp,) = log
        .unpack(key)
        .map_err(|e| GlobalError::Corrupt(format!("event key: {e}")))?;
    Ok(stamp.as_bytes().to_vec())
}

/// The first key of `log` strictly after `cursor` (everything when empty).
/// `field` names the request field for the error of a malformed cursor.
pub fn after_cursor(log: &Subspace, cursor: &[u8], field: &str) -> Result<Vec<u8>> {
    if cursor.is_empty() {
        return Ok(log.range().0);
    }
    let bytes: [u8; CURSOR_BYTES] = cursor
        .try_into()
        .map_err(|_| GlobalError::invalid(field, "not a cursor issued by this server"))?;
    let mut tr = [0u8; 10];
    tr.copy_from_slice(&bytes[..10]);
    let user = u16::from_be_bytes([bytes[10], bytes[11]]);
    let mut key = log.pack(&(Versionstamp::complete(tr, user),));
    key.push(0);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logs_trim_record_is_found_from_its_head_and_lies_outside_the_log() {
        let keys = Keys::new("t");
        assert_eq!(trim_of(&keys.job_events_head()), keys.job_events_trim());
        assert_eq!(
            trim_of(&keys.region_events_head("r")),
            keys.region_events_trim("r")
        );
        let (begin, end) = keys.job_events().range();
        let trim = keys.job_events_trim();
        assert!(trim < begin || trim >= end);
        let (begin, end) = keys.region_events("r").range();
        let trim = keys.region_events_trim("r");
        assert!(trim < begin || trim >= end);
    }
}
