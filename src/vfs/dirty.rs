//! `DirtyData`: the bytes written to an open file and not yet committed, kept as normalized
//! spans (sorted, never overlapping or touching) with their contents.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::domain::RangeSet;

/// Spans with their bytes: (file offset, bytes), sorted and disjoint.
pub type Spans = Vec<(u64, Vec<u8>)>;

/// What a span costs in memory beyond its bytes, charged against the dirty caps: its map
/// entry and vector (56 bytes), the allocation's header and rounding, its copy while it is
/// flushed, and its share of the commit that flush makes (an extent and a block reference
/// in the transaction's batch and index: about 350 bytes in RocksDB). Without it, a writer
/// of single bytes at scattered offsets was charged 1 byte for each ~500 the daemon held,
/// and grew it without bound (`bench/probe-memory.sh`).
pub const SPAN_COST: u64 = 512;

/// What `spans` are charged: their bytes plus `SPAN_COST` each.
pub fn charge(spans: &[(u64, Vec<u8>)]) -> u64 {
    spans.iter().map(|(_, d)| d.len() as u64 + SPAN_COST).sum()
}

#[derive(Default, Debug)]
pub struct DirtyData {
    spans: BTreeMap<u64, Vec<u8>>,
    /// Bytes buffered plus `SPAN_COST` per span.
    charged: u64,
}

impl DirtyData {
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// What the buffered spans are charged against the dirty caps: their bytes plus
    /// `SPAN_COST` each.
    pub fn bytes(&self) -> u64 {
        self.charged
    }

    /// One past the last dirty byte (0 when clean).
    pub fn end(&self) -> u64 {
        self.spans
            .iter()
            .next_back()
            .map(|(s, v)| s + v.len() as u64)
            .unwrap_or(0)
    }

    /// The first dirty byte, if any.
    pub fn start(&self) -> Option<u64> {
        self.spans.keys().next().copied()
    }

    pub fn ranges(&self) -> RangeSet {
        RangeSet::from_ranges(self.spans.iter().map(|(&s, v)| s..s + v.len() as u64))
    }

