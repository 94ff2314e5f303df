//! A local RocksDB cache in front of a shared (PostgreSQL) metadata engine: inode attributes,
//! directory entries (whole listings once read), extent maps, xattrs and symlink targets,
//! kept across remounts.
//!
//! Validity. Every committed write transaction, on any mount, names the inodes it wrote (see
//! `pg_shared_volume`); entries are grouped by inode, and a change to an inode drops its group (its
//! attributes, its entries if it is a directory, its extents, xattrs and target).
//! - This mount's own writes drop their groups right after they commit.
//! - Other mounts' writes arrive on the change feed within milliseconds.
//! - While the feed is down the cache is bypassed; when it comes back (and after a remount)
//!   the change log is replayed from the last time the feed was known up, minus a one-minute
//!   margin, or the cache is emptied if the log no longer reaches back that far.
//! - A fill is checked against an epoch counter bumped before and after every invalidation's
//!   write: a value read from the engine before an invalidation never outlives it, and one
//!   read while the invalidation was being written is never stored under the generation it
//!   replaced.
//! - A commit's attributes and the drop of what it made stale (its extent map) are one write:
//!   a reader that finds the new attributes never finds the old map.
//!
//! Transactions always read the engine, never the cache: only read-only views
//! ([`MetaStore::read`], [`MetaStore::read_inode`]) are answered here.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch};

use super::mirror::{EntryChange, Mirror, Token};
use super::types::FIRST_COOKIE;
use super::{
    Change, DirEntry, FileKind, Ino, Inode, MetaError, MetaRead, MetaRecords, MetaResult,
    MetaStore, MetaTxn, SharedVolume,
};
use crate::domain::extent::Splice;
use crate::domain::key::KEY_BYTES;
use crate::domain::{BlockKey, Extent};

/// One memtable of the cache (two at most: one filling, one being flushed).
const CACHE_MEMTABLE_BYTES: usize = 8 << 20;
/// The cache's own block cache.
const CACHE_BLOCKS_BYTES: usize = 8 << 20;
const INODE: u8 = b'i';
const DIRENT: u8 = b'd';
const BY_COOKIE: u8 = b'c';
const LISTED: u8 = b'L';
/// One key per extent (under the inode's generation), and a marker that the map is complete.
const EXTENT: u8 = b'e';
const MAPPED: u8 = b'E';
const XATTRS: u8 = b'x';
const SYMLINK: u8 = b's';
/// A directory's entries are keyed under its current generation; bumping the generation drops
/// them all with one write (range deletions pile up as tombstones that slow every read).
const GENERATION: u8 = b'g';
/// Bookkeeping keys sort after every data key.
const SYNCED_AT: &[u8] = b"~synced_at";
const VOLUME: &[u8] = b"~volume";
/// Generations handed out by earlier opens stay below this.
const GENERATION_FLOOR: &[u8] = b"~generation_floor";
/// Margin for transactions that committed around the time the feed was last known up.
const REPLAY_MARGIN_MICROS: i64 = 60 * 1_000_000;
/// Directories with more entries than this are not cached whole.
const MAX_LISTING: usize = 100_000;
/// Extent maps with more extents than this are not cached (a fragmented file waiting for
/// coalescing would be fetched whole after every commit).
const MAX_MAP: usize = 20_000;
const PAGE: usize = 4096;

