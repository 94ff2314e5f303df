//! Blocks kept in the embedded volume's RocksDB database, beside its metadata.
//!
//! A block written here enters RocksDB's write-ahead log before the commit that names it, and
//! that log survives a power cut only as a prefix: whenever the commit survives, the block
//! does. A file closed without fsync thus never names a lost block after a power cut, and the
//! close costs no fsync. Values live in RocksDB's blob files (key-value separation), so
//! compactions move keys, not block bytes.

use std::sync::Arc;

use super::rocks::Db;
use crate::domain::BlockKey;
use crate::store::{BlockStore, PutOutcome, StoreError, Unchecked};

const BACKEND: &str = "rocksdb";
/// The column family that holds them.
pub(super) const CF: &str = "blocks";

/// The column family's options: values in blob files.
pub(super) fn options() -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.set_enable_blob_files(true);
    o.set_min_blob_size(0);
    o.set_enable_blob_gc(true);
    o
}

pub struct RocksBlockStore {
    db: Arc<Db>,
}

fn io(context: String, e: rocksdb::Error) -> StoreError {
    StoreError::io(BACKEND, context, std::io::Error::other(e.into_string()))
}

impl RocksBlockStore {
    pub(super) fn new(db: Arc<Db>) -> RocksBlockStore {
        RocksBlockStore { db }
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(CF)
            .expect("column family created at open")
    }
}

impl BlockStore for RocksBlockStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        if self.exists(key)? {
            return Ok(PutOutcome::Duplicate);
        }
        self.db
            .put_cf(self.cf(), key.to_bytes(), data)
            .map_err(|e| io(format!("storing block {key}"), e))?;
        Ok(PutOutcome::Fresh)
    }

    fn cheap_put(&self, _key: &BlockKey) -> bool {
        true
    }

    fn get_unverified(&self, key: &BlockKey, _: Unchecked) -> Result<Vec<u8>, StoreError> {
        self.db
            .get_cf(self.cf(), key.to_bytes())
            .map_err(|e| io(format!("reading block {key}"), e))?
            .ok_or(StoreError::NotFound(*key, BACKEND))
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(), key.to_bytes())
            .map_err(|e| io(format!("looking for block {key}"), e))?
            .is_some())
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.db
            .delete_cf(self.cf(), key.to_bytes())
            .map_err(|e| io(format!("deleting block {key}"), e))
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf());
        it.seek_to_first();
        while let Some(k) = it.key() {
            match BlockKey::from_bytes(k) {
                Some(key) => out.push(key),
                None => tracing::warn!("a key in RocksDB's {CF} column family is not a block key"),
            }
            it.next();
        }
        it.status()
            .map_err(|e| io("listing blocks".to_string(), e))?;
        Ok(out)
    }

    fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        let mut total = 0u64;
        let mut it = self.db.raw_iterator_cf(self.cf());
        it.seek_to_first();
        while let Some(v) = it.value() {
            total += v.len() as u64;
            it.next();
        }
        it.status()
            .map_err(|e| io("summing block sizes".to_string(), e))?;
        Ok(Some(total))
    }

    /// The write-ahead log, synced: every block put so far, and every commit before it.
    fn sync(&self) -> Result<(), StoreError> {
        self.db
            .flush_wal(true)
            .map_err(|e| io("syncing the write-ahead log".to_string(), e))
    }

    /// Nothing to wait for: the commit goes to the same log, after the block.
    fn settle(&self, _keys: &[BlockKey]) -> Result<(), StoreError> {
        Ok(())
    }
}
