//! The `BlockStore` port: immutable blocks stored under their content key, and its adapters.
//!
//! Every adapter implements the raw operations; [`BlockStore::get`] is the one way callers fetch
//! a block, and it verifies the bytes against the key. A mismatch is [`StoreError::Corrupt`]
//! (an I/O error to applications, and an error log), never wrong bytes.

pub mod at_rest;
mod block_files;
pub mod disk_cache;
pub mod framed;
mod layer;
pub mod local;
pub mod memory;
pub mod metered;
mod pending_sync;
pub mod pg;
pub mod replicated;
pub mod retrying;
pub mod s3;
mod staging;
pub mod tiered;
pub mod writeback;

use std::ops::Range;

use crate::domain::BlockKey;
use crate::domain::groups::GroupHashes;

pub use layer::StoreLayer;
pub use local::LocalBlockStore;
pub use memory::MemoryBlockStore;
pub use pg::PgBlockStore;
pub use s3::S3BlockStore;

/// Whether `put` wrote new content or found it already stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Fresh,
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block {0} is missing from the {1} store")]
    NotFound(BlockKey, &'static str),
    #[error("block {0} in the {1} store does not match its key")]
    Corrupt(BlockKey, &'static str),
    #[error("{backend} store: {context}: {source}")]
    Io {
        backend: &'static str,
        context: String,
        #[source]
        source: std::io::Error,
        transience: Transience,
    },
}

/// Whether an operation that failed may succeed if tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transience {
    /// Retrying will not help: a refusal, a bad request, a local disk error.
    Permanent,
    /// The backend could not be reached or failed on its side (5xx, timeouts, lost
    /// connections).
    Transient,
    /// The backend asked its clients to slow down (503 SlowDown, 429).
    Throttled,
}

impl Transience {
    /// The name metrics and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Transience::Permanent => "permanent",
            Transience::Transient => "transient",
            Transience::Throttled => "throttled",
        }
    }
}

impl StoreError {
    /// A failure retrying will not mend.
    pub fn io(backend: &'static str, context: impl Into<String>, source: std::io::Error) -> Self {
        Self::failed(backend, context, source, Transience::Permanent)
    }

    /// A failure of the given kind.
    pub fn failed(
        backend: &'static str,
        context: impl Into<String>,
        source: std::io::Error,
        transience: Transience,
    ) -> Self {
        StoreError::Io {
            backend,
            context: context.into(),
            source,
            transience,
        }
    }

    /// Whether trying again may help (`retrying::Retrying` does).
    pub fn transience(&self) -> Transience {
        match self {
            StoreError::Io { transience, .. } => *transience,
            StoreError::NotFound(..) | StoreError::Corrupt(..) => Transience::Permanent,
        }
    }
}

/// Stores a block no extent references (`put_new`), for a writer about to reference it. A copy
/// found already there may be a gc candidate: `unmark` takes its mark away, then the copy is
/// looked for again and stored anew if gc deleted it meanwhile. gc, for its part, puts a block
/// back when its mark went during the deletion (`maint::gc`): whichever looks last sees the other.
/// `groups`: the block's group hashes, when the caller computed them with its key.
pub fn store_for_reference<E: From<StoreError>>(
    store: &dyn BlockStore,
    key: &BlockKey,
    data: &[u8],
    groups: Option<&GroupHashes>,
    unmark: impl FnOnce(&BlockKey) -> Result<(), E>,
) -> Result<(), E> {
    if store.put_new_grouped(key, data, groups)? == PutOutcome::Duplicate {
        unmark(key)?;
        if !store.exists(key)? {
            tracing::info!(block = %key, "a block deleted by gc as it was stored: stored again");
            store.put_new_grouped(key, data, groups)?;
        }
    }
    Ok(())
}

/// The bytes of `range` in a whole block (none past its end): `get_range` from a whole copy.
fn part_of(block: &[u8], range: Range<usize>) -> Vec<u8> {
    block.get(range).map(<[u8]>::to_vec).unwrap_or_default()
}

/// Leave to read a block without checking it against its key, which only this module gives
/// (`BlockStore::get`, which checks what it reads): no code elsewhere can skip the check.
#[derive(Clone, Copy, Debug)]
pub struct Unchecked(());