fn key(tag: u8, ino: Ino) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Key of a directory entry (by name or by cookie) under the directory's generation.
fn entry_key(tag: u8, dir: Ino, generation: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = key(tag, dir);
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

/// Cache writes skip RocksDB's log: after a crash the cache holds a prefix of its writes (whole
/// memtables are lost, in order), its `synced_at` as old as the rest, and the catch-up replays
/// everything after it. Only the generation floor is logged.
fn no_wal() -> rocksdb::WriteOptions {
    let mut o = rocksdb::WriteOptions::default();
    o.disable_wal(true);
    o
}

fn corrupt(what: &str) -> MetaError {
    MetaError::Corrupt(format!("local metadata cache: {what}"))
}

fn cache_err(e: rocksdb::Error) -> MetaError {
    MetaError::backend("rocksdb cache", e)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn encode_dirent(e: &DirEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.extend_from_slice(&e.ino.to_be_bytes());
    v.push(e.kind.tag());
    v.extend_from_slice(&e.cookie.to_be_bytes());
    v
}

fn decode_dirent(v: &[u8]) -> MetaResult<DirEntry> {
    Ok(DirEntry {
        ino: u64_at(v, 0).ok_or_else(|| corrupt("entry"))?,
        kind: v
            .get(8)
            .and_then(|t| FileKind::from_tag(*t))
            .ok_or_else(|| corrupt("entry kind"))?,
        cookie: u64_at(v, 9).ok_or_else(|| corrupt("entry"))?,
    })
}

/// A listing row: the entry, then its name.
fn encode_listed(name: &[u8], e: &DirEntry) -> Vec<u8> {
    let mut v = encode_dirent(e);
    v.extend_from_slice(name);
    v
}

fn decode_listed(v: &[u8]) -> MetaResult<(Vec<u8>, DirEntry)> {
    let e = decode_dirent(v)?;
    Ok((v[17..].to_vec(), e))
}

const EXTENT_BYTES: usize = 8 + KEY_BYTES + 8;

fn encode_extents(all: &[Extent]) -> Vec<u8> {
    let mut v = Vec::with_capacity(all.len() * EXTENT_BYTES);
    for e in all {
        v.extend_from_slice(&e.offset.to_be_bytes());
        v.extend_from_slice(&e.key.to_bytes());
        v.extend_from_slice(&e.block_offset.to_be_bytes());
        v.extend_from_slice(&e.len.to_be_bytes());
    }
    v
}

fn decode_extents(v: &[u8]) -> MetaResult<Vec<Extent>> {
    if !v.len().is_multiple_of(EXTENT_BYTES) {
        return Err(corrupt("extent map"));
    }
    v.chunks(EXTENT_BYTES)
        .map(|c| {
            Ok(Extent {
                offset: u64_at(c, 0).expect("sized"),
                key: BlockKey::from_bytes(&c[8..8 + KEY_BYTES])
                    .ok_or_else(|| corrupt("block key"))?,
                block_offset: u32_at(c, 8 + KEY_BYTES).expect("sized"),
                len: u32_at(c, 12 + KEY_BYTES).expect("sized"),
            })
        })
        .collect()
}

fn encode_xattrs(all: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (n, val) in all {
        v.extend_from_slice(&(n.len() as u32).to_be_bytes());
        v.extend_from_slice(n);
        v.extend_from_slice(&(val.len() as u32).to_be_bytes());
        v.extend_from_slice(val);
    }
    v
}

fn decode_xattrs(mut v: &[u8]) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let take = |v: &mut &[u8]| -> MetaResult<Vec<u8>> {
        let n = u32_at(v, 0).ok_or_else(|| corrupt("xattrs"))? as usize;
        let bytes = v.get(4..4 + n).ok_or_else(|| corrupt("xattrs"))?.to_vec();
        *v = &v[4 + n..];
        Ok(bytes)
    };
    while !v.is_empty() {
        let name = take(&mut v)?;
        let value = take(&mut v)?;
        out.push((name, value));
    }
    Ok(out)
}

fn overlapping(all: Vec<Extent>, range: &Range<u64>) -> Vec<Extent> {
    all.into_iter()
        .filter(|e| e.offset < range.end && e.end() > range.start)
        .collect()
}

/// Adds to `batch` what drops everything cached about `inos` but the attributes of those
/// `keep_inode` names; `generation` is new (from the epoch counter).
fn drop_into(
    batch: &mut WriteBatch,
    inos: &[Ino],
    generation: u64,
    keep_inode: impl Fn(Ino) -> bool,
) {
    for &ino in inos {
        for tag in [LISTED, MAPPED, XATTRS, SYMLINK] {
            batch.delete(key(tag, ino));
        }
        if !keep_inode(ino) {
            batch.delete(key(INODE, ino));
        }
        batch.put(key(GENERATION, ino), generation.to_be_bytes());
    }
}

/// The RocksDB side: entries plus the state that decides whether they may be served.
struct LocalCache {
    db: DB,
    /// Bumped by every invalidation; a fill that raced one is undone.
    epoch: AtomicU64,
    /// Whether the change feed is up and caught up.
    live: AtomicBool,
    /// Held by invalidations and write-throughs, so one never lands in the middle of the other.
    writing: std::sync::Mutex<()>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// In-memory copies of the inodes and listings most used, kept in step with RocksDB.
    mirror: Mirror,
    /// Tests hold a fill at a named point with this.
    #[cfg(test)]
    pause: std::sync::Mutex<Option<Pause>>,
}

/// What a test runs at a named point of a fill.
#[cfg(test)]
type Pause = Arc<dyn Fn(&str) + Send + Sync>;

/// A directory's entries, name and entry.
type Listing = Vec<(Vec<u8>, DirEntry)>;

impl LocalCache {
    /// A point where a test may hold a fill (nothing outside tests).
    fn at(&self, _point: &str) {
        #[cfg(test)]
        {
            let pause = self.pause.lock().expect("lock").clone();
            if let Some(pause) = pause {
                pause(_point);
            }
        }
    }

    fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let v = self.db.get(k).ok().flatten();
        self.count(v.is_some());
        v
    }

    /// Counts a lookup (also exported as `graviton_meta_cache_total`).
    fn count(&self, hit: bool) {
        let (counter, result) = if hit {
            (&self.hits, "hit")
        } else {
            (&self.misses, "miss")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::META_CACHE, "result" => result).increment(1);
    }

    fn has(&self, k: &[u8]) -> bool {
        self.live.load(Ordering::SeqCst) && matches!(self.db.get_pinned(k), Ok(Some(_)))
    }

    /// The generation a directory's cached entries are keyed under.
    fn generation(&self, dir: Ino) -> u64 {
        generation_of(self.db.get_pinned(key(GENERATION, dir)))
    }

    /// Drops everything cached about these inodes.
    fn invalidate(&self, inos: &[Ino]) {
        if inos.is_empty() {
            return;
        }
        let _one_writer = self.writing.lock().expect("lock");
        self.invalidate_locked(inos);
    }

    fn invalidate_locked(&self, inos: &[Ino]) {
        // unique and increasing: a new generation for every directory among them
        let generation = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.at("generation taken");
        let mut batch = WriteBatch::default();
        drop_into(&mut batch, inos, generation, |_| false);
        if let Err(e) = self.db.write_opt(&batch, &no_wal()) {
            // cannot drop stale entries: stop serving from the cache at all
            tracing::error!("local metadata cache: {e}; bypassing it");
            self.live.store(false, Ordering::SeqCst);
        }
        self.written();
        // after RocksDB: a copy read from it before this point is refused by the mirror
        self.mirror.forget(inos);
    }

    /// Ends a write that dropped entries: a fill that sampled the epoch before the write may
    /// have read the generation it replaced, and is refused.
    fn written(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// After this mount's own commit: stores what the transaction wrote (`w`) instead of
    /// dropping it, so the next lookup in a directory this mount just created a file in is
    /// still answered here. Falls back to dropping the inodes when any invalidation came in
    /// since `epoch` was sampled (before the commit), since then the cache may be behind.
    fn write_through(&self, epoch: u64, w: &Written) {
        let _one_writer = self.writing.lock().expect("lock");
        if !self.live.load(Ordering::SeqCst) || self.epoch.load(Ordering::SeqCst) != epoch {
            self.invalidate_locked(&w.touched);
            return;
        }
        // fills that read the engine before this commit are undone when they land; the new
        // value also keys what this commit drops
        let generation = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let mut drop = w.opaque.clone();
        let mut batch = WriteBatch::default();
        // entries of one name may change several times (a write-behind batch): each change
        // undoes the one before it, read from here rather than from the cache
        let mut latest: std::collections::HashMap<(Ino, &[u8]), Option<DirEntry>> =
            std::collections::HashMap::new();
        let mut changes = Vec::with_capacity(w.entries.len());
        for (dir, name, entry) in &w.entries {
            let generation = self.generation(*dir);
            let by_name = entry_key(DIRENT, *dir, generation, name);
            let listed = w.fresh_dirs.contains(dir) || self.has(&key(LISTED, *dir));
            let old = match latest.get(&(*dir, name.as_slice())) {
                Some(prev) => *prev,
                None => match self.db.get(&by_name).map(|v| v.map(|v| decode_dirent(&v))) {
                    Ok(None) => None,
                    Ok(Some(Ok(old))) => Some(old),
                    Ok(Some(Err(_))) | Err(_) => {
                        drop.push(*dir);
                        continue;
                    }
                },
            };
            if let Some(old) = old {
                batch.delete(entry_key(
                    BY_COOKIE,
                    *dir,
                    generation,
                    &old.cookie.to_be_bytes(),
                ));
            }
            match entry {
                Some(e) => {
                    batch.put(&by_name, encode_dirent(e));
                    if listed {
                        let by_cookie =
                            entry_key(BY_COOKIE, *dir, generation, &e.cookie.to_be_bytes());
                        batch.put(by_cookie, encode_listed(name, e));
                    }
                }
                None => batch.delete(&by_name),
            }
            changes.push(EntryChange {
                dir: *dir,
                old: old.map(|o| o.cookie),
                new: entry.map(|e| (name.as_slice(), e)),
            });
            latest.insert((*dir, name.as_slice()), *entry);
        }
        let mut stored = std::collections::HashSet::new();
        for inode in w.inodes.values() {
            match postcard::to_stdvec(inode) {
                Ok(v) => {
                    batch.put(key(INODE, inode.ino), v);
                    stored.insert(inode.ino);
                }
                Err(_) => drop.push(inode.ino),
            }
        }
        for dir in &w.fresh_dirs {
            // had no entry when this transaction first wrote it: its listing is known, and
            // holds exactly the entries written above
            batch.put(key(LISTED, *dir), []);
        }
        drop.sort_unstable();
        drop.dedup();
        // in the same batch: a reader that finds the new attributes (a new data version)
        // never finds the map they replaced; the attributes written here stay
        drop_into(&mut batch, &drop, generation, |ino| stored.contains(&ino));
        match self.db.write_opt(&batch, &no_wal()) {
            Ok(()) => {
                self.written();
                self.mirror
                    .committed(w.fresh_dirs.iter().copied(), &changes, w.inodes.values());
                self.mirror.forget(&drop);
            }
            Err(_) => self.invalidate_locked(&w.touched),
        }
        self.at("written through");
    }

    fn wipe(&self) {
        let _one_writer = self.writing.lock().expect("lock");
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let mut batch = WriteBatch::default();
        batch.delete_range(vec![0u8], vec![b'~']);
        if let Err(e) = self.db.write_opt(&batch, &no_wal()) {
            tracing::error!("local metadata cache: {e}; bypassing it");
            self.live.store(false, Ordering::SeqCst);
        }
        self.written();
        self.mirror.clear();
    }

    /// Stores what was read from the engine since `epoch` was sampled, unless an invalidation
    /// came in between. Checked before writing, under the lock invalidations take: a stale
    /// fill is never visible, not even until it is undone (a listing marked complete without
    /// an entry made meanwhile would answer "no such entry" for it).
    fn fill(&self, epoch: u64, ino: Ino, batch: WriteBatch) {
        self.at("filling");
        {
            let _one_writer = self.writing.lock().expect("lock");
            if self.live.load(Ordering::SeqCst)
                && self.epoch.load(Ordering::SeqCst) == epoch
                && self.db.write_opt(&batch, &no_wal()).is_err()
            {
                self.invalidate_locked(&[ino]);
            }
        }
        self.at("filled");
    }

    fn synced_at(&self) -> i64 {
        self.db
            .get(SYNCED_AT)
            .ok()
            .flatten()
            .and_then(|v| Some(i64::from_be_bytes(v.as_slice().try_into().ok()?)))
            .unwrap_or(0)
    }

    fn set_synced_at(&self, micros: i64) {
        let _ = self.db.put_opt(SYNCED_AT, micros.to_be_bytes(), &no_wal());
    }

    /// Replays the change log from the last time the feed was known up; goes live after.
    fn catch_up(&self, shared: &dyn SharedVolume) -> MetaResult<()> {
        let since = self.synced_at().saturating_sub(REPLAY_MARGIN_MICROS);
        match shared.changes_since(since)? {
            (Some(inos), now) => {
                self.invalidate(&inos);
                self.set_synced_at(now);
                tracing::info!(replayed = inos.len(), "local metadata cache caught up");
            }
            (None, now) => {
                self.wipe();
                self.set_synced_at(now);
                tracing::info!("local metadata cache emptied: older than the change log");
            }
        }
        self.live.store(true, Ordering::SeqCst);
        Ok(())
    }
}

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

/// Deletes directory entries left under old generations.
fn sweep_stale_entries(db: &DB) -> MetaResult<()> {
    let mut batch = WriteBatch::default();
    let mut current: Option<(Ino, u64)> = None;
    for tag in [DIRENT, BY_COOKIE, EXTENT] {
        for item in db.iterator(IteratorMode::From(&[tag], Direction::Forward)) {
            let (k, _) = item.map_err(cache_err)?;
            if k.first() != Some(&tag) {
                break;
            }
            let (Some(dir), Some(generation)) = (u64_at(&k, 1), u64_at(&k, 9)) else {
                batch.delete(&k);
                continue;
            };
            let live = match current {
                Some((d, g)) if d == dir => g,
                _ => {
                    let g = db
                        .get_pinned(key(GENERATION, dir))
                        .map_err(cache_err)?
                        .and_then(|v| u64_at(&v, 0))
                        .unwrap_or(0);
                    current = Some((dir, g));
                    g
                }
            };
            if generation != live {
                batch.delete(&k);
            }
        }
    }
    db.write(&batch).map_err(cache_err)
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

    fn end_session(&self) {
        self.inner.end_session();
        // the cache's writes skip the log: write them out so the next mount finds them
        if let Err(e) = self.cache.db.flush() {
            tracing::warn!("writing out the local metadata cache: {e}");
        }
    }

    /// True unless the cached inode is the current one: only then may the kernel keep the
    /// pages it cached (the cached copy was invalidated with them).
    fn revalidate(&self, ino: Ino) -> MetaResult<bool> {
        let (epoch, token) = (
            self.cache.epoch.load(Ordering::SeqCst),
            self.cache.mirror.token(),
        );
        let cached = self.cached_inode(ino)?;
        let fresh = self.inner.read_inode(ino)?;
        if cached.is_some() && cached == fresh {
            return Ok(false);
        }
        match &fresh {
            Some(n) if cached.is_none() => self.fill_inode(epoch, token, n),
            _ => self.cache.invalidate(&[ino]),
        }
        Ok(true)
    }
}

/// A directory's generation from its stored record (0 when it has none).
fn generation_of(found: Result<Option<rocksdb::DBPinnableSlice<'_>>, rocksdb::Error>) -> u64 {
    found
        .ok()
        .flatten()
        .and_then(|v| u64_at(&v, 0))
        .unwrap_or(0)
}

/// A read-only view answered from the cache where it can be, else from the engine.
struct CachedReader<'a> {
    meta: &'a CachedMeta,
    fallback: Option<Box<dyn MetaRead + 'a>>,
}

