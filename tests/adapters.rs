//! Both ports' conformance suites over each adapter and layer on its own (`tests/stacks.rs`
//! runs them over the stacks a mount builds), and the retry layer over the fault-injecting
//! store. What an adapter does beyond the port is tested next to it, in `src/`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use graviton::domain::frames::{Compression, FrameCodec};
use graviton::domain::{BlockKey, HashAlgo};
use graviton::meta::prelude::*;
use graviton::meta::{PgMetaStore, RocksMetaStore};
use graviton::retry::Backoff;
use graviton::store::at_rest::AtRest;
use graviton::store::disk_cache::DiskCache;
use graviton::store::framed::Framed;
use graviton::store::replicated::{ReplicaIndex, ReplicaStatus, Replicated};
use graviton::store::retrying::Retrying;
use graviton::store::tiered::Tiered;
use graviton::store::{
    BlockStore, LocalBlockStore, MemoryBlockStore, PgBlockStore, PutOutcome, S3BlockStore,
    Transience,
};
use graviton_testkit::{FaultyStore, block_conformance, meta_conformance, needs_servers};

fn memory() -> Arc<MemoryBlockStore> {
    Arc::new(MemoryBlockStore::new())
}

#[test]
fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlockStore::open(dir.path()).unwrap();
    block_conformance::run_all(&store);
    block_conformance::corruption_is_detected(&store, &|key| {
        let p = store.path_of(key);
        let mut data = std::fs::read(&p).unwrap();
        data[0] ^= 0xff;
        std::fs::write(&p, data).unwrap();
    });
}

/// The frames layer over files, with each compression: a copy the files hold is checked as
/// frames, and damage anywhere in the frames is an error.
#[test]
fn frames_over_a_local_directory() {
    let sealed = Some(&[7u8; 32]);
    for (compression, sealing) in [
        (Compression::Zstd(3), None),
        (Compression::Lz4, None),
        (Compression::None, None),
        (Compression::Zstd(3), sealed),
        (Compression::None, sealed),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let codec = Arc::new(FrameCodec::new(compression, sealing));
        let c = codec.clone();
        let local = Arc::new(
            LocalBlockStore::open(dir.path())
                .unwrap()
                .with_stored_check(Arc::new(move |k, b| Framed::holds(&c, k, b))),
        );
        let store: Arc<dyn BlockStore> = Arc::new(Framed::new(local.clone(), codec));
        block_conformance::run_all(store.as_ref());
        block_conformance::concurrent_puts_are_safe(store.clone());
        let damage = |key: &BlockKey| {
            let p = local.path_of(key);
            let mut data = std::fs::read(&p).unwrap();
            let middle = data.len() / 2;
            data[middle] ^= 0x55;
            std::fs::write(&p, data).unwrap();
        };
        block_conformance::corruption_is_detected(store.as_ref(), &damage);
        if sealing.is_some() {
            // a part of a large sealed block comes from its frames: damage elsewhere in the
            // block does not stop it, damage inside it does
            let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
            let key = BlockKey::for_data(HashAlgo::Blake3, &data);
            store.put(&key, &data).unwrap();
            let part = 3_000_000..3_100_000;
            assert_eq!(
                store.get_range(&key, part.clone()).unwrap(),
                &data[part.clone()]
            );
            let p = local.path_of(&key);
            let mut stored = std::fs::read(&p).unwrap();
            stored[200] ^= 1; // in the first frame
            std::fs::write(&p, &stored).unwrap();
            assert_eq!(
                store.get_range(&key, part.clone()).unwrap(),
                &data[part.clone()]
            );
            assert!(store.get_range(&key, 0..10).is_err(), "{compression:?}");
            let n = stored.len();
            stored[n - 100] ^= 1; // in the last frame
            std::fs::write(&p, &stored).unwrap();
            assert!(store.get_range(&key, part).is_err(), "{compression:?}");
            store.delete(&key).unwrap();
        }
        // a damaged copy is written again by the next put of the block
        let data = vec![b'g'; 300_000];
        let key = BlockKey::for_data(HashAlgo::Blake3, &data);
        store.put(&key, &data).unwrap();
        damage(&key);
        assert!(store.get(&key).is_err(), "{compression:?}");
        assert_eq!(store.put(&key, &data).unwrap(), PutOutcome::Fresh);
        assert_eq!(store.get(&key).unwrap(), data, "{compression:?}");
        assert_eq!(store.put(&key, &data).unwrap(), PutOutcome::Duplicate);
    }
}

#[test]
fn memory_store() {
    let store = memory();
    block_conformance::run_all(store.as_ref());
    block_conformance::concurrent_puts_are_safe(store.clone());
    let s = store.clone();
    block_conformance::corruption_is_detected(store.as_ref(), &move |k| s.tamper(k, |b| b[0] ^= 1));
}

#[test]
fn postgres_blocks() {
    needs_servers!();
    let store = Arc::new(PgBlockStore::connect(&graviton_testkit::scratch_database()).unwrap());
    block_conformance::run_all(store.as_ref());
    block_conformance::concurrent_puts_are_safe(store.clone());
    let s = store.clone();
    block_conformance::corruption_is_detected(store.as_ref(), &move |k| s.tamper(k));
}

/// A damaged object is an error, never bytes (the rest of the suite runs over the S3 stacks).
#[test]
fn s3_objects_damaged_on_the_server() {
    needs_servers!();
    let store = Arc::new(S3BlockStore::open(&graviton_testkit::s3_scratch_url()).unwrap());
    let root = std::path::PathBuf::from(
        std::env::var("GRAVITON_TEST_S3_ROOT").expect("GRAVITON_TEST_S3_ROOT"),
    );
    let s = store.clone();
    block_conformance::corruption_is_detected(store.as_ref(), &move |k| {
        // flip a byte of the object's file on the server, keeping its length
        let path = root.join(&s.url().bucket).join(s.object(k));
        let mut bytes = std::fs::read(&path).expect("the object's file");
        bytes[0] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    });
}

