//! The composition root: the one place that decides which layers a volume's metadata and
//! blocks pass through, for format, mount and the maintenance commands alike.
//!
//! Opened anywhere (`Volume::open`):
//! ```text
//! metadata: RocksDB <dir>/meta | PostgreSQL <url>
//! blocks:   [replicated →] [tiered: small blocks in the metadata database, the rest in]
//!           [frames →] [retrying →] metered → files | S3 | PostgreSQL
//! ```
//! Mounted (`mount_layers`), on top of that:
//! ```text
//! metadata: [write-behind journal →] [metadata cache →] …   (PostgreSQL volumes)
//! blocks:   [write-back staging →] [disk cache →] …
//! ```
//! Each step records itself in the volume's [`StackDescription`], which the mount logs and
//! `graviton status` prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::source::redact;
use super::{Source, StoreUrl, Volume, VolumeError};
use crate::domain::BlockKey;
use crate::domain::frames::FrameCodec;
use crate::meta::{MetaError, MetaStore, PgMetaStore, RocksMetaStore, SessionInfo};
use crate::retry::Backoff;
use crate::store::framed::Framed;
use crate::store::local::Disk;
use crate::store::replicated::{ReplicaIndex, ReplicaStatus};
use crate::store::retrying::Retrying;
use crate::store::writeback::WriteBack;
use crate::store::{BlockStore, LocalBlockStore, PgBlockStore};

/// The layers of a volume's two stacks, outermost first, as one line each.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDescription {
    pub metadata: String,
    pub blocks: String,
}

/// `layer` on top of `below`.
fn over(layer: impl std::fmt::Display, below: &str) -> String {
    format!("{layer} → {below}")
}

/// The metadata engine of `source`, with the block store an embedded volume keeps in it.
pub(super) struct Engine {
    pub meta: Arc<dyn MetaStore>,
    pub blocks: Option<Arc<dyn BlockStore>>,
    pub description: String,
}

pub(super) fn engine(source: &Source, pg_wait: Duration) -> Result<Engine, VolumeError> {
    match source {
        Source::Dir(dir) => match RocksMetaStore::open(dir.join("meta")) {
            Ok(m) => Ok(Engine {
                blocks: Some(Arc::new(m.blocks())),
                meta: Arc::new(m),
                description: format!("RocksDB {}", dir.join("meta").display()),
            }),
            Err(MetaError::Backend { message, .. }) if message.contains("lock") => {
                Err(VolumeError::InUse(dir.display().to_string()))
            }
            Err(e) => Err(e.into()),
        },
        Source::Postgres(url) => Ok(Engine {
            meta: Arc::new(PgMetaStore::connect_within(url, pg_wait)?),
            blocks: None,
            description: format!("PostgreSQL {}", redact(url)),
        }),
    }
}

/// One block store adapter, metered: what it is, where its capacity is measured.
struct Adapter {
    store: Arc<dyn BlockStore>,
    description: String,
    capacity_path: PathBuf,
}

/// How long an S3 request is retried while the server is away or throttling.
const S3_PATIENCE: Duration = Duration::from_secs(60);

