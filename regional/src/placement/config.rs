//! The solver's tuning knobs.
//!
//! Owns the bounds that trade placement quality for speed. Must never hold
//! anything that changes which placements are legal: every setting here only
//! changes which legal placement is chosen, or how hard the solver looks.

/// Tuning of [`solve`](super::solve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolverConfig {
    /// Score at most this many feasible nodes per task (Nomad's "limit").
    ///
    /// The solver first picks the best failure domain exactly (that choice is
    /// cheap: one count per rack), then walks the nodes of that domain from a
    /// rotating start and scores only the first `max_scored_candidates`
    /// feasible ones. A larger value finds a slightly fuller (Pack) or emptier
    /// (Spread) node inside the domain; a smaller one is faster. Feasibility is
    /// never sampled: a task is declared unschedulable only after every node
    /// was checked. Zero is treated as one.
    pub max_scored_candidates: usize,
    /// Whether a task that fits nowhere may preempt strictly lower-priority,
    /// preemptible running tasks.
    pub preemption: bool,
    /// How many victim combinations the exact minimum-victim search may try on
    /// one node before settling for the greedy (still irreducible) set.
    pub max_victim_combinations: usize,
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig {
            max_scored_candidates: 64,
            preemption: true,
            max_victim_combinations: 4096,
        }
    }
}
