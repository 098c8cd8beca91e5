//! `TaskCounts` by state, in lifecycle order, under the lower-case state
//! names the CLI prints and the console filters by.

use crate::v1::TaskCounts;

impl TaskCounts {
    /// `(state, count)` for every task state, in lifecycle order.
    pub fn by_state(&self) -> [(&'static str, u32); 8] {
        [
            ("pending", self.pending),
            ("placed", self.placed),
            ("starting", self.starting),
            ("running", self.running),
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("killed", self.killed),
            ("lost", self.lost),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_state_name_every_state_once_in_lifecycle_order() {
        let c = TaskCounts {
            pending: 1,
            placed: 2,
            starting: 3,
            running: 4,
            succeeded: 5,
            failed: 6,
            killed: 7,
            lost: 8,
        };
        let by = c.by_state();
        assert_eq!(
            by.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(by[0].0, "pending");
        assert_eq!(by[7].0, "lost");
    }
}
