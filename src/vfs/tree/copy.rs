//! Copies a tree as metadata only: new inodes naming the same blocks, so no block is read or
//! written and identical content stays stored once (see `tree` for how the copy stays
//! invisible until it is complete).

use std::collections::HashMap;

use super::{PAGE, detached};
use crate::domain::Extent;
use crate::domain::extent::Splice;
use crate::meta::{DirEntry, FROZEN, FileKind, Ino, Inode, MetaRead, MetaStore, Timestamp};
use crate::vfs::access::{EXEC, READ, Who};
use crate::vfs::{FsError, FsResult, run_txn};

/// Records written in one transaction, at most (a file's extents count one each).
const BATCH_RECORDS: usize = 2000;

/// How a copy is made.
pub struct Plan<'a> {
    /// Whose copy it is. Anyone but root must be able to read every file and to list and search
    /// every directory of the source (EACCES otherwise, before anything is linked), owns the
    /// copies, keeps a file's group only if it is a member, and copies only `user.` and
    /// `system.` extended attributes, as `cp -a` run by that user would.
    pub who: &'a Who,
    /// Keep owners, modes and all four times exactly (snapshots). Otherwise the copies are new
    /// files: changed and created now, modified and accessed when their sources were.
    pub exact: bool,
    /// Give the copies frozen numbers (snapshots: read-only, see `meta::FROZEN`).
    pub frozen: bool,
    /// Directories left out, with what they hold (a snapshot of the root leaves out the
    /// snapshots folder).
    pub skip: &'a [Ino],
}

/// A copy made and not linked anywhere yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    pub root: Ino,
    pub kind: FileKind,
    /// Inodes written.
    pub inodes: u64,
    /// Sum of the copied files' sizes.
    pub bytes: u64,
}

/// Copies the tree at `src` into new inodes no entry names (a detached tree), as one
/// consistent view of the volume sees it. The tree is recorded before that view is taken (gc
/// spares every block from then on: `detached`), and its root is written first, then each
/// entry before the inode it names, so whatever a crash leaves is reachable from the root
/// for `detached::sweep`. On an error what was written is removed.
pub fn copy_detached(meta: &dyn MetaStore, src: Ino, plan: &Plan) -> FsResult<Copied> {
    let root = if plan.frozen {
        meta.allocate_ino()? | FROZEN
    } else {
        meta.allocate_ino()?
    };
    detached::record(meta, root)?;
    let mut view = meta.snapshot()?;
    let source = match view.inode(src)? {
        Some(s) => s,
        None => {
            detached::forget(meta, root)?;
            return Err(FsError::NotFound);
        }
    };
    let mut copier = Copier {
        meta,
        plan,
        now: Timestamp::now(),
        batch: Vec::new(),
        records: 0,
        links: HashMap::new(),
        copied: Copied {
            root: 0,
            kind: source.kind,
            inodes: 0,
            bytes: 0,
        },
    };
    copier.copied.root = root;
    let done = copier.run(view.as_mut(), source, root);
    match done {
        Ok(()) => Ok(copier.copied),
        Err(e) => {
            if let Err(cleanup) = detached::remove(meta, root) {
                tracing::warn!("a failed copy left detached tree {root}: {cleanup}");
            }
            Err(e)
        }
    }
}

/// One record of a batch.
enum Put {
    Inode(Inode),
    Entry(Ino, Vec<u8>, DirEntry),
    Extents(Ino, Splice),
    Xattr(Ino, Vec<u8>, Vec<u8>),
    Target(Ino, Vec<u8>),
}

struct Copier<'a> {
    meta: &'a dyn MetaStore,
    plan: &'a Plan<'a>,
    now: Timestamp,
    batch: Vec<Put>,
    records: usize,
    /// Files with several names, by source inode: their copy, whose link count grows with
    /// each name found inside the tree.
    links: HashMap<Ino, Inode>,
    copied: Copied,
}