impl<'a> CachedReader<'a> {
    fn engine(&mut self) -> MetaResult<&mut (dyn MetaRead + 'a)> {
        if self.fallback.is_none() {
            self.fallback = Some(self.meta.inner.read()?);
        }
        Ok(self.fallback.as_deref_mut().expect("just set"))
    }

    fn cache(&self) -> &'a LocalCache {
        &self.meta.cache
    }

    fn epoch(&self) -> u64 {
        self.meta.cache.epoch.load(Ordering::SeqCst)
    }

    /// The whole directory, read from the engine and cached, when it is not too large.
    fn fill_listing(&mut self, dir: Ino) -> MetaResult<Option<Listing>> {
        let epoch = self.epoch();
        let token = self.cache().mirror.token();
        let generation = self.cache().generation(dir);
        let mut all: Vec<(Vec<u8>, DirEntry)> = Vec::new();
        loop {
            let after = all.last().map(|(_, e)| e.cookie).unwrap_or(0);
            let page = self.engine()?.list_dir(dir, after, PAGE)?;
            let done = page.len() < PAGE;
            all.extend(page);
            if done {
                break;
            }
            if all.len() > MAX_LISTING {
                return Ok(None);
            }
        }
        self.cache().at("listing read");
        let mut batch = WriteBatch::default();
        for (name, e) in &all {
            batch.put(entry_key(DIRENT, dir, generation, name), encode_dirent(e));
            batch.put(
                entry_key(BY_COOKIE, dir, generation, &e.cookie.to_be_bytes()),
                encode_listed(name, e),
            );
        }
        batch.put(key(LISTED, dir), []);
        self.cache().fill(epoch, dir, batch);
        self.cache().mirror.put_listing(token, dir, &all);
        Ok(Some(all))
    }

    fn cached_listing(&self, dir: Ino, after: u64, limit: usize) -> MetaResult<Option<Listing>> {
        let cache = self.cache();
        if !cache.live.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if let Some(out) = cache.mirror.listing(dir, after, limit) {
            cache.count(true);
            return Ok(Some(out));
        }
        let token = cache.mirror.token();
        // One snapshot for the flag, the generation and the entries: read one by one, an
        // invalidation from another mount could land between the flag and the generation, and
        // the listing came back empty (the new generation has no entries yet).
        let snap = cache.db.snapshot();
        if !matches!(snap.get_pinned(key(LISTED, dir)), Ok(Some(_))) {
            return Ok(None);
        }
        let generation = generation_of(snap.get_pinned(key(GENERATION, dir)));
        let from = entry_key(
            BY_COOKIE,
            dir,
            generation,
            &after.saturating_add(1).to_be_bytes(),
        );
        let end = entry_key(BY_COOKIE, dir, generation + 1, &[]);
        // the bound lets RocksDB stop at the listing's end instead of merging past it
        let mut bounded = rocksdb::ReadOptions::default();
        bounded.set_iterate_upper_bound(end);
        let mut it = snap.raw_iterator_opt(bounded);
        it.seek(&from);
        let mut out = Vec::new();
        while let Some(v) = it.value() {
            if out.len() >= limit {
                break;
            }
            out.push(decode_listed(v)?);
            it.next();
        }
        it.status().map_err(cache_err)?;
        cache.count(true);
        if after < FIRST_COOKIE && out.len() < limit {
            // the whole listing
            cache.mirror.put_listing(token, dir, &out);
        }
        Ok(Some(out))
    }

    /// The extents overlapping `range`, from the cached map (one seek) or the engine's whole
    /// map, which is then cached.
    fn cached_extents(&mut self, ino: Ino, range: &Range<u64>) -> MetaResult<Vec<Extent>> {
        let cache = self.cache();
        // one snapshot for the flag, the generation and the extents: an invalidation landing
        // between them would leave the new generation's (empty) map read as a hole
        let snap = cache.db.snapshot();
        if cache.live.load(Ordering::SeqCst)
            && matches!(snap.get_pinned(key(MAPPED, ino)), Ok(Some(_)))
        {
            cache.at("mapped");
            let generation = generation_of(snap.get_pinned(key(GENERATION, ino)));
            let prefix = entry_key(EXTENT, ino, generation, &[]);
            let mut it = snap.raw_iterator();
            // the extent starting at or before the range, else the first after its start
            it.seek_for_prev(entry_key(
                EXTENT,
                ino,
                generation,
                &range.start.to_be_bytes(),
            ));
            if !it.key().is_some_and(|k| k.starts_with(&prefix)) {
                it.seek(&prefix);
            }
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(&prefix) {
                    break;
                }
                let mut one = decode_extents(v)?;
                let e = one.pop().ok_or_else(|| corrupt("extent"))?;
                if e.offset >= range.end {
                    break;
                }
                if e.end() > range.start {
                    out.push(e);
                }
                it.next();
            }
            it.status().map_err(cache_err)?;
            cache.count(true);
            return Ok(out);
        }
        let epoch = self.epoch();
        let generation = cache.generation(ino);
        let fragmented = self
            .meta
            .read_inode(ino)?
            .is_some_and(|n| n.extent_count > MAX_MAP as u64);
        if fragmented {
            return self.engine()?.extents(ino, range.clone());
        }
        let all = self.engine()?.extents(ino, 0..u64::MAX)?;
        let mut batch = WriteBatch::default();
        for e in &all {
            batch.put(
                entry_key(EXTENT, ino, generation, &e.offset.to_be_bytes()),
                encode_extents(std::slice::from_ref(e)),
            );
        }
        batch.put(key(MAPPED, ino), []);
        self.cache().fill(epoch, ino, batch);
        Ok(overlapping(all, range))
    }

    fn all_xattrs(&mut self, ino: Ino) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
        if let Some(v) = self.cache().get(&key(XATTRS, ino)) {
            return decode_xattrs(&v);
        }
        let epoch = self.epoch();
        let names = self.engine()?.xattr_names(ino)?;
        let mut all = Vec::with_capacity(names.len());
        for n in names {
            if let Some(v) = self.engine()?.xattr(ino, &n)? {
                all.push((n, v));
            }
        }
        let mut batch = WriteBatch::default();
        batch.put(key(XATTRS, ino), encode_xattrs(&all));
        self.cache().fill(epoch, ino, batch);
        Ok(all)
    }
}

