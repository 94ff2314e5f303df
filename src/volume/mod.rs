//! A volume: its metadata (an embedded directory with RocksDB in `meta/`, or a PostgreSQL
//! database) and its block store (`<dir>/blocks` by default for embedded volumes, or the
//! `file://` directory recorded at format time). Settings chosen at format time (hash, chunker,
//! block store) are recorded in the metadata and read back on every open.

pub mod data_key;
mod source;
pub mod stack;
mod store_url;
pub mod unlock;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use source::{FROM_ENV, Source, has_password, hide_passwords_from_the_process_list, redact};
pub use stack::{MetaReplicaIndex, StackDescription};
pub use store_url::{POSTGRES_STORE, StoreUrl};

use crate::domain::frames::{Compression, FrameCodec};
use crate::domain::{Chunker, HashAlgo};
use crate::meta::{Inode, MetaError, MetaStore, ROOT_INO, Timestamp};
use crate::store::at_rest::AtRest;
use crate::store::local::Disk;
use crate::store::{BlockStore, StoreError};
use crate::vfs::{Fs, FsConfig, FsError};

pub const FORMAT_VERSION: &str = "1";
/// The format of a volume that keeps small blocks in its database: a build that predates
/// `small_blocks` would not look for them there, so it must refuse the volume.
pub const SMALL_BLOCKS_FORMAT_VERSION: &str = "2";
/// The format of an embedded volume that keeps small blocks in its RocksDB database
/// (`meta::rocks_blocks`).
pub const EMBEDDED_SMALL_BLOCKS_FORMAT_VERSION: &str = "3";
/// The format of a volume whose blocks are stored as frames (`domain::frames`, the
/// `compression` setting), whatever its other settings: a build that predates frames would
/// read them as damaged blocks, so it must refuse the volume.
pub const FRAMES_FORMAT_VERSION: &str = "4";
/// Setting: blocks shorter than this many bytes are kept in the metadata database (0: none).
pub const SMALL_BLOCKS: &str = "small_blocks";
/// Setting: how blocks are compressed (`domain::frames::Compression`); absent: not framed.
pub const COMPRESSION: &str = "compression";
/// Setting: an encrypted volume's data key, wrapped under its passphrase (`data_key`).
pub const DATA_KEY: &str = "data_key";
/// An embedded volume's `small_blocks` unless format says otherwise: blocks shorter than
/// any the chunker cuts inside a stream (1 MiB with the default chunker), that is small
/// files, tails and packed pieces. Those reach RocksDB's log before the commit that names
/// them, so closing a small file costs no fsync; a stream's blocks are synced before their
/// commit (`BlockStore::settle`), mostly while the writer is still writing.
pub fn embedded_small_blocks(chunker: &Chunker) -> u32 {
    chunker.min_block()
}

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
    #[error(
        "unsupported block store URL {0:?} (expected file:///absolute/path, s3://bucket/prefix?endpoint=…&region=…, or postgres for a PostgreSQL volume)"
    )]
    BadStoreUrl(String),
    #[error(
        "a PostgreSQL volume needs a block store: format it with --store file:///path or --store postgres"
    )]
    StoreRequired,
    #[error(transparent)]
    Unlock(#[from] unlock::UnlockError),
    #[error("{path}: {reason}")]
    Key {
        path: String,
        reason: data_key::KeyError,
    },
    #[error(transparent)]
    OtherKey(#[from] crate::domain::key::OtherIdentityKey),
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
    /// Blocks shorter than this many bytes are kept in the PostgreSQL database (0: none).
    #[serde(default)]
    pub small_blocks: u32,
    /// How blocks are compressed in frames (`zstd:3`, `lz4`, `none`); None: stored as they are.
    #[serde(default)]
    pub compression: Option<String>,
    /// Whether frames are sealed under the volume's data key (`--encrypt`).
    #[serde(default)]
    pub encrypted: bool,
}

/// How a new volume stores its blocks.
#[derive(Clone, Copy, Default)]
pub struct BlockFormat<'a> {
    /// Blocks shorter than this many bytes go to the metadata database (0: none).
    pub small_blocks: u32,
    /// Each block stored as frames, compressed where that makes them smaller
    /// (`Compression::None` and no encryption: stored as they are, unframed).
    pub compression: Compression,
    /// Encrypted: frames sealed under a new data key, which is kept wrapped under this
    /// passphrase; blocks named by a keyed hash.
    pub passphrase: Option<&'a [u8]>,
}

