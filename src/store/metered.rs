//! A block store decorator that records what the store does (see `crate::metrics`): fresh and
//! deduplicated puts, bytes moved, call durations, failures.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use metrics::{counter, histogram};

use super::{BlockStore, PutOutcome, StoreError};
use crate::core::BlockKey;
use crate::core::groups::GroupHashes;
use crate::metrics as m;

pub struct Metered {
    inner: Arc<dyn BlockStore>,
}

impl Metered {
    pub fn new(inner: Arc<dyn BlockStore>) -> Metered {
        Metered { inner }
    }

    fn failed(&self, e: &StoreError) {
        let class = match e {
            StoreError::Corrupt(..) => "corrupt",
            StoreError::NotFound(..) => "not_found",
            // the S3 adapter counts each failed attempt with its class itself
            StoreError::Io { .. } if self.inner.backend() == "s3" => return,
            StoreError::Io { .. } => "error",
        };
        counter!(m::BACKEND_FAILURES, "backend" => self.inner.backend(), "class" => class)
            .increment(1);
    }

    /// Runs one upload, recording its time and what it ingested.
    fn timed_put(
        &self,
        data: &[u8],
        put: impl FnOnce() -> Result<PutOutcome, StoreError>,
    ) -> Result<PutOutcome, StoreError> {
        let backend = self.inner.backend();
        let t = Instant::now();
        let r = put();
        histogram!(m::UPLOAD_DURATION, "backend" => backend).record(t.elapsed().as_secs_f64());
        match &r {
            Ok(PutOutcome::Fresh) => {
                counter!(m::BYTES_INGESTED, "backend" => backend).increment(data.len() as u64);
                counter!(m::BLOCKS_INGESTED, "backend" => backend).increment(1);
            }
            Ok(PutOutcome::Duplicate) => {
                counter!(m::BLOCKS_DEDUPLICATED, "backend" => backend).increment(1)
            }
            Err(e) => self.failed(e),
        }
        r
    }
}

impl BlockStore for Metered {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.timed_put(data, || self.inner.put(key, data))
    }

    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.timed_put(data, || self.inner.put_new_grouped(key, data, groups))
    }

    fn cheap_put(&self, key: &BlockKey) -> bool {
        self.inner.cheap_put(key)
    }

    fn get_unverified(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.inner.get_unverified(key)
    }

    /// Verified by the inner store's `get`; timed and counted here.
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        let backend = self.inner.backend();
        let t = Instant::now();
        let r = self.inner.get(key);
        histogram!(m::DOWNLOAD_DURATION, "backend" => backend).record(t.elapsed().as_secs_f64());
        match &r {
            Ok(data) => {
                counter!(m::BYTES_FETCHED, "backend" => backend).increment(data.len() as u64)
            }
            Err(e) => self.failed(e),
        }
        r
    }

    /// Timed here; the bytes it cost are counted by the store, which alone knows how much it
    /// fetched for the part (the S3 store: the groups that hold it, or the whole block).
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        let t = Instant::now();
        let r = self.inner.get_range(key, range);
        histogram!(m::DOWNLOAD_DURATION, "backend" => self.inner.backend())
            .record(t.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        self.inner.exists(key)
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.inner.delete(key)
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        self.inner.list()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.inner.sync()
    }

    fn settle(&self, keys: &[BlockKey]) -> Result<(), StoreError> {
        self.inner.settle(keys)
    }
}
