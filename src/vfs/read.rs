//! The read path: extent lookup (binary search in the metadata engine's ordered keys), verified
//! blocks through the block cache, pending writes laid on top, and sequential read-ahead that
//! starts once 512 KiB were read back to back and doubles its window up to a bound.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::file::{Handle, OpenFile};
use super::fill::Fill;
use super::{Core, Fs, FsResult};
use crate::domain::{BlockKey, Extent};
use crate::meta::{Ino, Inode};

/// Per-handle read-ahead state.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    /// The furthest end of the reads in the current run.
    last_end: u64,
    /// Reads in the current run (the first read at 0 counts).
    sequential: u32,
    /// Where the current run began.
    run_start: u64,
    /// Bytes the run's reads asked for.
    run_bytes: u64,
    window: u64,
    /// Read-ahead already requested up to here.
    requested_until: u64,
    /// The whole file was requested (random reads of a small file on a remote store).
    whole_file: bool,
    /// Whole blocks the run read to their end, by end, until the run is past them.
    streamed: std::collections::VecDeque<(u64, BlockKey)>,
}

impl ReadAhead {
    /// Whether a read at `offset` continues the run. The kernel's read-ahead sends several
    /// reads at once and the daemon's threads answer them in any order, so a read within
    /// `REORDERED` of the run's end continues it. (Counting only exact continuations reset
    /// the run 117 times in a 256 MiB sequential read.) Once the run is sequential, so does a
    /// late read anywhere behind its end: the kernel keeps several 1 MiB read-ahead requests
    /// in flight, and one arrived 4 MiB behind the others, which started the run over 8
    /// times in a 256 MiB read (its read-ahead restarting at one block, and fetching blocks
    /// read and dropped already: 65-67 GETs for 64 blocks).
    fn continues(&self, offset: u64) -> bool {
        offset == self.last_end
            || (self.sequential > 0 && offset.abs_diff(self.last_end) <= REORDERED)
            || (self.is_sequential() && (self.run_start..self.last_end).contains(&offset))
    }

    /// Counts a read of `offset..end` in the run, or starts a new run with it.
    fn note(&mut self, offset: u64, end: u64) {
        if self.continues(offset) {
            self.sequential += 1;
            self.last_end = self.last_end.max(end);
        } else {
            *self = ReadAhead {
                whole_file: self.whole_file,
                sequential: 1,
                run_start: offset,
                last_end: end,
                ..ReadAhead::default()
            };
        }
        self.run_bytes += end - offset;
    }

    /// The run is sequential access: enough bytes read back to back. Counting bytes asked
    /// for, not the span, keeps random 4 KiB reads that land near each other out.
    fn is_sequential(&self) -> bool {
        self.sequential >= 2 && self.run_bytes >= SEQUENTIAL_AFTER
    }
}

