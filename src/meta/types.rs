//! Metadata records shared by every engine.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub type Ino = u64;
/// The root directory's inode number (FUSE's convention).
pub const ROOT_INO: Ino = 1;

/// The bit that marks the inodes of snapshots: read-only to every operation of a mount (EROFS).
/// Ordinary numbers come from [`crate::meta::MetaRecords::allocate_ino`] and stay far below it;
/// a snapshot's copies take a fresh number with this bit set, so whether an inode may change is
/// known from its number, with no read.
pub const FROZEN: Ino = 1 << 62;

/// Whether `ino` belongs to a snapshot (see [`FROZEN`]).
pub fn is_frozen(ino: Ino) -> bool {
    ino & FROZEN != 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Each kind with its `S_IFMT` bits; its index is the kind's stored tag.
const KINDS: [(FileKind, u32); 7] = [
    (FileKind::File, libc::S_IFREG),
    (FileKind::Dir, libc::S_IFDIR),
    (FileKind::Symlink, libc::S_IFLNK),
    (FileKind::Fifo, libc::S_IFIFO),
    (FileKind::Socket, libc::S_IFSOCK),
    (FileKind::CharDevice, libc::S_IFCHR),
    (FileKind::BlockDevice, libc::S_IFBLK),
];

impl FileKind {
    /// The `S_IFMT` bits for this kind.
    pub fn mode_bits(self) -> u32 {
        KINDS[self.tag() as usize].1
    }

    /// Stable small number for storage: the declaration order, which `KINDS` follows.
    pub fn tag(self) -> u8 {
        self as u8
    }

    pub fn from_tag(tag: u8) -> Option<FileKind> {
        KINDS.get(tag as usize).map(|&(k, _)| k)
    }

    /// The kind `mode` names (0: a regular file).
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        let bits = match mode & libc::S_IFMT {
            0 => libc::S_IFREG,
            b => b,
        };
        KINDS.iter().find(|&&(_, b)| b == bits).map(|&(k, _)| k)
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Timestamp {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        if t.secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - std::time::Duration::new((-t.secs) as u64, 0)
                + std::time::Duration::new(0, t.nanos)
        }
    }
}

/// A directory's `next_cookie` before its first entry (cookies 1 and 2 are `.` and `..`).
pub const FIRST_COOKIE: u64 = 3;

/// An inode's attributes and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Number of extent records (files), kept in step by every splice.
    pub extent_count: u64,
    /// Bumped by every change of the extent map; lets a background rewrite detect races.
    pub data_version: u64,
    /// Next readdir cookie to hand out (directories). Cookies 1 and 2 are `.` and `..`. Bumped
    /// for every entry added, so a directory still at [`FIRST_COOKIE`] never had one (the
    /// local metadata cache relies on it).
    pub next_cookie: u64,
    /// The directory holding this one (directories only; the root is its own parent).
    pub parent: Ino,
}

impl Inode {
    pub fn new(ino: Ino, kind: FileKind, perm: u16, uid: u32, gid: u32, now: Timestamp) -> Inode {
        Inode {
            ino,
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            size: 0,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            extent_count: 0,
            data_version: 0,
            next_cookie: FIRST_COOKIE,
            parent: 0,
        }
    }

    /// The root directory of a new volume: its own parent, owned by root, mode 0755.
    pub fn root(now: Timestamp) -> Inode {
        let mut root = Inode::new(ROOT_INO, FileKind::Dir, 0o755, 0, 0, now);
        root.parent = ROOT_INO;
        root
    }

    /// Full `st_mode`: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm as u32
    }

    /// Sets the modification and change times to `now`.
    pub fn touch(&mut self, now: Timestamp) {
        self.mtime = now;
        self.ctime = now;
    }

    /// Hands out the directory's next readdir cookie.
    pub fn take_cookie(&mut self) -> u64 {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        cookie
    }
}

/// A name in a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: FileKind,
    /// Stable position for readdir; unique within the directory.
    pub cookie: u64,
}

impl DirEntry {
    pub fn new(ino: Ino, kind: FileKind, cookie: u64) -> DirEntry {
        DirEntry { ino, kind, cookie }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags are stored: each kind keeps its own, and modes map both ways.
    #[test]
    fn kinds_round_trip_through_tags_and_modes() {
        for (tag, &(kind, bits)) in KINDS.iter().enumerate() {
            assert_eq!(
                (kind.tag() as usize, FileKind::from_tag(tag as u8)),
                (tag, Some(kind))
            );
            assert_eq!(FileKind::from_mode(bits | 0o644), Some(kind));
        }
        assert_eq!(FileKind::Dir.tag(), 1, "a stored tag");
        assert_eq!(FileKind::from_mode(0o644), Some(FileKind::File));
        assert_eq!(FileKind::from_tag(7), None);
    }
}
