//! Every metric Graviton exports, named in one place, and the Prometheus endpoint
//! (`-o metrics=ADDR` or `--metrics ADDR` on `graviton mount`). Recording is a no-op until an
//! exporter is installed, so tests and tools pay nothing.

use std::net::SocketAddr;

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
/// permanent, corrupt, error). A retried S3 call counts each failed attempt.
pub const BACKEND_FAILURES: &str = "graviton_backend_failures_total";
/// Metadata transactions run again after a conflict or a lost connection (counter).
pub const META_RETRIES: &str = "graviton_meta_retries_total";
/// Block cache lookups (counter; label `result`: hit, miss, prefetch).
pub const BLOCK_CACHE: &str = "graviton_block_cache_total";

/// Serves `/metrics` in Prometheus text format on `addr` from now on.
pub fn serve_prometheus(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))
}
