//! `graviton format`: create a volume.

use std::path::PathBuf;

use clap::Args;

use crate::core::{Chunker, DEFAULT_CHUNKER, HashAlgo};
use crate::volume::Volume;

#[derive(Args, Debug)]
pub struct FormatArgs {
    /// Hash naming the blocks: blake3 or sha-256.
    #[arg(long, default_value = "blake3")]
    pub hash: HashAlgo,
    /// Chunker: fixed-<n> or fastcdc-<min>-<avg>-<max> (sizes like 4096, 256k, 1m).
    #[arg(long, default_value_t = DEFAULT_CHUNKER)]
    pub chunker: Chunker,
    /// Block store URL (file:///path); default: <SOURCE>/blocks.
    #[arg(long)]
    pub store: Option<String>,
    /// Directory that will hold the volume.
    pub source: PathBuf,
}

pub fn run(args: FormatArgs) -> anyhow::Result<()> {
    let vol = Volume::format(&args.source, args.hash, args.chunker, args.store.as_deref())?;
    println!(
        "formatted {} (hash {}, chunker {}, blocks in {})",
        vol.dir.display(),
        vol.settings.hash,
        vol.settings.chunker,
        vol.capacity_path.display()
    );
    Ok(())
}
