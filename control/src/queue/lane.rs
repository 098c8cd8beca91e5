//! Priority lanes of the work queue.
//!
//! Owns the [`Lane`] enum and its order. Must never: carry scheduling policy
//! (which key goes in which lane is the caller's choice).

use std::fmt;

/// A priority lane. Ready keys in a higher lane are always handed out before
/// ready keys in a lower one; within a lane, first eligible first out.
///
/// The derived order is the priority order: `Low < Normal < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Best effort: resync sweeps, parked keys. First to be dropped when the
    /// queue is full.
    Low,
    /// Ordinary watch events.
    Normal,
    /// User-visible latency depends on it (new submissions, cancels).
    High,
    /// Safety and liveness of the control plane itself (fencing, lease loss).
    Critical,
}

impl Lane {
    /// Every lane, lowest first.
    pub const ALL: [Lane; 4] = [Lane::Low, Lane::Normal, Lane::High, Lane::Critical];

    /// Number of lanes.
    pub const COUNT: usize = 4;

    /// Dense index, 0 for [`Lane::Low`].
    pub const fn index(self) -> usize {
        match self {
            Lane::Low => 0,
            Lane::Normal => 1,
            Lane::High => 2,
            Lane::Critical => 3,
        }
    }

    /// The label used in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Lane::Low => "low",
            Lane::Normal => "normal",
            Lane::High => "high",
            Lane::Critical => "critical",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_order_index_and_all_agree() {
        for (i, lane) in Lane::ALL.iter().enumerate() {
            assert_eq!(lane.index(), i);
        }
        assert!(
            Lane::Critical > Lane::High && Lane::High > Lane::Normal && Lane::Normal > Lane::Low
        );
    }
}
