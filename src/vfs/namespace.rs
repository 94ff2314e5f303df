//! Namespace operations: lookup, attributes, create/mkdir/mknod/symlink, link, unlink, rmdir,
//! rename (with no-replace and exchange) and readdir. Each is one metadata transaction.

use super::file::AttrChange;
use super::{Ctx, Fs, FsError, FsResult, LINK_MAX, NAME_MAX, PATH_MAX};
use crate::meta::{DirEntry, FileKind, Ino, Inode, MetaRead, MetaTxn, ROOT_INO, Timestamp};

/// How a timestamp is set by `setattr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// Attribute changes requested by `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with EEXIST instead of replacing the target (RENAME_NOREPLACE).
    pub noreplace: bool,
    /// Swap source and target atomically (RENAME_EXCHANGE).
    pub exchange: bool,
}

/// One directory entry as readdir returns it; `cookie` resumes the listing after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirListing {
    pub cookie: u64,
    pub ino: Ino,
    pub kind: FileKind,
    pub name: Vec<u8>,
}

/// What statfs reports.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

pub(super) fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(FsError::Invalid);
    }
    Ok(())
}

/// Names that creation and removal must refuse.
fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

fn dir_inode(tx: &mut dyn MetaRead, ino: Ino) -> FsResult<Inode> {
    let inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
    if inode.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    Ok(inode)
}

/// Who changes a file, for the rule that drops its setuid/setgid bits: a write, truncate,
/// fallocate or copy into it by a caller without CAP_FSETID drops them (as on ext4, setgid on
/// a file that is not group-executable stays when the caller is in the file's group), and so
/// does any chown.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub gid: u32,
    /// Its process, whose supplementary groups are read when they matter (`/proc`).
    pub pid: u32,
    /// Whether it keeps a file's setuid/setgid when it changes the file (CAP_FSETID).
    pub fsetid: bool,
}

impl Caller {
    /// A caller as FUSE describes one, which does not say whether it has CAP_FSETID: root is
    /// taken to have it.
    pub fn new(uid: u32, gid: u32, pid: u32) -> Caller {
        Caller {
            gid,
            pid,
            fsetid: uid == 0,
        }
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || super::access::supplementary_groups(self.pid).contains(&gid)
    }
}

/// The permission bits left once setuid/setgid are dropped (regular files and the like;
/// directories keep theirs): setuid always; setgid when group-executable (otherwise it marks
/// mandatory locking), or when `caller` is not in the file's group. A chown passes no caller.
fn without_privileges(inode: &Inode, caller: Option<&Caller>) -> u16 {
    let mut perm = inode.perm;
    if inode.kind == FileKind::Dir {
        return perm;
    }
    perm &= !(libc::S_ISUID as u16);
    let outsider = caller.is_some_and(|c| !c.in_group(inode.gid));
    if perm & libc::S_IXGRP as u16 != 0 || outsider {
        perm &= !(libc::S_ISGID as u16);
    }
    perm
}

/// A directory's inode (as `dir_inode`) and its entry `name`, read together.
fn dir_and_entry(
    tx: &mut dyn MetaRead,
    dir: Ino,
    name: &[u8],
) -> FsResult<(Inode, Option<DirEntry>)> {
    let (inode, entry) = tx.inode_and_dirent(dir, name)?;
    let inode = inode.ok_or(FsError::NotFound)?;
    if inode.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    Ok((inode, entry))
}

impl Fs {
    /// Volumes formatted before `format` made the root get it at their first mount.
    pub(super) fn ensure_root(&self) -> FsResult<()> {
        self.core.txn(|tx| {
            if tx.inode(ROOT_INO)?.is_none() {
                tx.put_inode(&Inode::root(Timestamp::now()))?;
            }
            Ok(())
        })
    }

