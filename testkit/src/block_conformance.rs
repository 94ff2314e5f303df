//! The block store conformance suite, written once and run against every adapter.
//! Adapters call [`run_all`] from their tests; [`corruption_is_detected`] needs a way to damage a
//! stored block, which each adapter's test supplies.

use std::sync::Arc;
use std::time::Duration;

use graviton::domain::{BlockKey, HashAlgo};
use graviton::store::{BlockStore, PutOutcome, StoreError};

fn block(seed: u64, len: usize) -> (BlockKey, Vec<u8>) {
    use rand::{RngCore, SeedableRng};
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    (BlockKey::for_data(HashAlgo::Blake3, &data), data)
}

/// Runs every capability-independent case.
pub fn run_all(store: &dyn BlockStore) {
    put_then_get_round_trips(store);
    put_is_idempotent(store);
    missing_block_is_not_found(store);
    delete_is_idempotent(store);
    list_reports_stored_keys(store);
    get_range_returns_verified_slices(store);
    large_blocks_round_trip(store);
    sha256_keys_work(store);
    store.sync().expect("sync");
}

pub fn put_then_get_round_trips(store: &dyn BlockStore) {
    for (seed, len) in [(1, 1), (2, 4096), (3, 100_000)] {
        let (key, data) = block(seed, len);
        store.put(&key, &data).expect("put");
        assert_eq!(store.get(&key).expect("get"), data, "block {key}");
        assert!(store.exists(&key).expect("exists"));
    }
}

pub fn put_is_idempotent(store: &dyn BlockStore) {
    let (key, data) = block(10, 5000);
    let _ = store.put(&key, &data).expect("first put");
    assert_eq!(
        store.put(&key, &data).expect("second put"),
        PutOutcome::Duplicate
    );
    assert_eq!(store.get(&key).expect("get"), data);
    let listed = store
        .list()
        .expect("list")
        .into_iter()
        .filter(|k| *k == key)
        .count();
    assert_eq!(listed, 1, "a block stored twice is listed once");
}

pub fn missing_block_is_not_found(store: &dyn BlockStore) {
    let (key, _) = block(20, 77);
    assert!(!store.exists(&key).expect("exists"));
    assert!(matches!(store.get(&key), Err(StoreError::NotFound(k, _)) if k == key));
}

/// Once a block has reached the backend (a write-back store keeps a staged copy, a writer's on
/// its way, from a delete: `drain` uploads it first).
pub fn delete_is_idempotent(store: &dyn BlockStore) {
    let (key, data) = block(30, 300);
    assert_eq!(store.put(&key, &data).expect("put"), PutOutcome::Fresh);
    store.drain(Duration::from_secs(60)).expect("drain");
    store.delete(&key).expect("delete");
    assert!(!store.exists(&key).expect("exists"));
    store
        .delete(&key)
        .expect("deleting a missing block is fine");
    assert_eq!(
        store.put(&key, &data).expect("put again"),
        PutOutcome::Fresh
    );
}

pub fn list_reports_stored_keys(store: &dyn BlockStore) {
    let keys: Vec<BlockKey> = (40..45)
        .map(|s| {
            let (k, d) = block(s, 64 + s as usize);
            store.put(&k, &d).expect("put");
            k
        })
        .collect();
    let listed = store.list().expect("list");
    for k in keys {
        assert!(listed.contains(&k), "{k} missing from list");
    }
}

pub fn get_range_returns_verified_slices(store: &dyn BlockStore) {
    let (key, data) = block(50, 10_000);
    store.put(&key, &data).expect("put");
    assert_eq!(
        store.get_range(&key, 100..200).expect("range"),
        &data[100..200]
    );
    assert_eq!(store.get_range(&key, 0..10_000).expect("range"), data);
}

pub fn large_blocks_round_trip(store: &dyn BlockStore) {
    let (key, data) = block(60, 4 << 20);
    store.put(&key, &data).expect("put");
    assert_eq!(store.get(&key).expect("get"), data);
}

pub fn sha256_keys_work(store: &dyn BlockStore) {
    let data = b"same bytes, other algorithm".to_vec();
    let k1 = BlockKey::for_data(HashAlgo::Sha256, &data);
    let k2 = BlockKey::for_data(HashAlgo::Blake3, &data);
    store.put(&k1, &data).expect("put sha");
    store.put(&k2, &data).expect("put blake3");
    assert_eq!(store.get(&k1).expect("get"), data);
    store.delete(&k2).expect("delete");
    assert!(
        store.exists(&k1).expect("exists"),
        "keys of different algorithms are distinct"
    );
}

/// Concurrent puts of one block from several threads all succeed and leave one good copy.
pub fn concurrent_puts_are_safe(store: Arc<dyn BlockStore>) {
    let (key, data) = block(70, 256 << 10);
    let data = Arc::new(data);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, data) = (store.clone(), data.clone());
            std::thread::spawn(move || store.put(&key, &data).expect("put"))
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(store.get(&key).expect("get"), *data);
}

/// A stored block whose bytes no longer match its key is an error, never bytes.
pub fn corruption_is_detected(store: &dyn BlockStore, damage: &dyn Fn(&BlockKey)) {
    let (key, data) = block(80, 8192);
    store.put(&key, &data).expect("put");
    damage(&key);
    assert!(matches!(store.get(&key), Err(StoreError::Corrupt(k, _)) if k == key));
    assert!(
        store.get_range(&key, 0..10).is_err(),
        "a range of a corrupt block is an error too"
    );
}
