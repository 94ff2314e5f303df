//! What a volume holds: files, bytes, blocks, dedup, its stacks and its mounts.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::meta::{SessionRecord, Usage};
use crate::vfs::access::Who;
use crate::volume::{StackDescription, Volume, VolumeSettings};

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
    /// The blocks' content, after dedup and before compression.
    pub stored_bytes: u64,
    /// What the primary store holds for them: frames after compression (and sealing), when
    /// the store can tell.
    #[serde(default)]
    pub stored_form_bytes: Option<u64>,
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
    /// Snapshots (`graviton snapshot`), by name.
    #[serde(default)]
    pub snapshots: Vec<String>,
    /// What the trash holds: entries, and the sizes of its files (counted in `usage` too).
    #[serde(default)]
    pub trash_entries: u64,
    #[serde(default)]
    pub trash_bytes: u64,
    /// Quotas (`graviton quota`), with their limits and usage.
    #[serde(default)]
    pub quotas: Vec<super::quota::Shown>,
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
    let trash = crate::vfs::tree::trash::list(vol.meta.as_ref(), &Who::root())?;
    let snapshots = crate::vfs::tree::snapshot::list(vol.meta.as_ref())?;
    Ok(Status {
        snapshots: snapshots.into_iter().map(|s| s.name).collect(),
        trash_entries: trash.len() as u64,
        trash_bytes: trash.iter().map(|e| e.size).sum(),
        quotas: super::quota::all(vol.meta.as_ref(), &Who::root())?,
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
        stored_form_bytes: match vol.replicas.first() {
            Some((_, primary)) => primary.stored_bytes()?,
            None => vol.store.stored_bytes()?,
        },
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
