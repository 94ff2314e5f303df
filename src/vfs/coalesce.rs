//! Background rewrite of fragmented extent maps. Many small overwrites leave a file with many
//! small extents; this re-chunks the fragmented stretches with the volume's chunker (short
//! stretches are packed together, as a flush does) and swaps the new extents in, without changing
//! a byte. Stretches already made of whole, chunker-sized blocks are neither read nor rewritten,
//! and a rewrite waits until the file has been quiet for a while, so a file under a storm of
//! random writes is not uploaded again after every flush. (A sparse file stays "fragmented",
//! one extent per written stretch; passes over it only rewrite stretches that changed.)
//!
//! The swap is safe against concurrent writers without holding the file: a new block replaces
//! only the parts of its range still mapped exactly as when they were read (identical extents
//! name identical bytes); parts written meanwhile keep their newer extents.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pack::{PACK_BELOW, Pack};
use super::read::assemble;
use super::{Core, Fs, FsResult};
use crate::domain::RangeSet;
use crate::domain::extent::{self, Extent};
use crate::meta::{Ino, Inode};

/// Bytes re-chunked at a time, so memory stays bounded for large files.
const WINDOW: u64 = 64 << 20;
/// Extents of the map one swap reads and rewrites, on average: memory stays bounded for a
/// file of millions of extents (a few MiB per piece).
const PIECE_EXTENTS: u64 = 16_384;

/// A rewrite waits for the file to go without flushes for `coalesce_interval`, but never longer
/// than this many intervals after it was first asked for.
const MAX_DEFER: u32 = 8;

pub(crate) struct Slot {
    running: bool,
    /// When a flush last asked for a rewrite.
    touched: Instant,
}

/// What one rewrite did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoalesceReport {
    pub extents_before: u64,
    pub extents_after: u64,
    /// Ranges left alone because they changed while being rewritten.
    pub skipped: u64,
    /// Bytes read and stored again.
    pub rewritten: u64,
}

/// Whether the file's extent map is fragmented enough to rewrite.
pub(crate) fn fragmented(core: &Core, inode: &Inode) -> bool {
    let n = inode.extent_count;
    let ideal = inode.size / core.cfg.chunker.target_block() as u64 + 1;
    if n <= 2 * ideal + 16 {
        return false;
    }
    n > core.cfg.coalesce_max_extents || inode.size / n < core.cfg.coalesce_min_avg_extent
}

impl Core {
    /// Schedules a background rewrite when the file is fragmented: at most one per file at a
    /// time, started once the file has been quiet for `coalesce_interval` (or closed).
    pub(crate) fn maybe_coalesce(self: &Arc<Self>, inode: &Inode) {
        if !self.cfg.coalesce || !fragmented(self, inode) {
            return;
        }
        let ino = inode.ino;
        {
            let mut slots = self.coalesce_state.lock().expect("lock");
            let slot = slots.entry(ino).or_insert(Slot {
                running: false,
                touched: Instant::now(),
            });
            slot.touched = Instant::now();
            if slot.running {
                return;
            }
            slot.running = true;
        }
        let core = self.clone();
        self.runtime.spawn_blocking(move || {
            while core.wait_until_quiet(ino) {
                let started = Instant::now();
                match coalesce_file(&core, ino) {
                    Ok(r) => tracing::debug!(ino, ?r, "coalesced extent map"),
                    Err(e) => tracing::warn!(ino, "coalescing failed (the file is unchanged): {e}"),
                }
                // again if flushes asked while this one ran (and the file is still fragmented)
                let asked = core
                    .coalesce_state
                    .lock()
                    .expect("lock")
                    .get(&ino)
                    .is_some_and(|s| s.touched > started);
                if !asked || !core.inode(ino).is_ok_and(|i| fragmented(&core, &i)) {
                    break;
                }
            }
            if let Some(s) = core.coalesce_state.lock().expect("lock").get_mut(&ino) {
                s.running = false;
            }
        });
    }

