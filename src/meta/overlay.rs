//! Records written but not yet in the engine below (see `write_behind`): one layer per
//! transaction (its own writes) and one for the mount (committed, waiting to be applied).
//!
//! A lookup answers [`Known`] when the layer decides the record (present or deleted), or None
//! when the layer does not know and the next layer down must be asked. Each record carries the
//! sequence number of the commit that wrote it, so the applier can drop exactly those it sent.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::journal::Op;
use super::{DirEntry, Ino, Inode, MetaResult};
use crate::domain::Extent;
use crate::domain::extent::Splice;

/// What a layer knows of a record: `Some(value)` or `None` for "deleted".
pub type Known<T> = Option<T>;

#[derive(Clone, Debug)]
struct Slot<T> {
    seq: u64,
    value: T,
}

fn slot<T>(seq: u64, value: T) -> Slot<T> {
    Slot { seq, value }
}

/// `slots` with their values now written by the commit `seq`.
fn restamped<K, T>(
    slots: impl IntoIterator<Item = (K, Slot<T>)>,
    seq: u64,
) -> impl Iterator<Item = (K, Slot<T>)> {
    slots.into_iter().map(move |(k, s)| (k, slot(seq, s.value)))
}

/// Pending values by name (entries of a directory, xattrs of an inode); None: deleted.
type ByName<T> = BTreeMap<Vec<u8>, Slot<Option<T>>>;

#[derive(Default)]
pub struct Overlay {
    inodes: HashMap<Ino, Slot<Option<Inode>>>,
    dirents: HashMap<Ino, ByName<DirEntry>>,
    /// The names of the live entries in `dirents`, by cookie: a listing pages through them
    /// without scanning every pending entry of the directory.
    by_cookie: HashMap<Ino, BTreeMap<u64, Vec<u8>>>,
    /// Whole extent maps of files with pending splices.
    maps: HashMap<Ino, Slot<BTreeMap<u64, Extent>>>,
    xattrs: HashMap<Ino, ByName<Vec<u8>>>,
    symlinks: HashMap<Ino, Slot<Option<Vec<u8>>>>,
    orphans: HashMap<Ino, Slot<bool>>,
    /// Inodes deleted here: below this layer, their extents, xattrs and target are gone.
    wiped: HashMap<Ino, u64>,
}

impl Overlay {
    pub fn inode(&self, ino: Ino) -> Option<Known<Inode>> {
        self.inodes.get(&ino).map(|s| s.value.clone())
    }

    pub fn dirent(&self, parent: Ino, name: &[u8]) -> Option<Known<DirEntry>> {
        self.dirents.get(&parent)?.get(name).map(|s| s.value)
    }

