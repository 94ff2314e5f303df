//! A local RocksDB cache in front of a shared (PostgreSQL) metadata engine: inode attributes,
//! directory entries (whole listings once read), extent maps, xattrs and symlink targets,
//! kept across remounts.
//!
//! Validity. Every committed write transaction, on any mount, names the inodes it wrote (see
//! `pg::shared_volume`); entries are grouped by inode, and a change to an inode drops its group (its
//! attributes, its entries if it is a directory, its extents, xattrs and target).
//! - This mount's own writes drop their groups right after they commit.
//! - Other mounts' writes arrive on the change feed within milliseconds.
//! - While the feed is down the cache is bypassed (a feed whose connection stalls without
//!   failing is found out within seconds and restarted: `pg::shared_volume::feed`); when it
//!   comes back (and after a remount) the change log is replayed from the last time the feed
//!   was known up, minus a one-minute margin, or the cache is emptied if the log no longer
//!   reaches back that far.
//! - A fill is checked against an epoch counter bumped before and after every invalidation's
//!   write: a value read from the engine before an invalidation never outlives it, and one
//!   read while the invalidation was being written is never stored under the generation it
//!   replaced.
//! - A commit's attributes and the drop of what it made stale (its extent map) are one write:
//!   a reader that finds the new attributes never finds the old map.
//!
//! Transactions always read the engine, never the cache: only read-only views
//! ([`MetaRecords::read`](super::MetaRecords::read), `read_inode`) are answered here.
//!
//! Here the layer and the follower of the change feed; `local.rs` the cache's RocksDB
//! database (key layout, record encodings, fills and invalidations); `reader.rs` the read-only
//! views; `txn.rs` transactions, written through once they commit.

mod local;
mod reader;
#[cfg(test)]
mod tests;
mod txn;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rocksdb::{DB, Options, WriteBatch};

use super::mirror::{Mirror, Token};
use super::{Change, Ino, Inode, MetaError, MetaRead, MetaResult, MetaStore, MetaTxn};

use local::*;
use reader::CachedReader;
use txn::*;

/// Applies a change from the feed; runs in the feed's task, so it only touches RocksDB.
/// Catching up (which reads the engine) is handed to the cache's thread.
fn on_change(cache: &LocalCache, slow: &std::sync::Mutex<Sender<Option<Change>>>, change: &Change) {
    match change {
        Change::Inodes(inos) => cache.invalidate(inos),
        Change::All => cache.wipe(),
        Change::Lost => {
            cache.live.store(false, Ordering::SeqCst);
            cache.epoch.fetch_add(1, Ordering::SeqCst);
        }
        Change::Resumed | Change::Alive(_) => {
            let _ = slow.lock().expect("lock").send(Some(change.clone()));
        }
    }
}

