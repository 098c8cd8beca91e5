//! Placement: the pure decision of which pending task goes on which node.
//!
//! Owns [`solve`], which turns a [`Snapshot`] of one region (nodes and the
//! tasks running on them) plus a queue of [`PendingTask`]s into a
//! [`Solution`]: bindings, preemptions and the reasons the other tasks stay
//! pending; and [`verify`], an independent re-check of a solution's safety
//! properties, which `solve` checks on every solution it returns, in release
//! builds too. [`Solve`] is the seam through which a shard leader calls it.
//!
//! Must never: read a clock, draw unseeded randomness, do I/O, or let the
//! iteration order of a hash map reach a decision. The same input always gives
//! the same solution, so a shard leader that retries a batch after an OCC
//! conflict, or a test that replays a snapshot, sees the same decisions.
//!
//! How a solve proceeds (each step is one file):
//!
//! - `types`: the solver's own domain types; the tier converts from `proto`.
//! - `config`: the knobs that trade placement quality for speed.
//! - `index`: the static view of the cluster (dense node numbering in
//!   [`NodeId`] order, zones and racks, nodes grouped by label class).
//! - `state`: the mutable occupancy (resources, per-job and per-selector
//!   counts per failure domain, tenant usage) with an undo log, so a gang that
//!   cannot be placed completely is rolled back inside the solve.
//! - `order`: the order tasks are tried in: priority, then dominant-resource
//!   fairness across tenants, then FIFO.
//! - `search`: filtering and scoring of candidate nodes for one task, bounded
//!   to [`SolverConfig::max_scored_candidates`] feasible nodes.
//! - `preempt`: choosing the cheapest set of lower-priority victims on one
//!   node when a task fits nowhere.
//! - `solver`: the loop tying these together, gangs, and unschedulable
//!   diagnosis.
//! - `solution`: what a solve returns, and the reasons a task waits.
//! - `verify`: the post-condition checker.

mod config;
mod index;
mod order;
mod preempt;
mod search;
mod solution;
mod solver;
mod state;
mod types;
mod verify;

pub use config::SolverConfig;
pub use solution::{Binding, Preemption, Reason, Solution};
pub use solver::solve;
pub use types::{
    Affinity, AntiAffinity, DomainKey, GangId, LabelConstraint, LabelOp, Node, NodeId, PendingTask,
    Policy, Resources, Running, Scope, Snapshot, TaskRef, TaskSelector,
};
pub use verify::{Violation, verify};

/// How a shard leader decides placements: [`solve`] in the product. The
/// commit re-checks every decision against the store whatever this returns,
/// which is what tests prove with a deliberately wrong implementation.
pub trait Solve: Send + Sync {
    fn solve(
        &self,
        snapshot: &Snapshot,
        pending: &[PendingTask],
        config: &SolverConfig,
    ) -> Solution;
}

impl<F> Solve for F
where
    F: Fn(&Snapshot, &[PendingTask], &SolverConfig) -> Solution + Send + Sync,
{
    fn solve(
        &self,
        snapshot: &Snapshot,
        pending: &[PendingTask],
        config: &SolverConfig,
    ) -> Solution {
        self(snapshot, pending, config)
    }
}