impl Fs {
    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.read_bytes(fh, offset, size).map(|b| match b {
            ReadBytes::Owned(v) => v,
            shared => shared.to_vec(),
        })
    }

    /// As `read`, but a read inside one cached block shares the block's bytes instead of
    /// copying them (the FUSE reply copies them anyway).
    pub fn read_bytes(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadBytes> {
        let h = self.handle(fh)?;
        self.check_fence(&h)?;
        let (inode, file_size, pending) = {
            let st = h.file.lock();
            let inode = self.core.inode(h.ino)?;
            let file_size = inode.size.max(st.pending_end());
            let end = offset.saturating_add(size as u64).min(file_size);
            let mut pending = Vec::new();
            if offset < end {
                // bytes being flushed first, then newer writes on top
                pending.extend(st.inflight_slices(offset..end));
                pending.extend(st.dirty.slices(offset..end));
            }
            (inode, file_size, pending)
        };
        if offset >= file_size {
            return Ok(ReadBytes::Owned(Vec::new()));
        }
        let end = offset.saturating_add(size as u64).min(file_size);
        let extents = mapped_for_read(&self.core, &h.file, &inode, offset..end)?;
        // Blocks a random read fetches go to the kernel's page cache too. (Not for sequential
        // reads: the kernel's read-ahead asks for those bytes next anyway, and a second copy of
        // them cost a quarter of the throughput.)
        let random = (self.core.fill.enabled() || self.core.cfg.ranged_reads)
            && !h.readahead.lock().expect("lock").continues(offset);
        let fill = self.core.fill.enabled() && pending.is_empty() && random;
        // A random read in a file too large to fetch whole may fetch its part of a large block
        // alone (verified against the block's group hashes: `domain::groups`).
        let in_part = |key: &BlockKey| {
            self.core.cfg.ranged_reads
                && random
                && file_size > self.core.cfg.whole_file_prefetch_max
                && key.size as u64 >= crate::domain::groups::RANGED_FROM
                && self.core.cache.take_part(key)
        };
        // one offer per block: the fill finds every stretch of the file the block backs
        let mut fetched: Vec<Extent> = Vec::new();
        for e in extents.iter().filter(|_| fill) {
            if !self.core.cache.contains(&e.key) && !fetched.iter().any(|f| f.key == e.key) {
                fetched.push(*e);
            }
        }
        // The run notes this read as it arrives, not once its block is here (then it would
        // come in behind reads answered from the cache meanwhile).
        self.read_ahead(&h, &extents, offset, end, file_size);
        let buf = match extents.as_slice() {
            [e] if pending.is_empty() && e.offset <= offset && e.end() >= end => {
                let c = e.clip(&(offset..end));
                if in_part(&c.key) {
                    let part = self.core.store.get_range(&c.key, c.block_range())?;
                    if part.len() < c.len as usize {
                        return Err(past_block(h.ino, &c).into());
                    }
                    return Ok(ReadBytes::Owned(part));
                }
                let block = self.core.cache.fetch(self.core.store.as_ref(), &c.key)?;
                if block.len() < c.block_range().end {
                    return Err(past_block(h.ino, &c).into());
                }
                ReadBytes::Block(block, c.block_range())
            }
            _ => {
                let mut buf = assemble(&self.core, h.ino, &extents, offset..end)?;
                for (at, data) in pending {
                    let rel = (at - offset) as usize;
                    buf[rel..rel + data.len()].copy_from_slice(&data);
                }
                ReadBytes::Owned(buf)
            }
        };
        for e in &fetched {
            offer_fill(&self.core, &inode, e);
        }
        Ok(buf)
    }

    fn read_ahead(
        &self,
        h: &Arc<Handle>,
        extents: &[Extent],
        offset: u64,
        end: u64,
        file_size: u64,
    ) {
        let ino = h.ino;
        let mut ra = h.readahead.lock().expect("lock");
        forget_streamed(&self.core, &mut ra, extents, offset..end);
        ra.note(offset, end);
        if !ra.whole_file
            && ra.sequential == 1
            && offset > 0
            && file_size <= self.core.cfg.whole_file_prefetch_max
        {
            // a read away from the start of a small file: fetch all of it, a few blocks at once
            ra.whole_file = true;
            let core = self.core.clone();
            self.core
                .runtime
                .spawn_blocking(move || prefetch(&core, ino, 0..file_size, None));
            return;
        }
        // A random read arrives with the kernel's own read-ahead behind it (up to 128 KiB in
        // a row): only a longer run is sequential access. (Fetching blocks ahead for random
        // reads cost a 4 MiB GET per 4 KiB read from S3.)
        if !ra.is_sequential() {
            return;
        }
        if ra.window == 0 {
            ra.window = self.core.cfg.chunker.target_block() as u64;
        }
        let from = ra.last_end.max(ra.requested_until);
        let to = (ra.last_end + ra.window).min(file_size);
        ra.window = (ra.window * 2).min(self.core.cfg.readahead_max);
        if from >= to {
            return;
        }
        ra.requested_until = to;
        let core = self.core.clone();
        let reader = h.clone();
        self.core
            .runtime
            .spawn_blocking(move || prefetch(&core, ino, from..to, Some(reader)));
    }

    /// Block cache counters: (hits, misses, blocks fetched by read-ahead).
    pub fn cache_stats(&self) -> (u64, u64, u64) {
        let c = &self.core.cache;
        (
            c.hits.load(Ordering::Relaxed),
            c.misses.load(Ordering::Relaxed),
            c.prefetched.load(Ordering::Relaxed),
        )
    }
}

/// Drops from the block cache the whole blocks a sequential run has read, once the run is
/// `DROP_BEHIND` past their end (so no late read of theirs is still coming): the kernel's page
/// cache holds those bytes, and keeping another copy here took fresh memory for every block
/// read, and page faults cost a sequential read CPU. Their freed buffers take the
/// next blocks read ahead. Blocks read in part, or by random reads, stay cached.
fn forget_streamed(core: &Core, ra: &mut ReadAhead, extents: &[Extent], read: Range<u64>) {
    if !ra.continues(read.start) || !ra.is_sequential() {
        return;
    }
    for e in extents {
        let whole_block = e.block_offset == 0 && e.len == e.key.size;
        let read_here = e.offset >= ra.run_start && e.end() <= read.end;
        if whole_block && read_here && !ra.streamed.iter().any(|(_, k)| *k == e.key) {
            ra.streamed.push_back((e.end(), e.key));
        }
    }
    let reached = ra.last_end.max(read.end);
    while let Some(&(block_end, key)) = ra.streamed.front() {
        if block_end + DROP_BEHIND > reached {
            break;
        }
        core.cache.forget(&key);
        ra.streamed.pop_front();
    }
}

