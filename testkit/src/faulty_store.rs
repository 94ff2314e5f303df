//! A block store layer that fails, delays or forgets what a test tells it to: an unreachable
//! server, a run of failures of one kind, a slow backend, a power cut that loses what was
//! never synced. Faults are injected here, in the layer, not by hoping for timing.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graviton::domain::BlockKey;
use graviton::domain::groups::GroupHashes;
use graviton::store::{BlockStore, PutOutcome, StoreError, StoreLayer, Transience, Unchecked};

pub struct FaultyStore {
    inner: Arc<dyn BlockStore>,
    plan: Mutex<Plan>,
    /// Blocks put since the last sync (or the `settle` naming them): what a power cut loses.
    unsynced: Mutex<HashSet<BlockKey>>,
}

#[derive(Default)]
struct Plan {
    down_until: Option<Instant>,
    failures: Vec<Transience>,
    delay: Duration,
    calls: u64,
    failed: u64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn BlockStore>) -> FaultyStore {
        FaultyStore {
            inner,
            plan: Mutex::default(),
            unsynced: Mutex::default(),
        }
    }

    /// Every operation fails as an unreachable server's would, for `d` from now.
    pub fn go_down_for(&self, d: Duration) {
        self.plan.lock().unwrap().down_until = Some(Instant::now() + d);
    }

    /// The next `n` operations fail with `transience`.
    pub fn fail_next(&self, n: usize, transience: Transience) {
        self.plan.lock().unwrap().failures = vec![transience; n];
    }

    /// Every operation waits `d` before it runs.
    pub fn delay_each(&self, d: Duration) {
        self.plan.lock().unwrap().delay = d;
    }

    /// (operations asked for, operations failed).
    pub fn counts(&self) -> (u64, u64) {
        let p = self.plan.lock().unwrap();
        (p.calls, p.failed)
    }

    /// A power cut: every block put since it was last synced is gone. Returns how many.
    pub fn crash(&self) -> usize {
        let lost: Vec<BlockKey> = self.unsynced.lock().unwrap().drain().collect();
        for key in &lost {
            self.inner.delete(key).expect("dropping an unsynced block");
        }
        lost.len()
    }

    /// Applies the plan to one operation.
    fn fault(&self, what: &str) -> Result<(), StoreError> {
        let (delay, failure) = {
            let mut p = self.plan.lock().unwrap();
            p.calls += 1;
            let down = p.down_until.is_some_and(|t| Instant::now() < t);
            let failure = match down {
                true => Some(Transience::Transient),
                false => p.failures.pop(),
            };
            p.failed += failure.is_some() as u64;
            (p.delay, failure)
        };
        std::thread::sleep(delay);
        match failure {
            Some(t) => Err(StoreError::failed(
                "faulty",
                what,
                std::io::Error::other(format!("injected {} failure", t.name())),
                t,
            )),
            None => Ok(()),
        }
    }

    fn put_with(
        &self,
        key: &BlockKey,
        put: impl FnOnce() -> Result<PutOutcome, StoreError>,
    ) -> Result<PutOutcome, StoreError> {
        self.fault("put")?;
        let r = put()?;
        if r == PutOutcome::Fresh {
            self.unsynced.lock().unwrap().insert(*key);
        }
        Ok(r)
    }
}

impl StoreLayer for FaultyStore {
    fn inner(&self) -> &dyn BlockStore {
        self.inner.as_ref()
    }
    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.put_with(key, || self.inner.put(key, data))
    }
    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.put_with(key, || self.inner.put_new_grouped(key, data, groups))
    }
    fn get_unverified(&self, key: &BlockKey, unchecked: Unchecked) -> Result<Vec<u8>, StoreError> {
        self.fault("get")?;
        self.inner.get_unverified(key, unchecked)
    }
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.fault("get")?;
        self.inner.get(key)
    }
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        self.fault("get")?;
        self.inner.get_range(key, range)
    }
    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        self.fault("exists")?;
        self.inner.exists(key)
    }
    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.fault("delete")?;
        self.inner.delete(key)
    }
    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        self.fault("list")?;
        self.inner.list()
    }
    fn sync(&self) -> Result<(), StoreError> {
        self.fault("sync")?;
        self.inner.sync()?;
        self.unsynced.lock().unwrap().clear();
        Ok(())
    }
    fn settle(&self, keys: &[BlockKey]) -> Result<(), StoreError> {
        self.fault("settle")?;
        self.inner.settle(keys)?;
        let mut unsynced = self.unsynced.lock().unwrap();
        for k in keys {
            unsynced.remove(k);
        }
        Ok(())
    }
}
