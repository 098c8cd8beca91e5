//! Which shard a node (or a job) belongs to: a stable hash and jump
//! consistent hashing.
//!
//! Owns the mapping `id -> shard` for a given shard count. The hash is
//! FNV-1a 64 over the id's bytes (fixed forever: it is part of the stored
//! layout's meaning, so it must never depend on a process-local seed), and the
//! bucket is chosen with jump consistent hashing, so growing the count from `n`
//! to `n + 1` moves only about `1 / (n + 1)` of the nodes.
//!
//! Must never: change its output for an existing `(id, count)` pair.

/// FNV-1a, 64 bits.
pub fn stable_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping and Veach, 2014): a bucket in `0..buckets`.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = ((key >> 33) + 1) as f64;
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / divisor)) as i64;
    }
    b as u32
}

/// The shard of node `node_id` among `count` shards.
pub fn shard_of_node(node_id: &str, count: u32) -> u32 {
    jump(stable_hash(node_id), count)
}

/// The shard a new job goes to when that shard has room for it: spreads
/// jobs evenly over the shards (the intake picks another shard when this one
/// has no room, see `state::fit::owner_for`).
pub fn shard_of_job(job_id: &str, count: u32) -> u32 {
    jump(stable_hash(job_id), count.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_of_a_node_id_never_changes() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of_node("node-1", 1), 0);
    }

    #[test]
    fn growing_the_shard_count_by_one_moves_few_nodes() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("node-{i}")).collect();
        let moved = ids
            .iter()
            .filter(|id| shard_of_node(id, 8) != shard_of_node(id, 9))
            .count();
        // Ideal is 1/9 of the nodes; allow some slack.
        assert!(moved < 1_400, "moved {moved}");
        let mut per_shard = [0usize; 8];
        for id in &ids {
            per_shard[shard_of_node(id, 8) as usize] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (1_100..1_400).contains(&n)),
            "{per_shard:?}"
        );
    }

    #[test]
    fn jobs_spread_over_every_shard() {
        let mut per_shard = [0usize; 4];
        for i in 0..4_000 {
            per_shard[shard_of_job(&format!("job-{i}"), 4) as usize] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (850..1_150).contains(&n)),
            "{per_shard:?}"
        );
    }
}