pub struct Volume {
    pub source: Source,
    /// Pid file, status socket and log of a mount daemon.
    pub state_dir: PathBuf,
    pub meta: Arc<dyn MetaStore>,
    pub store: Arc<dyn BlockStore>,
    /// Each block store with its URL: the primary first, then the replicas (`graviton scrub`
    /// checks them one by one).
    pub replicas: Vec<(String, Arc<dyn BlockStore>)>,
    pub settings: VolumeSettings,
    pub hash: HashAlgo,
    pub chunker: Chunker,
    /// Where capacity for statfs comes from.
    pub capacity_path: PathBuf,
    /// The primary block store, parsed from `settings.block_store`.
    pub store_url: StoreUrl,
    /// The layers `meta` and `store` pass through (`stack`).
    pub stack: StackDescription,
    /// How a mount keeps its local copies of blocks (disk cache, write-back staging): sealed
    /// on an encrypted volume.
    pub at_rest: AtRest,
    /// Set by the mount daemon: whether its mount has an inode open (`tree::trash` keeps such
    /// entries).
    pub in_use: std::sync::OnceLock<Box<crate::vfs::tree::trash::InUse>>,
}

/// How long PostgreSQL operations wait for an unreachable server before they fail with EIO.
pub const DEFAULT_PG_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Volume {
    /// Whether `dir` holds a formatted embedded volume.
    pub fn is_formatted(dir: &Path) -> bool {
        dir.join("meta").join("CURRENT").exists()
    }

    pub fn format(
        source: &Source,
        hash: HashAlgo,
        chunker: Chunker,
        store_url: Option<&str>,
    ) -> Result<Volume, VolumeError> {
        let small_blocks = match source {
            Source::Dir(_) if StoreUrl::parse(store_url.unwrap_or(""))?.is_local() => {
                embedded_small_blocks(&chunker)
            }
            _ => 0,
        };
        let blocks = BlockFormat {
            small_blocks,
            ..BlockFormat::default()
        };
        Self::format_replicated(source, hash, chunker, store_url, &[], blocks)
    }

    /// `format`, with blocks also kept in each of `replicas` (block store URLs), stored as
    /// `blocks` says.
    pub fn format_replicated(
        source: &Source,
        hash: HashAlgo,
        chunker: Chunker,
        store_url: Option<&str>,
        replicas: &[String],
        blocks: BlockFormat,
    ) -> Result<Volume, VolumeError> {
        let BlockFormat {
            small_blocks,
            compression,
            passphrase,
        } = blocks;
        if passphrase.is_some() && hash != HashAlgo::Blake3 {
            return Err(VolumeError::Invalid {
                path: source.display(),
                message: "an encrypted volume names its blocks with keyed BLAKE3: leave --hash out"
                    .into(),
            });
        }
        if small_blocks > 0
            && matches!(source, Source::Postgres(_))
            && store_url == Some(POSTGRES_STORE)
        {
            return Err(VolumeError::Invalid {
                path: source.display(),
                message: "--small-blocks keeps small blocks in the volume's PostgreSQL database: it needs a PostgreSQL volume whose blocks are elsewhere".into(),
            });
        }
        for r in replicas {
            StoreUrl::parse_replica(r)?;
        }
        let dir = match source {
            Source::Dir(d) => Some(d.as_path()),
            Source::Postgres(_) => None,
        };
        if let Some(d) = dir
            && Self::is_formatted(d)
        {
            return Err(VolumeError::AlreadyFormatted(source.display()));
        }
        let url = StoreUrl::parse(store_url.unwrap_or(""))?;
        url.fits(source)?;
        if let StoreUrl::S3(s3) = &url {
            // a bad S3 URL is refused before anything is written
            let sse_c = std::env::var(crate::store::s3::SSE_C_KEY_ENV).ok();
            crate::store::s3::S3Url::parse(s3, sse_c.as_deref()).map_err(|m| {
                VolumeError::Invalid {
                    path: s3.clone(),
                    message: m,
                }
            })?;
        }
        if let Some(d) = dir {
            crate::private::dir(d).map_err(|source| VolumeError::Io {
                context: format!("creating {}", d.display()),
                source,
            })?;
        }
        let meta = stack::engine(source, DEFAULT_PG_WAIT)?.meta;
        if meta.setting("format_version")?.is_some() {
            return Err(VolumeError::AlreadyFormatted(source.display()));
        }
        let key = match passphrase {
            None => None,
            Some(p) => {
                let key = data_key::DataKey::generate();
                let path = source.display();
                let wrapped = key
                    .wrap(p, data_key::KdfCost::DEFAULT)
                    .map_err(|reason| VolumeError::Key { path, reason })?;
                meta.put_setting(DATA_KEY, &wrapped)?;
                Some(key)
            }
        };
        let hash = match key {
            Some(_) => HashAlgo::Blake3Keyed,
            None => hash,
        };
        let framed = compression != Compression::None || key.is_some();
        meta.put_setting("hash", hash.name())?;
        meta.put_setting("chunker", &chunker.to_string())?;
        meta.put_setting("block_store", &url.recorded())?;
        meta.put_setting("replicas", &replicas.join(","))?;
        meta.put_setting(SMALL_BLOCKS, &small_blocks.to_string())?;
        if framed {
            meta.put_setting(COMPRESSION, &compression.name())?;
        }
        // tells a volume from another later created behind the same URL (local caches)
        meta.put_setting("volume_id", &format!("{:032x}", rand::random::<u128>()))?;
        let mut tx = meta.begin()?;
        if tx.inode(ROOT_INO)?.is_none() {
            tx.put_inode(&Inode::root(Timestamp::now()))?;
        }
        tx.commit()?;
        // Written last: a volume whose format was interrupted is not mistaken for a good one.
        meta.put_setting(
            "format_version",
            match (small_blocks, source) {
                _ if framed => FRAMES_FORMAT_VERSION,
                (_, Source::Dir(_)) => EMBEDDED_SMALL_BLOCKS_FORMAT_VERSION,
                (0, Source::Postgres(_)) => FORMAT_VERSION,
                (_, Source::Postgres(_)) => SMALL_BLOCKS_FORMAT_VERSION,
            },
        )?;
        drop(meta);
        Self::open_with(source, DEFAULT_PG_WAIT, None, key)
    }

    pub fn open(source: &Source) -> Result<Volume, VolumeError> {
        Self::open_waiting(source, DEFAULT_PG_WAIT)
    }

    /// `open`, with PostgreSQL operations waiting up to `pg_wait` for an unreachable server.
    pub fn open_waiting(
        source: &Source,
        pg_wait: std::time::Duration,
    ) -> Result<Volume, VolumeError> {
        Self::open_with(source, pg_wait, None, None)
    }

    /// `open`, with a local block store making its files durable through `disk`.
    pub fn open_on_disk(source: &Source, disk: Arc<dyn Disk>) -> Result<Volume, VolumeError> {
        Self::open_with(source, DEFAULT_PG_WAIT, Some(&disk), None)
    }

    /// Long because an older volume is brought up to date (format versions) before its
    /// settings are read, in this order. An encrypted volume is unlocked with `key` when given
    /// (at format), else with its passphrase (`unlock`), before anything is read or written.
    fn open_with(
        source: &Source,
        pg_wait: std::time::Duration,
        disk: Option<&Arc<dyn Disk>>,
        key: Option<data_key::DataKey>,
    ) -> Result<Volume, VolumeError> {
        if let Source::Dir(d) = source {
            if !Self::is_formatted(d) {
                return Err(VolumeError::NotFormatted(source.display()));
            }
            // made by an earlier version with the umask's modes: others could read blocks
            crate::private::dir(d).map_err(|source| VolumeError::Io {
                context: format!("restricting {} to its owner", d.display()),
                source,
            })?;
        }
        let engine = stack::engine(source, pg_wait)?;
        let meta = engine.meta;
        let invalid = |message: String| VolumeError::Invalid {
            path: source.display(),
            message,
        };
        let setting = |name: &str| -> Result<String, VolumeError> {
            meta.setting(name)?
                .ok_or_else(|| invalid(format!("setting {name:?} is missing")))
        };
        let mut version = meta
            .setting("format_version")?
            .ok_or_else(|| VolumeError::NotFormatted(source.display()))?;
        if version == FORMAT_VERSION
            && matches!(source, Source::Dir(_))
            && StoreUrl::parse(&setting("block_store")?)?.is_local()
        {
            // An embedded volume from before small blocks went to RocksDB: new ones go there
            // from now on (its earlier ones stay files, still read: `store::tiered`).
            let chunker: Chunker = setting("chunker")?
                .parse()
                .map_err(|e| invalid(format!("{e}")))?;
            meta.put_setting(SMALL_BLOCKS, &embedded_small_blocks(&chunker).to_string())?;
            meta.put_setting("format_version", EMBEDDED_SMALL_BLOCKS_FORMAT_VERSION)?;
            meta.sync()?;
            version = EMBEDDED_SMALL_BLOCKS_FORMAT_VERSION.to_string();
        }
        let known = [
            FORMAT_VERSION,
            SMALL_BLOCKS_FORMAT_VERSION,
            EMBEDDED_SMALL_BLOCKS_FORMAT_VERSION,
            FRAMES_FORMAT_VERSION,
        ];
        if !known.contains(&version.as_str()) {
            return Err(invalid(format!(
                "format version {version} is not supported by this build"
            )));
        }
        let settings = VolumeSettings {
            format_version: version,
            hash: setting("hash")?,
            chunker: setting("chunker")?,
            block_store: setting("block_store")?,
            small_blocks: match meta.setting(SMALL_BLOCKS)? {
                Some(v) => v
                    .parse()
                    .map_err(|_| invalid(format!("setting {SMALL_BLOCKS} is not a size: {v:?}")))?,
                None => 0,
            },
            compression: meta.setting(COMPRESSION)?,
            encrypted: false,
        };
        let hash: HashAlgo = settings.hash.parse().map_err(|e| invalid(format!("{e}")))?;
        let chunker: Chunker = settings
            .chunker
            .parse()
            .map_err(|e| invalid(format!("{e}")))?;
        let store_url = StoreUrl::parse(&settings.block_store)?;
        let replica_urls: Vec<String> = match meta.setting("replicas")? {
            Some(list) => list.split(',').map(str::to_string).collect(),
            None => Vec::new(),
        };
        let small_blocks = settings.small_blocks;
        // a volume is framed exactly when its version says so: a setting alone (written by hand,
        // or by a damaged copy) would read every block of a plain volume as damaged
        let framed = settings.format_version == FRAMES_FORMAT_VERSION;
        let frames = match &settings.compression {
            None if framed => {
                return Err(invalid(format!("setting {COMPRESSION:?} is missing")));
            }
            None => None,
            Some(_) if !framed => {
                return Err(invalid(format!(
                    "setting {COMPRESSION:?} on a volume of format version {}",
                    settings.format_version
                )));
            }
            Some(c) => Some(Compression::parse(c).map_err(|e| invalid(format!("{e}")))?),
        };
        let wrapped = meta.setting(DATA_KEY)?;
        if wrapped.is_some() != (hash == HashAlgo::Blake3Keyed) || wrapped.is_some() && !framed {
            return Err(invalid(format!(
                "settings {DATA_KEY:?}, \"hash\" ({hash}) and format version {} disagree",
                settings.format_version
            )));
        }
        if wrapped.is_none() && unlock::key_file_given() {
            return Err(invalid(
                "a key file was given, but the volume says it is not encrypted: refused, since whoever can write its settings could have turned encryption off (leave the key file out for a plain volume)".into(),
            ));
        }
        let sealing = match (&wrapped, key) {
            (None, _) => None,
            (Some(_), Some(key)) => Some(key),
            (Some(w), None) => Some(unlock(source, w)?),
        }
        .map(|key| -> Result<_, VolumeError> {
            let hold = crate::domain::key::install_identity_key(&key.identity_key())?;
            Ok((key.sealing_key(), hold))
        })
        .transpose()?;
        let mut settings = settings;
        settings.encrypted = sealing.is_some();
        let codec = |compression| match &sealing {
            Some((key, hold)) => FrameCodec::new(compression, Some(key)).holding(hold.clone()),
            None => FrameCodec::new(compression, None),
        };
        let frames = frames.map(|c| Arc::new(codec(c)));
        let at_rest = match &sealing {
            Some(_) => AtRest::Sealed(Arc::new(codec(Compression::None))),
            None => AtRest::Plain,
        };
        let blocks = stack::blocks(
            source,
            &store_url,
            small_blocks,
            engine.blocks,
            &replica_urls,
            &meta,
            disk,
            pg_wait,
            frames.as_ref(),
        )?;
        Ok(Volume {
            state_dir: source.state_dir(),
            source: source.clone(),
            meta,
            store: blocks.store,
            replicas: blocks.replicas,
            settings,
            hash,
            chunker,
            capacity_path: blocks.capacity_path,
            store_url,
            stack: StackDescription {
                metadata: engine.description,
                blocks: blocks.description,
            },
            at_rest,
            in_use: std::sync::OnceLock::new(),
        })
    }

    /// Wraps the data key of the encrypted volume `source` under the passphrase `new` gives
    /// (`graviton key change`), once its current passphrase unlocks it. Only the metadata is
    /// opened: blocks and the data key stay as they are.
    pub fn change_passphrase(
        source: &Source,
        new: impl FnOnce() -> Result<unlock::Passphrase, unlock::UnlockError>,
    ) -> Result<(), VolumeError> {
        let meta = stack::engine(source, DEFAULT_PG_WAIT)?.meta;
        let Some(wrapped) = meta.setting(DATA_KEY)? else {
            return Err(VolumeError::Invalid {
                path: source.display(),
                message: "the volume is not encrypted: it has no key to change".into(),
            });
        };
        let key = unlock(source, &wrapped)?;
        let path = source.display();
        let rewrapped = key
            .wrap(&new()?, data_key::KdfCost::DEFAULT)
            .map_err(|reason| VolumeError::Key { path, reason })?;
        meta.put_setting(DATA_KEY, &rewrapped)?;
        meta.sync()?;
        Ok(())
    }

    /// Makes `wrapped` (from a dump of an encrypted volume) the data key of the empty encrypted
    /// volume `source`, which `graviton load` then fills: the dump's blocks are named and
    /// sealed under it, and its passphrase opens the volume from then on.
    pub fn adopt_data_key(source: &Source, wrapped: &str) -> Result<(), VolumeError> {
        let meta = stack::engine(source, DEFAULT_PG_WAIT)?.meta;
        let invalid = |message: &str| VolumeError::Invalid {
            path: source.display(),
            message: message.into(),
        };
        if meta.setting(DATA_KEY)?.is_none() {
            return Err(invalid(
                "the dump is of an encrypted volume: format the target with --encrypt",
            ));
        }
        if meta.usage()?.inodes > 1 {
            return Err(invalid(
                "not empty: load restores into a freshly formatted volume",
            ));
        }
        if let Some(shared) = meta.shared()
            && !shared.sessions()?.is_empty()
        {
            return Err(invalid("mounted: load restores into a volume nothing uses"));
        }
        meta.put_setting(DATA_KEY, wrapped)?;
        meta.sync()?;
        Ok(())
    }

    /// The data key `wrapped` holds, unwrapped with the passphrase of `source` (as for an
    /// opening: key file, environment, terminal).
    pub fn unwrap_key(source: &Source, wrapped: &str) -> Result<data_key::DataKey, VolumeError> {
        unlock(source, wrapped)
    }

    /// `open`, unlocking an encrypted volume with `key` rather than asking for its passphrase.
    pub fn open_with_key(source: &Source, key: data_key::DataKey) -> Result<Volume, VolumeError> {
        Self::open_with(source, DEFAULT_PG_WAIT, None, Some(key))
    }

    /// Whether this volume's blocks are sealed (`--encrypt`).
    pub fn encrypted(&self) -> bool {
        self.settings.encrypted
    }

    /// The core's configuration for this volume, with default tunables.
    pub fn fs_config(&self) -> FsConfig {
        FsConfig::new(self.hash, self.chunker)
    }

    /// Whether reads may fetch parts of blocks: the store can serve a verified range, and
    /// blocks are plain (checked by group hashes) or sealed (each frame checks itself); only
    /// compressed blocks are read whole.
    pub fn ranged_reads(&self) -> bool {
        self.store_url.ranged_reads() && (self.settings.compression.is_none() || self.encrypted())
    }

    /// Starts the filesystem core on this volume.
    pub fn filesystem(&self, cfg: FsConfig) -> Result<Fs, VolumeError> {
        Ok(Fs::new(self.meta.clone(), self.store.clone(), cfg)?)
    }
}

