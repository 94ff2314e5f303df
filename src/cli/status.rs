//! `graviton status`: what a volume holds (`maint::status`), asked of its mount daemon when
//! there is one.

use clap::Args;

use crate::daemon::control::{Request, run as ask};
use crate::maint::status::Status;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Volume directory or postgres:// URL (default: the default volume).
    pub source: Option<String>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let source = super::source_or_default(args.source)?;
    let mut text = Vec::new();
    ask(&source, &Request::Status, &mut text)?;
    let s: Status = serde_json::from_slice(&text)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("volume:        {}", s.volume);
        println!("engine:        {}", s.engine);
        println!("block store:   {}", s.block_store);
        if s.settings.small_blocks > 0 {
            println!(
                "small blocks:  under {} bytes, in the {} database",
                s.settings.small_blocks, s.engine
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
        // each block's content once (after dedup), before compression
        println!(
            "block bytes:   {} in {} blocks (after dedup)",
            s.stored_bytes, s.stored_blocks
        );
        if let Some(stored) = s.stored_form_bytes {
            println!("stored bytes:  {stored} (as stored in the primary store)");
        }
        if let Some(c) = &s.settings.compression {
            println!("compression:   {c} (frames)");
        }
        match s.settings.encrypted {
            true => println!("encryption:    sealed frames (AES-256-GCM), keyed names"),
            false => println!("encryption:    none"),
        }
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
        if !s.snapshots.is_empty() {
            println!("snapshots:     {}", s.snapshots.join(", "));
        }
        if s.trash_entries > 0 {
            println!(
                "trash:         {} entries, {} bytes of files",
                s.trash_entries, s.trash_bytes
            );
        }
        for q in &s.quotas {
            println!("quota:         {}", q.line());
        }
        for m in &s.sessions {
            println!(
                "mount:         session {} on {} pid {} at {} (heartbeat {:.1} s ago)",
                m.id, m.host, m.pid, m.mountpoint, m.heartbeat_age_secs
            );
        }
    }
    Ok(())
}
