//! Background rewrite of fragmented extent maps. Many small overwrites leave a file with many
//! small extents; this re-chunks the file's bytes with the volume's chunker and swaps the new
//! extents in, without changing a byte.
//!
//! The swap is safe against concurrent writers without holding the file: a new block replaces
//! only the parts of its range still mapped exactly as when they were read (identical extents
//! name identical bytes); parts written meanwhile keep their newer extents.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::read::assemble;
use super::{Core, Fs, FsError, FsResult};
use crate::core::extent::{self, Extent};
use crate::core::{BlockKey, RangeSet};
use crate::meta::{Ino, Inode};

/// Bytes re-chunked at a time, so memory stays bounded for large files.
const WINDOW: u64 = 64 << 20;

pub(crate) struct Slot {
    running: bool,
    last_finished: Option<Instant>,
}

/// What one rewrite did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoalesceReport {
    pub extents_before: u64,
    pub extents_after: u64,
    /// Ranges left alone because they changed while being rewritten.
    pub skipped: u64,
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
    /// Schedules a background rewrite when the file is fragmented (at most one at a time per
    /// file, and not more often than `coalesce_interval`).
    pub(crate) fn maybe_coalesce(self: &Arc<Self>, inode: &Inode) {
        if !self.cfg.coalesce || !fragmented(self, inode) {
            return;
        }
        let ino = inode.ino;
        {
            let mut slots = self.coalesce_state.lock().expect("lock");
            let slot = slots.entry(ino).or_insert(Slot {
                running: false,
                last_finished: None,
            });
            let too_soon = slot
                .last_finished
                .is_some_and(|t| t.elapsed() < self.cfg.coalesce_interval);
            if slot.running || too_soon {
                return;
            }
            slot.running = true;
        }
        let core = self.clone();
        self.runtime.spawn_blocking(move || {
            match coalesce_file(&core, ino) {
                Ok(r) => tracing::debug!(ino, ?r, "coalesced extent map"),
                Err(e) => tracing::warn!(ino, "coalescing failed (the file is unchanged): {e}"),
            }
            let mut slots = core.coalesce_state.lock().expect("lock");
            slots.insert(
                ino,
                Slot {
                    running: false,
                    last_finished: Some(Instant::now()),
                },
            );
        });
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

/// Extents of `map` overlapping `r`, in order.
fn overlapping(map: &BTreeMap<u64, Extent>, r: &std::ops::Range<u64>) -> Vec<Extent> {
    let mut v: Vec<Extent> = map
        .range(..r.end)
        .rev()
        .take_while(|(_, e)| e.end() > r.start)
        .map(|(_, e)| *e)
        .collect();
    v.reverse();
    v
}

pub(crate) fn coalesce_file(core: &Arc<Core>, ino: Ino) -> FsResult<CoalesceReport> {
    let (inode, old) = {
        let mut tx = core.meta.begin()?;
        let inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
        let old = tx.extents(ino, 0..u64::MAX)?;
        (inode, old)
    };
    let mut report = CoalesceReport {
        extents_before: inode.extent_count,
        ..Default::default()
    };
    // Runs of back-to-back extents; holes between runs stay holes.
    let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
    for e in &old {
        match runs.last_mut() {
            Some(r) if r.end == e.offset => r.end = e.end(),
            _ => runs.push(e.range()),
        }
    }
    let chunker = core.cfg.chunker;
    let mut new: Vec<Extent> = Vec::new();
    for run in runs {
        let mut pos = run.start;
        while pos < run.end {
            let end = (pos + WINDOW).min(run.end);
            // the snapshot's own extents: the swap below only happens if they are unchanged
            let from = old.partition_point(|e| e.end() <= pos);
            let to = old.partition_point(|e| e.offset < end);
            let data = assemble(core, ino, &old[from..to], pos..end)?;
            let cuts = chunker.cut(pos, &data);
            let last_window = end == run.end;
            let usable = if last_window || cuts.len() == 1 {
                cuts.len()
            } else {
                cuts.len() - 1
            };
            let mut at = 0usize;
            for &len in &cuts[..usable] {
                let chunk = &data[at..at + len];
                let key = BlockKey::for_data(core.cfg.hash, chunk);
                core.store.put(&key, chunk)?;
                new.push(Extent {
                    offset: pos + at as u64,
                    key,
                    block_offset: 0,
                    len: len as u32,
                });
                at += len;
            }
            pos += at as u64;
        }
    }
    let old_map: BTreeMap<u64, Extent> = old.iter().map(|e| (e.offset, *e)).collect();
    // Hold off this mount's flushes of the file for the (short) swap, so a stream of small
    // commits cannot starve it; writers keep buffering meanwhile.
    let open = core.files.lock().expect("lock").get(&ino).cloned();
    let _flushes_wait = open
        .as_ref()
        .map(|f| f.flush_lock.lock().expect("flush lock"));
    let (count, skipped) = core.txn(|tx| {
        let mut inode = match tx.inode(ino)? {
            Some(i) => i,
            None => return Ok((0, 0)),
        };
        let mut expected = old_map.clone();
        let mut delta = 0i64;
        let mut skipped = 0u64;
        for ne in &new {
            let r = ne.range();
            let cur = tx.extents(ino, r.clone())?;
            if cur.len() == 1 && cur[0] == *ne {
                continue; // already this block
            }
            let exp = overlapping(&expected, &r);
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
                let here: Vec<Extent> = cur
                    .iter()
                    .filter(|e| e.end() > s.start && e.offset < s.end)
                    .copied()
                    .collect();
                let splice = extent::overwrite(&here, &[piece]);
                tx.apply_splice(ino, &splice)?;
                extent::apply(&mut expected, &splice);
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
    Ok(report)
}
