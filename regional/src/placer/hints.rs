//! Which waiting jobs a change can help: queueing hints.
//!
//! Owns the jobs of one shard term that could not be placed, grouped by
//! shape (what one task needs and which node labels it accepts), and the
//! answer to "this node has more room now: whom does it help?". Only jobs of
//! a shape that fits the node are woken, in priority then arrival order, and
//! only as many tasks as the node's room holds; every other waiting job stays
//! asleep until a change that concerns it, or its backoff runs out (the
//! repair path when no event arrives). Must never decide a binding: a woken
//! job goes back through the solver.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::JobRecord;
use crate::state::NodeEntry;
use crate::state::fit::room_for;

/// What one task of a job needs from a node, as a grouping key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shape {
    cpu: u64,
    mem: u64,
    gpus: u32,
    gpu_type: String,
    constraints: Vec<(String, i32, Vec<String>)>,
}

impl Shape {
    pub fn of(job: &JobRecord) -> Self {
        Shape {
            cpu: job.resources.cpu,
            mem: job.resources.mem,
            gpus: job.resources.gpus,
            gpu_type: job.resources.gpu_type.clone(),
            constraints: job.constraints.clone(),
        }
    }
}

/// Order of waking within a shape: higher priority first, then older.
type Turn = (std::cmp::Reverse<i32>, u64, String);

#[derive(Debug, Clone)]
struct Parked {
    shape: Shape,
    turn: Turn,
    pending: u32,
}

/// One shard term's waiting jobs.
#[derive(Debug, Default)]
pub struct Waiting {
    jobs: BTreeMap<String, Parked>,
    by_shape: BTreeMap<Shape, (JobRecord, BTreeSet<Turn>)>,
}

impl Waiting {
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn contains(&self, job: &str) -> bool {
        self.jobs.contains_key(job)
    }

    /// Parks `job` with `pending` tasks that found no room.
    pub fn park(&mut self, job: &JobRecord, pending: u32) {
        self.unpark(&job.job_id);
        let shape = Shape::of(job);
        let turn = (
            std::cmp::Reverse(job.priority),
            job.created_at_unix_ms,
            job.job_id.clone(),
        );
        self.by_shape
            .entry(shape.clone())
            .or_insert_with(|| (job.clone(), BTreeSet::new()))
            .1
            .insert(turn.clone());
        self.jobs.insert(
            job.job_id.clone(),
            Parked {
                shape,
                turn,
                pending: pending.max(1),
            },
        );
    }

    /// Forgets `job` (placed, changed, gone).
    pub fn unpark(&mut self, job: &str) {
        let Some(p) = self.jobs.remove(job) else {
            return;
        };
        if let Some((_, turns)) = self.by_shape.get_mut(&p.shape) {
            turns.remove(&p.turn);
            if turns.is_empty() {
                self.by_shape.remove(&p.shape);
            }
        }
    }

    /// The waiting jobs `node` has room for now, in the order they should
    /// get it; they are unparked. A shape the node cannot take wakes nobody.
    pub fn wake_for(&mut self, node: &NodeEntry) -> Vec<String> {
        let mut woken = Vec::new();
        for (example, turns) in self.by_shape.values() {
            let constraints = crate::state::fit::constraints(example);
            let mut room = room_for(node, example, &constraints);
            for (_, _, job) in turns {
                if room == 0 {
                    break;
                }
                let pending = self.jobs.get(job).map_or(1, |p| u64::from(p.pending));
                room = room.saturating_sub(pending);
                woken.push(job.clone());
            }
        }
        for job in &woken {
            self.unpark(job);
        }
        woken
    }

    /// Every waiting job (for a full retry).
    pub fn all(&self) -> Vec<String> {
        self.jobs.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeRecord, Res};
    use crate::state::NodeEntry;

    fn job(id: &str, cpu: u64, priority: i32, created: u64) -> JobRecord {
        let mut j = crate::model::job_from_spec(
            id,
            1,
            "",
            &crate::jobs::simple_spec("t", 1, cpu, 1),
            created,
        )
        .expect("job");
        j.priority = priority;
        j
    }

    fn node(cpu: u64, used: u64) -> NodeEntry {
        NodeEntry {
            record: Some(NodeRecord::ready_for_tests("n", cpu, 1 << 40)),
            allocated: Res {
                cpu: used,
                mem: 0,
                gpus: 0,
                gpu_type: String::new(),
            },
            ..NodeEntry::default()
        }
    }

    #[test]
    fn a_freed_slot_wakes_only_the_jobs_it_fits_in_priority_then_arrival_order() {
        let mut w = Waiting::default();
        w.park(&job("small-late", 100, 0, 20), 1);
        w.park(&job("small-early", 100, 0, 10), 1);
        w.park(&job("small-urgent", 100, 5, 30), 1);
        w.park(&job("big", 1_000, 9, 1), 1);
        // Room for two small tasks, not for the big one.
        let woken = w.wake_for(&node(1_000, 800));
        assert_eq!(woken, vec!["small-urgent", "small-early"]);
        assert!(w.contains("small-late") && w.contains("big"));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_job_with_many_pending_tasks_takes_all_the_room_it_finds() {
        let mut w = Waiting::default();
        w.park(&job("wide", 100, 0, 1), 40);
        w.park(&job("next", 100, 0, 2), 1);
        let woken = w.wake_for(&node(1_000, 0));
        assert_eq!(
            woken,
            vec!["wide"],
            "ten slots all go to the first job's forty tasks"
        );
    }
}
