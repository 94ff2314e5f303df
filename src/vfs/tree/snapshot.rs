//! Snapshots: read-only, point-in-time copies of the volume or of one directory, under
//! `/<folder>/<name>/` (the folder is `.snapshots` unless the volume setting `snapshot_dir`
//! says otherwise). A snapshot is a copy made of metadata only (`tree::copy`) from one
//! consistent view of the volume, with frozen inode numbers (`meta::FROZEN`), so no
//! operation of a mount can change it; the folder is frozen too, and left out of the root's
//! listing. Creating one writes its inodes in bounded transactions while writers go on, and
//! links it in one; deleting one takes its name away in one transaction and removes its inodes
//! in bounded ones, after which gc frees the blocks nothing else references.

use std::time::Instant;

use super::copy::{Plan, copy_detached, link};
use super::detached;
use crate::meta::{FileKind, Ino, MetaStore, ROOT_INO, Timestamp, is_frozen};
use crate::vfs::access::Who;
use crate::vfs::{FsError, FsResult, run_txn};

/// The volume setting naming the snapshots folder at the root.
pub const FOLDER_SETTING: &str = "snapshot_dir";
pub const DEFAULT_FOLDER: &str = ".snapshots";
/// The snapshot root's attribute recording when and of what it was taken.
const ORIGIN_XATTR: &[u8] = b"trusted.graviton.snapshot";

/// The snapshots folder's name.
pub fn folder_name(meta: &dyn MetaStore) -> FsResult<Vec<u8>> {
    super::folder_name(meta, FOLDER_SETTING, DEFAULT_FOLDER)
}

/// The snapshots folder, once the first snapshot made it.
pub fn folder(meta: &dyn MetaStore) -> FsResult<Option<Ino>> {
    super::made_folder(meta, &folder_name(meta)?)
}

/// One snapshot, as `graviton snapshot list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub name: String,
    /// Unix seconds.
    pub created: i64,
    /// The directory it copies, from the volume's root.
    pub path: String,
}

/// What `create` did.
#[derive(Clone, Debug)]
pub struct Created {
    pub inodes: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// The directory `path` names (from the root; no symlinks), with the permission bits its
/// directories above leave to group and others: a snapshot of it appears under the snapshots
/// folder, outside them, and must not open to anyone what they closed.
pub(crate) fn directory(meta: &dyn MetaStore, path: &str) -> anyhow::Result<(Ino, u16)> {
    let mut view = meta.read()?;
    let mut dir = ROOT_INO;
    let mut open = 0o7777;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let above = view
            .inode(dir)?
            .ok_or_else(|| anyhow::anyhow!("{path}: no such directory in the volume"))?;
        if above.perm & 0o010 == 0 {
            open &= !0o070;
        }
        if above.perm & 0o001 == 0 {
            open &= !0o007;
        }
        let e = view
            .dirent(dir, part.as_bytes())?
            .ok_or_else(|| anyhow::anyhow!("{path}: no such directory in the volume"))?;
        anyhow::ensure!(e.kind == FileKind::Dir, "{path}: not a directory");
        dir = e.ino;
    }
    Ok((dir, open))
}

fn valid_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        super::is_file_name(name),
        "{name:?} is not a valid snapshot name"
    );
    Ok(())
}

/// Takes snapshot `name` of the directory `path` (the whole volume when None).
pub fn create(meta: &dyn MetaStore, name: &str, path: Option<&str>) -> anyhow::Result<Created> {
    valid_name(name)?;
    let start = Instant::now();
    let folder = super::reserved_folder(meta, &folder_name(meta)?, 0o755, FOLDER_SETTING)?;
    if meta.read()?.dirent(folder, name.as_bytes())?.is_some() {
        anyhow::bail!("a snapshot named {name} exists already");
    }
    let path = path.unwrap_or("/");
    let (source, open) = directory(meta, path)?;
    anyhow::ensure!(
        !is_frozen(source),
        "{path} is inside a snapshot: copy it with graviton clone instead"
    );
    let who = Who::root();
    let skip = [folder];
    let plan = Plan {
        who: &who,
        exact: true,
        frozen: true,
        skip: &skip,
    };
    let copied = copy_detached(meta, source, &plan)?;
    let origin = format!("created={};path={path}", Timestamp::now().secs);
    let marked = run_txn(meta, |tx| {
        if let Some(mut top) = tx.inode(copied.root)?
            && top.perm & open != top.perm
        {
            top.perm &= open;
            tx.put_inode(&top)?;
        }
        Ok(tx.put_xattr(copied.root, ORIGIN_XATTR, origin.as_bytes())?)
    });
    if let Err(e) = marked {
        detached::remove(meta, copied.root)?;
        return Err(e.into());
    }
    link(meta, &copied, folder, name.as_bytes()).map_err(|e| match e {
        FsError::Exists => anyhow::anyhow!("a snapshot named {name} exists already"),
        e => e.into(),
    })?;
    Ok(Created {
        inodes: copied.inodes,
        bytes: copied.bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The volume's snapshots, by name.
pub fn list(meta: &dyn MetaStore) -> anyhow::Result<Vec<Snapshot>> {
    let Some(folder) = folder(meta)? else {
        return Ok(Vec::new());
    };
    let mut view = meta.read()?;
    let mut out = Vec::new();
    let mut after = 2;
    loop {
        let page = view.list_dir(folder, after, super::PAGE)?;
        for (name, e) in &page {
            let origin = view.xattr(e.ino, ORIGIN_XATTR)?.unwrap_or_default();
            let origin = String::from_utf8_lossy(&origin);
            let field = |k: &str| {
                origin
                    .split(';')
                    .find_map(|f| f.strip_prefix(k))
                    .map(str::to_string)
            };
            out.push(Snapshot {
                name: String::from_utf8_lossy(name).into_owned(),
                created: field("created=").and_then(|s| s.parse().ok()).unwrap_or(0),
                path: field("path=").unwrap_or_else(|| "/".into()),
            });
        }
        match page.last() {
            Some((_, last)) if page.len() == super::PAGE => after = last.cookie,
            _ => break,
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes snapshot `name`: gone from the folder at once, its inodes removed after; the
/// number of inodes removed.
pub fn delete(meta: &dyn MetaStore, name: &str) -> anyhow::Result<u64> {
    valid_name(name)?;
    let missing = || anyhow::anyhow!("no snapshot named {name}");
    let folder = folder(meta)?.ok_or_else(missing)?;
    let root = meta
        .read()?
        .dirent(folder, name.as_bytes())?
        .ok_or_else(missing)?
        .ino;
    // recorded first: a crash after the name is gone leaves the tree for `detached::sweep`
    detached::record(meta, root)?;
    let unlinked = run_txn(meta, |tx| {
        let now = Timestamp::now();
        let (dir, entry) = tx.inode_and_dirent(folder, name.as_bytes())?;
        let (Some(mut dir), Some(entry)) = (dir, entry) else {
            return Ok(false);
        };
        if entry.ino != root {
            return Ok(false);
        }
        tx.delete_dirent(folder, name.as_bytes())?;
        if let Some(mut top) = tx.inode(root)? {
            top.parent = 0;
            tx.put_inode(&top)?;
        }
        dir.nlink = dir.nlink.saturating_sub(1);
        dir.touch(now);
        tx.put_inode(&dir)?;
        Ok(true)
    })?;
    if !unlinked {
        // another removal took it: the record is that one's now (`detached::sweep` drops it
        // once nothing is left to remove)
        anyhow::bail!("snapshot {name} was deleted or replaced meanwhile");
    }
    Ok(detached::remove(meta, root)?)
}