    /// Whether this layer knows a name of `dir` (set or deleted); None when it knows none, so
    /// checking a page of names costs one lookup of the directory, not one per name.
    pub fn knows_names(&self, dir: Ino) -> Option<impl Fn(&[u8]) -> bool + '_> {
        let names = self.dirents.get(&dir).filter(|m| !m.is_empty())?;
        Some(move |n: &[u8]| names.contains_key(n))
    }

    /// The live entries of `dir` with cookies after `after`, by cookie.
    pub fn entries_after(
        &self,
        dir: Ino,
        after: u64,
    ) -> impl Iterator<Item = (&[u8], DirEntry)> + '_ {
        let names = self.dirents.get(&dir);
        self.by_cookie
            .get(&dir)
            .into_iter()
            .flat_map(move |m| m.range(after.saturating_add(1)..))
            .filter_map(move |(_, n)| {
                let e = names?.get(n)?.value?;
                Some((n.as_slice(), e))
            })
    }

    /// Sets `dir`'s entry `name`, keeping the cookie index in step.
    fn set_dirent(&mut self, dir: Ino, name: Vec<u8>, s: Slot<Option<DirEntry>>) {
        let index = self.by_cookie.entry(dir).or_default();
        let new = s.value;
        if let Some(e) = new {
            index.insert(e.cookie, name.clone());
        }
        let old = self.dirents.entry(dir).or_default().insert(name, s);
        if let Some(old) = old.and_then(|o| o.value)
            && new.is_none_or(|e| e.cookie != old.cookie)
        {
            index.remove(&old.cookie);
        }
        if index.is_empty() {
            self.by_cookie.remove(&dir);
        }
    }

    /// Every entry of `dir` this layer knows (deleted ones as None).
    pub fn dir_entries(&self, dir: Ino) -> impl Iterator<Item = (&[u8], Option<DirEntry>)> {
        self.dirents
            .get(&dir)
            .into_iter()
            .flat_map(|m| m.iter().map(|(n, s)| (n.as_slice(), s.value)))
    }

    pub fn wiped(&self, ino: Ino) -> bool {
        self.wiped.contains_key(&ino)
    }

    /// The whole extent map, when this layer has it.
    pub fn map(&self, ino: Ino) -> Option<&BTreeMap<u64, Extent>> {
        self.maps.get(&ino).map(|s| &s.value)
    }

    /// Extents of a known map that overlap `range`, sorted.
    pub fn extents_in(map: &BTreeMap<u64, Extent>, range: &Range<u64>) -> Vec<Extent> {
        // an extent starting before range.start may reach into it: start from the last one
        let from = map
            .range(..=range.start)
            .next_back()
            .map_or(range.start, |(o, _)| *o);
        map.range(from..range.end)
            .map(|(_, e)| *e)
            .filter(|e| e.end() > range.start)
            .collect()
    }

    pub fn xattr(&self, ino: Ino, name: &[u8]) -> Option<Known<Vec<u8>>> {
        if let Some(s) = self.xattrs.get(&ino).and_then(|m| m.get(name)) {
            return Some(s.value.clone());
        }
        self.wiped(ino).then_some(None)
    }

    pub fn xattrs(&self, ino: Ino) -> impl Iterator<Item = (&[u8], bool)> {
        self.xattrs
            .get(&ino)
            .into_iter()
            .flat_map(|m| m.iter().map(|(n, s)| (n.as_slice(), s.value.is_some())))
    }

    pub fn symlink(&self, ino: Ino) -> Option<Known<Vec<u8>>> {
        if let Some(s) = self.symlinks.get(&ino) {
            return Some(s.value.clone());
        }
        self.wiped(ino).then_some(None)
    }

    pub fn orphan_marks(&self) -> impl Iterator<Item = (Ino, bool)> + '_ {
        self.orphans.iter().map(|(i, s)| (*i, s.value))
    }

    pub fn inode_records(&self) -> impl Iterator<Item = (Ino, bool)> + '_ {
        self.inodes.iter().map(|(i, s)| (*i, s.value.is_some()))
    }

    /// Whether a map this layer holds references `key`.
    pub fn references(&self, key: &crate::domain::BlockKey) -> bool {
        self.maps
            .values()
            .any(|m| m.value.values().any(|e| e.key == *key))
    }

    /// Every block the maps this layer holds reference.
    pub fn referenced_keys(&self) -> impl Iterator<Item = crate::domain::BlockKey> + '_ {
        self.maps
            .values()
            .flat_map(|m| m.value.values().map(|e| e.key))
    }

    pub fn put_inode(&mut self, seq: u64, n: &Inode) {
        self.inodes.insert(n.ino, slot(seq, Some(n.clone())));
    }

    /// An inode this mount just allocated: nothing below has records of it.
    pub fn mark_new(&mut self, ino: Ino) {
        self.wiped.entry(ino).or_insert(0);
    }

    pub fn delete_inode(&mut self, seq: u64, ino: Ino) {
        self.inodes.insert(ino, slot(seq, None));
        self.maps.insert(ino, slot(seq, BTreeMap::new()));
        self.xattrs.remove(&ino);
        self.symlinks.remove(&ino);
        self.orphans.insert(ino, slot(seq, false));
        self.wiped.insert(ino, seq);
    }

    pub fn put_dirent(&mut self, seq: u64, parent: Ino, name: &[u8], e: Option<DirEntry>) {
        self.set_dirent(parent, name.to_vec(), slot(seq, e));
    }

    /// Installs a whole map (read from below) for a splice to edit.
    pub fn set_map(&mut self, seq: u64, ino: Ino, map: BTreeMap<u64, Extent>) {
        self.maps.insert(ino, slot(seq, map));
    }

    /// Applies a splice to the map `set_map` installed.
    pub fn splice(&mut self, seq: u64, ino: Ino, s: &Splice) {
        let m = self
            .maps
            .entry(ino)
            .or_insert_with(|| slot(seq, BTreeMap::new()));
        m.seq = seq;
        for e in &s.remove {
            m.value.remove(&e.offset);
        }
        for e in &s.insert {
            m.value.insert(e.offset, *e);
        }
    }

    pub fn put_xattr(&mut self, seq: u64, ino: Ino, name: &[u8], value: Option<&[u8]>) {
        self.xattrs
            .entry(ino)
            .or_default()
            .insert(name.to_vec(), slot(seq, value.map(<[u8]>::to_vec)));
    }

    pub fn put_symlink(&mut self, seq: u64, ino: Ino, target: &[u8]) {
        self.symlinks.insert(ino, slot(seq, Some(target.to_vec())));
    }

    pub fn add_orphan(&mut self, seq: u64, ino: Ino) {
        self.orphans.insert(ino, slot(seq, true));
    }

    /// Applies one journal operation (a splice edits the map `set_map` installed).
    pub fn record(&mut self, seq: u64, op: &Op) -> MetaResult<()> {
        match op {
            Op::PutInode(n) => self.put_inode(seq, n),
            Op::DeleteInode(ino) => self.delete_inode(seq, *ino),
            Op::PutDirent {
                parent,
                name,
                ino,
                kind,
                cookie,
            } => {
                let e = Op::decode_dirent(*ino, *kind, *cookie)?;
                self.put_dirent(seq, *parent, name, Some(e));
            }
            Op::DeleteDirent { parent, name } => self.put_dirent(seq, *parent, name, None),
            Op::Splice {
                ino,
                remove,
                insert,
            } => self.splice(seq, *ino, &Op::decode_splice(remove, insert)?),
            Op::PutXattr { ino, name, value } => self.put_xattr(seq, *ino, name, Some(value)),
            Op::DeleteXattr { ino, name } => self.put_xattr(seq, *ino, name, None),
            Op::PutSymlink { ino, target } => self.put_symlink(seq, *ino, target),
            Op::AddOrphan(ino) => self.add_orphan(seq, *ino),
        }
        Ok(())
    }

    /// Moves everything in `txn` (a transaction's layer) into this one under `seq`.
    pub fn absorb(&mut self, txn: Overlay, seq: u64) {
        for ino in txn.wiped.into_keys() {
            // what this layer held of the inode's records is gone with it
            self.xattrs.remove(&ino);
            self.symlinks.remove(&ino);
            self.wiped.insert(ino, seq);
        }
        self.inodes.extend(restamped(txn.inodes, seq));
        for (dir, entries) in txn.dirents {
            for (n, s) in restamped(entries, seq) {
                self.set_dirent(dir, n, s);
            }
        }
        self.maps.extend(restamped(txn.maps, seq));
        for (ino, names) in txn.xattrs {
            self.xattrs
                .entry(ino)
                .or_default()
                .extend(restamped(names, seq));
        }
        self.symlinks.extend(restamped(txn.symlinks, seq));
        self.orphans.extend(restamped(txn.orphans, seq));
    }

    /// Drops every record written by a commit up to `applied`: the engine below has them.
    pub fn forget_applied(&mut self, applied: u64) {
        let keep = |seq: u64| seq > applied;
        self.inodes.retain(|_, s| keep(s.seq));
        let by_cookie = &mut self.by_cookie;
        self.dirents.retain(|dir, m| {
            m.retain(|_, s| {
                let kept = keep(s.seq);
                if !kept
                    && let Some(e) = s.value
                    && let Some(index) = by_cookie.get_mut(dir)
                {
                    index.remove(&e.cookie);
                    if index.is_empty() {
                        by_cookie.remove(dir);
                    }
                }
                kept
            });
            !m.is_empty()
        });
        self.maps.retain(|_, s| keep(s.seq));
        self.xattrs.retain(|_, m| {
            m.retain(|_, s| keep(s.seq));
            !m.is_empty()
        });
        self.symlinks.retain(|_, s| keep(s.seq));
        self.orphans.retain(|_, s| keep(s.seq));
        self.wiped.retain(|_, s| keep(*s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::FileKind;

    fn entry(ino: Ino, cookie: u64) -> Option<DirEntry> {
        Some(DirEntry::new(ino, FileKind::File, cookie))
    }

    fn listed(o: &Overlay, after: u64) -> Vec<(Vec<u8>, u64)> {
        o.entries_after(1, after)
            .map(|(n, e)| (n.to_vec(), e.cookie))
            .collect()
    }

    #[test]
    fn entries_after_follow_puts_replacements_deletes_and_applied_commits() {
        let mut o = Overlay::default();
        o.put_dirent(1, 1, b"a", entry(10, 3));
        o.put_dirent(1, 1, b"b", entry(11, 4));
        o.put_dirent(2, 1, b"c", entry(12, 5));
        assert_eq!(
            listed(&o, 0),
            [(b"a".to_vec(), 3), (b"b".to_vec(), 4), (b"c".to_vec(), 5)]
        );
        assert_eq!(listed(&o, 3), [(b"b".to_vec(), 4), (b"c".to_vec(), 5)]);
        // a name set again under a new cookie moves; a deleted one is not listed
        o.put_dirent(3, 1, b"a", entry(10, 6));
        o.put_dirent(3, 1, b"b", None);
        assert_eq!(listed(&o, 0), [(b"c".to_vec(), 5), (b"a".to_vec(), 6)]);
        // a transaction's layer absorbed: its entries join the index
        let mut txn = Overlay::default();
        txn.put_dirent(0, 1, b"d", entry(13, 7));
        txn.put_dirent(0, 1, b"c", None);
        o.absorb(txn, 4);
        assert_eq!(listed(&o, 0), [(b"a".to_vec(), 6), (b"d".to_vec(), 7)]);
        // applied commits leave the layer and the index
        o.forget_applied(3);
        assert_eq!(listed(&o, 0), [(b"d".to_vec(), 7)]);
        o.forget_applied(4);
        assert!(listed(&o, 0).is_empty());
        assert!(o.by_cookie.is_empty() && o.dirents.is_empty());
    }
}
