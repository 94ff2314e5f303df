//! The frames layer: on a volume formatted with compression, each block is stored as frames
//! (`domain::frames`) in the store below, and read back from them. It sits right above each
//! adapter (under replication and tiering, which see blocks as they are), so every copy a
//! volume keeps is framed. A block is checked against its key once its frames are open; a
//! stored object that does not open is [`StoreError::Corrupt`], never wrong bytes.
//!
//! Part of a sealed block is read by its frames alone: a ranged read of the object's header
//! and index (kept per block in memory once read), then one of the frames that hold the part.
//! Each frame's tag checks it (and binds it to its block and place), so no other byte is
//! needed: two ranged GETs for the first read of a block on S3, one for each read after. An
//! unsealed (only compressed) block is read whole: its frames are checked by the block's key,
//! which covers all of it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::{BlockStore, PutOutcome, StoreError, StoreLayer, Unchecked, part_of};
use crate::domain::BlockKey;
use crate::domain::frames::{FrameCodec, Layout, frame_count};
use crate::domain::groups::{GroupHashes, RANGED_FROM};

/// Layouts kept in memory (each a few hundred bytes); forgotten all at once past this.
const LAYOUTS: usize = 4096;

pub struct Framed {
    inner: Arc<dyn BlockStore>,
    codec: Arc<FrameCodec>,
    /// The layouts of sealed blocks read in part.
    layouts: Mutex<HashMap<BlockKey, Arc<Layout>>>,
}

impl Framed {
    pub fn new(inner: Arc<dyn BlockStore>, codec: Arc<FrameCodec>) -> Framed {
        Framed {
            inner,
            codec,
            layouts: Mutex::default(),
        }
    }

    /// The layout of the stored block `key` names: from memory, or its object's first bytes.
    fn layout(&self, key: &BlockKey) -> Result<Arc<Layout>, StoreError> {
        if let Some(l) = self.layouts.lock().expect("layouts").get(key) {
            return Ok(l.clone());
        }
        let size = key.size as u64;
        let prefix_len = Layout::prefix_len(frame_count(size));
        let prefix = self
            .inner
            .get_unverified_range(key, 0..prefix_len, Unchecked(()))?;
        let layout = Arc::new(Layout::parse(&prefix, size).map_err(|e| {
            tracing::error!(block = %key, backend = self.inner.backend(), "stored block's header does not parse: {e}");
            self.corrupt(key)
        })?);
        let mut layouts = self.layouts.lock().expect("layouts");
        if layouts.len() >= LAYOUTS {
            layouts.clear();
        }
        layouts.insert(*key, layout.clone());
        Ok(layout)
    }

    /// `range` of a sealed block, from the frames that hold it.
    fn sealed_range(&self, key: &BlockKey, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let layout = self.layout(key)?;
        let (frames, span) = layout.frames_for(range.clone());
        let bytes = self.inner.get_unverified_range(key, span, Unchecked(()))?;
        let opened = self
            .codec
            .open(&key.digest, &layout, frames.clone(), &bytes)
            .map_err(|e| {
                // a layout kept from before the block was stored again is read afresh next time
                self.layouts.lock().expect("layouts").remove(key);
                tracing::error!(block = %key, backend = self.inner.backend(), "stored frames do not open: {e}");
                self.corrupt(key)
            })?;
        let at = frames.start as u64 * layout.group();
        let from = (range.start - at) as usize;
        Ok(opened[from..from + (range.end - range.start) as usize].to_vec())
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

    /// A large sealed block's part from its frames alone; otherwise the whole block, opened
    /// and checked, and the part cut from it.
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        let size = key.size as usize;
        let range = range.start.min(size)..range.end.min(size);
        if self.codec.sealed() && key.size as u64 >= RANGED_FROM && !range.is_empty() {
            return self.sealed_range(key, range.start as u64..range.end as u64);
        }
        Ok(part_of(&StoreLayer::get(self, key)?, range))
    }
}
