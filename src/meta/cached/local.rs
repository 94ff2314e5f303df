//! The cache's RocksDB database: its key layout, record encodings, and the reads and writes
//! that keep it valid (`LocalCache`).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::reader::*;
use super::txn::*;
use crate::domain::key::KEY_BYTES;
use crate::domain::{BlockKey, Extent};
use crate::meta::mirror::{EntryChange, Mirror};
use crate::meta::{DirEntry, FileKind, Ino, MetaError, MetaResult, SharedVolume};

/// One memtable of the cache (two at most: one filling, one being flushed).
pub(super) const CACHE_MEMTABLE_BYTES: usize = 8 << 20;
/// The cache's own block cache.
pub(super) const CACHE_BLOCKS_BYTES: usize = 8 << 20;
pub(super) const INODE: u8 = b'i';
pub(super) const DIRENT: u8 = b'd';
pub(super) const BY_COOKIE: u8 = b'c';
pub(super) const LISTED: u8 = b'L';
/// One key per extent (under the inode's generation), and a marker that the map is complete.
pub(super) const EXTENT: u8 = b'e';
pub(super) const MAPPED: u8 = b'E';
pub(super) const XATTRS: u8 = b'x';
pub(super) const SYMLINK: u8 = b's';
/// A directory's entries are keyed under its current generation; bumping the generation drops
/// them all with one write (range deletions pile up as tombstones that slow every read).
pub(super) const GENERATION: u8 = b'g';
/// Bookkeeping keys sort after every data key.
pub(super) const SYNCED_AT: &[u8] = b"~synced_at";
pub(super) const VOLUME: &[u8] = b"~volume";
/// Generations handed out by earlier opens stay below this.
pub(super) const GENERATION_FLOOR: &[u8] = b"~generation_floor";
/// Margin for transactions that committed around the time the feed was last known up.
pub(super) const REPLAY_MARGIN_MICROS: i64 = 60 * 1_000_000;
/// Directories with more entries than this are not cached whole.
pub(super) const MAX_LISTING: usize = 100_000;
/// Extent maps with more extents than this are not cached (a fragmented file waiting for
/// coalescing would be fetched whole after every commit).
pub(super) const MAX_MAP: usize = 20_000;
pub(super) const PAGE: usize = 4096;
/// How many allocated, not yet committed inode numbers `LocalCache::allocated` keeps.
const MAX_ALLOCATED: usize = 65_536;

