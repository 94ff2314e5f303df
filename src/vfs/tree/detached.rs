//! Detached trees: trees no entry names, recorded under `detached/<root>` in the volume's
//! key-value store with the time of their last progress. A copy being made is one, until it
//! is linked; so is a snapshot being removed, once its root lost its name. The record is
//! written before the tree changes and removed after, so a crash leaves a record for every
//! detached tree, and `sweep` finishes the work: a tree still detached is removed, a record
//! whose root was linked is dropped.
//!
//! gc spares every block while a detached tree is in progress (`in_progress`): a copy reads
//! the blocks its source referenced at one moment, and a writer may drop the source's last
//! reference before the copy commits its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::meta::{FileKind, Ino, MetaStore};
use crate::vfs::{FsResult, run_txn};

const PREFIX: &str = "detached/";
/// Entries removed in one transaction: each takes a file's records with it, and a smaller
/// transaction holds up the writers committing after it less (PostgreSQL orders commits).
const REMOVE_PAGE: usize = 256;
/// Transactions between two records of progress.
const PROGRESS_EVERY: u64 = 16;
/// A record with no progress for this long belongs to a process that is gone.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);

fn key(root: Ino) -> String {
    format!("{PREFIX}{root}")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Records (or records progress on) the detached tree at `root`.
pub fn record(meta: &dyn MetaStore, root: Ino) -> FsResult<()> {
    Ok(meta.kv_put(&key(root), now_secs().to_string().as_bytes())?)
}

/// Drops the record of a tree that is linked, or gone.
pub fn forget(meta: &dyn MetaStore, root: Ino) -> FsResult<()> {
    Ok(meta.kv_delete(&key(root))?)
}

/// Recorded detached trees: each root with the time of its last progress (Unix seconds).
pub fn roots(meta: &dyn MetaStore) -> FsResult<Vec<(Ino, u64)>> {
    let mut out = Vec::new();
    for (k, v) in meta.kv_scan(PREFIX)? {
        let root = k[PREFIX.len()..].parse::<Ino>();
        let at = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok());
        if let (Ok(root), Some(at)) = (root, at) {
            out.push((root, at));
        }
    }
    Ok(out)
}

/// Whether some copy or removal made progress within [`ABANDONED_AFTER`].
pub fn in_progress(meta: &dyn MetaStore) -> FsResult<bool> {
    let now = now_secs();
    Ok(roots(meta)?
        .iter()
        .any(|&(_, at)| now.saturating_sub(at) < ABANDONED_AFTER.as_secs()))
}

/// Removes the detached tree at `root` and its record; the number of inodes removed.
pub fn remove(meta: &dyn MetaStore, root: Ino) -> FsResult<u64> {
    record(meta, root)?;
    let removed = remove_tree(meta, root)?;
    // the removal durable before its record goes (a write-behind journal included)
    meta.sync()?;
    forget(meta, root)?;
    Ok(removed)
}

/// Finishes what detached trees with no progress for `idle` were left doing: removes those
/// still detached, forgets those whose root has a name. The number of trees removed.
pub fn sweep(meta: &dyn MetaStore, idle: Duration) -> FsResult<usize> {
    let now = now_secs();
    let mut removed = 0;
    for (root, at) in roots(meta)? {
        if now.saturating_sub(at) < idle.as_secs() {
            continue;
        }
        let linked = match meta.read_inode(root)? {
            None => true,
            Some(i) if i.kind == FileKind::Dir => i.parent != 0,
            Some(i) => i.nlink > 0,
        };
        if linked {
            forget(meta, root)?;
            continue;
        }
        tracing::info!("removing detached tree {root} (a copy or removal cut short)");
        remove(meta, root)?;
        removed += 1;
    }
    Ok(removed)
}

/// The entry naming a directory being removed: its parent and name (none for the top).
type Named = (Ino, Vec<u8>);

