//! The FUSE ceiling: a filesystem that keeps names and sizes in memory, stores no bytes and
//! answers every request at once, mounted with the kernel settings a Graviton mount asks for
//! (`daemon::fuse_config`, `fuse::negotiate`). No FUSE filesystem can beat it on this machine;
//! `bench/bench.sh` reports each of its rows as a ratio to it. Reads return zeros; there are no
//! links or times. Files have no extended attributes, and asking for one is answered at once
//! (ENODATA), as a filesystem that has them must answer: the kernel asks each file for
//! `security.capability` before its first write, and stops asking only a filesystem that says
//! it has no extended attributes at all (ENOSYS), which xattr users (and pjdfstest) cannot use.
//!
//! usage: null_fuse MOUNTPOINT      (serves until unmounted)

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, Session, TimeOrNow, WriteFlags,
};
use graviton::daemon::{MountOptions, fuse_config};

const TTL: Duration = Duration::from_secs(10);
const ROOT: u64 = 1;

struct Node {
    dir: bool,
    size: u64,
    perm: u16,
    /// A directory's entries (names in order, as readdir lists them).
    entries: BTreeMap<OsString, u64>,
}

struct Nodes {
    all: HashMap<u64, Node>,
    next: u64,
}

struct NullFs(Mutex<Nodes>);

fn attr(ino: u64, n: &Node) -> FileAttr {
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size: n.size,
        blocks: n.size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind: if n.dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: n.perm,
        nlink: if n.dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl NullFs {
    fn new() -> NullFs {
        let root = Node {
            dir: true,
            size: 0,
            perm: 0o777,
            entries: BTreeMap::new(),
        };
        NullFs(Mutex::new(Nodes {
            all: HashMap::from([(ROOT, root)]),
            next: ROOT + 1,
        }))
    }

    /// Adds `name` under `parent`; its attributes, or the errno.
    fn add(&self, parent: INodeNo, name: &OsStr, dir: bool, mode: u32) -> Result<FileAttr, Errno> {
        let mut n = self.0.lock().unwrap();
        let ino = n.next;
        let p = n.all.get_mut(&parent.0).ok_or(Errno::ENOENT)?;
        if p.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        p.entries.insert(name.to_owned(), ino);
        n.next += 1;
        let node = Node {
            dir,
            size: 0,
            perm: (mode & 0o7777) as u16,
            entries: BTreeMap::new(),
        };
        let a = attr(ino, &node);
        n.all.insert(ino, node);
        Ok(a)
    }

    fn remove(&self, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
        let mut n = self.0.lock().unwrap();
        let p = n.all.get_mut(&parent.0).ok_or(Errno::ENOENT)?;
        let ino = p.entries.remove(name).ok_or(Errno::ENOENT)?;
        n.all.remove(&ino);
        Ok(())
    }

    fn attr_of(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let n = self.0.lock().unwrap();
        n.all
            .get(&ino.0)
            .map(|node| attr(ino.0, node))
            .ok_or(Errno::ENOENT)
    }

    /// `(ino, name, attributes)` of a directory's entries from `offset` on.
    fn list(&self, dir: INodeNo, offset: u64) -> Result<Vec<(u64, OsString, FileAttr)>, Errno> {
        let n = self.0.lock().unwrap();
        let d = n.all.get(&dir.0).ok_or(Errno::ENOENT)?;
        Ok(d.entries
            .iter()
            .skip(offset as usize)
            .map(|(name, &ino)| (ino, name.clone(), attr(ino, &n.all[&ino])))
            .collect())
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        graviton::fuse::negotiate(config, false, false);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let n = self.0.lock().unwrap();
        let found = n.all.get(&parent.0).and_then(|p| p.entries.get(name));
        match found {
            Some(&ino) => reply.entry(&TTL, &attr(ino, &n.all[&ino]), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut n = self.0.lock().unwrap();
        let Some(node) = n.all.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(size) = size {
            node.size = size;
        }
        if let Some(mode) = mode {
            node.perm = (mode & 0o7777) as u16;
        }
        reply.attr(&TTL, &attr(ino.0, node))
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.add(parent, name, true, mode) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Moves the entry, replacing what the new name held (rsync renames its temporary files).
    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut n = self.0.lock().unwrap();
        let Some(ino) = n
            .all
            .get_mut(&parent.0)
            .and_then(|p| p.entries.remove(name))
        else {
            return reply.error(Errno::ENOENT);
        };
        let replaced = match n.all.get_mut(&newparent.0) {
            Some(p) => p.entries.insert(newname.to_owned(), ino),
            None => return reply.error(Errno::ENOENT),
        };
        if let Some(old) = replaced {
            n.all.remove(&old);
        }
        reply.ok()
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.add(parent, name, false, mode) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty())
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = self.attr_of(ino).map_or(0, |a| a.size);
        let n = len.saturating_sub(offset).min(size as u64) as usize;
        reply.data(&vec![0; n])
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Some(node) = self.0.lock().unwrap().all.get_mut(&ino.0) {
            node.size = node.size.max(offset + data.len() as u64);
        }
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty())
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.list(ino, offset) {
            Ok(entries) => {
                for (i, (e, name, a)) in entries.into_iter().enumerate() {
                    if reply.add(INodeNo(e), offset + i as u64 + 1, a.kind, &name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.list(ino, offset) {
            Ok(entries) => {
                for (i, (e, name, a)) in entries.into_iter().enumerate() {
                    let cookie = offset + i as u64 + 1;
                    if reply.add(INodeNo(e), cookie, &name, &TTL, &a, Generation(0)) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, _n: &OsStr, _size: u32, reply: ReplyXattr) {
        match self.attr_of(ino) {
            Ok(_) => reply.error(Errno::NO_XATTR),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.attr_of(ino) {
            Ok(_) if size == 0 => reply.size(0),
            Ok(_) => reply.data(&[]),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 30, 1 << 30, 1 << 30, 1 << 30, 1 << 30, 4096, 255, 4096)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mountpoint] = args.as_slice() else {
        anyhow::bail!("usage: null_fuse MOUNTPOINT");
    };
    let opts = MountOptions {
        allow_other: true,
        ..MountOptions::default()
    };
    let session = Session::new(NullFs::new(), mountpoint, &fuse_config("null", &opts))?;
    session.run()?;
    Ok(())
}
