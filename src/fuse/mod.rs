//! The FUSE adapter: each callback calls the filesystem core and replies. Slow operations
//! (fsync, copy_file_range, fallocate, SEEK_DATA/HOLE, and flush, release or setattr of a file
//! with pending writes) run on the core's blocking pool with the reply moved in, so they do not
//! hold a kernel reader thread. Everything else answers in the reader thread: a hop between
//! threads costs more than such an operation.
//! Each callback starts an `Op` (`op.rs`), which records its duration once the reply is sent
//! and names the errors it replies.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner,
    OpenFlags as FuseOpenFlags, RenameFlags as FuseRenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::vfs::{
    Caller, Ctx, FallocateMode, FileKind, Fs, FsError, Inode, LockKind, LockRequest, OpenFlags,
    RenameFlags, SetAttr, TO_EOF, TimeSet, Timestamp, Whence, XattrSet,
};

mod invalidate;
pub mod ioctl;
mod listing;
mod op;
mod pages;
pub mod readahead;

pub use invalidate::{KernelCache, follow_changes};
use listing::DirHandles;
use op::{Op, failed, op};
pub use pages::NotifierPages;

pub struct GravitonFuse {
    fs: Arc<Fs>,
    ttl: Duration,
    capacity_path: Option<std::path::PathBuf>,
    /// On a shared volume: the entries handed to the kernel, for invalidation.
    kernel: Option<Arc<KernelCache>>,
    /// The kernel buffers writes in its page cache (FUSE_WRITEBACK_CACHE); see `with_write_cache`.
    write_cache: bool,
    /// The abstract name of the mount's control socket (`daemon::control`), if it has one.
    control_socket: Option<String>,
    dirs: DirHandles,
    /// The session's channel for notifications to the kernel, once the session exists.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl GravitonFuse {
    pub fn new(
        fs: Arc<Fs>,
        ttl: Duration,
        capacity_path: Option<std::path::PathBuf>,
        kernel: Option<Arc<KernelCache>>,
    ) -> Self {
        GravitonFuse {
            fs,
            ttl,
            capacity_path,
            kernel,
            write_cache: false,
            control_socket: None,
            dirs: DirHandles::default(),
            notifier: Arc::default(),
        }
    }

    /// Where the session's notifier goes once the session is created (the adapter is moved
    /// into it first).
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// Lets the kernel buffer writes in its page cache and send them in large batches (at
    /// the latest at fsync or close), instead of one round trip per `write(2)`. Only for a
    /// mount that has its volume to itself (`-o writeback`): the kernel then trusts its own
    /// cached size and times, which another mount's changes would not update.
    pub fn with_write_cache(mut self, on: bool) -> Self {
        self.write_cache = on;
        self
    }

    /// The name of the mount's control socket, told to `ioctl::WHERE`.
    pub fn with_control_socket(mut self, name: String) -> Self {
        self.control_socket = Some(name);
        self
    }

    /// Notes that the kernel will cache `parent/name` (shared volumes).
    fn handed_out(&self, parent: INodeNo, name: &[u8], ino: u64) {
        if let Some(k) = &self.kernel {
            k.handed_out(parent.0, name, ino);
        }
    }
}

fn errno(e: &FsError) -> Errno {
    if e.is_expected() {
        tracing::debug!("{e}");
    } else {
        tracing::error!("{e}");
    }
    failed(Errno::from_i32(e.errno()))
}

/// Replies with `$ok` on the value of `$r`, or with its error.
macro_rules! answer {
    ($reply:ident, $r:expr, |$v:pat_param| $ok:expr) => {
        match $r {
            Ok($v) => $ok,
            Err(e) => $reply.error(errno(&e)),
        }
    };
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn attr(i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(i.ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime.into(),
        mtime: i.mtime.into(),
        ctime: i.ctime.into(),
        crtime: i.crtime.into(),
        kind: file_type(i.kind),
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timestamp::from(t)),
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn name(n: &OsStr) -> &[u8] {
    n.as_bytes()
}

fn lock_request(owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32) -> Option<LockRequest> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Shared,
        libc::F_WRLCK => LockKind::Exclusive,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return None,
    };
    (start <= end).then_some(LockRequest {
        owner: owner.0,
        kind,
        start,
        end: end.min(TO_EOF),
        pid,
    })
}

