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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::journal::{Journal, Op, Record};
use super::overlay::Overlay;
use super::{DirEntry, Ino, Inode, MetaError, MetaRead, MetaResult, MetaStore, MetaTxn, Usage};
use crate::domain::extent::Splice;
use crate::domain::{BlockKey, Extent};

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
/// How long statfs waits for pending changes to reach the engine before it counts there.
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

struct Queued {
    at: Instant,
    record: Arc<Record>,
}

struct Pending {
    overlay: Overlay,
    queue: VecDeque<Queued>,
    journal: Journal,
    /// Last sequence number committed.
    seq: u64,
    /// The last sequence number each inode was written by, for conflict checks (pruned when no
    /// open transaction began before it).
    written: HashMap<Ino, u64>,
    /// Sequence numbers open transactions began at, with counts.
    open: BTreeMap<u64, usize>,
    /// Inode numbers handed out here and not written yet: the engine has no record of them,
    /// so lookups in a new directory or of a new file's xattrs need not ask it.
    fresh: HashSet<Ino>,
}

struct State {
    inner: Arc<dyn MetaStore>,
    pending: Mutex<Pending>,
    /// Signalled on every commit, every apply and every change of `hurry` or `stop`.
    changed: Condvar,
    /// Callers waiting for everything to be applied.
    hurry: AtomicUsize,
    stop: AtomicBool,
    /// Tests hold the applier back with this.
    paused: AtomicBool,
}