impl MetaRead for CachedReader<'_> {
    fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
        self.meta.read_inode(ino)
    }

    fn dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<Option<DirEntry>> {
        let epoch = self.epoch();
        let cache = self.cache();
        let mut generation = cache.generation(parent);
        if cache.live.load(Ordering::SeqCst) {
            // one snapshot for the generation, the entry and the listing's marker: read one by
            // one, a fill landing in between could pair "not under this generation" with "the
            // listing is complete"
            let snap = cache.db.snapshot();
            generation = generation_of(snap.get_pinned(key(GENERATION, parent)));
            if let Ok(Some(v)) = snap.get_pinned(entry_key(DIRENT, parent, generation, name)) {
                cache.count(true);
                return decode_dirent(&v).map(Some);
            }
            let complete = matches!(snap.get_pinned(key(LISTED, parent)), Ok(Some(_)));
            cache.count(complete);
            if complete {
                return Ok(None); // the cached listing is complete: no such entry
            }
        }
        let e = self.engine()?.dirent(parent, name)?;
        if let Some(e) = &e {
            let mut batch = WriteBatch::default();
            batch.put(
                entry_key(DIRENT, parent, generation, name),
                encode_dirent(e),
            );
            self.cache().fill(epoch, parent, batch);
        }
        Ok(e)
    }

    fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> MetaResult<Vec<(Vec<u8>, DirEntry)>> {
        if let Some(page) = self.cached_listing(parent, after, limit)? {
            return Ok(page);
        }
        if self.meta.is_live()
            && after <= 2
            && let Some(all) = self.fill_listing(parent)?
        {
            return Ok(all
                .into_iter()
                .filter(|(_, e)| e.cookie > after)
                .take(limit)
                .collect());
        }
        self.engine()?.list_dir(parent, after, limit)
    }

    fn dir_is_empty(&mut self, dir: Ino) -> MetaResult<bool> {
        if let Some(page) = self.cached_listing(dir, 0, 1)? {
            return Ok(page.is_empty());
        }
        self.engine()?.dir_is_empty(dir)
    }

    fn extents(&mut self, ino: Ino, range: Range<u64>) -> MetaResult<Vec<Extent>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        if !self.meta.is_live() {
            return self.engine()?.extents(ino, range);
        }
        self.cached_extents(ino, &range)
    }

    fn xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        if !self.meta.is_live() {
            return self.engine()?.xattr(ino, name);
        }
        Ok(self
            .all_xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v))
    }

    fn inode_numbers(&mut self) -> MetaResult<Vec<(Ino, bool)>> {
        self.engine()?.inode_numbers()
    }

    fn xattr_names(&mut self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        if !self.meta.is_live() {
            return self.engine()?.xattr_names(ino);
        }
        Ok(self.all_xattrs(ino)?.into_iter().map(|(n, _)| n).collect())
    }

    fn symlink_target(&mut self, ino: Ino) -> MetaResult<Option<Vec<u8>>> {
        if let Some(v) = self.cache().get(&key(SYMLINK, ino)) {
            return Ok(Some(v));
        }
        let epoch = self.epoch();
        let t = self.engine()?.symlink_target(ino)?;
        if let Some(t) = &t {
            let mut batch = WriteBatch::default();
            batch.put(key(SYMLINK, ino), t);
            self.cache().fill(epoch, ino, batch);
        }
        Ok(t)
    }
}

