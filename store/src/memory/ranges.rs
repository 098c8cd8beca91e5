//! A set of disjoint half-open key ranges, for read conflicts and for the
//! ranges a transaction cleared.
//!
//! Owns merging and intersection tests only. It must never lose a key that
//! was added: merging may widen nothing beyond the union of the inputs.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Disjoint, non-adjacent `[begin, end)` ranges keyed by their begin.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The key right after `key`: `[key, key_after(key))` holds exactly `key`.
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

impl RangeSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds `[begin, end)`, merging it with every range it overlaps or touches.
    pub(crate) fn insert(&mut self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        let mut begin = begin.to_vec();
        let mut end = end.to_vec();
        // A range starting at or before `begin` that reaches it absorbs it.
        if let Some((b, e)) = self
            .ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(begin.as_slice())))
            .next_back()
            && e.as_slice() >= begin.as_slice()
        {
            begin = b.clone();
            if e > &end {
                end = e.clone();
            }
        }
        let absorbed: Vec<Vec<u8>> = self
            .ranges
            .range::<[u8], _>((
                Bound::Included(begin.as_slice()),
                Bound::Included(end.as_slice()),
            ))
            .map(|(b, _)| b.clone())
            .collect();
        for b in absorbed {
            if let Some(e) = self.ranges.remove(&b)
                && e > end
            {
                end = e;
            }
        }
        self.ranges.insert(begin, end);
    }

    /// True when `key` lies in one of the ranges.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, e)| e.as_slice() > key)
    }

    /// True when `[begin, end)` shares at least one key with the set.
    pub(crate) fn intersects(&self, begin: &[u8], end: &[u8]) -> bool {
        if begin >= end {
            return false;
        }
        // Ranges are disjoint and sorted, so the last one starting before
        // `end` also reaches furthest: it is the only candidate.
        self.ranges
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(end)))
            .next_back()
            .is_some_and(|(_, e)| e.as_slice() > begin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_and_touching_ranges_merge_into_one() {
        let mut set = RangeSet::default();
        set.insert(b"c", b"e");
        set.insert(b"a", b"b");
        set.insert(b"b", b"c");
        set.insert(b"d", b"f");
        assert_eq!(set.ranges.len(), 1);
        assert_eq!(set.ranges.get(b"a".as_slice()), Some(&b"f".to_vec()));
    }

    #[test]
    fn intersection_respects_half_open_ends() {
        let mut set = RangeSet::default();
        set.insert(b"b", b"d");
        set.insert(b"x", b"y");
        assert!(set.intersects(b"a", b"c"));
        assert!(set.intersects(b"c", b"z"));
        assert!(!set.intersects(b"a", b"b"));
        assert!(!set.intersects(b"d", b"x"));
        assert!(set.contains(b"b"));
        assert!(!set.contains(b"d"));
        assert!(set.contains(b"x\x00"));
        assert!(!set.intersects(b"c", b"c"));
    }
}