pub struct WriteBehind {
    state: Arc<State>,
    applier: Mutex<Option<JoinHandle<()>>>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().expect("write-behind lock")
    }

    fn run_applier(&self) {
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
    fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.hurry.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_all();
        let mut p = self.lock();
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
fn apply(inner: &dyn MetaStore, records: &[impl AsRef<Record>]) -> MetaResult<()> {
    let mut tx = inner.begin()?;
    for r in records {
        for op in &r.as_ref().ops {
            op.apply(tx.as_mut())?;
        }
    }
    tx.commit()
}

/// Sends records (those an earlier run left) in batches; gives up with the first error.
fn apply_all(inner: &dyn MetaStore, records: Vec<Record>) -> MetaResult<()> {
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
fn batch_end(records: &[impl AsRef<Record>], start: usize) -> usize {
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
            if let Err(e) = self.state.inner.kv_delete(CLAIM_KEY) {
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

    fn stop_applier(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
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

/// Reads through the layers: a transaction's own (if any), the mount's, then the engine.
struct Layers<'a> {
    state: &'a State,
    local: Overlay,
    below: Option<Box<dyn MetaRead + 'a>>,
    /// A transaction's: the inodes it read or wrote, checked for conflicts at commit.
    touched: Option<Vec<Ino>>,
}

impl<'a> Layers<'a> {
    fn new(state: &'a State) -> Self {
        Layers {
            state,
            local: Overlay::default(),
            below: None,
            touched: None,
        }
    }

    fn below(&mut self) -> MetaResult<&mut (dyn MetaRead + 'a)> {
        if self.below.is_none() {
            self.below = Some(self.state.inner.read()?);
        }
        Ok(self.below.as_deref_mut().expect("just set"))
    }

    fn known<T>(&self, f: impl Fn(&Overlay) -> Option<T>) -> Option<T> {
        f(&self.local).or_else(|| f(&self.state.lock().overlay))
    }

    fn wiped(&self, ino: Ino) -> bool {
        self.local.wiped(ino) || self.state.lock().overlay.wiped(ino)
    }

    /// Entries of `dir` the layers know (deleted ones as None), the transaction's over the
    /// mount's; and whether the directory is gone below them.
    fn known_entries(&self, dir: Ino) -> (BTreeMap<Vec<u8>, Option<DirEntry>>, bool) {
        let p = self.state.lock();
        let mut out: BTreeMap<Vec<u8>, Option<DirEntry>> = p
            .overlay
            .dir_entries(dir)
            .map(|(n, e)| (n.to_vec(), e))
            .collect();
        for (n, e) in self.local.dir_entries(dir) {
            out.insert(n.to_vec(), e);
        }
        let gone = p.overlay.wiped(dir) || self.local.wiped(dir);
        (out, gone)
    }

    /// Which of `entries` (read below) the layers hide: they know the name, set or deleted.
    fn hidden(&self, dir: Ino, entries: &[(Vec<u8>, DirEntry)]) -> Vec<bool> {
        let p = self.state.lock();
        let (local, pending) = (self.local.knows_names(dir), p.overlay.knows_names(dir));
        if local.is_none() && pending.is_none() {
            return vec![false; entries.len()];
        }
        fn knows(layer: &Option<impl Fn(&[u8]) -> bool>, name: &[u8]) -> bool {
            layer.as_ref().is_some_and(|f| f(name))
        }
        entries
            .iter()
            .map(|(n, _)| knows(&local, n) || knows(&pending, n))
            .collect()
    }

    /// The layers' entries of `dir` with cookies after `after`: the first `limit` by cookie,
    /// copied (each layer indexes its entries by cookie, so a page reads only its own).
    fn pending_entries(&self, dir: Ino, after: u64, limit: usize) -> Vec<(Vec<u8>, DirEntry)> {
        let p = self.state.lock();
        let below_local = p
            .overlay
            .entries_after(dir, after)
            .filter(|(n, _)| self.local.dirent(dir, n).is_none())
            .take(limit);
        let mut found: Vec<(&[u8], DirEntry)> = self
            .local
            .entries_after(dir, after)
            .take(limit)
            .chain(below_local)
            .collect();
        found.sort_unstable_by_key(|(_, e)| e.cookie);
        found.truncate(limit);
        found.into_iter().map(|(n, e)| (n.to_vec(), e)).collect()
    }

    /// The whole extent map of `ino` as the layers see it.
    fn whole_map(&mut self, ino: Ino) -> MetaResult<BTreeMap<u64, Extent>> {
        if let Some(m) = self.state.lock().overlay.map(ino) {
            return Ok(m.clone());
        }
        if self.wiped(ino) {
            return Ok(BTreeMap::new());
        }
        Ok(self
            .below()?
            .extents(ino, 0..u64::MAX)?
            .into_iter()
            .map(|e| (e.offset, e))
            .collect())
    }
}

impl MetaRead for Layers<'_> {
    fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
        if let Some(t) = &mut self.touched {
            t.push(ino);
        }
        match self.known(|o| o.inode(ino)) {
            Some(k) => Ok(k),
            None => self.below()?.inode(ino),
        }
    }

    fn dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<Option<DirEntry>> {
        match self.known(|o| o.dirent(parent, name)) {
            Some(k) => Ok(k),
            None if self.wiped(parent) => Ok(None),
            None => self.below()?.dirent(parent, name),
        }
    }

    fn list_dir(
        &mut self,
        parent: Ino,
        after: u64,
        limit: usize,
    ) -> MetaResult<Vec<(Vec<u8>, DirEntry)>> {
        let mut out: Vec<(Vec<u8>, DirEntry)> = Vec::new();
        if !self.wiped(parent) {
            // pages from below until `limit` entries the layers do not hide (usually one page:
            // pending entries are mostly new names)
            let mut cursor = after;
            loop {
                let page = self.below()?.list_dir(parent, cursor, limit)?;
                let full = page.len() == limit;
                if let Some((_, last)) = page.last() {
                    cursor = last.cookie;
                }
                let hidden = self.hidden(parent, &page);
                out.extend(
                    page.into_iter()
                        .zip(hidden)
                        .filter(|(_, h)| !h)
                        .map(|(e, _)| e),
                );
                if !full || out.len() >= limit {
                    break;
                }
            }
        }
        out.extend(self.pending_entries(parent, after, limit));
        out.sort_by_key(|(_, e)| e.cookie);
        out.truncate(limit);
        Ok(out)
    }

    fn dir_is_empty(&mut self, dir: Ino) -> MetaResult<bool> {
        let (known, gone) = self.known_entries(dir);
        if known.values().any(Option::is_some) {
            return Ok(false);
        }
        if gone {
            return Ok(true);
        }
        let below = self.below()?.list_dir(dir, 0, known.len() + 1)?;
        Ok(below.iter().all(|(n, _)| known.contains_key(n)))
    }

    fn extents(&mut self, ino: Ino, range: Range<u64>) -> MetaResult<Vec<Extent>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        if let Some(m) = self.local.map(ino) {
            return Ok(Overlay::extents_in(m, &range));
        }
        if let Some(v) = self
            .state
            .lock()
            .overlay
            .map(ino)
            .map(|m| Overlay::extents_in(m, &range))
        {
            return Ok(v);
        }
        if self.wiped(ino) {
            return Ok(Vec::new());
        }
        self.below()?.extents(ino, range)
    }

    fn xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<Option<Vec<u8>>> {
        match self.known(|o| o.xattr(ino, name)) {
            Some(k) => Ok(k),
            None => self.below()?.xattr(ino, name),
        }
    }

    fn xattr_names(&mut self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
        let (mut edits, mut gone): (Vec<(Vec<u8>, bool)>, bool) = {
            let p = self.state.lock();
            (
                p.overlay
                    .xattrs(ino)
                    .map(|(n, s)| (n.to_vec(), s))
                    .collect(),
                p.overlay.wiped(ino),
            )
        };
        if self.local.wiped(ino) {
            edits.clear();
            gone = true;
        }
        edits.extend(self.local.xattrs(ino).map(|(n, s)| (n.to_vec(), s)));
        if !gone {
            names.extend(self.below()?.xattr_names(ino)?);
        }
        for (n, present) in edits {
            if present {
                names.insert(n);
            } else {
                names.remove(&n);
            }
        }
        Ok(names.into_iter().collect())
    }

    fn symlink_target(&mut self, ino: Ino) -> MetaResult<Option<Vec<u8>>> {
        match self.known(|o| o.symlink(ino)) {
            Some(k) => Ok(k),
            None => self.below()?.symlink_target(ino),
        }
    }

    fn inode_numbers(&mut self) -> MetaResult<Vec<(Ino, bool)>> {
        let mut all: BTreeMap<Ino, bool> = self.below()?.inode_numbers()?.into_iter().collect();
        let p = self.state.lock();
        for layer in [&p.overlay, &self.local] {
            for (ino, present) in layer.inode_records() {
                if present {
                    all.entry(ino).or_insert(false);
                } else {
                    all.remove(&ino);
                }
            }
            for (ino, orphan) in layer.orphan_marks() {
                if let Some(o) = all.get_mut(&ino) {
                    *o = orphan;
                }
            }
        }
        Ok(all.into_iter().collect())
    }
}

/// A transaction: reads through the layers, writes into its own layer and a list of
/// operations, which the commit journals.
struct WbTxn<'a> {
    layers: Layers<'a>,
    ops: Vec<Op>,
    began: u64,
    /// Inodes written, marked at commit.
    wrote: Vec<Ino>,
    finished: bool,
}

