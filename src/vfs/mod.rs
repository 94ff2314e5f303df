//! The filesystem core: POSIX semantics over the metadata and block store ports, with no FUSE
//! types. The FUSE adapter (and the tests) call these methods; each namespace operation is one
//! metadata transaction, run again when it loses a race with another.

pub mod access;
mod append;
mod cache;
mod clone;
mod coalesce;
mod dirty;
mod error;
mod fence;
mod file;
mod fill;
mod flush;
mod lock;
mod namespace;
mod pack;
pub mod quota;
mod read;
pub mod tree;
pub use read::ReadBytes;
mod xattr;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::domain::{Chunker, HashAlgo};
use crate::meta::{MetaError, MetaStore, MetaTxn};
use crate::store::BlockStore;

pub use coalesce::CoalesceReport;
pub use dirty::DirtyData;
pub use error::{FsError, FsResult};
pub use file::{FallocateMode, OpenFlags, Whence};
pub use fill::KernelPages;
pub use namespace::{Caller, DirListing, FsStats, RenameFlags, SetAttr, TimeSet};
pub use xattr::XattrSet;

/// The records the core's API speaks in, defined with the metadata port.
pub use crate::meta::{Change, FileKind, Ino, Inode, LockKind, LockRequest, TO_EOF, Timestamp};

use cache::BlockCache;
use file::{Handle, OpenFile};

/// Longest file name, as on ext4.
pub const NAME_MAX: usize = 255;
/// Most links one inode may have (ext4's limit).
pub const LINK_MAX: u32 = 65_000;
/// Longest symlink target.
pub const PATH_MAX: usize = 4095;
/// Largest file size we accept (as ext4 with 4 KiB blocks: 16 TiB).
pub const MAX_FILE_SIZE: u64 = 16 << 40;

/// Tunables of the core; everything else comes from the volume settings.
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub hash: HashAlgo,
    pub chunker: Chunker,
    /// Dirty bytes buffered across all open files before writers must flush (backpressure).
    pub dirty_limit: u64,
    /// A file with more dirty bytes than this flushes its completed chunks while it is written.
    pub file_flush_threshold: u64,
    /// In-memory block cache size.
    pub block_cache_bytes: u64,
    /// Largest read-ahead window.
    pub readahead_max: u64,
    /// Random reads of a file no larger than this fetch the whole file in the background
    /// (0: never). Mounts on a remote store set it: there, a miss costs a round trip per
    /// block, and a file read at random is usually read more.
    pub whole_file_prefetch_max: u64,
    /// A random read of a block not in memory fetches only the part it needs, the first time
    /// (mounts whose blocks are read from S3 set it; see `BlockCache::take_part`).
    pub ranged_reads: bool,
    /// Rewrite fragmented extent maps in the background.
    pub coalesce: bool,
    /// A file with more extents than this (and more than twice its ideal count) is fragmented.
    pub coalesce_max_extents: u64,
    /// A file whose average extent is smaller than this is fragmented.
    pub coalesce_min_avg_extent: u64,
    /// Least time between two rewrites of one file.
    pub coalesce_interval: Duration,
    /// When an open for reading updates the file's access time (`Fs::touch_atime`).
    pub atime: Atime,
    /// A close or flush with at most this many bytes to commit commits in the caller's thread
    /// (`Fs::commit_may_wait`); 0: never. Mounts whose metadata and blocks are both on this
    /// machine set it: there a small commit costs less than the hop to another thread.
    pub quick_commit_max: u64,
    /// A read-only mount (`-o ro`): the kernel refuses writes itself, but passes requests
    /// such as a clone's ioctl on.
    pub read_only: bool,
}

/// Access-time updates, as the mount options of the same names ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Atime {
    /// Never (noatime, and read-only mounts).
    Never,
    /// When the access time is not after the last modification or change, or is a day old
    /// (relatime, Linux's default).
    Relative,
    /// At every open for reading (strictatime).
    Always,
}

