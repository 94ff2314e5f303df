//! Permission checks the daemon makes itself. The kernel checks every ordinary operation
//! (`default_permissions`), but a clone names its source and destination by path in one
//! request (an ioctl on the mount), and an ordinary user's trash and quota requests come
//! through the mount's control socket (`daemon::control`), so walking those paths and
//! checking each step as the caller is the daemon's work, done here as the kernel would do it.

use super::namespace::check_name;
use super::{FsError, FsResult};
use crate::meta::{FileKind, Ino, Inode, MetaRead, ROOT_INO};

/// Read, write and search (execute) permission, as the bits of `access(2)`.
pub const READ: u16 = 4;
pub const WRITE: u16 = 2;
pub const EXEC: u16 = 1;

/// A caller's identity: user, group and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Who {
    /// Root, who may do anything (the maintenance commands act as root).
    pub fn root() -> Who {
        Who {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    /// The caller of a FUSE request, with the supplementary groups of its process.
    pub fn of_process(uid: u32, gid: u32, pid: u32) -> Who {
        Who {
            uid,
            gid,
            groups: supplementary_groups(pid),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether this caller has every permission in `mask` (`READ | EXEC`…) on `inode`, by its
    /// owner, group and other bits. Root may read and write anything and search any
    /// directory, and execute what anyone may execute.
    pub fn may(&self, inode: &Inode, mask: u16) -> bool {
        if self.is_root() {
            let exec_bits = inode.perm & 0o111 != 0 || inode.kind == FileKind::Dir;
            return mask & EXEC == 0 || exec_bits;
        }
        let bits = if self.uid == inode.uid {
            inode.perm >> 6
        } else if self.in_group(inode.gid) {
            inode.perm >> 3
        } else {
            inode.perm
        };
        bits & 7 & mask == mask
    }
}

/// Directories above one another, at most (a path walked further is refused).
pub const MAX_DEPTH: usize = 4096;

/// A path from the volume's root, as components; `.` and `..` are refused (the client sends
/// canonical paths).
pub fn components(path: &[u8]) -> FsResult<Vec<&[u8]>> {
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    for p in &parts {
        if *p == b"." || *p == b".." {
            return Err(FsError::Invalid);
        }
        check_name(p)?;
    }
    Ok(parts)
}

/// The directory `parts` names, walked from the root as `who`: every directory on the way
/// must allow it `mask` (`EXEC`: searchable), and no component may be a symlink.
pub fn walk(view: &mut dyn MetaRead, who: &Who, parts: &[&[u8]], mask: u16) -> FsResult<Ino> {
    let mut dir = ROOT_INO;
    for part in parts {
        let inode = view.inode(dir)?.ok_or(FsError::NotFound)?;
        if inode.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        if !who.may(&inode, mask) {
            return Err(FsError::Denied);
        }
        let entry = view.dirent(dir, part)?.ok_or(FsError::NotFound)?;
        if entry.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        dir = entry.ino;
    }
    let inode = view.inode(dir)?.ok_or(FsError::NotFound)?;
    if inode.kind != FileKind::Dir {
        return Err(FsError::NotDir);
    }
    if !who.may(&inode, EXEC) {
        return Err(FsError::Denied);
    }
    Ok(dir)
}

/// The supplementary groups of process `pid` (none when it is gone).
pub(super) fn supplementary_groups(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Timestamp;

    #[test]
    fn owner_group_and_other_bits_decide_and_root_needs_an_exec_bit_only_to_execute() {
        let file = Inode::new(5, FileKind::File, 0o640, 1000, 100, Timestamp::now());
        let owner = Who {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        };
        let member = Who {
            uid: 1001,
            gid: 1001,
            groups: vec![100],
        };
        let other = Who {
            uid: 1002,
            gid: 1002,
            groups: vec![],
        };
        assert!(owner.may(&file, READ | WRITE));
        assert!(!owner.may(&file, EXEC));
        assert!(member.may(&file, READ) && !member.may(&file, WRITE));
        assert!(!other.may(&file, READ));
        assert!(Who::root().may(&file, READ | WRITE) && !Who::root().may(&file, EXEC));
        let dir = Inode::new(6, FileKind::Dir, 0o700, 1000, 100, Timestamp::now());
        assert!(Who::root().may(&dir, EXEC) && !member.may(&dir, EXEC));
    }
}
