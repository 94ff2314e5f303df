//! Whole-tree operations over the metadata port: copies of a tree made of metadata only
//! (`graviton clone`, snapshots), and the removal of trees no entry names.
//!
//! A tree is copied into new inodes that no entry names yet: a *detached* tree, recorded in the
//! key-value store (`detached.rs`) before its first inode is written. The copy reads one
//! consistent view of the source and writes in transactions of bounded size, so writers are
//! never held up for longer than one of them; a last transaction links the copy's root in
//! place, so no mount ever sees part of a tree. A copy cut short (a crash, an error) leaves a
//! recorded detached tree, which is removed in the same bounded steps (`detached::sweep`).
//! Removing a snapshot detaches its root in one transaction and removes the tree the same way.

pub mod copy;
pub mod detached;
pub mod snapshot;
pub mod trash;

/// Entries read from a directory at once.
pub(crate) const PAGE: usize = 1000;

use crate::meta::{
    DirEntry, FROZEN, FileKind, Ino, Inode, MetaStore, ROOT_INO, Timestamp, is_frozen,
};
use crate::vfs::{FsError, run_txn};

/// The name of a feature's folder at the root: the volume setting `setting`, or `default`.
fn folder_name(
    meta: &dyn MetaStore,
    setting: &str,
    default: &str,
) -> crate::vfs::FsResult<Vec<u8>> {
    Ok(meta
        .setting(setting)?
        .unwrap_or_else(|| default.to_string())
        .into_bytes())
}

/// The feature's folder `name` at the root, once made (frozen: an ordinary entry of that
/// name is not it).
fn made_folder(meta: &dyn MetaStore, name: &[u8]) -> crate::vfs::FsResult<Option<Ino>> {
    let entry = meta.read()?.dirent(ROOT_INO, name)?;
    Ok(entry.map(|e| e.ino).filter(|&ino| is_frozen(ino)))
}

/// Whether `name` may name an entry: not empty, `.` or `..`, no `/` or NUL, at most
/// `NAME_MAX` bytes (snapshot names, the folders' names).
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::vfs::NAME_MAX
        && !name.contains(['/', '\0'])
        && name != "."
        && name != ".."
}

/// The folder `name` at the root (frozen, root's, `mode`), made unless it is there: an
/// ordinary entry of that name is refused, so a feature never takes a name in use. `setting`
/// names the volume setting that chooses the name, for the message.
pub fn reserved_folder(
    meta: &dyn MetaStore,
    name: &[u8],
    mode: u16,
    setting: &str,
) -> anyhow::Result<Ino> {
    let fresh = meta.allocate_ino()? | FROZEN;
    let found = run_txn(meta, |tx| {
        let (root, entry) = tx.inode_and_dirent(ROOT_INO, name)?;
        if let Some(e) = entry {
            return Ok(Some(e.ino));
        }
        let mut root = root.ok_or(FsError::NotFound)?;
        let now = Timestamp::now();
        let mut dir = Inode::new(fresh, FileKind::Dir, mode, 0, 0, now);
        dir.parent = ROOT_INO;
        let cookie = root.take_cookie();
        root.nlink += 1;
        root.touch(now);
        tx.put_inode(&dir)?;
        tx.put_inode(&root)?;
        tx.put_dirent(ROOT_INO, name, &DirEntry::new(fresh, FileKind::Dir, cookie))?;
        Ok(None)
    })?;
    match found {
        None => Ok(fresh),
        Some(ino) if is_frozen(ino) => Ok(ino),
        Some(_) => anyhow::bail!(
            "the volume's root already has an entry named {}: rename it, or name the folder otherwise (volume setting {setting})",
            String::from_utf8_lossy(name)
        ),
    }
}
