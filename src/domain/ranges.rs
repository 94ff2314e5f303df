//! `RangeSet`: a normalized set of half-open byte spans `[start, end)`.
//! Spans are sorted, non-empty, and never overlap or touch (touching spans are merged).

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end
    spans: BTreeMap<u64, u64>,
}

impl std::fmt::Debug for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut s = Self::new();
        for r in ranges {
            s.add(r);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Number of disjoint spans.
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// Total bytes covered.
    pub fn total_len(&self) -> u64 {
        self.spans.iter().map(|(s, e)| e - s).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.spans.iter().map(|(&s, &e)| s..e)
    }

    pub fn contains(&self, offset: u64) -> bool {
        self.spans
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, &e)| offset < e)
    }

    /// Adds `r`, merging with every span it overlaps or touches.
    pub fn add(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let (mut start, mut end) = (r.start, r.end);
        if let Some((&s, &e)) = self.spans.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        let absorbed: Vec<(u64, u64)> = self
            .spans
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in absorbed {
            self.spans.remove(&s);
            end = end.max(e);
        }
        self.spans.insert(start, end);
    }

    /// Removes `r` from the set, splitting spans that straddle its edges.
    pub fn remove(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        let mut hit: Vec<(u64, u64)> = Vec::new();
        if let Some((&s, &e)) = self.spans.range(..r.start).next_back()
            && e > r.start
        {
            hit.push((s, e));
        }
        hit.extend(self.spans.range(r.start..r.end).map(|(&s, &e)| (s, e)));
        for (s, e) in hit {
            self.spans.remove(&s);
            if s < r.start {
                self.spans.insert(s, r.start);
            }
            if e > r.end {
                self.spans.insert(r.end, e);
            }
        }
    }

    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut out = self.clone();
        for r in other.iter() {
            out.add(r);
        }
        out
    }

    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = self.clone();
        for r in other.iter() {
            out.remove(r);
        }
        out
    }

    pub fn intersect(&self, other: &RangeSet) -> RangeSet {
        self.difference(&self.difference(other))
    }

    /// The parts of `within` that the set does not cover.
    pub fn complement(&self, within: Range<u64>) -> RangeSet {
        let mut out = RangeSet::from_ranges([within.clone()]);
        for r in self.overlapping(within) {
            out.remove(r);
        }
        out
    }

    /// Spans that overlap `r`, clipped to `r`.
    pub fn overlapping(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if r.start >= r.end {
            return out;
        }
        if let Some((&s, &e)) = self.spans.range(..r.start).next_back()
            && e > r.start
        {
            out.push(s.max(r.start)..e.min(r.end));
        }
        for (&s, &e) in self.spans.range(r.start..r.end) {
            out.push(s..e.min(r.end));
        }
        out
    }

    /// The first offset at or after `from` that the set does not cover.
    pub fn next_gap(&self, from: u64) -> u64 {
        match self.spans.range(..=from).next_back() {
            Some((_, &e)) if e > from => e,
            _ => from,
        }
    }

    /// The first covered offset at or after `from`, if any.
    pub fn next_covered(&self, from: u64) -> Option<u64> {
        if self.contains(from) {
            return Some(from);
        }
        self.spans.range(from..).next().map(|(&s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNIVERSE: u64 = 256;

    fn bitmap(s: &RangeSet) -> Vec<bool> {
        (0..UNIVERSE).map(|i| s.contains(i)).collect()
    }

    fn normalized(s: &RangeSet) -> bool {
        let v: Vec<_> = s.iter().collect();
        v.iter().all(|r| r.start < r.end) && v.windows(2).all(|w| w[0].end < w[1].start)
    }

    fn ranges() -> impl Strategy<Value = Vec<Range<u64>>> {
        proptest::collection::vec(
            (0..UNIVERSE, 0..40u64).prop_map(|(s, l)| s..(s + l).min(UNIVERSE)),
            0..12,
        )
    }

    #[test]
    fn touching_spans_merge() {
        let s = RangeSet::from_ranges([0..4, 4..8, 10..12]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..8, 10..12]);
        assert_eq!(s.next_gap(0), 8);
        assert_eq!(s.next_gap(9), 9);
        assert_eq!(s.next_covered(8), Some(10));
        assert_eq!(s.next_covered(12), None);
        assert_eq!(
            s.complement(0..16).iter().collect::<Vec<_>>(),
            vec![8..10, 12..16]
        );
    }

    proptest! {
        #[test]
        fn operations_match_a_bitmap(a in ranges(), b in ranges()) {
            let sa = RangeSet::from_ranges(a.clone());
            let sb = RangeSet::from_ranges(b.clone());
            let ba = bitmap(&sa);
            let bb = bitmap(&sb);
            let mut want_a = vec![false; UNIVERSE as usize];
            for r in &a { for i in r.clone() { want_a[i as usize] = true; } }
            prop_assert_eq!(&ba, &want_a);
            let u = sa.union(&sb);
            let d = sa.difference(&sb);
            let i = sa.intersect(&sb);
            let c = sa.complement(0..UNIVERSE);
            for s in [&sa, &u, &d, &i, &c] { prop_assert!(normalized(s)); }
            for x in 0..UNIVERSE as usize {
                prop_assert_eq!(u.contains(x as u64), ba[x] || bb[x]);
                prop_assert_eq!(d.contains(x as u64), ba[x] && !bb[x]);
                prop_assert_eq!(i.contains(x as u64), ba[x] && bb[x]);
                prop_assert_eq!(c.contains(x as u64), !ba[x]);
            }
            prop_assert_eq!(sa.total_len(), ba.iter().filter(|&&x| x).count() as u64);
            for from in 0..UNIVERSE {
                let gap = sa.next_gap(from);
                prop_assert!(!sa.contains(gap));
                prop_assert!((from..gap).all(|x| sa.contains(x)));
            }
        }
    }
}
