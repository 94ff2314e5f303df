//! Extent maps: file offset → (block key, offset in block, length). Gaps are holes that read as
//! zeros. The map is stored one record per extent (keyed by inode and file offset), so a small
//! overwrite edits only the few records it touches; this module computes those edits.

use std::ops::Range;

use super::key::BlockKey;

/// One mapped span of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// File offset of the first byte.
    pub offset: u64,
    pub key: BlockKey,
    /// Where the span starts inside the block.
    pub block_offset: u32,
    pub len: u32,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }

    pub fn range(&self) -> Range<u64> {
        self.offset..self.end()
    }

    /// The part of this extent inside `r` (which must overlap it).
    pub fn clip(&self, r: &Range<u64>) -> Extent {
        let start = self.offset.max(r.start);
        let end = self.end().min(r.end);
        debug_assert!(start < end, "clip of a non-overlapping range");
        Extent {
            offset: start,
            key: self.key,
            block_offset: self.block_offset + (start - self.offset) as u32,
            len: (end - start) as u32,
        }
    }

    /// Byte range inside the block that this extent maps.
    pub fn block_range(&self) -> Range<usize> {
        self.block_offset as usize..self.block_offset as usize + self.len as usize
    }

    /// The same bytes placed at another file offset.
    pub fn moved_to(&self, offset: u64) -> Extent {
        Extent { offset, ..*self }
    }
}

/// The record changes that turn one extent map into another: remove the extents starting at
/// `remove`, then insert `insert`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Splice {
    pub remove: Vec<Extent>,
    pub insert: Vec<Extent>,
}

impl Splice {
    /// Change in the number of extents.
    pub fn count_delta(&self) -> i64 {
        self.insert.len() as i64 - self.remove.len() as i64
    }
}

/// Edits that make `hole` unmapped, given the extents that overlap it (sorted by offset).
/// Extents that straddle an edge keep their outside part.
pub fn punch(overlapping: &[Extent], hole: Range<u64>) -> Splice {
    let mut s = Splice::default();
    for e in overlapping {
        if e.end() <= hole.start || e.offset >= hole.end {
            continue;
        }
        s.remove.push(*e);
        if e.offset < hole.start {
            s.insert.push(e.clip(&(e.offset..hole.start)));
        }
        if e.end() > hole.end {
            s.insert.push(e.clip(&(hole.end..e.end())));
        }
    }
    s
}

/// Edits that map `new` (contiguous, sorted extents) over whatever `overlapping` mapped there.
pub fn overwrite(overlapping: &[Extent], new: &[Extent]) -> Splice {
    let Some(first) = new.first() else {
        return Splice::default();
    };
    let span = first.offset..new.last().map(|e| e.end()).unwrap_or(first.offset);
    let mut s = punch(overlapping, span);
    s.insert.extend_from_slice(new);
    s
}

/// Applies a splice to an in-memory map (used by tests and by coalescing checks).
pub fn apply(map: &mut std::collections::BTreeMap<u64, Extent>, s: &Splice) {
    for e in &s.remove {
        map.remove(&e.offset);
    }
    for e in &s.insert {
        map.insert(e.offset, *e);
    }
}

/// The extents of `map` that overlap `r`, in order.
pub fn overlapping(map: &std::collections::BTreeMap<u64, Extent>, r: &Range<u64>) -> Vec<Extent> {
    let mut v: Vec<Extent> = map
        .range(..r.end)
        .rev()
        .take_while(|(_, e)| e.end() > r.start)
        .map(|(_, e)| *e)
        .collect();
    v.reverse();
    v
}

/// Index of the extent containing `offset` in a sorted slice, by binary search.
pub fn find(extents: &[Extent], offset: u64) -> Option<usize> {
    let i = extents.partition_point(|e| e.offset <= offset);
    (i > 0 && extents[i - 1].end() > offset).then(|| i - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::HashAlgo;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A tiny world where block `i` holds bytes `(i*31 + j) as u8` at position j.
    fn block(i: u8, len: u32) -> (BlockKey, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|j| (i as u32 * 31 + j) as u8).collect();
        (BlockKey::for_data(HashAlgo::Blake3, &data), data)
    }

    fn render(
        map: &BTreeMap<u64, Extent>,
        blocks: &BTreeMap<BlockKey, Vec<u8>>,
        len: usize,
    ) -> Vec<u8> {
        let mut out = vec![0u8; len];
        for e in map.values() {
            let b = &blocks[&e.key];
            out[e.offset as usize..e.end() as usize].copy_from_slice(&b[e.block_range()]);
        }
        out
    }

    proptest! {
        #[test]
        fn overwrite_and_punch_match_a_byte_model(ops in proptest::collection::vec((0u64..200, 1u32..60, 0u8..5, any::<bool>()), 1..30)) {
            let mut map = BTreeMap::new();
            let mut blocks = BTreeMap::new();
            let mut model = vec![0u8; 300];
            for (i, (off, len, which, is_punch)) in ops.into_iter().enumerate() {
                let overlapping: Vec<Extent> = map.values().copied().filter(|e: &Extent| e.end() > off && e.offset < off + len as u64).collect();
                if is_punch {
                    apply(&mut map, &punch(&overlapping, off..off + len as u64));
                    model[off as usize..(off + len as u64) as usize].fill(0);
                } else {
                    let (key, data) = block(which.wrapping_add(i as u8), 64);
                    let bo = (which as u32 * 3).min(64 - len.min(64));
                    let len = len.min(64 - bo);
                    blocks.insert(key, data.clone());
                    let e = Extent { offset: off, key, block_offset: bo, len };
                    apply(&mut map, &overwrite(&overlapping, &[e]));
                    model[off as usize..off as usize + len as usize].copy_from_slice(&data[bo as usize..(bo + len) as usize]);
                }
                // extents never overlap
                let v: Vec<_> = map.values().collect();
                prop_assert!(v.windows(2).all(|w| w[0].end() <= w[1].offset));
                prop_assert_eq!(render(&map, &blocks, 300), model.clone());
            }
        }
    }

    #[test]
    fn find_uses_binary_search_over_gaps() {
        let (k, _) = block(1, 64);
        let ex = vec![
            Extent {
                offset: 0,
                key: k,
                block_offset: 0,
                len: 10,
            },
            Extent {
                offset: 20,
                key: k,
                block_offset: 0,
                len: 10,
            },
        ];
        assert_eq!(find(&ex, 5), Some(0));
        assert_eq!(find(&ex, 10), None);
        assert_eq!(find(&ex, 29), Some(1));
        assert_eq!(find(&ex, 30), None);
    }
}
