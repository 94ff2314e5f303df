//! The write path's back half: cut dirty spans into blocks with the volume's chunker, store
//! them, then commit extents, size and times in one metadata transaction.
//!
//! Commit order: blocks first, then the extent map. A crash in between leaves unreferenced
//! blocks (garbage a collector removes), never an extent pointing at missing data; a power
//! cut neither, since the blocks are settled (`BlockStore::settle`: synced, or ordered before
//! the commit by the metadata engine's log) before the commit. With `durable`, the block
//! store is synced before the commit and the metadata after it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::file::{AttrChange, FileState, OpenFile};
use super::pack::{PACK_BELOW, Pack};
use super::{Core, FsError, FsResult};
use crate::domain::BlockKey;
use crate::domain::extent::{self, Extent};
use crate::domain::groups::GroupHashes;
use crate::meta::pins::Pinned;
use crate::meta::{Inode, MetaTxn};

/// Blocks of one flush stored in parallel.
const UPLOADS_AT_ONCE: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushMode {
    /// Everything dirty (close, fsync).
    All,
    /// Only chunks whose cut point more data would not move; tails stay buffered, so a file
    /// written in pieces gets the same blocks as one written at once (and dedups with it).
    Completed,
}

impl Core {
    pub(crate) fn add_dirty(&self, delta: i64) {
        if delta >= 0 {
            self.dirty_bytes.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            self.dirty_bytes
                .fetch_sub((-delta) as u64, Ordering::Relaxed);
        }
    }

