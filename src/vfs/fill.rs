//! Kernel page-cache fill. A read that misses the block cache fetches a whole block (1 MiB by
//! default) to answer the kernel's few KiB; the rest of the block's bytes are handed to the
//! kernel's page cache (FUSE_NOTIFY_STORE), so later reads of them are answered by the kernel
//! without a round trip to the daemon. Random 4 KiB reads of a file on S3 gain most: one GET,
//! then the block's other 255 pages read at memory speed.
//!
//! A stored page must never be older than what a reader may see, so a fill happens only while
//! this mount has no writer of the file, and never across a local change of its bytes:
//!
//! - The fill runs on its own thread, holding the inode's gate shared. It checks that the
//!   inode's `data_version` is still the one the bytes were read under, that no handle of this
//!   mount may write the file and that nothing is pending, then stores, clipped to the size.
//! - An open for writing and a truncate take the gate exclusively ([`PageFill::exclude`]) before
//!   they count as a writer or change the file, so they wait for a fill in progress, and no fill
//!   starts while they last. (A fill can wait for the kernel to unlock pages that a read in
//!   flight holds, so the FUSE adapter moves such an open off its reader threads when the gate
//!   is busy: [`PageFill::busy`].)
//! - Another mount's change (shared volumes) reaches the kernel as an invalidation; a fill that
//!   overlapped one is taken back ([`KernelPages::forget`]), so it cannot outlive it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, RwLock, RwLockWriteGuard, Weak};

use super::Core;
use crate::domain::Extent;
use crate::meta::{Ino, Inode};

/// The kernel's page cache of a mount, as the FUSE adapter exposes it.
pub trait KernelPages: Send + Sync {
    /// Puts `data` into the inode's cached pages from `offset` on.
    fn store(&self, ino: Ino, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// Drops the inode's cached pages of `offset..offset + len`.
    fn forget(&self, ino: Ino, offset: u64, len: u64) -> std::io::Result<()>;
}

/// Inodes share gates by number: a wait on a busy gate is at most one fill long.
const GATES: usize = 64;
/// Fills waiting for the thread; more are dropped (the kernel then asks as usual).
const QUEUE: usize = 64;

/// Files with more extents than this fill only the extent read, not every stretch of the
/// file its block backs (which takes reading the whole map).
const WHOLE_MAP_MAX: u64 = 65_536;

/// One block's bytes, offered for the file ranges they back.
pub(crate) struct Fill {
    pub ino: Ino,
    /// The inode's `data_version` the bytes were read under.
    pub version: u64,
    /// The extent that was read; its block is `block`.
    pub extent: Extent,
    pub block: Arc<Vec<u8>>,
}

pub(crate) struct PageFill {
    gates: Vec<RwLock<()>>,
    /// Bumped by every change another mount made (before the kernel is told).
    remote: AtomicU64,
    queue: OnceLock<SyncSender<Fill>>,
}

impl PageFill {
    pub fn new() -> PageFill {
        PageFill {
            gates: (0..GATES).map(|_| RwLock::new(())).collect(),
            remote: AtomicU64::new(0),
            queue: OnceLock::new(),
        }
    }

    fn gate(&self, ino: Ino) -> &RwLock<()> {
        &self.gates[ino as usize % GATES]
    }

    /// Held while the inode gains a writer or its bytes change other than through the kernel's
    /// pages: no fill of it is in progress or starts meanwhile.
    pub fn exclude(&self, ino: Ino) -> RwLockWriteGuard<'_, ()> {
        self.gate(ino).write().expect("fill gate")
    }

    /// Whether [`exclude`](Self::exclude) would wait now (for a fill in progress).
    pub fn busy(&self, ino: Ino) -> bool {
        self.queue.get().is_some() && self.gate(ino).try_write().is_err()
    }

    pub fn enabled(&self) -> bool {
        self.queue.get().is_some()
    }

    /// Another mount changed the volume.
    pub fn remote_change(&self) {
        self.remote.fetch_add(1, Ordering::SeqCst);
    }

