//! Choosing victims when a task fits nowhere.
//!
//! Owns the preemption rule: a task may evict running tasks that are
//! preemptible and of strictly lower priority, all on one node (the node the
//! task is then bound to), and only as many as it needs. Among all nodes that
//! pass the task's filters and anti-affinity, the plan with the fewest
//! victims wins; then the one whose highest victim priority is lowest; then the
//! lowest sum of victim priorities; then the lowest node id.
//!
//! On one node the victim set is found exactly (combinations by increasing
//! size, lowest priorities first) while that stays under
//! `max_victim_combinations`; beyond that the greedy Kubernetes-style set is
//! used: start from every eligible victim and spare them again from the
//! highest priority down while the rest still makes room. That set is
//! irreducible (no victim can be spared) though not always the smallest.
//!
//! Cost: a preemption search looks at every node, so it is the slow path; it
//! only runs for a task nothing can hold, and the solver remembers a failed
//! search per task shape until resources are released.
//!
//! Must never: pick a victim of equal or higher priority, a non-preemptible
//! one, one already evicted, or tasks placed by this solve; nor split victims
//! across nodes. Anti-affinity is judged with the victims still present,
//! which can only refuse a node, never admit a wrong one.

use super::index::{Amount, ClusterIndex, Filters, Verdict};
use super::state::{RunInfo, State, TaskInfo};

/// Evict `victims` (indices into the running list) on `node`, then bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub node: u32,
    pub victims: Vec<u32>,
}

/// (victims, highest victim priority, sum of victim priorities, node): lower
/// is better.
type Cost = (usize, i32, i64, u32);

struct Candidate {
    running: u32,
    priority: i32,
    amount: Amount,
}

pub(crate) fn find(
    ix: &ClusterIndex<'_>,
    filters: &Filters<'_>,
    state: &State,
    task: &TaskInfo,
    running: &[RunInfo],
    on_node: &[Vec<u32>],
    max_combinations: usize,
) -> Option<Plan> {
    let request = task.footprint.amount;
    let mut best: Option<(Cost, Plan)> = None;
    let mut candidates: Vec<Candidate> = Vec::new();
    for node in 0..ix.len() as u32 {
        let n = node as usize;
        if !ix.nodes[n].schedulable
            || filters.verdict(task.filter, ix.class_of[n]) != Verdict::Fits
            || !request.within(ix.capacity[n])
            || !(task.shape_only || state.anti_affinity_allows(ix, &task.footprint, node))
        {
            continue;
        }
        candidates.clear();
        candidates.extend(
            on_node[n]
                .iter()
                .map(|&r| (r, &running[r as usize]))
                .filter(|(r, info)| {
                    !state.evicted[*r as usize] && info.preemptible && info.priority < task.priority
                })
                .map(|(r, info)| Candidate {
                    running: r,
                    priority: info.priority,
                    amount: info.footprint.amount,
                }),
        );
        let deficit = state.used[n].plus(request).minus(ix.capacity[n]);
        let total = candidates
            .iter()
            .fold(Amount::default(), |sum, c| sum.plus(c.amount));
        if !deficit.within(total) {
            continue;
        }
        let lower_bound = lower_bound(&candidates, deficit);
        if best
            .as_ref()
            .is_some_and(|((count, ..), _)| lower_bound > *count)
        {
            continue;
        }
        candidates.sort_by_key(|c| (c.priority, c.running));
        let chosen = exact(&candidates, deficit, lower_bound, max_combinations)
            .unwrap_or_else(|| greedy(&candidates, deficit));
        let cost: Cost = (
            chosen.len(),
            chosen
                .iter()
                .map(|&i| candidates[i].priority)
                .max()
                .unwrap_or(i32::MIN),
            chosen
                .iter()
                .map(|&i| i64::from(candidates[i].priority))
                .sum(),
            node,
        );
        if best.as_ref().is_none_or(|(c, _)| cost < *c) {
            let victims = chosen.iter().map(|&i| candidates[i].running).collect();
            best = Some((cost, Plan { node, victims }));
        }
    }
    best.map(|(_, plan)| plan)
}

/// The fewest victims that could possibly cover `deficit`: per dimension, the
/// count of the largest candidates needed to cover it alone.
fn lower_bound(candidates: &[Candidate], deficit: Amount) -> usize {
    let per_dim = |need: u64, get: fn(&Amount) -> u64| -> usize {
        if need == 0 {
            return 0;
        }
        let mut sizes: Vec<u64> = candidates.iter().map(|c| get(&c.amount)).collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let mut sum = 0u64;
        for (i, s) in sizes.iter().enumerate() {
            sum = sum.saturating_add(*s);
            if sum >= need {
                return i + 1;
            }
        }
        sizes.len()
    };
    per_dim(deficit.cpu, |a| a.cpu)
        .max(per_dim(deficit.mem, |a| a.mem))
        .max(per_dim(deficit.gpus, |a| a.gpus))
        .max(usize::from(!deficit.is_zero()))
}

