//! `graviton format`: create a volume.

use clap::Args;

use crate::domain::frames::Compression;
use crate::domain::{Chunker, DEFAULT_CHUNKER, HashAlgo};
use crate::volume::{BlockFormat, Source, StoreUrl, Volume};

#[derive(Args, Debug)]
pub struct FormatArgs {
    /// Hash naming the blocks: blake3 or sha-256.
    #[arg(long, default_value = "blake3")]
    pub hash: HashAlgo,
    /// Chunker: fixed-<n> or fastcdc-<min>-<avg>-<max> (sizes like 4096, 256k, 1m). Default:
    /// fixed-1m, or fixed-8m for blocks in S3 (an eighth of the requests).
    #[arg(long)]
    pub chunker: Option<Chunker>,
    /// Block store: file:///path, s3://bucket/prefix?endpoint=…&region=…, or postgres (blocks
    /// in the volume's database); default: <SOURCE>/blocks. Required for PostgreSQL volumes.
    #[arg(long)]
    pub store: Option<String>,
    /// Another block store (file:///path or s3://…) that keeps a copy of every block; repeat
    /// for more. Writes go to every store; reads use the first good copy.
    #[arg(long = "replica", value_name = "URL")]
    pub replicas: Vec<String>,
    /// Blocks shorter than SIZE (e.g. 64k) are kept in the metadata database (PostgreSQL,
    /// or an embedded volume's RocksDB) instead of the block store: closing a small file
    /// costs an INSERT, not an upload or a synced file. Default: for an embedded volume with
    /// blocks in files, the chunker's shortest full block (1m by default); 64k for a
    /// PostgreSQL volume with blocks in S3 or files; else 0 (off).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub small_blocks: Option<u32>,
    /// Compress blocks: zstd[:LEVEL] (1–22, default 3), lz4 or none. Each block is stored as
    /// frames of at most 64 KiB (more for blocks over 2 MiB), each compressed only when that
    /// makes it smaller. Deduplication works as without it.
    #[arg(long, value_name = "ALGO", default_value = "none", value_parser = compression)]
    pub compress: Compression,
    /// Encrypt: every block stored as frames sealed with AES-256-GCM and named by a
    /// keyed hash, under a new random data key kept only wrapped by the passphrase (from
    /// --key-file, else GRAVITON_PASSPHRASE, else asked twice on the terminal). Losing the
    /// passphrase or key file loses the data.
    #[arg(long)]
    pub encrypt: bool,
    /// Keep removed files and directories in /.trash this many days (fractions allowed; 0:
    /// off); `graviton settings set trash_days` changes it later.
    #[arg(long, value_name = "DAYS", default_value = "0")]
    pub trash_days: String,
    /// A directory for an embedded volume, or a postgres:// URL (password from the URL or
    /// PGPASSWORD-style settings of the URL; never printed).
    pub source: String,
}

/// Blocks kept in S3: each GET and PUT has a cost and a latency of its own, so blocks are
/// larger (AWS suggests 8 or 16 MiB per ranged GET). On PostgreSQL + S3, sequential reads and
/// writes gain from 1 MiB up to 8 MiB while random writes do not change; the price is a cold
/// small read, which fetches more bytes (`bench/probe-object-size.sh`, `bench/bench-s3.sh`).
const S3_CHUNKER: Chunker = Chunker::Fixed(8 << 20);

/// Blocks kept in the database of a PostgreSQL volume with blocks in S3 or in files: the size
/// below which the write path packs pieces (`vfs::pack`), i.e. small files and tails. A small
/// file's close then sends its block with the metadata's statements, instead of an S3 PUT or
/// a block file written and synced before the commit. Measured on untars into PostgreSQL + S3
/// (s3rver) and PostgreSQL + files: see docs/benchmarks.md.
const SMALL_BLOCKS_ON_POSTGRES: u32 = 64 << 10;

fn compression(s: &str) -> Result<Compression, String> {
    Compression::parse(s).map_err(|e| e.to_string())
}

fn size(s: &str) -> Result<u32, String> {
    crate::domain::chunker::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 65536, 64k, 1m)"))
}

pub fn run(args: FormatArgs, key_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let store = args.store.as_deref().map(StoreUrl::parse);
    let on_s3 = matches!(store, Some(Ok(StoreUrl::S3(_))));
    let blocks_elsewhere = on_s3 || matches!(store, Some(Ok(StoreUrl::File(_))));
    let chunker = args
        .chunker
        .unwrap_or(if on_s3 { S3_CHUNKER } else { DEFAULT_CHUNKER });
    let source = Source::parse(&args.source);
    let small_blocks = match args.small_blocks {
        Some(n) => n,
        None if blocks_elsewhere && matches!(source, Source::Postgres(_)) => {
            SMALL_BLOCKS_ON_POSTGRES
        }
        None if !on_s3 && matches!(source, Source::Dir(_)) => {
            crate::volume::embedded_small_blocks(&chunker)
        }
        None => 0,
    };
    anyhow::ensure!(
        crate::vfs::tree::trash::parse_days(&args.trash_days).is_some(),
        "--trash-days: {:?} is not a number of days",
        args.trash_days
    );
    let passphrase = match args.encrypt {
        true => Some(crate::volume::unlock::new_passphrase(
            crate::volume::unlock::PASSPHRASE_ENV,
            key_file,
            &source.display(),
        )?),
        false => None,
    };
    let vol = Volume::format_replicated(
        &source,
        args.hash,
        chunker,
        args.store.as_deref(),
        &args.replicas,
        BlockFormat {
            small_blocks,
            compression: args.compress,
            passphrase: passphrase.as_deref().map(Vec::as_slice),
        },
    )?;
    println!(
        "formatted {} (hash {}, chunker {}, compression {})\nmetadata: {}\nblocks:   {}",
        vol.source.display(),
        vol.settings.hash,
        vol.settings.chunker,
        vol.settings.compression.as_deref().unwrap_or("none"),
        vol.stack.metadata,
        vol.stack.blocks,
    );
    if crate::vfs::tree::trash::parse_days(&args.trash_days).is_some_and(|d| !d.is_zero()) {
        let mut out = std::io::stdout();
        crate::maint::settings::set(&vol, "trash_days", &args.trash_days, &mut out)?;
    }
    if vol.encrypted() {
        println!(
            "encrypted: the data key is stored only wrapped under the passphrase; whoever loses the passphrase (or key file) loses the data"
        );
    }
    Ok(())
}