pub(super) fn key(tag: u8, ino: Ino) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(tag);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// Key of a directory entry (by name or by cookie) under the directory's generation.
pub(super) fn entry_key(tag: u8, dir: Ino, generation: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = key(tag, dir);
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

/// Cache writes skip RocksDB's log: after a crash the cache holds a prefix of its writes (whole
/// memtables are lost, in order), its `synced_at` as old as the rest, and the catch-up replays
/// everything after it. Only the generation floor is logged.
pub(super) fn no_wal() -> rocksdb::WriteOptions {
    let mut o = rocksdb::WriteOptions::default();
    o.disable_wal(true);
    o
}

pub(super) fn corrupt(what: &str) -> MetaError {
    MetaError::Corrupt(format!("local metadata cache: {what}"))
}

pub(super) fn cache_err(e: rocksdb::Error) -> MetaError {
    MetaError::backend("rocksdb cache", e)
}

pub(super) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(super) fn encode_dirent(e: &DirEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(17);
    v.extend_from_slice(&e.ino.to_be_bytes());
    v.push(e.kind.tag());
    v.extend_from_slice(&e.cookie.to_be_bytes());
    v
}

pub(super) fn decode_dirent(v: &[u8]) -> MetaResult<DirEntry> {
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
pub(super) fn encode_listed(name: &[u8], e: &DirEntry) -> Vec<u8> {
    let mut v = encode_dirent(e);
    v.extend_from_slice(name);
    v
}

pub(super) fn decode_listed(v: &[u8]) -> MetaResult<(Vec<u8>, DirEntry)> {
    let e = decode_dirent(v)?;
    Ok((v[17..].to_vec(), e))
}

pub(super) const EXTENT_BYTES: usize = 8 + KEY_BYTES + 8;

pub(super) fn encode_extents(all: &[Extent]) -> Vec<u8> {
    let mut v = Vec::with_capacity(all.len() * EXTENT_BYTES);
    for e in all {
        v.extend_from_slice(&e.offset.to_be_bytes());
        v.extend_from_slice(&e.key.to_bytes());
        v.extend_from_slice(&e.block_offset.to_be_bytes());
        v.extend_from_slice(&e.len.to_be_bytes());
    }
    v
}

pub(super) fn decode_extents(v: &[u8]) -> MetaResult<Vec<Extent>> {
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

pub(super) fn encode_xattrs(all: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (n, val) in all {
        v.extend_from_slice(&(n.len() as u32).to_be_bytes());
        v.extend_from_slice(n);
        v.extend_from_slice(&(val.len() as u32).to_be_bytes());
        v.extend_from_slice(val);
    }
    v
}

pub(super) fn decode_xattrs(mut v: &[u8]) -> MetaResult<Vec<(Vec<u8>, Vec<u8>)>> {
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

pub(super) fn overlapping(all: Vec<Extent>, range: &Range<u64>) -> Vec<Extent> {
    all.into_iter()
        .filter(|e| e.offset < range.end && e.end() > range.start)
        .collect()
}

/// Adds to `batch` what drops everything cached about `inos` but the attributes of those
/// `keep_inode` names; `generation` is new (from the epoch counter).
pub(super) fn drop_into(
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
pub(super) struct LocalCache {
    pub(super) db: DB,
    /// Bumped by every invalidation; a fill that raced one is undone.
    pub(super) epoch: AtomicU64,
    /// Whether the change feed is up and caught up.
    pub(super) live: AtomicBool,
    /// Held by invalidations and write-throughs, so one never lands in the middle of the other.
    pub(super) writing: std::sync::Mutex<()>,
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    /// In-memory copies of the inodes and listings most used, kept in step with RocksDB.
    pub(super) mirror: Mirror,
    /// Inodes a commit found the cache behind on (`behind`): the kernel may hold their old
    /// pages too, which the next `revalidate` drops even if the cache has caught up by then.
    pub(super) kernel_behind: std::sync::Mutex<std::collections::HashSet<Ino>>,
    /// Inode numbers this mount allocated and has not committed yet: an inode first written
    /// under one of them is new, and has no xattrs but those its transaction sets.
    pub(super) allocated: std::sync::Mutex<std::collections::HashSet<Ino>>,
    /// Tests hold a fill at a named point with this.
    #[cfg(test)]
    pub(super) pause: std::sync::Mutex<Option<Pause>>,
}

/// What a test runs at a named point of a fill.
#[cfg(test)]
pub(super) type Pause = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// A directory's entries, name and entry.
pub(super) type Listing = Vec<(Vec<u8>, DirEntry)>;

impl LocalCache {
    /// A point where a test may hold a fill (nothing outside tests).
    pub(super) fn at(&self, _point: &str) {
        #[cfg(test)]
        {
            let pause = self.pause.lock().expect("lock").clone();
            if let Some(pause) = pause {
                pause(_point);
            }
        }
    }

    pub(super) fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let v = self.db.get(k).ok().flatten();
        self.count(v.is_some());
        v
    }

    /// Notes an inode number this mount allocated (see `allocated`); a set grown past
    /// `MAX_ALLOCATED` by numbers never committed is emptied (it only saves lookups).
    pub(super) fn allocated(&self, ino: Ino) {
        let mut set = self.allocated.lock().expect("lock");
        if set.len() >= MAX_ALLOCATED {
            set.clear();
        }
        set.insert(ino);
    }

    pub(super) fn is_allocated(&self, ino: Ino) -> bool {
        self.allocated.lock().expect("lock").contains(&ino)
    }

    /// Forgets the numbers a commit wrote: from now on their inodes are not new.
    fn committed_allocations(&self, inos: &[Ino]) {
        if !inos.is_empty() {
            let mut set = self.allocated.lock().expect("lock");
            for ino in inos {
                set.remove(ino);
            }
        }
    }

    /// Counts a lookup (also exported as `graviton_meta_cache_total`).
    pub(super) fn count(&self, hit: bool) {
        let (counter, result) = if hit {
            (&self.hits, "hit")
        } else {
            (&self.misses, "miss")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::META_CACHE, "result" => result).increment(1);
    }

    pub(super) fn has(&self, k: &[u8]) -> bool {
        self.live.load(Ordering::SeqCst) && matches!(self.db.get_pinned(k), Ok(Some(_)))
    }

    /// The generation a directory's cached entries are keyed under.
    pub(super) fn generation(&self, dir: Ino) -> u64 {
        generation_of(self.db.get_pinned(key(GENERATION, dir)))
    }

    /// Drops everything cached about these inodes.
    pub(super) fn invalidate(&self, inos: &[Ino]) {
        if inos.is_empty() {
            return;
        }
        let _one_writer = self.writing.lock().expect("lock");
        self.invalidate_locked(inos);
    }

    pub(super) fn invalidate_locked(&self, inos: &[Ino]) {
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
    pub(super) fn written(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// The inodes a transaction read from the engine, then wrote, whose cached copy is not
    /// the one it read: the cache was behind on them (another mount's change not yet on the
    /// feed), so whatever else it holds of them may be stale. (Writes without a read come
    /// from the write-behind applier, on a volume no other mount changes.) Sorted.
    fn behind(&self, w: &Written) -> Vec<Ino> {
        let cached = |ino: Ino| -> Option<crate::meta::Inode> {
            let v = self.db.get(key(INODE, ino)).ok()??;
            postcard::from_bytes(&v).ok()
        };
        let written = w
            .inodes
            .keys()
            .copied()
            .chain(w.entries.iter().map(|e| e.0));
        let mut behind: Vec<Ino> = written
            .filter(|ino| w.read.get(ino).is_some_and(|read| cached(*ino) != *read))
            .collect();
        behind.sort_unstable();
        behind.dedup();
        behind
    }

    /// After this mount's own commit: stores what the transaction wrote (`w`) instead of
    /// dropping it, so the next lookup in a directory this mount just created a file in is
    /// still answered here. Falls back to dropping the inodes when any invalidation came in
    /// since `epoch` was sampled (before the commit), since then the cache may be behind.
    pub(super) fn write_through(&self, epoch: u64, w: &Written) {
        self.committed_allocations(&w.new_inodes);
        let _one_writer = self.writing.lock().expect("lock");
        if !self.live.load(Ordering::SeqCst) || self.epoch.load(Ordering::SeqCst) != epoch {
            self.invalidate_locked(&w.touched);
            return;
        }
        // fills that read the engine before this commit are undone when they land; the new
        // value also keys what this commit drops
        let generation = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let behind = self.behind(w);
        if !behind.is_empty() {
            self.kernel_behind.lock().expect("lock").extend(&behind);
        }
        let mut drop = w.opaque.clone();
        drop.extend(&behind);
        let mut batch = WriteBatch::default();
        // entries of one name may change several times (a write-behind batch): each change
        // undoes the one before it, read from here rather than from the cache
        let mut latest: std::collections::HashMap<(Ino, &[u8]), Option<DirEntry>> =
            std::collections::HashMap::new();
        let mut changes = Vec::with_capacity(w.entries.len());
        for (dir, name, entry) in &w.entries {
            if behind.binary_search(dir).is_ok() {
                continue;
            }
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
            if behind.binary_search(&inode.ino).is_ok() {
                continue;
            }
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
        for ino in &w.new_inodes {
            // an xattr the transaction set made the inode opaque: dropped below
            batch.put(key(XATTRS, *ino), encode_xattrs(&[]));
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

    pub(super) fn wipe(&self) {
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
    pub(super) fn fill(&self, epoch: u64, ino: Ino, batch: WriteBatch) {
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

    pub(super) fn synced_at(&self) -> i64 {
        self.db
            .get(SYNCED_AT)
            .ok()
            .flatten()
            .and_then(|v| Some(i64::from_be_bytes(v.as_slice().try_into().ok()?)))
            .unwrap_or(0)
    }

    pub(super) fn set_synced_at(&self, micros: i64) {
        let _ = self.db.put_opt(SYNCED_AT, micros.to_be_bytes(), &no_wal());
    }

    /// Replays the change log from the last time the feed was known up; goes live after.
    pub(super) fn catch_up(&self, shared: &dyn SharedVolume) -> MetaResult<()> {
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

/// Deletes directory entries left under old generations.
pub(super) fn sweep_stale_entries(db: &DB) -> MetaResult<()> {
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
