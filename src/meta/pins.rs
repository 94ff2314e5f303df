//! Pins: blocks a writer has stored, or found already referenced, for a commit that has not
//! happened yet. gc counts a pinned block as referenced, so a block is never deleted between
//! the store that a flush relies on and the commit that names it, whatever the grace period
//! (`graviton gc --grace 0s` included).
//!
//! A writer pins a block before it asks whether the block is referenced or stores it, and
//! unpins it once its commit is done (or has failed). gc reads the pins after listing the
//! store and before reading the references, and again right before each deletion: a block in
//! its listing was stored after its pin, so either gc sees the pin or the pin went after the
//! commit, which gc then sees.
//!
//! Pins live in this process (an embedded volume has one process: its mount daemon, which
//! also runs its gc) and, on a shared volume, in the engine, tied to the mount's session
//! ([`SharedVolume::pin_blocks`]), so every host's gc sees them and a crashed mount's pins go
//! with its session. Unpins reach the engine a moment later, gathered (or with the next pin): a
//! pin left a little longer only delays a block's collection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{MetaResult, MetaStore};
use crate::domain::BlockKey;

/// Pins held in this process, with how many writers hold each.
static PROCESS: Mutex<BTreeMap<BlockKey, usize>> = Mutex::new(BTreeMap::new());

fn process() -> std::sync::MutexGuard<'static, BTreeMap<BlockKey, usize>> {
    PROCESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The blocks one flush (or rewrite) has pinned; dropping it unpins them.
pub struct Pinned {
    meta: Arc<dyn MetaStore>,
    keys: Mutex<Vec<BlockKey>>,
}

impl Pinned {
    pub fn new(meta: Arc<dyn MetaStore>) -> Pinned {
        Pinned {
            meta,
            keys: Mutex::new(Vec::new()),
        }
    }

    /// Pins `keys` (visible to every gc before this returns). On a shared volume every
    /// caller writes its pins itself, even those another writer of this process holds: that
    /// one's write may still be on its way (the engine's insert is idempotent).
    pub fn add(&self, keys: &[BlockKey]) -> MetaResult<()> {
        let shared = self.meta.shared();
        {
            let mut held = process();
            for k in keys {
                *held.entry(*k).or_insert(0) += 1;
            }
            // a release of these queued a moment ago must not reach the engine after this pin
            if let Some(shared) = shared {
                shared.cancel_unpins(keys);
            }
        }
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(keys);
        match shared {
            Some(shared) => shared.pin_blocks(keys),
            None => Ok(()),
        }
    }

    /// The blocks pinned so far.
    pub fn keys(&self) -> Vec<BlockKey> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let keys = std::mem::take(self.keys.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut held = process();
        let last: Vec<BlockKey> = keys
            .into_iter()
            .filter(|k| match held.get_mut(k) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    held.remove(k);
                    true
                }
                None => false,
            })
            .collect();
        // queued under the process lock: a pin of the same block taken after this cancels it
        if !last.is_empty()
            && let Some(shared) = self.meta.shared()
        {
            shared.unpin_blocks(&last);
        }
    }
}

/// Calls `f` with those of `keys` (block keys' bytes) that this process does not hold,
/// under the process's pin lock (so no pin of them can start meanwhile).
pub fn unless_held(keys: &[Vec<u8>], f: impl FnOnce(Vec<Vec<u8>>)) {
    let held = process();
    let unheld = keys
        .iter()
        .filter(|k| BlockKey::from_bytes(k).is_none_or(|k| !held.contains_key(&k)))
        .cloned()
        .collect();
    f(unheld);
}

/// The blocks this process has pinned (to write again when its session is registered anew).
pub fn held() -> Vec<BlockKey> {
    process().keys().copied().collect()
}

/// Every pinned block gc must spare: this process's, and on a shared volume every mount's.
pub fn pinned_blocks(meta: &dyn MetaStore) -> MetaResult<std::collections::HashSet<BlockKey>> {
    let mut all: std::collections::HashSet<BlockKey> = process().keys().copied().collect();
    if let Some(shared) = meta.shared() {
        all.extend(shared.pinned_blocks()?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HashAlgo;

    #[test]
    fn a_block_stays_pinned_while_any_writer_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> =
            Arc::new(crate::meta::RocksMetaStore::open(dir.path()).unwrap());
        let key = BlockKey::for_data(HashAlgo::Blake3, b"pinned twice");
        let a = Pinned::new(meta.clone());
        let b = Pinned::new(meta.clone());
        a.add(&[key]).unwrap();
        b.add(&[key]).unwrap();
        drop(a);
        assert!(pinned_blocks(meta.as_ref()).unwrap().contains(&key));
        drop(b);
        assert!(!pinned_blocks(meta.as_ref()).unwrap().contains(&key));
    }
}
