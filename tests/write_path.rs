//! Range tracking, dedup, coalescing and corruption, measured on the core over RocksDB and a
//! local block store (no FUSE).

mod common;

use common::{CTX, DiskVolume, MemVolume, create, random_bytes, read_all, small_cfg, write_all};
use graviton::domain::{Chunker, DEFAULT_CHUNKER, HashAlgo};
use graviton::meta::ROOT_INO;
use graviton::vfs::{Fs, FsConfig, FsError, OpenFlags};

const GIB: usize = 1 << 30;

/// A 1 GiB random file: a 1-byte overwrite stores one small block; a second copy written with
/// plain writes stores almost nothing new. Figures are taken after reopening the volume.
#[test]
fn one_byte_overwrite_and_second_copy_store_little() {
    let vol = DiskVolume::new(FsConfig::new(HashAlgo::Blake3, DEFAULT_CHUNKER), false);
    let data = random_bytes(7, GIB);
    let first = {
        let (fs, store) = vol.mount();
        let (_, fh) = create(&fs, "big");
        write_all(&fs, fh, 0, &data, 1 << 20);
        fs.fsync(fh).unwrap();
        fs.release(fh).unwrap();
        DiskVolume::stored_bytes(store.as_ref())
    };
    assert!(first >= GIB as u64, "the file's bytes are stored: {first}");

    let after_poke = {
        let (fs, store) = vol.mount();
        let ino = fs.lookup(ROOT_INO, b"big").unwrap().ino;
        let fh = fs.open(ino, OpenFlags::RW).unwrap();
        fs.write(fh, 123_456_789, &[data[123_456_789] ^ 0xff])
            .unwrap();
        fs.fsync(fh).unwrap();
        fs.release(fh).unwrap();
        DiskVolume::stored_bytes(store.as_ref())
    };
    let poke_cost = after_poke - first;
    eprintln!("1-byte overwrite of a 1 GiB file stored {poke_cost} new block bytes");
    assert!(
        poke_cost < 64 << 10,
        "1-byte overwrite stored {poke_cost} bytes"
    );

    let (fs, store) = vol.mount();
    let (_, fh) = create(&fs, "copy");
    write_all(&fs, fh, 0, &data, 128 << 10);
    fs.release(fh).unwrap();
    drop(fs);
    let (fs, store2) = vol.mount();
    drop(store);
    let after_copy = DiskVolume::stored_bytes(store2.as_ref());
    let copy_cost = after_copy - after_poke;
    eprintln!(
        "second copy of 1 GiB stored {copy_cost} new block bytes ({:.4}%)",
        copy_cost as f64 * 100.0 / GIB as f64
    );
    assert!(
        (copy_cost as f64) < GIB as f64 * 0.01,
        "second copy stored {copy_cost} bytes"
    );
    // both files read back exactly (the poked byte included)
    let fh = fs
        .open(fs.lookup(ROOT_INO, b"copy").unwrap().ino, OpenFlags::READ)
        .unwrap();
    assert!(read_all(&fs, fh, 0, GIB as u64) == data, "copy reads back");
    let fh2 = fs
        .open(fs.lookup(ROOT_INO, b"big").unwrap().ino, OpenFlags::READ)
        .unwrap();
    let big = read_all(&fs, fh2, 0, GIB as u64);
    assert_eq!(big[123_456_789], data[123_456_789] ^ 0xff);
    assert!(big[..123_456_789] == data[..123_456_789] && big[123_456_790..] == data[123_456_790..]);
}