impl FsConfig {
    pub fn new(hash: HashAlgo, chunker: Chunker) -> FsConfig {
        FsConfig {
            hash,
            chunker,
            dirty_limit: 256 << 20,
            file_flush_threshold: 8 << 20,
            block_cache_bytes: 256 << 20,
            readahead_max: 32 << 20,
            whole_file_prefetch_max: 0,
            ranged_reads: false,
            coalesce: true,
            coalesce_max_extents: 1024,
            coalesce_min_avg_extent: 256 << 10,
            coalesce_interval: Duration::from_secs(1),
            atime: Atime::Relative,
            quick_commit_max: 0,
            read_only: false,
        }
    }
}

/// Who is asking: owner of new inodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
}

impl Ctx {
    pub const ROOT: Ctx = Ctx { uid: 0, gid: 0 };
}

/// State shared with background tasks (read-ahead, coalescing).
pub(crate) struct Core {
    pub meta: Arc<dyn MetaStore>,
    pub store: Arc<dyn BlockStore>,
    pub cfg: FsConfig,
    pub cache: BlockCache,
    /// Dirty bytes across all open files.
    pub dirty_bytes: AtomicU64,
    pub coalesce_state: Mutex<HashMap<Ino, coalesce::Slot>>,
    /// Set by `shutdown`: background rewrites that have not started are skipped.
    pub closing: std::sync::atomic::AtomicBool,
    /// Inodes with at least one open handle. Held only for a lookup or an update: whether an
    /// inode is open and what an unlink does about it are kept in step by its gate.
    pub files: Mutex<HashMap<Ino, Arc<OpenFile>>>,
    /// Directories open on this mount (opendir), with their number of handles.
    pub open_dirs: Mutex<HashMap<Ino, u32>>,
    /// Per-inode gates (striped): an open registering the inode, an unlink or rename deciding
    /// whether to delete or keep it as an orphan, and a last close deleting it hold its gate,
    /// so a slow metadata transaction holds up operations on its own inode only.
    pub gates: Vec<Mutex<()>>,
    /// Where background work (flushes, read-ahead, coalescing) runs.
    pub runtime: tokio::runtime::Handle,
    /// Hands fetched blocks' other bytes to the kernel's page cache, once a mount enables it.
    pub fill: fill::PageFill,
    /// The kernel's caches of this mount, once the FUSE adapter has handed them over.
    pub kernel: std::sync::OnceLock<Arc<dyn KernelPages>>,
    /// Where removed inodes go, while the volume's trash is on (`tree::trash`); read at mount
    /// and again by `Fs::refresh_trash`.
    pub trash: RwLock<Option<crate::vfs::tree::trash::Bin>>,
}

/// Stripes of `Core::gates`.
const GATES: usize = 64;

