//! The retry layer: an operation that fails transiently (`StoreError::transience`) is tried
//! again under the backend's [`Backoff`] until the layer's patience runs out, so a server
//! that is away for a while only delays its callers. Permanent failures return at once.
//! Every operation of a block store is idempotent (blocks are immutable and named by their
//! content), so any of them may be repeated.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use super::{BlockStore, PutOutcome, StoreError, Transience, Unchecked};
use crate::domain::BlockKey;
use crate::domain::groups::GroupHashes;
use crate::retry::Backoff;

pub struct Retrying {
    inner: Arc<dyn BlockStore>,
    backoff: Backoff,
    patience: Duration,
}

impl Retrying {
    pub fn new(inner: Arc<dyn BlockStore>, backoff: Backoff, patience: Duration) -> Retrying {
        Retrying {
            inner,
            backoff,
            patience,
        }
    }

    /// Runs `f` until it succeeds, fails permanently, or the patience is spent.
    fn retried<T>(
        &self,
        what: &str,
        key: Option<&BlockKey>,
        mut f: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempts = self.backoff.start(Some(self.patience));
        loop {
            let e = match f() {
                Err(e) if e.transience() != Transience::Permanent => e,
                done => return done,
            };
            let (backend, attempt) = (self.inner.backend(), attempts.attempt);
            let target = key.map(|k| k.to_string()).unwrap_or_default();
            match attempts.next_pause() {
                Some(pause) => {
                    tracing::warn!(backend, attempt, "{what} {target}: {e}; retrying");
                    std::thread::sleep(pause);
                }
                None => {
                    tracing::error!(backend, attempt, "{what} {target}: {e}; giving up");
                    return Err(e);
                }
            }
        }
    }
}

impl super::StoreLayer for Retrying {
    fn inner(&self) -> &dyn BlockStore {
        self.inner.as_ref()
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.retried("PUT", Some(key), || self.inner.put(key, data))
    }

    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.retried("PUT", Some(key), || {
            self.inner.put_new_grouped(key, data, groups)
        })
    }

    fn get_unverified(&self, key: &BlockKey, unchecked: Unchecked) -> Result<Vec<u8>, StoreError> {
        self.retried("GET", Some(key), || {
            self.inner.get_unverified(key, unchecked)
        })
    }

    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.retried("GET", Some(key), || self.inner.get(key))
    }

    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        self.retried("GET", Some(key), || {
            self.inner.get_range(key, range.clone())
        })
    }

    fn get_unverified_range(
        &self,
        key: &BlockKey,
        range: Range<u64>,
        unchecked: Unchecked,
    ) -> Result<Vec<u8>, StoreError> {
        self.retried("GET", Some(key), || {
            self.inner
                .get_unverified_range(key, range.clone(), unchecked)
        })
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        self.retried("HEAD", Some(key), || self.inner.exists(key))
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.retried("DELETE", Some(key), || self.inner.delete(key))
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        self.retried("LIST", None, || self.inner.list())
    }
}
