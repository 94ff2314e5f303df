//! The one error type at the filesystem core's boundary, and the one place that maps errors to
//! errno values. The match is exhaustive with no catch-all arm: a new error cannot compile
//! without a decision, and anything unexpected is EIO, never ENOENT.

use crate::meta::MetaError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name too long")]
    NameTooLong,
    #[error("invalid argument")]
    Invalid,
    #[error("operation not permitted")]
    NotPermitted,
    #[error("no such attribute")]
    NoAttribute,
    #[error("attribute name or list too large for the buffer")]
    Range,
    #[error("attribute value too large")]
    TooBig,
    #[error("bad file handle")]
    BadHandle,
    #[error("no data or hole past the offset")]
    NoSuchOffset,
    #[error("operation not supported")]
    NotSupported,
    #[error("file too large")]
    FileTooLarge,
    #[error("too many links")]
    TooManyLinks,
    #[error("no space left for extended attributes on this file")]
    NoXattrSpace,
    #[error("no space left on the volume's storage")]
    NoSpace,
    /// A change that would take a quota's usage past its limit (`vfs::quota`).
    #[error("disk quota exceeded")]
    QuotaExceeded,
    /// A hard link between trees under different directory quotas.
    #[error("a hard link cannot join trees under different directory quotas")]
    CrossQuota,
    #[error("the filesystem is being unmounted")]
    ReadOnly,
    /// A change to an inode of a snapshot (`meta::FROZEN`).
    #[error("snapshots are read-only")]
    Frozen,
    /// A caller without the permission an operation the daemon checks itself needs (a clone
    /// of what the caller may not read, into a directory it may not write).
    #[error("permission denied")]
    Denied,
    /// The handle relied on a lock or an unlinked open file that this mount lost when its
    /// session on the shared volume expired (`vfs::fence`).
    #[error("the mount's session expired: this handle's lock or unlinked file is gone")]
    Fenced,
    /// A name found pointing to another inode than when the operation took that inode's gate
    /// (`Core::gates`): the operation starts again (never reaches an application).
    #[error("the name was moved meanwhile")]
    Moved,
    /// An open reached an inode another mount removed, through an entry the kernel still
    /// held: the kernel looks the name up again (`GravitonFuse::open`).
    #[error("the file was removed or replaced by another mount")]
    Stale,
    /// A lock call through such a handle.
    #[error("the mount's session expired: this handle's lock is gone")]
    LockLost,
    /// A lock call on a volume only one mount uses: the kernel keeps such locks itself.
    #[error("locks are kept by the kernel on this volume")]
    LocksLocal,
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("block store: {0}")]
    Store(#[from] StoreError),
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// The errno reported to applications.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid => libc::EINVAL,
            FsError::NotPermitted => libc::EPERM,
            FsError::NoAttribute => libc::ENODATA,
            FsError::Range => libc::ERANGE,
            FsError::TooBig => libc::E2BIG,
            FsError::BadHandle => libc::EBADF,
            FsError::NoSuchOffset => libc::ENXIO,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::FileTooLarge => libc::EFBIG,
            FsError::TooManyLinks => libc::EMLINK,
            FsError::NoXattrSpace => libc::ENOSPC,
            FsError::NoSpace => libc::ENOSPC,
            FsError::QuotaExceeded => libc::EDQUOT,
            FsError::CrossQuota => libc::EXDEV,
            FsError::ReadOnly => libc::EROFS,
            FsError::Frozen => libc::EROFS,
            FsError::Denied => libc::EACCES,
            FsError::Fenced => libc::EIO,
            FsError::Moved => libc::EIO,
            FsError::Stale => libc::ESTALE,
            FsError::LockLost => libc::ENOLCK,
            // FUSE's answer that makes the kernel keep the mount's locks itself
            FsError::LocksLocal => libc::ENOSYS,
            FsError::Meta(MetaError::Conflict) => libc::EIO,
            FsError::Meta(MetaError::SessionExpired) => libc::EIO,
            FsError::Meta(MetaError::Corrupt(_)) => libc::EIO,
            FsError::Meta(MetaError::Backend { .. }) => libc::EIO,
            FsError::Store(StoreError::NotFound(..)) => libc::EIO,
            FsError::Store(StoreError::Corrupt(..)) => libc::EIO,
            // a full disk under a local store says so (cp: "No space left on device")
            FsError::Store(StoreError::Io { source, .. }) => match source.raw_os_error() {
                Some(e @ (libc::ENOSPC | libc::EDQUOT)) => e,
                _ => libc::EIO,
            },
        }
    }

    /// Whether this is an expected answer (debug log) rather than a failure (error log).
    pub fn is_expected(&self) -> bool {
        !matches!(self, FsError::Meta(_) | FsError::Store(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BlockKey, HashAlgo};

    #[test]
    fn a_full_disk_under_a_store_is_enospc_other_io_failures_eio() {
        let io = |e: i32| {
            FsError::Store(StoreError::io(
                "local",
                "storing a block",
                std::io::Error::from_raw_os_error(e),
            ))
            .errno()
        };
        assert_eq!(io(libc::ENOSPC), libc::ENOSPC);
        assert_eq!(io(libc::EDQUOT), libc::EDQUOT);
        assert_eq!(io(libc::EIO), libc::EIO);
        assert_eq!(io(libc::ECONNREFUSED), libc::EIO);
    }

    #[test]
    fn backend_failures_are_eio_never_enoent() {
        let k = BlockKey::for_data(HashAlgo::Blake3, b"x");
        for e in [
            FsError::Store(StoreError::NotFound(k, "local")),
            FsError::Store(StoreError::Corrupt(k, "local")),
            FsError::Meta(MetaError::Corrupt("x".into())),
        ] {
            assert_eq!(e.errno(), libc::EIO);
            assert!(!e.is_expected());
        }
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
    }
}
