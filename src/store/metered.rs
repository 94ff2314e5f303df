//! The metering layer: records what the store below does (see `crate::metrics`): fresh and
//! deduplicated puts, bytes moved, call durations, and each failed attempt with its kind (it
//! sits below the retry layer, so every attempt passes through it).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use metrics::{counter, histogram};

use super::{BlockStore, PutOutcome, StoreError, Unchecked};
use crate::domain::BlockKey;
use crate::domain::groups::GroupHashes;
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
            StoreError::Io { transience, .. } => transience.name(),
        };
        counter!(m::BACKEND_FAILURES, "backend" => self.inner.backend(), "class" => class)
            .increment(1);
    }

    /// `r`, its failure counted.
    fn counted<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    /// Runs one download, recording its time and the bytes it fetched.
    /// A part of a block, timed: the store counts the bytes it cost, which it alone knows (the
    /// S3 store: the groups or frames that hold the part, or the whole block).
    fn fetched_part(
        &self,
        get: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let t = Instant::now();
        let r = get();
        histogram!(m::DOWNLOAD_DURATION, "backend" => self.inner.backend())
            .record(t.elapsed().as_secs_f64());
        self.counted(r)
    }

    fn fetched(
        &self,
        get: impl FnOnce() -> Result<Vec<u8>, StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let backend = self.inner.backend();
        let t = Instant::now();
        let r = get();
        histogram!(m::DOWNLOAD_DURATION, "backend" => backend).record(t.elapsed().as_secs_f64());
        match &r {
            Ok(data) => {
                counter!(m::BYTES_FETCHED, "backend" => backend).increment(data.len() as u64)
            }
            Err(e) => self.failed(e),
        }
        r
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

impl super::StoreLayer for Metered {
    fn inner(&self) -> &dyn BlockStore {
        self.inner.as_ref()
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

    /// Verified by the inner store's `get`; timed and counted here.
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.fetched(|| self.inner.get(key))
    }

    /// Metered as `get`: the frames layer above reads through here (`store::framed`).
    fn get_unverified(&self, key: &BlockKey, unchecked: Unchecked) -> Result<Vec<u8>, StoreError> {
        self.fetched(|| self.inner.get_unverified(key, unchecked))
    }

    /// Timed here; the bytes it cost are counted by the store, which alone knows how much it
    /// fetched for the part (the S3 store: the groups that hold it, or the whole block).
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        self.fetched_part(|| self.inner.get_range(key, range))
    }

    /// Timed as `get_range`; the store counts the bytes.
    fn get_unverified_range(
        &self,
        key: &BlockKey,
        range: Range<u64>,
        unchecked: Unchecked,
    ) -> Result<Vec<u8>, StoreError> {
        self.fetched_part(|| self.inner.get_unverified_range(key, range, unchecked))
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        self.counted(self.inner.exists(key))
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.counted(self.inner.delete(key))
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        self.counted(self.inner.list())
    }
}
