//! Kernel cache coherence on shared volumes. The kernel keeps entries and attributes for the
//! mount's TTL; when another mount changes an inode, the change feed names it and this module
//! tells the kernel to drop what it holds: the inode's attributes and pages, and, for a
//! directory, every entry under it that was handed to the kernel within the TTL (the feed names
//! inodes, not entries, so the names handed out are remembered here).
//!
//! A lock grant waits until the invalidations queued before it are done (`wait_drained`), so a
//! process that takes a lock sees everything committed before the lock was released, as it does
//! with a TTL of 0.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuser::INodeNo;

use crate::vfs::{Change, Fs, Ino};

/// Names remembered before old ones (past the TTL) are swept.
const SWEEP_EVERY: usize = 100_000;

/// Entries of one directory the kernel was given: name → (inode, when).
type Handed = HashMap<Vec<u8>, (Ino, Instant)>;

#[derive(Default)]
pub struct KernelCache {
    ttl: Duration,
    /// directory → name → (inode, when the kernel was given it)
    names: Mutex<HashMap<Ino, Handed>>,
    inserted: AtomicU64,
    queued: AtomicU64,
    done: AtomicU64,
}

impl KernelCache {
    pub fn new(ttl: Duration) -> Arc<KernelCache> {
        Arc::new(KernelCache {
            ttl,
            ..Default::default()
        })
    }

    /// Records that the kernel now caches `parent/name` → `ino`.
    pub fn handed_out(&self, parent: Ino, name: &[u8], ino: Ino) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut names = self.names.lock().expect("lock");
        names
            .entry(parent)
            .or_default()
            .insert(name.to_vec(), (ino, now));
        if self
            .inserted
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY as u64)
        {
            let ttl = self.ttl;
            names.retain(|_, dir| {
                dir.retain(|_, (_, at)| now.duration_since(*at) < ttl);
                !dir.is_empty()
            });
        }
    }

    /// Waits (at most `limit`) until every invalidation queued so far has reached the kernel.
    pub fn wait_drained(&self, limit: Duration) {
        let target = self.queued.load(Ordering::SeqCst);
        let start = Instant::now();
        while self.done.load(Ordering::SeqCst) < target && start.elapsed() < limit {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Entries under `dir` the kernel may still hold.
    fn take_dir(&self, dir: Ino) -> Vec<(Vec<u8>, Ino)> {
        let names = self.names.lock().expect("lock").remove(&dir);
        names
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, (_, at))| at.elapsed() < self.ttl)
            .map(|(name, (ino, _))| (name, ino))
            .collect()
    }

    /// Directories under which the kernel may still hold entries.
    fn dirs(&self) -> Vec<Ino> {
        self.names.lock().expect("lock").keys().copied().collect()
    }
}

enum Work {
    Inodes(Vec<Ino>),
    Everything,
}

/// Applies other mounts' changes to the kernel's caches for as long as the change feed runs.
pub fn follow_changes(
    notifier: fuser::Notifier,
    fs: &Fs,
    cache: Arc<KernelCache>,
) -> std::io::Result<()> {
    let (tx, feed) = std::sync::mpsc::channel::<Work>();
    let tx = Mutex::new(tx);
    let queued = cache.clone();
    let followed = fs.follow_changes(Arc::new(move |change: &Change| {
        let work = match change {
            Change::Inodes(inos) => Work::Inodes(inos.clone()),
            Change::All | Change::Resumed => Work::Everything,
            Change::Lost | Change::Alive(_) => return,
        };
        queued.queued.fetch_add(1, Ordering::SeqCst);
        let _ = tx.lock().expect("lock").send(work);
    }));
    if !followed {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("graviton-inval".into())
        .spawn(move || {
            for work in feed {
                let inos = match work {
                    Work::Inodes(inos) => inos,
                    Work::Everything => cache.dirs(),
                };
                // ENOENT answers mean the kernel holds nothing of that inode or entry
                for ino in inos {
                    let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
                    for (name, child) in cache.take_dir(ino) {
                        let name = std::ffi::OsStr::from_bytes(&name);
                        let _ = notifier.inval_entry(INodeNo(ino), name);
                        let _ = notifier.inval_inode(INodeNo(child), 0, 0);
                    }
                }
                cache.done.fetch_add(1, Ordering::SeqCst);
            }
        })?;
    Ok(())
}
