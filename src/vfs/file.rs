//! Open files: handles, the write path's front half (buffering into `DirtyData` with
//! backpressure), flush/fsync/release, truncate, fallocate, SEEK_DATA/SEEK_HOLE and
//! copy_file_range that shares blocks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use super::dirty::{DirtyData, Spans};
use super::flush::FlushMode;
use super::read::ReadAhead;
use super::{Ctx, Fs, FsError, FsResult, MAX_FILE_SIZE, quota};
use crate::domain::RangeSet;
use crate::domain::extent;
use crate::meta::{FileKind, Ino, Inode, Timestamp};

/// How a file is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
}

impl OpenFlags {
    pub fn from_libc(flags: i32) -> OpenFlags {
        let acc = flags & libc::O_ACCMODE;
        OpenFlags {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }

    pub const READ: OpenFlags = OpenFlags {
        read: true,
        write: false,
        append: false,
        truncate: false,
    };
    pub const RW: OpenFlags = OpenFlags {
        read: true,
        write: true,
        append: false,
        truncate: false,
    };
}

/// `fallocate` modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FallocateMode {
    pub keep_size: bool,
    pub punch_hole: bool,
    pub zero_range: bool,
}

impl FallocateMode {
    pub fn from_libc(mode: i32) -> FsResult<FallocateMode> {
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return Err(FsError::NotSupported);
        }
        Ok(FallocateMode {
            keep_size: mode & libc::FALLOC_FL_KEEP_SIZE != 0,
            punch_hole: mode & libc::FALLOC_FL_PUNCH_HOLE != 0,
            zero_range: mode & libc::FALLOC_FL_ZERO_RANGE != 0,
        })
    }
}

/// `lseek` targets the core answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whence {
    Data,
    Hole,
}

/// An inode with open handles: its uncommitted writes live here, shared by all its handles.
#[derive(Default)]
pub(crate) struct OpenFile {
    pub ino: Ino,
    pub state: Mutex<FileState>,
    /// Held by whoever flushes (or rewrites) the file, so commits land in write order. Taken
    /// before `state`, never while holding it.
    pub flush_lock: Mutex<()>,
    /// The committed extent map as of the inode's `data_version`, for reads (every change of
    /// the map bumps the version, so a stale copy is never used); None until a second read
    /// finds the version unchanged (see `vfs::read`).
    pub map: Mutex<Option<(u64, Option<KeptMap>)>>,
    /// This mount took the inode's last link while it was open (it is an orphan): the last
    /// release deletes it. Another mount's unlink deletes the inode itself.
    pub unlinked: std::sync::atomic::AtomicBool,
    /// The shared volume's session this mount holds a lock on the file under, or keeps it
    /// unlinked under; 0 for none (see `vfs::fence`).
    pub claim: std::sync::atomic::AtomicI64,
    /// The session the file's uncommitted writes were made in; 0 for none. Set and cleared
    /// under the state lock.
    pub written_in: std::sync::atomic::AtomicI64,
    /// How many times the file was fenced: a handle opened before the last time fails.
    pub fences: std::sync::atomic::AtomicU64,
    /// A commit moved appends from where the kernel was told they went: its cached size and
    /// pages of the file are being dropped (`vfs::append`).
    pub kernel_stale: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
pub(crate) struct FileState {
    pub dirty: DirtyData,
    /// Time of the last write not yet committed.
    pub mtime: Option<Timestamp>,
    /// End of the most recent write: the span ending here may still be growing.
    pub last_write_end: u64,
    /// Spans taken by a flush that has not committed yet; reads still see them.
    pub inflight: Option<Arc<Spans>>,
    /// A background flush has been asked for and has not finished.
    pub flush_scheduled: bool,
    pub handles: u32,
    /// Handles that may write (the kernel's page cache is then not filled: `vfs::fill`).
    pub writers: u32,
    /// chmod, chown and utimes of a file with pending writes: committed with those writes
    /// (tar, cp -a and rsync set attributes before close; one transaction instead of a flush
    /// plus one per call). Explicit mtimes go to `mtime`.
    pub attrs: Option<AttrChange>,
    /// Set while the pending writes are O_APPEND writes on a shared volume: they were placed
    /// from this offset on, and their commit moves them to the end of the file as the
    /// transaction finds it (`vfs::append`). Such writes are never pending together with
    /// others.
    pub append_base: Option<u64>,
    /// The file may grow to here before its writes need more room from the quotas: what its
    /// reservation covers, `u64::MAX` when no quota applies (`vfs::quota::reserve`)...
    pub room: u64,
    /// ...as found then (no quota applying is checked again after `quota::RECHECK`).
    pub room_at: Option<std::time::Instant>,
    /// The close of the file's last handle is flushing it: its commit gives `room` back.
    pub closing: bool,
    /// That commit is in flight (its flush holds `flush_lock`): a write needing room waits
    /// for it, or it would reserve room the commit then deletes...
    pub giving_back: bool,
    /// ...and one that reserved while such a commit began reserves again. (Counts them.)
    pub give_backs: u64,
}

/// Attribute changes not yet committed; unset fields stay as committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AttrChange {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<Timestamp>,
    pub ctime: Timestamp,
}