/// 50,000 random 4 KiB writes, each fsync'd: background coalescing keeps the extent map
/// compact, an explicit pass packs it to chunker-sized blocks, and every byte is unchanged.
#[test]
fn fragmented_file_is_coalesced_without_changing_bytes() {
    let mut cfg = FsConfig::new(HashAlgo::Blake3, DEFAULT_CHUNKER);
    cfg.coalesce_interval = std::time::Duration::from_millis(200);
    let vol = DiskVolume::new(cfg, true);
    let (fs, _store) = vol.mount();
    const SIZE: usize = 16 << 20;
    let mut model = random_bytes(1, SIZE);
    let (ino, fh) = create(&fs, "db");
    write_all(&fs, fh, 0, &model, 1 << 20);
    fs.fsync(fh).unwrap();
    let initial = fs.getattr(ino).unwrap().extent_count;
    let mut rng = 12345u64;
    let mut max_seen = 0;
    for i in 0..50_000u64 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let slot = (rng >> 33) as usize % (SIZE / 4096);
        let page = random_bytes(i, 4096);
        fs.write(fh, (slot * 4096) as u64, &page).unwrap();
        fs.fsync(fh).unwrap();
        model[slot * 4096..slot * 4096 + 4096].copy_from_slice(&page);
        max_seen = max_seen.max(fs.getattr(ino).unwrap().extent_count);
    }
    fs.wait_background();
    let before = fs.getattr(ino).unwrap().extent_count;
    let report = fs.coalesce_now(ino).unwrap();
    let after = fs.getattr(ino).unwrap().extent_count;
    eprintln!(
        "extents: {initial} after the sequential write, at most {max_seen} during 50,000 random writes, {before} at the end, {after} after an explicit pass ({report:?})"
    );
    assert!(
        max_seen < 5_000,
        "background coalescing kept the map bounded (max {max_seen})"
    );
    assert!(
        after < before || before <= 2 * initial,
        "coalescing reduced the extent count"
    );
    assert!(
        after <= 2 * (SIZE as u64 >> 20) + 16,
        "packed to about one extent per chunk: {after}"
    );
    assert!(
        read_all(&fs, fh, 0, SIZE as u64) == model,
        "bytes unchanged"
    );
    fs.release(fh).unwrap();
}

#[test]
fn corrupt_block_reads_as_eio() {
    let vol = DiskVolume::new(small_cfg(), false);
    let data = random_bytes(3, 100_000);
    let (ino, key) = {
        let (fs, _) = vol.mount();
        let (ino, fh) = create(&fs, "f");
        write_all(&fs, fh, 0, &data, 100_000);
        fs.release(fh).unwrap();
        let key = fs
            .meta()
            .begin()
            .unwrap()
            .extents(ino, 50_000..50_001)
            .unwrap()[0]
            .key;
        (ino, key)
    };
    let (fs, store) = vol.mount();
    let path = store.path_of(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let fh = fs.open(ino, OpenFlags::READ).unwrap();
    let err = fs.read(fh, 49_000, 2_000).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(matches!(err, FsError::Store(graviton::store::StoreError::Corrupt(k, _)) if k == key));
    // bytes outside the damaged block still read
    let ext = fs.meta().begin().unwrap().extents(ino, 0..1).unwrap()[0];
    if ext.key != key {
        assert_eq!(fs.read(fh, 0, 100).unwrap(), data[..100]);
    }
}

/// The same content written in different pieces (and flushed under pressure at different
/// points) produces the same blocks: the chunker's output does not depend on write sizes.
#[test]
fn blocks_do_not_depend_on_write_sizes() {
    for chunker in [
        "fastcdc-256k-1m-4m".parse::<Chunker>().unwrap(),
        DEFAULT_CHUNKER,
    ] {
        let mut cfg = FsConfig::new(HashAlgo::Blake3, chunker);
        cfg.file_flush_threshold = 8 << 20;
        let vol = MemVolume::new(cfg);
        let fs = vol.mount();
        let data = random_bytes(11, 40 << 20);
        let mut maps = Vec::new();
        for (name, piece) in [("one", 40 << 20), ("small", 4096), ("odd", 77_777)] {
            let (ino, fh) = create(&fs, name);
            write_all(&fs, fh, 0, &data, piece);
            fs.release(fh).unwrap();
            let keys: Vec<_> = fs
                .meta()
                .begin()
                .unwrap()
                .extents(ino, 0..u64::MAX)
                .unwrap()
                .iter()
                .map(|e| e.key)
                .collect();
            maps.push(keys);
        }
        assert_eq!(maps[0], maps[1], "{chunker}: 4 KiB writes");
        assert_eq!(maps[0], maps[2], "{chunker}: 77,777-byte writes");
        assert!(
            vol.store.stored_bytes() <= (40 << 20) + (1 << 20),
            "{chunker}: three copies stored once"
        );
    }
}

/// A 32 MiB file of 1 MiB blocks, opened for reading in a fresh mount (cold cache); the
/// volume is returned to be kept alive.
fn cold_32_mib_file(cfg: FsConfig, seed: u64) -> (MemVolume, Fs, u64, Vec<u8>) {
    let vol = MemVolume::new(cfg);
    let data = random_bytes(seed, 32 << 20);
    let ino = {
        let fs = vol.mount();
        let (ino, fh) = create(&fs, "seq");
        write_all(&fs, fh, 0, &data, 1 << 20);
        fs.release(fh).unwrap();
        ino
    };
    let fs = vol.mount();
    let fh = fs.open(ino, OpenFlags::READ).unwrap();
    (vol, fs, fh, data)
}

#[test]
fn sequential_reads_warm_the_cache_ahead() {
    let cfg = FsConfig::new(HashAlgo::Blake3, "fixed-1m".parse().unwrap());
    let (_vol, fs, fh, data) = cold_32_mib_file(cfg, 5);
    for i in 0..5u64 {
        assert_eq!(
            fs.read(fh, i * (128 << 10), 128 << 10).unwrap(),
            data[(i as usize) * (128 << 10)..][..128 << 10]
        );
    }
    // read-ahead started once 512 KiB were read in a row: later blocks arrive unasked
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fs.cache_stats().2 < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        fs.cache_stats().2 >= 2,
        "read-ahead fetched blocks on its own: {:?}",
        fs.cache_stats()
    );
    let got = read_all(&fs, fh, 0, 32 << 20);
    assert!(got == data);
    let (hits, misses, prefetched) = fs.cache_stats();
    eprintln!(
        "sequential read of 32 MiB in 1 MiB blocks: {hits} hits, {misses} misses, {prefetched} fetched ahead"
    );
    // (an in-memory store is fast enough for the reader to outrun read-ahead threads now and
    // then: 1 miss usually, up to 11 seen; without read-ahead all 32 blocks would be misses)
    assert!(
        prefetched >= 12,
        "read-ahead served most blocks: {prefetched} fetched ahead, {misses} misses"
    );
}