/// Opens the adapter a URL names, metered, and a remote one under the retry layer. A local
/// store makes its files durable through `disk` when given (tests inject faults there).
/// `pg_wait`: how long PostgreSQL is waited for.
fn adapter(
    url: &StoreUrl,
    source: &Source,
    disk: Option<&Arc<dyn Disk>>,
    pg_wait: Duration,
    frames: Option<&Arc<FrameCodec>>,
) -> Result<Adapter, VolumeError> {
    url.fits(source)?;
    let a = match (url, source) {
        (StoreUrl::Postgres, Source::Postgres(db)) => {
            let store = Arc::new(PgBlockStore::connect(db)?);
            let a = metered(store, "PostgreSQL", source.state_dir());
            retrying(a, Backoff::POSTGRES, pg_wait)
        }
        (StoreUrl::S3(u), _) => {
            let store = Arc::new(crate::store::S3BlockStore::open(u)?);
            let a = metered(store, &format!("S3 {}", redact(u)), source.state_dir());
            retrying(a, Backoff::S3, S3_PATIENCE)
        }
        (StoreUrl::File(_) | StoreUrl::VolumeDir, _) => {
            let root = match (url, source) {
                (StoreUrl::File(p), _) => p.clone(),
                (_, Source::Dir(d)) => d.join("blocks"),
                _ => unreachable!("checked by fits"),
            };
            let mut store = match disk {
                Some(disk) => LocalBlockStore::open_on(&root, disk.clone())?,
                None => LocalBlockStore::open(&root)?,
            };
            if let Some(codec) = frames {
                let codec = codec.clone();
                store = store.with_stored_check(Arc::new(move |key, stored| {
                    Framed::holds(&codec, key, stored)
                }));
            }
            let description = format!("files {}", root.display());
            metered(Arc::new(store), &description, root)
        }
        (StoreUrl::Postgres, Source::Dir(_)) => unreachable!("checked by fits"),
    };
    Ok(framed(a, frames))
}

/// The adapter storing frames, on a volume that compresses.
fn framed(a: Adapter, frames: Option<&Arc<FrameCodec>>) -> Adapter {
    match frames {
        None => a,
        Some(codec) => Adapter {
            store: Arc::new(Framed::new(a.store, codec.clone())),
            description: over(format!("frames ({})", codec.describe()), &a.description),
            capacity_path: a.capacity_path,
        },
    }
}

/// A remote adapter whose transient failures are retried (the meter below counts each
/// attempt).
fn retrying(a: Adapter, backoff: Backoff, patience: Duration) -> Adapter {
    Adapter {
        store: Arc::new(Retrying::new(a.store, backoff, patience)),
        description: over(
            format!("retrying ({} s)", patience.as_secs()),
            &a.description,
        ),
        capacity_path: a.capacity_path,
    }
}

/// Each adapter is metered on its own: metrics carry the real backend (s3, postgres, local).
fn metered(store: Arc<dyn BlockStore>, description: &str, capacity_path: PathBuf) -> Adapter {
    Adapter {
        store: Arc::new(crate::store::metered::Metered::new(store)),
        description: over("metered", description),
        capacity_path,
    }
}

/// The block stack every opening of a volume has.
pub(super) struct Blocks {
    pub store: Arc<dyn BlockStore>,
    /// Each block store with its URL: the primary first, then the replicas.
    pub replicas: Vec<(String, Arc<dyn BlockStore>)>,
    pub capacity_path: PathBuf,
    pub description: String,
}

/// The primary store (with blocks under `small_blocks` bytes in the metadata database, when
/// set), then a copy of every block in each replica. Each input the stack depends on is named.
#[allow(clippy::too_many_arguments)]
pub(super) fn blocks(
    source: &Source,
    url: &StoreUrl,
    small_blocks: u32,
    engine_blocks: Option<Arc<dyn BlockStore>>,
    replica_urls: &[String],
    meta: &Arc<dyn MetaStore>,
    disk: Option<&Arc<dyn Disk>>,
    pg_wait: Duration,
    frames: Option<&Arc<FrameCodec>>,
) -> Result<Blocks, VolumeError> {
    let main = adapter(url, source, disk, pg_wait, frames)?;
    let (mut primary, mut description) = (main.store, main.description);
    if small_blocks > 0 {
        let db = match engine_blocks {
            Some(blocks) => framed(metered(blocks, "RocksDB", PathBuf::new()), frames),
            None => adapter(&StoreUrl::Postgres, source, None, pg_wait, frames)?,
        };
        primary = Arc::new(crate::store::tiered::Tiered::new(
            db.store,
            primary,
            small_blocks,
        ));
        description = format!(
            "tiered [under {small_blocks} bytes: {} | the rest: {description}]",
            db.description
        );
    }
    let mut replicas = vec![(url.recorded(), primary.clone())];
    let mut described = vec![description.clone()];
    for r in replica_urls.iter().filter(|r| !r.is_empty()) {
        let a = adapter(&StoreUrl::parse_replica(r)?, source, None, pg_wait, frames)?;
        replicas.push((r.clone(), a.store));
        described.push(a.description);
    }
    let store: Arc<dyn BlockStore> = if replicas.len() > 1 {
        let index = Arc::new(MetaReplicaIndex(meta.clone()));
        let all = replicas.iter().map(|(_, s)| s.clone()).collect();
        description = format!("replicated [{}]", described.join(" | "));
        Arc::new(crate::store::replicated::Replicated::new(all, index))
    } else {
        primary
    };
    Ok(Blocks {
        store,
        replicas,
        capacity_path: main.capacity_path,
        description,
    })
}