/// Deletes `top` and everything under it, a page of entries per transaction, deepest
/// directories first: a directory's entry goes with the directory, so a tree cut short is
/// still whole from `top` down. A file also named outside the tree loses only the link.
fn remove_tree(meta: &dyn MetaStore, top: Ino) -> FsResult<u64> {
    let Some(inode) = meta.read_inode(top)? else {
        return Ok(0);
    };
    if inode.kind != FileKind::Dir {
        run_txn(meta, |tx| Ok(tx.delete_inode(top)?))?;
        return Ok(1);
    }
    let mut removed = 0;
    let mut steps = 0u64;
    let mut todo: Vec<(Ino, Option<Named>)> = vec![(top, None)];
    while let Some((dir, named)) = todo.last().cloned() {
        let (subdirs, gone, emptied) = run_txn(meta, |tx| {
            let page = tx.list_dir(dir, 2, REMOVE_PAGE)?;
            let mut subdirs = Vec::new();
            let mut gone = 0u64;
            for (name, e) in &page {
                if e.kind == FileKind::Dir {
                    subdirs.push((e.ino, Some((dir, name.clone()))));
                    continue;
                }
                tx.delete_dirent(dir, name)?;
                match tx.inode(e.ino)? {
                    Some(mut i) if i.nlink > 1 => {
                        i.nlink -= 1;
                        tx.put_inode(&i)?;
                    }
                    Some(_) => {
                        tx.delete_inode(e.ino)?;
                        gone += 1;
                    }
                    None => {}
                }
            }
            if page.is_empty() {
                tx.delete_inode(dir)?;
                if let Some((parent, name)) = &named {
                    tx.delete_dirent(*parent, name)?;
                }
                gone += 1;
            }
            Ok((subdirs, gone, page.is_empty()))
        })?;
        removed += gone;
        match emptied {
            true => drop(todo.pop()),
            // its subdirectories go first; then it is listed again
            false => todo.extend(subdirs),
        }
        steps += 1;
        if steps.is_multiple_of(PROGRESS_EVERY) {
            record(meta, top)?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::extent::Splice;
    use crate::domain::{BlockKey, Extent, HashAlgo};
    use crate::meta::prelude::*;
    use crate::meta::{DirEntry, Inode, ROOT_INO, RocksMetaStore, Timestamp};
    use crate::vfs::access::Who;
    use crate::vfs::tree::copy::{Plan, copy_detached, link};

    /// `/src` with a subdirectory, a file with an extent and a file with two names.
    fn volume() -> (tempfile::TempDir, RocksMetaStore, Ino) {
        let dir = tempfile::tempdir().unwrap();
        let meta = RocksMetaStore::open(dir.path()).unwrap();
        let now = Timestamp::now();
        let inos: Vec<Ino> = (0..4).map(|_| meta.allocate_ino().unwrap()).collect();
        let (src, sub, file, twice) = (inos[0], inos[1], inos[2], inos[3]);
        run_txn(&meta, |tx| {
            let mut root = Inode::root(now);
            let mut d = Inode::new(src, FileKind::Dir, 0o755, 0, 0, now);
            d.parent = ROOT_INO;
            d.nlink = 3;
            let mut s = Inode::new(sub, FileKind::Dir, 0o755, 0, 0, now);
            s.parent = src;
            let mut f = Inode::new(file, FileKind::File, 0o644, 0, 0, now);
            f.size = 10;
            f.extent_count = 1;
            let mut t = Inode::new(twice, FileKind::File, 0o644, 0, 0, now);
            t.nlink = 2;
            root.nlink = 3;
            for i in [&root, &d, &s, &f, &t] {
                tx.put_inode(i)?;
            }
            let entries: [(Ino, &[u8], Ino, FileKind); 4] = [
                (ROOT_INO, b"src", src, FileKind::Dir),
                (src, b"sub", sub, FileKind::Dir),
                (sub, b"file", file, FileKind::File),
                (src, b"twice", twice, FileKind::File),
            ];
            for (n, (dir, name, ino, kind)) in entries.into_iter().enumerate() {
                tx.put_dirent(dir, name, &DirEntry::new(ino, kind, 3 + n as u64))?;
            }
            tx.put_dirent(sub, b"again", &DirEntry::new(twice, FileKind::File, 9))?;
            let key = BlockKey::for_data(HashAlgo::Blake3, b"0123456789");
            let extent = Extent {
                offset: 0,
                key,
                block_offset: 0,
                len: 10,
            };
            tx.apply_splice(
                file,
                &Splice {
                    remove: vec![],
                    insert: vec![extent],
                },
            )?;
            Ok(())
        })
        .unwrap();
        (dir, meta, src)
    }

    fn numbers(meta: &RocksMetaStore) -> Vec<Ino> {
        let mut view = meta.read().unwrap();
        view.inode_numbers()
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn a_copy_cut_short_is_removed_by_the_sweep_and_a_linked_one_is_kept() {
        let (_dir, meta, src) = volume();
        let before = numbers(&meta);
        let who = Who::root();
        let plan = Plan {
            who: &who,
            exact: false,
            frozen: false,
            skip: &[],
        };
        // made and never linked: a crash between the copy and the link
        let copied = copy_detached(&meta, src, &plan).unwrap();
        assert_eq!(copied.inodes, 4, "the file with two names is copied once");
        assert_eq!(numbers(&meta).len(), before.len() + 4);
        assert!(in_progress(&meta).unwrap(), "gc waits while it is recorded");
        // a sweep leaves a tree that is still making progress alone
        assert_eq!(sweep(&meta, ABANDONED_AFTER).unwrap(), 0);
        assert_eq!(sweep(&meta, Duration::ZERO).unwrap(), 1);
        assert_eq!(numbers(&meta), before, "every inode of the copy is gone");
        assert!(roots(&meta).unwrap().is_empty());
        let block = BlockKey::for_data(HashAlgo::Blake3, b"0123456789");
        assert!(
            meta.is_referenced(&block).unwrap(),
            "the source keeps its reference"
        );

        // linked, then crashed before the record went: the sweep keeps the copy
        let copied = copy_detached(&meta, src, &plan).unwrap();
        link(&meta, &copied, ROOT_INO, b"copy").unwrap();
        record(&meta, copied.root).unwrap();
        assert_eq!(sweep(&meta, Duration::ZERO).unwrap(), 0);
        assert_eq!(numbers(&meta).len(), before.len() + 4);
        let mut view = meta.read().unwrap();
        let entry = view.dirent(ROOT_INO, b"copy").unwrap().unwrap();
        let sub = view.dirent(entry.ino, b"sub").unwrap().unwrap();
        let again = view.dirent(sub.ino, b"again").unwrap().unwrap();
        let twice = view.dirent(entry.ino, b"twice").unwrap().unwrap();
        assert_eq!(again.ino, twice.ino);
        assert_eq!(view.inode(twice.ino).unwrap().unwrap().nlink, 2);
        assert_eq!(view.inode(entry.ino).unwrap().unwrap().nlink, 3);
    }
}