#[test]
fn read_ahead_stays_within_its_window() {
    // `-o readahead_mb=2`: a sequential reader has at most 2 MiB fetched ahead of it
    let mut cfg = FsConfig::new(HashAlgo::Blake3, "fixed-1m".parse().unwrap());
    cfg.readahead_max = 2 << 20;
    let (_vol, fs, fh, data) = cold_32_mib_file(cfg, 6);
    let step = 128 << 10;
    for offset in (0..8u64 << 20).step_by(step) {
        let got = fs.read(fh, offset, step as u32).unwrap();
        assert!(got == data[offset as usize..][..step]);
        // a reader that uses each MiB: read-ahead gets to run before the reader reaches its
        // blocks (a busy machine ran the reader past them first, and it fetched them itself)
        if (offset + step as u64).is_multiple_of(1 << 20) {
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, misses, prefetched) = fs.cache_stats();
    assert!(prefetched >= 4, "read-ahead still ran: {prefetched} blocks");
    // the window ends by 10 MiB: block 12 was not fetched ahead (the 32 MiB default fetches it),
    // so reading it (far from the run: no read-ahead of its own) is a miss
    let got = fs.read(fh, 12 << 20, step as u32).unwrap();
    assert!(got == data[12 << 20..][..step]);
    assert_eq!(
        fs.cache_stats().1,
        misses + 1,
        "block 12 was fetched ahead ({prefetched} blocks fetched ahead of 8 MiB read)"
    );
}

#[test]
fn unlinked_open_file_keeps_working_until_last_close() {
    let vol = MemVolume::new(small_cfg());
    let fs = vol.mount();
    let (ino, fh) = create(&fs, "tmp");
    let data = random_bytes(2, 50_000);
    write_all(&fs, fh, 0, &data, 10_000);
    fs.flush(fh).unwrap();
    let fh2 = fs.open(ino, OpenFlags::READ).unwrap();
    fs.unlink(ROOT_INO, b"tmp").unwrap();
    assert!(matches!(
        fs.lookup(ROOT_INO, b"tmp"),
        Err(FsError::NotFound)
    ));
    assert_eq!(fs.getattr(ino).unwrap().nlink, 0);
    fs.write(fh, 50_000, b"more").unwrap();
    assert_eq!(
        fs.read(fh2, 49_998, 10).unwrap(),
        [&data[49_998..], &b"more"[..]].concat()
    );
    fs.release(fh).unwrap();
    assert_eq!(fs.read(fh2, 0, 4).unwrap(), data[..4]);
    assert!(fs.meta().orphans().unwrap().contains(&ino));
    fs.release(fh2).unwrap();
    assert!(
        matches!(fs.getattr(ino), Err(FsError::NotFound)),
        "reclaimed at last close"
    );
    assert!(
        fs.meta().referenced_blocks().unwrap().is_empty(),
        "its blocks are no longer referenced"
    );
}

#[test]
fn orphans_left_open_at_exit_are_reclaimed_at_next_mount() {
    let vol = MemVolume::new(small_cfg());
    let ino = {
        let fs = vol.mount();
        let (ino, fh) = create(&fs, "t");
        fs.write(fh, 0, b"data").unwrap();
        fs.flush(fh).unwrap();
        fs.unlink(ROOT_INO, b"t").unwrap();
        let _ = fh; // never released: the process goes away with the file open
        assert!(fs.meta().orphans().unwrap().contains(&ino));
        ino
    };
    let fs = vol.mount();
    assert!(matches!(fs.getattr(ino), Err(FsError::NotFound)));
    assert!(fs.meta().orphans().unwrap().is_empty());
    assert!(fs.meta().referenced_blocks().unwrap().is_empty());
}

#[test]
fn dirty_data_is_capped_and_writers_flush_at_the_cap() {
    let mut cfg = small_cfg();
    cfg.dirty_limit = 1 << 20;
    cfg.file_flush_threshold = 64 << 20; // only the volume-wide cap applies
    let vol = MemVolume::new(cfg);
    let fs = vol.mount();
    let mut handles = Vec::new();
    for i in 0..4 {
        let (_, fh) = create(&fs, &format!("f{i}"));
        handles.push(fh);
    }
    let data = random_bytes(9, 600_000);
    let mut peak = 0;
    for fh in &handles {
        write_all(&fs, *fh, 0, &data, 8192);
        peak = peak.max(fs.dirty_bytes());
    }
    assert!(
        peak <= (1 << 20) + 16 * 1024 * 2,
        "dirty bytes stayed near the cap: {peak}"
    );
    for fh in handles {
        assert!(read_all(&fs, fh, 0, 600_000) == data);
        fs.release(fh).unwrap();
    }
    assert_eq!(fs.dirty_bytes(), 0);
}

#[test]
fn o_append_writes_at_the_end() {
    let vol = MemVolume::new(small_cfg());
    let fs = vol.mount();
    let (ino, fh) = create(&fs, "log");
    fs.write(fh, 0, b"hello ").unwrap();
    let app = fs
        .open(
            ino,
            OpenFlags {
                append: true,
                ..OpenFlags::RW
            },
        )
        .unwrap();
    fs.write(app, 0, b"world").unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"hello world");
    let _ = CTX;
}

