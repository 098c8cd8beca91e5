//! Node intents: registration, liveness transitions, cordon and drain.
//!
//! Owns the node record's state machine as written: a registration of the
//! same node and boot while registered (not DOWN) keeps the epoch (a retry),
//! anything else bumps epoch and version; a liveness change applies only
//! from the state and epoch it was decided on, and declaring a node DOWN
//! bumps its epoch (the agent's fence) in that same write; an operator's
//! cordon, drain or uncordon bumps the version so placement decided before
//! it fails its OCC check. Must never move a node out of DOWN except by a
//! new registration.

use meridian_proto::v1;

use super::overlay::{Missing, ReadSet, Tx};
use crate::error::RegionalError;
use crate::model::{NodeLiveness, NodeRecord, Res};

/// A node registering (or registering again).
#[derive(Debug, Clone)]
pub struct Register {
    pub request: v1::RegisterNodeRequest,
    pub now_unix_ms: u64,
}

impl Register {
    /// Checks the request's fields.
    pub fn validate(request: &v1::RegisterNodeRequest) -> Result<(), RegionalError> {
        if request.node_id.is_empty() || request.node_id.len() > 128 {
            return Err(RegionalError::invalid("node_id", "must be 1 to 128 bytes"));
        }
        if request.boot_id.is_empty() {
            return Err(RegionalError::invalid("boot_id", "must not be empty"));
        }
        Ok(())
    }

    pub(super) fn reads(&self, want: &mut ReadSet) {
        want.nodes.insert(self.request.node_id.clone());
    }

    pub(super) fn apply(&self, tx: &mut Tx<'_>) -> Result<NodeRecord, Missing> {
        let req = &self.request;
        let old = tx.node(&req.node_id)?.cloned();
        if let Some(o) = &old
            && o.boot_id == req.boot_id
            && o.liveness != NodeLiveness::Down
        {
            return Ok(o.clone());
        }
        let (epoch, version, cordoned, draining, reason, deadline) = match &old {
            Some(o) => (
                o.epoch + 1,
                o.version + 1,
                o.cordoned,
                o.draining,
                o.cordon_reason.clone(),
                o.drain_deadline_ms,
            ),
            None => (1, 1, false, false, String::new(), 0),
        };
        let node = NodeRecord {
            node_id: req.node_id.clone(),
            epoch,
            boot_id: req.boot_id.clone(),
            allocatable: req
                .allocatable
                .as_ref()
                .map(Res::from_proto)
                .unwrap_or_default(),
            labels: req.labels.clone().into_iter().collect(),
            zone: req.zone.clone(),
            rack: req.rack.clone(),
            liveness: NodeLiveness::Ready,
            cordoned,
            draining,
            cordon_reason: reason,
            drain_deadline_ms: deadline,
            version,
            registered_at_unix_ms: self.now_unix_ms,
            agent_version: req.agent_version.clone(),
            logs_endpoint: req.logs_endpoint.clone(),
        };
        tx.set_node(node.clone());
        Ok(node)
    }
}

/// One liveness change decided by a shard leader's sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessChange {
    pub node: String,
    /// The epoch and state the decision saw.
    pub epoch: u64,
    pub from: NodeLiveness,
    pub to: NodeLiveness,
}

/// Liveness changes of one shard's nodes.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    pub changes: Vec<LivenessChange>,
}

impl Liveness {
    pub(super) fn reads(&self, want: &mut ReadSet) {
        for c in &self.changes {
            want.nodes.insert(c.node.clone());
        }
    }

    /// Returns the changes applied (a node that moved meanwhile is skipped).
    pub(super) fn apply(&self, tx: &mut Tx<'_>) -> Result<Vec<LivenessChange>, Missing> {
        let mut applied = Vec::new();
        for c in &self.changes {
            let Some(mut node) = tx.node(&c.node)?.cloned() else {
                continue;
            };
            if node.epoch != c.epoch
                || node.liveness != c.from
                || node.liveness == NodeLiveness::Down
                || c.from == c.to
            {
                continue;
            }
            if c.to == NodeLiveness::Down {
                node.epoch += 1;
            }
            node.liveness = c.to;
            node.version += 1;
            tx.set_node(node);
            applied.push(c.clone());
        }
        Ok(applied)
    }
}

/// An operator change of a node's schedulability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cordon {
    Cordon { reason: String },
    Drain { reason: String, deadline_ms: u64 },
    Uncordon,
}

/// A cordon, drain or uncordon of one node.
#[derive(Debug, Clone)]
pub struct SetCordon {
    pub node: String,
    pub change: Cordon,
}

impl SetCordon {
    pub(super) fn reads(&self, want: &mut ReadSet) {
        want.nodes.insert(self.node.clone());
    }

    /// The node after the change; `None` when it is unknown.
    pub(super) fn apply(&self, tx: &mut Tx<'_>) -> Result<Option<NodeRecord>, Missing> {
        let Some(mut node) = tx.node(&self.node)?.cloned() else {
            return Ok(None);
        };
        let before = node.clone();
        match &self.change {
            Cordon::Cordon { reason } => {
                node.cordoned = true;
                node.cordon_reason = reason.clone();
            }
            Cordon::Drain {
                reason,
                deadline_ms,
            } => {
                node.cordoned = true;
                node.draining = true;
                node.cordon_reason = reason.clone();
                node.drain_deadline_ms = *deadline_ms;
            }
            Cordon::Uncordon => {
                node.cordoned = false;
                node.draining = false;
                node.cordon_reason.clear();
                node.drain_deadline_ms = 0;
            }
        }
        if node != before {
            node.version += 1;
            tx.set_node(node.clone());
        }
        Ok(Some(node))
    }
}
