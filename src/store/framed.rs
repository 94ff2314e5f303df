//! The frames layer: on a volume formatted with compression, each block is stored as frames
//! (`domain::frames`) in the store below, and read back from them. It sits right above each
//! adapter (under replication and tiering, which see blocks as they are), so every copy a
//! volume keeps is framed. A block is checked against its key once its frames are open; a
//! stored object that does not open is [`StoreError::Corrupt`], never wrong bytes.

use std::ops::Range;
use std::sync::Arc;

use super::{BlockStore, PutOutcome, StoreError, StoreLayer, Unchecked, part_of};
use crate::domain::BlockKey;
use crate::domain::frames::FrameCodec;
use crate::domain::groups::GroupHashes;

pub struct Framed {
    inner: Arc<dyn BlockStore>,
    codec: Arc<FrameCodec>,
}

impl Framed {
    pub fn new(inner: Arc<dyn BlockStore>, codec: Arc<FrameCodec>) -> Framed {
        Framed { inner, codec }
    }

    /// A damaged stored copy, counted as the meter below counts those it sees itself (the
    /// damage shows only once the frames are open, above it).
    fn corrupt(&self, key: &BlockKey) -> StoreError {
        let backend = self.inner.backend();
        metrics::counter!(crate::metrics::BACKEND_FAILURES, "backend" => backend, "class" => "corrupt")
            .increment(1);
        StoreError::Corrupt(*key, backend)
    }

    /// Whether `stored` is a framed copy of the block `key` names (an adapter's check of a
    /// copy it finds already stored: `LocalBlockStore::with_stored_check`).
    pub fn holds(codec: &FrameCodec, key: &BlockKey, stored: &[u8]) -> bool {
        codec
            .decode(&key.digest, key.size as u64, stored)
            .is_ok_and(|data| key.matches(&data))
    }
}

impl StoreLayer for Framed {
    fn inner(&self) -> &dyn BlockStore {
        self.inner.as_ref()
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.inner.put(key, &self.codec.encode(&key.digest, data))
    }

    /// The group hashes given are the block's, not its frames': they stay here.
    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        _groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.inner
            .put_new_grouped(key, &self.codec.encode(&key.digest, data), None)
    }

    /// The frames opened (a frame that does not open is damage); the key is checked by `get`.
    fn get_unverified(&self, key: &BlockKey, unchecked: Unchecked) -> Result<Vec<u8>, StoreError> {
        let stored = self.inner.get_unverified(key, unchecked)?;
        self.codec
            .decode(&key.digest, key.size as u64, &stored)
            .map_err(|e| {
                tracing::error!(block = %key, backend = self.inner.backend(), "stored block does not open: {e}");
                self.corrupt(key)
            })
    }

    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        let data = StoreLayer::get_unverified(self, key, Unchecked(()))?;
        if !key.matches(&data) {
            tracing::error!(block = %key, backend = self.inner.backend(), "block content does not match its key");
            return Err(self.corrupt(key));
        }
        Ok(data)
    }

    /// The whole block, opened and checked, and the part cut from it: frames are fetched whole.
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        Ok(part_of(&StoreLayer::get(self, key)?, range))
    }
}
