//! The metadata port: inodes, directory entries, extent maps, xattrs, symlink targets, orphans,
//! volume settings and a key-value store, behind [`MetaStore`] and [`MetaTxn`].
//!
//! Filesystem semantics (POSIX checks, link counts, times) live in `vfs`, which runs each
//! operation as one [`MetaTxn`]: adapters only store records, atomically and in isolation. A
//! transaction that lost a race fails with [`MetaError::Conflict`] and the caller runs it again.
//!
//! Isolation rule the adapters rely on: every operation that changes a directory's entries or a
//! file's extents reads that directory's or file's inode with [`MetaTxn::inode`] (which registers
//! a conflict) and writes it back. Scans (`list_dir`, `extents`) are therefore guarded by the inode.

pub mod cached;
mod journal;
pub(crate) mod layer;
mod mirror;
mod overlay;
pub mod pg;
pub mod pins;
pub mod rocks;
pub mod rocks_blocks;
mod shared_volume;
mod types;
pub mod write_behind;

use std::ops::Range;

use crate::domain::extent::Splice;
use crate::domain::{BlockKey, Extent};

pub use layer::MetaLayer;
pub use pg::PgMetaStore;
pub use rocks::RocksMetaStore;
pub use shared_volume::{
    Change, ChangeSink, HeldLock, LockKind, LockRequest, SessionInfo, SessionRecord, SharedVolume,
    TO_EOF,
};
pub use types::{
    DirEntry, FIRST_COOKIE, FROZEN, FileKind, Ino, Inode, ROOT_INO, Timestamp, is_frozen,
};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Another transaction changed what this one read; run the operation again.
    #[error("transaction conflict")]
    Conflict,
    /// This mount's session on a shared volume had expired: other mounts have taken its locks
    /// and reclaimed its unlinked open files. Nothing was done, and a new session has started
    /// (when the engine could be reached) for what comes next.
    #[error("this mount's session had expired")]
    SessionExpired,
    #[error("metadata record is corrupt: {0}")]
    Corrupt(String),
    #[error("metadata engine {engine}: {message}")]
    Backend {
        engine: &'static str,
        message: String,
    },
}

impl MetaError {
    pub fn backend(engine: &'static str, message: impl std::fmt::Display) -> MetaError {
        MetaError::Backend {
            engine,
            message: message.to_string(),
        }
    }
}

pub type MetaResult<T> = Result<T, MetaError>;

/// The port's traits, for calling their methods on a concrete store (`use meta::prelude::*`).
pub mod prelude {
    pub use super::{MetaRecords as _, MountSessions as _, VolumeIndex as _};
}

/// Key-value prefix of `graviton gc`'s candidates: blocks seen unreferenced, with the time.
pub const GC_CANDIDATE_PREFIX: &str = "gc/candidate/";

/// The key-value key marking `block` as a gc candidate. A writer that stores a block and
/// finds a copy already there removes it: the copy is about to be referenced again, and the
/// grace period starts over.
pub fn gc_candidate_key(block: &BlockKey) -> String {
    format!("{GC_CANDIDATE_PREFIX}{block}")
}

/// Takes `block`'s gc mark away, if it has one: most blocks have none, and on the local engine
/// the read costs a fraction of a write (a gc marking it just after is no different from one
/// marking it just after a blind delete: its re-check before deleting sees the pin).
pub fn clear_gc_mark(meta: &dyn MetaStore, block: &BlockKey) -> MetaResult<()> {
    let mark = gc_candidate_key(block);
    if meta.kv_get(&mark)?.is_some() {
        meta.kv_delete(&mark)?;
    }
    Ok(())
}

/// What a volume holds, as `graviton status` reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub inodes: u64,
    pub files: u64,
    pub directories: u64,
    /// Sum of regular files' sizes.
    pub logical_bytes: u64,
}

/// Reads of metadata records: a transaction's reads, or a read-only view (see
/// [`MetaStore::read`]).
pub trait MetaRead {
    fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>>;
    fn dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<Option<DirEntry>>;
    /// A directory's inode and its entry `name` (what create, unlink and rmdir read first), in
    /// one round trip where the engine allows; the entry is None when the inode is.
    fn inode_and_dirent(
        &mut self,
        dir: Ino,
        name: &[u8],
    ) -> MetaResult<(Option<Inode>, Option<DirEntry>)> {
        match self.inode(dir)? {
            Some(inode) => Ok((Some(inode), self.dirent(dir, name)?)),
            None => Ok((None, None)),
        }
    }
    /// Up to `limit` entries with cookies greater than `after`, in cookie order.
    fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> MetaResult<Vec<(Vec<u8>, DirEntry)>>;
    fn dir_is_empty(&mut self, dir: Ino) -> MetaResult<bool>;
    /// Extents of `ino` that overlap `range`, sorted by offset, unclipped.
    fn extents(&mut self, ino: Ino, range: Range<u64>) -> MetaResult<Vec<Extent>>;
    fn xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<Option<Vec<u8>>>;
    fn xattr_names(&mut self, ino: Ino) -> MetaResult<Vec<Vec<u8>>>;
    fn symlink_target(&mut self, ino: Ino) -> MetaResult<Option<Vec<u8>>>;
    /// Every inode's number, with whether it is marked orphan, in number order (for fsck,
    /// which looks for inodes no entry names).
    fn inode_numbers(&mut self) -> MetaResult<Vec<(Ino, bool)>>;
}

/// One atomic, isolated metadata transaction. Dropping it without `commit` discards it.
pub trait MetaTxn: MetaRead {
    fn put_inode(&mut self, inode: &Inode) -> MetaResult<()>;
    /// Removes the inode with everything that belongs to it: extents (and their block
    /// references), xattrs, symlink target, orphan mark.
    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()>;

