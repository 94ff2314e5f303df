//! Quotas: limits on the bytes and inodes of the volume, of a directory tree, of a user or of
//! a group, kept exactly in the same transactions as the changes they count.
//!
//! - **What counts.** Every inode that has a name and is not in a snapshot counts one inode; a
//!   regular file also counts its size rounded up to 4 KiB (as `du` counts it), or its
//!   reservation (below) when that is larger. An inode counts against the volume's quota, its
//!   owner's and its group's, and the quota of every directory above its *home*: a
//!   directory's parent, or for any other inode the directory it was created or last renamed
//!   in (`Inode::parent`). The trash's folders have no quota of their own, so a trashed file
//!   counts against the volume and its owner only.
//! - **Where it is kept.** A record per quota ([`Record`]: limits and usage) and a list of the
//!   quotas that exist ([`Map`]), stored as extended attributes of [`CARRIER`], an inode
//!   number no inode has. They are read and written inside metadata transactions like any
//!   record, so every engine keeps them atomic and isolated, on every mount of a shared volume.
//! - **How it is kept.** `run_txn` runs every change of the filesystem through [`Counted`],
//!   which notes each inode's state before and after and, before the commit, moves usage
//!   between quotas and refuses (EDQUOT) a change that takes one past its limit. A directory
//!   moved to another quota's tree takes its whole tree's usage along.
//! - **Writes.** Written bytes wait in memory before their commit, so a write that grows a
//!   file first *reserves* room ([`reserve`]): the file's charge becomes the larger of its
//!   size and the reservation (an xattr of the file, [`RESERVED`]), taken in steps so most
//!   writes need no transaction. The last close of the file on a mount gives the rest back.

mod counted;
pub mod scan;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{FsError, FsResult};
use crate::meta::{FROZEN, FileKind, Ino, Inode, MetaRead, MetaTxn, ROOT_INO, is_frozen};

pub use counted::Counted;

/// The inode number whose extended attributes hold the quota records. No inode has it:
/// ordinary numbers stay far below it, and a snapshot's have [`FROZEN`] set.
pub const CARRIER: Ino = FROZEN - 1;
/// The record listing every quota.
const MAP: &[u8] = b"quota/map";
/// A file's reservation: bytes its writes may grow it to before their commit.
pub const RESERVED: &[u8] = b"trusted.graviton.reserved";
/// Sizes count in units of this many bytes.
pub const UNIT: u64 = 4096;
/// How long an open file's writes go on without reserving room once no quota applied to it:
/// a quota made, or a chown or rename that puts the file under one, reaches its writes after
/// this long (and its commits at once).
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    /// The whole volume: its capacity and inode count, as `df` shows them.
    Volume,
    /// The tree below a directory.
    Dir(Ino),
    User(u32),
    Group(u32),
    /// No limit, only usage: what the trash holds (made and removed with the volume's quota),
    /// so that `df` can leave it out of what is used.
    Trash,
}

impl Key {
    fn record_name(self) -> Vec<u8> {
        match self {
            Key::Volume => b"quota/volume".to_vec(),
            Key::Dir(d) => format!("quota/dir/{d}").into_bytes(),
            Key::User(u) => format!("quota/user/{u}").into_bytes(),
            Key::Group(g) => format!("quota/group/{g}").into_bytes(),
            Key::Trash => b"quota/trash".to_vec(),
        }
    }
}

/// A quota's limits and usage. Limits of 0 are none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub bytes_limit: u64,
    pub inodes_limit: u64,
    /// Usage. Signed: while a new quota is being counted, changes since it was made are
    /// added to it before the count of what was there already (`scan::start`).
    pub bytes: i64,
    pub inodes: i64,
    /// Usage is still being counted: nothing is refused yet.
    pub counting: bool,
}

impl Record {
    /// Whether usage is past a limit in a direction the change grew.
    fn exceeded(&self, bytes_grew: bool, inodes_grew: bool) -> bool {
        !self.counting
            && ((bytes_grew && self.bytes_limit > 0 && self.bytes > self.bytes_limit as i64)
                || (inodes_grew && self.inodes_limit > 0 && self.inodes > self.inodes_limit as i64))
    }
}

/// Every quota of the volume.
pub type Map = BTreeSet<Key>;

