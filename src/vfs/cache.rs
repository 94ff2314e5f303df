//! In-memory block cache: verified blocks by key, least recently used evicted past a byte budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;

use crate::domain::BlockKey;
use crate::store::{BlockStore, StoreError};

pub(crate) struct BlockCache {
    inner: Mutex<Inner>,
    /// One lock per block being fetched: a second reader of the same block waits for the first
    /// fetch instead of fetching it again (read-ahead and the reader often meet this way).
    inflight: Mutex<HashMap<BlockKey, Arc<Mutex<()>>>>,
    capacity: u64,
    /// Reads served from memory.
    pub hits: AtomicU64,
    /// Reads that had to fetch from the store.
    pub misses: AtomicU64,
    /// Blocks fetched by read-ahead before anyone asked.
    pub prefetched: AtomicU64,
    /// Blocks random reads fetched only parts of, with how many, most recent last.
    parted: Mutex<LruCache<BlockKey, u32>>,
}

/// Blocks remembered as read in part.
const PARTED_KEPT: usize = 4096;
/// Parts of a block fetched before the next read fetches it whole.
const PARTS_BEFORE_WHOLE: u32 = 1;

struct Inner {
    lru: LruCache<BlockKey, Arc<Vec<u8>>>,
    bytes: u64,
}

impl BlockCache {
    pub fn new(capacity: u64) -> BlockCache {
        BlockCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            inflight: Mutex::new(HashMap::new()),
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            prefetched: AtomicU64::new(0),
            parted: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(PARTED_KEPT).expect("non-zero"),
            )),
        }
    }

    /// Whether a random read of part of `key` should fetch that part alone: yes for a block
    /// not cached, until `PARTS_BEFORE_WHOLE` parts of it were fetched; the next read fetches
    /// it whole (and caches it). Sparse reads of a large file (a database's lookups) then
    /// fetch a few hundred KiB each instead of a whole block, and a block read in many places
    /// costs one small GET more. More parts before the whole block make sparse reads faster and
    /// reads of a whole file in random order slower (`bench/probe-s3.sh randr` measures both).
    pub fn take_part(&self, key: &BlockKey) -> bool {
        if self.contains(key) {
            return false;
        }
        let mut parted = self.parted.lock().expect("lock");
        let parts = parted.get(key).copied().unwrap_or(0);
        if parts >= PARTS_BEFORE_WHOLE {
            parted.pop(key);
            return false;
        }
        parted.put(*key, parts + 1);
        metrics::counter!(crate::metrics::BLOCK_CACHE, "result" => "part").increment(1);
        true
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        self.inner.lock().expect("lock").lru.contains(key)
    }

    fn get(&self, key: &BlockKey) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().expect("lock").lru.get(key).cloned()
    }

    /// The block if it is cached (not counted as a hit: for the page fill).
    pub fn cached(&self, key: &BlockKey) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().expect("lock").lru.peek(key).cloned()
    }

    fn insert(&self, key: BlockKey, data: Arc<Vec<u8>>) {
        if data.len() as u64 > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().expect("lock");
        if let Some(old) = inner.lru.put(key, data.clone()) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += data.len() as u64;
        while inner.bytes > self.capacity {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }

    /// Drops a block from the cache (a hint: a later read fetches it again).
    pub fn forget(&self, key: &BlockKey) {
        let mut inner = self.inner.lock().expect("lock");
        if let Some(old) = inner.lru.pop(key) {
            inner.bytes -= old.len() as u64;
        }
    }

    /// The block from the cache, or fetched (and verified) from the store and cached.
    pub fn fetch(
        &self,
        store: &dyn BlockStore,
        key: &BlockKey,
    ) -> Result<Arc<Vec<u8>>, StoreError> {
        self.fetch_for(store, key, &self.misses)
    }

    /// Warms the cache with a block nobody has asked for yet.
    pub fn prefetch(&self, store: &dyn BlockStore, key: &BlockKey) -> Result<(), StoreError> {
        self.fetch_for(store, key, &self.prefetched).map(drop)
    }

    fn fetch_for(
        &self,
        store: &dyn BlockStore,
        key: &BlockKey,
        on_fetch: &AtomicU64,
    ) -> Result<Arc<Vec<u8>>, StoreError> {
        if let Some(data) = self.get(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::BLOCK_CACHE, "result" => "hit").increment(1);
            return Ok(data);
        }
        let gate = self
            .inflight
            .lock()
            .expect("lock")
            .entry(*key)
            .or_default()
            .clone();
        let _fetching = gate.lock().expect("lock");
        if let Some(data) = self.get(key) {
            // fetched by whoever held the gate before us
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(data);
        }
        on_fetch.fetch_add(1, Ordering::Relaxed);
        let result = if std::ptr::eq(on_fetch, &self.prefetched) {
            "prefetch"
        } else {
            "miss"
        };
        metrics::counter!(crate::metrics::BLOCK_CACHE, "result" => result).increment(1);
        let result = store.get(key).map(Arc::new);
        if let Ok(data) = &result {
            self.insert(*key, data.clone());
        }
        self.inflight.lock().expect("lock").remove(key);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HashAlgo;
    use crate::store::MemoryBlockStore;

    #[test]
    fn evicts_least_recently_used_past_budget() {
        let store = MemoryBlockStore::new();
        let keys: Vec<BlockKey> = (0..4u8)
            .map(|i| {
                let data = vec![i; 100];
                let k = BlockKey::for_data(HashAlgo::Blake3, &data);
                store.put(&k, &data).unwrap();
                k
            })
            .collect();
        let cache = BlockCache::new(250);
        cache.fetch(&store, &keys[0]).unwrap();
        cache.fetch(&store, &keys[1]).unwrap();
        cache.fetch(&store, &keys[0]).unwrap(); // 0 is now most recent
        cache.fetch(&store, &keys[2]).unwrap(); // evicts 1
        assert!(cache.contains(&keys[0]) && cache.contains(&keys[2]) && !cache.contains(&keys[1]));
        assert_eq!(cache.hits.load(Ordering::Relaxed), 1);
    }
}