impl Drop for WbTxn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            release(&mut self.layers.state.lock(), self.began);
        }
    }
}

fn release(p: &mut Pending, began: u64) {
    if let Some(n) = p.open.get_mut(&began) {
        *n -= 1;
        if *n == 0 {
            p.open.remove(&began);
        }
    }
}

impl WbTxn<'_> {
    /// Records a write of `ino`'s records: in this transaction's layer and its operations.
    fn write(&mut self, ino: Ino, op: Op) -> MetaResult<()> {
        self.layers
            .touched
            .as_mut()
            .expect("a transaction's")
            .push(ino);
        self.wrote.push(ino);
        self.layers.local.record(0, &op)?;
        self.ops.push(op);
        Ok(())
    }
}

super::layer::forward_reads!(WbTxn<'_>, self => self.layers);

impl MetaTxn for WbTxn<'_> {
    fn put_inode(&mut self, inode: &Inode) -> MetaResult<()> {
        if !self.layers.local.wiped(inode.ino)
            && self.layers.state.lock().fresh.contains(&inode.ino)
        {
            self.layers.local.mark_new(inode.ino);
        }
        self.write(inode.ino, Op::PutInode(inode.clone()))
    }

    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        self.write(ino, Op::DeleteInode(ino))
    }

    fn put_dirent(&mut self, parent: Ino, name: &[u8], entry: &DirEntry) -> MetaResult<()> {
        self.write(parent, Op::dirent(parent, name, entry))
    }

    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        let name = name.to_vec();
        self.write(parent, Op::DeleteDirent { parent, name })
    }

    fn apply_splice(&mut self, ino: Ino, splice: &Splice) -> MetaResult<()> {
        if self.layers.local.map(ino).is_none() {
            let map = self.layers.whole_map(ino)?;
            self.layers.local.set_map(0, ino, map);
        }
        self.write(ino, Op::splice(ino, splice))
    }

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        let (name, value) = (name.to_vec(), value.to_vec());
        self.write(ino, Op::PutXattr { ino, name, value })
    }

    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        let name = name.to_vec();
        self.write(ino, Op::DeleteXattr { ino, name })
    }

    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        let target = target.to_vec();
        self.write(ino, Op::PutSymlink { ino, target })
    }

    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        self.write(ino, Op::AddOrphan(ino))
    }

    fn commit(mut self: Box<Self>) -> MetaResult<()> {
        let state = self.layers.state;
        let mut p = state.lock();
        release(&mut p, self.began);
        self.finished = true;
        if self.ops.is_empty() {
            return Ok(());
        }
        if self
            .layers
            .touched
            .iter()
            .flatten()
            .any(|ino| p.written.get(ino).is_some_and(|&s| s > self.began))
        {
            return Err(MetaError::Conflict);
        }
        while p.queue.len() >= MAX_QUEUED && !state.stop.load(Ordering::SeqCst) {
            // backpressure: the engine is slow or away
            p = state
                .changed
                .wait_timeout(p, Duration::from_secs(1))
                .expect("write-behind lock")
                .0;
        }
        let seq = p.seq + 1;
        let record = Record {
            seq,
            ops: std::mem::take(&mut self.ops),
        };
        p.journal.append(&record)?;
        p.seq = seq;
        for ino in &self.wrote {
            p.fresh.remove(ino);
        }
        let local = std::mem::take(&mut self.layers.local);
        p.overlay.absorb(local, seq);
        for ino in &self.wrote {
            p.written.insert(*ino, seq);
        }
        if p.written.len() > 4096 {
            let oldest = p.open.keys().next().copied().unwrap_or(seq);
            p.written.retain(|_, s| *s > oldest);
        }
        p.queue.push_back(Queued {
            at: Instant::now(),
            record: Arc::new(record),
        });
        metrics::gauge!(crate::metrics::WRITEBACK_META_QUEUED).set(p.queue.len() as f64);
        state.changed.notify_all();
        Ok(())
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
    /// statfs on this mount sees its own creates and deletes.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::PgMetaStore;
    use crate::meta::prelude::*;
    use crate::testkit::meta_conformance as conformance;

    fn fresh_database() -> String {
        crate::testkit::scratch_database()
    }

    fn pg(url: &str) -> Arc<dyn MetaStore> {
        Arc::new(PgMetaStore::connect(url).unwrap())
    }

    /// Every read answered from pending records merged with the engine's.
    #[test]
    fn conformance_with_nothing_applied() {
        crate::needs_servers!();
        let dir = tempfile::tempdir().unwrap();
        let wb = WriteBehind::open_paused(pg(&fresh_database()), dir.path(), "test").unwrap();
        let store: Arc<dyn MetaStore> = Arc::new(wb);
        conformance::inodes_round_trip(store.as_ref());
        conformance::uncommitted_changes_vanish(store.as_ref());
        conformance::directory_entries_list_in_cookie_order(store.as_ref());
        conformance::extents_and_block_references(store.as_ref());
        conformance::xattrs_symlinks_orphans(store.as_ref());
        conformance::read_views_see_every_commit(store.as_ref());
        conformance::conflicting_writers_do_not_both_commit(store.as_ref());
        conformance::concurrent_increments_are_isolated(store.clone());
        conformance::write_sample(store.as_ref());
        conformance::check_sample(store.as_ref());
    }

    /// Records applied and records pending: listings, maps and xattr names merge both, and
    /// read the same once everything is applied.
    #[test]
    fn pending_records_merge_with_applied_ones() {
        crate::needs_servers!();
        use crate::domain::{BlockKey, HashAlgo};
        use crate::meta::{FileKind, Timestamp};
        let dir = tempfile::tempdir().unwrap();
        let wb = WriteBehind::open(pg(&fresh_database()), dir.path(), "test").unwrap();
        let new = |kind| {
            Inode::new(
                wb.allocate_ino().unwrap(),
                kind,
                0o755,
                0,
                0,
                Timestamp::default(),
            )
        };
        let d = new(FileKind::Dir);
        let f = new(FileKind::File);
        let ext = |off: u64, n: u8| Extent {
            offset: off,
            key: BlockKey::for_data(HashAlgo::Blake3, &[n; 10]),
            block_offset: 0,
            len: 10,
        };
        let entry = |i: u64| DirEntry::new(f.ino, FileKind::File, 3 + i);
        let mut tx = wb.begin().unwrap();
        tx.put_inode(&d).unwrap();
        tx.put_inode(&f).unwrap();
        for i in 0..50 {
            tx.put_dirent(d.ino, format!("a{i}").as_bytes(), &entry(i))
                .unwrap();
        }
        let first = Splice {
            remove: vec![],
            insert: (0..20).map(|i| ext(i * 10, i as u8)).collect(),
        };
        tx.apply_splice(f.ino, &first).unwrap();
        tx.put_xattr(f.ino, b"user.x", b"1").unwrap();
        tx.put_xattr(f.ino, b"user.y", b"2").unwrap();
        tx.commit().unwrap();
        assert!(wb.state.drain(Duration::from_secs(30)));
        assert_eq!(
            wb.state.lock().overlay.inode(d.ino),
            None,
            "applied records leave"
        );

        wb.state.paused.store(true, Ordering::SeqCst);
        let mut tx = wb.begin().unwrap();
        tx.inode(d.ino).unwrap();
        for i in 10..20 {
            tx.delete_dirent(d.ino, format!("a{i}").as_bytes()).unwrap();
        }
        for i in 0..30 {
            tx.put_dirent(d.ino, format!("b{i}").as_bytes(), &entry(100 + i))
                .unwrap();
        }
        let second = Splice {
            remove: vec![ext(50, 5), ext(60, 6)],
            insert: vec![ext(50, 99)],
        };
        tx.apply_splice(f.ino, &second).unwrap();
        tx.delete_xattr(f.ino, b"user.x").unwrap();
        tx.put_xattr(f.ino, b"user.z", b"3").unwrap();
        tx.commit().unwrap();
        assert!(wb.queued() > 0);

        let check = |wb: &WriteBehind| {
            let mut r = wb.read().unwrap();
            let mut names = Vec::new();
            let mut after = 0;
            loop {
                let page = r.list_dir(d.ino, after, 7).unwrap();
                let Some(last) = page.last() else { break };
                after = last.1.cookie;
                names.extend(page.into_iter().map(|(n, _)| String::from_utf8(n).unwrap()));
            }
            let want: Vec<String> = (0..10)
                .chain(20..50)
                .map(|i| format!("a{i}"))
                .chain((0..30).map(|i| format!("b{i}")))
                .collect();
            assert_eq!(names, want, "cookie order, each name once");
            assert!(!r.dir_is_empty(d.ino).unwrap());
            let map = r.extents(f.ino, 45..75).unwrap();
            assert_eq!(
                map.iter().map(|e| (e.offset, e.key)).collect::<Vec<_>>(),
                vec![
                    (40, ext(0, 4).key),
                    (50, ext(0, 99).key),
                    (70, ext(0, 7).key)
                ]
            );
            assert_eq!(r.extents(f.ino, 0..u64::MAX).unwrap().len(), 19);
            assert_eq!(
                r.xattr_names(f.ino).unwrap(),
                vec![b"user.y".to_vec(), b"user.z".to_vec()]
            );
            assert_eq!(r.xattr(f.ino, b"user.x").unwrap(), None);
        };
        check(&wb);
        wb.state.paused.store(false, Ordering::SeqCst);
        assert!(wb.state.drain(Duration::from_secs(30)));
        check(&wb);
    }

    #[test]
    fn a_killed_mounts_journal_reaches_the_engine_at_the_next_open() {
        crate::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        {
            let wb = WriteBehind::open_paused(pg(&url), dir.path(), "host-a:/state").unwrap();
            conformance::write_sample(&wb);
            assert!(wb.queued() > 0);
            // dropped with nothing applied, like a killed daemon
        }
        let inner = pg(&url);
        let err = check_unclaimed(inner.as_ref(), None).unwrap_err();
        assert!(err.to_string().contains("host-a:/state"), "{err}");
        let err = WriteBehind::open(inner.clone(), dir.path(), "host-b:/other")
            .err()
            .expect("another host may not take over pending changes");
        assert!(matches!(err, ClaimError::Claimed(_)), "{err}");

        let wb = WriteBehind::open(inner.clone(), dir.path(), "host-a:/state").unwrap();
        conformance::check_sample(inner.as_ref());
        wb.end_session();
        check_unclaimed(inner.as_ref(), None).expect("the claim is released at a clean end");
    }

    #[test]
    fn another_live_mount_keeps_write_behind_out() {
        crate::needs_servers!();
        let url = fresh_database();
        let info = |mp: &str| crate::meta::SessionInfo {
            host: "h".into(),
            pid: 1,
            mountpoint: mp.into(),
            timeout: Duration::from_secs(30),
        };
        let other = pg(&url);
        other.begin_session(&info("/mnt/other")).unwrap();
        let mine = pg(&url);
        mine.begin_session(&info("/mnt/mine")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = WriteBehind::open(mine.clone(), dir.path(), "h:/state")
            .err()
            .expect("refused while another mount is live");
        assert!(err.to_string().contains("/mnt/other"), "{err}");
        check_unclaimed(mine.as_ref(), None).expect("a refused mount leaves no claim");
        other.end_session();
        let wb = WriteBehind::open(mine.clone(), dir.path(), "h:/state").unwrap();
        wb.end_session();
    }
}