impl Copier<'_> {
    fn fresh(&self) -> FsResult<Ino> {
        let ino = self.meta.allocate_ino()?;
        Ok(if self.plan.frozen { ino | FROZEN } else { ino })
    }

    fn push(&mut self, put: Put) -> FsResult<()> {
        self.records += match &put {
            Put::Extents(_, s) => s.insert.len().max(1),
            _ => 1,
        };
        self.batch.push(put);
        if self.records >= BATCH_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> FsResult<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = &self.batch;
        run_txn(self.meta, |tx| {
            for put in batch {
                match put {
                    Put::Inode(i) => tx.put_inode(i)?,
                    Put::Entry(dir, name, e) => tx.put_dirent(*dir, name, e)?,
                    Put::Extents(ino, s) => tx.apply_splice(*ino, s)?,
                    Put::Xattr(ino, name, value) => tx.put_xattr(*ino, name, value)?,
                    Put::Target(ino, target) => tx.put_symlink_target(*ino, target)?,
                }
            }
            Ok(())
        })?;
        self.batch.clear();
        self.records = 0;
        detached::record(self.meta, self.copied.root)?;
        Ok(())
    }

    /// `source` as a new inode `ino`, owned and timed as the plan says.
    fn shaped(&self, source: &Inode, ino: Ino) -> Inode {
        let mut inode = source.clone();
        inode.ino = ino;
        inode.data_version = 0;
        // set by the caller: the copy's own place (a file's home, `vfs::quota`)
        inode.parent = 0;
        if self.plan.exact {
            return inode;
        }
        inode.ctime = self.now;
        inode.crtime = self.now;
        let who = self.plan.who;
        if !who.is_root() {
            if inode.uid != who.uid {
                inode.uid = who.uid;
                inode.perm &= !(libc::S_ISUID as u16);
            }
            if !who.in_group(inode.gid) {
                inode.gid = who.gid;
                inode.perm &= !(libc::S_ISGID as u16);
            }
        }
        inode
    }

    /// Refuses a source the caller may not copy.
    fn check(&self, source: &Inode) -> FsResult<()> {
        let who = self.plan.who;
        if who.is_root() {
            return Ok(());
        }
        let ok = match source.kind {
            FileKind::Dir => who.may(source, READ | EXEC),
            FileKind::File => who.may(source, READ),
            // making device nodes needs CAP_MKNOD
            FileKind::CharDevice | FileKind::BlockDevice => return Err(FsError::NotPermitted),
            FileKind::Symlink | FileKind::Fifo | FileKind::Socket => true,
        };
        match ok {
            true => Ok(()),
            false => Err(FsError::Denied),
        }
    }

    fn copy_xattrs(&mut self, view: &mut dyn MetaRead, from: Ino, to: Ino) -> FsResult<()> {
        for name in view.xattr_names(from)? {
            // the filesystem's own marks (a snapshot's origin, a trashed file's) stay behind
            let own = name.starts_with(b"trusted.graviton.");
            let copied = !own
                && (self.plan.who.is_root()
                    || name.starts_with(b"user.")
                    || name.starts_with(b"system."));
            if !copied {
                continue;
            }
            if let Some(value) = view.xattr(from, &name)? {
                self.push(Put::Xattr(to, name, value))?;
            }
        }
        Ok(())
    }

    /// Copies a file, symlink or special file as `ino`, with one link.
    fn copy_leaf(
        &mut self,
        view: &mut dyn MetaRead,
        source: &Inode,
        ino: Ino,
        home: Ino,
    ) -> FsResult<Inode> {
        self.check(source)?;
        let mut inode = self.shaped(source, ino);
        // a copy with no name yet (a file cloned on its own) has no link until `link`
        inode.nlink = (home != 0) as u32;
        inode.parent = home;
        let extents: Vec<Extent> = match source.kind {
            FileKind::File => view.extents(source.ino, 0..u64::MAX)?,
            _ => Vec::new(),
        };
        inode.extent_count = extents.len() as u64;
        self.push(Put::Inode(inode.clone()))?;
        for part in extents.chunks(BATCH_RECORDS) {
            let splice = Splice {
                remove: Vec::new(),
                insert: part.to_vec(),
            };
            self.push(Put::Extents(ino, splice))?;
        }
        if source.kind == FileKind::Symlink
            && let Some(target) = view.symlink_target(source.ino)?
        {
            self.push(Put::Target(ino, target))?;
        }
        self.copy_xattrs(view, source.ino, ino)?;
        self.copied.inodes += 1;
        if source.kind == FileKind::File {
            self.copied.bytes += source.size;
        }
        Ok(inode)
    }

    fn run(&mut self, view: &mut dyn MetaRead, source: Inode, root: Ino) -> FsResult<()> {
        if source.kind != FileKind::Dir {
            // no name yet: `link` gives it its one
            self.copy_leaf(view, &source, root, 0)?;
            return self.flush();
        }
        // the root first, on its own: a crash leaves a tree `detached::sweep` can walk
        let mut top = self.shaped(&source, root);
        top.parent = 0;
        self.push(Put::Inode(top))?;
        self.flush()?;
        // (source directory, its copy, the copy's parent: 0 for the root, linked last)
        let mut todo = vec![(source, root, 0)];
        while let Some((dir, copy, parent)) = todo.pop() {
            self.check(&dir)?;
            let mut subdirs = 0;
            let mut after = 2;
            loop {
                let page = view.list_dir(dir.ino, after, PAGE)?;
                for (name, entry) in &page {
                    if self.plan.skip.contains(&entry.ino) {
                        continue;
                    }
                    let child = view.inode(entry.ino)?.ok_or_else(|| {
                        FsError::Meta(crate::meta::MetaError::Corrupt(format!(
                            "entry of directory {} names inode {} which does not exist",
                            dir.ino, entry.ino
                        )))
                    })?;
                    // each entry goes before the inode it names (a directory's own, final
                    // record comes once its entries are done)
                    let named = |ino| {
                        Put::Entry(
                            copy,
                            name.clone(),
                            DirEntry::new(ino, entry.kind, entry.cookie),
                        )
                    };
                    if child.kind == FileKind::Dir {
                        subdirs += 1;
                        let ino = self.fresh()?;
                        self.push(named(ino))?;
                        let mut placeholder = self.shaped(&child, ino);
                        placeholder.parent = copy;
                        self.push(Put::Inode(placeholder))?;
                        todo.push((child, ino, copy));
                    } else if let Some(linked) = self.links.get_mut(&child.ino) {
                        // a further name of a file copied already
                        linked.nlink += 1;
                        let linked = linked.clone();
                        self.push(named(linked.ino))?;
                        self.push(Put::Inode(linked))?;
                    } else {
                        let ino = self.fresh()?;
                        self.push(named(ino))?;
                        let copy = self.copy_leaf(view, &child, ino, copy)?;
                        if child.nlink > 1 {
                            self.links.insert(child.ino, copy);
                        }
                    }
                }
                match page.last() {
                    Some((_, last)) if page.len() == PAGE => after = last.cookie,
                    _ => break,
                }
            }
            let mut inode = self.shaped(&dir, copy);
            inode.nlink = 2 + subdirs;
            inode.parent = parent;
            self.push(Put::Inode(inode))?;
            self.copy_xattrs(view, dir.ino, copy)?;
            self.copied.inodes += 1;
        }
        self.flush()
    }
}

