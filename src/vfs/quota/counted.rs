//! [`Counted`]: a transaction that keeps the quotas in step with the inodes it changes.

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::domain::extent::Splice;
use crate::meta::{DirEntry, MetaResult};

/// A transaction that notes each inode as first read and as last written, and whose
/// [`settle`](Counted::settle) charges the difference to the quotas before the commit.
pub struct Counted<'a> {
    inner: Box<dyn MetaTxn + 'a>,
    /// Each inode as first read, before any write of it.
    before: HashMap<Ino, Option<Inode>>,
    /// Each inode written, as last written (None: deleted).
    after: BTreeMap<Ino, Option<Inode>>,
    /// Files whose reservation this transaction set or removed, with the one before...
    reservations: HashMap<Ino, u64>,
    /// ...and the one it leaves.
    reserving: HashMap<Ino, u64>,
    /// The volume's quotas, once read.
    map: Option<Map>,
}

impl<'a> Counted<'a> {
    pub fn new(inner: Box<dyn MetaTxn + 'a>) -> Counted<'a> {
        Counted {
            inner,
            before: HashMap::new(),
            after: BTreeMap::new(),
            reservations: HashMap::new(),
            reserving: HashMap::new(),
            map: None,
        }
    }

    fn quotas(&mut self) -> FsResult<&mut Map> {
        if self.map.is_none() {
            self.map = Some(map(self.inner.as_mut())?);
        }
        Ok(self.map.as_mut().expect("just read"))
    }

    fn seen(&mut self, inode: &Option<Inode>, ino: Ino) {
        if !self.after.contains_key(&ino) {
            self.before.entry(ino).or_insert_with(|| inode.clone());
        }
    }

    /// Notes the state before of an inode written without being read first. Operations read
    /// what they change, so that is mostly a new inode; but a copy (`tree::copy`) writes its
    /// inodes over several transactions without reading them, so while quotas are kept the
    /// inode is read here.
    fn first_sight(&mut self, ino: Ino) -> MetaResult<()> {
        if self.before.contains_key(&ino) || self.after.contains_key(&ino) {
            return Ok(());
        }
        let had = match self.quotas().map_err(meta_error)?.is_empty() {
            true => None,
            false => self.inner.inode(ino)?,
        };
        self.before.insert(ino, had);
        Ok(())
    }

    /// Notes a change of `ino`'s xattr `name` to `value` (None: removed): for its
    /// reservation, the one before and the one after.
    fn noting_reservation(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> MetaResult<()> {
        if name != RESERVED {
            return Ok(());
        }
        if !self.reservations.contains_key(&ino) {
            let had = reserved(self.inner.as_mut(), ino).map_err(meta_error)?;
            self.reservations.insert(ino, had);
        }
        let now = value
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_le_bytes);
        self.reserving.insert(ino, now);
        Ok(())
    }

    /// Charges what the transaction changed to the quotas; EDQUOT when that takes a quota
    /// past a limit. Reads the list of quotas only when something that counts changed.
    pub fn settle(&mut self) -> FsResult<()> {
        let changed: Vec<Ino> = self
            .after
            .iter()
            .filter(|(ino, after)| {
                let before = self.before.get(ino).cloned().flatten();
                self.reservations.contains_key(ino) || differs(before.as_ref(), after.as_ref())
            })
            .map(|(ino, _)| *ino)
            .collect();
        let changed: Vec<Ino> = changed
            .into_iter()
            .chain(
                self.reservations
                    .keys()
                    .filter(|i| !self.after.contains_key(i))
                    .copied(),
            )
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        if self.quotas()?.is_empty() {
            return Ok(());
        }
        let mut map = self.map.take().expect("read above");
        let tx = self.inner.as_mut();
        let mut deltas: BTreeMap<Key, (i64, i64)> = BTreeMap::new();
        let mut add = |keys: &[Key], bytes: i64, inodes: i64| {
            for k in keys {
                let d = deltas.entry(*k).or_default();
                d.0 += bytes;
                d.1 += inodes;
            }
        };
        let mut map_changed = false;
        for ino in changed {
            let after = match self.after.get(&ino) {
                Some(a) => a.clone(),
                None => tx.inode(ino)?,
            };
            let before = match self.after.contains_key(&ino) {
                true => self.before.get(&ino).cloned().flatten(),
                false => after.clone(),
            };
            let now_reserved = match (&after, self.reserving.get(&ino)) {
                (None, _) => 0,
                (Some(_), Some(&r)) => r,
                (Some(_), None) => reserved(tx, ino)?,
            };
            let was_reserved = self.reservations.get(&ino).copied().unwrap_or(now_reserved);
            if let Some(b) = before.as_ref().filter(|b| counts(b)) {
                let keys = keys_of(tx, &map, b)?;
                add(&keys, -(charge(b, was_reserved) as i64), -1);
            }
            if let Some(a) = after.as_ref().filter(|a| counts(a)) {
                let keys = keys_of(tx, &map, a)?;
                add(&keys, charge(a, now_reserved) as i64, 1);
            }
            match (&before, &after) {
                (Some(b), Some(a))
                    if a.kind == FileKind::Dir && b.parent != a.parent && counts(a) =>
                {
                    // the tree below moves with it: from the quotas above its old place to
                    // those above its new one
                    let old = dirs_above(tx, &map, b.parent)?;
                    let new = dirs_above(tx, &map, a.parent)?;
                    if old != new {
                        let (bytes, inodes) = scan::below(tx, &map, ino)?;
                        let gone: Vec<Key> = old
                            .iter()
                            .filter(|d| !new.contains(d))
                            .map(|&d| Key::Dir(d))
                            .collect();
                        let came: Vec<Key> = new
                            .iter()
                            .filter(|d| !old.contains(d))
                            .map(|&d| Key::Dir(d))
                            .collect();
                        add(&gone, -bytes, -inodes);
                        add(&came, bytes, inodes);
                    }
                }
                (Some(b), None) if b.kind == FileKind::Dir && map.remove(&Key::Dir(ino)) => {
                    // a directory with a quota is gone, and its quota with it
                    delete_record(tx, Key::Dir(ino))?;
                    map_changed = true;
                }
                _ => {}
            }
        }
        if map_changed {
            put_map(tx, &map)?;
        }
        for (key, (bytes, inodes)) in deltas {
            if (bytes, inodes) == (0, 0) || !map.contains(&key) {
                continue;
            }
            let Some(mut rec) = record(tx, key)? else {
                continue;
            };
            rec.bytes += bytes;
            rec.inodes += inodes;
            if rec.exceeded(bytes > 0, inodes > 0) {
                return Err(FsError::QuotaExceeded);
            }
            put_record(tx, key, &rec)?;
        }
        Ok(())
    }
}

/// Whether a change of an inode from `before` to `after` may change what it counts, or where.
fn differs(before: Option<&Inode>, after: Option<&Inode>) -> bool {
    match (before, after) {
        (Some(b), Some(a)) => {
            counts(b) != counts(a)
                || rounded(b.size) != rounded(a.size)
                || (b.uid, b.gid, b.parent, b.kind) != (a.uid, a.gid, a.parent, a.kind)
        }
        (None, None) => false,
        _ => true,
    }
}

impl crate::meta::MetaRead for Counted<'_> {
    fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
        let inode = self.inner.inode(ino)?;
        self.seen(&inode, ino);
        Ok(inode)
    }
    fn inode_and_dirent(
        &mut self,
        dir: Ino,
        name: &[u8],
    ) -> MetaResult<(Option<Inode>, Option<DirEntry>)> {
        let (inode, entry) = self.inner.inode_and_dirent(dir, name)?;
        self.seen(&inode, dir);
        Ok((inode, entry))
    }
    crate::forward_reads!(@others self => self.inner);
}