    /// Flushes without holding the file's state lock while blocks are hashed and stored:
    /// writers keep buffering and readers see the bytes in flight. One flush per file at a
    /// time (the flush lock), so commits land in write order.
    /// Long because the lock hand-offs (state lock released while blocks are stored, flush
    /// lock held throughout) are easier to check in one place.
    pub(crate) fn flush_file(
        self: &Arc<Self>,
        file: &OpenFile,
        mode: FlushMode,
        durable: bool,
    ) -> FsResult<()> {
        let _one_at_a_time = file.flush_lock.lock().expect("flush lock");
        // writes made under a lock or into an unlinked file that the mount lost are dropped
        self.fence_if_lost(file);
        let (work, mtime, attrs, frontier, append_base, mode, room) = {
            let mut st = file.lock();
            if !st.has_pending() {
                drop(st);
                if durable {
                    self.store.sync()?;
                    self.meta.sync()?;
                }
                return Ok(());
            }
            // A background flush leaves the unfinished block at the write frontier in place
            // (when the chunker can tell where it starts), so the writer extends it there.
            let frontier = st.last_write_end;
            // (Not for appends: a tail held back could be committed apart from the rest of
            // its write, and another mount's append land in between.)
            let mode = match st.append_base {
                Some(_) => FlushMode::All,
                None => mode,
            };
            let work = match self.cfg.chunker.settled_end(frontier) {
                Some(from) if mode == FlushMode::Completed => {
                    st.dirty.take_holding_back(from, frontier, PACK_BELOW)
                }
                _ => st.dirty.take(),
            };
            let work = Arc::new(work);
            st.inflight = Some(work.clone());
            // the last close gives the file's reservation back in its commit
            let closing = mode == FlushMode::All && std::mem::take(&mut st.closing);
            let room = match closing && st.room != u64::MAX {
                true => std::mem::take(&mut st.room),
                false => 0,
            };
            st.giving_back = room > 0;
            st.give_backs += (room > 0) as u64;
            (
                work,
                st.mtime,
                st.attrs,
                st.last_write_end,
                st.append_base,
                mode,
                room,
            )
        };
        let taken = super::dirty::charge(&work);
        let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
        let result = self.store_and_commit(
            file,
            &work,
            mode,
            frontier,
            mtime,
            attrs,
            durable,
            append_base,
            room > 0,
            &mut kept,
        );
        let mut st = file.lock();
        st.inflight = None;
        st.giving_back = false;
        if room > 0 && !matches!(result, Ok(Some(_))) {
            // not given back: still held
            st.room = st.room.max(room);
        }
        let before = st.dirty.bytes();
        let give_back: &[(u64, Vec<u8>)] = match &result {
            Ok(_) => &kept,
            // the mount lost the file's lock or the file meanwhile: these writes are dropped
            Err(FsError::Fenced) => &[],
            Err(_) => &work,
        };
        for (off, data) in give_back {
            // bytes written meanwhile are newer than these
            st.dirty.fill_gaps(*off, data);
        }
        self.add_dirty(st.dirty.bytes() as i64 - before as i64 - taken as i64);
        let moved = Self::appends_placed(&mut st, &result);
        match result {
            Ok(committed) => {
                let inode = committed.map(|c| c.inode);
                // what changed meanwhile stays pending; nothing committed, nothing cleared
                if inode.is_some() && st.mtime == mtime {
                    st.mtime = None;
                }
                if inode.is_some() && st.attrs == attrs {
                    st.attrs = None;
                }
                if !st.has_pending() {
                    file.written_in.store(0, Ordering::SeqCst);
                }
                drop(st);
                if moved {
                    self.kernel_forget_later(file);
                }
                if let Some(inode) = inode {
                    self.maybe_coalesce(&inode);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(ino = file.ino, "flush failed: {e}");
                Err(e)
            }
        }
    }

    /// Returns once no power cut can keep a commit naming the blocks `pins` holds and lose one
    /// of them (`BlockStore::settle`): called between storing blocks and committing them.
    pub(crate) fn settle(&self, pins: &Pinned) -> FsResult<()> {
        let keys = pins.keys();
        if !keys.is_empty() {
            self.store.settle(&keys)?;
        }
        Ok(())
    }

    /// Stores one block (see [`Core::put_blocks`]).
    pub(crate) fn put_block(&self, data: &[u8], pins: &Pinned) -> FsResult<BlockKey> {
        let (key, groups) = BlockKey::for_data_grouped(self.cfg.hash, data);
        pins.add(&[key])?;
        if self.store.cheap_put(&key) || self.meta.referenced_among(&[key])?.is_empty() {
            self.store_new(&key, data, groups.as_ref())?;
        } else {
            metrics::counter!(crate::metrics::BLOCKS_DEDUPLICATED, "backend" => "index")
                .increment(1);
        }
        Ok(key)
    }

    /// Stores a block no extent references (no check for a copy first); a copy found already
    /// stored loses its gc mark (`store::store_for_reference`). `groups`: its group hashes,
    /// computed with the key.
    fn store_new(&self, key: &BlockKey, data: &[u8], groups: Option<&GroupHashes>) -> FsResult<()> {
        crate::store::store_for_reference(self.store.as_ref(), key, data, groups, |k| {
            Ok(crate::meta::clear_gc_mark(self.meta.as_ref(), k)?)
        })
    }

    /// Hashes and stores blocks, up to `UPLOADS_AT_ONCE` at a time (a remote store's latency
    /// is paid once per window, not once per block); returns each chunk's whole-block extent,
    /// in the chunks' order. A block some extent already references is not sent: blocks are
    /// stored before the extents that name them, so its copy is there. One that is not
    /// referenced goes out without a check for a copy (on S3, no HEAD). Every block is
    /// pinned in `pins` first (`meta::pins`): gc spares it until the caller's commit.
    pub(super) fn put_blocks(
        &self,
        chunks: &[(u64, &[u8])],
        pins: &Pinned,
    ) -> FsResult<Vec<Extent>> {
        let keys = self.store_chunks(chunks, pins)?;
        Ok(chunks
            .iter()
            .zip(keys)
            .map(|(&(offset, chunk), key)| Extent {
                offset,
                key,
                block_offset: 0,
                len: chunk.len() as u32,
            })
            .collect())
    }

    fn store_chunks(&self, chunks: &[(u64, &[u8])], pins: &Pinned) -> FsResult<Vec<BlockKey>> {
        if chunks.len() < 2 {
            return chunks
                .iter()
                .map(|(_, c)| self.put_block(c, pins))
                .collect();
        }
        let mut keys = Vec::with_capacity(chunks.len());
        for window in chunks.chunks(UPLOADS_AT_ONCE) {
            // A block the store takes cheaply is stored by the thread that hashed it, while
            // its bytes are still in that core's cache; the others wait for one batched
            // "already referenced?" question.
            type Hashed = (BlockKey, Option<GroupHashes>, Option<FsResult<()>>);
            let hashed: Vec<Hashed> = std::thread::scope(|scope| {
                let jobs: Vec<_> = window
                    .iter()
                    .map(|&(_, c)| {
                        scope.spawn(move || {
                            let (key, groups) = BlockKey::for_data_grouped(self.cfg.hash, c);
                            let stored = self.store.cheap_put(&key).then(|| {
                                pins.add(&[key])?;
                                self.store_new(&key, c, groups.as_ref())
                            });
                            (key, groups, stored)
                        })
                    })
                    .collect();
                jobs.into_iter()
                    .map(|j| j.join().expect("hashing thread"))
                    .collect()
            });
            let ask: Vec<BlockKey> = hashed
                .iter()
                .filter(|(_, _, stored)| stored.is_none())
                .map(|(k, _, _)| *k)
                .collect();
            let known = match ask.is_empty() {
                true => Vec::new(),
                false => {
                    pins.add(&ask)?;
                    self.meta.referenced_among(&ask)?
                }
            };
            if !known.is_empty() {
                metrics::counter!(crate::metrics::BLOCKS_DEDUPLICATED, "backend" => "index")
                    .increment(known.len() as u64);
            }
            let stored: Vec<FsResult<()>> = std::thread::scope(|scope| {
                let jobs: Vec<_> = window
                    .iter()
                    .zip(&hashed)
                    .filter(|(_, (k, _, stored))| stored.is_none() && !known.contains(k))
                    .map(|(&(_, c), (k, groups, _))| {
                        scope.spawn(move || self.store_new(k, c, groups.as_ref()))
                    })
                    .collect();
                jobs.into_iter()
                    .map(|j| j.join().expect("block upload thread"))
                    .collect()
            });
            for r in stored {
                r?;
            }
            for (key, _, stored) in hashed {
                stored.transpose()?;
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Flushes while the caller holds the file's flush lock *and* its state lock, so no write
    /// can slip in between (truncate and fallocate need that).
    pub(crate) fn flush_locked(
        self: &Arc<Self>,
        file: &OpenFile,
        st: &mut FileState,
        mode: FlushMode,
        durable: bool,
    ) -> FsResult<()> {
        let ino = file.ino;
        if !st.has_pending() {
            if durable {
                self.store.sync()?;
                self.meta.sync()?;
            }
            return Ok(());
        }
        let spans = st.dirty.take();
        let taken = super::dirty::charge(&spans);
        let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
        let result = self.store_and_commit(
            file,
            &spans,
            mode,
            st.last_write_end,
            st.mtime,
            st.attrs,
            durable,
            st.append_base,
            false,
            &mut kept,
        );
        let kept_bytes = super::dirty::charge(&kept);
        let back = match &result {
            Ok(_) => kept,
            Err(FsError::Fenced) => Vec::new(),
            // nothing was committed: every byte stays buffered so a later flush can retry
            Err(_) => spans,
        };
        for (off, data) in back {
            st.dirty.restore(off, data);
        }
        if Self::appends_placed(st, &result) {
            self.kernel_forget_later(file);
        }
        match result {
            Ok(committed) => {
                let inode = committed.map(|c| c.inode);
                if inode.is_some() {
                    st.attrs = None;
                    if st.dirty.is_empty() {
                        st.mtime = None;
                    }
                }
                if !st.has_pending() {
                    file.written_in.store(0, Ordering::SeqCst);
                }
                self.add_dirty(-((taken - kept_bytes) as i64));
                if let Some(inode) = inode {
                    self.maybe_coalesce(&inode);
                }
                Ok(())
            }
            Err(FsError::Fenced) => {
                // written under a lock or into a file the mount lost: dropped
                self.add_dirty(-(taken as i64));
                st.mtime = None;
                st.attrs = None;
                Err(FsError::Fenced)
            }
            Err(e) => {
                tracing::error!(ino, "flush failed: {e}");
                Err(e)
            }
        }
    }

    /// After a flush (the file's state locked): pending appends follow where the commit
    /// placed the ones before them. True when that was not where they were placed: the
    /// kernel's cached size and pages of the file are then stale (`vfs::append`).
    fn appends_placed(st: &mut FileState, result: &FsResult<Option<Committed>>) -> bool {
        if st.append_base.is_none() {
            return false;
        }
        match result {
            Ok(Some(c)) => {
                st.appends_committed(c.moved, c.inode.size);
                return c.moved != 0;
            }
            _ if !st.has_bytes_pending() => st.append_base = None,
            Err(FsError::Fenced) => {
                // the dropped appends leave no gap: the ones written since take their place
                if let (Some(base), Some(first)) = (st.append_base, st.dirty.start()) {
                    st.appends_committed(base as i64 - first as i64, base);
                }
            }
            _ => {}
        }
        false
    }

    /// Drops the kernel's cached size and pages of `file` soon, on a thread nobody waits for
    /// (the caller may hold locks that a read or write, whose pages the kernel holds, waits
    /// for); a close of the file waits for it (`Fs::flush`).
    fn kernel_forget_later(self: &Arc<Self>, file: &OpenFile) {
        file.kernel_stale.store(true, Ordering::SeqCst);
        let (core, ino) = (self.clone(), file.ino);
        self.runtime.spawn_blocking(move || core.kernel_forget(ino));
    }

    /// Stores blocks for `spans` and commits them; returns the inode as committed (None when
    /// there was nothing to commit). Tails held back (Completed mode) go into `kept`. Fails
    /// with `Fenced`, committing nothing, when the mount loses what it held the file under
    /// before the commit (`vfs::fence`). With `append_base`, the spans are appends placed
    /// from there on: they go to the end of the file as the transaction finds it
    /// (`vfs::append`). With `give_back_room`, the commit also gives back the file's quota
    /// reservation (`vfs::quota`: its last close).
    /// Long on purpose: pin, store, settle, commit are the order the crash promises rest on,
    /// and they read top to bottom here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_and_commit(
        &self,
        file: &OpenFile,
        spans: &[(u64, Vec<u8>)],
        mode: FlushMode,
        frontier: u64,
        mtime: Option<crate::meta::Timestamp>,
        attrs: Option<AttrChange>,
        durable: bool,
        append_base: Option<u64>,
        give_back_room: bool,
        kept: &mut Vec<(u64, Vec<u8>)>,
    ) -> FsResult<Option<Committed>> {
        let (ino, claims) = (file.ino, super::fence::Claims::of(file));
        let cfg = &self.cfg;
        let started = std::time::Instant::now();
        // gc spares the blocks stored here until the commit below is done (or has failed)
        let pins = Pinned::new(self.meta.clone());
        let mut groups: Vec<Vec<Extent>> = Vec::new();
        let mut pack = Pack::default();
        let mut packed: Vec<Extent> = Vec::new();
        for (off, data) in spans {
            let end = off + data.len() as u64;
            // Only the span being extended by the latest write keeps its unfinished tail back.
            let at_frontier = mode == FlushMode::Completed && end == frontier;
            if data.len() < PACK_BELOW {
                if at_frontier {
                    kept.push((*off, data.clone()));
                } else {
                    pack.add(self, *off, data, &mut packed, &pins)?;
                }
                continue;
            }
            let cuts = cfg.chunker.cut(*off, data);
            let mut n = cuts.len();
            if at_frontier
                && let Some(&last) = cuts.last()
                && !cfg.chunker.is_natural_end(end, last)
            {
                n -= 1;
                let start = data.len() - last;
                kept.push((off + start as u64, data[start..].to_vec()));
            }
            let mut pos = 0usize;
            let mut chunks = Vec::with_capacity(n);
            for &len in &cuts[..n] {
                chunks.push((off + pos as u64, &data[pos..pos + len]));
                pos += len;
            }
            let group = self.put_blocks(&chunks, &pins)?;
            if !group.is_empty() {
                groups.push(group);
            }
        }
        pack.seal(self, &mut packed, &pins)?;
        groups.extend(packed.into_iter().map(|e| vec![e]));
        if durable {
            self.store.sync()?;
        } else {
            self.settle(&pins)?;
        }
        if groups.is_empty()
            && ((mtime.is_none() && attrs.is_none()) || mode == FlushMode::Completed)
        {
            if durable {
                self.meta.sync()?;
            }
            return Ok(None);
        }
        let stored = started.elapsed();
        let data_end = groups
            .iter()
            .filter_map(|g| g.last())
            .map(Extent::end)
            .max()
            .unwrap_or(0);
        // the appends' last attempted placement, for `appends_landed`
        let attempted = std::cell::Cell::new(0i64);
        let committed = self.txn(|tx| {
            if self.claims_lost(claims) {
                return Err(FsError::Fenced);
            }
            let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            if give_back_room {
                // before the writes below: its read (by `quota::Counted`) then leaves them to
                // travel with the COMMIT
                tx.delete_xattr(ino, super::quota::RESERVED)?;
            }
            let moved = append_base.map_or(0, |b| inode.size as i64 - b as i64);
            attempted.set(moved);
            let shifted;
            let groups = match moved {
                0 => &groups,
                _ => {
                    shifted = shift(&groups, moved);
                    &shifted
                }
            };
            let ranges = groups.iter().map(|g| g[0].offset..g[g.len() - 1].end());
            // a file with no extents yet (a new file's first flush) has nothing to read
            let mut map = match inode.extent_count {
                0 => BTreeMap::new(),
                n => mapped(tx, ino, ranges, inode.size / n)?,
            };
            for g in groups {
                let cur = extent::overlapping(&map, &(g[0].offset..g[g.len() - 1].end()));
                let s = extent::overwrite(&cur, g);
                tx.apply_splice(ino, &s)?;
                extent::apply(&mut map, &s);
                inode.extent_count = (inode.extent_count as i64 + s.count_delta()) as u64;
            }
            if !groups.is_empty() {
                inode.data_version += 1;
                inode.size = inode.size.max(data_end.saturating_add_signed(moved));
            }
            if let Some(m) = mtime {
                inode.mtime = m;
                inode.ctime = inode.ctime.max(m);
            }
            if let Some(a) = attrs {
                a.apply(&mut inode);
            }
            tx.put_inode(&inode)?;
            Ok((inode, moved))
        });
        let (inode, moved) = match committed {
            Err(e) if append_base.is_some() && !matches!(e, FsError::Fenced) => {
                // Appends must not be committed twice: a commit whose answer was lost may
                // have landed, and if it did, these bytes are not to be flushed again.
                let moved = attempted.get();
                match self.appends_landed(ino, &shift(&groups, moved)) {
                    Some(inode) => (inode, moved),
                    None => return Err(e),
                }
            }
            other => other?,
        };
        if durable {
            self.meta.sync()?;
        }
        tracing::debug!(
            ino,
            spans = spans.len(),
            extents = groups.len(),
            ?stored,
            committed = ?(started.elapsed() - stored),
            "flushed"
        );
        Ok(Some(Committed { inode, moved }))
    }
}

impl Core {
    /// After a failed commit of appends placed as `placed`: the inode, if the file's map holds
    /// exactly those extents there (the commit landed, only its answer was lost). None when it
    /// does not, or when that cannot be told now (the appends then stay pending).
    fn appends_landed(&self, ino: crate::meta::Ino, placed: &[Vec<Extent>]) -> Option<Inode> {
        let mut want: Vec<Extent> = placed.iter().flatten().copied().collect();
        want.sort_by_key(|e| e.offset);
        let start = want.first()?.offset;
        let end = want.iter().map(Extent::end).max()?;
        let found = self.txn(|tx| {
            let inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            let mut map = tx.extents(ino, start..end)?;
            map.sort_by_key(|e| e.offset);
            Ok((map, inode))
        });
        match found {
            Ok((map, inode)) if map == want => {
                tracing::warn!(ino, "a commit's answer was lost, and it had landed");
                Some(inode)
            }
            _ => None,
        }
    }
}

/// What a flush committed.
pub(crate) struct Committed {
    pub inode: Inode,
    /// How far the commit moved appends from where they were placed (`vfs::append`).
    pub moved: i64,
}

/// `groups` moved `by` bytes (appends placed before the end of the file was known).
fn shift(groups: &[Vec<Extent>], by: i64) -> Vec<Vec<Extent>> {
    let moved = |e: &Extent| Extent {
        offset: e.offset.saturating_add_signed(by),
        ..*e
    };
    groups
        .iter()
        .map(|g| g.iter().map(moved).collect())
        .collect()
}

/// The extents overlapping `ranges` (disjoint): one read per range for a few ranges, else one
/// read over the covering range of each cluster of ranges (a flush of 2,000 scattered 4 KiB
/// writes is a few reads, not 2,000 round trips to PostgreSQL), keeping only the extents that
/// overlap a range: memory follows the flush, not the file's whole map. A cluster holds at
/// most `RANGES_PER_READ` ranges and no gap that would read more than about `GAP_EXTENTS`
/// extents (by the file's average extent, `avg_extent` bytes): a flush of a few pages at each
/// end of a large file does not read every extent in between.
fn mapped(
    tx: &mut dyn MetaTxn,
    ino: u64,
    ranges: impl Iterator<Item = Range<u64>>,
    avg_extent: u64,
) -> FsResult<BTreeMap<u64, Extent>> {
    const ONE_READ_FROM: usize = 3;
    const RANGES_PER_READ: usize = 256;
    const GAP_EXTENTS: u64 = 64;
    let mut ranges: Vec<Range<u64>> = ranges.collect();
    ranges.sort_by_key(|r| r.start);
    let mut map = BTreeMap::new();
    if ranges.len() < ONE_READ_FROM {
        for r in ranges {
            map.extend(tx.extents(ino, r)?.into_iter().map(|e| (e.offset, e)));
        }
        return Ok(map);
    }
    let max_gap = avg_extent.max(1).saturating_mul(GAP_EXTENTS);
    let mut clusters: Vec<&[Range<u64>]> = Vec::new();
    let mut first = 0;
    for i in 1..=ranges.len() {
        let split = i == ranges.len()
            || i - first == RANGES_PER_READ
            || ranges[i].start - ranges[i - 1].end > max_gap;
        if split {
            clusters.push(&ranges[first..i]);
            first = i;
        }
    }
    for group in clusters {
        let start = group[0].start;
        let end = group.iter().map(|r| r.end).max().unwrap_or(start);
        let mut next = 0; // the first range of the group not wholly before the extent
        for e in tx.extents(ino, start..end)? {
            while next < group.len() && group[next].end <= e.offset {
                next += 1;
            }
            // ranges are disjoint and sorted: the extent overlaps one if it reaches the first
            // range that does not end before it starts
            if next < group.len() && e.end() > group[next].start {
                map.insert(e.offset, e);
            }
        }
    }
    Ok(map)
}