impl Core {
    /// The gate of `ino` (see `Core::gates`).
    pub(crate) fn gate(&self, ino: Ino) -> std::sync::MutexGuard<'_, ()> {
        self.gates[(ino % GATES as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether directory `ino` is open (opendir) on this mount.
    pub(crate) fn dir_is_open(&self, ino: Ino) -> bool {
        self.open_dirs.lock().expect("lock").contains_key(&ino)
    }

    /// Drops the kernel's cached attributes and pages of `ino`. Never while holding a file's
    /// state lock: the kernel may wait on pages that a read this daemon has yet to answer
    /// holds.
    pub(crate) fn kernel_forget(&self, ino: Ino) {
        if let Some(k) = self.kernel.get() {
            let _ = k.forget(ino, 0, 0);
        }
    }

    /// The open file of `ino`, if it is open on this mount.
    pub(crate) fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.files.lock().expect("lock").get(&ino).cloned()
    }

    /// Runs `f` as one metadata transaction (see [`run_txn`]).
    pub fn txn<T>(&self, f: impl FnMut(&mut dyn MetaTxn) -> FsResult<T>) -> FsResult<T> {
        run_txn(self.meta.as_ref(), f)
    }

    pub fn inode(&self, ino: Ino) -> FsResult<Inode> {
        self.meta.read_inode(ino)?.ok_or(FsError::NotFound)
    }

    /// Whether the volume has quotas (one read of their list).
    pub fn has_quotas(&self) -> FsResult<bool> {
        Ok(!quota::map(self.meta.read()?.as_mut())?.is_empty())
    }

    /// Room for writes of `ino` up to `end` (`quota::reserve`); `u64::MAX` when no quota
    /// applies.
    pub fn room_for(&self, ino: Ino, end: u64) -> FsResult<u64> {
        match self.has_quotas()? {
            false => Ok(u64::MAX),
            true => quota::reserve(self.meta.as_ref(), ino, end),
        }
    }

    /// No handle of this mount may write `ino`, and it has no uncommitted bytes.
    pub fn nothing_pending(&self, ino: Ino) -> bool {
        self.open_file(ino).is_none_or(|file| {
            let st = file.lock();
            st.writers == 0 && st.dirty.is_empty() && st.inflight.is_none()
        })
    }
}

/// Runs `f` as one metadata transaction, again from the start while it loses races; the
/// quotas are charged with what it changed before it commits (`quota::Counted`).
/// `f` must only touch the transaction and its own locals: it may run several times. A
/// transaction that relied on a shared-volume session that has expired (the mount held
/// locks, or it keeps a file unlinked) fails (EIO) and is not run again: what the caller
/// did may have relied on a lock that is gone (`vfs::fence`).
pub fn run_txn<T>(
    meta: &dyn MetaStore,
    mut f: impl FnMut(&mut dyn MetaTxn) -> FsResult<T>,
) -> FsResult<T> {
    const MAX_ATTEMPTS: u32 = 500;
    for attempt in 0..MAX_ATTEMPTS {
        let mut tx = Box::new(quota::Counted::new(meta.begin()?));
        match f(tx.as_mut()).and_then(|v| tx.settle().map(|()| v)) {
            Ok(v) => match tx.commit() {
                Ok(()) => return Ok(v),
                Err(MetaError::Conflict) => {}
                Err(e) => return Err(e.into()),
            },
            Err(FsError::Meta(MetaError::Conflict)) => {}
            Err(e) => return Err(e),
        }
        // a conflict: run again
        metrics::counter!(crate::metrics::META_RETRIES).increment(1);
        if attempt > 2 {
            // back off with jitter so contending writers stop colliding
            let micros = 50u64 << attempt.min(8);
            std::thread::sleep(Duration::from_micros(rand::random::<u64>() % micros + 1));
        }
    }
    tracing::error!("metadata transaction still conflicting after {MAX_ATTEMPTS} attempts");
    Err(FsError::Meta(MetaError::Conflict))
}

/// Refuses any change to an inode of a snapshot (EROFS).
pub(crate) fn changeable(ino: Ino) -> FsResult<()> {
    match crate::meta::is_frozen(ino) {
        true => Err(FsError::Frozen),
        false => Ok(()),
    }
}

/// A mounted volume's filesystem core.
pub struct Fs {
    core: Arc<Core>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    runtime: tokio::runtime::Runtime,
    /// Set when the mount is going away: writes are refused so nothing is acknowledged after
    /// the final commit.
    frozen: std::sync::atomic::AtomicBool,
}

impl Fs {
    /// Starts the core over a formatted volume's ports and reclaims inodes that were unlinked
    /// while open when the volume was last used.
    pub fn new(
        meta: Arc<dyn MetaStore>,
        store: Arc<dyn BlockStore>,
        cfg: FsConfig,
    ) -> FsResult<Fs> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("graviton-bg")
            .enable_all()
            .build()
            .map_err(|e| {
                FsError::Store(crate::store::StoreError::io(
                    "runtime",
                    "starting background threads",
                    e,
                ))
            })?;
        let core = Arc::new(Core {
            cache: BlockCache::new(cfg.block_cache_bytes),
            meta,
            store,
            cfg,
            dirty_bytes: AtomicU64::new(0),
            coalesce_state: Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            files: Mutex::new(HashMap::new()),
            open_dirs: Mutex::new(HashMap::new()),
            gates: (0..GATES).map(|_| Mutex::new(())).collect(),
            runtime: runtime.handle().clone(),
            fill: fill::PageFill::new(),
            kernel: std::sync::OnceLock::new(),
            trash: RwLock::new(None),
        });
        let fs = Fs {
            core,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            runtime,
            frozen: std::sync::atomic::AtomicBool::new(false),
        };
        fs.ensure_root()?;
        fs.reclaim_orphans()?;
        fs.refresh_trash()?;
        // copies and removals cut short: on a volume only this mount opens, none is running
        let idle = match fs.is_shared() {
            true => crate::vfs::tree::detached::ABANDONED_AFTER,
            false => Duration::ZERO,
        };
        if let Err(e) = crate::vfs::tree::detached::sweep(fs.core.meta.as_ref(), idle) {
            tracing::warn!("detached trees left by a copy or removal cut short stay: {e}");
        }
        Ok(fs)
    }