fn decode<T: for<'a> Deserialize<'a>>(raw: Option<Vec<u8>>) -> FsResult<Option<T>> {
    raw.map(|v| {
        serde_json::from_slice(&v).map_err(|e| {
            FsError::Meta(crate::meta::MetaError::Corrupt(format!(
                "quota record: {e}"
            )))
        })
    })
    .transpose()
}

/// A quota record's error inside a metadata operation.
pub(crate) fn meta_error(e: FsError) -> crate::meta::MetaError {
    match e {
        FsError::Meta(m) => m,
        other => crate::meta::MetaError::Corrupt(other.to_string()),
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("quota records serialize")
}

/// The volume's quotas (none when it has never had one).
pub fn map(tx: &mut dyn MetaRead) -> FsResult<Map> {
    Ok(decode(tx.xattr(CARRIER, MAP)?)?.unwrap_or_default())
}

pub(crate) fn put_map(tx: &mut dyn MetaTxn, map: &Map) -> FsResult<()> {
    Ok(tx.put_xattr(CARRIER, MAP, &encode(map))?)
}

pub fn record(tx: &mut dyn MetaRead, key: Key) -> FsResult<Option<Record>> {
    decode(tx.xattr(CARRIER, &key.record_name())?)
}

pub(crate) fn put_record(tx: &mut dyn MetaTxn, key: Key, rec: &Record) -> FsResult<()> {
    Ok(tx.put_xattr(CARRIER, &key.record_name(), &encode(rec))?)
}

pub(crate) fn delete_record(tx: &mut dyn MetaTxn, key: Key) -> FsResult<()> {
    Ok(tx.delete_xattr(CARRIER, &key.record_name())?)
}

/// `n` rounded up to whole units.
pub fn rounded(n: u64) -> u64 {
    n.div_ceil(UNIT).saturating_mul(UNIT)
}

/// Whether `inode` counts at all: it has a name and is not in a snapshot.
pub fn counts(inode: &Inode) -> bool {
    inode.nlink > 0 && !is_frozen(inode.ino)
}

/// The bytes `inode` counts, given its reservation.
pub fn charge(inode: &Inode, reserved: u64) -> u64 {
    match inode.kind {
        FileKind::File => rounded(inode.size).max(reserved),
        _ => 0,
    }
}

/// A file's reservation (0: none).
pub fn reserved(tx: &mut dyn MetaRead, ino: Ino) -> FsResult<u64> {
    match tx.xattr(ino, RESERVED)? {
        Some(v) => match <[u8; 8]>::try_from(v.as_slice()) {
            Ok(b) => Ok(u64::from_le_bytes(b)),
            Err(_) => Err(FsError::Meta(crate::meta::MetaError::Corrupt(format!(
                "{ino}: its quota reservation is not a number"
            )))),
        },
        None => Ok(0),
    }
}

/// The directories with a quota at or above `dir`, nearest first (none without directory
/// quotas; reads each directory on the way, so a concurrent move of one conflicts).
pub fn dirs_above(tx: &mut dyn MetaRead, map: &Map, mut dir: Ino) -> FsResult<Vec<Ino>> {
    let mut found = Vec::new();
    if !map.iter().any(|k| matches!(k, Key::Dir(_))) {
        return Ok(found);
    }
    for _ in 0..4096 {
        if dir == 0 {
            break;
        }
        if map.contains(&Key::Dir(dir)) {
            found.push(dir);
        }
        if dir == ROOT_INO {
            break;
        }
        match tx.inode(dir)? {
            Some(d) if d.kind == FileKind::Dir => dir = d.parent,
            _ => break,
        }
    }
    Ok(found)
}

/// The quotas `inode` counts against, among those of `map`.
pub fn keys_of(tx: &mut dyn MetaRead, map: &Map, inode: &Inode) -> FsResult<Vec<Key>> {
    let mut keys: Vec<Key> = dirs_above(tx, map, inode.parent)?
        .into_iter()
        .map(Key::Dir)
        .collect();
    for k in [Key::Volume, Key::User(inode.uid), Key::Group(inode.gid)] {
        if map.contains(&k) {
            keys.push(k);
        }
    }
    // Every inode in the trash is an entry of an hour folder: a directory goes there only
    // when empty (rmdir, or a rename over it), and nothing is made inside one there.
    if map.contains(&Key::Trash) && crate::vfs::tree::trash::holds(inode) {
        keys.push(Key::Trash);
    }
    Ok(keys)
}

/// Whether a further name for a file whose home is `home` may go in `dir`: the same
/// directory quotas apply to both (a hard link cannot join two, as with ext4's project
/// quotas: EXDEV otherwise).
pub fn may_link(tx: &mut dyn MetaRead, home: Ino, dir: Ino) -> FsResult<()> {
    let map = map(tx)?;
    match dirs_above(tx, &map, home)? == dirs_above(tx, &map, dir)? {
        true => Ok(()),
        false => Err(FsError::CrossQuota),
    }
}

/// Whether a name of `inode` may move to directory `to`: the names of a file with several
/// stay under the same directory quotas (EXDEV otherwise, as for `may_link`).
pub fn may_move(tx: &mut dyn MetaRead, inode: &Inode, to: Ino) -> FsResult<()> {
    match inode.kind != FileKind::Dir && inode.nlink > 1 {
        true => may_link(tx, inode.parent, to),
        false => Ok(()),
    }
}

/// The home of a file whose name in its home `dir` went while others stay: the nearest
/// directory with a quota at or above `dir` (the other names are under the same ones), or
/// the root when there is none: a directory that holds a name of the file, or one that
/// cannot go while the file is counted below it.
pub fn rehome(tx: &mut dyn MetaRead, dir: Ino) -> FsResult<Ino> {
    let map = map(tx)?;
    Ok(dirs_above(tx, &map, dir)?
        .first()
        .copied()
        .unwrap_or(ROOT_INO))
}

/// Room for a file's writes up to `end`: makes its reservation at least that, in steps of an
/// eighth of the file (1 to 64 MiB) while the quotas allow, exactly `end` when only that fits.
/// Returns the end the reservation now covers (`u64::MAX` when no quota applies to the file).
/// Fails with EDQUOT when even `end` does not fit.
pub fn reserve(meta: &dyn crate::meta::MetaStore, ino: Ino, end: u64) -> FsResult<u64> {
    let step = rounded((end / 8).clamp(1 << 20, 64 << 20));
    let mut exact = false;
    loop {
        let tried = super::run_txn(meta, |tx| {
            let map = map(tx)?;
            let inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            if !counts(&inode) || keys_of(tx, &map, &inode)?.is_empty() {
                return Ok(u64::MAX);
            }
            let had = reserved(tx, ino)?;
            let covered = charge(&inode, had);
            if end <= covered {
                return Ok(covered);
            }
            let want = if exact {
                rounded(end)
            } else {
                rounded(end) + step
            };
            tx.put_xattr(ino, RESERVED, &want.to_le_bytes())?;
            Ok(want)
        });
        match tried {
            Err(FsError::QuotaExceeded) if !exact => exact = true,
            other => return other,
        }
    }
}

/// Gives back what is left of a file's reservation (its last close on this mount).
pub fn release(meta: &dyn crate::meta::MetaStore, ino: Ino) -> FsResult<()> {
    super::run_txn(meta, |tx| {
        if tx.inode(ino)?.is_some() && tx.xattr(ino, RESERVED)?.is_some() {
            tx.delete_xattr(ino, RESERVED)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_count_in_whole_units_and_reservations_when_larger() {
        let mut f = Inode::new(5, FileKind::File, 0o644, 1, 1, Default::default());
        assert_eq!(charge(&f, 0), 0);
        f.size = 1;
        assert_eq!(charge(&f, 0), 4096);
        f.size = 8192;
        assert_eq!(charge(&f, 0), 8192);
        assert_eq!(charge(&f, 1 << 20), 1 << 20);
        let d = Inode::new(6, FileKind::Dir, 0o755, 1, 1, Default::default());
        assert_eq!(charge(&d, 0), 0, "directories count as inodes only");
    }

    #[test]
    fn limits_refuse_growth_only_once_counted() {
        let mut r = Record {
            bytes_limit: 100,
            inodes_limit: 2,
            bytes: 101,
            inodes: 2,
            counting: false,
        };
        assert!(r.exceeded(true, false));
        assert!(!r.exceeded(false, true), "at the inode limit is allowed");
        assert!(
            !r.exceeded(false, false),
            "shrinking past a limit is allowed"
        );
        r.counting = true;
        assert!(!r.exceeded(true, true));
    }
}
