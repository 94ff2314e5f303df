//! An on-disk block cache in front of a remote store (`-o cache_dir=PATH`): blocks read or
//! written are kept as files, least recently used first out past the size budget, and reused
//! after a remount. A cached copy is checked against its key on every read; a bad one is
//! dropped and the block fetched again, never served. On an encrypted volume the files are
//! sealed (`AtRest`).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::at_rest::AtRest;
use super::{BlockStore, PutOutcome, StoreError, Unchecked, block_files};
use crate::domain::BlockKey;
use crate::domain::groups::GroupHashes;

pub struct DiskCache {
    inner: Arc<dyn BlockStore>,
    dir: PathBuf,
    budget: u64,
    state: Mutex<Lru>,
    at_rest: AtRest,
}

/// Cached blocks by recency (a counter stamps each use), with their files' lengths.
#[derive(Default)]
struct Lru {
    used: HashMap<BlockKey, (u64, u64)>,
    clock: u64,
    bytes: u64,
}

impl DiskCache {
    /// Opens (or creates) the cache in `dir`, keeping what an earlier mount left there.
    pub fn open(
        inner: Arc<dyn BlockStore>,
        dir: &Path,
        budget: u64,
        at_rest: AtRest,
    ) -> Result<DiskCache, StoreError> {
        let mut found: Vec<(std::time::SystemTime, BlockKey, u64)> =
            block_files::scan(dir, "disk cache")?
                .into_iter()
                .map(|(key, meta)| {
                    let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    (used, key, meta.len())
                })
                .collect();
        found.sort_by_key(|(t, ..)| *t);
        let mut lru = Lru::default();
        for (_, key, len) in found {
            lru.clock += 1;
            lru.used.insert(key, (lru.clock, len));
            lru.bytes += len;
        }
        let cache = DiskCache {
            inner,
            dir: dir.to_path_buf(),
            budget,
            state: Mutex::new(lru),
            at_rest,
        };
        cache.evict();
        Ok(cache)
    }

    fn path(&self, key: &BlockKey) -> PathBuf {
        block_files::path(&self.dir, key)
    }

    fn touch(&self, key: &BlockKey) {
        let mut s = self.state.lock().expect("lock");
        s.clock += 1;
        let c = s.clock;
        if let Some(entry) = s.used.get_mut(key) {
            entry.0 = c;
        }
    }

    fn keep(&self, key: &BlockKey, data: &[u8]) {
        let path = self.path(key);
        let tmp = path.with_extension("tmp");
        let stored = self.at_rest.seal(key, data);
        if std::fs::write(&tmp, &stored)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
            return; // a cache that cannot write just caches less
        }
        let len = stored.len() as u64;
        let mut s = self.state.lock().expect("lock");
        s.clock += 1;
        let c = s.clock;
        match s.used.insert(*key, (c, len)) {
            Some((_, was)) => s.bytes = s.bytes - was + len,
            None => s.bytes += len,
        }
        drop(s);
        self.evict();
    }

    fn forget(&self, key: &BlockKey) {
        let _ = std::fs::remove_file(self.path(key));
        let mut s = self.state.lock().expect("lock");
        if let Some((_, len)) = s.used.remove(key) {
            s.bytes = s.bytes.saturating_sub(len);
        }
    }

    /// Drops the least recently used blocks past the budget.
    fn evict(&self) {
        let mut s = self.state.lock().expect("lock");
        while s.bytes > self.budget && !s.used.is_empty() {
            let (&oldest, &(_, len)) = s
                .used
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .expect("not empty");
            s.used.remove(&oldest);
            s.bytes = s.bytes.saturating_sub(len);
            let _ = std::fs::remove_file(self.path(&oldest));
        }
    }

    /// Cached blocks and their bytes.
    pub fn usage(&self) -> (usize, u64) {
        let s = self.state.lock().expect("lock");
        (s.used.len(), s.bytes)
    }
}

impl super::StoreLayer for DiskCache {
    fn inner(&self) -> &dyn BlockStore {
        self.inner.as_ref()
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let r = self.inner.put(key, data)?;
        self.keep(key, data);
        Ok(r)
    }

    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        let r = self.inner.put_new_grouped(key, data, groups)?;
        self.keep(key, data);
        Ok(r)
    }

    fn get_unverified(&self, key: &BlockKey, _: Unchecked) -> Result<Vec<u8>, StoreError> {
        BlockStore::get(self, key)
    }

    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        if let Ok(stored) = std::fs::read(self.path(key)) {
            let data = self.at_rest.open(key, stored);
            if key.matches(&data) {
                self.touch(key);
                metrics::counter!(crate::metrics::BLOCK_CACHE, "result" => "disk_hit").increment(1);
                return Ok(data);
            }
            tracing::warn!(block = %key, "disk cache copy does not match its key; fetching again");
            self.forget(key);
        }
        let data = self.inner.get(key)?;
        self.keep(key, &data);
        Ok(data)
    }

    /// From the cached copy when there is one; otherwise the range alone from the store (a
    /// part is not kept: the cache holds whole blocks).
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        if self.path(key).exists() {
            let data = BlockStore::get(self, key)?;
            return Ok(super::part_of(&data, range));
        }
        self.inner.get_range(key, range)
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.forget(key);
        self.inner.delete(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HashAlgo;
    use crate::store::MemoryBlockStore;

    fn block(n: u8) -> (BlockKey, Vec<u8>) {
        let data = vec![n; 1000];
        (BlockKey::for_data(HashAlgo::Blake3, &data), data)
    }

    #[test]
    fn budget_reuse_and_bad_copies() {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(MemoryBlockStore::new());
        let cache = DiskCache::open(inner.clone(), dir.path(), 2500, AtRest::Plain).unwrap();
        let (k1, d1) = block(1);
        let (k2, d2) = block(2);
        let (k3, d3) = block(3);
        for (k, d) in [(&k1, &d1), (&k2, &d2), (&k3, &d3)] {
            cache.put(k, d).unwrap();
        }
        assert!(
            cache.usage().1 <= 2500,
            "the budget holds: {:?}",
            cache.usage()
        );
        assert!(!cache.path(&k1).exists(), "the oldest went first");
        drop(cache);
        // reopened: what was cached is still there, and is served without the inner store
        let cache = DiskCache::open(inner.clone(), dir.path(), 2500, AtRest::Plain).unwrap();
        inner.tamper(&k3, |d| d[0] ^= 1);
        assert_eq!(cache.get(&k3).unwrap(), d3, "served from the disk copy");
        // a damaged disk copy is never served
        let mut bytes = std::fs::read(cache.path(&k2)).unwrap();
        bytes[0] ^= 1;
        std::fs::write(cache.path(&k2), bytes).unwrap();
        assert_eq!(cache.get(&k2).unwrap(), d2, "fetched again from the store");
    }
}