#[test]
fn rocksdb_blocks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![5u8; 300 << 10];
    let key = BlockKey::for_data(HashAlgo::Blake3, &data);
    {
        let meta = RocksMetaStore::open(dir.path()).unwrap();
        let store = meta.blocks();
        block_conformance::run_all(&store);
        store.put(&key, &data).unwrap();
    }
    let meta = RocksMetaStore::open(dir.path()).unwrap();
    assert_eq!(meta.blocks().get(&key).unwrap(), data);
}

#[test]
fn tiers() {
    block_conformance::run_all(&Tiered::new(memory(), memory(), 1000));
}

#[test]
fn replicas() {
    struct Nowhere;
    impl ReplicaIndex for Nowhere {
        fn record(&self, _: usize, _: &BlockKey, _: ReplicaStatus) {}
    }
    block_conformance::run_all(&Replicated::new(
        vec![memory(), memory()],
        Arc::new(Nowhere),
    ));
}

#[test]
fn disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    block_conformance::run_all(
        &DiskCache::open(memory(), dir.path(), 1 << 20, AtRest::Plain).unwrap(),
    );
}

/// A sealed disk cache passes the suite, keeps nothing readable, and never serves a damaged
/// copy.
#[test]
fn sealed_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let codec = Arc::new(FrameCodec::new(Compression::None, Some(&[3; 32])));
    let inner = memory();
    let cache = DiskCache::open(inner.clone(), dir.path(), 1 << 20, AtRest::Sealed(codec)).unwrap();
    block_conformance::run_all(&cache);
    let data = b"a line that must not be found on the disk ".repeat(100);
    let key = BlockKey::for_data(HashAlgo::Blake3, &data);
    cache.put(&key, &data).unwrap();
    let files = all_files(dir.path());
    assert!(!files.is_empty());
    // the budget counts what the sealed files take, also after a reopen
    let on_disk: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert_eq!(cache.usage().1, on_disk);
    let codec = Arc::new(FrameCodec::new(Compression::None, Some(&[3; 32])));
    let reopened =
        DiskCache::open(inner.clone(), dir.path(), 1 << 20, AtRest::Sealed(codec)).unwrap();
    assert_eq!(reopened.usage().1, on_disk);
    drop(reopened);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(20).any(|w| w == &data[..20]),
            "{} holds plaintext",
            f.display()
        );
    }
    inner.tamper(&key, |d| d[0] ^= 1);
    assert_eq!(
        cache.get(&key).unwrap(),
        data,
        "served from the sealed copy"
    );
    for f in &files {
        let mut bytes = std::fs::read(f).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(f, bytes).unwrap();
    }
    assert!(
        cache.get(&key).is_err(),
        "the damaged sealed copy is dropped, the store's is bad"
    );
}

fn all_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn rocksdb_metadata_survives_reopen_and_never_reuses_an_inode_number() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = RocksMetaStore::open(dir.path()).unwrap();
        meta_conformance::write_sample(&store);
        store.allocate_ino().unwrap()
    };
    let store = RocksMetaStore::open(dir.path()).unwrap();
    meta_conformance::check_sample(&store);
    assert!(store.allocate_ino().unwrap() > first);
}

#[test]
fn postgres_metadata() {
    needs_servers!();
    let store = Arc::new(PgMetaStore::connect(&graviton_testkit::scratch_database()).unwrap());
    meta_conformance::run_all(store);
}

#[test]
fn postgres_metadata_survives_reconnect_and_migrations_run_once() {
    needs_servers!();
    let url = graviton_testkit::scratch_database();
    let first = {
        let store = PgMetaStore::connect(&url).unwrap();
        meta_conformance::write_sample(&store);
        store.allocate_ino().unwrap()
    };
    let store = PgMetaStore::connect(&url).unwrap();
    meta_conformance::check_sample(&store);
    assert!(store.allocate_ino().unwrap() > first);
}

/// A stored block behind the fault layer.
fn faulty() -> (Arc<FaultyStore>, BlockKey) {
    let blocks = memory();
    let key = BlockKey::for_data(HashAlgo::Blake3, b"x");
    blocks.put(&key, b"x").unwrap();
    (Arc::new(FaultyStore::new(blocks)), key)
}

const QUICK: Backoff = Backoff {
    first: Duration::from_millis(1),
    max: Duration::from_millis(4),
    jitter: false,
};

#[test]
fn retries_transient_failures_and_not_permanent_ones() {
    let (f, key) = faulty();
    f.fail_next(3, Transience::Transient);
    let r = Retrying::new(f.clone(), QUICK, Duration::from_secs(5));
    assert_eq!(r.get(&key).unwrap(), b"x", "the fourth attempt");
    f.fail_next(1, Transience::Permanent);
    assert!(r.get(&key).is_err());
    assert_eq!(
        r.get(&key).unwrap(),
        b"x",
        "the one failure was returned at once"
    );
}

#[test]
fn a_backend_away_longer_than_the_patience_fails_after_it() {
    let (f, key) = faulty();
    f.go_down_for(Duration::from_secs(3600));
    let r = Retrying::new(f, QUICK, Duration::from_millis(200));
    let t = Instant::now();
    let e = r.get(&key).unwrap_err();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(e.transience(), Transience::Transient, "{e}");
}