/// Offers the bytes `e` maps to the kernel's page cache, if its block is cached.
fn offer_fill(core: &Core, inode: &Inode, e: &Extent) {
    if !core.fill.enabled() {
        return;
    }
    if let Some(block) = core.cache.cached(&e.key) {
        core.fill.offer(Fill {
            ino: inode.ino,
            version: inode.data_version,
            extent: *e,
            block,
        });
    }
}

/// Files with more extents than this are not kept whole in memory: their reads ask the
/// metadata engine for the range each time.
const MAP_KEPT_UP_TO: u64 = 4096;

/// The committed extents overlapping `range`, from the open file's copy of its map while the
/// inode's `data_version` matches (a cached 4 KiB read skips a metadata lookup). The whole
/// map is loaded at the second read that finds a version: reads between writes ask for their
/// range only, instead of reading the whole map again after every write.
fn mapped_for_read(
    core: &Core,
    file: &OpenFile,
    inode: &Inode,
    range: Range<u64>,
) -> FsResult<Vec<Extent>> {
    let ranged =
        || -> FsResult<Vec<Extent>> { Ok(core.meta.read()?.extents(inode.ino, range.clone())?) };
    if inode.extent_count > MAP_KEPT_UP_TO {
        return ranged();
    }
    let map = {
        let mut kept = file.map.lock().expect("map lock");
        match kept.as_ref() {
            Some((version, Some(map))) if *version == inode.data_version => map.clone(),
            Some((version, None)) if *version == inode.data_version => {
                // read after the inode: the map is at least as new as the version it is kept
                // under, and a newer version loads it again
                let map = Arc::new(core.meta.read()?.extents(inode.ino, 0..u64::MAX)?);
                *kept = Some((inode.data_version, Some(map.clone())));
                map
            }
            _ => {
                *kept = Some((inode.data_version, None));
                drop(kept);
                return ranged();
            }
        }
    };
    let first = map.partition_point(|e| e.end() <= range.start);
    Ok(map[first..]
        .iter()
        .take_while(|e| e.offset < range.end)
        .copied()
        .collect())
}

/// The bytes of `range` that `extents` (sorted, overlapping the range) map; holes as zeros.
pub(crate) fn assemble(
    core: &Core,
    ino: Ino,
    extents: &[Extent],
    range: Range<u64>,
) -> FsResult<Vec<u8>> {
    // filled front to back: mapped bytes are copied once, only holes are zeroed
    let len = (range.end - range.start) as usize;
    let mut buf = Vec::with_capacity(len);
    for e in extents {
        let c = e.clip(&range);
        if c.len == 0 {
            continue;
        }
        let block = core.cache.fetch(core.store.as_ref(), &c.key)?;
        let rel = (c.offset - range.start) as usize;
        let src = block
            .get(c.block_range())
            .ok_or_else(|| past_block(ino, &c))?;
        if rel < buf.len() {
            return Err(crate::meta::MetaError::Corrupt(format!(
                "extents of inode {ino} overlap at offset {}",
                c.offset
            ))
            .into());
        }
        buf.resize(rel, 0);
        buf.extend_from_slice(src);
    }
    buf.resize(len, 0);
    Ok(buf)
}

fn past_block(ino: Ino, e: &Extent) -> crate::meta::MetaError {
    crate::meta::MetaError::Corrupt(format!(
        "extent of inode {ino} reaches past its block {}",
        e.key
    ))
}

/// The bytes a read returns: its own buffer, or a range of one cached block.
pub enum ReadBytes {
    Owned(Vec<u8>),
    Block(Arc<Vec<u8>>, Range<usize>),
}

impl std::ops::Deref for ReadBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadBytes::Owned(v) => v,
            ReadBytes::Block(b, r) => &b[r.clone()],
        }
    }
}

/// Blocks fetched at once by one read-ahead request.
const PREFETCH_PARALLEL: usize = 8;

/// Bytes read back to back before reads count as sequential.
const SEQUENTIAL_AFTER: u64 = 512 << 10;

