//! The order in which pending tasks are tried.
//!
//! Owns the queue discipline: strictly by priority (higher first); within one
//! priority, dominant-resource fairness (DRF) across tenants; within one
//! tenant, FIFO (the order of the pending slice).
//!
//! DRF: the next task comes from the tenant whose dominant share (the largest
//! of its CPU, memory and GPU usage in the region, each as a fraction of the
//! region's schedulable capacity, counting running tasks and what this solve
//! has bound so far) is smallest. Equal shares go to the tenant whose next task
//! was queued first, so two tenants starting from nothing alternate task by
//! task, and with equal shapes they split scarce capacity evenly. Round-robin
//! would ignore that one tenant already holds most of the region; DRF is what
//! Mesos and YARN use for multi-resource fairness.
//!
//! Must never: skip or reorder tasks of one tenant at one priority (FIFO is a
//! promise to users), or let a lower priority go before a higher one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

struct Level {
    /// Each tenant's tasks at this priority, oldest first.
    queues: BTreeMap<u32, VecDeque<u32>>,
    /// (share, head task, tenant) of each tenant with tasks left; the first
    /// entry goes next. The head task breaks ties and is unique.
    ready: BTreeSet<(u64, u32, u32)>,
    /// The entry of each tenant currently in `ready`.
    entry_of: BTreeMap<u32, (u64, u32, u32)>,
    started: bool,
}

pub(crate) struct Queue {
    /// Highest priority first.
    levels: Vec<Level>,
    current: usize,
}

impl Queue {
    /// `tasks` yields (pending index, priority, tenant) in pending order.
    pub fn new(tasks: impl IntoIterator<Item = (u32, i32, u32)>) -> Self {
        let mut by_priority: BTreeMap<std::cmp::Reverse<i32>, BTreeMap<u32, VecDeque<u32>>> =
            BTreeMap::new();
        for (task, priority, tenant) in tasks {
            by_priority
                .entry(std::cmp::Reverse(priority))
                .or_default()
                .entry(tenant)
                .or_default()
                .push_back(task);
        }
        Queue {
            levels: by_priority
                .into_values()
                .map(|queues| Level {
                    queues,
                    ready: BTreeSet::new(),
                    entry_of: BTreeMap::new(),
                    started: false,
                })
                .collect(),
            current: 0,
        }
    }

    /// The next task to try, given each tenant's current dominant share.
    pub fn pop(&mut self, share: impl Fn(u32) -> u64) -> Option<u32> {
        loop {
            let level = self.levels.get_mut(self.current)?;
            if !level.started {
                // Shares are read when a level starts, not when the queue is
                // built: higher levels have changed them since.
                level.started = true;
                let tenants: Vec<u32> = level.queues.keys().copied().collect();
                for tenant in tenants {
                    level.enqueue(tenant, share(tenant));
                }
            }
            let Some(&(s, task, tenant)) = level.ready.first() else {
                self.current += 1;
                continue;
            };
            level.ready.remove(&(s, task, tenant));
            level.entry_of.remove(&tenant);
            let queue = level
                .queues
                .get_mut(&tenant)
                .expect("ready tenant has a queue");
            let popped = queue.pop_front();
            debug_assert_eq!(popped, Some(task));
            level.enqueue(tenant, s);
            return Some(task);
        }
    }

    /// Tell the queue that `tenant`'s share is now `share`.
    pub fn reshare(&mut self, tenant: u32, share: u64) {
        let Some(level) = self.levels.get_mut(self.current) else {
            return;
        };
        if level.started && level.entry_of.contains_key(&tenant) {
            let old = level.entry_of.remove(&tenant).expect("checked above");
            level.ready.remove(&old);
            level.enqueue(tenant, share);
        }
    }
}

impl Level {
    fn enqueue(&mut self, tenant: u32, share: u64) {
        if let Some(&head) = self.queues.get(&tenant).and_then(|q| q.front()) {
            let entry = (share, head, tenant);
            self.ready.insert(entry);
            self.entry_of.insert(tenant, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut Queue, shares: &BTreeMap<u32, u64>) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop(|t| shares.get(&t).copied().unwrap_or(0))).collect()
    }

    #[test]
    fn higher_priority_levels_are_served_first_and_fifo_within_a_tenant() {
        let mut q = Queue::new([(0, 1, 0), (1, 5, 0), (2, 1, 0), (3, 5, 0)]);
        assert_eq!(drain(&mut q, &BTreeMap::new()), vec![1, 3, 0, 2]);
    }

    #[test]
    fn tenants_with_equal_shares_alternate_in_submission_order() {
        let tenant_of = BTreeMap::from([(0, 1), (1, 1), (2, 0), (3, 0)]);
        let mut q = Queue::new(tenant_of.iter().map(|(&task, &tenant)| (task, 0, tenant)));
        let mut shares: BTreeMap<u32, u64> = BTreeMap::new();
        let mut order = Vec::new();
        // Each placed task raises its tenant's share by the same amount.
        while let Some(task) = q.pop(|t| shares.get(&t).copied().unwrap_or(0)) {
            order.push(task);
            let share = shares.entry(tenant_of[&task]).or_default();
            *share += 1;
            q.reshare(tenant_of[&task], *share);
        }
        // Tenant 1 queued first, so it leads; then strict alternation.
        assert_eq!(order, vec![0, 2, 1, 3]);
    }

    #[test]
    fn the_tenant_with_the_smaller_dominant_share_goes_first() {
        let mut q = Queue::new([(0, 0, 0), (1, 0, 1)]);
        let shares = BTreeMap::from([(0, 500), (1, 100)]);
        assert_eq!(drain(&mut q, &shares), vec![1, 0]);
    }

    #[test]
    fn a_reshare_reorders_the_remaining_tasks() {
        let mut q = Queue::new([(0, 0, 0), (1, 0, 0), (2, 0, 1), (3, 0, 1)]);
        assert_eq!(q.pop(|_| 0), Some(0));
        q.reshare(0, 900);
        assert_eq!(q.pop(|_| 0), Some(2));
        assert_eq!(q.pop(|_| 0), Some(3));
        assert_eq!(q.pop(|_| 0), Some(1));
        assert_eq!(q.pop(|_| 0), None);
    }
}
