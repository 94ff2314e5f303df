//! Several block stores holding the same blocks (e.g. two buckets, or S3 and a local folder).
//!
//! Writes are synchronous: `put` stores the block in every replica at once (in parallel) and
//! succeeds when at least one replica has it. A replica that failed is recorded in the
//! [`ReplicaIndex`] as missing the block, which is the durable queue `graviton scrub` works
//! through. Reads try the replicas in order and return the first copy that matches its key; a
//! replica that had no copy or a bad one is recorded too. `graviton scrub` checks every block in
//! every replica and repairs bad copies from a good one.

use std::ops::Range;
use std::sync::Arc;

use super::{BlockStore, PutOutcome, StoreError, Unchecked};
use crate::domain::BlockKey;
use crate::domain::groups::GroupHashes;

/// What is known to be wrong with a replica's copy of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaStatus {
    /// Fine (checked, or repaired).
    Ok,
    /// The replica has no copy (or could not be written).
    Missing,
    /// The replica's copy does not match the key.
    Corrupt,
}

/// Where replica problems are recorded (the volume's metadata, see `volume.rs`).
pub trait ReplicaIndex: Send + Sync {
    fn record(&self, replica: usize, key: &BlockKey, status: ReplicaStatus);
}

pub struct Replicated {
    replicas: Vec<Arc<dyn BlockStore>>,
    index: Arc<dyn ReplicaIndex>,
}

impl Replicated {
    pub fn new(replicas: Vec<Arc<dyn BlockStore>>, index: Arc<dyn ReplicaIndex>) -> Replicated {
        assert!(!replicas.is_empty(), "a replicated store needs a replica");
        Replicated { replicas, index }
    }

    /// `read` from the first replica that answers it; the failures before are recorded.
    fn first_good(
        &self,
        key: &BlockKey,
        read: impl Fn(&dyn BlockStore) -> Result<Vec<u8>, StoreError>,
    ) -> Result<Vec<u8>, StoreError> {
        let mut failed = Vec::new();
        for (i, r) in self.replicas.iter().enumerate() {
            match read(r.as_ref()) {
                Ok(data) => {
                    for (j, status) in failed {
                        self.index.record(j, key, status);
                    }
                    return Ok(data);
                }
                Err(e) => {
                    tracing::warn!(replica = i, block = %key, "reading from the next replica: {e}");
                    failed.push((i, Self::status_of(&e)));
                    if i + 1 == self.replicas.len() {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!("the last replica returns")
    }

    fn status_of(e: &StoreError) -> ReplicaStatus {
        match e {
            StoreError::Corrupt(..) => ReplicaStatus::Corrupt,
            _ => ReplicaStatus::Missing,
        }
    }

    /// Stores the block in every replica at once with `put`; it is stored once one replica
    /// has it, and the replicas that missed it are recorded for scrub.
    fn put_each(
        &self,
        key: &BlockKey,
        put: impl Fn(&Arc<dyn BlockStore>) -> Result<PutOutcome, StoreError> + Sync,
    ) -> Result<PutOutcome, StoreError> {
        let put = &put;
        let results: Vec<Result<PutOutcome, StoreError>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = self
                .replicas
                .iter()
                .map(|r| scope.spawn(move || put(r)))
                .collect();
            jobs.into_iter()
                .map(|j| j.join().expect("replica upload thread"))
                .collect()
        });
        if results.iter().all(Result::is_err) {
            return results.into_iter().next().expect("one replica at least");
        }
        let mut outcome = PutOutcome::Duplicate;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(PutOutcome::Fresh) => outcome = PutOutcome::Fresh,
                Ok(PutOutcome::Duplicate) => {}
                Err(e) => {
                    tracing::warn!(replica = i, block = %key, "replica missed a block (scrub repairs it): {e}");
                    self.index.record(i, key, ReplicaStatus::Missing);
                }
            }
        }
        Ok(outcome)
    }
}

impl BlockStore for Replicated {
    fn backend(&self) -> &'static str {
        "replicated"
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        self.put_each(key, |r| r.put(key, data))
    }

    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        groups: Option<&GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        self.put_each(key, |r| r.put_new_grouped(key, data, groups))
    }

    fn get_unverified(&self, key: &BlockKey, _: Unchecked) -> Result<Vec<u8>, StoreError> {
        self.get(key)
    }

    /// The first replica's copy that matches the key. Replicas that failed before it are
    /// recorded (a block no replica has is not: there is nothing to repair it from).
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        self.first_good(key, |r| r.get(key))
    }

    /// As `get`, a range from the first replica that has it right.
    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        self.first_good(key, |r| r.get_range(key, range.clone()))
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        let mut last = None;
        for r in &self.replicas {
            match r.exists(key) {
                Ok(true) => return Ok(true),
                Ok(false) => last = None,
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        self.replicas.iter().try_for_each(|r| r.delete(key))
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let mut all = Vec::new();
        for r in &self.replicas {
            all.extend(r.list()?);
        }
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// The first replica's (the primary store's).
    fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        self.replicas[0].stored_bytes()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.replicas.iter().try_for_each(|r| r.sync())
    }

    fn settle(&self, keys: &[BlockKey]) -> Result<(), StoreError> {
        self.replicas.iter().try_for_each(|r| r.settle(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryBlockStore;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<(usize, ReplicaStatus)>>);

    impl ReplicaIndex for Log {
        fn record(&self, replica: usize, _: &BlockKey, status: ReplicaStatus) {
            self.0.lock().unwrap().push((replica, status));
        }
    }

    #[test]
    fn reads_survive_a_bad_replica() {
        let (a, b) = (
            Arc::new(MemoryBlockStore::new()),
            Arc::new(MemoryBlockStore::new()),
        );
        let log = Arc::new(Log::default());
        let r = Replicated::new(vec![a.clone(), b.clone()], log.clone());
        let key = BlockKey::for_data(crate::domain::HashAlgo::Blake3, b"both");
        assert_eq!(r.put(&key, b"both").unwrap(), PutOutcome::Fresh);
        assert_eq!(b.get(&key).unwrap(), b"both", "written to every replica");
        a.tamper(&key, |d| d[0] ^= 1);
        assert_eq!(
            r.get(&key).unwrap(),
            b"both",
            "served from the good replica"
        );
        a.delete(&key).unwrap();
        assert_eq!(r.get(&key).unwrap(), b"both");
        let log = log.0.lock().unwrap().clone();
        assert_eq!(
            log,
            [(0, ReplicaStatus::Corrupt), (0, ReplicaStatus::Missing)]
        );
    }
}