    /// Whether this mount has `ino` open (a file or a directory).
    pub fn in_use(&self, ino: Ino) -> bool {
        self.core.open_file(ino).is_some() || self.core.dir_is_open(ino)
    }

    /// Reads the volume's trash settings again (`graviton settings` may have changed them).
    pub fn refresh_trash(&self) -> FsResult<()> {
        let bin = crate::vfs::tree::trash::bin(self.core.meta.as_ref())?;
        *self.core.trash.write().expect("lock") = bin;
        Ok(())
    }

    /// The kernel's caches of this mount, for changes the kernel cannot know of (appends
    /// another mount's moved: `vfs::append`).
    pub fn set_kernel_pages(&self, pages: Arc<dyn KernelPages>) {
        let _ = self.core.kernel.set(pages);
    }

    /// From now on, blocks fetched for reads also fill the kernel's page cache (see
    /// `vfs::fill`).
    pub fn enable_page_fill(&self, pages: Box<dyn KernelPages>) -> std::io::Result<()> {
        fill::PageFill::start(&self.core, pages)
    }

    pub fn config(&self) -> &FsConfig {
        &self.core.cfg
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.core.meta
    }

    /// Whether other mounts share the volume (locks then hold across mounts, and their
    /// changes arrive through [`Fs::follow_changes`]).
    pub fn is_shared(&self) -> bool {
        self.core.meta.shared().is_some()
    }

    /// Close-to-open, at an open: true when what the kernel cached of `ino` may be stale
    /// (another mount changed it), so the open drops it.
    pub fn revalidate(&self, ino: Ino) -> FsResult<bool> {
        let stale = self.core.meta.revalidate(ino)?;
        if stale {
            // a page fill read before this point must not put the old pages back after the
            // open drops them (`vfs::fill`)
            self.core.fill.remote_change();
        }
        Ok(stale)
    }

    /// Calls `sink` with every change other mounts make (see `SharedVolume::subscribe`);
    /// false on a volume nothing else mounts.
    pub fn follow_changes(&self, sink: crate::meta::ChangeSink) -> bool {
        match self.core.meta.shared() {
            Some(shared) => {
                shared.subscribe(sink);
                true
            }
            None => false,
        }
    }

    pub fn store(&self) -> &Arc<dyn BlockStore> {
        &self.core.store
    }

    /// A handle on the background runtime (the FUSE adapter runs slow operations there).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Dirty bytes buffered across all open files.
    pub fn dirty_bytes(&self) -> u64 {
        self.core.dirty_bytes.load(Ordering::Relaxed)
    }

    fn reclaim_orphans(&self) -> FsResult<()> {
        for ino in self.core.meta.orphans()? {
            tracing::info!(ino, "reclaiming a file that was unlinked while open");
            self.core
                .txn(|tx| tx.delete_inode(ino).map_err(Into::into))?;
        }
        Ok(())
    }

    /// Refuses writes from now on (EROFS), ahead of a final `shutdown`.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    /// The files open on this mount.
    pub(crate) fn open_files(&self) -> Vec<Ino> {
        self.core
            .files
            .lock()
            .expect("lock")
            .keys()
            .copied()
            .collect()
    }

    /// Commits every open file's dirty data and makes all of it durable; background work is
    /// waited for. Called before unmount.
    pub fn shutdown(&self) -> FsResult<()> {
        self.core.closing.store(true, Ordering::Relaxed);
        for ino in self.open_files() {
            self.flush_inode(ino, true)?;
        }
        self.core.store.sync()?;
        self.core.meta.sync()?;
        Ok(())
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("flushing at shutdown failed: {e}");
        }
    }
}
