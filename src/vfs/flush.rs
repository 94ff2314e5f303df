//! The write path's back half: cut dirty spans into blocks with the volume's chunker, store
//! them, then commit extents, size and times in one metadata transaction.
//!
//! Commit order: blocks first, then the extent map. A crash in between leaves unreferenced
//! blocks (garbage a collector removes), never an extent pointing at missing data. With
//! `durable`, the block store is synced before the commit and the metadata after it.

use super::file::{FileState, OpenFile};
use super::{Fs, FsError, FsResult};
use crate::core::BlockKey;
use crate::core::extent::{self, Extent};
use crate::meta::Inode;

/// Dirty spans shorter than this are packed together into shared blocks (each keeps its own
/// extent pointing into the pack) instead of becoming one tiny block each: 10,000 random 4 KiB
/// writes become a few blocks, not 10,000 files. Coalescing later re-chunks them.
const PACK_BELOW: usize = 64 << 10;

/// Small spans gathered into one block.
#[derive(Default)]
struct Pack {
    buf: Vec<u8>,
    /// (file offset, offset in `buf`, length)
    pieces: Vec<(u64, usize, usize)>,
}

impl Pack {
    fn add(
        &mut self,
        offset: u64,
        data: &[u8],
        target: usize,
        fs: &Fs,
        groups: &mut Vec<Vec<Extent>>,
    ) -> FsResult<()> {
        self.pieces.push((offset, self.buf.len(), data.len()));
        self.buf.extend_from_slice(data);
        if self.buf.len() >= target {
            self.seal(fs, groups)
        } else {
            Ok(())
        }
    }

    /// Stores the pack as one block; each piece becomes a one-extent group.
    fn seal(&mut self, fs: &Fs, groups: &mut Vec<Vec<Extent>>) -> FsResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let key = fs.put_block(&self.buf)?;
        for (offset, at, len) in self.pieces.drain(..) {
            groups.push(vec![Extent {
                offset,
                key,
                block_offset: at as u32,
                len: len as u32,
            }]);
        }
        self.buf.clear();
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushMode {
    /// Everything dirty (close, fsync).
    All,
    /// Only chunks whose cut point more data would not move; tails stay buffered, so a file
    /// written in pieces gets the same blocks as one written at once (and dedups with it).
    Completed,
}

impl Fs {
    fn put_block(&self, data: &[u8]) -> FsResult<BlockKey> {
        let key = BlockKey::for_data(self.core.cfg.hash, data);
        self.core.store.put(&key, data)?;
        Ok(key)
    }

    pub(crate) fn flush_locked(
        &self,
        file: &OpenFile,
        st: &mut FileState,
        mode: FlushMode,
        durable: bool,
    ) -> FsResult<()> {
        let ino = file.ino;
        if st.dirty.is_empty() && st.mtime.is_none() {
            if durable {
                self.core.store.sync()?;
                self.core.meta.sync()?;
            }
            return Ok(());
        }
        let spans = st.dirty.take();
        let taken: u64 = spans.iter().map(|(_, d)| d.len() as u64).sum();
        let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
        let result = self.store_and_commit(
            ino,
            &spans,
            mode,
            st.last_write_end,
            st.mtime,
            durable,
            &mut kept,
        );
        match result {
            Ok(inode) => {
                let kept_bytes: u64 = kept.iter().map(|(_, d)| d.len() as u64).sum();
                for (off, data) in kept {
                    st.dirty.restore(off, data);
                }
                if st.dirty.is_empty() {
                    st.mtime = None;
                }
                self.add_dirty(-((taken - kept_bytes) as i64));
                if let Some(inode) = inode {
                    self.maybe_coalesce(&inode);
                }
                Ok(())
            }
            Err(e) => {
                // Nothing was committed: keep every byte buffered so a later flush can retry.
                for (off, data) in spans {
                    st.dirty.restore(off, data);
                }
                tracing::error!(ino, "flush failed: {e}");
                Err(e)
            }
        }
    }

    /// Stores blocks for `spans` and commits them; returns the inode as committed (None when
    /// there was nothing to commit). Tails held back (Completed mode) go into `kept`.
    #[allow(clippy::too_many_arguments)]
    fn store_and_commit(
        &self,
        ino: u64,
        spans: &[(u64, Vec<u8>)],
        mode: FlushMode,
        frontier: u64,
        mtime: Option<crate::meta::Timestamp>,
        durable: bool,
        kept: &mut Vec<(u64, Vec<u8>)>,
    ) -> FsResult<Option<Inode>> {
        let cfg = &self.core.cfg;
        let mut groups: Vec<Vec<Extent>> = Vec::new();
        let mut pack = Pack::default();
        for (off, data) in spans {
            let end = off + data.len() as u64;
            // Only the span being extended by the latest write keeps its unfinished tail back.
            let at_frontier = mode == FlushMode::Completed && end == frontier;
            if data.len() < PACK_BELOW {
                if at_frontier {
                    kept.push((*off, data.clone()));
                } else {
                    pack.add(
                        *off,
                        data,
                        cfg.chunker.target_block() as usize,
                        self,
                        &mut groups,
                    )?;
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
            let mut group = Vec::with_capacity(n);
            for &len in &cuts[..n] {
                let chunk = &data[pos..pos + len];
                let key = self.put_block(chunk)?;
                group.push(Extent {
                    offset: off + pos as u64,
                    key,
                    block_offset: 0,
                    len: len as u32,
                });
                pos += len;
            }
            if !group.is_empty() {
                groups.push(group);
            }
        }
        pack.seal(self, &mut groups)?;
        if durable {
            self.core.store.sync()?;
        }
        if groups.is_empty() && (mtime.is_none() || mode == FlushMode::Completed) {
            if durable {
                self.core.meta.sync()?;
            }
            return Ok(None);
        }
        let data_end = groups
            .iter()
            .filter_map(|g| g.last())
            .map(Extent::end)
            .max()
            .unwrap_or(0);
        let inode = self.core.txn(|tx| {
            let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            for g in &groups {
                let range = g[0].offset..g[g.len() - 1].end();
                let cur = tx.extents(ino, range)?;
                let s = extent::overwrite(&cur, g);
                tx.apply_splice(ino, &s)?;
                inode.extent_count = (inode.extent_count as i64 + s.count_delta()) as u64;
            }
            if !groups.is_empty() {
                inode.data_version += 1;
                inode.size = inode.size.max(data_end);
            }
            if let Some(m) = mtime {
                inode.mtime = m;
                inode.ctime = inode.ctime.max(m);
            }
            tx.put_inode(&inode)?;
            Ok(inode)
        })?;
        if durable {
            self.core.meta.sync()?;
        }
        Ok(Some(inode))
    }
}