impl AttrChange {
    /// `later` on top of `self`.
    pub fn then(self, later: AttrChange) -> AttrChange {
        AttrChange {
            perm: later.perm.or(self.perm),
            uid: later.uid.or(self.uid),
            gid: later.gid.or(self.gid),
            atime: later.atime.or(self.atime),
            ctime: later.ctime.max(self.ctime),
        }
    }

    pub fn apply(&self, inode: &mut Inode) {
        if let Some(p) = self.perm {
            inode.perm = p;
        }
        if let Some(u) = self.uid {
            inode.uid = u;
        }
        if let Some(g) = self.gid {
            inode.gid = g;
        }
        if let Some(a) = self.atime {
            inode.atime = a;
        }
        inode.ctime = inode.ctime.max(self.ctime);
    }
}

impl FileState {
    pub fn inflight_end(&self) -> u64 {
        self.inflight
            .as_ref()
            .and_then(|w| w.iter().map(|(o, d)| o + d.len() as u64).max())
            .unwrap_or(0)
    }

    /// In-flight bytes inside `range`.
    pub fn inflight_slices(&self, range: std::ops::Range<u64>) -> Spans {
        let mut out = Vec::new();
        for (off, data) in self.inflight.iter().flat_map(|w| w.iter()) {
            let (a, b) = (
                (*off).max(range.start),
                (off + data.len() as u64).min(range.end),
            );
            if a < b {
                out.push((a, data[(a - off) as usize..(b - off) as usize].to_vec()));
            }
        }
        out
    }

    /// Logical end of the file's pending bytes.
    pub fn pending_end(&self) -> u64 {
        self.dirty.end().max(self.inflight_end())
    }

    /// Whether bytes are buffered or being flushed.
    pub fn has_bytes_pending(&self) -> bool {
        !self.dirty.is_empty() || self.inflight.is_some()
    }

    /// After a commit that moved pending appends `moved` bytes from where they were placed,
    /// to end at `end`: the appends still pending follow them (`vfs::append`).
    pub fn appends_committed(&mut self, moved: i64, end: u64) {
        if moved != 0 {
            self.dirty.moved(moved);
            self.last_write_end = self.last_write_end.saturating_add_signed(moved);
        }
        self.append_base = (!self.dirty.is_empty()).then_some(end);
    }

    /// Whether a flush has anything to commit.
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty() || self.mtime.is_some() || self.attrs.is_some()
    }
}

pub(crate) struct Handle {
    pub ino: Ino,
    pub file: Arc<OpenFile>,
    pub flags: OpenFlags,
    pub readahead: Mutex<ReadAhead>,
    /// The file's `fences` when the handle was opened.
    pub fences_seen: u64,
    /// Lock owners that took a lock through this handle and have not closed it (`vfs::lock`).
    pub lock_owners: Mutex<Vec<u64>>,
}

impl OpenFile {
    pub fn lock(&self) -> MutexGuard<'_, FileState> {
        self.state.lock().expect("file state lock")
    }
}

/// A file's whole committed extent map, as reads keep it.
pub type KeptMap = Arc<Vec<extent::Extent>>;

/// The unit in which SEEK_DATA and SEEK_HOLE tell data from holes.
const SEEK_PAGE: u64 = 4096;