/// Every 4 KiB page of a 16 MiB file written once, in random order, with flushes every 1 MiB
/// (fio's random-write pattern): once closed, the file is stored as chunker-sized blocks, not
/// as thousands of page-sized objects (one S3 GET each), and the rewrites that got it there
/// stored little more than the file's own size again.
#[test]
fn random_page_writes_end_in_chunk_sized_blocks() {
    let mut cfg = FsConfig::new(HashAlgo::Blake3, DEFAULT_CHUNKER);
    cfg.file_flush_threshold = 1 << 20;
    cfg.coalesce_interval = std::time::Duration::from_millis(100);
    let vol = DiskVolume::new(cfg, true);
    let (fs, store) = vol.mount();
    const SIZE: usize = 16 << 20;
    const PAGES: usize = SIZE / 4096;
    let mut order: Vec<usize> = (0..PAGES).collect();
    let mut rng = 99u64;
    for i in (1..PAGES).rev() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        order.swap(i, (rng >> 33) as usize % (i + 1));
    }
    let data = random_bytes(5, SIZE);
    let (ino, fh) = create(&fs, "rand.dat");
    for (n, &page) in order.iter().enumerate() {
        let at = page * 4096;
        fs.write(fh, at as u64, &data[at..at + 4096]).unwrap();
        if n % 512 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    fs.release(fh).unwrap();
    fs.wait_background();
    let extents = fs.getattr(ino).unwrap().extent_count;
    let stored = DiskVolume::stored_bytes(store.as_ref());
    eprintln!(
        "16 MiB written as 4096 random pages: {extents} extents, {:.1} MiB stored",
        stored as f64 / (1 << 20) as f64
    );
    assert!(extents <= 16, "one extent per 1 MiB block: {extents}");
    assert!(
        stored <= 4 * SIZE as u64,
        "rewrites stored {stored} bytes for a {SIZE}-byte file"
    );
    let fh = fs.open(ino, OpenFlags::READ).unwrap();
    assert!(read_all(&fs, fh, 0, SIZE as u64) == data, "bytes unchanged");
}