/// The ReplicaIndex: what is known to be wrong with which replica's copy of a block, in the
/// volume's key-value store under `replica/<n>/<block key>` (an entry is a problem to repair;
/// `graviton scrub` removes it once the copy is good).
pub struct MetaReplicaIndex(pub Arc<dyn MetaStore>);

impl MetaReplicaIndex {
    pub fn key(replica: usize, block: &BlockKey) -> String {
        format!("replica/{replica}/{block}")
    }
}

impl ReplicaIndex for MetaReplicaIndex {
    fn record(&self, replica: usize, key: &BlockKey, status: ReplicaStatus) {
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

/// What a mount adds to the stacks it opened.
pub struct MountLayers {
    /// A RocksDB cache of a PostgreSQL volume's metadata in the mount's state folder.
    pub meta_cache: bool,
    /// An on-disk block cache: its folder and budget in bytes.
    pub disk_cache: Option<(PathBuf, u64)>,
    /// Commits and blocks go to local journals first and on to the volume in the background.
    pub writeback: bool,
    /// The mount's session, begun once the metadata stack is there.
    pub session: SessionInfo,
}

/// Puts a mount's layers on `vol`'s stacks and begins its session. `mountpoint` places a
/// PostgreSQL volume's per-mount state folder.
pub fn mount_layers(
    vol: &mut Volume,
    mountpoint: &Path,
    layers: &MountLayers,
) -> anyhow::Result<()> {
    let source = vol.source.clone();
    if let Source::Postgres(_) = source {
        vol.state_dir = source.mount_state_dir(mountpoint);
        crate::state::prepare(&vol.state_dir)?;
        if layers.meta_cache {
            let dir = vol.state_dir.join("meta-cache");
            vol.meta = Arc::new(
                crate::meta::cached::CachedMeta::open(vol.meta.clone(), &dir)
                    .with_context(|| format!("opening the metadata cache in {}", dir.display()))?,
            );
            vol.stack.metadata = over(
                format!("metadata cache {}", dir.display()),
                &vol.stack.metadata,
            );
        }
    }
    if let Some((dir, budget)) = &layers.disk_cache {
        vol.store = Arc::new(
            crate::store::disk_cache::DiskCache::open(
                vol.store.clone(),
                dir,
                *budget,
                vol.at_rest.clone(),
            )
            .with_context(|| format!("opening the block cache in {}", dir.display()))?,
        );
        let layer = format!("disk cache {} ({} MiB)", dir.display(), budget >> 20);
        vol.stack.blocks = over(layer, &vol.stack.blocks);
    }
    vol.meta.begin_session(&layers.session)?;
    let opened = upload_staged(vol, layers.writeback).and_then(|()| match vol.meta.shared() {
        Some(_) => write_behind(vol, &layers.session.host, layers.writeback),
        None => Ok(()),
    });
    if let Err(e) = opened {
        vol.meta.end_session();
        return Err(e);
    }
    if layers.writeback {
        write_back(vol)?;
    }
    Ok(())
}

/// How long a mount waits for the first (or next) of the blocks a write-back mount left staged
/// to be uploaded before it gives up.
const STAGED_UPLOAD_STALL: Duration = Duration::from_secs(60);

/// A mount without `-o writeback` first uploads what a write-back mount on this machine left in
/// the volume's staging folder, before any journal it left names those blocks in the engine:
/// the files would read as EIO until they are. Refused if the folder's lock is held (a live
/// write-back mount) or uploads stop succeeding.
fn upload_staged(vol: &Volume, writeback: bool) -> anyhow::Result<()> {
    if writeback || vol.store_url.is_local() {
        return Ok(());
    }
    let dir = staging_dir(vol);
    let uploaded = WriteBack::upload_left(
        vol.store.clone(),
        &dir,
        unmark(vol),
        STAGED_UPLOAD_STALL,
        vol.at_rest.clone(),
    )
            .context(
                "not mounting until they are uploaded (-o writeback mounts with them served from this machine meanwhile)",
            )?;
    if uploaded > 0 {
        tracing::info!(
            blocks = uploaded,
            "uploaded the blocks an earlier -o writeback mount left in {}",
            dir.display()
        );
    }
    Ok(())
}

fn staging_dir(vol: &Volume) -> PathBuf {
    vol.source.state_dir().join("writeback")
}

/// Clears the gc mark of a block found already stored when it is uploaded (see `OnDuplicate`).
fn unmark(vol: &Volume) -> crate::store::writeback::OnDuplicate {
    let meta = vol.meta.clone();
    Box::new(move |key: &BlockKey| {
        if let Err(e) = crate::meta::clear_gc_mark(meta.as_ref(), key) {
            tracing::warn!(block = %key, "clearing a gc mark: {e}");
        }
    })
}

/// On a shared (PostgreSQL) volume: with `-o writeback`, metadata commits go to a journal in
/// the volume's state folder first (`meta::write_behind`). Without it, a journal an earlier
/// write-back mount on this host left is sent on first; another host's claim is refused.
fn write_behind(vol: &mut Volume, host: &str, writeback: bool) -> anyhow::Result<()> {
    use crate::meta::write_behind::{CLAIM_KEY, WriteBehind, check_unclaimed};
    let dir = vol.source.state_dir().join("meta-journal");
    let me = format!("{host}:{}", dir.display());
    check_unclaimed(vol.meta.as_ref(), Some(&me))?;
    let claimed = vol.meta.kv_get(CLAIM_KEY)?.is_some();
    if !writeback && !claimed {
        return Ok(());
    }
    let wb = WriteBehind::open(vol.meta.clone(), &dir, &me)?;
    if writeback {
        vol.meta = Arc::new(wb);
        let layer = format!("write-behind journal {}", dir.display());
        vol.stack.metadata = over(layer, &vol.stack.metadata);
    } else if !wb.finish() {
        anyhow::bail!(
            "the metadata changes an earlier -o writeback mount left in {} could not be sent",
            dir.display()
        );
    }
    Ok(())
}

/// The volume's store behind a local staging folder (`-o writeback`), kept per volume (not per
/// mountpoint) so that the next mount, wherever it is, uploads what is left.
fn write_back(vol: &mut Volume) -> anyhow::Result<()> {
    if vol.store_url.is_local() {
        anyhow::bail!(
            "writeback applies to remote block stores (S3, PostgreSQL); this volume's blocks are local"
        );
    }
    let dir = staging_dir(vol);
    let staged = WriteBack::open(vol.store.clone(), &dir, unmark(vol), vol.at_rest.clone())
        .with_context(|| format!("opening the write-back folder {}", dir.display()))?;
    vol.store = Arc::new(staged);
    vol.stack.blocks = over(
        format!("write-back staging {}", dir.display()),
        &vol.stack.blocks,
    );
    Ok(())
}