/// Storage for immutable, content-addressed blocks.
pub trait BlockStore: Send + Sync {
    /// Short name of the backend, used in logs and metrics (`local`, `memory`, …).
    fn backend(&self) -> &'static str;

    /// Stores `data` under `key` (which must name `data`). Idempotent: storing a block twice keeps
    /// one copy and reports [`PutOutcome::Duplicate`] when the adapter can tell.
    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError>;

    /// Stores a block the caller knows the volume references no copy of, without checking
    /// the store for one first (the S3 store skips its HEAD). Storing a block that is there
    /// after all is harmless: same key, same bytes.
    fn put_new(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.put_new_grouped(key, data, None)
    }

    /// As `put_new`, with the block's group hashes (`domain::groups`) computed with its key, for
    /// a store that keeps them (S3, for verified ranged reads; it computes them itself when
    /// they are not given). A store with its own `put_new` implements this one (`put_new`
    /// comes here); adapters that wrap another store pass the hashes on.
    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        _groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.put(key, data)
    }

    /// Whether storing the block costs no more than asking the volume's block index whether
    /// some file references it (a single-statement insert into the metadata database): the
    /// write path then stores it without asking.
    fn cheap_put(&self, _key: &BlockKey) -> bool {
        false
    }

    /// The stored bytes, unverified: [`BlockStore::get`] checks them. Only this module can
    /// call it (it alone makes an [`Unchecked`]); a layer passes the one it was given on.
    fn get_unverified(&self, key: &BlockKey, unchecked: Unchecked) -> Result<Vec<u8>, StoreError>;

    /// Bytes `range` of the block's stored object (its frames, on a framed volume), unverified:
    /// the frames layer above checks what it opens (`framed`). By default the whole object is
    /// read and cut; a store that can fetch a range (S3) fetches only it.
    fn get_unverified_range(
        &self,
        key: &BlockKey,
        range: Range<u64>,
        unchecked: Unchecked,
    ) -> Result<Vec<u8>, StoreError> {
        let all = self.get_unverified(key, unchecked)?;
        let end = (range.end as usize).min(all.len());
        Ok(all[(range.start as usize).min(end)..end].to_vec())
    }

    /// Whether the block is stored (without reading it).
    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError>;

    /// Removes the block; removing a missing block is not an error.
    fn delete(&self, key: &BlockKey) -> Result<(), StoreError>;

    /// Every stored block key, in no particular order.
    fn list(&self) -> Result<Vec<BlockKey>, StoreError>;

    /// The bytes the store holds for its blocks, in their stored form (frames: compressed,
    /// sealed), when it can tell without reading them.
    fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Makes every block `put` so far durable (survives power loss).
    fn sync(&self) -> Result<(), StoreError>;

    /// Called before a metadata commit that names `keys`, blocks this process just stored:
    /// returns once no power cut can leave the commit durable and a block it names lost. By
    /// default the blocks are synced; a store whose puts are durable on return (S3,
    /// PostgreSQL) or ordered before the commit by the metadata engine's own log (small
    /// blocks in RocksDB, `meta::rocks_blocks`) has nothing to wait for. Wrappers pass it on.
    fn settle(&self, _keys: &[BlockKey]) -> Result<(), StoreError> {
        self.sync()
    }

    /// Waits (at most `limit`) until blocks accepted for a later upload have reached the
    /// backend, and fails if some have not: only a write-back store ([`writeback::WriteBack`])
    /// has any.
    fn drain(&self, _limit: std::time::Duration) -> Result<(), StoreError> {
        Ok(())
    }

    /// The block's bytes, verified against its key.
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        let data = self.get_unverified(key, Unchecked(()))?;
        if !key.matches(&data) {
            tracing::error!(block = %key, backend = self.backend(), "block content does not match its key");
            return Err(StoreError::Corrupt(*key, self.backend()));
        }
        Ok(data)
    }

    /// Part of a block, verified: by default the whole block is fetched and checked, since a
    /// byte range alone cannot be checked against the key. An adapter that can check a range on
    /// its own fetches less (S3, against group hashes that merge into the key: `domain::groups`);
    /// unverified bytes never reach a reader either way.
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        let data = self.get(key)?;
        Ok(part_of(&data, range))
    }
}