/// Catches up after the feed (re)connects, and records when it was last known up; ends when
/// told (None) or when the engine goes away.
fn follow(engine: Weak<dyn MetaStore>, cache: Arc<LocalCache>, feed: Receiver<Option<Change>>) {
    for change in feed {
        let Some(change) = change else { return };
        match change {
            Change::Resumed => {
                for attempt in 0..10 {
                    let Some(engine) = engine.upgrade() else {
                        return;
                    };
                    let Some(shared) = engine.shared() else {
                        return;
                    };
                    match cache.catch_up(shared) {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(attempt, "local metadata cache: catching up: {e}");
                            drop(engine);
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            }
            Change::Alive(now) if cache.live.load(Ordering::SeqCst) => cache.set_synced_at(now),
            _ => {}
        }
    }
}

/// A metadata engine with a local cache in front.
pub struct CachedMeta {
    inner: Arc<dyn MetaStore>,
    cache: Arc<LocalCache>,
    /// The catch-up thread, stopped and joined on drop: RocksDB must not be closing in another
    /// thread while the process exits.
    follower: Option<(Sender<Option<Change>>, std::thread::JoinHandle<()>)>,
}

impl Drop for CachedMeta {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.follower.take() {
            let _ = stop.send(None);
            let _ = thread.join();
        }
    }
}

impl CachedMeta {
    /// The cache's writes skip the log: written out at the end of a session, so that the next
    /// mount finds them.
    fn write_out(&self) {
        if let Err(e) = self.cache.db.flush() {
            tracing::warn!("writing out the local metadata cache: {e}");
        }
    }

    /// Opens (or creates) the cache in `dir` in front of `inner`. The cache serves nothing
    /// until the engine's change feed is up and caught up (after `begin_session`).
    pub fn open(inner: Arc<dyn MetaStore>, dir: &Path) -> MetaResult<CachedMeta> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // within the daemon's memory budget (RocksDB's defaults: up to two 64 MiB memtables
        // and a 32 MiB block cache)
        opts.set_write_buffer_size(CACHE_MEMTABLE_BYTES);
        let blocks = rocksdb::Cache::new_lru_cache(CACHE_BLOCKS_BYTES);
        opts.set_block_based_table_factory(&super::rocks::tables_in(&blocks));
        let db = DB::open(&opts, dir).map_err(cache_err)?;
        // generations continue above every earlier open's
        let floor = db
            .get(GENERATION_FLOOR)
            .map_err(cache_err)?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0);
        db.put(GENERATION_FLOOR, (floor + (1 << 40)).to_be_bytes())
            .map_err(cache_err)?;
        sweep_stale_entries(&db)?;
        let cache = Arc::new(LocalCache {
            db,
            epoch: AtomicU64::new(floor),
            live: AtomicBool::new(false),
            writing: std::sync::Mutex::new(()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            mirror: Mirror::default(),
            kernel_behind: Default::default(),
            allocated: Default::default(),
            #[cfg(test)]
            pause: Default::default(),
        });
        // a cache left by another volume behind the same URL is emptied
        let volume = inner.setting("volume_id")?.unwrap_or_default();
        if cache.db.get(VOLUME).ok().flatten().as_deref() != Some(volume.as_bytes()) {
            cache.wipe();
            cache.set_synced_at(0);
            cache.db.put(VOLUME, volume.as_bytes()).map_err(cache_err)?;
        }
        let mut follower = None;
        if let Some(shared) = inner.shared() {
            let (slow, feed) = std::sync::mpsc::channel();
            let stop = slow.clone();
            let (c, slow) = (cache.clone(), std::sync::Mutex::new(slow));
            shared.subscribe(Arc::new(move |change: &Change| {
                on_change(&c, &slow, change)
            }));
            let (engine, c) = (Arc::downgrade(&inner), cache.clone());
            let thread = std::thread::Builder::new()
                .name("graviton-metacache".into())
                .spawn(move || follow(engine, c, feed))
                .map_err(|e| MetaError::backend("rocksdb cache", e))?;
            follower = Some((stop, thread));
        }
        Ok(CachedMeta {
            inner,
            cache,
            follower,
        })
    }

    /// (hits, misses) since the cache was opened.
    pub fn hit_counts(&self) -> (u64, u64) {
        (
            self.cache.hits.load(Ordering::Relaxed),
            self.cache.misses.load(Ordering::Relaxed),
        )
    }

    /// Whether the cache is serving (the change feed is up and caught up).
    pub fn is_live(&self) -> bool {
        self.cache.live.load(Ordering::SeqCst)
    }

    fn cached_inode(&self, ino: Ino) -> MetaResult<Option<Inode>> {
        let cache = &self.cache;
        if !cache.live.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if let Some(n) = cache.mirror.inode(ino) {
            cache.count(true);
            return Ok(Some(n));
        }
        let token = cache.mirror.token();
        match cache.get(&key(INODE, ino)) {
            Some(v) => {
                let n: Inode = postcard::from_bytes(&v).map_err(|_| corrupt("inode"))?;
                cache.mirror.put_inode(token, &n);
                Ok(Some(n))
            }
            None => Ok(None),
        }
    }

    fn fill_inode(&self, epoch: u64, token: Token, inode: &Inode) {
        let Ok(bytes) = postcard::to_stdvec(inode) else {
            return;
        };
        let mut batch = WriteBatch::default();
        batch.put(key(INODE, inode.ino), bytes);
        self.cache.fill(epoch, inode.ino, batch);
        self.cache.mirror.put_inode(token, inode);
    }
}

impl super::MetaLayer for CachedMeta {
    fn inner(&self) -> &dyn MetaStore {
        self.inner.as_ref()
    }

    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>> {
        Ok(Box::new(CachedTxn {
            inner: Some(self.inner.begin()?),
            cache: &self.cache,
            written: Written::default(),
        }))
    }

    fn read(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        Ok(Box::new(CachedReader {
            meta: self,
            fallback: None,
        }))
    }

    fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>> {
        if let Some(n) = self.cached_inode(ino)? {
            return Ok(Some(n));
        }
        let (epoch, token) = (
            self.cache.epoch.load(Ordering::SeqCst),
            self.cache.mirror.token(),
        );
        let n = self.inner.read_inode(ino)?;
        if let Some(n) = &n {
            self.fill_inode(epoch, token, n);
        }
        Ok(n)
    }

    fn allocate_ino(&self) -> MetaResult<Ino> {
        let ino = self.inner.allocate_ino()?;
        self.cache.allocated(ino);
        Ok(ino)
    }

    fn end_session(&self) {
        self.inner.end_session();
        self.write_out();
    }

    fn end_session_unfinished(&self) {
        self.inner.end_session_unfinished();
        self.write_out();
    }

    /// True unless the cached inode is the current one: only then may the kernel keep the
    /// pages it cached (the cached copy was invalidated with them; one a commit found behind
    /// is not vouched for, however it was filled since). Otherwise everything cached of the
    /// inode goes: with no current copy of the attributes to vouch for it, its extent map
    /// may be stale too.
    fn revalidate(&self, ino: Ino) -> MetaResult<bool> {
        let behind = self.cache.kernel_behind.lock().expect("lock").remove(&ino);
        let cached = self.cached_inode(ino)?;
        let fresh = self.inner.read_inode(ino)?;
        if !behind && cached.is_some() && cached == fresh {
            return Ok(false);
        }
        self.cache.invalidate(&[ino]);
        Ok(true)
    }
}