impl MetaTxn for Counted<'_> {
    fn put_inode(&mut self, inode: &Inode) -> MetaResult<()> {
        self.first_sight(inode.ino)?;
        self.after.insert(inode.ino, Some(inode.clone()));
        self.inner.put_inode(inode)
    }
    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        self.first_sight(ino)?;
        // a file's reservation goes with it: noted first, when quotas are kept
        let file = matches!(self.before.get(&ino), Some(Some(i)) if i.kind == FileKind::File);
        if file && !self.quotas().map_err(meta_error)?.is_empty() {
            self.noting_reservation(ino, RESERVED, None)?;
        }
        self.after.insert(ino, None);
        self.inner.delete_inode(ino)
    }
    fn put_dirent(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> MetaResult<()> {
        self.inner.put_dirent(parent, name, entry)
    }
    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        self.inner.delete_dirent(parent, name)
    }
    fn apply_splice(&mut self, ino: Ino, splice: &Splice) -> MetaResult<()> {
        self.inner.apply_splice(ino, splice)
    }
    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        self.noting_reservation(ino, name, Some(value))?;
        self.inner.put_xattr(ino, name, value)
    }
    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.noting_reservation(ino, name, None)?;
        self.inner.delete_xattr(ino, name)
    }
    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        self.inner.put_symlink_target(ino, target)
    }
    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        self.inner.add_orphan(ino)
    }
    fn hold_open(&mut self, ino: Ino) -> MetaResult<()> {
        self.inner.hold_open(ino)
    }
    fn commit(self: Box<Self>) -> MetaResult<()> {
        self.inner.commit()
    }
}