    /// Records `data` at `offset`, replacing older dirty bytes there. Returns the change in
    /// what the spans are charged.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> i64 {
        if data.is_empty() {
            return 0;
        }
        let end = offset + data.len() as u64;
        let mut removed = 0u64;
        let (start, mut buf) = match self.spans.range(..=offset).next_back() {
            Some((&s, v)) if s + v.len() as u64 >= offset => {
                let v = self.spans.remove(&s).expect("present");
                removed += v.len() as u64 + SPAN_COST;
                (s, v)
            }
            _ => (offset, Vec::new()),
        };
        // `rel` is at most `buf.len()`: only overlapping or touching spans are merged.
        let rel = (offset - start) as usize;
        let overlap = (buf.len() - rel).min(data.len());
        buf[rel..rel + overlap].copy_from_slice(&data[..overlap]);
        buf.extend_from_slice(&data[overlap..]);
        let following: Vec<u64> = self.spans.range(start..=end).map(|(&s, _)| s).collect();
        for s in following {
            let v = self.spans.remove(&s).expect("present");
            removed += v.len() as u64 + SPAN_COST;
            let seg_end = s + v.len() as u64;
            if seg_end > end {
                buf.extend_from_slice(&v[(end - s) as usize..]);
            }
        }
        let added = buf.len() as u64 + SPAN_COST;
        self.spans.insert(start, buf);
        self.charged = self.charged + added - removed;
        added as i64 - removed as i64
    }

    /// Copies dirty bytes that fall inside `[offset, offset + buf.len())` into `buf`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        let first = self
            .spans
            .range(..=offset)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(offset);
        for (&s, v) in self.spans.range(first..end) {
            let (a, b) = (s.max(offset), (s + v.len() as u64).min(end));
            if a < b {
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&v[(a - s) as usize..(b - s) as usize]);
            }
        }
    }

    /// The dirty parts of `range`, with their bytes.
    pub fn slices(&self, range: Range<u64>) -> Spans {
        let mut out = Vec::new();
        let first = self
            .spans
            .range(..=range.start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(range.start);
        for (&s, v) in self.spans.range(first..range.end) {
            let (a, b) = (s.max(range.start), (s + v.len() as u64).min(range.end));
            if a < b {
                out.push((a, v[(a - s) as usize..(b - s) as usize].to_vec()));
            }
        }
        out
    }

    /// Drops everything at or after `size`. Returns the change in charge (as `bytes`).
    pub fn truncate(&mut self, size: u64) -> u64 {
        let before = self.charged;
        let doomed: Vec<u64> = self.spans.range(size..).map(|(&s, _)| s).collect();
        for s in doomed {
            self.charged -= self.spans.remove(&s).expect("present").len() as u64 + SPAN_COST;
        }
        if let Some((&s, v)) = self.spans.range_mut(..size).next_back()
            && s + v.len() as u64 > size
        {
            let keep = (size - s) as usize;
            self.charged -= (v.len() - keep) as u64;
            v.truncate(keep);
        }
        before - self.charged
    }

    /// Removes and returns every span.
    pub fn take(&mut self) -> Spans {
        self.charged = 0;
        std::mem::take(&mut self.spans).into_iter().collect()
    }

    /// Removes and returns every span, except that the span ending at `end` keeps its bytes
    /// from `from` on (all of them when fewer than `min_head` would go): the unfinished block
    /// a sequential writer is extending stays where its next write lands, uncopied.
    pub fn take_holding_back(&mut self, from: u64, end: u64, min_head: usize) -> Spans {
        let mut spans = self.take();
        let Some(i) = spans.iter().position(|(s, v)| s + v.len() as u64 == end) else {
            return spans;
        };
        let start = spans[i].0;
        let tail = if from <= start || ((from - start) as usize) < min_head {
            spans.remove(i)
        } else if from < end {
            (from, spans[i].1.split_off((from - start) as usize))
        } else {
            return spans;
        };
        self.charged = tail.1.len() as u64 + SPAN_COST;
        self.spans.insert(tail.0, tail.1);
        spans
    }

    /// Puts back bytes taken earlier only where nothing newer was written since.
    pub fn fill_gaps(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        for gap in self.ranges().complement(offset..end).iter() {
            self.write(
                gap.start,
                &data[(gap.start - offset) as usize..(gap.end - offset) as usize],
            );
        }
    }

    /// Moves every span `by` bytes (appends placed before the end of the file was known).
    pub fn moved(&mut self, by: i64) {
        self.spans = std::mem::take(&mut self.spans)
            .into_iter()
            .map(|(s, v)| (s.saturating_add_signed(by), v))
            .collect();
    }

    /// Puts back a span previously taken (for example a tail held back from a flush).
    pub fn restore(&mut self, offset: u64, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.write(offset, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_a_byte_model(ops in proptest::collection::vec((0u64..300, proptest::collection::vec(any::<u8>(), 0..50), any::<bool>()), 1..40)) {
            let mut d = DirtyData::default();
            let mut model: Vec<Option<u8>> = vec![None; 400];
            for (off, data, trunc) in ops {
                if trunc {
                    d.truncate(off);
                    for m in model.iter_mut().skip(off as usize) { *m = None; }
                } else {
                    d.write(off, &data);
                    for (i, b) in data.iter().enumerate() { model[off as usize + i] = Some(*b); }
                }
                let mut buf = vec![0xEEu8; 400];
                d.overlay(0, &mut buf);
                for (i, m) in model.iter().enumerate() {
                    prop_assert_eq!(buf[i], m.unwrap_or(0xEE));
                }
                let data = model.iter().filter(|m| m.is_some()).count() as u64;
                prop_assert_eq!(d.bytes(), data + SPAN_COST * d.spans.len() as u64);
                let r = d.ranges();
                prop_assert_eq!(r.span_count(), d.spans.len(), "spans stay normalized");
            }
        }

        #[test]
        fn holding_back_keeps_exactly_the_unfinished_tail(
            ops in proptest::collection::vec((0u64..300, 1usize..60), 1..12),
            from in 0u64..400,
            min_head in 0usize..40,
        ) {
            let mut d = DirtyData::default();
            for (off, len) in &ops {
                d.write(*off, &vec![(*off % 251) as u8; *len]);
            }
            let mut before = vec![0xEEu8; 400];
            d.overlay(0, &mut before);
            let ends: Vec<u64> = d.spans.iter().map(|(s, v)| s + v.len() as u64).collect();
            let end = ends[ends.len() / 2];
            let taken = d.take_holding_back(from, end, min_head);
            // taken and held back are disjoint and together give back every byte
            let mut after = vec![0xEEu8; 400];
            d.overlay(0, &mut after);
            for (s, v) in &taken {
                for (i, b) in v.iter().enumerate() {
                    let at = *s as usize + i;
                    prop_assert_eq!(after[at], 0xEE, "byte {} both taken and held", at);
                    after[at] = *b;
                }
            }
            prop_assert_eq!(&after, &before);
            prop_assert_eq!(d.bytes(), d.spans.values().map(|v| v.len() as u64 + SPAN_COST).sum::<u64>());
            // only the span ending at `end` keeps anything, and only what lies at or after `from`
            // unless its head would be shorter than `min_head`
            for (s, v) in &d.spans {
                prop_assert_eq!(s + v.len() as u64, end);
                if *s < from {
                    prop_assert!(((from - s) as usize) < min_head);
                }
            }
        }
    }
}
