//! What a node knows of its region's lease and of its own liveness there,
//! and the heartbeats that keep that knowledge fresh.
//!
//! Owns the heartbeat call and its answer (the pace the region asks for,
//! the lease time left, orphans to stop), the node's region-lease deadline,
//! the stop of `failover` tasks before that deadline, and until when the
//! region surely counts the node alive (no task starts past it). Must never
//! stop a `keep_running` task for the lease, and never take a region
//! without a lease (`0` remaining) for one whose lease ran out.

use std::time::Duration;

use meridian_control::Instant;
use meridian_control::planted::{Bug, on};
use meridian_proto::v1::{
    HeartbeatRequest, HeartbeatResponse, NodeUsage, RegionLossPolicy, TaskAttempt,
};

use super::NodeAgent;
use crate::error::AgentError;
use crate::tasks::StopReason;

impl NodeAgent {
    pub(super) async fn heartbeat(&mut self) -> Result<(), AgentError> {
        let request = self.heartbeat_request();
        let sent_at = self.clock.now();
        let uplink = self.link.uplink()?;
        let resp = self
            .call(async move { uplink.heartbeat(request).await.map(tonic::Response::new) })
            .await?;
        self.heartbeat_answered(sent_at, resp)
    }

    pub(super) fn heartbeat_request(&self) -> HeartbeatRequest {
        HeartbeatRequest {
            node_id: self.spec.node_id.clone(),
            node_epoch: self.epoch,
            running: self.tasks.live().keys().cloned().collect(),
            usage: Some(NodeUsage::default()),
            applied_cursor: self.cursor.clone(),
        }
    }

    /// Takes the region's answer to a heartbeat sent at `sent_at`.
    pub(super) fn heartbeat_answered(
        &mut self,
        sent_at: Instant,
        resp: HeartbeatResponse,
    ) -> Result<(), AgentError> {
        if resp.reregister {
            return Err(AgentError::Fenced { epoch: self.epoch });
        }
        self.set_heartbeat_interval(resp.heartbeat_interval_ms);
        self.set_lease(sent_at, resp.region_lease_remaining_ms);
        self.heard(sent_at);
        for orphan in resp.stop {
            let grace = self.grace_of(&orphan);
            self.tasks.stop(&orphan, StopReason::Orphan, grace);
        }
        Ok(())
    }

    pub(super) fn set_lease(&mut self, sent_at: Instant, remaining_ms: u64) {
        self.lease_deadline = next_lease_deadline(self.lease_deadline, sent_at, remaining_ms);
    }

