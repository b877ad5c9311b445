//! A set of u64 offsets kept as disjoint half-open ranges: acknowledged messages come in runs,
//! so this stays small where a set of single offsets would not.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end (exclusive), disjoint and not touching.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn contains(&self, offset: u64) -> bool {
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &end)| offset < end)
    }

    pub fn insert(&mut self, offset: u64) {
        self.insert_range(offset, offset + 1);
    }

    /// Add `[start, end)`, merging with neighbours.
    pub fn insert_range(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let overlapping: Vec<u64> = self.ranges.range(start..=end).map(|(&s, _)| s).collect();
        for s in overlapping {
            let e = self.ranges.remove(&s).unwrap_or(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }

    /// Forget everything below `floor`.
    pub fn remove_below(&mut self, floor: u64) {
        let below: Vec<u64> = self.ranges.range(..floor).map(|(&s, _)| s).collect();
        for s in below {
            let e = self.ranges.remove(&s).unwrap_or(s);
            if e > floor {
                self.ranges.insert(floor, e);
            }
        }
    }

    /// The end of the range starting exactly at `offset`, if one does.
    pub fn run_from(&self, offset: u64) -> Option<u64> {
        self.ranges
            .range(..=offset)
            .next_back()
            .filter(|(_, &end)| offset < end)
            .map(|(_, &end)| end)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many offsets in `[start, end)` the set holds.
    pub fn count_in(&self, start: u64, end: u64) -> u64 {
        self.ranges
            .iter()
            .map(|(&s, &e)| e.min(end).saturating_sub(s.max(start)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_set_of_offsets(ops in proptest::collection::vec((0u64..60, 1u64..6, any::<bool>()), 0..80), floor in 0u64..70) {
            let mut set = RangeSet::default();
            let mut model = std::collections::BTreeSet::new();
            for (start, len, single) in ops {
                if single {
                    set.insert(start);
                    model.insert(start);
                } else {
                    set.insert_range(start, start + len);
                    model.extend(start..start + len);
                }
            }
            for o in 0..70 {
                prop_assert_eq!(set.contains(o), model.contains(&o));
            }
            prop_assert_eq!(set.count_in(10, 40), model.range(10..40).count() as u64);
            // Ranges stay disjoint and non-adjacent.
            let ranges: Vec<_> = set.iter().collect();
            for w in ranges.windows(2) {
                prop_assert!(w[0].1 < w[1].0);
            }
            set.remove_below(floor);
            for o in 0..70 {
                prop_assert_eq!(set.contains(o), o >= floor && model.contains(&o));
            }
        }
    }
}
