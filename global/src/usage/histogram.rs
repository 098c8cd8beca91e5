//! The wait-time histogram of usage records and its percentiles.
//!
//! Owns the bucket numbering: exact below 32 ms, then 16 buckets per
//! doubling, so a bucket is at most 1/16 of its lower bound wide and the
//! whole `u64` range takes under a thousand buckets (counters that can be
//! added atomically, hour by hour, and summed over any range). A percentile
//! is the upper bound of the bucket holding its rank, at most 6.25 % above
//! the true value. Must never store a sample itself: only counts.

use std::collections::BTreeMap;

/// Values below this have a bucket each.
const EXACT_BELOW: u64 = 32;
/// Buckets per doubling above [`EXACT_BELOW`].
const PER_DOUBLING: u32 = 16;

/// The bucket of `value` (milliseconds).
pub fn bucket(value: u64) -> u32 {
    if value < EXACT_BELOW {
        return value as u32;
    }
    // 2^exp <= value < 2^(exp+1), exp >= 5.
    let exp = 63 - value.leading_zeros();
    let sub = ((value >> (exp - 4)) & u64::from(PER_DOUBLING - 1)) as u32;
    EXACT_BELOW as u32 + (exp - 5) * PER_DOUBLING + sub
}

/// The largest value of bucket `n`.
pub fn upper(n: u32) -> u64 {
    if u64::from(n) < EXACT_BELOW {
        return u64::from(n);
    }
    let above = n - EXACT_BELOW as u32;
    let exp = above / PER_DOUBLING + 5;
    let sub = u64::from(above % PER_DOUBLING);
    if exp > 63 {
        return u64::MAX;
    }
    let width = 1u64 << (exp - 4);
    // (16 + sub) * width - 1 + width, without overflowing at the top.
    (16 + sub) * width + (width - 1)
}

/// Counts by bucket, summed over any number of hours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: BTreeMap<u32, u64>,
}

impl Histogram {
    /// Adds `n` samples to bucket `bucket`.
    pub fn add(&mut self, bucket: u32, n: u64) {
        *self.counts.entry(bucket).or_default() += n;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in &other.counts {
            self.add(*b, *n);
        }
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The nearest-rank percentile `per_mille` / 1000 (the upper bound of
    /// its bucket); 0 when empty.
    pub fn percentile(&self, per_mille: u64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = (u128::from(total) * u128::from(per_mille)).div_ceil(1000);
        let rank = u64::try_from(rank).unwrap_or(total).clamp(1, total);
        let mut seen = 0;
        for (b, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return upper(*b);
            }
        }
        self.max()
    }

    /// The upper bound of the highest bucket with a sample; 0 when empty.
    pub fn max(&self) -> u64 {
        self.counts.keys().next_back().map_or(0, |b| upper(*b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lies_in_its_bucket_and_a_bucket_is_at_most_a_sixteenth_wide() {
        let mut values: Vec<u64> = (0..5000).collect();
        values.extend((5..64).flat_map(|e| {
            let p = 1u64 << e;
            [p - 1, p, p + 1, p + p / 3]
        }));
        values.push(u64::MAX);
        for v in values {
            let b = bucket(v);
            let hi = upper(b);
            let lo = if b == 0 { 0 } else { upper(b - 1) + 1 };
            assert!(lo <= v && v <= hi, "{v} in bucket {b} [{lo}, {hi}]");
            if v >= EXACT_BELOW {
                assert!((hi - lo) <= lo / 16, "bucket {b} [{lo}, {hi}] too wide");
            } else {
                assert_eq!(hi, v);
            }
        }
    }

    #[test]
    fn percentiles_are_the_nearest_rank_rounded_up_to_the_bucket() {
        let mut h = Histogram::default();
        for v in [10u64, 20, 30, 1000, 2000] {
            h.add(bucket(v), 1);
        }
        assert_eq!(h.count(), 5);
        // Rank 3 of 5 is 30 ms, exact below 32.
        assert_eq!(h.percentile(500), 30);
        // Rank 5 of 5 is 2000 ms, in the bucket [1984, 2047].
        assert_eq!(h.percentile(900), 2047);
        assert_eq!(h.max(), 2047);
        assert_eq!(Histogram::default().percentile(500), 0);
    }
}
