//! An embedded volume: a directory holding RocksDB metadata (`meta/`) and, unless the volume
//! names another store, a local block store (`blocks/`). Settings chosen at format time (hash,
//! chunker, block store) are recorded in the metadata and read back on every open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::{Chunker, HashAlgo};
use crate::meta::{MetaError, MetaStore, RocksMetaStore};
use crate::store::{BlockStore, LocalBlockStore, StoreError};
use crate::vfs::{Fs, FsConfig, FsError};

pub const FORMAT_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0} is not a Graviton volume (run `graviton format {0}` first)")]
    NotFormatted(String),
    #[error("{0} is already a Graviton volume")]
    AlreadyFormatted(String),
    #[error("{0} is in use by another Graviton process (already mounted?)")]
    InUse(String),
    #[error("volume {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("unsupported block store URL {0:?} (expected file:///absolute/path)")]
    BadStoreUrl(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Settings recorded at format time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeSettings {
    pub format_version: String,
    pub hash: String,
    pub chunker: String,
    /// Block store URL; empty means `<volume>/blocks`.
    pub block_store: String,
}

pub struct Volume {
    pub dir: PathBuf,
    pub meta: Arc<dyn MetaStore>,
    pub store: Arc<dyn BlockStore>,
    pub settings: VolumeSettings,
    pub hash: HashAlgo,
    pub chunker: Chunker,
    /// Where capacity for statfs comes from.
    pub capacity_path: PathBuf,
}

/// Opens a block store from its URL.
pub fn open_store(
    url: &str,
    volume_dir: &Path,
) -> Result<(Arc<dyn BlockStore>, PathBuf), VolumeError> {
    let root = if url.is_empty() {
        volume_dir.join("blocks")
    } else if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(VolumeError::BadStoreUrl(url.to_string()));
        }
        PathBuf::from(path)
    } else {
        return Err(VolumeError::BadStoreUrl(url.to_string()));
    };
    Ok((Arc::new(LocalBlockStore::open(&root)?), root))
}

fn open_meta(dir: &Path) -> Result<RocksMetaStore, VolumeError> {
    RocksMetaStore::open(dir.join("meta")).map_err(|e| match &e {
        MetaError::Backend { message, .. } if message.contains("lock") => {
            VolumeError::InUse(dir.display().to_string())
        }
        _ => VolumeError::Meta(e),
    })
}

impl Volume {
    /// Whether `dir` holds a formatted volume.
    pub fn is_formatted(dir: &Path) -> bool {
        dir.join("meta").join("CURRENT").exists()
    }

    pub fn format(
        dir: &Path,
        hash: HashAlgo,
        chunker: Chunker,
        store_url: Option<&str>,
    ) -> Result<Volume, VolumeError> {
        if Self::is_formatted(dir) {
            return Err(VolumeError::AlreadyFormatted(dir.display().to_string()));
        }
        let store_url = store_url.unwrap_or("");
        // Check the store URL before anything is written.
        open_store(store_url, dir).map(drop).or_else(|e| match e {
            VolumeError::BadStoreUrl(_) => Err(e),
            _ => Ok(()),
        })?;
        std::fs::create_dir_all(dir).map_err(|source| VolumeError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let meta = open_meta(dir)?;
        meta.put_setting("hash", hash.name())?;
        meta.put_setting("chunker", &chunker.to_string())?;
        meta.put_setting("block_store", store_url)?;
        // Written last: a volume whose format was interrupted is not mistaken for a good one.
        meta.put_setting("format_version", FORMAT_VERSION)?;
        drop(meta);
        Self::open(dir)
    }

    pub fn open(dir: &Path) -> Result<Volume, VolumeError> {
        if !Self::is_formatted(dir) {
            return Err(VolumeError::NotFormatted(dir.display().to_string()));
        }
        let meta = open_meta(dir)?;
        let invalid = |message: String| VolumeError::Invalid {
            path: dir.display().to_string(),
            message,
        };
        let setting = |name: &str| -> Result<String, VolumeError> {
            meta.setting(name)?
                .ok_or_else(|| invalid(format!("setting {name:?} is missing")))
        };
        let version = meta
            .setting("format_version")?
            .ok_or_else(|| VolumeError::NotFormatted(dir.display().to_string()))?;
        if version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {version} is not supported by this build"
            )));
        }
        let settings = VolumeSettings {
            format_version: version,
            hash: setting("hash")?,
            chunker: setting("chunker")?,
            block_store: setting("block_store")?,
        };
        let hash: HashAlgo = settings.hash.parse().map_err(|e| invalid(format!("{e}")))?;
        let chunker: Chunker = settings
            .chunker
            .parse()
            .map_err(|e| invalid(format!("{e}")))?;
        let (store, capacity_path) = open_store(&settings.block_store, dir)?;
        Ok(Volume {
            dir: dir.to_path_buf(),
            meta: Arc::new(meta),
            store,
            settings,
            hash,
            chunker,
            capacity_path,
        })
    }

    /// The core's configuration for this volume, with default tunables.
    pub fn fs_config(&self) -> FsConfig {
        FsConfig::new(self.hash, self.chunker)
    }

    /// Starts the filesystem core on this volume.
    pub fn filesystem(&self, cfg: FsConfig) -> Result<Fs, VolumeError> {
        Ok(Fs::new(self.meta.clone(), self.store.clone(), cfg)?)
    }
}