/// A transaction on the engine. Once it commits, what it wrote is written through to the
/// cache where that is simple (inode records, directory entries) and dropped otherwise.
struct CachedTxn<'a> {
    inner: Option<Box<dyn MetaTxn + 'a>>,
    cache: &'a LocalCache,
    written: Written,
}

/// What a transaction wrote, as far as the cache is concerned.
#[derive(Default)]
struct Written {
    /// Every inode written.
    touched: Vec<Ino>,
    /// Final inode records.
    inodes: std::collections::HashMap<Ino, Inode>,
    /// Directory entries set (Some) or removed (None), in order.
    entries: Vec<(Ino, Vec<u8>, Option<DirEntry>)>,
    /// Directories that had never had an entry when this transaction first wrote them.
    fresh_dirs: Vec<Ino>,
    /// Inodes written in ways the cache does not replay (extents, xattrs, symlink targets,
    /// deletion, orphans): dropped.
    opaque: Vec<Ino>,
}

impl CachedTxn<'_> {
    fn tx(&mut self) -> &mut (dyn MetaTxn + '_) {
        self.inner.as_deref_mut().expect("open until commit")
    }
}

super::layer::forward_reads!(CachedTxn<'_>, self => self.tx());

impl CachedTxn<'_> {
    /// Notes an inode written in a way the cache does not replay.
    fn opaque(&mut self, ino: Ino) {
        self.written.touched.push(ino);
        self.written.opaque.push(ino);
    }
}