    /// Adds or replaces an entry; `entry.cookie` is its stable readdir position.
    fn put_dirent(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> MetaResult<()>;
    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()>;

    /// Removes `splice.remove` then inserts `splice.insert`, keeping block references in step.
    fn apply_splice(&mut self, ino: Ino, splice: &Splice) -> MetaResult<()>;

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()>;
    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()>;

    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()>;

    /// Marks an inode that has no links but is still open; reclaimed at last close or, once
    /// the mount that has it open is gone, by the next mount.
    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()>;
    /// Records with this transaction that this mount has `ino` open, as
    /// [`SharedVolume::hold`] does (for a file created to be opened, in the creating
    /// transaction); nothing on an engine without mount sessions.
    fn hold_open(&mut self, _ino: Ino) -> MetaResult<()> {
        Ok(())
    }

    fn commit(self: Box<Self>) -> MetaResult<()>;
}

/// A metadata engine: the filesystem's records, the volume's index, and mount sessions. Each
/// concern is a trait of its own; a type with all three is a `MetaStore`.
pub trait MetaStore: MetaRecords + VolumeIndex + MountSessions {}

impl<T: MetaRecords + VolumeIndex + MountSessions> MetaStore for T {}

/// Records and transactions: inodes, directory entries, extent maps, xattrs and symlinks, the
/// inode numbers, and what they add up to.
pub trait MetaRecords: Send + Sync {
    /// Short engine name for logs (`rocksdb`, `postgres`).
    fn engine(&self) -> &'static str;
    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>>;
    /// A read-only view for operations that change nothing (lookup, readdir, reads). Each
    /// record it returns was committed; an engine with a local cache may answer from it.
    fn read(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        Ok(self.begin()?)
    }
    /// A read-only view in which every read sees the same moment, however long it is used
    /// (dump, fsck of a mounted volume).
    fn snapshot(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        Ok(self.begin()?)
    }
    /// An inode's latest committed record, read outside any transaction (the fast path for
    /// getattr and reads).
    fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>>;
    /// A fresh inode number, never handed out before on this volume.
    fn allocate_ino(&self) -> MetaResult<Ino>;
    /// Makes sure `allocate_ino` never hands out a number up to `last` (a restore brings
    /// inodes with their numbers).
    fn reserve_inos_through(&self, last: Ino) -> MetaResult<()>;
    /// Inodes marked with [`MetaTxn::add_orphan`] and not yet deleted, except those another
    /// live mount of a shared volume still has open.
    fn orphans(&self) -> MetaResult<Vec<Ino>>;
    /// Counts of inodes and file bytes, for status reports.
    fn usage(&self) -> MetaResult<Usage>;
    /// Makes every committed transaction durable (survives power loss).
    fn sync(&self) -> MetaResult<()>;
}

/// The volume's settings and key-value entries, and its block index: which blocks files
/// reference (gc, the write path's dedup).
pub trait VolumeIndex: Send + Sync {
    /// Volume settings (hash, chunker, format version…), written at format time.
    fn setting(&self, name: &str) -> MetaResult<Option<String>>;
    fn put_setting(&self, name: &str, value: &str) -> MetaResult<()>;

    /// The KeyValueStore port: bytes under string keys.
    fn kv_get(&self, key: &str) -> MetaResult<Option<Vec<u8>>>;
    fn kv_put(&self, key: &str, value: &[u8]) -> MetaResult<()>;
    fn kv_delete(&self, key: &str) -> MetaResult<()>;
    fn kv_scan(&self, prefix: &str) -> MetaResult<Vec<(String, Vec<u8>)>>;

    /// Whether any extent of any inode references the block.
    fn is_referenced(&self, key: &BlockKey) -> MetaResult<bool>;
    /// Those of `keys` some extent references (one query where the engine allows).
    fn referenced_among(&self, keys: &[BlockKey]) -> MetaResult<Vec<BlockKey>> {
        let mut found = Vec::new();
        for k in keys {
            if self.is_referenced(k)? {
                found.push(*k);
            }
        }
        Ok(found)
    }
    /// Every distinct block referenced by some extent, sorted.
    fn referenced_blocks(&self) -> MetaResult<Vec<BlockKey>>;
}

/// A mount's session with the engine and, on a volume several mounts share, what hangs on it
/// (locks, the change feed, open-file holds: [`SharedVolume`]).
pub trait MountSessions: Send + Sync {
    /// Starts this process's mount session: a no-op for an engine only one mount can open
    /// (RocksDB's file lock makes an embedded volume exclusive); on a shared engine it registers
    /// the mount, starts its heartbeat and its change feed (see [`SharedVolume`]).
    fn begin_session(&self, _info: &SessionInfo) -> MetaResult<()> {
        Ok(())
    }

    /// Ends the mount session started by `begin_session` (its locks are released). Also done
    /// when the store is dropped; a daemon calls it explicitly because it exits without
    /// dropping everything.
    fn end_session(&self) {}

    /// `end_session` for a mount that could not finish (its commits or uploads failed): what
    /// it holds for the next mount on this machine stays (a write-behind claim).
    fn end_session_unfinished(&self) {
        self.end_session()
    }

    /// Present when several mounts may use the volume at once.
    fn shared(&self) -> Option<&dyn SharedVolume> {
        None
    }

    /// Close-to-open, called when a file is opened: true when the kernel's cached pages and
    /// attributes of the inode may be stale (another mount changed it), so the open drops them.
    fn revalidate(&self, _ino: Ino) -> MetaResult<bool> {
        Ok(false)
    }
}
