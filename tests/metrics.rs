//! The mount's Prometheus endpoint: FUSE operation latencies and errors, block store counters,
//! RocksDB properties (embedded volumes), metadata query latencies and cache lookups
//! (PostgreSQL volumes).

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::mounted::Mounted;
use common::random_bytes;
use common::scrape::{free_port, sample, scrape};

/// How long a test's file operations and scrapes may take before it fails.
const LIMIT: Duration = Duration::from_secs(90);

/// Runs `body` (the file operations: they would block on a stuck daemon) in a thread and
/// fails the test if it takes longer than `LIMIT`. The caller still owns the mount, whose
/// drop unmounts it and so releases a stuck thread.
fn within_limit<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)));
    });
    match rx.recv_timeout(LIMIT) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("file operations or scrapes took longer than {LIMIT:?}"),
    }
}

/// Creates, writes (and fsyncs), reads back, stats and lists a file in `dir`, and looks up
/// a name that does not exist.
fn file_operations(dir: PathBuf) {
    let data = random_bytes(5, 3 << 20);
    let path = dir.join("f");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        // drop the kernel's copy of the pages, so the reads below reach the daemon
        // SAFETY: an advisory call on a file descriptor this function owns.
        let dropped =
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(dropped, 0, "posix_fadvise");
    }
    assert!(
        std::fs::read(&path).unwrap() == data,
        "read back what was written"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), data.len() as u64);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["f"]);
    assert!(std::fs::metadata(dir.join("missing")).is_err());
}

/// Asserts that the FUSE histogram has samples of each of `ops`.
fn assert_fuse_ops(text: &str, ops: &[&str]) {
    for op in ops {
        let label = format!("op=\"{op}\"");
        let count = sample(text, "graviton_fuse_op_duration_seconds_count", &[&label]);
        assert!(
            count.is_some_and(|c| c > 0.0),
            "no {op} in graviton_fuse_op_duration_seconds ({count:?}):\n{text}"
        );
        let le = sample(
            text,
            "graviton_fuse_op_duration_seconds_bucket",
            &[&label, "le=\"+Inf\""],
        );
        assert_eq!(le, count, "{op}: the +Inf bucket holds every sample");
    }
}

#[test]
fn an_embedded_mount_exports_fuse_block_store_and_rocksdb_metrics() {
    let port = free_port();
    let m = Mounted::new(&[], &format!("metrics=127.0.0.1:{port}"));
    let dir = m.mnt.clone();
    let text = within_limit(move || {
        file_operations(dir);
        scrape(port)
    });
    assert_fuse_ops(&text, &["lookup", "create", "write", "read", "fsync"]);
    assert!(
        sample(
            &text,
            "graviton_fuse_op_duration_seconds_count",
            &["op=\"readdir"]
        )
        .is_some(),
        "readdir or readdirplus timed:\n{text}"
    );
    let enoent = sample(
        &text,
        "graviton_fuse_op_errors_total",
        &["op=\"lookup\"", "errno=\"ENOENT\""],
    );
    assert!(
        enoent.is_some_and(|n| n >= 1.0),
        "the missing name counted as a lookup error ({enoent:?}):\n{text}"
    );
    let ingested = sample(&text, "graviton_bytes_ingested", &[]).unwrap_or(0.0);
    assert!(ingested > 0.0, "bytes ingested: {ingested}\n{text}");
    for p in [
        "rocksdb.num-running-compactions",
        "rocksdb.compaction-pending",
        "rocksdb.estimate-pending-compaction-bytes",
        "rocksdb.total-sst-files-size",
        "rocksdb.cur-size-all-mem-tables",
    ] {
        let label = format!("property=\"{p}\"");
        assert!(
            sample(&text, "graviton_rocksdb_property", &[&label]).is_some(),
            "no {p} gauge:\n{text}"
        );
    }
    let keys = sample(
        &text,
        "graviton_rocksdb_property",
        &["property=\"rocksdb.estimate-num-keys\""],
    );
    assert!(
        keys.is_some_and(|k| k > 0.0),
        "the volume's records counted ({keys:?})"
    );
}

#[test]
fn a_postgresql_mount_exports_query_latencies_and_metadata_cache_lookups() {
    graviton_testkit::needs_servers!();
    let port = free_port();
    let m = Mounted::new_pg(&format!("metrics=127.0.0.1:{port}"));
    let dir = m.mnt.clone();
    let text = within_limit(move || {
        file_operations(dir.clone());
        // The local metadata cache serves (and counts) once the change feed is caught up:
        // stat again, past the kernel's attribute timeout, until a lookup is counted.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = scrape(port);
            if sample(&text, "graviton_meta_cache_total", &[]).is_some()
                || Instant::now() > deadline
            {
                return text;
            }
            std::thread::sleep(Duration::from_millis(1100));
            let _ = std::fs::metadata(dir.join("f"));
        }
    });
    assert_fuse_ops(&text, &["lookup", "create", "write", "read", "fsync"]);
    for kind in ["read", "commit"] {
        let label = format!("kind=\"{kind}\"");
        let n = sample(
            &text,
            "graviton_meta_query_duration_seconds_count",
            &["engine=\"postgres\"", &label],
        );
        assert!(
            n.is_some_and(|n| n > 0.0),
            "no {kind} round trips timed ({n:?}):\n{text}"
        );
    }
    let lookups = sample(&text, "graviton_meta_cache_total", &[]);
    assert!(
        lookups.is_some_and(|n| n > 0.0),
        "metadata cache lookups counted ({lookups:?}):\n{text}"
    );
    let ingested = sample(&text, "graviton_bytes_ingested", &[]).unwrap_or(0.0);
    assert!(ingested > 0.0, "bytes ingested: {ingested}");
    assert!(
        sample(&text, "graviton_rocksdb_property", &[]).is_none(),
        "no RocksDB engine on a PostgreSQL volume"
    );
}
