//! `graviton status`: what a volume holds.

use std::collections::HashSet;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::meta::{SessionRecord, Usage};
use crate::volume::{StackDescription, Volume, VolumeSettings};

use super::control::Request;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Volume directory or postgres:// URL (default: the default volume).
    pub source: Option<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Status {
    pub volume: String,
    pub engine: String,
    pub block_store: String,
    /// Every block store holding a copy of each block (the primary first), by URL.
    #[serde(default)]
    pub stores: Vec<String>,
    pub settings: VolumeSettings,
    /// The layers metadata and blocks pass through, in the process that answered (a mount
    /// daemon adds its caches and journals).
    #[serde(default)]
    pub stack: StackDescription,
    pub usage: Usage,
    pub stored_blocks: u64,
    pub stored_bytes: u64,
    pub referenced_blocks: u64,
    pub referenced_bytes: u64,
    pub unreferenced_blocks: u64,
    pub unreferenced_bytes: u64,
    /// Unreferenced blocks `graviton gc` has marked and will delete after the grace period.
    #[serde(default)]
    pub gc_candidates: u64,
    /// Logical bytes of files per byte of referenced block content.
    pub dedup_ratio: f64,
    /// Mounts of a shared volume (host, pid, mountpoint, seconds since their heartbeat).
    #[serde(default)]
    pub sessions: Vec<SessionRecord>,
}

pub fn collect(vol: &Volume) -> anyhow::Result<Status> {
    let usage = vol.meta.usage()?;
    let stored = vol.store.list()?;
    let referenced: HashSet<_> = vol.meta.referenced_blocks()?.into_iter().collect();
    let (mut rb, mut rbytes, mut ub, mut ubytes) = (0u64, 0u64, 0u64, 0u64);
    for k in &stored {
        if referenced.contains(k) {
            rb += 1;
            rbytes += k.size as u64;
        } else {
            ub += 1;
            ubytes += k.size as u64;
        }
    }
    Ok(Status {
        volume: vol.source.display(),
        engine: vol.meta.engine().to_string(),
        block_store: format!("{} ({})", vol.store.backend(), vol.capacity_path.display()),
        stores: vol
            .replicas
            .iter()
            .map(|(url, store)| match url.as_str() {
                "" => format!("{} ({})", store.backend(), vol.capacity_path.display()),
                url => crate::volume::redact(url),
            })
            .collect(),
        settings: vol.settings.clone(),
        stack: vol.stack.clone(),
        usage,
        stored_blocks: stored.len() as u64,
        stored_bytes: rbytes + ubytes,
        referenced_blocks: rb,
        referenced_bytes: rbytes,
        unreferenced_blocks: ub,
        unreferenced_bytes: ubytes,
        gc_candidates: super::gc::candidates(vol)?,
        dedup_ratio: if rbytes == 0 {
            1.0
        } else {
            usage.logical_bytes as f64 / rbytes as f64
        },
        sessions: match vol.meta.shared() {
            Some(shared) => shared.sessions()?,
            None => Vec::new(),
        },
    })
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let source = super::source_or_default(args.source)?;
    let mut text = Vec::new();
    super::control::run(&source, &Request::Status, &mut text)?;
    let s: Status = serde_json::from_slice(&text)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("volume:        {}", s.volume);
        println!("engine:        {}", s.engine);
        println!("block store:   {}", s.block_store);
        if s.settings.small_blocks > 0 {
            println!(
                "small blocks:  under {} bytes, in the PostgreSQL database",
                s.settings.small_blocks
            );
        }
        for (i, url) in s.stores.iter().enumerate().skip(1) {
            println!("replica {i}:     {url}");
        }
        println!("metadata:      {}", s.stack.metadata);
        println!("blocks:        {}", s.stack.blocks);
        println!(
            "hash/chunker:  {} / {}",
            s.settings.hash, s.settings.chunker
        );
        println!(
            "files:         {} ({} directories, {} inodes)",
            s.usage.files, s.usage.directories, s.usage.inodes
        );
        println!("logical bytes: {}", s.usage.logical_bytes);
        println!(
            "stored bytes:  {} in {} blocks",
            s.stored_bytes, s.stored_blocks
        );
        println!(
            "referenced:    {} blocks, {} bytes",
            s.referenced_blocks, s.referenced_bytes
        );
        println!(
            "unreferenced:  {} blocks, {} bytes",
            s.unreferenced_blocks, s.unreferenced_bytes
        );
        println!(
            "gc candidates: {} (deleted by `graviton gc` after the grace period)",
            s.gc_candidates
        );
        println!("dedup ratio:   {:.2}", s.dedup_ratio);
        for m in &s.sessions {
            println!(
                "mount:         session {} on {} pid {} at {} (heartbeat {:.1} s ago)",
                m.id, m.host, m.pid, m.mountpoint, m.heartbeat_age_secs
            );
        }
    }
    Ok(())
}
