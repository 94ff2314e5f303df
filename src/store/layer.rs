//! A block store on top of another, overriding only what it changes: every operation it does
//! not implement goes to the store below, so a new operation of the port reaches every
//! adapter through every layer without a line in the layers.

use std::ops::Range;
use std::time::Duration;

use super::{BlockStore, PutOutcome, StoreError};
use crate::domain::BlockKey;
use crate::domain::groups::GroupHashes;

/// A layer of the block stack (`metered`, `retrying`, `disk_cache`, `writeback`). Every type
/// that implements it is a [`BlockStore`]. `get` and `get_range` go to the store below's,
/// which verifies: a layer that serves bytes of its own overrides them (not only
/// `get_unverified`).
pub trait StoreLayer: Send + Sync {
    /// The store below.
    fn inner(&self) -> &dyn BlockStore;

    fn backend(&self) -> &'static str {
        self.inner().backend()
    }
    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.inner().put(key, data)
    }
    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.inner().put_new_grouped(key, data, groups)
    }
    fn cheap_put(&self, key: &BlockKey) -> bool {
        self.inner().cheap_put(key)
    }
    fn get_unverified(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.inner().get_unverified(key)
    }
    /// Verified by the store below.
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.inner().get(key)
    }
    /// Verified by the store below.
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        self.inner().get_range(key, range)
    }
    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        self.inner().exists(key)
    }
    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.inner().delete(key)
    }
    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        self.inner().list()
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.inner().sync()
    }
    fn settle(&self, keys: &[BlockKey]) -> Result<(), StoreError> {
        self.inner().settle(keys)
    }
    fn drain(&self, limit: Duration) -> Result<(), StoreError> {
        self.inner().drain(limit)
    }
}

impl<L: StoreLayer> BlockStore for L {
    fn backend(&self) -> &'static str {
        StoreLayer::backend(self)
    }
    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        StoreLayer::put(self, key, data)
    }
    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        StoreLayer::put_new_grouped(self, key, data, groups)
    }
    fn cheap_put(&self, key: &BlockKey) -> bool {
        StoreLayer::cheap_put(self, key)
    }
    fn get_unverified(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        StoreLayer::get_unverified(self, key)
    }
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        StoreLayer::get(self, key)
    }
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        StoreLayer::get_range(self, key, range)
    }
    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        StoreLayer::exists(self, key)
    }
    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        StoreLayer::delete(self, key)
    }
    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        StoreLayer::list(self)
    }
    fn sync(&self) -> Result<(), StoreError> {
        StoreLayer::sync(self)
    }
    fn settle(&self, keys: &[BlockKey]) -> Result<(), StoreError> {
        StoreLayer::settle(self, keys)
    }
    fn drain(&self, limit: Duration) -> Result<(), StoreError> {
        StoreLayer::drain(self, limit)
    }
}
