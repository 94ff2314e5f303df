//! Every metric Graviton exports, named in one place, and the Prometheus endpoint
//! (`-o metrics=ADDR` or `--metrics ADDR` on `graviton mount`). Recording is a no-op until an
//! exporter is installed, so tests and tools pay nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes of fresh blocks a block store accepted (counter; label `backend`).
pub const BYTES_INGESTED: &str = "graviton_bytes_ingested";
/// Fresh blocks a block store accepted (counter; label `backend`).
pub const BLOCKS_INGESTED: &str = "graviton_blocks_ingested";
/// Blocks offered that the store already had (counter; label `backend`).
pub const BLOCKS_DEDUPLICATED: &str = "graviton_blocks_deduplicated";
/// Time to store one block, fresh or not (histogram, seconds; label `backend`).
pub const UPLOAD_DURATION: &str = "graviton_upload_duration_seconds";
/// Time to fetch one block (histogram, seconds; label `backend`).
pub const DOWNLOAD_DURATION: &str = "graviton_download_duration_seconds";
/// Bytes fetched from a block store (counter; label `backend`).
pub const BYTES_FETCHED: &str = "graviton_bytes_fetched";
/// Failed block store calls (counter; labels `backend`, `class`: throttled, transient,
/// permanent, not_found, corrupt, error). A retried S3 call counts each failed attempt.
pub const BACKEND_FAILURES: &str = "graviton_backend_failures_total";
/// Metadata transactions run again after a conflict or a lost connection (counter).
pub const META_RETRIES: &str = "graviton_meta_retries_total";
/// Block cache lookups (counter; label `result`: hit, disk_hit, miss, prefetch).
pub const BLOCK_CACHE: &str = "graviton_block_cache_total";
/// Blocks' bytes offered to the kernel's page cache after a read fetched them (counter; label
/// `result`: stored, skipped (the file changed or has a writer), dropped (queue full), failed).
pub const PAGE_FILL: &str = "graviton_page_fill_total";
/// Blocks staged by a write-back mount (`-o writeback`) and not uploaded yet (gauge).
pub const WRITEBACK_STAGED: &str = "graviton_writeback_staged_blocks";
/// Metadata transactions a write-back mount committed to its journal and not yet sent to
/// PostgreSQL (gauge).
pub const WRITEBACK_META_QUEUED: &str = "graviton_writeback_meta_queued_transactions";
/// Time from a FUSE request's arrival to its reply, including time queued for the blocking
/// pool (histogram, seconds; label `op`: the callback's name, e.g. lookup, write, fsync).
pub const FUSE_OP_DURATION: &str = "graviton_fuse_op_duration_seconds";
/// FUSE requests answered with an error (counter; labels `op`, `errno`: e.g. ENOENT).
pub const FUSE_OP_ERRORS: &str = "graviton_fuse_op_errors_total";
/// One round trip to the metadata server (histogram, seconds; labels `engine`: postgres,
/// `kind`: begin (a pooled connection's; a thread's own sends its BEGIN with the first
/// statement), read, write (queued writes sent before a read), commit (the rest of the writes
/// with the COMMIT), rollback, prepare (a connection's prepared reads, once), other
/// (statements outside a file operation's transaction: inode numbers, sessions, locks)).
pub const META_QUERY_DURATION: &str = "graviton_meta_query_duration_seconds";
/// Statements sent again because the metadata server could not be reached (counter; label
/// `engine`).
pub const META_QUERY_RETRIES: &str = "graviton_meta_query_retries_total";
/// Lookups in the local metadata cache of a PostgreSQL volume (counter; label `result`: hit,
/// miss).
pub const META_CACHE: &str = "graviton_meta_cache_total";
/// A RocksDB property of the embedded metadata engine (a column family's summed over them),
/// refreshed every 10 s (gauge; label `property`, e.g. rocksdb.estimate-pending-compaction-bytes).
pub const ROCKSDB_PROPERTY: &str = "graviton_rocksdb_property";

/// Histogram buckets, in seconds: 50 µs to 1 minute.
const LATENCY_BUCKETS: [f64; 19] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether an exporter is installed: lets callers skip timing and background refreshes.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Serves `/metrics` in Prometheus text format on `addr` from now on. Histograms are
/// Prometheus histograms (buckets), which add up across mounts, not summaries.
pub fn serve_prometheus(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
    ENABLED.store(true, Ordering::Relaxed);
    Ok(())
}
