//! Write-behind metadata (`-o writeback` on a PostgreSQL volume): a transaction commits into a
//! journal on the local disk and an in-memory overlay, and returns; a background applier sends
//! committed transactions to the engine below, many per engine transaction, in commit order.
//!
//! - Reads see the overlay first (a transaction's own writes, then committed ones not yet
//!   applied), then the engine below. A record leaves the overlay once the engine has it.
//! - Isolation is optimistic: a transaction that read or wrote an inode another transaction
//!   wrote after it began fails with [`MetaError::Conflict`] at commit, and the core runs it
//!   again. The metadata port's isolation rule (operations read the inode of what they change)
//!   makes inode-level checks enough.
//! - Durability: a commit reaches the kernel (a killed daemon loses nothing) and `sync` (fsync)
//!   reaches the disk of this machine. Until applied, a change exists only on this machine.
//! - Exclusivity: the applier overwrites records without reading them, so no other mount may
//!   change the volume meanwhile. A write-behind mount claims the volume (a key-value record
//!   naming its host and journal) and refuses to start while another mount is live; other
//!   mounts, and `graviton gc`, refuse to start while the claim stands. The claim is released
//!   when the mount ends with nothing left to apply; a crashed mount's claim stands until the
//!   volume is mounted again from the same host, which first applies what its journal holds.
//!
//! Here the layer and its claim; `applier.rs` what is committed and not yet applied, and the
//! applier; `layers.rs` reads through the layers; `txn.rs` transactions.

mod applier;
mod layers;
#[cfg(test)]
mod tests;
mod txn;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::journal::Journal;
use super::overlay::Overlay;
use super::{Ino, Inode, MetaError, MetaRead, MetaResult, MetaStore, MetaTxn, Usage};
use crate::domain::BlockKey;

use applier::*;
use layers::*;
use txn::*;

/// Key-value key of the claim: who holds changes the engine does not have yet.
pub const CLAIM_KEY: &str = "writeback/owner";
/// The applier waits this long for more commits to send together (unless hurried).
const APPLY_DELAY: Duration = Duration::from_millis(200);
/// ...or until this many are waiting.
const APPLY_BATCH: usize = 512;
/// Operations sent in one engine transaction, at most (a record is never split).
const MAX_BATCH_OPS: usize = 4096;
/// Commits wait (backpressure) while this many are waiting to be applied.
const MAX_QUEUED: usize = 20_000;
/// How long a usage count (`graviton status`) waits for pending changes to reach the engine.
const USAGE_WAIT: Duration = Duration::from_secs(2);

