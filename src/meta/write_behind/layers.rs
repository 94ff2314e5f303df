//! Reads through the layers: a transaction's own writes, the mount's committed ones not yet
//! applied, then the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::applier::*;
use crate::domain::Extent;
use crate::meta::overlay::Overlay;
use crate::meta::{DirEntry, Ino, Inode, MetaRead, MetaResult};

/// Reads through the layers: a transaction's own (if any), the mount's, then the engine.
pub(super) struct Layers<'a> {
    pub(super) state: &'a State,
    pub(super) local: Overlay,
    pub(super) below: Option<Box<dyn MetaRead + 'a>>,
    /// A transaction's: the inodes whose attributes or xattrs it read, or that it wrote,
    /// checked for conflicts at commit.
    pub(super) touched: Option<Vec<Ino>>,
}

impl<'a> Layers<'a> {
    pub(super) fn new(state: &'a State) -> Self {
        Layers {
            state,
            local: Overlay::default(),
            below: None,
            touched: None,
        }
    }

    pub(super) fn below(&mut self) -> MetaResult<&mut (dyn MetaRead + 'a)> {
        if self.below.is_none() {
            self.below = Some(self.state.inner.read()?);
        }
        Ok(self.below.as_deref_mut().expect("just set"))
    }

    pub(super) fn known<T>(&self, f: impl Fn(&Overlay) -> Option<T>) -> Option<T> {
        f(&self.local).or_else(|| f(&self.state.lock().overlay))
    }

    pub(super) fn wiped(&self, ino: Ino) -> bool {
        self.local.wiped(ino) || self.state.lock().overlay.wiped(ino)
    }

    /// Entries of `dir` the layers know (deleted ones as None), the transaction's over the
    /// mount's; and whether the directory is gone below them.
    pub(super) fn known_entries(&self, dir: Ino) -> (BTreeMap<Vec<u8>, Option<DirEntry>>, bool) {
        let p = self.state.lock();
        let mut out: BTreeMap<Vec<u8>, Option<DirEntry>> = p
            .overlay
            .dir_entries(dir)
            .map(|(n, e)| (n.to_vec(), e))
            .collect();
        for (n, e) in self.local.dir_entries(dir) {
            out.insert(n.to_vec(), e);
        }
        let gone = p.overlay.wiped(dir) || self.local.wiped(dir);
        (out, gone)
    }

    /// Which of `entries` (read below) the layers hide: they know the name, set or deleted.
    pub(super) fn hidden(&self, dir: Ino, entries: &[(Vec<u8>, DirEntry)]) -> Vec<bool> {
        let p = self.state.lock();
        let (local, pending) = (self.local.knows_names(dir), p.overlay.knows_names(dir));
        if local.is_none() && pending.is_none() {
            return vec![false; entries.len()];
        }
        fn knows(layer: &Option<impl Fn(&[u8]) -> bool>, name: &[u8]) -> bool {
            layer.as_ref().is_some_and(|f| f(name))
        }
        entries
            .iter()
            .map(|(n, _)| knows(&local, n) || knows(&pending, n))
            .collect()
    }

    /// The layers' entries of `dir` with cookies after `after`: the first `limit` by cookie,
    /// copied (each layer indexes its entries by cookie, so a page reads only its own).
    pub(super) fn pending_entries(
        &self,
        dir: Ino,
        after: u64,
        limit: usize,
    ) -> Vec<(Vec<u8>, DirEntry)> {
        let p = self.state.lock();
        let below_local = p
            .overlay
            .entries_after(dir, after)
            .filter(|(n, _)| self.local.dirent(dir, n).is_none())
            .take(limit);
        let mut found: Vec<(&[u8], DirEntry)> = self
            .local
            .entries_after(dir, after)
            .take(limit)
            .chain(below_local)
            .collect();
        found.sort_unstable_by_key(|(_, e)| e.cookie);
        found.truncate(limit);
        found.into_iter().map(|(n, e)| (n.to_vec(), e)).collect()
    }

    /// The whole extent map of `ino` as the layers see it.
    pub(super) fn whole_map(&mut self, ino: Ino) -> MetaResult<BTreeMap<u64, Extent>> {
        if let Some(m) = self.state.lock().overlay.map(ino) {
            return Ok(m.clone());
        }
        if self.wiped(ino) {
            return Ok(BTreeMap::new());
        }
        Ok(self
            .below()?
            .extents(ino, 0..u64::MAX)?
            .into_iter()
            .map(|e| (e.offset, e))
            .collect())
    }
}

