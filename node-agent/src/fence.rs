//! Command fencing: the highest shard epoch seen per shard.
//!
//! Owns the rule "a command carrying a lower shard epoch than the highest
//! seen for its shard is refused". Must never look at anything but epochs.

use std::collections::BTreeMap;

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its shard epoch is below the highest seen for the shard.
    StaleShardEpoch { seen: u64, highest: u64 },
    /// It was bound under another node epoch than the agent's current one.
    WrongNodeEpoch { command: u64, current: u64 },
}

/// Highest shard epoch seen per shard id.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardEpochs {
    highest: BTreeMap<u32, u64>,
}

impl ShardEpochs {
    /// Admits a command of `(shard_id, shard_epoch)` bound under
    /// `command_node_epoch`, remembering a new highest shard epoch; refuses
    /// stale ones without changing anything.
    pub fn admit(
        &mut self,
        shard_id: u32,
        shard_epoch: u64,
        command_node_epoch: u64,
        current_node_epoch: u64,
    ) -> Result<(), Refusal> {
        let highest = self.highest.get(&shard_id).copied().unwrap_or(0);
        if shard_epoch < highest {
            return Err(Refusal::StaleShardEpoch {
                seen: shard_epoch,
                highest,
            });
        }
        if command_node_epoch != current_node_epoch {
            return Err(Refusal::WrongNodeEpoch {
                command: command_node_epoch,
                current: current_node_epoch,
            });
        }
        self.highest.insert(shard_id, shard_epoch);
        Ok(())
    }

    /// Highest epoch seen for `shard_id` (0 when none).
    pub fn highest(&self, shard_id: u32) -> u64 {
        self.highest.get(&shard_id).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_shard_epoch_is_refused_after_a_higher_one() {
        let mut f = ShardEpochs::default();
        assert_eq!(f.admit(1, 5, 7, 7), Ok(()));
        assert_eq!(
            f.admit(1, 4, 7, 7),
            Err(Refusal::StaleShardEpoch {
                seen: 4,
                highest: 5
            })
        );
        assert_eq!(f.admit(1, 5, 7, 7), Ok(()));
        assert_eq!(f.admit(2, 1, 7, 7), Ok(()));
        assert_eq!(f.highest(1), 5);
    }

    #[test]
    fn a_command_bound_under_another_node_epoch_is_refused() {
        let mut f = ShardEpochs::default();
        assert_eq!(
            f.admit(0, 1, 6, 7),
            Err(Refusal::WrongNodeEpoch {
                command: 6,
                current: 7
            })
        );
        assert_eq!(f.highest(0), 0);
    }
}