    /// Queues a fill; dropped when the thread is behind or not started.
    pub fn offer(&self, fill: Fill) {
        if let Some(queue) = self.queue.get()
            && let Err(TrySendError::Full(_)) = queue.try_send(fill)
        {
            metrics::counter!(crate::metrics::PAGE_FILL, "result" => "dropped").increment(1);
        }
    }

    /// Starts the fill thread; it ends with the core.
    pub fn start(core: &Arc<Core>, pages: Box<dyn KernelPages>) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        if core.fill.queue.set(tx).is_err() {
            return Ok(());
        }
        if let Some(shared) = core.meta.shared() {
            // subscribed after the metadata cache: by the time this runs, the cache no longer
            // answers with the inode's old version
            let weak = Arc::downgrade(core);
            shared.subscribe(Arc::new(move |_change: &crate::meta::Change| {
                if let Some(core) = weak.upgrade() {
                    core.fill.remote_change();
                }
            }));
        }
        let weak = Arc::downgrade(core);
        std::thread::Builder::new()
            .name("graviton-fill".into())
            .spawn(move || run(weak, rx, pages))
            .map(drop)
    }
}

fn run(core: Weak<Core>, queue: Receiver<Fill>, pages: Box<dyn KernelPages>) {
    for fill in queue {
        let Some(core) = core.upgrade() else { return };
        let result = match fill_one(&core, &fill, pages.as_ref()) {
            Ok(true) => "stored",
            Ok(false) => "skipped",
            Err(e) => {
                tracing::debug!(ino = fill.ino, "page fill failed: {e}");
                "failed"
            }
        };
        metrics::counter!(crate::metrics::PAGE_FILL, "result" => result).increment(1);
    }
}

/// Stores one fill if it is still current; Ok(false) when it was not.
fn fill_one(core: &Core, fill: &Fill, pages: &dyn KernelPages) -> std::io::Result<bool> {
    let _shared = core.fill.gate(fill.ino).read().expect("fill gate");
    let remote_before = core.fill.remote.load(Ordering::SeqCst);
    let Ok(inode) = core.inode(fill.ino) else {
        return Ok(false);
    };
    if inode.data_version != fill.version || !core.nothing_pending(fill.ino) {
        return Ok(false);
    }
    let mut stored = Vec::new();
    for (offset, range) in stretches(core, &inode, fill) {
        let end = (offset + range.len() as u64).min(inode.size);
        if end <= offset {
            continue;
        }
        let len = end - offset;
        let bytes = &fill.block[range.start..range.start + len as usize];
        pages.store(fill.ino, offset, bytes)?;
        stored.push((offset, len));
    }
    if core.fill.remote.load(Ordering::SeqCst) != remote_before {
        // another mount's change may have been applied to the kernel before these pages
        for (offset, len) in stored {
            pages.forget(fill.ino, offset, len)?;
        }
        return Ok(false);
    }
    Ok(!stored.is_empty())
}

/// The stretches of the file the fill's block backs, as (file offset, bytes of the block),
/// back-to-back ones merged. A flush packs small writes into one block, so a randomly written
/// file's block backs many: all of them come from one fetch.
fn stretches(core: &Core, inode: &Inode, fill: &Fill) -> Vec<(u64, std::ops::Range<usize>)> {
    let read = |e: &Extent| (e.offset, e.block_range());
    if inode.extent_count > WHOLE_MAP_MAX {
        return vec![read(&fill.extent)];
    }
    let map = match core
        .meta
        .read()
        .and_then(|mut r| r.extents(inode.ino, 0..u64::MAX))
    {
        Ok(map) => map,
        Err(_) => return vec![read(&fill.extent)],
    };
    let mut out: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
    for e in map.iter().filter(|e| e.key == fill.extent.key) {
        match out.last_mut() {
            Some((at, r))
                if *at + r.len() as u64 == e.offset && r.end == e.block_offset as usize =>
            {
                r.end += e.len as usize;
            }
            _ => out.push(read(e)),
        }
    }
    out
}