/// Links a detached tree's root as `name` in directory `parent`, in one transaction. The name
/// taken meanwhile (EEXIST) or any other failure removes the tree.
pub fn link(meta: &dyn MetaStore, copied: &Copied, parent: Ino, name: &[u8]) -> FsResult<()> {
    let linked = run_txn(meta, |tx| {
        let now = Timestamp::now();
        let (dir, existing) = tx.inode_and_dirent(parent, name)?;
        let mut dir = dir.ok_or(FsError::NotFound)?;
        if dir.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        if dir.nlink == 0 || super::trash::holds(&dir) {
            return Err(FsError::NotFound);
        }
        if existing.is_some() {
            return Err(FsError::Exists);
        }
        let mut root = tx.inode(copied.root)?.ok_or(FsError::NotFound)?;
        if root.kind == FileKind::Dir {
            if dir.nlink >= crate::vfs::LINK_MAX {
                return Err(FsError::TooManyLinks);
            }
            dir.nlink += 1;
        } else {
            root.nlink = 1;
        }
        root.parent = parent;
        let cookie = dir.take_cookie();
        tx.put_dirent(parent, name, &DirEntry::new(root.ino, root.kind, cookie))?;
        dir.touch(now);
        tx.put_inode(&dir)?;
        tx.put_inode(&root)?;
        Ok(())
    });
    match linked {
        Ok(()) => {
            // the link durable before its record goes (a write-behind journal included)
            meta.sync()?;
            detached::forget(meta, copied.root)?;
            Ok(())
        }
        Err(e) => {
            if let Err(cleanup) = detached::remove(meta, copied.root) {
                tracing::warn!("a copy that could not be linked stays detached: {cleanup}");
            }
            Err(e)
        }
    }
}