/// Why a mount may not use the volume now.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "a -o writeback mount on {0} has the volume to itself and may hold changes not yet sent: unmount it, or if it died, mount the volume there again to send them"
    )]
    Claimed(String),
    #[error(
        "-o writeback needs the volume to itself on a PostgreSQL engine, and it is mounted on {0}"
    )]
    InUse(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Refuses when a write-behind mount other than `me` holds changes the engine does not have.
pub fn check_unclaimed(meta: &dyn MetaStore, me: Option<&str>) -> Result<(), ClaimError> {
    match meta.kv_get(CLAIM_KEY)? {
        Some(owner) if Some(owner.as_slice()) != me.map(str::as_bytes) => Err(ClaimError::Claimed(
            String::from_utf8_lossy(&owner).into_owned(),
        )),
        _ => Ok(()),
    }
}

/// Whether process `pid` of this machine runs (a zombie does not).
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // the state follows the parenthesised command name
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

pub struct WriteBehind {
    state: Arc<State>,
    applier: Mutex<Option<JoinHandle<()>>>,
    /// What the claim says while this mount holds it.
    identity: String,
}

impl WriteBehind {
    /// Puts a write-behind layer with its journal in `dir` over `inner`, for this mount only:
    /// claims the volume under `identity` (host and journal folder), refuses when another
    /// mount is live, and first sends whatever an earlier run left in the journal.
    pub fn open(
        inner: Arc<dyn MetaStore>,
        dir: &Path,
        identity: &str,
    ) -> Result<WriteBehind, ClaimError> {
        Self::open_with(inner, dir, identity, false)
    }

    /// `open` with an applier that never runs: every commit stays in the overlay (tests).
    #[doc(hidden)]
    pub fn open_paused(
        inner: Arc<dyn MetaStore>,
        dir: &Path,
        identity: &str,
    ) -> Result<WriteBehind, ClaimError> {
        Self::open_with(inner, dir, identity, true)
    }

    fn open_with(
        inner: Arc<dyn MetaStore>,
        dir: &Path,
        identity: &str,
        paused: bool,
    ) -> Result<WriteBehind, ClaimError> {
        // claim first, then look for other mounts: a mount starting meanwhile registers its
        // session first and looks for a claim second, so one of the two sees the other
        check_unclaimed(inner.as_ref(), Some(identity))?;
        let had_claim = inner.kv_get(CLAIM_KEY)?.is_some();
        inner.kv_put(CLAIM_KEY, identity.as_bytes())?;
        if let Some(shared) = inner.shared() {
            let me = shared.session();
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            // a session of a daemon on this machine that is gone (killed) does not count
            let live = |s: &super::SessionRecord| s.host != host || process_runs(s.pid);
            if let Some(other) = shared
                .sessions()?
                .into_iter()
                .find(|s| Some(s.id) != me && live(s))
            {
                if !had_claim {
                    let _ = inner.kv_delete(CLAIM_KEY);
                }
                return Err(ClaimError::InUse(format!(
                    "{} at {}",
                    other.host, other.mountpoint
                )));
            }
        }
        let (mut journal, left) = Journal::open(dir)?;
        if !left.is_empty() {
            tracing::info!(
                "write-behind: sending {} transactions an earlier run left in {}",
                left.len(),
                dir.display()
            );
            apply_all(inner.as_ref(), left)?;
        }
        // only once the engine has them
        journal.clear()?;
        let state = Arc::new(State {
            inner,
            pending: Mutex::new(Pending {
                overlay: Overlay::default(),
                queue: VecDeque::new(),
                journal,
                seq: 0,
                written: HashMap::new(),
                open: BTreeMap::new(),
                fresh: HashSet::new(),
            }),
            changed: Condvar::new(),
            hurry: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(paused),
        });
        let s = state.clone();
        let handle = std::thread::Builder::new()
            .name("graviton-meta-apply".into())
            .spawn(move || {
                crate::background::lower_this_threads_priority();
                s.run_applier()
            })
            .map_err(|e| {
                MetaError::backend("write-behind", format!("starting the applier: {e}"))
            })?;
        Ok(WriteBehind {
            state,
            applier: Mutex::new(Some(handle)),
            identity: identity.to_string(),
        })
    }

    /// Transactions committed but not yet applied.
    pub fn queued(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Sends what is left (waiting up to two minutes), stops the applier, and releases the
    /// claim when nothing is left; true when nothing is.
    pub fn finish(&self) -> bool {
        let done = self.state.drain(Duration::from_secs(120));
        self.stop_applier();
        if done {
            if let Err(e) = self.release_claim() {
                tracing::warn!("write-behind: releasing the volume: {e}");
                return false;
            }
        } else {
            tracing::warn!(
                "write-behind: {} transactions are left in the journal for the next mount",
                self.queued()
            );
        }
        done
    }

    /// Deletes the claim if it is still this mount's (never another's that came after it).
    fn release_claim(&self) -> MetaResult<()> {
        let claim = self.state.inner.kv_get(CLAIM_KEY)?;
        if claim.as_deref() == Some(self.identity.as_bytes()) {
            self.state.inner.kv_delete(CLAIM_KEY)?;
        }
        Ok(())
    }

    fn stop_applier(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // under the lock: the applier checks `stop` and starts waiting with the lock held, so
        // a notification sent between the two would be lost and it would sleep on
        drop(self.state.lock());
        self.state.changed.notify_all();
        if let Some(h) = self.applier.lock().expect("lock").take() {
            let _ = h.join();
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.stop_applier();
    }
}

impl super::MetaLayer for WriteBehind {
    fn inner(&self) -> &dyn MetaStore {
        self.state.inner.as_ref()
    }

    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>> {
        let began = {
            let mut p = self.state.lock();
            let s = p.seq;
            *p.open.entry(s).or_default() += 1;
            s
        };
        Ok(Box::new(WbTxn {
            layers: Layers {
                touched: Some(Vec::new()),
                ..Layers::new(&self.state)
            },
            ops: Vec::new(),
            began,
            wrote: Vec::new(),
            finished: false,
        }))
    }

    fn read(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        Ok(Box::new(Layers::new(&self.state)))
    }

    fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>> {
        if let Some(k) = self.state.lock().overlay.inode(ino) {
            return Ok(k);
        }
        self.state.inner.read_inode(ino)
    }

    /// Everything committed is applied first, so the engine's snapshot has it.
    fn snapshot(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        if !self.state.drain(Duration::from_secs(60)) {
            return Err(MetaError::backend(
                "write-behind",
                "changes waiting to be applied did not reach the engine",
            ));
        }
        self.state.inner.snapshot()
    }

    fn allocate_ino(&self) -> MetaResult<Ino> {
        let ino = self.state.inner.allocate_ino()?;
        let mut p = self.state.lock();
        if p.fresh.len() >= 100_000 {
            // numbers allocated for operations that failed: forgetting them costs only reads
            p.fresh.clear();
        }
        p.fresh.insert(ino);
        Ok(ino)
    }

    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        let mut all: BTreeSet<Ino> = self.state.inner.orphans()?.into_iter().collect();
        for (ino, orphan) in self.state.lock().overlay.orphan_marks() {
            if orphan {
                all.insert(ino);
            } else {
                all.remove(&ino);
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Counted by the engine: what is pending is given a moment to reach it first, so that
    /// `graviton status` of this mount counts its own creates and deletes.
    fn usage(&self) -> MetaResult<Usage> {
        self.state.drain(USAGE_WAIT);
        self.state.inner.usage()
    }

    /// Conservative: a block some pending map references counts, and so does one the engine
    /// still references where a pending change removed it.
    fn is_referenced(&self, key: &BlockKey) -> MetaResult<bool> {
        if self.state.lock().overlay.references(key) {
            return Ok(true);
        }
        self.state.inner.is_referenced(key)
    }

    fn referenced_among(&self, keys: &[BlockKey]) -> MetaResult<Vec<BlockKey>> {
        let mut found = self.state.inner.referenced_among(keys)?;
        let p = self.state.lock();
        for k in keys {
            if !found.contains(k) && p.overlay.references(k) {
                found.push(*k);
            }
        }
        Ok(found)
    }

    fn referenced_blocks(&self) -> MetaResult<Vec<BlockKey>> {
        let mut all: BTreeSet<BlockKey> =
            self.state.inner.referenced_blocks()?.into_iter().collect();
        all.extend(self.state.lock().overlay.referenced_keys());
        Ok(all.into_iter().collect())
    }

    /// Makes every commit durable on this machine's disk (the journal).
    fn sync(&self) -> MetaResult<()> {
        self.state.lock().journal.sync()
    }

    /// Sends what is left (waiting up to two minutes), releases the claim when nothing is,
    /// and ends the engine's session.
    fn end_session(&self) {
        self.finish();
        self.state.inner.end_session();
    }

    /// Keeps the claim: the next mount on this machine finishes what this one could not.
    fn end_session_unfinished(&self) {
        self.stop_applier();
        self.state.inner.end_session();
    }
}
