//! In-memory block store: for unit tests and as a reference for the conformance suite.

use std::collections::HashMap;
use std::sync::RwLock;

use super::{BlockStore, PutOutcome, StoreError, Unchecked};
use crate::domain::BlockKey;

#[derive(Default)]
pub struct MemoryBlockStore {
    blocks: RwLock<HashMap<BlockKey, Vec<u8>>>,
}

impl MemoryBlockStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Test hook: replaces a stored block's bytes without changing its key.
    pub fn tamper(&self, key: &BlockKey, f: impl FnOnce(&mut Vec<u8>)) {
        if let Some(b) = self.blocks.write().expect("lock").get_mut(key) {
            f(b)
        }
    }

    pub fn stored_bytes(&self) -> u64 {
        self.blocks
            .read()
            .expect("lock")
            .values()
            .map(|b| b.len() as u64)
            .sum()
    }
}

impl BlockStore for MemoryBlockStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let mut blocks = self.blocks.write().expect("lock");
        if blocks.contains_key(key) {
            return Ok(PutOutcome::Duplicate);
        }
        blocks.insert(*key, data.to_vec());
        Ok(PutOutcome::Fresh)
    }

    fn get_unverified(&self, key: &BlockKey, _: Unchecked) -> Result<Vec<u8>, StoreError> {
        self.blocks
            .read()
            .expect("lock")
            .get(key)
            .cloned()
            .ok_or(StoreError::NotFound(*key, "memory"))
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        Ok(self.blocks.read().expect("lock").contains_key(key))
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.blocks.write().expect("lock").remove(key);
        Ok(())
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        Ok(self.blocks.read().expect("lock").keys().copied().collect())
    }

    fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        let blocks = self.blocks.read().expect("lock");
        Ok(Some(blocks.values().map(|b| b.len() as u64).sum()))
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
