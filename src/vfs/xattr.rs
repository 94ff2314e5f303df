//! Extended attributes: get, set (with create/replace flags), list, remove.

use super::{Fs, FsError, FsResult};
use crate::meta::{Ino, Timestamp};

/// Linux limits: names up to 255 bytes, values up to 64 KiB.
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;
/// At most this many attributes per file, and their names (with a NUL each) at most
/// `XATTR_LIST_MAX` bytes, the most listxattr(2) can return: past either, a new attribute is
/// ENOSPC, as on ext4 when a file's attribute space is full. A file's attributes thus take at
/// most 1,024 × 64 KiB, and one user cannot grow the metadata (and the daemon's memory when they
/// are listed) without bound. (xfstests expects 1,000 of a FUSE filesystem.)
const XATTRS_PER_FILE: usize = 1024;
const XATTR_LIST_MAX: usize = 65536;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XattrSet {
    #[default]
    Any,
    /// XATTR_CREATE: fail if it exists.
    Create,
    /// XATTR_REPLACE: fail if it does not exist.
    Replace,
}

impl XattrSet {
    pub fn from_libc(flags: i32) -> FsResult<XattrSet> {
        match flags {
            0 => Ok(XattrSet::Any),
            libc::XATTR_CREATE => Ok(XattrSet::Create),
            libc::XATTR_REPLACE => Ok(XattrSet::Replace),
            _ => Err(FsError::Invalid),
        }
    }
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() {
        return Err(FsError::Invalid);
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(FsError::Range);
    }
    let known = [&b"user."[..], b"trusted.", b"security.", b"system."];
    if !known.iter().any(|p| name.starts_with(p)) {
        return Err(FsError::NotSupported);
    }
    // POSIX ACLs are not implemented: say so rather than store them without effect.
    if name.starts_with(b"system.") {
        return Err(FsError::NotSupported);
    }
    Ok(())
}

/// The filesystem's own attributes (a trashed file's origin, a snapshot's, a file's quota
/// reservation): readable, but set and removed only by the filesystem.
fn own(name: &[u8]) -> FsResult<()> {
    match name.starts_with(b"trusted.graviton.") {
        true => Err(FsError::NotPermitted),
        false => Ok(()),
    }
}

impl Fs {
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], how: XattrSet) -> FsResult<()> {
        super::changeable(ino)?;
        check_name(name)?;
        own(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(FsError::TooBig);
        }
        self.core.txn(|tx| {
            let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            let exists = tx.xattr(ino, name)?.is_some();
            match how {
                XattrSet::Create if exists => return Err(FsError::Exists),
                XattrSet::Replace if !exists => return Err(FsError::NoAttribute),
                _ => {}
            }
            if !exists {
                let names = tx.xattr_names(ino)?;
                let listed: usize = names.iter().map(|n| n.len() + 1).sum();
                if names.len() >= XATTRS_PER_FILE || listed + name.len() + 1 > XATTR_LIST_MAX {
                    return Err(FsError::NoXattrSpace);
                }
            }
            tx.put_xattr(ino, name, value)?;
            inode.ctime = Timestamp::now();
            tx.put_inode(&inode)?;
            Ok(())
        })
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        if name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        let mut tx = self.core.meta.read()?;
        tx.inode(ino)?.ok_or(FsError::NotFound)?;
        tx.xattr(ino, name)?.ok_or(FsError::NoAttribute)
    }

    /// Names, each followed by a NUL byte, as listxattr(2) returns them.
    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let mut tx = self.core.meta.read()?;
        tx.inode(ino)?.ok_or(FsError::NotFound)?;
        let mut out = Vec::new();
        for name in tx.xattr_names(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        super::changeable(ino)?;
        if name.len() > XATTR_NAME_MAX {
            return Err(FsError::Range);
        }
        own(name)?;
        self.core.txn(|tx| {
            let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            tx.xattr(ino, name)?.ok_or(FsError::NoAttribute)?;
            tx.delete_xattr(ino, name)?;
            inode.ctime = Timestamp::now();
            tx.put_inode(&inode)?;
            Ok(())
        })
    }
}