/// The best victim set by (size, highest priority, priority sum), searching
/// sizes upwards from `from`; `None` if the budget ran out first. Candidates
/// are sorted by priority, so a combination's last member is its highest.
fn exact(
    candidates: &[Candidate],
    deficit: Amount,
    from: usize,
    budget: usize,
) -> Option<Vec<usize>> {
    if deficit.is_zero() {
        return Some(Vec::new());
    }
    let n = candidates.len();
    let mut tried = 0usize;
    for k in from.max(1)..=n {
        let mut best: Option<((i32, i64), Vec<usize>)> = None;
        let mut combo: Vec<usize> = (0..k).collect();
        loop {
            tried += 1;
            let sum = combo
                .iter()
                .fold(Amount::default(), |s, &i| s.plus(candidates[i].amount));
            if deficit.within(sum) {
                let key = (
                    candidates[combo[k - 1]].priority,
                    combo
                        .iter()
                        .map(|&i| i64::from(candidates[i].priority))
                        .sum(),
                );
                if best.as_ref().is_none_or(|(b, _)| key < *b) {
                    best = Some((key, combo.clone()));
                }
            }
            if tried >= budget {
                return best.map(|(_, c)| c);
            }
            if !next_combination(&mut combo, n) {
                break;
            }
        }
        if let Some((_, c)) = best {
            return Some(c);
        }
    }
    None
}

/// Advance `combo` (strictly increasing indices below `n`) to the next
/// combination in lexicographic order; false after the last.
fn next_combination(combo: &mut [usize], n: usize) -> bool {
    let k = combo.len();
    let mut i = k;
    while i > 0 {
        i -= 1;
        if combo[i] < n - k + i {
            combo[i] += 1;
            for j in i + 1..k {
                combo[j] = combo[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// Every candidate, then spare them from the highest priority down while the
/// rest still covers `deficit`.
fn greedy(candidates: &[Candidate], deficit: Amount) -> Vec<usize> {
    let mut chosen = vec![true; candidates.len()];
    let mut sum = candidates
        .iter()
        .fold(Amount::default(), |s, c| s.plus(c.amount));
    for i in (0..candidates.len()).rev() {
        let without = sum.minus(candidates[i].amount);
        if deficit.within(without) {
            chosen[i] = false;
            sum = without;
        }
    }
    (0..candidates.len()).filter(|&i| chosen[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(running: u32, priority: i32, cpu: u64) -> Candidate {
        Candidate {
            running,
            priority,
            amount: Amount {
                cpu,
                mem: 0,
                gpus: 0,
            },
        }
    }

    fn need(cpu: u64) -> Amount {
        Amount {
            cpu,
            mem: 0,
            gpus: 0,
        }
    }

    #[test]
    fn exact_prefers_one_large_victim_over_two_small_ones() {
        let cands = [c(0, 1, 300), c(1, 1, 300), c(2, 5, 700)];
        assert_eq!(exact(&cands, need(600), 1, 100), Some(vec![2]));
    }

    #[test]
    fn exact_prefers_lower_priorities_among_sets_of_equal_size() {
        let cands = [c(0, 1, 500), c(1, 2, 500), c(2, 3, 500)];
        assert_eq!(exact(&cands, need(900), 1, 100), Some(vec![0, 1]));
    }

    #[test]
    fn the_greedy_set_is_irreducible() {
        let cands = [c(0, 1, 100), c(1, 2, 100), c(2, 3, 900)];
        // Spares 2 first (the rest does not cover), then 1, then 0.
        let chosen = greedy(&cands, need(950));
        assert_eq!(chosen, vec![0, 2]);
        for skip in &chosen {
            let rest: u64 = chosen
                .iter()
                .filter(|i| *i != skip)
                .map(|&i| cands[i].amount.cpu)
                .sum();
            assert!(rest < 950);
        }
    }

    #[test]
    fn an_exhausted_budget_returns_the_best_set_found_so_far_or_none() {
        let cands = [c(0, 1, 100), c(1, 1, 100), c(2, 1, 100)];
        assert_eq!(exact(&cands, need(300), 1, 2), None);
        assert_eq!(exact(&cands, need(100), 1, 1), Some(vec![0]));
    }

    #[test]
    fn combinations_are_enumerated_in_lexicographic_order() {
        let mut combo = vec![0, 1];
        let mut all = vec![combo.clone()];
        while next_combination(&mut combo, 4) {
            all.push(combo.clone());
        }
        assert_eq!(
            all,
            vec![
                vec![0, 1],
                vec![0, 2],
                vec![0, 3],
                vec![1, 2],
                vec![1, 3],
                vec![2, 3]
            ]
        );
    }
}
