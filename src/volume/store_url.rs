//! Where a volume's blocks live, parsed once from the URL recorded at format time.

use std::path::PathBuf;

use super::{Source, VolumeError};

/// A block store URL, as `graviton format --store` and `--replica` take it and the volume's
/// settings record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `<volume>/blocks` of an embedded volume (recorded as the empty string).
    VolumeDir,
    /// `file:///absolute/path`: a directory of block files.
    File(PathBuf),
    /// `s3://bucket/prefix?endpoint=…&region=…`, parsed in full by the S3 adapter.
    S3(String),
    /// `postgres`: in the volume's own PostgreSQL database.
    Postgres,
}

/// The recorded spelling of [`StoreUrl::Postgres`].
pub const POSTGRES_STORE: &str = "postgres";

impl StoreUrl {
    /// Parses a recorded or typed URL; the empty string is the volume's own `blocks/`.
    pub fn parse(url: &str) -> Result<StoreUrl, VolumeError> {
        let bad = || VolumeError::BadStoreUrl(url.to_string());
        if url.is_empty() {
            Ok(StoreUrl::VolumeDir)
        } else if url == POSTGRES_STORE {
            Ok(StoreUrl::Postgres)
        } else if url.starts_with("s3://") {
            Ok(StoreUrl::S3(url.to_string()))
        } else if let Some(path) = url.strip_prefix("file://") {
            path.starts_with('/')
                .then(|| StoreUrl::File(PathBuf::from(path)))
                .ok_or_else(bad)
        } else {
            Err(bad())
        }
    }

    /// A replica's URL: a directory or a bucket of its own (a comma would split the
    /// recorded list).
    pub fn parse_replica(url: &str) -> Result<StoreUrl, VolumeError> {
        match StoreUrl::parse(url)? {
            u @ (StoreUrl::File(_) | StoreUrl::S3(_)) if !url.contains(',') => Ok(u),
            _ => Err(VolumeError::BadStoreUrl(url.to_string())),
        }
    }

    /// Whether `source` can keep its blocks here: a PostgreSQL volume names its store, and
    /// only a PostgreSQL volume has a database to keep blocks in.
    pub fn fits(&self, source: &Source) -> Result<(), VolumeError> {
        match (self, source) {
            (StoreUrl::VolumeDir, Source::Postgres(_)) => Err(VolumeError::StoreRequired),
            (StoreUrl::Postgres, Source::Dir(_)) => {
                Err(VolumeError::BadStoreUrl(POSTGRES_STORE.into()))
            }
            _ => Ok(()),
        }
    }

    /// What the volume's settings record.
    pub fn recorded(&self) -> String {
        match self {
            StoreUrl::VolumeDir => String::new(),
            StoreUrl::File(p) => format!("file://{}", p.display()),
            StoreUrl::S3(url) => url.clone(),
            StoreUrl::Postgres => POSTGRES_STORE.into(),
        }
    }

    /// Whether blocks are files on this machine (the volume's `blocks/` or a `file://` one):
    /// reading one costs a local read, so whole-file prefetch and a write-back stage buy
    /// nothing.
    pub fn is_local(&self) -> bool {
        matches!(self, StoreUrl::VolumeDir | StoreUrl::File(_))
    }

    /// Whether a part of a block costs less to read than the whole (a ranged GET).
    pub fn ranged_reads(&self) -> bool {
        matches!(self, StoreUrl::S3(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_once_into_kinds_with_their_capabilities() {
        let file = StoreUrl::parse("file:///srv/blocks").unwrap();
        assert_eq!(file, StoreUrl::File("/srv/blocks".into()));
        assert_eq!(file.recorded(), "file:///srv/blocks");
        assert!(file.is_local() && !file.ranged_reads());
        let s3 = StoreUrl::parse("s3://b/p?region=x").unwrap();
        assert!(!s3.is_local() && s3.ranged_reads());
        assert_eq!(StoreUrl::parse("").unwrap(), StoreUrl::VolumeDir);
        assert_eq!(StoreUrl::parse("postgres").unwrap(), StoreUrl::Postgres);
        for bad in ["file://relative", "http://x", "/srv/blocks"] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
        for bad in ["postgres", "", "file:///a,b"] {
            assert!(StoreUrl::parse_replica(bad).is_err(), "{bad:?}");
        }
        let pg = Source::Postgres("postgres://db/v".into());
        assert!(StoreUrl::VolumeDir.fits(&pg).is_err());
        assert!(StoreUrl::Postgres.fits(&Source::Dir("/v".into())).is_err());
    }
}