/// How far from the run's end a read still continues it, sequential or not yet: twice the
/// kernel's read-ahead (`max_readahead`, 1 MiB). Further behind, only a sequential run takes it.
const REORDERED: u64 = 2 << 20;

/// How far behind the run's end a block it read is kept: late reads of the kernel's read-ahead
/// came up to 4 MiB behind the others, and one of a block dropped already fetched the block
/// again (4 MiB for a 1 MiB read).
const DROP_BEHIND: u64 = 8 << 20;

/// Fetches the blocks of `range` into the cache: read-ahead for `reader`'s sequential run, or
/// without a reader, a small file's blocks for random reads (into the kernel's page cache too).
/// A block the reader has already read past is skipped: the reader fetched it itself, and may
/// have dropped it again behind the run (fetching it anew cost a fast reader on a local store
/// one block in six).
fn prefetch(core: &Arc<Core>, ino: Ino, range: Range<u64>, reader: Option<Arc<Handle>>) {
    let fill = reader.is_none();
    // the inode before its map: the map is at least as new as the version fills are offered under
    let listed = core.inode(ino).and_then(|inode| {
        let extents = core.meta.read()?.extents(ino, range)?;
        Ok((inode, extents))
    });
    let (inode, extents) = match listed {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(ino, "read-ahead skipped: {e}");
            return;
        }
    };
    let mut keys: Vec<_> = extents
        .iter()
        .map(|e| e.key)
        .filter(|k| !core.cache.contains(k))
        .collect();
    keys.dedup();
    // Fetch (and verify) several blocks at once: a remote store's latency overlaps, and
    // hashing uses every core. For random reads, each block's bytes then go to the kernel's
    // page cache too, so the reads they were fetched for need no round trip to the daemon.
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..PREFETCH_PARALLEL.min(keys.len()) {
            s.spawn(|| {
                while let Some(key) = keys.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Some(h) = &reader {
                        let passed = h.readahead.lock().expect("lock").last_end;
                        if extents.iter().all(|e| e.key != *key || e.end() <= passed) {
                            continue;
                        }
                    }
                    // Errors surface when the application reads these bytes; read-ahead only warms the cache.
                    if let Err(err) = core.cache.prefetch(core.store.as_ref(), key) {
                        tracing::debug!(ino, "read-ahead fetch failed: {err}");
                        return;
                    }
                    // one offer per block: the fill finds every stretch the block backs
                    if let Some(e) = extents.iter().find(|e| fill && e.key == *key) {
                        offer_fill(core, &inode, e);
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ra: &mut ReadAhead, offset: u64, len: u64) {
        ra.note(offset, offset + len);
    }

    #[test]
    fn reads_answered_out_of_order_stay_one_sequential_run() {
        let mut ra = ReadAhead::default();
        let k = 128 << 10;
        for offset in [0, 2 * k, k, 4 * k, 3 * k, 5 * k] {
            read(&mut ra, offset, k);
        }
        assert_eq!(ra.run_start, 0, "no reset");
        assert!(ra.is_sequential());
        assert_eq!(ra.last_end, 6 * k);
    }

    #[test]
    fn a_late_read_far_behind_a_sequential_run_stays_in_it() {
        let mut ra = ReadAhead::default();
        let m = 1 << 20;
        for i in 0..6 {
            read(&mut ra, i * m, m);
        }
        assert!(ra.is_sequential());
        // the kernel's read-ahead request for 1..2 MiB answered after the run reached 6 MiB
        read(&mut ra, m, m);
        assert_eq!((ra.run_start, ra.last_end), (0, 6 * m), "no reset");
        // before the run is sequential, only `REORDERED` behind counts
        let mut early = ReadAhead::default();
        read(&mut early, 0, 128 << 10);
        read(&mut early, 4 * m, 128 << 10);
        read(&mut early, 0, 4096);
        assert_eq!(early.run_start, 0, "a new run at the far read");
        assert_eq!(early.last_end, 4096);
    }

    #[test]
    fn random_reads_near_each_other_are_not_sequential() {
        let mut ra = ReadAhead::default();
        // 4 KiB reads scattered within a few MiB: each continues the run, few bytes in all
        for i in 0..100u64 {
            read(&mut ra, (i * 7919 % 512) * 4096, 4096);
        }
        assert!(!ra.is_sequential(), "{ra:?}");
        // a fresh handle's first read away from the start is random (it gets a page fill)
        assert!(!ReadAhead::default().continues(1 << 20));
        assert!(ReadAhead::default().continues(0));
    }
}
