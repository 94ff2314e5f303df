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
    #[error("the filesystem is being unmounted")]
    ReadOnly,
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
            FsError::ReadOnly => libc::EROFS,
            FsError::Meta(MetaError::Conflict) => libc::EIO,
            FsError::Meta(MetaError::Corrupt(_)) => libc::EIO,
            FsError::Meta(MetaError::Backend { .. }) => libc::EIO,
            FsError::Store(StoreError::NotFound(..)) => libc::EIO,
            FsError::Store(StoreError::Corrupt(..)) => libc::EIO,
            FsError::Store(StoreError::Io { .. }) => libc::EIO,
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
    use crate::core::{BlockKey, HashAlgo};

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
