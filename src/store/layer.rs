//! A block store on top of another (`crate::layer`).

use std::ops::Range;
use std::time::Duration;

use super::{BlockStore, PutOutcome, StoreError, Unchecked};
use crate::domain::BlockKey;
use crate::domain::groups::GroupHashes;

crate::layer::layer_trait! {
    /// A layer of the block stack (`metered`, `retrying`, `disk_cache`, `writeback`). Every
    /// type that implements it is a [`BlockStore`]. `get` and `get_range` go to the store
    /// below's, which verifies: a layer that serves bytes of its own overrides them (not only
    /// `get_unverified`).
    pub trait StoreLayer: BlockStore {
        impl BlockStore {
        fn backend(&self) -> &'static str;
        fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError>;
        fn put_new_grouped(
            &self,
            key: &BlockKey,
            data: &[u8],
            groups: Option<&GroupHashes>
        ) -> Result<PutOutcome, StoreError>;
        fn cheap_put(&self, key: &BlockKey) -> bool;
        fn get_unverified(&self, key: &BlockKey, unchecked: Unchecked) -> Result<Vec<u8>, StoreError>;
        fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError>;
        fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError>;
        fn get_unverified_range(
            &self,
            key: &BlockKey,
            range: Range<u64>,
            unchecked: Unchecked
        ) -> Result<Vec<u8>, StoreError>;
        fn exists(&self, key: &BlockKey) -> Result<bool, StoreError>;
        fn delete(&self, key: &BlockKey) -> Result<(), StoreError>;
        fn list(&self) -> Result<Vec<BlockKey>, StoreError>;
        fn stored_bytes(&self) -> Result<Option<u64>, StoreError>;
        fn sync(&self) -> Result<(), StoreError>;
        fn settle(&self, keys: &[BlockKey]) -> Result<(), StoreError>;
        fn drain(&self, limit: Duration) -> Result<(), StoreError>;
        }
    }
}