/// What the mount asks of the kernel at FUSE_INIT: `write_cache` is `-o write_cache`; `shared`,
/// a volume other mounts use (the kernel hands its locks to the filesystem). Also used by the
/// null filesystem of the ceiling benchmark (`examples/null_fuse.rs`).
pub fn negotiate(config: &mut KernelConfig, write_cache: bool, shared: bool) {
    let _ = config.set_max_write(1 << 20);
    let _ = config.set_max_readahead(readahead::MAX_READAHEAD);
    let _ = config.set_max_background(64);
    let _ = config.set_congestion_threshold(48);
    // Not FUSE_ATOMIC_O_TRUNC: with it the kernel drops its page cache and size for
    // open(O_TRUNC) before checking ETXTBSY, which crashes a program running the file.
    // Without it, the kernel checks first and truncates through setattr.
    let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO
        | InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_ASYNC_READ
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_MAX_PAGES
        // file handles (open_by_handle_at, an NFS export of the mount) stay valid after
        // the kernel drops the inode: it asks for it by number (lookup of ".")
        | InitFlags::FUSE_EXPORT_SUPPORT;
    // The filesystem clears setuid/setgid on write, truncate and chown itself
    // (`Fs::written_by`, `Fs::setattr_by`): otherwise the kernel asks for security.capability before
    // every write, a FUSE round trip that halved 4 KiB random write throughput.
    wanted |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
    if write_cache {
        wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
    }
    // On a shared volume locks must hold across mounts: the kernel hands them to us. On an
    // embedded volume the kernel's own lock table is exact (one mount), so it keeps them.
    if shared {
        wanted |= InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS;
    }
    if let Err(unsupported) = config.add_capabilities(wanted) {
        tracing::info!("kernel lacks FUSE capabilities {unsupported:?}");
        let _ = config.add_capabilities(wanted - unsupported);
    }
}

impl GravitonFuse {
    fn entry(&self, reply: ReplyEntry, parent: INodeNo, n: &OsStr, r: Result<Inode, FsError>) {
        answer!(reply, r, |i| {
            if !matches!(name(n), b"." | b"..") {
                self.handed_out(parent, name(n), i.ino);
            }
            reply.entry(&self.ttl, &attr(&i), Generation(0))
        });
    }

    fn empty(reply: ReplyEmpty, r: Result<(), FsError>) {
        answer!(reply, r, |()| reply.ok());
    }

    /// Runs `f` on the blocking pool; the reply travels with it, and `op` times it until then.
    fn background(&self, op: Op, f: impl FnOnce(&Fs) + Send + 'static) {
        let fs = self.fs.clone();
        self.fs.runtime().spawn_blocking(move || {
            op.enter();
            f(&fs);
            drop(op);
        });
    }

    /// Runs `f` here when it is cheap, on the blocking pool when it is `slow` or the inode has
    /// writes to commit that may take a while.
    fn inline_unless_pending(
        &self,
        op: Op,
        ino: INodeNo,
        slow: bool,
        f: impl FnOnce(&Fs) + Send + 'static,
    ) {
        if slow || self.fs.commit_may_wait(ino.0) {
            self.background(op, f);
        } else {
            f(&self.fs);
        }
    }
}

