//! Transactions on the engine, written through to the cache once they commit.

use std::sync::atomic::Ordering;

use super::local::*;
use crate::domain::extent::Splice;
use crate::meta::{DirEntry, FileKind, Ino, Inode, MetaResult, MetaTxn};

/// A transaction on the engine. Once it commits, what it wrote is written through to the
/// cache where that is simple (inode records, directory entries) and dropped otherwise.
pub(super) struct CachedTxn<'a> {
    pub(super) inner: Option<Box<dyn MetaTxn + 'a>>,
    pub(super) cache: &'a LocalCache,
    pub(super) written: Written,
}

/// What a transaction wrote, as far as the cache is concerned.
#[derive(Default)]
pub(super) struct Written {
    /// Every inode written.
    pub(super) touched: Vec<Ino>,
    /// Final inode records.
    pub(super) inodes: std::collections::HashMap<Ino, Inode>,
    /// Directory entries set (Some) or removed (None), in order.
    pub(super) entries: Vec<(Ino, Vec<u8>, Option<DirEntry>)>,
    /// Directories that had never had an entry when this transaction first wrote them.
    pub(super) fresh_dirs: Vec<Ino>,
    /// Inodes first written under a number this mount allocated: new ones.
    pub(super) new_inodes: Vec<Ino>,
    /// Inodes written in ways the cache does not replay (extents, xattrs, symlink targets,
    /// deletion, orphans): dropped.
    pub(super) opaque: Vec<Ino>,
    /// Each inode as the transaction first read it from the engine. Where the cache held
    /// another copy, the cache was behind (another mount's change not yet on the feed): what
    /// the transaction wrote is then dropped rather than stored, since a current inode
    /// record next to a stale extent map or listing would vouch for them.
    pub(super) read: std::collections::HashMap<Ino, Option<Inode>>,
}

impl CachedTxn<'_> {
    pub(super) fn tx(&mut self) -> &mut (dyn MetaTxn + '_) {
        self.inner.as_deref_mut().expect("open until commit")
    }
}

impl crate::meta::MetaRead for CachedTxn<'_> {
    fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
        let inode = self.tx().inode(ino)?;
        self.written
            .read
            .entry(ino)
            .or_insert_with(|| inode.clone());
        Ok(inode)
    }
    fn inode_and_dirent(
        &mut self,
        dir: Ino,
        name: &[u8],
    ) -> MetaResult<(Option<Inode>, Option<DirEntry>)> {
        let (inode, entry) = self.tx().inode_and_dirent(dir, name)?;
        self.written
            .read
            .entry(dir)
            .or_insert_with(|| inode.clone());
        Ok((inode, entry))
    }
    crate::forward_reads!(@others self => self.tx());
}

impl CachedTxn<'_> {
    /// Notes an inode written in a way the cache does not replay.
    pub(super) fn opaque(&mut self, ino: Ino) {
        self.written.touched.push(ino);
        self.written.opaque.push(ino);
    }
}

impl MetaTxn for CachedTxn<'_> {
    fn put_inode(&mut self, inode: &Inode) -> MetaResult<()> {
        self.written.touched.push(inode.ino);
        if inode.kind == FileKind::Dir
            && inode.next_cookie == crate::meta::types::FIRST_COOKIE
            && !self.written.inodes.contains_key(&inode.ino)
        {
            self.written.fresh_dirs.push(inode.ino);
        }
        if !self.written.inodes.contains_key(&inode.ino) && self.cache.is_allocated(inode.ino) {
            self.written.new_inodes.push(inode.ino);
        }
        self.written.inodes.insert(inode.ino, inode.clone());
        self.tx().put_inode(inode)
    }
    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        self.opaque(ino);
        self.written.inodes.remove(&ino);
        self.tx().delete_inode(ino)
    }
    fn put_dirent(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> MetaResult<()> {
        self.written.touched.push(parent);
        self.written
            .entries
            .push((parent, name.to_vec(), Some(*entry)));
        self.tx().put_dirent(parent, name, entry)
    }
    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        self.written.touched.push(parent);
        self.written.entries.push((parent, name.to_vec(), None));
        self.tx().delete_dirent(parent, name)
    }
    fn apply_splice(&mut self, ino: Ino, splice: &Splice) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().apply_splice(ino, splice)
    }
    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().put_xattr(ino, name, value)
    }
    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().delete_xattr(ino, name)
    }
    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().put_symlink_target(ino, target)
    }
    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().add_orphan(ino)
    }

    fn hold_open(&mut self, ino: Ino) -> MetaResult<()> {
        self.tx().hold_open(ino)
    }

    fn commit(mut self: Box<Self>) -> MetaResult<()> {
        let tx = self.inner.take().expect("open until commit");
        let epoch = self.cache.epoch.load(Ordering::SeqCst);
        let result = tx.commit();
        let w = &mut self.written;
        w.touched.sort_unstable();
        w.touched.dedup();
        match result {
            Ok(()) => self.cache.write_through(epoch, w),
            // also when the commit failed: its outcome may be unknown (connection lost)
            Err(_) => self.cache.invalidate(&w.touched),
        }
        result
    }
}
