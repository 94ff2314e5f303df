//! What is committed and not yet applied (the journal, the overlay, the queue), and the
//! applier that sends it to the engine below in commit order.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::*;
use crate::meta::journal::{Journal, Record};
use crate::meta::overlay::Overlay;
use crate::meta::{Ino, MetaError, MetaResult, MetaStore};

pub(super) struct Queued {
    pub(super) at: Instant,
    pub(super) record: Arc<Record>,
}

pub(super) struct Pending {
    pub(super) overlay: Overlay,
    pub(super) queue: VecDeque<Queued>,
    pub(super) journal: Journal,
    /// Last sequence number committed.
    pub(super) seq: u64,
    /// The last sequence number each inode was written by, for conflict checks (pruned when no
    /// open transaction began before it).
    pub(super) written: HashMap<Ino, u64>,
    /// Sequence numbers open transactions began at, with counts.
    pub(super) open: BTreeMap<u64, usize>,
    /// Inode numbers handed out here and not written yet: the engine has no record of them,
    /// so lookups in a new directory or of a new file's xattrs need not ask it.
    pub(super) fresh: HashSet<Ino>,
}

pub(super) struct State {
    pub(super) inner: Arc<dyn MetaStore>,
    pub(super) pending: Mutex<Pending>,
    /// Signalled on every commit, every apply and every change of `hurry` or `stop`.
    pub(super) changed: Condvar,
    /// Callers waiting for everything to be applied.
    pub(super) hurry: AtomicUsize,
    pub(super) stop: AtomicBool,
    /// Tests hold the applier back with this.
    pub(super) paused: AtomicBool,
}

impl State {
    pub(super) fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().expect("write-behind lock")
    }

    pub(super) fn run_applier(&self) {
        let mut attempts = crate::retry::Backoff::JOURNAL.start(None);
        let mut p = self.lock();
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            let Some(oldest) = p.queue.front().map(|q| q.at) else {
                if stopping {
                    return;
                }
                p = self.changed.wait(p).expect("write-behind lock");
                continue;
            };
            let age = oldest.elapsed();
            let hurried = stopping || self.hurry.load(Ordering::SeqCst) > 0;
            let paused = self.paused.load(Ordering::SeqCst);
            if paused || (!hurried && p.queue.len() < APPLY_BATCH && age < APPLY_DELAY) {
                if stopping {
                    return;
                }
                let wait = if paused {
                    Duration::from_secs(3600)
                } else {
                    APPLY_DELAY - age
                };
                p = self
                    .changed
                    .wait_timeout(p, wait)
                    .expect("write-behind lock")
                    .0;
                continue;
            }
            let records: Vec<Arc<Record>> = p.queue.iter().map(|q| q.record.clone()).collect();
            let end = batch_end(&records, 0);
            let batch = &records[..end];
            drop(p);
            let result = apply(self.inner.as_ref(), batch);
            p = self.lock();
            match result {
                Ok(()) => {
                    attempts.reset();
                    let applied = batch[end - 1].seq;
                    p.queue.drain(..end);
                    p.overlay.forget_applied(applied);
                    let empty = p.queue.is_empty();
                    p.journal.forget_applied(applied, empty);
                    metrics::gauge!(crate::metrics::WRITEBACK_META_QUEUED)
                        .set(p.queue.len() as f64);
                    self.changed.notify_all();
                }
                Err(e) => {
                    let backoff = attempts.next_pause().expect("no deadline");
                    if !matches!(e, MetaError::Conflict) {
                        tracing::warn!(
                            "write-behind: sending {} transactions to {}: {e} (retrying in {backoff:?})",
                            batch.len(),
                            self.inner.engine()
                        );
                    }
                    if stopping {
                        return;
                    }
                    p = self
                        .changed
                        .wait_timeout(p, backoff)
                        .expect("write-behind lock")
                        .0;
                }
            }
        }
    }

    /// Waits (at most `limit`) until every commit is applied; true when it is.
    pub(super) fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.hurry.fetch_add(1, Ordering::SeqCst);
        let mut p = self.lock();
        self.changed.notify_all(); // under the lock, as `stop_applier` explains
        while !p.queue.is_empty() && !self.paused.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            p = self
                .changed
                .wait_timeout(p, deadline - now)
                .expect("write-behind lock")
                .0;
        }
        self.hurry.fetch_sub(1, Ordering::SeqCst);
        p.queue.is_empty()
    }
}

/// Sends `records` to the engine in one transaction.
pub(super) fn apply(inner: &dyn MetaStore, records: &[impl AsRef<Record>]) -> MetaResult<()> {
    let mut tx = inner.begin()?;
    for r in records {
        for op in &r.as_ref().ops {
            op.apply(tx.as_mut())?;
        }
    }
    tx.commit()
}

/// Sends records (those an earlier run left) in batches; gives up with the first error.
pub(super) fn apply_all(inner: &dyn MetaStore, records: Vec<Record>) -> MetaResult<()> {
    let mut start = 0;
    while start < records.len() {
        let end = batch_end(&records, start);
        let mut tries = 0;
        loop {
            match apply(inner, &records[start..end]) {
                Ok(()) => break,
                // (a session that expired meanwhile has been replaced by a new one)
                Err(MetaError::Conflict | MetaError::SessionExpired) if tries < 10 => tries += 1,
                Err(e) => return Err(e),
            }
        }
        start = end;
    }
    Ok(())
}

/// End of the batch starting at `start`: whole records, up to [`MAX_BATCH_OPS`] operations
/// (at least one record).
pub(super) fn batch_end(records: &[impl AsRef<Record>], start: usize) -> usize {
    let mut ops = 0;
    let mut end = start;
    while end < records.len() {
        ops += records[end].as_ref().ops.len();
        if ops > MAX_BATCH_OPS && end > start {
            break;
        }
        end += 1;
    }
    end
}