    /// Attributes, including the size and mtime of writes not yet committed.
    /// An inode in the trash shows the links it had outside it (none, for a file or
    /// directory removed while open), as it would had it been deleted.
    pub fn getattr(&self, ino: Ino) -> FsResult<Inode> {
        let mut inode = self.attributes(ino)?;
        if crate::vfs::tree::trash::holds(&inode) {
            inode.nlink = 0;
        }
        Ok(inode)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Inode> {
        if name.len() > NAME_MAX {
            return Err(FsError::NameTooLong);
        }
        if name == b"." {
            // an inode of any kind, by number: how the kernel finds a file again from an NFS
            // or open_by_handle_at handle once it has dropped it from its cache
            return self.attributes(parent);
        }
        for checked in [false, true] {
            let mut tx = self.core.meta.read()?;
            let dir = dir_inode(tx.as_mut(), parent)?;
            let ino = match name {
                b".." => dir.parent,
                _ => tx.dirent(parent, name)?.ok_or(FsError::NotFound)?.ino,
            };
            drop(tx);
            // On a shared volume an entry can come from a cache the change feed has not
            // caught up with yet: one naming an inode that is gone, or has no links left, is
            // stale. The directory is checked against the database (its cached entries go
            // if it changed) and the name looked up again.
            let found = self.attributes(ino);
            let stale = match &found {
                Ok(i) => i.nlink == 0,
                Err(e) => matches!(e, FsError::NotFound),
            };
            if !stale || !self.is_shared() {
                return found;
            }
            if checked {
                return Err(FsError::NotFound);
            }
            self.revalidate(parent)?;
        }
        Err(FsError::NotFound)
    }

    /// Creates a file, device, fifo or socket; `mode` carries the type bits.
    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<Inode> {
        let kind = FileKind::from_mode(mode).ok_or(FsError::Invalid)?;
        if kind == FileKind::Dir || kind == FileKind::Symlink {
            return Err(FsError::Invalid);
        }
        self.create_inode(ctx, parent, name, kind, mode, rdev, None, false)
    }

    pub fn mkdir(&self, ctx: Ctx, parent: Ino, name: &[u8], mode: u32) -> FsResult<Inode> {
        self.create_inode(ctx, parent, name, FileKind::Dir, mode, 0, None, false)
    }

    pub fn symlink(&self, ctx: Ctx, parent: Ino, name: &[u8], target: &[u8]) -> FsResult<Inode> {
        if target.len() > PATH_MAX {
            return Err(FsError::NameTooLong);
        }
        if target.is_empty() {
            return Err(FsError::NotFound);
        }
        self.create_inode(
            ctx,
            parent,
            name,
            FileKind::Symlink,
            0o777,
            0,
            Some(target),
            false,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_inode(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
        opened: bool,
    ) -> FsResult<Inode> {
        check_name(name)?;
        if is_dot(name) {
            return Err(FsError::Exists);
        }
        super::changeable(parent)?;
        let ino = self.core.meta.allocate_ino()?;
        self.core.txn(|tx| {
            let now = Timestamp::now();
            let (mut dir, existing) = dir_and_entry(tx, parent, name)?;
            if dir.nlink == 0 || crate::vfs::tree::trash::holds(&dir) {
                return Err(FsError::NotFound); // removed directory
            }
            if existing.is_some() {
                return Err(FsError::Exists);
            }
            let mut inode = Inode::new(ino, kind, (mode & 0o7777) as u16, ctx.uid, ctx.gid, now);
            inode.rdev = rdev;
            if dir.perm & libc::S_ISGID as u16 != 0 {
                inode.gid = dir.gid;
                if kind == FileKind::Dir {
                    inode.perm |= libc::S_ISGID as u16;
                }
            }
            if kind == FileKind::Dir {
                if dir.nlink >= LINK_MAX {
                    return Err(FsError::TooManyLinks);
                }
                dir.nlink += 1;
            }
            // a directory's parent; any other inode's home (`vfs::quota`)
            inode.parent = parent;
            if let Some(t) = target {
                inode.size = t.len() as u64;
                tx.put_symlink_target(ino, t)?;
            }
            if opened {
                // a file created to be opened is held (shared volumes) with its creation
                tx.hold_open(ino)?;
            }
            let cookie = dir.take_cookie();
            tx.put_dirent(parent, name, &DirEntry { ino, kind, cookie })?;
            dir.touch(now);
            tx.put_inode(&dir)?;
            tx.put_inode(&inode)?;
            Ok(inode)
        })
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let mut tx = self.core.meta.read()?;
        let inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
        if inode.kind != FileKind::Symlink {
            return Err(FsError::Invalid);
        }
        tx.symlink_target(ino)?.ok_or(FsError::NotFound)
    }

    /// Drops one link; an inode left with none is deleted, or kept as an orphan while open.
    /// Drops one link; an inode left with none goes to the trash when it is on (`tree::trash`),
    /// is kept as an orphan while open, or is deleted. `from`: the name that went.
    fn drop_link(
        &self,
        tx: &mut dyn MetaTxn,
        inode: &mut Inode,
        now: Timestamp,
        open: Option<&std::sync::Arc<super::file::OpenFile>>,
        from: (Ino, &[u8]),
    ) -> FsResult<()> {
        if inode.nlink == 1
            && let Some(bin) = *self.core.trash.read().expect("lock")
        {
            let fresh = || self.core.meta.allocate_ino();
            return Ok(crate::vfs::tree::trash::put(
                tx, &bin, inode, from.0, from.1, now, &fresh,
            )?);
        }
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.ctime = now;
        if inode.nlink > 0 {
            if inode.parent == from.0 {
                inode.parent = super::quota::rehome(tx, from.0)?;
            }
            tx.put_inode(inode)?;
        } else if let Some(file) = open {
            tx.put_inode(inode)?;
            tx.add_orphan(inode.ino)?;
            // its last release deletes it (set before the commit: that release checks again)
            file.unlinked
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // on a shared volume it is this session's: lost with it (`vfs::fence`)
            super::Core::claim(file, self.core.session());
        } else {
            tx.delete_inode(inode.ino)?;
        }
        Ok(())
    }

    pub fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        self.removing(parent, name, |tx, mut dir, entry, now| {
            if entry.kind == FileKind::Dir {
                return Err(FsError::IsDir);
            }
            let mut inode = tx.inode(entry.ino)?.ok_or(FsError::NotFound)?;
            tx.delete_dirent(parent, name)?;
            dir.touch(now);
            tx.put_inode(&dir)?;
            let open = self.core.open_file(entry.ino);
            self.drop_link(tx, &mut inode, now, open.as_ref(), (parent, name))
        })
    }

    /// Runs `f` on the directory and the entry `name` names in it, in one transaction, holding
    /// the gate of the entry's inode: "is it open?" and its deletion are one step.
    fn removing(
        &self,
        parent: Ino,
        name: &[u8],
        f: impl Fn(&mut dyn MetaTxn, Inode, DirEntry, Timestamp) -> FsResult<()>,
    ) -> FsResult<()> {
        super::changeable(parent)?;
        self.gated(parent, name, |target| {
            self.core.txn(|tx| {
                let (dir, entry) = dir_and_entry(tx, parent, name)?;
                let entry = entry.ok_or(FsError::NotFound)?;
                // the snapshots folder itself
                super::changeable(entry.ino)?;
                if Some(entry.ino) != target {
                    return Err(FsError::Moved);
                }
                f(tx, dir, entry, Timestamp::now())
            })
        })
    }

    /// Runs `f` holding the gate of the inode `name` names in `parent` (none: no gate), with
    /// that inode; again while `f` finds the name moved to another inode meanwhile.
    fn gated<T>(
        &self,
        parent: Ino,
        name: &[u8],
        f: impl Fn(Option<Ino>) -> FsResult<T>,
    ) -> FsResult<T> {
        loop {
            let target = {
                let mut tx = self.core.meta.read()?;
                tx.dirent(parent, name)?.map(|e| e.ino)
            };
            let _gate = target.map(|ino| self.core.gate(ino));
            match f(target) {
                Err(FsError::Moved) => continue,
                r => return r,
            }
        }
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        if name == b"." {
            return Err(FsError::Invalid);
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        check_name(name)?;
        self.removing(parent, name, |tx, mut dir, entry, now| {
            if entry.kind != FileKind::Dir {
                return Err(FsError::NotDir);
            }
            // reading the child for update guards the emptiness check against concurrent creates
            let mut child = tx.inode(entry.ino)?.ok_or(FsError::NotFound)?;
            if !tx.dir_is_empty(entry.ino)? {
                return Err(FsError::NotEmpty);
            }
            tx.delete_dirent(parent, name)?;
            match *self.core.trash.read().expect("lock") {
                Some(bin) => {
                    let fresh = || self.core.meta.allocate_ino();
                    crate::vfs::tree::trash::put(tx, &bin, &mut child, parent, name, now, &fresh)?
                }
                None => self.drop_dir(tx, &mut child, now)?,
            }
            dir.nlink -= 1;
            dir.touch(now);
            Ok(tx.put_inode(&dir)?)
        })
    }

    /// Deletes an empty directory that lost its name, or keeps it with no links while it is
    /// open here (its last `releasedir` deletes it): fstat on it still works, as on ext4.
    fn drop_dir(&self, tx: &mut dyn MetaTxn, dir: &mut Inode, now: Timestamp) -> FsResult<()> {
        if self.core.dir_is_open(dir.ino) {
            dir.nlink = 0;
            dir.ctime = now;
            tx.put_inode(dir)?;
            tx.add_orphan(dir.ino)?;
        } else {
            tx.delete_inode(dir.ino)?;
        }
        Ok(())
    }

    /// A directory opened (opendir): kept while open if it loses its name. On a shared volume
    /// the first open here also holds it against other mounts (`SharedVolume::hold`).
    pub fn opendir(&self, ino: Ino) -> FsResult<()> {
        let _gate = self.core.gate(ino);
        let first = {
            let mut dirs = self.core.open_dirs.lock().expect("lock");
            let n = dirs.entry(ino).or_insert(0);
            *n += 1;
            *n == 1
        };
        let held = match self.core.meta.shared() {
            Some(shared) if first => shared.hold(ino).map_err(FsError::from),
            _ => Ok(()),
        };
        let checked = held.and_then(|()| dir_inode(self.core.meta.read()?.as_mut(), ino));
        drop(_gate);
        if let Err(e) = checked {
            self.releasedir(ino)?;
            return Err(e);
        }
        Ok(())
    }

    /// The close of an opened directory; the last one deletes it if it lost its name.
    pub fn releasedir(&self, ino: Ino) -> FsResult<()> {
        let _gate = self.core.gate(ino);
        {
            let mut dirs = self.core.open_dirs.lock().expect("lock");
            match dirs.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return Ok(());
                }
                Some(_) => {
                    dirs.remove(&ino);
                }
                None => return Ok(()),
            }
        }
        let deleted = self.core.txn(|tx| {
            if let Some(inode) = tx.inode(ino)?
                && inode.kind == FileKind::Dir
                && inode.nlink == 0
            {
                tx.delete_inode(ino)?;
            }
            Ok(())
        });
        if let Some(shared) = self.core.meta.shared() {
            shared.unhold(ino);
        }
        deleted
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> FsResult<Inode> {
        check_name(newname)?;
        super::changeable(ino)?;
        super::changeable(newparent)?;
        if is_dot(newname) {
            return Err(FsError::Exists);
        }
        self.core.txn(|tx| {
            let now = Timestamp::now();
            let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            if inode.kind == FileKind::Dir {
                return Err(FsError::NotPermitted);
            }
            // (a file in the trash has no links as applications see it)
            if inode.nlink == 0 || crate::vfs::tree::trash::holds(&inode) {
                return Err(FsError::NotFound);
            }
            if inode.nlink >= LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            let mut dir = dir_inode(tx, newparent)?;
            if dir.nlink == 0 || crate::vfs::tree::trash::holds(&dir) {
                return Err(FsError::NotFound);
            }
            if tx.dirent(newparent, newname)?.is_some() {
                return Err(FsError::Exists);
            }
            super::quota::may_link(tx, inode.parent, newparent)?;
            let cookie = dir.take_cookie();
            tx.put_dirent(newparent, newname, &DirEntry::new(ino, inode.kind, cookie))?;
            dir.touch(now);
            tx.put_inode(&dir)?;
            inode.nlink += 1;
            inode.ctime = now;
            tx.put_inode(&inode)?;
            Ok(inode)
        })?;
        self.getattr(ino)
    }

    /// Fails with EINVAL when `dir` is `moved` or lies inside it (a directory cannot move into itself).
    fn check_not_inside(tx: &mut dyn MetaTxn, moved: Ino, mut dir: Ino) -> FsResult<()> {
        loop {
            if dir == moved {
                return Err(FsError::Invalid);
            }
            if dir == ROOT_INO {
                return Ok(());
            }
            dir = tx.inode(dir)?.ok_or(FsError::NotFound)?.parent;
        }
    }

    /// One transaction for every case POSIX names (replace, exchange, no-replace, directory
    /// over directory, loops); long because the checks must all see the same moment.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: RenameFlags,
    ) -> FsResult<()> {
        check_name(name)?;
        check_name(newname)?;
        if is_dot(name) || is_dot(newname) {
            return Err(FsError::Invalid);
        }
        if flags.exchange && flags.noreplace {
            return Err(FsError::Invalid);
        }
        super::changeable(parent)?;
        super::changeable(newparent)?;
        // the gate of the inode a replacing rename may delete (see `unlink`)
        self.gated(newparent, newname, |target| {
            self.core.txn(|tx| {
                let now = Timestamp::now();
                let same_dir = parent == newparent;
                let mut p = dir_inode(tx, parent)?;
                let mut np = if same_dir {
                    None
                } else {
                    let np = dir_inode(tx, newparent)?;
                    if np.nlink == 0 || crate::vfs::tree::trash::holds(&np) {
                        return Err(FsError::NotFound);
                    }
                    Some(np)
                };
                let src = tx.dirent(parent, name)?.ok_or(FsError::NotFound)?;
                let dst = tx.dirent(newparent, newname)?;
                // the snapshots folder itself
                super::changeable(src.ino)?;
                if let Some(d) = dst {
                    super::changeable(d.ino)?;
                }
                if dst.map(|d| d.ino) != target {
                    return Err(FsError::Moved);
                }
                if let Some(d) = dst
                    && d.ino == src.ino
                {
                    return Ok(()); // two names of one inode: POSIX says do nothing
                }
                let mut s = tx.inode(src.ino)?.ok_or(FsError::NotFound)?;
                if src.kind == FileKind::Dir && !same_dir {
                    Self::check_not_inside(tx, src.ino, newparent)?;
                }
                if flags.exchange {
                    let d = dst.ok_or(FsError::NotFound)?;
                    let mut di = tx.inode(d.ino)?.ok_or(FsError::NotFound)?;
                    if d.kind == FileKind::Dir && !same_dir {
                        Self::check_not_inside(tx, d.ino, parent)?;
                    }
                    tx.put_dirent(parent, name, &DirEntry::new(d.ino, d.kind, src.cookie))?;
                    tx.put_dirent(
                        newparent,
                        newname,
                        &DirEntry::new(src.ino, src.kind, d.cookie),
                    )?;
                    if let Some(np) = np.as_mut() {
                        if src.kind == FileKind::Dir {
                            p.nlink -= 1;
                            np.nlink += 1;
                        }
                        if d.kind == FileKind::Dir {
                            np.nlink -= 1;
                            p.nlink += 1;
                        }
                        // a directory's parent, any other inode's home (`vfs::quota`)
                        super::quota::may_move(tx, &s, newparent)?;
                        super::quota::may_move(tx, &di, parent)?;
                        s.parent = newparent;
                        di.parent = parent;
                    }
                    di.ctime = now;
                    tx.put_inode(&di)?;
                } else {
                    let target_dir = np.as_mut().unwrap_or(&mut p);
                    let cookie = match dst {
                        Some(_) if flags.noreplace => return Err(FsError::Exists),
                        Some(d) => {
                            let mut di = tx.inode(d.ino)?.ok_or(FsError::NotFound)?;
                            match (src.kind == FileKind::Dir, d.kind == FileKind::Dir) {
                                (true, false) => return Err(FsError::NotDir),
                                (false, true) => return Err(FsError::IsDir),
                                (true, true) => {
                                    if !tx.dir_is_empty(d.ino)? {
                                        return Err(FsError::NotEmpty);
                                    }
                                    self.drop_dir(tx, &mut di, now)?;
                                    target_dir.nlink -= 1;
                                }
                                (false, false) => {
                                    let open = self.core.open_file(d.ino);
                                    let from = (newparent, newname);
                                    self.drop_link(tx, &mut di, now, open.as_ref(), from)?
                                }
                            }
                            d.cookie
                        }
                        // a new name in the same directory keeps the entry's place in the
                        // listing: a reader going through it while names move (renamed away
                        // and back) never meets one entry twice
                        None if same_dir => src.cookie,
                        None => target_dir.take_cookie(),
                    };
                    if !same_dir {
                        if src.kind == FileKind::Dir {
                            target_dir.nlink += 1;
                        }
                        super::quota::may_move(tx, &s, newparent)?;
                        s.parent = newparent;
                    }
                    tx.delete_dirent(parent, name)?;
                    tx.put_dirent(
                        newparent,
                        newname,
                        &DirEntry::new(src.ino, src.kind, cookie),
                    )?;
                    if src.kind == FileKind::Dir && !same_dir {
                        p.nlink -= 1;
                    }
                }
                s.ctime = now;
                tx.put_inode(&s)?;
                p.touch(now);
                tx.put_inode(&p)?;
                if let Some(mut np) = np {
                    np.touch(now);
                    tx.put_inode(&np)?;
                }
                Ok(())
            })
        })
    }

    /// Up to `limit` entries after `offset` (0 starts at the beginning, then pass the last
    /// entry's cookie). `.` and `..` come first.
    pub fn readdir(&self, ino: Ino, offset: u64, limit: usize) -> FsResult<Vec<DirListing>> {
        let mut tx = self.core.meta.read()?;
        let dir = dir_inode(tx.as_mut(), ino)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for (cookie, target, name) in [(1, ino, &b"."[..]), (2, dir.parent, &b".."[..])] {
            if offset < cookie {
                out.push(DirListing {
                    cookie,
                    ino: target,
                    kind: FileKind::Dir,
                    name: name.to_vec(),
                });
            }
        }
        let mut want = limit.saturating_sub(out.len());
        if ino == ROOT_INO {
            // more, in place of the folders left out (the snapshots and the trash)
            want += 2;
        }
        for (name, e) in tx.list_dir(ino, offset.max(2), want)? {
            if ino == ROOT_INO && crate::meta::is_frozen(e.ino) {
                // the snapshots and trash folders: found by name, not listed (as users of
                // other snapshot systems expect)
                continue;
            }
            out.push(DirListing {
                cookie: e.cookie,
                ino: e.ino,
                kind: e.kind,
                name,
            });
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Changes attributes; a size change truncates or extends the file.
    pub fn setattr(&self, ino: Ino, attr: SetAttr) -> FsResult<Inode> {
        super::changeable(ino)?;
        // a new owner is charged at once (EDQUOT here, not at a later flush)
        let owner = attr.uid.is_some() || attr.gid.is_some();
        if attr.size.is_none()
            && !(owner && self.core.has_quotas()?)
            && self.defer_attributes(ino, &attr)
        {
            return self.getattr(ino);
        }
        // Pending writes commit first, so their mtime cannot override one set here.
        self.flush_inode(ino, false)?;
        if let Some(size) = attr.size {
            self.truncate(ino, size)?;
        }
        let changes_meta = attr.mode.is_some()
            || attr.uid.is_some()
            || attr.gid.is_some()
            || attr.atime.is_some()
            || attr.mtime.is_some()
            || attr.ctime.is_some();
        if changes_meta {
            self.core.txn(|tx| {
                let now = Timestamp::now();
                let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
                if let Some(mode) = attr.mode {
                    inode.perm = (mode & 0o7777) as u16;
                }
                if let Some(uid) = attr.uid {
                    inode.uid = uid;
                }
                if let Some(gid) = attr.gid {
                    inode.gid = gid;
                }
                let resolve = |t: TimeSet| match t {
                    TimeSet::Now => now,
                    TimeSet::At(t) => t,
                };
                if let Some(t) = attr.atime {
                    inode.atime = resolve(t);
                }
                if let Some(t) = attr.mtime {
                    inode.mtime = resolve(t);
                }
                inode.ctime = attr.ctime.unwrap_or(now);
                tx.put_inode(&inode)?;
                Ok(())
            })?;
        }
        self.getattr(ino)
    }

    /// `setattr` by `caller`: a truncate by a caller without CAP_FSETID, and any chown, drop
    /// setuid/setgid unless the change sets the mode itself.
    pub fn setattr_by(&self, ino: Ino, set: SetAttr, caller: &Caller) -> FsResult<Inode> {
        let truncate = set.size.is_some() && !caller.fsetid;
        let set = match truncate || set.uid.is_some() || set.gid.is_some() {
            true => self.without_privileges(ino, set, truncate.then_some(caller))?,
            false => set,
        };
        self.setattr(ino, set)
    }

    /// `caller` wrote to `ino` (a write, fallocate or copy into it): setuid/setgid are dropped
    /// unless it has CAP_FSETID. True when the mode changed.
    pub fn written_by(&self, ino: Ino, caller: &Caller) -> FsResult<bool> {
        if caller.fsetid {
            return Ok(false);
        }
        let set = self.without_privileges(ino, SetAttr::default(), Some(caller))?;
        if set.mode.is_none() {
            return Ok(false);
        }
        self.setattr(ino, set)?;
        Ok(true)
    }

    /// `set` with setuid/setgid cleared as a chown (no caller) or a truncate by `caller`
    /// clears them, unless it sets the mode itself.
    fn without_privileges(
        &self,
        ino: Ino,
        mut set: SetAttr,
        caller: Option<&Caller>,
    ) -> FsResult<SetAttr> {
        if set.mode.is_none() {
            let inode = self.getattr(ino)?;
            let kept = without_privileges(&inode, caller);
            if kept != inode.perm {
                set.mode = Some(kept as u32);
            }
        }
        Ok(set)
    }

    /// A file with writes not yet committed takes mode, owner and time changes into its
    /// pending state; its next flush (at the latest, close) commits them with the data. True
    /// when deferred.
    fn defer_attributes(&self, ino: Ino, attr: &SetAttr) -> bool {
        let Some(file) = self.open_file(ino) else {
            return false;
        };
        let mut st = file.lock();
        if !st.has_pending() {
            return false;
        }
        let now = Timestamp::now();
        let resolve = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(t) => t,
        };
        let change = AttrChange {
            perm: attr.mode.map(|m| (m & 0o7777) as u16),
            uid: attr.uid,
            gid: attr.gid,
            atime: attr.atime.map(resolve),
            ctime: attr.ctime.unwrap_or(now),
        };
        st.attrs = Some(st.attrs.unwrap_or_default().then(change));
        if let Some(t) = attr.mtime {
            // later writes move it again, as they would a committed one
            st.mtime = Some(resolve(t));
        }
        true
    }

    /// Capacity as the filesystem holding the block store reports it, when it is local; as
    /// the volume's quota sets it, when it has one (the trash then free but not available).
    pub fn statfs(&self, capacity_of: Option<&std::path::Path>) -> FsResult<FsStats> {
        let mut stats = FsStats {
            block_size: 4096,
            blocks: 1 << 38,
            blocks_free: 1 << 38,
            blocks_avail: 1 << 38,
            files: 1 << 32,
            files_free: 1 << 32,
            name_max: NAME_MAX as u32,
        };
        if let Some(path) = capacity_of
            && let Ok(v) = nix::sys::statvfs::statvfs(path)
        {
            let scale = (v.fragment_size() / 4096).max(1);
            stats.blocks = v.blocks() * scale;
            stats.blocks_free = v.blocks_free() * scale;
            stats.blocks_avail = v.blocks_available() * scale;
        }
        let mut view = self.core.meta.read()?;
        if let Some(q) = super::quota::record(view.as_mut(), super::quota::Key::Volume)? {
            // the volume's capacity and inode limit, as its quota sets them
            let unit = stats.block_size as u64;
            if q.bytes_limit > 0 {
                let free = (q.bytes_limit as i64 - q.bytes).max(0) as u64 / unit;
                // The trash counts against the capacity, but it empties itself: like ext4's
                // reserved blocks, it is free (`df` leaves it out of Used) and not available.
                let trash = match super::quota::record(view.as_mut(), super::quota::Key::Trash)? {
                    Some(t) if !t.counting => t.bytes.max(0) as u64 / unit,
                    _ => 0,
                };
                stats.blocks = q.bytes_limit / unit;
                stats.blocks_free = stats.blocks_free.min(free + trash);
                stats.blocks_avail = stats.blocks_avail.min(free);
            }
            if q.inodes_limit > 0 {
                stats.files = q.inodes_limit;
                stats.files_free = (q.inodes_limit as i64 - q.inodes).max(0) as u64;
            }
        }
        Ok(stats)
    }

    /// Refuses an allocation of `len` bytes larger than the space `statfs` reports available
    /// (ENOSPC, as ext4 refuses a fallocate it cannot satisfy). Blocks are stored when data is
    /// written, so nothing is reserved: this only turns away what cannot fit.
    pub fn check_space(&self, len: u64, capacity_of: Option<&std::path::Path>) -> FsResult<()> {
        let stats = self.statfs(capacity_of)?;
        match len > stats.blocks_avail.saturating_mul(stats.block_size as u64) {
            true => Err(FsError::NoSpace),
            false => Ok(()),
        }
    }
}