    /// The region answered a call sent at `sent_at`: it heard the node no
    /// earlier than that, so it counts the node alive for at least the node
    /// timeout from then.
    pub(super) fn heard(&mut self, sent_at: Instant) {
        if let Some(timeout) = self.node_timeout {
            let until = sent_at + timeout;
            self.alive_until = Some(self.alive_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Whether the region may have declared this node dead by now: nothing
    /// it answered was sent within its node timeout. A task started now
    /// could run beside the same task placed on another node since.
    pub(super) fn may_be_declared_dead(&self) -> bool {
        self.alive_until
            .is_some_and(|until| self.clock.now() >= until)
    }

    pub(super) fn set_heartbeat_interval(&mut self, ms: u64) {
        if ms > 0 {
            self.heartbeat_every = Duration::from_millis(ms).max(self.opts.min_heartbeat);
        }
    }

    /// When the next failover task must be stopped so that it has exited by
    /// the region-lease deadline.
    pub(super) fn next_failover_stop(&self) -> Option<Instant> {
        if on(Bug::AgentIgnoresRegionLease) {
            return None;
        }
        let deadline = self.lease_deadline?;
        self.tasks
            .live()
            .values()
            .filter(|t| t.stop_reason.is_none() && fails_over(t.policy))
            .map(|t| Instant::from_epoch(deadline.since_epoch().saturating_sub(t.grace)))
            .min()
    }

    /// When to beat ahead of the pace the region asked for: a call's time
    /// before this node's view of the region lease would make it stop a
    /// failover task, so that an answer that extends the lease is in first.
    /// A region renews its lease at a third of its length and a node beats
    /// up to every ten seconds, so at the plain pace a task's stop grace can
    /// run out between two answers of a region whose lease is fine. Never
    /// sooner than half the pace after the last beat: while a region's
    /// lease is in doubt its nodes beat at most twice as often as it asked,
    /// not in a storm.
    pub(super) fn early_beat(&self, last_beat: Instant) -> Option<Instant> {
        let stop = self.next_failover_stop()?;
        let ahead = Instant::from_epoch(stop.since_epoch().saturating_sub(self.opts.call_timeout));
        let floor = last_beat + (self.heartbeat_every / 2).max(self.opts.min_heartbeat);
        Some(ahead.max(floor))
    }

    pub(super) fn failover_sleep(&self) -> Option<meridian_control::Sleep> {
        self.next_failover_stop()
            .map(|at| self.clock.sleep_until(at))
    }

    /// A task of `policy` with stop grace `grace` started now would have to
    /// be stopped at once for the region lease: it must not start.
    pub(super) fn lease_ran_out_for(&self, policy: RegionLossPolicy, grace: Duration) -> bool {
        self.lease_start_by(policy, grace)
            .is_some_and(|by| self.clock.now() >= by)
    }

    /// The last instant a task of `policy` with stop grace `grace` may
    /// start for the region lease (`None`: the lease does not bound it).
    fn lease_start_by(&self, policy: RegionLossPolicy, grace: Duration) -> Option<Instant> {
        if !fails_over(policy) {
            return None;
        }
        let deadline = self.lease_deadline?;
        Some(Instant::from_epoch(
            deadline.since_epoch().saturating_sub(grace),
        ))
    }

    /// The instant from which a task of `policy` and `grace` must not start
    /// any more, by both rules above: the region may count the node dead,
    /// or the lease bounds it. Given to the executor, which checks it again
    /// just before the program starts (the agent may be stopped between the
    /// node's check and the spawn).
    pub(super) fn start_by(&self, policy: RegionLossPolicy, grace: Duration) -> Option<Instant> {
        match (self.alive_until, self.lease_start_by(policy, grace)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn enforce_region_lease(&mut self) {
        let Some(deadline) = self.lease_deadline else {
            return;
        };
        let now = self.clock.now();
        let due: Vec<(TaskAttempt, Duration)> = self
            .tasks
            .live()
            .iter()
            .filter(|(_, t)| {
                t.stop_reason.is_none() && fails_over(t.policy) && now + t.grace >= deadline
            })
            .map(|(a, t)| (a.clone(), t.grace))
            .collect();
        for (a, grace) in due {
            tracing::warn!(node = %self.spec.node_id, task = ?a, "region lease ran out: stopping failover task");
            self.tasks.stop(&a, StopReason::RegionLoss, grace);
            self.probe.update(|p| p.region_loss_stops += 1);
        }
    }
}

/// The region-lease deadline after a Register or Heartbeat response sent at
/// `sent_at` that reports `remaining_ms`.
///
/// `0` means the region holds no lease (it is not linked to a global tier,
/// or has not (re)linked since it started): that is no news about a
/// deadline, not an expired one. It leaves the current deadline as it is, so
/// a lease the region stopped renewing still runs out when it would have,
/// and a node that never heard of a lease has no deadline. A positive value
/// replaces the deadline (the latest response wins).
pub(super) fn next_lease_deadline(
    current: Option<Instant>,
    sent_at: Instant,
    remaining_ms: u64,
) -> Option<Instant> {
    if remaining_ms == 0 {
        current
    } else {
        Some(sent_at + Duration::from_millis(remaining_ms))
    }
}

pub(super) fn fails_over(policy: RegionLossPolicy) -> bool {
    policy != RegionLossPolicy::KeepRunning || on(Bug::AgentStopsKeepRunningOnLeaseLoss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_epoch(Duration::from_millis(ms))
    }

    #[test]
    fn a_region_without_a_lease_sets_no_deadline_at_registration() {
        assert_eq!(next_lease_deadline(None, at(5_000), 0), None);
    }

    #[test]
    fn a_region_without_a_lease_leaves_an_earlier_deadline_in_place() {
        assert_eq!(
            next_lease_deadline(Some(at(9_000)), at(5_000), 0),
            Some(at(9_000))
        );
    }

    #[test]
    fn a_reported_lease_counts_from_when_the_call_was_sent_and_replaces_the_deadline() {
        assert_eq!(
            next_lease_deadline(Some(at(9_000)), at(5_000), 30_000),
            Some(at(35_000))
        );
        assert_eq!(
            next_lease_deadline(Some(at(90_000)), at(5_000), 1_000),
            Some(at(6_000))
        );
    }
}
