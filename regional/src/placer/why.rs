//! Why the jobs of one shard term wait, as users will read it.
//!
//! Owns the waiting reasons a shard leader has found in its rounds and not
//! yet recorded: for a job it parks, the region's nodes counted by what
//! keeps them out (`state::why`), completed by the solver's own reason when
//! some node does have room; for a job held back by its parallelism, that
//! limit; for a job it has placed entirely, an empty reason that clears
//! the old one. Only changes are recorded, so a job that
//! keeps waiting for the same reason costs no write. Must never decide a
//! binding, and never write: the loop submits what it collected.

use std::collections::BTreeMap;

use crate::placement::Solution;
use crate::state::RegionState;
use crate::state::why::{Explanation, explain};

use super::hints::Shape;
use super::round::RoundInput;

/// The solver's reason for a job taken without a solve because its shard
/// had no room at all for it.
const NO_ROOM_IN_SHARD: &str = "no room in its shard";

/// One round's reasons, with the explanations it computed (one per shape:
/// every job of a shape is judged the same by the nodes).
#[derive(Debug, Default)]
pub struct RoundWhy {
    /// The solver's first reason for each job it left unplaced.
    placer: BTreeMap<String, String>,
    explained: BTreeMap<Shape, Explanation>,
}

impl RoundWhy {
    pub fn of(input: &RoundInput, solution: &Solution) -> Self {
        let mut placer = BTreeMap::new();
        for (task, reason) in &solution.unschedulable {
            placer
                .entry(task.job_id.clone())
                .or_insert_with(|| reason.to_string());
        }
        for job in &input.no_room {
            placer
                .entry(job.clone())
                .or_insert_with(|| NO_ROOM_IN_SHARD.to_string());
        }
        RoundWhy {
            placer,
            explained: BTreeMap::new(),
        }
    }

    /// The reason `job_id` waits, judged on `state`.
    fn reason(&mut self, state: &RegionState, job_id: &str) -> Option<String> {
        let job = &state.jobs.get(job_id)?.record;
        let explanation = self
            .explained
            .entry(Shape::of(job))
            .or_insert_with(|| explain(state, job));
        let placer = self.placer.get(job_id).map_or("", String::as_str);
        Some(explanation.sentence(placer))
    }
}

/// Reasons found and not yet recorded.
#[derive(Debug, Default)]
pub struct Reasons {
    changed: BTreeMap<String, String>,
}

impl Reasons {
    /// `job_id` was parked: its reason, if it changed.
    pub fn parked(&mut self, round: &mut RoundWhy, state: &RegionState, job_id: &str) {
        let Some(reason) = round.reason(state, job_id) else {
            return;
        };
        self.note(state, job_id, reason);
    }

    /// `job_id` went through a round without being parked: once none of
    /// its tasks waits, its old reason no longer holds.
    pub fn settled(&mut self, state: &RegionState, job_id: &str) {
        let Some(job) = state.jobs.get(job_id) else {
            return;
        };
        if job.pending == 0 {
            self.note(state, job_id, String::new());
        } else if job.parallel_room() == 0 {
            // Worded without the count bound now, so it is written once,
            // not at every task end.
            let reason = format!(
                "at its parallelism limit of {} tasks at once",
                job.record.parallelism
            );
            self.note(state, job_id, reason);
        }
    }

    /// A job handed to another shard is that shard's to explain.
    pub fn forget(&mut self, job_id: &str) {
        self.changed.remove(job_id);
    }

    fn note(&mut self, state: &RegionState, job_id: &str, reason: String) {
        let stored = state.jobs.get(job_id).map(|j| &j.record.waiting_reason);
        if stored == Some(&reason) {
            self.changed.remove(job_id);
        } else {
            self.changed.insert(job_id.to_string(), reason);
        }
    }

    /// Everything collected, to record now.
    pub fn take(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.changed).into_iter().collect()
    }
}
