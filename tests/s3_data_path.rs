//! The data path on S3, measured through the mount's own Prometheus metrics.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};

use common::mounted::{Mounted, s3_scratch_url};
use common::random_bytes;
use common::scrape::{counter, free_port};

#[test]
fn the_disk_cache_serves_blocks_after_a_remount() {
    graviton_testkit::needs_servers!();
    let port = free_port();
    let cache = tempfile::tempdir_in("/var/tmp").unwrap();
    let opts = format!(
        "metrics=127.0.0.1:{port},cache_dir={}",
        cache.path().display()
    );
    let m = Mounted::new_pg_with_store(&opts, Some(&s3_scratch_url()));
    let data = random_bytes(77, 16 << 20);
    std::fs::write(m.path("f"), &data).unwrap();
    m.unmount();
    m.mount();
    assert!(std::fs::read(m.path("f")).unwrap() == data);
    let fetched = counter(port, "graviton_bytes_fetched", &["backend=\"s3\""]);
    let hits = counter(port, "graviton_block_cache_total", &["result=\"disk_hit\""]);
    eprintln!("after a remount: {fetched} bytes fetched from S3, {hits} disk cache hits");
    assert_eq!(fetched, 0, "every block came from the disk cache");
    // 16 MiB is two blocks of S3 volumes' default 8 MiB
    assert!(
        hits >= 2,
        "the file's 2 blocks were disk cache hits ({hits})"
    );
}

#[test]
fn a_4k_overwrite_in_a_1_gib_file_uploads_under_1_mib() {
    graviton_testkit::needs_servers!();
    let port = free_port();
    let m = Mounted::new_pg_with_store(
        &format!("metrics=127.0.0.1:{port}"),
        Some(&s3_scratch_url()),
    );
    let path = m.path("big");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 30);
    // the 4 KiB piece is a small block, kept in the database: count both stores
    let stored = || {
        counter(port, "graviton_bytes_ingested", &["backend=\"s3\""])
            + counter(port, "graviton_bytes_ingested", &["backend=\"postgres\""])
    };
    let before = stored();
    let patch = random_bytes(9, 4096);
    let at = 700u64 << 20;
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&patch).unwrap();
        f.sync_all().unwrap();
    }
    let uploaded = stored() - before;
    eprintln!("a 4 KiB overwrite in a 1 GiB file stored {uploaded} bytes");
    assert!(uploaded >= 4096, "the new bytes were uploaded ({uploaded})");
    assert!(uploaded < 1 << 20, "less than 1 MiB uploaded: {uploaded}");
    m.unmount();
    m.mount();
    let mut f = std::fs::File::open(&path).unwrap();
    f.seek(SeekFrom::Start(at - 10)).unwrap();
    let mut got = vec![0u8; 4116];
    f.read_exact(&mut got).unwrap();
    assert_eq!(&got[..10], &[0u8; 10]);
    assert_eq!(&got[10..4106], &patch[..]);
    assert_eq!(&got[4106..], &[0u8; 10]);
}

/// A PostgreSQL volume with blocks in S3 keeps blocks under 64 KiB in its database: a small
/// file's close is an INSERT, not an upload. Reads, fsck, gc and status see both stores.
#[test]
fn small_blocks_live_in_the_database_and_large_ones_in_s3() {
    graviton_testkit::needs_servers!();
    let port = free_port();
    let m = Mounted::new_pg_with_store(
        &format!("metrics=127.0.0.1:{port}"),
        Some(&s3_scratch_url()),
    );
    let status = m.status_json();
    assert_eq!(status["settings"]["small_blocks"], 65536, "{status}");
    let (small, large) = (random_bytes(1, 10_000), random_bytes(2, 300_000));
    std::fs::write(m.path("small"), &small).unwrap();
    std::fs::write(m.path("large"), &large).unwrap();
    let to_s3 = counter(port, "graviton_blocks_ingested", &["backend=\"s3\""]);
    let to_db = counter(port, "graviton_blocks_ingested", &["backend=\"postgres\""]);
    assert_eq!(
        (to_s3, to_db),
        (1, 1),
        "the large block went to S3, the small one to the database"
    );
    m.unmount();
    m.mount();
    assert!(std::fs::read(m.path("small")).unwrap() == small);
    assert!(std::fs::read(m.path("large")).unwrap() == large);
    let fsck = common::mounted::ok(m.graviton(&["fsck", "--verify-data", &m.source]), "fsck");
    assert!(
        fsck.contains("2 blocks (data verified): 0 problems"),
        "{fsck}"
    );
    std::fs::remove_file(m.path("small")).unwrap();
    let gc = common::mounted::ok(m.graviton(&["gc", "--grace", "0s", &m.source]), "gc");
    assert!(gc.contains("deleted 1 blocks (10000 bytes)"), "{gc}");
    assert_eq!(m.status_json()["stored_blocks"], 1);

    // only where the blocks are elsewhere than in the database
    let pg = graviton_testkit::scratch_database();
    let out = m.graviton(&[
        "format",
        "--small-blocks",
        "64k",
        "--store",
        "postgres",
        &pg,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a PostgreSQL volume"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A random read of a few KiB in a large file on S3 fetches the groups of the block that hold
/// it (256 KiB of an 8 MiB block), verified; a second read in that block fetches it whole.
#[test]
fn a_random_read_in_a_large_file_fetches_part_of_its_block() {
    graviton_testkit::needs_servers!();
    use std::os::unix::fs::FileExt;
    let port = free_port();
    // a 16 MiB block cache: files over 4 MiB are not fetched whole on a random read
    let m = Mounted::new_pg_with_store(
        &format!("metrics=127.0.0.1:{port},cache_mb=16"),
        Some(&s3_scratch_url()),
    );
    let data = random_bytes(31, 24 << 20);
    std::fs::write(m.path("f"), &data).unwrap();
    m.unmount();
    m.mount();
    let fetched = || counter(port, "graviton_bytes_fetched", &["backend=\"s3\""]);
    let f = std::fs::File::open(m.path("f")).unwrap();
    let mut got = vec![0u8; 4096];
    let at = (10 << 20) + 12_345;
    f.read_exact_at(&mut got, at).unwrap();
    assert!(
        got == data[at as usize..at as usize + 4096],
        "the bytes read"
    );
    let first = fetched();
    eprintln!("a 4 KiB random read fetched {first} bytes");
    assert!(
        first > 0 && first <= 512 << 10,
        "the 256 KiB groups of an 8 MiB block that hold it: {first}"
    );
    // another place in that block: now the whole block
    let before = fetched();
    let at = (13 << 20) + 7;
    f.read_exact_at(&mut got, at).unwrap();
    assert!(
        got == data[at as usize..at as usize + 4096],
        "the bytes read"
    );
    let second = fetched() - before;
    eprintln!("a second read in that block fetched {second} bytes");
    assert!(second >= 8 << 20, "the whole block: {second}");
    // a first read in another block: a part again
    let before = fetched();
    let at = (20 << 20) + 99;
    f.read_exact_at(&mut got, at).unwrap();
    assert!(
        got == data[at as usize..at as usize + 4096],
        "the bytes read"
    );
    assert!(fetched() - before <= 512 << 10, "a part of the third block");
}
