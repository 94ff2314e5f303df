//! Small blocks in one store, the rest in another, chosen by the size in the block's key (so a
//! read knows where to look without an index).
//!
//! A PostgreSQL volume with blocks in S3 keeps blocks under 64 KiB in its database: a small
//! file's close then costs one INSERT on the connection the metadata already uses, instead of
//! an S3 PUT (milliseconds even on a loopback S3 server, far more on a real one). The price is
//! database space: small blocks are a small share of most volumes' bytes, and `format
//! --small-blocks 0` turns it off.
//!
//! An embedded volume keeps blocks shorter than its chunker's full ones (small files, tails)
//! in RocksDB (`meta::rocks_blocks`): they reach its write-ahead log before the commit that
//! names them, so a power cut never leaves a file naming a lost block, and closing a small
//! file needs no fsync.
//!
//! A small block the small store lacks is looked for in the large one: a volume that took up
//! a small tier later (every embedded volume formatted before it had one) keeps its earlier
//! small blocks there.

use std::ops::Range;
use std::sync::Arc;

use super::{BlockStore, PutOutcome, StoreError, Unchecked};
use crate::domain::BlockKey;
use crate::domain::groups::GroupHashes;

pub struct Tiered {
    small: Arc<dyn BlockStore>,
    large: Arc<dyn BlockStore>,
    /// Blocks shorter than this go to `small`.
    below: u32,
}

impl Tiered {
    pub fn new(small: Arc<dyn BlockStore>, large: Arc<dyn BlockStore>, below: u32) -> Tiered {
        Tiered {
            small,
            large,
            below,
        }
    }

    fn is_small(&self, key: &BlockKey) -> bool {
        key.size < self.below
    }

    fn tier(&self, key: &BlockKey) -> &dyn BlockStore {
        if self.is_small(key) {
            self.small.as_ref()
        } else {
            self.large.as_ref()
        }
    }

    /// `read` from the block's tier; a small block the small store lacks, from the large one.
    fn either<T>(
        &self,
        key: &BlockKey,
        read: impl Fn(&dyn BlockStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match read(self.tier(key)) {
            Err(StoreError::NotFound(..)) if self.is_small(key) => read(self.large.as_ref()),
            r => r,
        }
    }
}

impl BlockStore for Tiered {
    fn backend(&self) -> &'static str {
        "tiered"
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.tier(key).put(key, data)
    }

    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.tier(key).put_new_grouped(key, data, groups)
    }

    fn cheap_put(&self, key: &BlockKey) -> bool {
        self.tier(key).cheap_put(key)
    }

    fn get_unverified(&self, key: &BlockKey, unchecked: Unchecked) -> Result<Vec<u8>, StoreError> {
        self.either(key, |s| s.get_unverified(key, unchecked))
    }

    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.either(key, |s| s.get(key))
    }

    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        self.either(key, |s| s.get_range(key, range.clone()))
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        Ok(self.tier(key).exists(key)? || (self.is_small(key) && self.large.exists(key)?))
    }

    /// Every copy: a small block may have one in each store.
    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        if self.is_small(key) {
            self.large.delete(key)?;
        }
        self.tier(key).delete(key)
    }

    /// The blocks stored where reads look for them: a large block's copy in the small store
    /// is never read, so it does not count.
    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let mut all: Vec<BlockKey> = self
            .small
            .list()?
            .into_iter()
            .filter(|k| self.is_small(k))
            .collect();
        all.extend(self.large.list()?);
        all.sort();
        all.dedup();
        Ok(all)
    }

    fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        Ok(
            match (self.small.stored_bytes()?, self.large.stored_bytes()?) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            },
        )
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.small.sync()?;
        self.large.sync()
    }

    fn settle(&self, keys: &[BlockKey]) -> Result<(), StoreError> {
        let (small, large): (Vec<BlockKey>, Vec<BlockKey>) =
            keys.iter().partition(|k| self.is_small(k));
        if !small.is_empty() {
            self.small.settle(&small)?;
        }
        if !large.is_empty() {
            self.large.settle(&large)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HashAlgo;
    use crate::store::MemoryBlockStore;

    #[test]
    fn blocks_land_by_size() {
        let (small, large) = (
            Arc::new(MemoryBlockStore::new()),
            Arc::new(MemoryBlockStore::new()),
        );
        let t = Tiered::new(small.clone(), large.clone(), 1000);
        let (a, b) = (vec![1u8; 999], vec![2u8; 1000]);
        let (ka, kb) = (
            BlockKey::for_data(HashAlgo::Blake3, &a),
            BlockKey::for_data(HashAlgo::Blake3, &b),
        );
        t.put(&ka, &a).unwrap();
        t.put(&kb, &b).unwrap();
        assert!(small.exists(&ka).unwrap() && !large.exists(&ka).unwrap());
        assert!(large.exists(&kb).unwrap() && !small.exists(&kb).unwrap());
        assert_eq!(t.get(&ka).unwrap(), a);
        let mut listed = t.list().unwrap();
        listed.retain(|k| *k == ka || *k == kb);
        assert_eq!(listed.len(), 2);
        t.delete(&ka).unwrap();
        assert!(!t.exists(&ka).unwrap());
    }

    #[test]
    fn a_small_block_stored_before_the_small_tier_is_still_read_and_deleted() {
        let (small, large) = (
            Arc::new(MemoryBlockStore::new()),
            Arc::new(MemoryBlockStore::new()),
        );
        let old = vec![7u8; 500];
        let key = BlockKey::for_data(HashAlgo::Blake3, &old);
        large.put(&key, &old).unwrap();
        let t = Tiered::new(small.clone(), large.clone(), 1000);
        assert!(t.exists(&key).unwrap());
        assert_eq!(t.get(&key).unwrap(), old);
        assert_eq!(t.get_range(&key, 10..20).unwrap(), old[10..20]);
        assert_eq!(t.list().unwrap(), vec![key]);
        t.put(&key, &old).unwrap();
        assert_eq!(t.list().unwrap(), vec![key], "one key for two copies");
        t.delete(&key).unwrap();
        assert!(!small.exists(&key).unwrap() && !large.exists(&key).unwrap());
    }
}