impl Filesystem for GravitonFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        negotiate(config, self.write_cache, self.fs.is_shared());
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.shutdown() {
            tracing::error!("flushing at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let _op = op("lookup");
        self.entry(reply, parent, n, self.fs.lookup(parent.0, name(n)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = op("getattr");
        let inode = self.fs.getattr(ino.0);
        answer!(reply, inode, |i| reply.attr(&self.ttl, &attr(&i)));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let op = op("setattr");
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Timestamp::from),
        };
        let ttl = self.ttl;
        // FUSE_HANDLE_KILLPRIV_V2: the core drops setuid/setgid (the kernel no longer sends
        // the mode)
        let caller = caller(req);
        let times_only =
            set.mode.is_none() && set.uid.is_none() && set.gid.is_none() && set.size.is_none();
        let write_cache = self.write_cache;
        self.inline_unless_pending(op, ino, set.size.is_some(), move |fs| {
            match fs.setattr_by(ino.0, set, &caller) {
                Ok(i) => reply.attr(&ttl, &attr(&i)),
                // With the write cache, the kernel writes back the times of a file it still
                // holds, also after the file was unlinked and closed (syncfs does): nothing is
                // left to update.
                Err(FsError::NotFound) if write_cache && times_only => {
                    let mut gone = Inode::new(ino.0, FileKind::File, 0, 0, 0, Timestamp::now());
                    gone.nlink = 0;
                    reply.attr(&Duration::ZERO, &attr(&gone))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _op = op("readlink");
        answer!(reply, self.fs.readlink(ino.0), |t| reply.data(&t));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _op = op("mknod");
        self.entry(
            reply,
            parent,
            n,
            self.fs.mknod(ctx(req), parent.0, name(n), mode, rdev),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _op = op("mkdir");
        self.entry(
            reply,
            parent,
            n,
            self.fs.mkdir(ctx(req), parent.0, name(n), mode),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let _op = op("unlink");
        Self::empty(reply, self.fs.unlink(parent.0, name(n)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let _op = op("rmdir");
        Self::empty(reply, self.fs.rmdir(parent.0, name(n)));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, n: &OsStr, target: &Path, reply: ReplyEntry) {
        let _op = op("symlink");
        self.entry(
            reply,
            parent,
            n,
            self.fs
                .symlink(ctx(req), parent.0, name(n), target.as_os_str().as_bytes()),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: FuseRenameFlags,
        reply: ReplyEmpty,
    ) {
        let _op = op("rename");
        let known = FuseRenameFlags::RENAME_NOREPLACE | FuseRenameFlags::RENAME_EXCHANGE;
        if !(flags - known).is_empty() {
            return reply.error(failed(Errno::EINVAL));
        }
        let f = RenameFlags {
            noreplace: flags.contains(FuseRenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(FuseRenameFlags::RENAME_EXCHANGE),
        };
        Self::empty(
            reply,
            self.fs
                .rename(parent.0, name(n), newparent.0, name(newname), f),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _op = op("link");
        self.entry(
            reply,
            newparent,
            newname,
            self.fs.link(ino.0, newparent.0, name(newname)),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: FuseOpenFlags, reply: ReplyOpen) {
        let op = op("open");
        let flags = OpenFlags::from_libc(flags.0);
        let notifier = self.notifier.clone();
        let shared = self.kernel.is_some();
        // a writer may wait for a page fill, and a fill for a read these threads answer
        let open = move |fs: &Fs| {
            let opened = (|| -> Result<(u64, FopenFlags), FsError> {
                // Close-to-open: on a shared volume the kernel keeps its cached pages only
                // when the inode is known unchanged since it cached them. A changed inode's
                // cached attributes go too, before the reply: the change feed that would drop
                // them may not have arrived yet, and the size bounds what the kernel reads.
                let keep = !fs.revalidate(ino.0)?;
                if !keep {
                    inval_attributes(&notifier, ino);
                    if shared && fs.gone_for_open(ino.0)? {
                        return Err(FsError::NotFound);
                    }
                }
                // an open for reading may update the access time: the kernel's cached one is
                // dropped (the reply carries no attributes)
                if flags.read && fs.touch_atime(ino.0)? {
                    inval_attributes(&notifier, ino);
                }
                let fh = fs.open(ino.0, flags)?;
                let how = if fs.appends_at_end(fh) {
                    FopenFlags::FOPEN_DIRECT_IO
                } else if keep {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                Ok((fh, how))
            })();
            match opened {
                Ok((fh, how)) => reply.opened(FileHandle(fh), how),
                // On a shared volume, an inode another mount removed, reached through an entry
                // the kernel still held (the change feed has not dropped it yet): ESTALE makes
                // the kernel look the name up again (`Fs::lookup` checks a stale entry) and
                // open what it finds.
                Err(FsError::NotFound) if shared => reply.error(errno(&FsError::Stale)),
                Err(e) => reply.error(errno(&e)),
            }
        };
        match self.fs.open_may_wait(ino.0, flags) {
            true => self.background(op, open),
            false => open(&self.fs),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _op = op("read");
        // In this thread: the embedded store answers from local disk, and a hop to another
        // thread cost more than a cached 4 KiB read.
        let data = self.fs.read_bytes(fh.0, offset, size);
        answer!(reply, data, |d| reply.data(&d));
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: FuseOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _op = op("write");
        // Buffering is a copy into memory: done here, without another copy to move the data
        // to the blocking pool. A write that must flush (backpressure) holds this reader
        // thread, which is the point of backpressure.
        let written = self.fs.write_placed(fh.0, offset, data).and_then(|placed| {
            if placed != offset {
                // an O_APPEND write on a shared volume, placed at the end the volume has
                // (`vfs::append`): the kernel's size and any pages it cached there are stale
                inval_range(&self.notifier, ino, placed, data.len());
            }
            // FUSE_HANDLE_KILLPRIV_V2: the kernel says whether the writer lacks CAP_FSETID.
            // The reply carries no attributes, so the kernel's cached mode is dropped (as
            // fallocate does).
            let writer = Caller {
                fsetid: !write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
                ..caller(req)
            };
            if self.fs.written_by(ino.0, &writer)? {
                inval_attributes(&self.notifier, ino);
            }
            Ok(data.len())
        });
        answer!(reply, written, |n| reply.written(n as u32));
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close releases the closing process's fcntl locks on the file.
        self.inline_unless_pending(op("flush"), ino, false, move |fs| {
            let r = fs
                .flush(fh.0)
                .and(fs.release_locks(fh.0, ino.0, lock_owner.0));
            Self::empty(reply, r)
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of an open file description releases its flock lock and its own
        // (OFD) locks, once its writes are committed.
        self.inline_unless_pending(op("release"), ino, false, move |fs| {
            let released = fs.release(fh.0);
            let unlocked = lock_owner.map_or(Ok(()), |o| fs.release_locks(fh.0, ino.0, o.0));
            Self::empty(reply, released.and(unlocked))
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let op = op("getlk");
        let Some(req) = lock_request(lock_owner, start, end, typ, pid) else {
            return reply.error(failed(Errno::EINVAL));
        };
        self.background(op, move |fs| match fs.test_lock(fh.0, &req) {
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, pid),
            Ok(Some(h)) => {
                let typ = if h.exclusive {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                };
                reply.locked(h.start, h.end, typ, h.pid)
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    /// fcntl and flock locks on a shared volume. A blocked F_SETLKW or flock waits on the
    /// blocking pool until the lock is released; it cannot be interrupted (fuser does not
    /// handle FUSE_INTERRUPT).
    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let op = op("setlk");
        let Some(req) = lock_request(lock_owner, start, end, typ, pid) else {
            return reply.error(failed(Errno::EINVAL));
        };
        let kernel = self.kernel.clone();
        self.background(op, move |fs| {
            match fs.set_lock(fh.0, &req, sleep) {
                Ok(true) => {
                    // what the lock's last holder committed is out of the kernel's caches too
                    if let Some(k) = kernel {
                        k.wait_drained(Duration::from_secs(1));
                    }
                    reply.ok()
                }
                Ok(false) => reply.error(failed(Errno::EAGAIN)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.background(op("fsync"), move |fs| Self::empty(reply, fs.fsync(fh.0)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: FuseOpenFlags, reply: ReplyOpen) {
        let _op = op("opendir");
        answer!(reply, self.fs.opendir(ino.0), |()| {
            reply.opened(FileHandle(self.dirs.open()), FopenFlags::empty())
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: FuseOpenFlags,
        reply: ReplyEmpty,
    ) {
        let _op = op("releasedir");
        self.dirs.release(fh.0);
        Self::empty(reply, self.fs.releasedir(ino.0));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = op("readdir");
        let filled = self.dirs.fill(&self.fs, fh.0, ino.0, offset, |e| {
            Ok(reply.add(
                INodeNo(e.ino),
                e.cookie,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ))
        });
        answer!(reply, filled, |()| reply.ok());
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _op = op("readdirplus");
        let mut added = 0;
        let filled = self.dirs.fill(&self.fs, fh.0, ino.0, offset, |e| {
            if offset == 0 && added == FIRST_PLUS_ENTRIES {
                return Ok(true);
            }
            let inode = match self.fs.getattr(e.ino) {
                Ok(i) => i,
                Err(FsError::NotFound) => return Ok(false), // removed since it was listed
                Err(err) => return Err(err),
            };
            let full = reply.add(
                INodeNo(e.ino),
                e.cookie,
                OsStr::from_bytes(&e.name),
                &self.ttl,
                &attr(&inode),
                Generation(0),
            );
            if !full && e.name != b"." && e.name != b".." {
                self.handed_out(ino, &e.name, e.ino);
            }
            added += usize::from(!full);
            Ok(full)
        });
        answer!(reply, filled, |()| reply.ok());
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.background(op("fsyncdir"), move |fs| Self::empty(reply, fs.fsyncdir()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = op("statfs");
        let stats = self.fs.statfs(self.capacity_path.as_deref());
        answer!(reply, stats, |s| reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_avail,
            s.files,
            s.files_free,
            s.block_size,
            s.name_max,
            s.block_size,
        ));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        n: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _op = op("setxattr");
        let r =
            XattrSet::from_libc(flags).and_then(|how| self.fs.setxattr(ino.0, name(n), value, how));
        Self::empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        let _op = op("getxattr");
        let value = self.fs.getxattr(ino.0, name(n));
        answer!(reply, value, |v| sized(reply, size, &v));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = op("listxattr");
        answer!(reply, self.fs.listxattr(ino.0), |v| sized(reply, size, &v));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let _op = op("removexattr");
        Self::empty(reply, self.fs.removexattr(ino.0, name(n)));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _op = op("access");
        // Permission checks are the kernel's (default_permissions); only existence is ours.
        Self::empty(reply, self.fs.getattr(ino.0).map(drop));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _op = op("create");
        if libc::S_IFMT & mode != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(failed(Errno::EINVAL));
        }
        let flags = OpenFlags::from_libc(flags);
        let created = self.fs.create(ctx(req), parent.0, name(n), mode, flags);
        answer!(reply, created, |(i, fh)| {
            self.handed_out(parent, name(n), i.ino);
            let open = match self.fs.appends_at_end(fh) {
                true => FopenFlags::FOPEN_DIRECT_IO,
                false => FopenFlags::FOPEN_KEEP_CACHE,
            };
            reply.created(&self.ttl, &attr(&i), Generation(0), FileHandle(fh), open)
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // As a write does (ext4 too, in every mode): an unprivileged caller's fallocate drops
        // setuid/setgid. The reply carries no attributes: the kernel's cached mode is dropped
        // instead (attributes only, no pages, so no lock the fallocate holds is needed).
        let caller = caller(req);
        let notifier = self.notifier.clone();
        let capacity = self.capacity_path.clone();
        self.background(op("fallocate"), move |fs| {
            let r = FallocateMode::from_libc(mode)
                .and_then(|m| match m.punch_hole {
                    true => Ok(m),
                    false => fs.check_space(length, capacity.as_deref()).map(|()| m),
                })
                .and_then(|m| fs.fallocate(ino.0, offset, length, m))
                .and_then(|()| fs.written_by(ino.0, &caller));
            if let Ok(true) = r {
                inval_attributes(&notifier, ino);
            }
            Self::empty(reply, r.map(drop))
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let op = op("lseek");
        let whence = match whence {
            libc::SEEK_DATA => Whence::Data,
            libc::SEEK_HOLE => Whence::Hole,
            _ => return reply.error(failed(Errno::EINVAL)),
        };
        if offset < 0 {
            return reply.error(failed(Errno::ENXIO));
        }
        self.background(op, move |fs| {
            let found = fs.seek(ino.0, offset as u64, whence);
            answer!(reply, found, |o| reply.offset(o as i64))
        });
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let len = len.min(u32::MAX as u64 & !4095);
        // A write into the target, as ext4 makes it: an unprivileged caller's copy drops
        // setuid/setgid (FUSE_HANDLE_KILLPRIV_V2 leaves that to us), and the kernel's cached
        // mode is dropped, as fallocate does.
        let caller = caller(req);
        let notifier = self.notifier.clone();
        self.background(op("copy_file_range"), move |fs| {
            let copied = fs
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
                .and_then(|n| match n {
                    0 => Ok((0, false)),
                    n => fs
                        .written_by(ino_out.0, &caller)
                        .map(|changed| (n, changed)),
                });
            if let Ok((_, true)) = copied {
                inval_attributes(&notifier, ino_out);
            }
            answer!(reply, copied, |(n, _)| reply.written(n as u32));
        });
    }
    /// The mount's own requests (`ioctl.rs`): where its control socket is (`graviton trash|quota
    /// … MOUNTPATH`), and `graviton clone`, run on the blocking pool (a big tree takes a
    /// while), after which the new entry is dropped from the kernel's caches.
    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let op = op("ioctl");
        if cmd == ioctl::WHERE {
            match self.control_socket.as_deref().and_then(ioctl::encode_where) {
                Some(answer) => reply.ioctl(0, &answer),
                None => reply.error(failed(Errno::ENOTTY)),
            }
            return;
        }
        if cmd != ioctl::CLONE {
            reply.error(failed(Errno::ENOTTY));
            return;
        }
        let Some((src, dst)) = ioctl::decode_clone(in_data) else {
            reply.error(failed(Errno::EINVAL));
            return;
        };
        let who = crate::vfs::access::Who::of_process(req.uid(), req.gid(), req.pid());
        let notifier = self.notifier.clone();
        self.background(op, move |fs| {
            answer!(reply, fs.clone_path(&who, &src, &dst), |(
                parent,
                name,
                _,
            )| {
                if let Some(n) = notifier.get() {
                    let _ = n.inval_entry(INodeNo(parent), OsStr::from_bytes(&name));
                }
                inval_attributes(&notifier, INodeNo(parent));
                reply.ioctl(0, &[])
            });
        });
    }
}

/// The caller of `req`, for the rule that drops setuid/setgid (`vfs::Caller`).
fn caller(req: &Request) -> Caller {
    Caller::new(req.uid(), req.gid(), req.pid())
}

/// Drops the kernel's cached attributes of `ino` after a change a reply does not carry
/// (attributes only, no pages, so no lock the request holds is needed).
fn inval_attributes(notifier: &std::sync::OnceLock<fuser::Notifier>, ino: INodeNo) {
    if let Some(n) = notifier.get() {
        let _ = n.inval_inode(ino, -1, 0);
    }
}

/// Drops the kernel's cached attributes and its pages of `len` bytes at `offset`.
fn inval_range(
    notifier: &std::sync::OnceLock<fuser::Notifier>,
    ino: INodeNo,
    offset: u64,
    len: usize,
) {
    if let Some(n) = notifier.get() {
        let _ = n.inval_inode(ino, offset as i64, len as i64);
    }
}

/// getxattr/listxattr protocol: size 0 asks for the length; a short buffer is ERANGE.
fn sized(reply: ReplyXattr, size: u32, v: &[u8]) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(failed(Errno::ERANGE));
    } else {
        reply.data(v);
    }
}

/// Entries in a listing's first reply, the one the kernel asks with attributes (readdirplus;
/// the later replies are plain readdir unless lookups in the directory ask for attributes
/// again). A directory this small comes whole in one reply; a larger one's first reply stops
/// here, because the kernel takes in an entry with attributes several times more slowly than
/// a plain one, even when it already knows them all.
const FIRST_PLUS_ENTRIES: usize = 64;