impl Fs {
    pub(crate) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .read()
            .expect("lock")
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub(super) fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.core.open_file(ino)
    }

    /// End, time and attribute changes of the inode's uncommitted writes, if it is open.
    fn pending_of(&self, ino: Ino) -> Option<(u64, Option<Timestamp>, Option<AttrChange>)> {
        self.open_file(ino).map(|file| {
            let st = file.lock();
            (st.pending_end(), st.mtime, st.attrs)
        })
    }

    /// Attributes as applications see them: the committed inode plus pending writes.
    ///
    /// The pending state is captured *before* the committed inode is read: a flush commits and
    /// only then stops counting its bytes as pending, so in this order a concurrent flush is
    /// seen either still pending or already committed, never neither.
    pub(super) fn attributes(&self, ino: Ino) -> FsResult<Inode> {
        let pending = self.pending_of(ino);
        let mut inode = self.core.inode(ino)?;
        if let Some((end, mtime, attrs)) = pending {
            inode.size = inode.size.max(end);
            if let Some(m) = mtime {
                inode.mtime = m;
                inode.ctime = inode.ctime.max(m);
            }
            if let Some(a) = attrs {
                a.apply(&mut inode);
            }
        }
        Ok(inode)
    }

    /// Whether committing the inode's pending writes may take a while: it has some, and they
    /// are more than a quick commit (`FsConfig::quick_commit_max`) or wait for a flush in
    /// progress.
    pub fn commit_may_wait(&self, ino: Ino) -> bool {
        let quick = self.core.cfg.quick_commit_max;
        self.open_file(ino).is_some_and(|f| {
            let st = f.lock();
            st.inflight.is_some() || (st.has_pending() && (quick == 0 || st.dirty.bytes() > quick))
        })
    }

    /// Opens a regular file and returns a handle number.
    pub fn open(&self, ino: Ino, flags: OpenFlags) -> FsResult<u64> {
        if flags.write || flags.truncate {
            super::changeable(ino)?;
        }
        // A writer waits for a page fill of the file in progress, and none starts after it.
        let gate = flags.write.then(|| self.core.fill.exclude(ino));
        self.open_registered(ino, flags, gate)
    }

    /// After `revalidate` found `ino` changed: whether an open of it by name came through a
    /// stale entry, the inode being gone or unlinked (by another mount) and not open here.
    pub fn gone_for_open(&self, ino: Ino) -> FsResult<bool> {
        if self.core.files.lock().expect("lock").contains_key(&ino) {
            return Ok(false);
        }
        match self.core.inode(ino) {
            Ok(inode) => Ok(inode.nlink == 0),
            Err(FsError::NotFound) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Whether opening `ino` with `flags` may wait for a page fill (see `vfs::fill`).
    pub fn open_may_wait(&self, ino: Ino, flags: OpenFlags) -> bool {
        flags.write && self.core.fill.busy(ino)
    }

    fn open_registered(
        &self,
        ino: Ino,
        flags: OpenFlags,
        gate: Option<std::sync::RwLockWriteGuard<'_, ()>>,
    ) -> FsResult<u64> {
        // Register first, under the inode's gate: an unlink racing with this open then sees
        // the file as open. On a shared volume the first open also holds the inode against
        // other mounts' unlinks (`SharedVolume::hold`); the inode check below follows it.
        let (file, held) = {
            let _gate = self.core.gate(ino);
            let mut files = self.core.files.lock().expect("lock");
            let first = !files.contains_key(&ino);
            let file = files
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenFile {
                        ino,
                        ..Default::default()
                    })
                })
                .clone();
            let mut st = file.lock();
            st.handles += 1;
            st.writers += flags.write as u32;
            drop(st);
            drop(files);
            let held = match self.core.meta.shared() {
                Some(shared) if first => shared.hold(ino).map_err(FsError::from),
                _ => Ok(()),
            };
            (file, held)
        };
        drop(gate);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Handle {
            ino,
            fences_seen: file.fences.load(Ordering::SeqCst),
            file,
            flags,
            readahead: Mutex::new(ReadAhead::default()),
            lock_owners: Mutex::new(Vec::new()),
        });
        self.handles.write().expect("lock").insert(fh, handle);
        let checked = held
            .and_then(|_| self.core.inode(ino))
            .and_then(|inode| match inode.kind {
                FileKind::Dir if flags.write => Err(FsError::IsDir),
                FileKind::File | FileKind::Dir => Ok(()),
                _ => Err(FsError::Invalid),
            });
        let checked = checked.and_then(|_| {
            if flags.truncate && flags.write {
                self.truncate(ino, 0)
            } else {
                Ok(())
            }
        });
        if let Err(e) = checked {
            let _ = self.release(fh);
            return Err(e);
        }
        Ok(fh)
    }

    /// Updates the access time of a file opened for reading, as the mount's `atime` setting
    /// says; returns whether it changed. The kernel serves most reads from its page cache
    /// without asking the daemon, so the open stands for the reads that follow it.
    pub fn touch_atime(&self, ino: Ino) -> FsResult<bool> {
        if crate::meta::is_frozen(ino) {
            return Ok(false);
        }
        use super::Atime;
        const DAY_SECS: i64 = 24 * 3600;
        let due = |inode: &Inode, now: Timestamp| match self.core.cfg.atime {
            Atime::Never => false,
            Atime::Always => true,
            Atime::Relative => {
                inode.atime <= inode.mtime
                    || inode.atime <= inode.ctime
                    || now.secs - inode.atime.secs >= DAY_SECS
            }
        };
        let now = Timestamp::now();
        if self.core.cfg.atime == Atime::Never || !due(&self.core.inode(ino)?, now) {
            return Ok(false);
        }
        self.core.txn(|tx| {
            let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            if !due(&inode, now) {
                return Ok(false);
            }
            inode.atime = now;
            tx.put_inode(&inode)?;
            Ok(true)
        })
    }

    /// Creates a regular file and opens it.
    pub fn create(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: OpenFlags,
    ) -> FsResult<(Inode, u64)> {
        let inode = self.create_inode(ctx, parent, name, FileKind::File, mode, 0, None, true)?;
        // a new inode has no cached pages to fill: no gate
        let flags = OpenFlags {
            truncate: false,
            ..flags
        };
        let fh = self.open_registered(inode.ino, flags, None)?;
        Ok((inode, fh))
    }

    /// Buffers a write; returns the bytes accepted. Applies backpressure when the volume's
    /// dirty data passes its limit.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.write_placed(fh, offset, data).map(|_| data.len())
    }

    /// Like [`Fs::write`]; returns the offset the data went to, which differs from `offset`
    /// for an O_APPEND handle on a shared volume (`vfs::append`).
    pub fn write_placed(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u64> {
        let h = self.handle(fh)?;
        if !h.flags.write {
            return Err(FsError::BadHandle);
        }
        if self.is_frozen() {
            return Err(FsError::ReadOnly);
        }
        self.check_fence(&h)?;
        let at_end = self.appends_at_committed_end(&h);
        let threshold = self.core.cfg.file_flush_threshold;
        let (schedule, wait, placed) = loop {
            let mut st = h.file.lock();
            if st.append_base.is_some() != at_end && st.has_bytes_pending() {
                // appends placed at the end as committed and other writes are never pending
                // together: the ones pending go first
                drop(st);
                self.core.flush_file(&h.file, FlushMode::All, false)?;
                continue;
            }
            let offset = if at_end {
                match st.append_base {
                    Some(_) if st.has_bytes_pending() => st.pending_end(),
                    _ => self.core.inode(h.ino)?.size,
                }
            } else if h.flags.append {
                self.core.inode(h.ino)?.size.max(st.pending_end())
            } else {
                offset
            };
            st.append_base = match at_end {
                true if st.has_bytes_pending() => st.append_base.or(Some(offset)),
                true => Some(offset),
                false => None,
            };
            let Some(end) = offset
                .checked_add(data.len() as u64)
                .filter(|&end| end <= MAX_FILE_SIZE)
            else {
                return Err(FsError::FileTooLarge);
            };
            let unlimited_since = st.room_at.filter(|_| st.room == u64::MAX);
            if end > st.room || unlimited_since.is_some_and(|t| t.elapsed() > quota::RECHECK) {
                // room first, from the quotas, without the file's state held
                let give_backs = st.give_backs;
                if st.giving_back {
                    // after the close's commit has given the old room back
                    drop(st);
                    drop(h.file.flush_lock.lock().expect("flush lock"));
                    continue;
                }
                drop(st);
                let room = self.core.room_for(h.ino, end)?;
                let mut st = h.file.lock();
                if st.give_backs != give_backs {
                    // a close's commit may have deleted this reservation
                    continue;
                }
                st.room = match st.room {
                    u64::MAX => room,
                    had => had.max(room),
                };
                st.room_at = Some(std::time::Instant::now());
                continue;
            }
            let placed = offset;
            let delta = st.dirty.write(offset, data);
            if let Some(session) = self.core.session() {
                h.file.written_in.store(session, Ordering::SeqCst);
            }
            st.last_write_end = offset + data.len() as u64;
            self.core.add_dirty(delta);
            st.mtime = Some(Timestamp::now());
            let dirty = st.dirty.bytes();
            let schedule = dirty >= threshold && !st.flush_scheduled;
            if schedule {
                st.flush_scheduled = true;
            }
            break (schedule, dirty >= 2 * threshold, placed);
        };
        if schedule {
            // Completed chunks go to the store in the background while writes continue.
            let (core, file) = (self.core.clone(), h.file.clone());
            self.runtime.spawn_blocking(move || {
                let _ = core.flush_file(&file, FlushMode::Completed, false);
                file.lock().flush_scheduled = false;
            });
        }
        if wait {
            // The background flush is falling behind: this writer flushes too (backpressure).
            self.core.flush_file(&h.file, FlushMode::Completed, false)?;
        }
        self.relieve_pressure()?;
        Ok(placed)
    }

    /// While the volume holds more dirty data than allowed, the writer flushes the largest
    /// dirty files itself: writers wait at the cap instead of buffering without bound.
    fn relieve_pressure(&self) -> FsResult<()> {
        let limit = self.core.cfg.dirty_limit;
        while self.core.dirty_bytes.load(Ordering::Relaxed) > limit {
            let files: Vec<Arc<OpenFile>> = self
                .core
                .files
                .lock()
                .expect("lock")
                .values()
                .cloned()
                .collect();
            let Some(biggest) = files.into_iter().max_by_key(|f| f.lock().dirty.bytes()) else {
                return Ok(());
            };
            let before = biggest.lock().dirty.bytes();
            if before == 0 {
                return Ok(());
            }
            self.core
                .flush_file(&biggest, FlushMode::Completed, false)?;
            if biggest.lock().dirty.bytes() >= before {
                self.core.flush_file(&biggest, FlushMode::All, false)?;
            }
        }
        Ok(())
    }

    /// Commits the inode's pending writes (every close does this); with `durable`, also makes
    /// them and all earlier commits survive power loss (fsync).
    pub fn flush_inode(&self, ino: Ino, durable: bool) -> FsResult<()> {
        match self.open_file(ino) {
            Some(file) => self.core.flush_file(&file, FlushMode::All, durable),
            None if durable => {
                self.core.store.sync()?;
                self.core.meta.sync()?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `close` of one descriptor: commit, so data is visible and crash-safe once it returns.
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        self.check_fence(&h)?;
        {
            let mut st = h.file.lock();
            st.closing = st.handles == 1 && st.room > 0;
        }
        let flushed = self.flush_inode(h.ino, false);
        // only this close's flush gives the room back (nothing pending: `release` does)
        h.file.lock().closing = false;
        flushed?;
        // a commit moved appends (another mount appended meanwhile): this mount's processes
        // see where they went once the close returns (no lock is held here that the kernel
        // could wait on)
        if h.file.kernel_stale.swap(false, Ordering::SeqCst) {
            self.core.kernel_forget(h.ino);
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        self.check_fence(&h)?;
        self.flush_inode(h.ino, true)
    }

    /// Makes directory changes durable.
    pub fn fsyncdir(&self) -> FsResult<()> {
        self.core.meta.sync()?;
        Ok(())
    }

    /// Last close of a handle; the last handle of an unlinked file deletes it.
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self
            .handles
            .write()
            .expect("lock")
            .remove(&fh)
            .ok_or(FsError::BadHandle)?;
        let flushed = self.flush_inode(h.ino, false);
        let unlocked = self.release_description_locks(&h);
        let _gate = self.core.gate(h.ino);
        // the table, then the file's state: the order an open takes them in
        let mut files = self.core.files.lock().expect("lock");
        let mut st = h.file.lock();
        st.handles -= 1;
        st.writers -= h.flags.write as u32;
        if st.handles == 0 {
            files.remove(&h.ino);
            drop(files);
            // If the flush failed, the data cannot be reported anywhere any more: drop it.
            let dropped = super::dirty::charge(&st.dirty.take()) as i64;
            self.core.add_dirty(-dropped);
            drop(st);
            // the common case, a file this mount did not unlink, needs no lookup at all
            let deleted = match h.file.unlinked.load(Ordering::Relaxed) {
                false => Ok(()),
                true => self.core.txn(|tx| {
                    if let Some(inode) = tx.inode(h.ino)?
                        && inode.nlink == 0
                    {
                        tx.delete_inode(h.ino)?;
                    }
                    Ok(())
                }),
            };
            if let Some(shared) = self.core.meta.shared() {
                shared.unhold(h.ino);
            }
            deleted?;
            let room = h.file.lock().room;
            if room != u64::MAX && room > 0 {
                // what is left of the file's reservation goes back to the quotas
                quota::release(self.core.meta.as_ref(), h.ino)?;
            }
        }
        flushed.and(unlocked)
    }

    /// Runs `f` with the file's pending writes committed and new writes held off.
    fn with_flushed<T>(&self, ino: Ino, f: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        match self.open_file(ino) {
            Some(file) => {
                let _one_at_a_time = file.flush_lock.lock().expect("flush lock");
                let mut st = file.lock();
                self.core
                    .flush_locked(&file, &mut st, FlushMode::All, false)?;
                f()
            }
            None => f(),
        }
    }

    /// Sets the file size; bytes past a smaller size are gone, a larger size reads as zeros.
    pub fn truncate(&self, ino: Ino, size: u64) -> FsResult<()> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::FileTooLarge);
        }
        let _no_fill = self.core.fill.exclude(ino);
        self.with_flushed(ino, || {
            self.core.txn(|tx| {
                let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
                match inode.kind {
                    FileKind::File => {}
                    FileKind::Dir => return Err(FsError::IsDir),
                    _ => return Err(FsError::Invalid),
                }
                if size < inode.size {
                    let cur = tx.extents(ino, size..u64::MAX)?;
                    let s = extent::punch(&cur, size..u64::MAX);
                    tx.apply_splice(ino, &s)?;
                    inode.extent_count = (inode.extent_count as i64 + s.count_delta()) as u64;
                    inode.data_version += 1;
                }
                inode.size = size;
                inode.touch(Timestamp::now());
                tx.put_inode(&inode)?;
                Ok(())
            })
        })
    }

    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: FallocateMode) -> FsResult<()> {
        super::changeable(ino)?;
        if len == 0 {
            return Err(FsError::Invalid);
        }
        if mode.punch_hole && (!mode.keep_size || mode.zero_range) {
            return Err(FsError::NotSupported);
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::FileTooLarge)?;
        self.with_flushed(ino, || {
            self.core.txn(|tx| {
                let mut inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
                match inode.kind {
                    FileKind::File => {}
                    FileKind::Dir => return Err(FsError::IsDir),
                    _ => return Err(FsError::Invalid),
                }
                let mut changed = false;
                if mode.punch_hole || mode.zero_range {
                    let cur = tx.extents(ino, offset..end)?;
                    let s = extent::punch(&cur, offset..end);
                    tx.apply_splice(ino, &s)?;
                    inode.extent_count = (inode.extent_count as i64 + s.count_delta()) as u64;
                    inode.data_version += 1;
                    changed = true;
                }
                if !mode.keep_size && end > inode.size {
                    inode.size = end;
                    changed = true;
                }
                if changed {
                    inode.touch(Timestamp::now());
                    tx.put_inode(&inode)?;
                }
                Ok(())
            })
        })
    }

    /// SEEK_DATA / SEEK_HOLE: holes are unmapped ranges; the end of file counts as a hole.
    /// SEEK_DATA and SEEK_HOLE, at the granularity of `SEEK_PAGE`.
    pub fn seek(&self, ino: Ino, offset: u64, whence: Whence) -> FsResult<u64> {
        self.with_flushed(ino, || {
            let mut tx = self.core.meta.read()?;
            let inode = tx.inode(ino)?.ok_or(FsError::NotFound)?;
            if offset >= inode.size {
                return Err(FsError::NoSuchOffset);
            }
            // Holes and data are told apart per 4 KiB page, as on a filesystem of 4 KiB
            // blocks: a page with any data in it is data (its other bytes read as zeros),
            // so data is never reported as a hole, and a hole always spans whole pages.
            let page = |o: u64| o & !(SEEK_PAGE - 1);
            let size = inode.size;
            let data = RangeSet::from_ranges(
                tx.extents(ino, page(offset)..size)?
                    .iter()
                    .map(|e| page(e.offset)..(page(e.end() + SEEK_PAGE - 1)).min(size)),
            );
            match whence {
                Whence::Data => data
                    .next_covered(offset)
                    .filter(|&o| o < inode.size)
                    .ok_or(FsError::NoSuchOffset),
                Whence::Hole => Ok(data.next_gap(offset).min(inode.size)),
            }
        })
    }

    /// Copies `len` bytes by sharing blocks: no data is read or written, only extents.
    /// Keeps gc from deleting the blocks a copy is about to reference: they are pinned, and
    /// like a writer that finds a block stored, the copy takes each one's gc mark away and then
    /// checks it is still there (`store::store_for_reference`). A block gc deleted anyway
    /// (the source changed after this transaction read it) makes the copy run again.
    fn hold_copied_blocks(
        &self,
        moved: &[crate::domain::Extent],
        pins: &crate::meta::pins::Pinned,
    ) -> FsResult<()> {
        let keys: std::collections::BTreeSet<crate::domain::BlockKey> =
            moved.iter().map(|e| e.key).collect();
        let keys: Vec<_> = keys.into_iter().collect();
        pins.add(&keys)?;
        for k in &keys {
            crate::meta::clear_gc_mark(self.core.meta.as_ref(), k)?;
            if !self.core.store.exists(k)? {
                return Err(FsError::Meta(crate::meta::MetaError::Conflict));
            }
        }
        Ok(())
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> FsResult<u64> {
        let (hin, hout) = (self.handle(fh_in)?, self.handle(fh_out)?);
        if !hin.flags.read || !hout.flags.write || hout.flags.append {
            return Err(FsError::BadHandle);
        }
        self.check_fence(&hin)?;
        self.check_fence(&hout)?;
        let (src, dst) = (hin.ino, hout.ino);
        if src == dst
            && off_in < off_out.saturating_add(len)
            && off_out < off_in.saturating_add(len)
        {
            return Err(FsError::Invalid);
        }
        if off_out.checked_add(len).is_none_or(|e| e > MAX_FILE_SIZE) {
            return Err(FsError::FileTooLarge);
        }
        self.flush_inode(src, false)?;
        self.flush_inode(dst, false)?;
        // the copied blocks are pinned until the commit, as a flush's are (`meta::pins`)
        let pins = crate::meta::pins::Pinned::new(self.core.meta.clone());
        self.core.txn(|tx| {
            let src_inode = tx.inode(src)?.ok_or(FsError::NotFound)?;
            if src_inode.kind != FileKind::File {
                return Err(FsError::Invalid);
            }
            if off_in >= src_inode.size {
                return Ok(0);
            }
            let n = len.min(src_inode.size - off_in);
            let range = off_in..off_in + n;
            let moved: Vec<_> = tx
                .extents(src, range.clone())?
                .iter()
                .map(|e| {
                    let c = e.clip(&range);
                    c.moved_to(off_out + (c.offset - off_in))
                })
                .collect();
            self.hold_copied_blocks(&moved, &pins)?;
            let mut out = if src == dst {
                src_inode
            } else {
                tx.inode(dst)?.ok_or(FsError::NotFound)?
            };
            if out.kind != FileKind::File {
                return Err(FsError::Invalid);
            }
            let cur = tx.extents(dst, off_out..off_out + n)?;
            let mut s = extent::punch(&cur, off_out..off_out + n);
            s.insert.extend(moved);
            tx.apply_splice(dst, &s)?;
            out.extent_count = (out.extent_count as i64 + s.count_delta()) as u64;
            out.data_version += 1;
            out.size = out.size.max(off_out + n);
            out.touch(Timestamp::now());
            tx.put_inode(&out)?;
            Ok(n)
        })
    }
}