    /// Sleeps until the file has had no flush for `coalesce_interval`, is closed, or has waited
    /// `MAX_DEFER` intervals; false when the volume is shutting down (the rewrite is skipped).
    fn wait_until_quiet(&self, ino: Ino) -> bool {
        let interval = self.cfg.coalesce_interval;
        let first = Instant::now();
        loop {
            if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            let quiet_for = match self.coalesce_state.lock().expect("lock").get(&ino) {
                Some(s) => s.touched.elapsed(),
                None => return false,
            };
            let open = self.files.lock().expect("lock").contains_key(&ino);
            if !open || quiet_for >= interval || first.elapsed() >= interval * MAX_DEFER {
                return true;
            }
            std::thread::sleep((interval - quiet_for).min(Duration::from_millis(50)));
        }
    }
}

impl Fs {
    /// Rewrites the file's extent map now (tests and maintenance commands).
    pub fn coalesce_now(&self, ino: Ino) -> FsResult<CoalesceReport> {
        self.flush_inode(ino, false)?;
        coalesce_file(&self.core, ino)
    }

    /// Waits until no background rewrite is running.
    pub fn wait_background(&self) {
        loop {
            let busy = self
                .core
                .coalesce_state
                .lock()
                .expect("lock")
                .values()
                .any(|s| s.running);
            if !busy {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Whether an extent already is what a rewrite would make of it: a whole block, not a small one.
fn settled(e: &Extent) -> bool {
    e.block_offset == 0 && e.len == e.key.size && e.len as usize >= PACK_BELOW
}

/// The stretches worth rewriting: runs of at least two back-to-back extents that are not
/// settled (holes and settled extents end a stretch).
fn stretches(extents: &[Extent]) -> Vec<Range<u64>> {
    let mut out: Vec<(Range<u64>, usize)> = Vec::new();
    let mut open = false;
    for e in extents {
        if settled(e) {
            open = false;
            continue;
        }
        match out.last_mut() {
            Some((r, n)) if open && r.end == e.offset => {
                r.end = e.end();
                *n += 1;
            }
            _ => out.push((e.range(), 1)),
        }
        open = true;
    }
    out.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(r, _)| r)
        .collect()
}

pub(crate) fn coalesce_file(core: &Arc<Core>, ino: Ino) -> FsResult<CoalesceReport> {
    let inode = core.inode(ino)?;
    let mut report = CoalesceReport {
        extents_before: inode.extent_count,
        extents_after: inode.extent_count,
        ..Default::default()
    };
    // The map is rewritten a piece at a time, each piece its own swap, so memory stays bounded
    // by the piece however many extents the file has: pieces span about `PIECE_EXTENTS`
    // extents at the file's average density (at least a block).
    let span = match inode.extent_count {
        0 => return Ok(report),
        n => {
            (inode.size.saturating_mul(PIECE_EXTENTS) / n).max(core.cfg.chunker.max_block() as u64)
        }
    };
    let mut from = 0u64;
    while from < inode.size {
        let to = from.saturating_add(span).min(inode.size);
        // the extents starting in this piece (one starting before it belongs to the previous)
        let old: Vec<Extent> = {
            let mut tx = core.meta.begin()?;
            tx.extents(ino, from..to)?
                .into_iter()
                .filter(|e| e.offset >= from)
                .collect()
        };
        if let Some(piece) = coalesce_piece(core, ino, &old)? {
            report.extents_after = piece.extents_after;
            report.skipped += piece.skipped;
            report.rewritten += piece.rewritten;
        }
        from = to;
    }
    Ok(report)
}

/// Rewrites the fragmented stretches of `old` (back-to-back extents of the file, as read) and
/// swaps the new extents in; None when there was nothing to rewrite.
/// Long because the rewrite and the swap must see the same extents; kept in one place.
fn coalesce_piece(core: &Arc<Core>, ino: Ino, old: &[Extent]) -> FsResult<Option<CoalesceReport>> {
    let mut report = CoalesceReport::default();
    let chunker = core.cfg.chunker;
    let mut new: Vec<Extent> = Vec::new();
    let mut pack = Pack::default();
    // the new blocks stay pinned until the swap below commits them
    let pins = crate::meta::pins::Pinned::new(core.meta.clone());
    for stretch in stretches(old) {
        let mut pos = stretch.start;
        while pos < stretch.end {
            let end = (pos + WINDOW).min(stretch.end);
            // the snapshot's own extents: the swap below only happens if they are unchanged
            let from = old.partition_point(|e| e.end() <= pos);
            let to = old.partition_point(|e| e.offset < end);
            let data = assemble(core, ino, &old[from..to], pos..end)?;
            let cuts = chunker.cut(pos, &data);
            // a window that ends before its stretch does leaves its last cut to the next window
            // (which cuts it again with what follows), unless that cut is its only one
            let usable = cuts.len() - usize::from(end < stretch.end && cuts.len() > 1);
            let mut at = 0usize;
            let mut chunks = Vec::new();
            for &len in &cuts[..usable] {
                let chunk = &data[at..at + len];
                if len < PACK_BELOW {
                    pack.add(core, pos + at as u64, chunk, &mut new, &pins)?;
                } else {
                    chunks.push((pos + at as u64, chunk));
                }
                at += len;
            }
            new.extend(core.put_blocks(&chunks, &pins)?);
            report.rewritten += at as u64;
            pos += at as u64;
        }
    }
    pack.seal(core, &mut new, &pins)?;
    if new.is_empty() {
        return Ok(None);
    }
    core.settle(&pins)?;
    let old_map: BTreeMap<u64, Extent> = old.iter().map(|e| (e.offset, *e)).collect();
    // what the swap reads again: the piece's range (the new extents lie within it)
    let piece = old_map.values().next().map_or(0, |e| e.offset)
        ..old_map.values().next_back().map_or(0, Extent::end);
    // Hold off this mount's flushes of the file for the (short) swap, so a stream of small
    // commits cannot starve it; writers keep buffering meanwhile.
    let open = core.open_file(ino);
    let _flushes_wait = open
        .as_ref()
        .map(|f| f.flush_lock.lock().expect("flush lock"));
    let (count, skipped) = core.txn(|tx| {
        let mut inode = match tx.inode(ino)? {
            Some(i) => i,
            None => return Ok((0, 0)),
        };
        // the piece's map in one read; splices are applied to it as they are queued
        let mut map: BTreeMap<u64, Extent> = tx
            .extents(ino, piece.clone())?
            .into_iter()
            .map(|e| (e.offset, e))
            .collect();
        let mut expected = old_map.clone();
        let mut delta = 0i64;
        let mut skipped = 0u64;
        for ne in &new {
            let r = ne.range();
            let cur = extent::overlapping(&map, &r);
            if cur.len() == 1 && cur[0] == *ne {
                continue; // already this block
            }
            let exp = extent::overlapping(&expected, &r);
            // Parts of the range still mapped exactly as when read hold the same bytes as the
            // new block there; parts written meanwhile are left alone.
            let mut stable = RangeSet::new();
            for e in cur.iter().filter(|e| exp.contains(e)) {
                stable.add(e.offset.max(r.start)..e.end().min(r.end));
            }
            if stable.total_len() < r.end - r.start {
                skipped += 1;
            }
            for s in stable.iter() {
                let piece = ne.clip(&s);
                let here = extent::overlapping(&map, &s);
                let splice = extent::overwrite(&here, &[piece]);
                tx.apply_splice(ino, &splice)?;
                extent::apply(&mut expected, &splice);
                extent::apply(&mut map, &splice);
                delta += splice.count_delta();
            }
        }
        inode.extent_count = (inode.extent_count as i64 + delta) as u64;
        inode.data_version += 1;
        tx.put_inode(&inode)?;
        Ok((inode.extent_count, skipped))
    })?;
    report.extents_after = count;
    report.skipped = skipped;
    Ok(Some(report))
}
