//! A volume: its metadata (an embedded directory with RocksDB in `meta/`, or a PostgreSQL
//! database) and its block store (`<dir>/blocks` by default for embedded volumes, or the
//! `file://` directory recorded at format time). Settings chosen at format time (hash, chunker,
//! block store) are recorded in the metadata and read back on every open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::{Chunker, HashAlgo};
use crate::meta::{Inode, MetaError, MetaStore, PgMetaStore, ROOT_INO, RocksMetaStore, Timestamp};
use crate::store::local::Disk;
use crate::store::{BlockStore, LocalBlockStore, PgBlockStore, StoreError};

/// Block store URL meaning "in the volume's PostgreSQL database".
pub const POSTGRES_STORE: &str = "postgres";
use crate::vfs::{Fs, FsConfig, FsError};

pub const FORMAT_VERSION: &str = "1";
/// The format of a volume that keeps small blocks in its database: a build that predates
/// `small_blocks` would not look for them there, so it must refuse the volume.
pub const SMALL_BLOCKS_FORMAT_VERSION: &str = "2";
/// The format of an embedded volume that keeps small blocks in its RocksDB database
/// (`meta::rocks_blocks`).
pub const EMBEDDED_SMALL_BLOCKS_FORMAT_VERSION: &str = "3";
/// Setting: blocks shorter than this many bytes are kept in the metadata database (0: none).
pub const SMALL_BLOCKS: &str = "small_blocks";
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
}

/// Where a volume's metadata lives, as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An embedded volume directory (RocksDB).
    Dir(PathBuf),
    /// A PostgreSQL URL (`postgres://…` or `postgresql://…`).
    Postgres(String),
}

/// Prefix of a command-line argument naming an environment variable that holds the source
/// (`env:GRAVITON_SOURCE`): how a URL with a password travels without showing in the process
/// list (`hide_passwords_from_the_process_list`).
pub const FROM_ENV: &str = "env:";

/// Whether `s` is a PostgreSQL URL.
fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// Whether `url` carries a password (in its user part or as a query parameter).
pub fn has_password(url: &str) -> bool {
    is_postgres_url(url) && redact(url) != url
}

/// Every local user can read a process's command line (`/proc/PID/cmdline`). When one of
/// this process's arguments is a PostgreSQL URL with a password, the process runs itself
/// again with that URL moved into its environment (readable by the same user only) and
/// `env:GRAVITON_SOURCE_<n>` in its place, and warns: the URL was visible for a moment, and
/// wherever it came from (a shell history, fstab) may be readable too. Returns only when
/// nothing needs hiding (or the new program could not start).
pub fn hide_passwords_from_the_process_list() {
    use std::os::unix::process::CommandExt;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if !args.iter().any(|a| a.to_str().is_some_and(has_password)) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    for (i, arg) in args.iter().enumerate().skip(1) {
        match arg.to_str().filter(|a| has_password(a)) {
            Some(url) => {
                let var = format!("GRAVITON_SOURCE_{i}");
                eprintln!(
                    "graviton: warning: {} carries a password, which other local users can read while it is on a command line or in /etc/fstab; put it in ~/.pgpass (or PGPASSFILE, or PGPASSWORD) instead",
                    redact(url)
                );
                cmd.env(&var, url).arg(format!("{FROM_ENV}{var}"));
            }
            None => {
                cmd.arg(arg);
            }
        }
    }
    if let Some(name) = args.first() {
        cmd.arg0(name);
    }
    let e = cmd.exec();
    eprintln!("graviton: could not run itself again without the password in its arguments: {e}");
}

impl Source {
    /// A volume folder, a PostgreSQL URL, or `env:NAME` for a PostgreSQL URL in the
    /// environment variable `NAME` (`GRAVITON_…` only).
    pub fn parse(s: &str) -> Source {
        if let Some(var) = s
            .strip_prefix(FROM_ENV)
            .filter(|v| v.starts_with("GRAVITON_"))
            && let Ok(url) = std::env::var(var)
            && is_postgres_url(&url)
        {
            return Source::Postgres(url);
        }
        if is_postgres_url(s) {
            Source::Postgres(s.to_string())
        } else {
            Source::Dir(PathBuf::from(s))
        }
    }

    /// For logs, messages and mount tables: a URL's password is never shown.
    pub fn display(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Postgres(url) => redact(url),
        }
    }

    /// Where the mount daemon keeps its pid file, status socket and log: the volume folder,
    /// or for PostgreSQL `<state home>/graviton/<id>` (`crate::state::home`: `/var/lib` for
    /// root, `~/.local/state` for others, unless `XDG_STATE_HOME` says otherwise).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir_in(&crate::state::home())
    }

    /// `state_dir` with `base` standing for `$XDG_STATE_HOME`.
    pub fn state_dir_in(&self, base: &Path) -> PathBuf {
        match self {
            Source::Dir(d) => d.clone(),
            Source::Postgres(url) => {
                let id = blake3::hash(redact(url).as_bytes()).to_hex();
                base.join("graviton").join(&id[..16])
            }
        }
    }
}