impl MetaRead for Layers<'_> {
    fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
        if let Some(t) = &mut self.touched {
            t.push(ino);
        }
        match self.known(|o| o.inode(ino)) {
            Some(k) => Ok(k),
            None => self.below()?.inode(ino),
        }
    }

    fn dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<Option<DirEntry>> {
        match self.known(|o| o.dirent(parent, name)) {
            Some(k) => Ok(k),
            None if self.wiped(parent) => Ok(None),
            None => self.below()?.dirent(parent, name),
        }
    }

    fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> MetaResult<Vec<(Vec<u8>, DirEntry)>> {
        let mut out: Vec<(Vec<u8>, DirEntry)> = Vec::new();
        if !self.wiped(parent) {
            // pages from below until `limit` entries the layers do not hide (usually one page:
            // pending entries are mostly new names)
            let mut cursor = after;
            loop {
                let page = self.below()?.list_dir(parent, cursor, limit)?;
                let full = page.len() == limit;
                if let Some((_, last)) = page.last() {
                    cursor = last.cookie;
                }
                let hidden = self.hidden(parent, &page);
                out.extend(
                    page.into_iter()
                        .zip(hidden)
                        .filter(|(_, h)| !h)
                        .map(|(e, _)| e),
                );
                if !full || out.len() >= limit {
                    break;
                }
            }
        }
        out.extend(self.pending_entries(parent, after, limit));
        out.sort_by_key(|(_, e)| e.cookie);
        out.truncate(limit);
        Ok(out)
    }

    fn dir_is_empty(&mut self, dir: Ino) -> MetaResult<bool> {
        let (known, gone) = self.known_entries(dir);
        if known.values().any(Option::is_some) {
            return Ok(false);
        }
        if gone {
            return Ok(true);
        }
        let below = self.below()?.list_dir(dir, 0, known.len() + 1)?;
        Ok(below.iter().all(|(n, _)| known.contains_key(n)))
    }

    fn extents(&mut self, ino: Ino, range: Range<u64>) -> MetaResult<Vec<Extent>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        if let Some(v) = self.known(|o| o.map(ino).map(|m| Overlay::extents_in(m, &range))) {
            return Ok(v);
        }
        if self.wiped(ino) {
            return Ok(Vec::new());
        }
        self.below()?.extents(ino, range)
    }

    fn xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        // registers like an inode read: a value read and written back conflicts with another
        // transaction's write of it (the quota records, `vfs::quota`)
        if let Some(t) = &mut self.touched {
            t.push(ino);
        }
        match self.known(|o| o.xattr(ino, name)) {
            Some(k) => Ok(k),
            None => self.below()?.xattr(ino, name),
        }
    }

    fn xattr_names(&mut self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
        let (mut edits, mut gone): (Vec<(Vec<u8>, bool)>, bool) = {
            let p = self.state.lock();
            (
                p.overlay
                    .xattrs(ino)
                    .map(|(n, s)| (n.to_vec(), s))
                    .collect(),
                p.overlay.wiped(ino),
            )
        };
        if self.local.wiped(ino) {
            edits.clear();
            gone = true;
        }
        edits.extend(self.local.xattrs(ino).map(|(n, s)| (n.to_vec(), s)));
        if !gone {
            names.extend(self.below()?.xattr_names(ino)?);
        }
        for (n, present) in edits {
            if present {
                names.insert(n);
            } else {
                names.remove(&n);
            }
        }
        Ok(names.into_iter().collect())
    }

    fn symlink_target(&mut self, ino: Ino) -> MetaResult<Option<Vec<u8>>> {
        match self.known(|o| o.symlink(ino)) {
            Some(k) => Ok(k),
            None => self.below()?.symlink_target(ino),
        }
    }

    fn inode_numbers(&mut self) -> MetaResult<Vec<(Ino, bool)>> {
        let mut all: BTreeMap<Ino, bool> = self.below()?.inode_numbers()?.into_iter().collect();
        let p = self.state.lock();
        for layer in [&p.overlay, &self.local] {
            for (ino, present) in layer.inode_records() {
                if present {
                    all.entry(ino).or_insert(false);
                } else {
                    all.remove(&ino);
                }
            }
            for (ino, orphan) in layer.orphan_marks() {
                if let Some(o) = all.get_mut(&ino) {
                    *o = orphan;
                }
            }
        }
        Ok(all.into_iter().collect())
    }
}