/// The data key of the encrypted volume `source`, unwrapped from `wrapped` with its passphrase.
fn unlock(source: &Source, wrapped: &str) -> Result<data_key::DataKey, VolumeError> {
    let path = source.display();
    let passphrase = unlock::passphrase(&path)?;
    data_key::DataKey::unwrap(wrapped, &passphrase)
        .map_err(|reason| VolumeError::Key { path, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalBlockStore;

    /// An embedded volume from before small blocks went to RocksDB keeps reading its small
    /// block files, and stores new small blocks in RocksDB.
    #[test]
    fn an_earlier_embedded_volume_takes_up_small_blocks_in_rocksdb() {
        let dir = tempfile::tempdir().unwrap();
        let source = Source::Dir(dir.path().join("vol"));
        let chunker: Chunker = "fixed-64k".parse().unwrap();
        let (old, new) = (vec![1u8; 5000], vec![2u8; 6000]);
        let (old_key, new_key) = (
            crate::domain::BlockKey::for_data(HashAlgo::Blake3, &old),
            crate::domain::BlockKey::for_data(HashAlgo::Blake3, &new),
        );
        {
            let vol = Volume::format_replicated(
                &source,
                HashAlgo::Blake3,
                chunker,
                None,
                &[],
                BlockFormat::default(),
            )
            .unwrap();
            vol.store.put(&old_key, &old).unwrap();
            vol.meta
                .put_setting("format_version", FORMAT_VERSION)
                .unwrap();
        }
        let files = dir.path().join("vol").join("blocks");
        let vol = Volume::open(&source).unwrap();
        assert_eq!(
            vol.settings.format_version,
            EMBEDDED_SMALL_BLOCKS_FORMAT_VERSION
        );
        assert_eq!(vol.settings.small_blocks, 64 << 10);
        assert_eq!(
            vol.store.get(&old_key).unwrap(),
            old,
            "a block file of before"
        );
        vol.store.put(&new_key, &new).unwrap();
        let local = LocalBlockStore::open(&files).unwrap();
        assert!(local.exists(&old_key).unwrap() && !local.exists(&new_key).unwrap());
        let mut listed = vol.store.list().unwrap();
        listed.sort();
        let mut both = vec![old_key, new_key];
        both.sort();
        assert_eq!(listed, both);
    }

    /// A volume is framed exactly when its format version says so: a `compression` setting
    /// on a plain volume, or a framed volume without one, is refused rather than read wrong.
    #[test]
    fn framing_follows_the_format_version_and_nothing_else() {
        let format = |compression| {
            let dir = tempfile::tempdir().unwrap();
            let source = Source::Dir(dir.path().join("vol"));
            let blocks = BlockFormat {
                compression,
                ..BlockFormat::default()
            };
            let chunker = crate::domain::DEFAULT_CHUNKER;
            Volume::format_replicated(&source, HashAlgo::Blake3, chunker, None, &[], blocks)
                .unwrap();
            (dir, source)
        };
        let (_plain_dir, plain) = format(Compression::None);
        Volume::open(&plain)
            .unwrap()
            .meta
            .put_setting(COMPRESSION, "zstd:3")
            .unwrap();
        let err = Volume::open(&plain).err().expect("refused").to_string();
        assert!(err.contains("format version 3"), "{err}");
        let (_framed_dir, framed) = format(Compression::Lz4);
        let vol = Volume::open(&framed).unwrap();
        assert_eq!(vol.settings.format_version, FRAMES_FORMAT_VERSION);
        assert!(!vol.ranged_reads());
        vol.meta.put_setting(COMPRESSION, "").unwrap();
        drop(vol);
        let err = Volume::open(&framed).err().expect("refused").to_string();
        assert!(err.contains("compression"), "{err}");
    }
}
