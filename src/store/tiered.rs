//! Small blocks in one store, the rest in another, chosen by the size in the block's key (so a
//! read knows where to look without an index).
//!
//! A PostgreSQL volume with blocks in S3 keeps blocks under 64 KiB in its database: a small
//! file's close then costs one INSERT on the connection the metadata already uses, instead of
//! an S3 PUT (about 2-5 ms on a loopback S3 server, far more on a real one). The price is
//! database space: small blocks are a small share of most volumes' bytes, and `format
//! --small-blocks 0` turns it off.

use std::ops::Range;
use std::sync::Arc;

use super::{BlockStore, PutOutcome, StoreError};
use crate::core::BlockKey;
use crate::core::groups::GroupHashes;

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

    fn tier(&self, key: &BlockKey) -> &dyn BlockStore {
        if key.size < self.below {
            self.small.as_ref()
        } else {
            self.large.as_ref()
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

    fn get_unverified(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.tier(key).get_unverified(key)
    }

    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.tier(key).get(key)
    }

    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        self.tier(key).get_range(key, range)
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        self.tier(key).exists(key)
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.tier(key).delete(key)
    }

    /// The blocks stored where reads look for them: a copy in the other tier (a small block
    /// in the large store, say, from before the volume kept small blocks apart) is not read,
    /// so it does not count.
    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let mut all: Vec<BlockKey> = self
            .small
            .list()?
            .into_iter()
            .filter(|k| k.size < self.below)
            .collect();
        all.extend(
            self.large
                .list()?
                .into_iter()
                .filter(|k| k.size >= self.below),
        );
        Ok(all)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.small.sync()?;
        self.large.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::HashAlgo;
    use crate::store::MemoryBlockStore;

    #[test]
    fn conformance_and_blocks_land_by_size() {
        let (small, large) = (
            Arc::new(MemoryBlockStore::new()),
            Arc::new(MemoryBlockStore::new()),
        );
        let t = Tiered::new(small.clone(), large.clone(), 1000);
        crate::store::conformance::run_all(&t);
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
}