impl MetaTxn for CachedTxn<'_> {
    fn put_inode(&mut self, inode: &Inode) -> MetaResult<()> {
        self.written.touched.push(inode.ino);
        if inode.kind == FileKind::Dir
            && inode.next_cookie == super::types::FIRST_COOKIE
            && !self.written.inodes.contains_key(&inode.ino)
        {
            self.written.fresh_dirs.push(inode.ino);
        }
        self.written.inodes.insert(inode.ino, inode.clone());
        self.tx().put_inode(inode)
    }
    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        self.opaque(ino);
        self.written.inodes.remove(&ino);
        self.tx().delete_inode(ino)
    }
    fn put_dirent(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> MetaResult<()> {
        self.written.touched.push(parent);
        self.written
            .entries
            .push((parent, name.to_vec(), Some(*entry)));
        self.tx().put_dirent(parent, name, entry)
    }
    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        self.written.touched.push(parent);
        self.written.entries.push((parent, name.to_vec(), None));
        self.tx().delete_dirent(parent, name)
    }
    fn apply_splice(&mut self, ino: Ino, splice: &Splice) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().apply_splice(ino, splice)
    }
    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().put_xattr(ino, name, value)
    }
    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().delete_xattr(ino, name)
    }
    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().put_symlink_target(ino, target)
    }
    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        self.opaque(ino);
        self.tx().add_orphan(ino)
    }

    fn hold_open(&mut self, ino: Ino) -> MetaResult<()> {
        self.tx().hold_open(ino)
    }

    fn commit(mut self: Box<Self>) -> MetaResult<()> {
        let tx = self.inner.take().expect("open until commit");
        let epoch = self.cache.epoch.load(Ordering::SeqCst);
        let result = tx.commit();
        let w = &mut self.written;
        w.touched.sort_unstable();
        w.touched.dedup();
        match result {
            Ok(()) => self.cache.write_through(epoch, w),
            // also when the commit failed: its outcome may be unknown (connection lost)
            Err(_) => self.cache.invalidate(&w.touched),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_their_encodings() {
        let key = BlockKey::for_data(crate::domain::HashAlgo::Blake3, b"x");
        let extents = vec![
            Extent {
                offset: 0,
                key,
                block_offset: 3,
                len: 9,
            },
            Extent {
                offset: 9,
                key,
                block_offset: 0,
                len: 1 << 20,
            },
        ];
        assert_eq!(decode_extents(&encode_extents(&extents)).unwrap(), extents);
        let xattrs = vec![
            (b"user.a".to_vec(), b"".to_vec()),
            (b"user.b".to_vec(), vec![0, 1, 2]),
        ];
        assert_eq!(decode_xattrs(&encode_xattrs(&xattrs)).unwrap(), xattrs);
        let e = DirEntry::new(77, FileKind::Symlink, 12);
        assert_eq!(
            decode_listed(&encode_listed(b"name", &e)).unwrap(),
            (b"name".to_vec(), e)
        );
        assert!(
            decode_extents(&[0u8; 5]).is_err(),
            "a torn record is an error"
        );
    }
}

/// Against the PostgreSQL server `scripts/test.sh` starts.
#[cfg(test)]
mod pg_tests {
    use super::*;
    use crate::meta::Timestamp;
    use crate::meta::pg::PgMetaStore;
    use crate::meta::prelude::*;
    use std::time::Instant;

    fn fresh_database() -> String {
        crate::testkit::scratch_database()
    }

    fn start_session(store: &dyn MetaStore) {
        store
            .begin_session(&crate::meta::SessionInfo {
                host: "test".into(),
                pid: std::process::id(),
                mountpoint: "/test".into(),
                timeout: Duration::from_secs(5),
            })
            .expect("session");
    }

    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A cache in `dir` in front of a fresh connection, serving.
    fn cached(url: &str, dir: &Path) -> Arc<CachedMeta> {
        let inner: Arc<dyn MetaStore> = Arc::new(PgMetaStore::connect(url).unwrap());
        // a cache closed a moment ago may still hold its lock while its thread finishes
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = loop {
            match CachedMeta::open(inner.clone(), dir) {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("opening the cache: {e}"),
            }
        };
        drop(inner);
        start_session(&c);
        eventually("the cache goes live", || c.is_live());
        Arc::new(c)
    }

    /// A new empty directory, committed through `a`.
    fn new_dir(a: &CachedMeta) -> (Ino, Inode) {
        let d = a.allocate_ino().unwrap();
        let parent = Inode::new(d, FileKind::Dir, 0o755, 0, 0, Timestamp::default());
        let mut tx = a.begin().unwrap();
        tx.put_inode(&parent).unwrap();
        tx.commit().unwrap();
        (d, parent)
    }

    fn file(ino: Ino, size: u64) -> Inode {
        let mut n = Inode::new(
            ino,
            FileKind::File,
            0o644,
            0,
            0,
            Timestamp { secs: 1, nanos: 0 },
        );
        n.size = size;
        n
    }

    #[test]
    fn another_mounts_writes_reach_the_cache() {
        crate::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let a = cached(&url, dir.path());
        let b = PgMetaStore::connect(&url).unwrap();
        start_session(&b);
        let (d, x) = (b.allocate_ino().unwrap(), b.allocate_ino().unwrap());
        let mut parent = Inode::new(d, FileKind::Dir, 0o755, 0, 0, Timestamp::default());
        let entry = |ino, cookie| DirEntry::new(ino, FileKind::File, cookie);
        let mut tx = b.begin().unwrap();
        tx.put_inode(&parent).unwrap();
        tx.put_inode(&file(x, 1)).unwrap();
        tx.put_dirent(d, b"x", &entry(x, 3)).unwrap();
        tx.commit().unwrap();
        assert_eq!(a.read_inode(x).unwrap(), Some(file(x, 1)));
        assert_eq!(a.read().unwrap().list_dir(d, 0, 10).unwrap().len(), 1);
        // (the feed may still bring b's commit, which drops what a just cached)
        eventually("a read is a cache hit", || {
            let hits = a.hit_counts().0;
            assert_eq!(a.read_inode(x).unwrap(), Some(file(x, 1)));
            a.hit_counts().0 > hits
        });

        let mut tx = b.begin().unwrap();
        tx.put_inode(&file(x, 2)).unwrap();
        parent.next_cookie += 1;
        tx.put_inode(&parent).unwrap();
        tx.put_dirent(d, b"y", &entry(x, 4)).unwrap();
        tx.commit().unwrap();
        eventually("the new size reaches the cache", || {
            a.read_inode(x).unwrap() == Some(file(x, 2))
        });
        eventually("the new entry reaches the cached listing", || {
            a.read().unwrap().list_dir(d, 0, 10).unwrap().len() == 2
        });
        assert!(a.read().unwrap().dirent(d, b"y").unwrap().is_some());
        // close-to-open: a stale copy is caught by revalidate even before the feed brings it
        assert!(
            !a.revalidate(x).unwrap(),
            "unchanged: the kernel keeps its pages"
        );
    }

    /// This mount's own creates, renames and removals in a directory it has listed are written
    /// through: the listing and negative lookups keep being answered by the cache (no miss),
    /// and they match the engine.
    #[test]
    fn own_commits_are_written_through() {
        crate::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let a = cached(&url, dir.path());
        let (d, mut parent) = new_dir(&a);
        assert!(
            a.cache.has(&key(LISTED, d)),
            "a new directory's (empty) listing is known without asking the engine"
        );
        assert!(a.read().unwrap().list_dir(d, 0, 10).unwrap().is_empty());
        let entry = |ino, cookie| DirEntry::new(ino, FileKind::File, cookie);
        for (i, name) in [b"a", b"b", b"c"].iter().enumerate() {
            let x = a.allocate_ino().unwrap();
            assert!(a.read().unwrap().dirent(d, *name).unwrap().is_none());
            let mut tx = a.begin().unwrap();
            parent.next_cookie += 1;
            parent.size += 1;
            tx.put_inode(&parent).unwrap();
            tx.put_inode(&file(x, i as u64)).unwrap();
            tx.put_dirent(d, *name, &entry(x, 3 + i as u64)).unwrap();
            tx.commit().unwrap();
        }
        // rename b -> z, remove c
        let b = a.read().unwrap().dirent(d, b"b").unwrap().unwrap();
        let mut tx = a.begin().unwrap();
        tx.delete_dirent(d, b"b").unwrap();
        tx.put_dirent(d, b"z", &entry(b.ino, 6)).unwrap();
        tx.delete_dirent(d, b"c").unwrap();
        parent.size -= 1;
        tx.put_inode(&parent).unwrap();
        tx.commit().unwrap();
        let names = |r: &mut dyn MetaRead| -> Vec<Vec<u8>> {
            r.list_dir(d, 0, 10)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        let mut view = a.read().unwrap();
        assert_eq!(names(view.as_mut()), [b"a".to_vec(), b"z".to_vec()]);
        assert!(view.dirent(d, b"c").unwrap().is_none());
        assert!(view.dirent(d, b"b").unwrap().is_none());
        assert_eq!(view.dirent(d, b"z").unwrap().map(|e| e.ino), Some(b.ino));
        assert_eq!(a.read_inode(d).unwrap(), Some(parent.clone()));
        drop(view);
        assert!(
            a.cache.has(&key(LISTED, d)) && a.cache.has(&key(INODE, d)),
            "the listing and the directory's record stayed cached through this mount's commits"
        );
        // and the engine agrees
        let engine = PgMetaStore::connect(&url).unwrap();
        let mut r = engine.read().unwrap();
        assert_eq!(names(r.as_mut()), [b"a".to_vec(), b"z".to_vec()]);
    }

    /// A listing read from the engine before a directory changed must never be served after
    /// the change, not even for a moment: a lookup of a name made meanwhile would be answered
    /// "no such entry" from the stale listing (a `git clone` onto a PostgreSQL volume failed
    /// that way, creating a file in a fan-out directory it had just made).
    #[test]
    fn a_listing_read_before_a_change_never_hides_the_change() {
        crate::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let a = cached(&url, dir.path());
        let (d, mut parent) = new_dir(&a);
        a.cache.invalidate(&[d]); // as another mount's change would
        // a lister reads d's (empty) listing from the engine, and is held there
        let [lister_at] = hold(&a, ["lister"]);
        let lister = {
            let a = a.clone();
            named("lister", move || {
                a.read().unwrap().list_dir(d, 0, 100).unwrap().len()
            })
        };
        lister_at.reaches("listing read");
        // meanwhile: a directory made in d, and d invalidated again
        let e1 = a.allocate_ino().unwrap();
        let mut tx = a.begin().unwrap();
        parent.next_cookie += 1;
        tx.put_inode(&parent).unwrap();
        tx.put_inode(&Inode::new(
            e1,
            FileKind::Dir,
            0o755,
            0,
            0,
            Timestamp::default(),
        ))
        .unwrap();
        let entry = DirEntry::new(e1, FileKind::Dir, 3);
        tx.put_dirent(d, b"e1", &entry).unwrap();
        tx.commit().unwrap();
        a.cache.invalidate(&[d]);
        lister_at.go_on.send(()).unwrap();
        lister_at.reaches("filling");
        lister_at.go_on.send(()).unwrap();
        // the lister's fill is done (stored or refused), and held again
        lister_at.reaches("filled");
        let seen = a.read().unwrap().dirent(d, b"e1").unwrap();
        release(&a, &lister_at);
        lister.join().unwrap();
        assert_eq!(
            seen,
            Some(entry),
            "the new entry, while the stale fill lands"
        );
        assert_eq!(a.read().unwrap().dirent(d, b"e1").unwrap(), Some(entry));
    }

    /// A thread held at every point it reaches in a cache: the point's name arrives on
    /// `reached`, and the thread goes on when sent `()` on `go_on`.
    struct Held {
        reached: std::sync::mpsc::Receiver<String>,
        go_on: std::sync::mpsc::Sender<()>,
    }

    impl Held {
        fn reaches(&self, point: &str) {
            let at = self.reached.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(at, point);
        }
    }

    /// Holds the threads named in `threads` at every point they reach in `a`'s cache (until
    /// `release`).
    fn hold<const N: usize>(a: &CachedMeta, threads: [&'static str; N]) -> [Held; N] {
        let mut routes = Vec::new();
        let held = threads.map(|name| {
            let (at_point, reached) = std::sync::mpsc::channel::<String>();
            let (go_on, proceed) = std::sync::mpsc::channel::<()>();
            routes.push((name, at_point, std::sync::Mutex::new(proceed)));
            Held { reached, go_on }
        });
        *a.cache.pause.lock().unwrap() = Some(Arc::new(move |point: &str| {
            let me = std::thread::current();
            if let Some((_, at_point, proceed)) = routes.iter().find(|r| me.name() == Some(r.0)) {
                at_point.send(point.to_string()).unwrap();
                let _ = proceed
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(20));
            }
        }));
        held
    }

    /// Lets every thread go on unheld from here on, and lets `h` go on from where it is.
    fn release(a: &CachedMeta, h: &Held) {
        *a.cache.pause.lock().unwrap() = None;
        h.go_on.send(()).unwrap();
    }

    /// Runs `f` in a thread named `name`.
    fn named<T: Send + 'static>(
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .unwrap()
    }

    /// A file of `len` bytes mapped to one block made of `fill`, committed through `a` (its map
    /// and inode then read, so both are cached).
    fn mapped_file(a: &CachedMeta, ino: Ino, fill: u8, len: u32, version: u64) -> (Inode, Extent) {
        let e = Extent {
            offset: 0,
            key: BlockKey::for_data(crate::domain::key::HashAlgo::Blake3, &[fill; 64]),
            block_offset: 0,
            len,
        };
        let mut tx = a.begin().unwrap();
        let old = tx.extents(ino, 0..u64::MAX).unwrap();
        tx.apply_splice(
            ino,
            &Splice {
                remove: old,
                insert: vec![e],
            },
        )
        .unwrap();
        let mut n = file(ino, len as u64);
        n.extent_count = 1;
        n.data_version = version;
        tx.put_inode(&n).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            a.read().unwrap().extents(ino, 0..u64::MAX).unwrap(),
            vec![e]
        );
        assert_eq!(a.read_inode(ino).unwrap(), Some(n.clone()));
        (n, e)
    }

    /// A cache (in the returned folder) on a fresh database, with a file of 4096 bytes in one
    /// extent, its map and inode cached: the folder, the cache, the file and its extent.
    fn cache_with_a_mapped_file() -> (tempfile::TempDir, Arc<CachedMeta>, Ino, Extent) {
        let dir = tempfile::tempdir().unwrap();
        let a = cached(&fresh_database(), dir.path());
        let x = a.allocate_ino().unwrap();
        let (_, e) = mapped_file(&a, x, 1, 4096, 1);
        (dir, a, x, e)
    }

    /// A thread named "reader" that reads `x`'s whole map through `a`.
    fn map_reader(a: &Arc<CachedMeta>, x: Ino) -> std::thread::JoinHandle<Vec<Extent>> {
        let a = a.clone();
        named("reader", move || {
            a.read().unwrap().extents(x, 0..u64::MAX).unwrap()
        })
    }

    #[test]
    fn a_reader_that_sees_a_commits_inode_sees_its_extents() {
        crate::needs_servers!();
        let (_dir, a, x, _) = cache_with_a_mapped_file();
        // a rewrite commits, and its write-through is held where it has written the cache
        let [writer_at] = hold(&a, ["writer"]);
        let writer = {
            let a = a.clone();
            named("writer", move || mapped_file(&a, x, 2, 4096, 2))
        };
        writer_at.reaches("written through");
        // meanwhile a read: the inode, then its map (as the read path does)
        let (seen, got) = std::sync::mpsc::channel();
        let reader = {
            let a = a.clone();
            std::thread::spawn(move || {
                let n = a.read_inode(x).unwrap().unwrap();
                let map = a.read().unwrap().extents(x, 0..u64::MAX).unwrap();
                seen.send((n, map)).unwrap();
            })
        };
        // the reader may wait for the write-through to finish: let it, after a while
        let early = got.recv_timeout(Duration::from_secs(2)).ok();
        release(&a, &writer_at);
        let (n, map) = early.unwrap_or_else(|| got.recv().unwrap());
        let (_, new) = writer.join().unwrap();
        reader.join().unwrap();
        if n.data_version == 2 {
            assert_eq!(map, vec![new], "the new inode with the old map");
        }
    }

    #[test]
    fn an_extent_lookup_racing_an_invalidation_finds_the_map() {
        crate::needs_servers!();
        let (_dir, a, x, e) = cache_with_a_mapped_file();
        // a lookup finds the map cached, and is held there
        let [reader_at] = hold(&a, ["reader"]);
        let reader = map_reader(&a, x);
        reader_at.reaches("mapped");
        // meanwhile another mount changes x's attributes (not its map)
        a.cache.invalidate(&[x]);
        release(&a, &reader_at);
        assert_eq!(
            reader.join().unwrap(),
            vec![e],
            "a mapped file read as a hole"
        );
    }

    #[test]
    fn a_map_read_while_an_invalidation_is_written_is_never_cached_empty() {
        crate::needs_servers!();
        let (_dir, a, x, e) = cache_with_a_mapped_file();
        a.cache.invalidate(&[x]);
        // an invalidation of x (from the change feed) has taken its new generation...
        let [invalidator_at, reader_at] = hold(&a, ["invalidator", "reader"]);
        let invalidator = {
            let a = a.clone();
            named("invalidator", move || a.cache.invalidate(&[x]))
        };
        invalidator_at.reaches("generation taken");
        // ...when a lookup reads x's map from the engine (under the generation it replaces)
        let reader = map_reader(&a, x);
        reader_at.reaches("filling");
        invalidator_at.go_on.send(()).unwrap();
        invalidator.join().unwrap();
        release(&a, &reader_at);
        assert_eq!(reader.join().unwrap(), vec![e]);
        assert_eq!(
            a.read().unwrap().extents(x, 0..u64::MAX).unwrap(),
            vec![e],
            "a mapped file read as a hole"
        );
    }

    #[test]
    fn a_reopened_cache_catches_up_with_changes_made_while_it_was_closed() {
        crate::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let b = PgMetaStore::connect(&url).unwrap();
        let x = b.allocate_ino().unwrap();
        let mut tx = b.begin().unwrap();
        tx.put_inode(&file(x, 1)).unwrap();
        tx.commit().unwrap();
        let a = cached(&url, dir.path());
        assert_eq!(a.read_inode(x).unwrap(), Some(file(x, 1)));
        drop(a);
        let mut tx = b.begin().unwrap();
        tx.put_inode(&file(x, 2)).unwrap();
        tx.commit().unwrap();
        let a = cached(&url, dir.path());
        assert_eq!(
            a.read_inode(x).unwrap(),
            Some(file(x, 2)),
            "the change made while closed was replayed from the log"
        );
    }
}