impl Source {
    /// Where a mount daemon keeps its state: for a shared (PostgreSQL) volume one folder per
    /// mountpoint, as several mounts of one volume may share a machine.
    pub fn mount_state_dir(&self, mountpoint: &Path) -> PathBuf {
        self.for_mountpoint(self.state_dir(), mountpoint)
    }

    /// `mount_state_dir` with `base` standing for `$XDG_STATE_HOME`.
    pub fn mount_state_dir_in(&self, base: &Path, mountpoint: &Path) -> PathBuf {
        self.for_mountpoint(self.state_dir_in(base), mountpoint)
    }

    fn for_mountpoint(&self, state: PathBuf, mountpoint: &Path) -> PathBuf {
        match self {
            Source::Dir(_) => state,
            Source::Postgres(_) => {
                let id = blake3::hash(mountpoint.as_os_str().as_encoded_bytes()).to_hex();
                state.join(&id[..12])
            }
        }
    }
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?password=***`:
/// a password in the user part or in a query parameter (`password`, `sslpassword`) is hidden.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // the user part first (a password may hold any character but '@'), then the query
    let (auth, host) = match rest.rsplit_once('@') {
        Some((auth, host)) => (Some(auth), host),
        None => (None, rest),
    };
    let (host, query) = match host.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (host, None),
    };
    let mut out = format!("{scheme}://");
    match auth {
        Some(auth) => match auth.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:***@{host}")),
            None => out.push_str(&format!("{auth}@{host}")),
        },
        None => out.push_str(host),
    }
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if is_password_key(&percent_decoded(k)) => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Query parameters that carry a password (libpq's names; case does not matter to us).
fn is_password_key(k: &str) -> bool {
    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
}

/// `s` with `%XX` escapes decoded (`pass%77ord` is `password` to the driver too).
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
}

/// The ReplicaIndex: what is known to be wrong with which replica's copy of a block, in the
/// volume's key-value store under `replica/<n>/<block key>` (an entry is a problem to repair;
/// `graviton scrub` removes it once the copy is good).
pub struct MetaReplicaIndex(pub Arc<dyn MetaStore>);

impl MetaReplicaIndex {
    pub fn key(replica: usize, block: &crate::core::BlockKey) -> String {
        format!("replica/{replica}/{block}")
    }
}

impl crate::store::replicated::ReplicaIndex for MetaReplicaIndex {
    fn record(
        &self,
        replica: usize,
        key: &crate::core::BlockKey,
        status: crate::store::replicated::ReplicaStatus,
    ) {
        use crate::store::replicated::ReplicaStatus;
        let k = Self::key(replica, key);
        let r = match status {
            ReplicaStatus::Ok => self.0.kv_delete(&k),
            ReplicaStatus::Missing => self.0.kv_put(&k, b"missing"),
            ReplicaStatus::Corrupt => self.0.kv_put(&k, b"corrupt"),
        };
        if let Err(e) = r {
            tracing::warn!("recording a replica's state: {e}");
        }
    }
}

/// Opens a block store from its URL; an empty URL is `<volume dir>/blocks`. A local store
/// makes its files durable through `disk` when given (tests inject faults there).
pub fn open_store(
    url: &str,
    source: &Source,
    disk: Option<&Arc<dyn Disk>>,
) -> Result<(Arc<dyn BlockStore>, PathBuf), VolumeError> {
    let volume_dir = match source {
        Source::Dir(d) => Some(d.as_path()),
        Source::Postgres(_) => None,
    };
    if url == POSTGRES_STORE {
        let Source::Postgres(db) = source else {
            return Err(VolumeError::BadStoreUrl(url.to_string()));
        };
        return Ok((Arc::new(PgBlockStore::connect(db)?), source.state_dir()));
    }
    if url.starts_with("s3://") {
        let store = crate::store::S3BlockStore::open(url)?;
        return Ok((Arc::new(store), source.state_dir()));
    }
    let root = if url.is_empty() {
        volume_dir.ok_or(VolumeError::StoreRequired)?.join("blocks")
    } else if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(VolumeError::BadStoreUrl(url.to_string()));
        }
        PathBuf::from(path)
    } else {
        return Err(VolumeError::BadStoreUrl(url.to_string()));
    };
    let store = match disk {
        Some(disk) => LocalBlockStore::open_on(&root, disk.clone())?,
        None => LocalBlockStore::open(&root)?,
    };
    Ok((Arc::new(store), root))
}

/// Whether blocks go to a directory of files: the volume's own `blocks/` or a `file://` one.
fn is_local_store(url: &str) -> bool {
    url.is_empty() || url.starts_with("file://")
}

/// How long PostgreSQL operations wait for an unreachable server before they fail with EIO.
pub const DEFAULT_PG_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn open_meta(
    source: &Source,
    pg_wait: std::time::Duration,
) -> Result<Arc<dyn MetaStore>, VolumeError> {
    Ok(open_engine(source, pg_wait)?.0)
}

/// A metadata engine, with the block store an embedded volume keeps in it.
type Engine = (Arc<dyn MetaStore>, Option<Arc<dyn BlockStore>>);

/// The metadata engine, with the block store an embedded volume keeps in it.
fn open_engine(source: &Source, pg_wait: std::time::Duration) -> Result<Engine, VolumeError> {
    match source {
        Source::Dir(dir) => match RocksMetaStore::open(dir.join("meta")) {
            Ok(m) => {
                let blocks: Arc<dyn BlockStore> = Arc::new(m.blocks());
                Ok((Arc::new(m), Some(blocks)))
            }
            Err(MetaError::Backend { message, .. }) if message.contains("lock") => {
                Err(VolumeError::InUse(dir.display().to_string()))
            }
            Err(e) => Err(e.into()),
        },
        Source::Postgres(url) => Ok((Arc::new(PgMetaStore::connect_within(url, pg_wait)?), None)),
    }
}

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
            Source::Dir(_) if is_local_store(store_url.unwrap_or("")) => {
                embedded_small_blocks(&chunker)
            }
            _ => 0,
        };
        Self::format_replicated(source, hash, chunker, store_url, &[], small_blocks)
    }

    /// `format`, with blocks also kept in each of `replicas` (block store URLs), and blocks
    /// shorter than `small_blocks` bytes in the volume's PostgreSQL database (0: none).
    pub fn format_replicated(
        source: &Source,
        hash: HashAlgo,
        chunker: Chunker,
        store_url: Option<&str>,
        replicas: &[String],
        small_blocks: u32,
    ) -> Result<Volume, VolumeError> {
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
            let ok = r.starts_with("file:///") || r.starts_with("s3://");
            if !ok || r.contains(',') {
                return Err(VolumeError::BadStoreUrl(r.clone()));
            }
        }
        let store_url = store_url.unwrap_or("");
        let dir = match source {
            Source::Dir(d) => Some(d.as_path()),
            Source::Postgres(_) => None,
        };
        if let Some(d) = dir {
            if Self::is_formatted(d) {
                return Err(VolumeError::AlreadyFormatted(source.display()));
            }
        } else if store_url.is_empty() {
            return Err(VolumeError::StoreRequired);
        }
        let postgres_store = store_url == POSTGRES_STORE && matches!(source, Source::Postgres(_));
        let known = store_url.starts_with("file:///") || store_url.starts_with("s3://");
        if !store_url.is_empty() && !known && !postgres_store {
            return Err(VolumeError::BadStoreUrl(store_url.to_string()));
        }
        if store_url.starts_with("s3://") {
            // a bad S3 URL is refused before anything is written
            let sse_c = std::env::var(crate::store::s3::SSE_C_KEY_ENV).ok();
            crate::store::s3::S3Url::parse(store_url, sse_c.as_deref()).map_err(|m| {
                VolumeError::Invalid {
                    path: store_url.to_string(),
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
        let meta = open_meta(source, DEFAULT_PG_WAIT)?;
        if meta.setting("format_version")?.is_some() {
            return Err(VolumeError::AlreadyFormatted(source.display()));
        }
        meta.put_setting("hash", hash.name())?;
        meta.put_setting("chunker", &chunker.to_string())?;
        meta.put_setting("block_store", store_url)?;
        meta.put_setting("replicas", &replicas.join(","))?;
        meta.put_setting(SMALL_BLOCKS, &small_blocks.to_string())?;
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
                (_, Source::Dir(_)) => EMBEDDED_SMALL_BLOCKS_FORMAT_VERSION,
                (0, Source::Postgres(_)) => FORMAT_VERSION,
                (_, Source::Postgres(_)) => SMALL_BLOCKS_FORMAT_VERSION,
            },
        )?;
        drop(meta);
        Self::open(source)
    }

    pub fn open(source: &Source) -> Result<Volume, VolumeError> {
        Self::open_waiting(source, DEFAULT_PG_WAIT)
    }

    /// `open`, with PostgreSQL operations waiting up to `pg_wait` for an unreachable server.
    pub fn open_waiting(
        source: &Source,
        pg_wait: std::time::Duration,
    ) -> Result<Volume, VolumeError> {
        Self::open_with(source, pg_wait, None)
    }

    /// `open`, with a local block store making its files durable through `disk`.
    pub fn open_on_disk(source: &Source, disk: Arc<dyn Disk>) -> Result<Volume, VolumeError> {
        Self::open_with(source, DEFAULT_PG_WAIT, Some(&disk))
    }

    fn open_with(
        source: &Source,
        pg_wait: std::time::Duration,
        disk: Option<&Arc<dyn Disk>>,
    ) -> Result<Volume, VolumeError> {
        if let Source::Dir(d) = source
            && !Self::is_formatted(d)
        {
            return Err(VolumeError::NotFormatted(source.display()));
        }
        if let Source::Dir(d) = source {
            // made by an earlier version with the umask's modes: others could read blocks
            crate::private::dir(d).map_err(|source| VolumeError::Io {
                context: format!("restricting {} to its owner", d.display()),
                source,
            })?;
        }
        let (meta, engine_blocks) = open_engine(source, pg_wait)?;
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
            && is_local_store(&setting("block_store")?)
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
        };
        let hash: HashAlgo = settings.hash.parse().map_err(|e| invalid(format!("{e}")))?;
        let chunker: Chunker = settings
            .chunker
            .parse()
            .map_err(|e| invalid(format!("{e}")))?;
        // each store is metered on its own: metrics carry the real backend (s3, postgres, local)
        let metered = |s: Arc<dyn BlockStore>| -> Arc<dyn BlockStore> {
            Arc::new(crate::store::metered::Metered::new(s))
        };
        let (primary, capacity_path) = open_store(&settings.block_store, source, disk)?;
        let mut primary = metered(primary);
        if settings.small_blocks > 0 {
            let db = match engine_blocks {
                Some(blocks) => blocks,
                None => open_store(POSTGRES_STORE, source, None)?.0,
            };
            primary = Arc::new(crate::store::tiered::Tiered::new(
                metered(db),
                primary,
                settings.small_blocks,
            ));
        }
        let mut replicas = vec![(settings.block_store.clone(), primary.clone())];
        for url in meta.setting("replicas")?.unwrap_or_default().split(',') {
            if !url.is_empty() {
                replicas.push((url.to_string(), metered(open_store(url, source, None)?.0)));
            }
        }
        let store: Arc<dyn BlockStore> = if replicas.len() > 1 {
            let index = Arc::new(MetaReplicaIndex(meta.clone()));
            let all = replicas.iter().map(|(_, s)| s.clone()).collect();
            Arc::new(crate::store::replicated::Replicated::new(all, index))
        } else {
            primary
        };
        Ok(Volume {
            state_dir: source.state_dir(),
            source: source.clone(),
            meta,
            store,
            replicas,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let s = Source::parse("postgres://graviton:hunter2@db.example:5432/vol");
        assert_eq!(s.display(), "postgres://graviton:***@db.example:5432/vol");
        assert!(!s.state_dir().to_string_lossy().contains("hunter2"));
        assert_eq!(redact("postgres://db/vol"), "postgres://db/vol");
        let q = Source::parse("postgres://u@db/vol?sslmode=disable&password=hunter2&sslpassword=x");
        assert_eq!(
            q.display(),
            "postgres://u@db/vol?sslmode=disable&password=***&sslpassword=***"
        );
        assert!(!q.state_dir().to_string_lossy().contains("hunter2"));
        assert_eq!(redact("postgres://u:pa?ss@db/v"), "postgres://u:***@db/v");
        assert_eq!(Source::parse("/srv/vol"), Source::Dir("/srv/vol".into()));
    }

    #[test]
    fn a_percent_encoded_password_key_is_hidden_too() {
        let url = "postgres://u@db/vol?pass%77ord=hunter2&SSLPASSWORD=x&user=u";
        let shown = redact(url);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("=x"), "{shown}");
        assert!(shown.contains("user=u"), "{shown}");
        assert!(has_password(url));
        assert!(!has_password("postgres://u@db/vol?sslmode=disable"));
        assert!(has_password("postgres://u:p@db/vol"));
    }

    /// An embedded volume from before small blocks went to RocksDB keeps reading its small
    /// block files, and stores new small blocks in RocksDB.
    #[test]
    fn an_earlier_embedded_volume_takes_up_small_blocks_in_rocksdb() {
        let dir = tempfile::tempdir().unwrap();
        let source = Source::Dir(dir.path().join("vol"));
        let chunker: Chunker = "fixed-64k".parse().unwrap();
        let (old, new) = (vec![1u8; 5000], vec![2u8; 6000]);
        let (old_key, new_key) = (
            crate::core::BlockKey::for_data(HashAlgo::Blake3, &old),
            crate::core::BlockKey::for_data(HashAlgo::Blake3, &new),
        );
        {
            let vol = Volume::format_replicated(&source, HashAlgo::Blake3, chunker, None, &[], 0)
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
}
