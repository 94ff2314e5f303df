//! Where write-back blocks wait for their upload: appended as records to a few segment files
//! (`segments/NNN.seg`, up to 64 MiB each), not one file per block. A put is then a write at
//! the end of an open file, not a file creation: on ext4 without a journal each create scans
//! the recently deleted inodes, a third of the daemon's CPU time in an untar with one file per
//! block. A segment is deleted once every block in it was uploaded (or deleted).
//!
//! A record is a header (magic, the block's key, its length) and the block's bytes. Each
//! segment has one writer at a time, so its records follow each other without gaps and only
//! the last can be torn by a crash; the key names the bytes' hash, so a torn or damaged record
//! is recognised when the segment is read again at the next open, and the scan stops there.
//!
//! Records are written with `O_DIRECT` where the file system takes it: the header padded to a
//! page, the bytes padded to a page multiple, so every record starts page-aligned ("GBK2"
//! records). Through the page cache, each staged byte is copied into a page the kernel has to
//! find and zero first, which can be most of the daemon's CPU in a sequential write. Where `O_DIRECT` is refused (tmpfs), records go through the page cache,
//! unpadded ("GBK1", the older layout; a folder may hold both).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::at_rest::AtRest;
use super::pending_sync::PendingSync;
use super::{StoreError, block_files};
use crate::domain::BlockKey;
use crate::domain::key::KEY_BYTES;

/// A segment stops taking records past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
const MAGIC: [u8; 4] = *b"GBK1";
/// Written over a released record's magic, so the next open does not stage it again.
const RELEASED: [u8; 4] = *b"GBK0";
/// The same two for page-aligned records.
const MAGIC_ALIGNED: [u8; 4] = *b"GBK2";
const RELEASED_ALIGNED: [u8; 4] = *b"GBJ2";
const HEADER: usize = MAGIC.len() + KEY_BYTES + 4;
/// Alignment of direct I/O: offsets, lengths and buffers (any device's logical block divides it).
const PAGE: u64 = 4096;

/// Where a staged block's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    segment: u64,
    /// Where the record (its header) starts.
    offset: u64,
    len: u32,
    aligned: bool,
}

impl Loc {
    /// Where the block's bytes start.
    fn data_at(&self) -> u64 {
        self.offset + if self.aligned { PAGE } else { HEADER as u64 }
    }
}

/// A record's length on disk, header included.
fn record_len(len: u32, aligned: bool) -> u64 {
    match aligned {
        true => PAGE + (len as u64).next_multiple_of(PAGE),
        false => HEADER as u64 + len as u64,
    }
}

/// What a `sync` makes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Unsynced {
    Segment(u64),
    /// The folder of the segments: one was created or deleted.
    Folder,
}

pub struct Staging {
    dir: PathBuf,
    state: Mutex<Segments>,
    pending: PendingSync<Unsynced>,
    /// New segments are written with `O_DIRECT` (until the file system refuses it).
    direct: AtomicBool,
    /// How records hold their blocks (sealed on an encrypted volume).
    at_rest: AtRest,
    /// An exclusive lock on the folder for as long as it is open: one process stages and
    /// uploads there at a time (a second would scan and release the first's records).
    _lock: nix::fcntl::Flock<File>,
}

#[derive(Default)]
struct Segments {
    all: HashMap<u64, Segment>,
    /// Open segments nobody is writing now.
    idle: Vec<u64>,
    next: u64,
}

struct Segment {
    file: Arc<File>,
    /// The same file opened with `O_DIRECT`: records are page-aligned.
    direct: Option<Arc<File>>,
    /// Records still needed (or being written).
    live: usize,
    /// Where the next record goes.
    size: u64,
    /// Still taking records (sealed segments go once `live` reaches 0).
    open: bool,
}

fn io(context: String, e: std::io::Error) -> StoreError {
    StoreError::io("write-back", context, e)
}

fn header(magic: [u8; 4], key: &BlockKey, len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..MAGIC.len()].copy_from_slice(&magic);
    h[MAGIC.len()..MAGIC.len() + KEY_BYTES].copy_from_slice(&key.to_bytes());
    h[MAGIC.len() + KEY_BYTES..].copy_from_slice(&len.to_le_bytes());
    h
}

/// How long an open waits for the folder's lock: a daemon just killed may hold it a moment
/// longer, until its last thread has exited.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the folder's lock, waiting up to `LOCK_WAIT` for another process to let it go.
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<File>, StoreError> {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut file = File::open(dir).map_err(|e| io(format!("opening {}", dir.display()), e))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let context = format!(
                    "the write-back folder {} is in use by another mount of this volume on this machine",
                    dir.display()
                );
                return Err(io(context, nix::errno::Errno::EWOULDBLOCK.into()));
            }
            Err((_, e)) => return Err(io(format!("locking {}", dir.display()), e.into())),
        }
    }
}

impl Staging {
    /// Opens the staging folder `dir` (created if needed) and returns the blocks found in it,
    /// each once. Blocks an older version left as one file each are moved into a segment.
    /// Records are kept as `at_rest` says (sealed on an encrypted volume).
    pub fn open(
        dir: &Path,
        at_rest: AtRest,
    ) -> Result<(Staging, Vec<(BlockKey, Loc)>), StoreError> {
        Self::open_with(dir, true, at_rest)
    }

    /// As `open`; `direct` false writes every record through the page cache.
    fn open_with(
        dir: &Path,
        direct: bool,
        at_rest: AtRest,
    ) -> Result<(Staging, Vec<(BlockKey, Loc)>), StoreError> {
        let seg_dir = dir.join("segments");
        crate::private::dir(&seg_dir)
            .and_then(|()| crate::private::dir(dir))
            .map_err(|e| io(format!("creating {}", seg_dir.display()), e))?;
        let lock = lock(dir)?;
        let _ = std::fs::remove_dir_all(dir.join("spare"));
        let mut ids: Vec<u64> = std::fs::read_dir(&seg_dir)
            .map_err(|e| io(format!("listing {}", seg_dir.display()), e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let staging = Staging {
            dir: seg_dir,
            state: Mutex::new(Segments {
                next: ids.last().map_or(0, |last| last + 1),
                ..Segments::default()
            }),
            pending: PendingSync::default(),
            direct: direct.into(),
            at_rest,
            _lock: lock,
        };
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            let path = staging.path(id);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io(format!("opening {}", path.display()), e))?;
            let records = scan(&file, &staging.at_rest)
                .map_err(|e| io(format!("reading {}", path.display()), e))?;
            let mut live = 0;
            for (key, offset, len, aligned) in records {
                if seen.insert(key) {
                    live += 1;
                    found.push((
                        key,
                        Loc {
                            segment: id,
                            offset,
                            len,
                            aligned,
                        },
                    ));
                }
            }
            let mut st = staging.lock();
            st.all.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    direct: None,
                    live,
                    size: 0,
                    open: false,
                },
            );
            if live == 0 {
                staging.remove(&mut st, id);
            }
        }
        // one file per block: the layout before segments
        let mut moved = Vec::new();
        for (key, _) in block_files::scan(dir, "write-back")? {
            let path = block_files::path(dir, &key);
            let data =
                std::fs::read(&path).map_err(|e| io(format!("reading {}", path.display()), e))?;
            if key.matches(&data) && seen.insert(key) {
                found.push((key, staging.append(&key, &data)?));
            }
            moved.push(path);
        }
        if !moved.is_empty() {
            staging.sync()?;
            for path in moved {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok((staging, found))
    }

    /// The staging folder (the segment files are in its `segments/`).
    pub fn dir(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.state.lock().expect("staging state")
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    /// Forgets and deletes segment `id`: none of its blocks is needed any more, so neither
    /// is a sync of it (nor a failed one reported).
    fn remove(&self, st: &mut Segments, id: u64) {
        st.all.remove(&id);
        self.pending.forget(&Unsynced::Segment(id));
        self.pending.written(Unsynced::Folder);
        if let Err(e) = std::fs::remove_file(self.path(id)) {
            tracing::warn!("removing staged segment {id}: {e}");
        }
    }

    /// Appends `data` (named by `key`) to an open segment, creating one when every open
    /// segment is being written.
    pub fn append(&self, key: &BlockKey, data: &[u8]) -> Result<Loc, StoreError> {
        let data = &*self.at_rest.seal(key, data);
        let len = u32::try_from(data.len()).map_err(|_| {
            io(
                "staging a block".into(),
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        let (id, file, direct, offset) = {
            let mut st = self.lock();
            let id = match st.idle.pop() {
                Some(id) => id,
                None => {
                    let id = st.next;
                    let path = self.path(id);
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(|e| io(format!("creating {}", path.display()), e))?;
                    st.next += 1;
                    self.pending.written(Unsynced::Folder);
                    let seg = Segment {
                        file: Arc::new(file),
                        direct: self.open_direct(&path),
                        live: 0,
                        size: 0,
                        open: true,
                    };
                    st.all.insert(id, seg);
                    id
                }
            };
            let seg = st.all.get_mut(&id).expect("open segment");
            seg.live += 1;
            (id, seg.file.clone(), seg.direct.clone(), seg.size)
        };
        // this thread is the segment's only writer until it goes back to `idle`
        let aligned = direct.is_some();
        let written = match &direct {
            Some(direct) => {
                let record = aligned_record(key, data);
                match direct.write_all_at(&record, offset) {
                    // refused after all: the same page-aligned record through the page cache
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        tracing::info!("staging without O_DIRECT: {e}");
                        self.direct.store(false, Relaxed);
                        file.write_all_at(&record, offset)
                    }
                    other => other,
                }
            }
            None => file
                .write_all_at(&header(MAGIC, key, len), offset)
                .and_then(|()| file.write_all_at(data, offset + HEADER as u64)),
        };
        if written.is_ok() && !aligned {
            start_writeback(&file, offset, record_len(len, false));
        }
        let mut st = self.lock();
        let seg = st.all.get_mut(&id).expect("segment being written");
        if written.is_ok() {
            seg.size = offset + record_len(len, aligned);
            self.pending.written(Unsynced::Segment(id));
            if !self.direct.load(Relaxed) {
                seg.direct = None; // (its records stay aligned: the scan reads each record's magic)
            }
        } else {
            seg.live -= 1;
            seg.open = false; // a disk that failed once takes no more records in this file
        }
        if seg.open && seg.size < SEGMENT_BYTES {
            st.idle.push(id);
        } else {
            seg.open = false;
            if seg.live == 0 {
                self.remove(&mut st, id);
            }
        }
        written.map_err(|e| io(format!("staging block {key}"), e))?;
        Ok(Loc {
            segment: id,
            offset,
            len,
            aligned,
        })
    }

    /// `path` opened again for direct writes, unless the file system refuses them.
    fn open_direct(&self, path: &Path) -> Option<Arc<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        if !self.direct.load(Relaxed) {
            return None;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                tracing::info!("staging without O_DIRECT: {e}");
                self.direct.store(false, Relaxed);
                None
            }
        }
    }

    /// The bytes of the block `key` at `loc` (unverified: see `AtRest::open`), or None once its
    /// segment was deleted.
    pub fn read(&self, key: &BlockKey, loc: Loc) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(file) = self.lock().all.get(&loc.segment).map(|s| s.file.clone()) else {
            return Ok(None);
        };
        let mut data = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut data, loc.data_at())
            .map_err(|e| io(format!("reading staged segment {}", loc.segment), e))?;
        Ok(Some(self.at_rest.open(key, data)))
    }

    /// The record at `loc` is no longer needed; its segment goes with its last record (an
    /// idle open segment too). Otherwise the record is marked released in place (not synced:
    /// after a crash it may be uploaded once more, which is harmless).
    pub fn release(&self, loc: Loc) {
        let mut st = self.lock();
        let Some(seg) = st.all.get_mut(&loc.segment) else {
            return;
        };
        seg.live -= 1;
        let idle = st.idle.iter().position(|&id| id == loc.segment);
        let seg = &st.all[&loc.segment];
        if seg.live == 0 && (!seg.open || idle.is_some()) {
            if let Some(i) = idle {
                st.idle.swap_remove(i);
            }
            self.remove(&mut st, loc.segment);
        } else if let Err(e) = seg.file.write_all_at(
            if loc.aligned {
                &RELEASED_ALIGNED
            } else {
                &RELEASED
            },
            loc.offset,
        ) {
            tracing::warn!(
                "marking a staged record released in segment {}: {e}",
                loc.segment
            );
        }
    }

    /// Makes every record appended so far durable on the local disk. A segment whose sync
    /// failed takes no more records, and every later sync reports the failure until the
    /// segment is gone (each of its blocks uploaded, or deleted): syncing it again would
    /// succeed for bytes the disk may have lost.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.pending
            .sync(|items| {
                let mut failed = Vec::new();
                for t in items {
                    let synced = match t.item {
                        Unsynced::Segment(id) if t.failed_before => Err(std::io::Error::other(
                            format!("an earlier sync of staged segment {id} failed"),
                        )),
                        Unsynced::Segment(id) => {
                            let file = self.lock().all.get(&id).map(|s| s.file.clone());
                            file.map_or(Ok(()), |f| f.sync_data())
                        }
                        Unsynced::Folder => File::open(&self.dir).and_then(|d| d.sync_all()),
                    };
                    if let Err(e) = synced {
                        if let Unsynced::Segment(id) = t.item {
                            self.seal(id);
                        }
                        failed.push((t.item, e));
                    }
                }
                failed
            })
            .map_err(|(item, failure)| {
                let what = match item {
                    Unsynced::Segment(id) => format!("syncing staged segment {id}"),
                    Unsynced::Folder => format!("syncing {}", self.dir.display()),
                };
                io(what, failure.to_io_error())
            })
    }

    /// Segment `id` takes no more records.
    fn seal(&self, id: u64) {
        let mut st = self.lock();
        if let Some(seg) = st.all.get_mut(&id) {
            seg.open = false;
        }
        if let Some(i) = st.idle.iter().position(|&x| x == id) {
            st.idle.swap_remove(i);
            if st.all.get(&id).is_some_and(|s| s.live == 0) {
                self.remove(&mut st, id);
            }
        }
    }
}

/// Starts writing a record to the disk without waiting, so an fsync after a long stream of
/// writes waits for the last blocks only rather than for everything staged since the last one
/// (otherwise a large share of a sequential write's time). Failure is harmless:
/// `sync` still writes whatever this did not. (The local store does the same for its files.)
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the life of `file`; the call reads no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        tracing::debug!(
            "starting the write of a staged record: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A page-aligned record of `data` in a page-aligned buffer: the header padded to a page, then
/// the bytes padded to a page multiple.
fn aligned_record(key: &BlockKey, data: &[u8]) -> AlignedBuf {
    let len = record_len(data.len() as u32, true) as usize;
    let mut buf = AlignedBuf::with_capacity(len);
    buf.extend(&header(MAGIC_ALIGNED, key, data.len() as u32));
    buf.pad_to(PAGE as usize);
    buf.extend(data);
    buf.pad_to(len);
    buf
}

/// Bytes starting at a page boundary of a `Vec` (direct I/O needs an aligned buffer).
struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn with_capacity(len: usize) -> AlignedBuf {
        let mut vec: Vec<u8> = Vec::with_capacity(len + PAGE as usize);
        let start = vec.as_ptr().align_offset(PAGE as usize);
        vec.resize(start, 0); // within the capacity: the buffer does not move
        AlignedBuf { vec, start }
    }

    fn extend(&mut self, bytes: &[u8]) {
        self.vec.extend_from_slice(bytes);
    }

    fn pad_to(&mut self, len: usize) {
        self.vec.resize(self.start + len, 0);
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec[self.start..]
    }
}

/// The whole records of a segment, in order: (key, offset, length, page-aligned). The scan
/// stops at the first record that is short, lacks a magic, or whose bytes do not match its key.
fn scan(file: &File, at_rest: &AtRest) -> std::io::Result<Vec<(BlockKey, u64, u32, bool)>> {
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let mut out = Vec::new();
    let mut offset = 0u64;
    let mut h = [0u8; HEADER];
    let mut data = Vec::new();
    loop {
        if r.read_exact(&mut h).is_err() {
            return Ok(out);
        }
        let len = u32::from_le_bytes(h[MAGIC.len() + KEY_BYTES..].try_into().expect("4 bytes"));
        let magic: [u8; 4] = h[..MAGIC.len()].try_into().expect("4 bytes");
        let aligned = matches!(magic, MAGIC_ALIGNED | RELEASED_ALIGNED);
        if !aligned && !matches!(magic, MAGIC | RELEASED) {
            return Ok(out);
        }
        // past the header to the bytes, and the padding after them
        let (before, after) = match aligned {
            true => (
                PAGE - HEADER as u64,
                (len as u64).next_multiple_of(PAGE) - len as u64,
            ),
            false => (0, 0),
        };
        let next = offset + record_len(len, aligned);
        if matches!(magic, RELEASED | RELEASED_ALIGNED) {
            r.seek_relative((next - offset - HEADER as u64) as i64)?;
            offset = next;
            continue;
        }
        let Some(key) = BlockKey::from_bytes(&h[MAGIC.len()..MAGIC.len() + KEY_BYTES]) else {
            return Ok(out);
        };
        r.seek_relative(before as i64)?;
        data.resize(len as usize, 0);
        if r.read_exact(&mut data).is_err() || !at_rest.holds(&key, &data) {
            return Ok(out);
        }
        r.seek_relative(after as i64)?;
        out.push((key, offset, len, aligned));
        offset = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HashAlgo;

    fn block(n: u8, len: usize) -> (BlockKey, Vec<u8>) {
        let data = vec![n; len];
        (BlockKey::for_data(HashAlgo::Blake3, &data), data)
    }

    fn segment_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("segments")).unwrap().count()
    }

    #[test]
    fn records_survive_reopen_and_segments_go_with_their_last_record() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (block(1, 1000), block(2, 3000));
        let (s, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert!(found.is_empty());
        let Err(busy) = Staging::open(tmp.path(), AtRest::Plain) else {
            panic!("a second opener would scan and release the first's records")
        };
        assert!(
            busy.to_string().contains("in use by another mount"),
            "{busy}"
        );
        let la = s.append(&a.0, &a.1).unwrap();
        let lb = s.append(&b.0, &b.1).unwrap();
        assert_eq!(
            la.segment, lb.segment,
            "one writer at a time reuses the open segment"
        );
        assert_eq!(s.read(&b.0, lb).unwrap().unwrap(), b.1);
        s.sync().unwrap();
        drop(s);

        let (s, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert_eq!(found, vec![(a.0, la), (b.0, lb)]);
        assert_eq!(s.read(&a.0, la).unwrap().unwrap(), a.1);
        s.release(la);
        assert_eq!(segment_files(tmp.path()), 1, "a record is still needed");
        s.release(lb);
        assert_eq!(
            segment_files(tmp.path()),
            0,
            "the reopened segment went with its last record"
        );
        assert_eq!(s.read(&b.0, lb).unwrap(), None);
    }

    #[test]
    fn released_records_of_an_open_segment_do_not_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (block(1, 100), block(2, 200), block(3, 300));
        let (s, _) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        let la = s.append(&a.0, &a.1).unwrap();
        let lb = s.append(&b.0, &b.1).unwrap();
        s.release(la);
        assert_eq!(segment_files(tmp.path()), 1);
        drop(s);
        let (s, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert_eq!(found, vec![(b.0, lb)], "the released record stays released");
        drop(s);
        // an idle open segment goes with its last record
        let (s, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        s.release(found[0].1);
        assert_eq!(segment_files(tmp.path()), 0);
        let lc = s.append(&c.0, &c.1).unwrap();
        s.release(lc);
        assert_eq!(
            segment_files(tmp.path()),
            0,
            "nothing left to upload, nothing on disk"
        );
        drop(s);
        assert!(
            Staging::open(tmp.path(), AtRest::Plain)
                .unwrap()
                .1
                .is_empty()
        );
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_segment_at_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (block(1, 500), block(2, 500), block(3, 500));
        let (s, _) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        let la = s.append(&a.0, &a.1).unwrap();
        let lb = s.append(&b.0, &b.1).unwrap();
        let lc = s.append(&c.0, &c.1).unwrap();
        drop(s);
        let path = tmp
            .path()
            .join("segments")
            .join(format!("{:020}.seg", la.segment));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // the last record's bytes cut short, as by a crash mid-write
        f.set_len(lc.data_at() + 490).unwrap();
        let (_, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert_eq!(found, vec![(a.0, la), (b.0, lb)]);
        // a flipped byte in the second record's data
        f.write_all_at(b"x", lb.data_at() + 7).unwrap();
        let (_, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert_eq!(
            found,
            vec![(a.0, la)],
            "never a record whose bytes do not match"
        );
    }

    #[test]
    fn records_of_both_layouts_read_back_after_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (block(1, 5000), block(2, 8192), block(3, 1));
        // through the page cache (as where O_DIRECT is refused), then direct where it is not
        let (s, _) = Staging::open_with(tmp.path(), false, AtRest::Plain).unwrap();
        let la = s.append(&a.0, &a.1).unwrap();
        let lb = s.append(&b.0, &b.1).unwrap();
        assert!(!la.aligned && !lb.aligned);
        drop(s);
        let (s, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert_eq!(found, vec![(a.0, la), (b.0, lb)]);
        let lc = s.append(&c.0, &c.1).unwrap();
        let ld = s.append(&a.0, &b.1[..100]).unwrap(); // a wrong key: never staged again
        if lc.aligned {
            assert_eq!(lc.offset % PAGE, 0);
            assert_eq!(
                ld.offset,
                lc.offset + 2 * PAGE,
                "one page of header, one of bytes"
            );
        }
        assert_eq!(s.read(&c.0, lc).unwrap().unwrap(), c.1);
        s.release(la);
        s.sync().unwrap();
        drop(s);
        let (s, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert_eq!(found, vec![(b.0, lb), (c.0, lc)]);
        assert_eq!(s.read(&b.0, lb).unwrap().unwrap(), b.1);
        assert_eq!(s.read(&c.0, lc).unwrap().unwrap(), c.1);
    }

    #[test]
    fn concurrent_appends_all_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, _) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        let s = Arc::new(s);
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    (0..20u8)
                        .map(|i| {
                            let b = block(t * 32 + i, 10_000 + i as usize);
                            (b.0, s.append(&b.0, &b.1).unwrap(), b.1)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        for (key, loc, data) in &all {
            assert_eq!(s.read(key, *loc).unwrap().as_ref(), Some(data));
        }
        drop(s);
        let (_, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert_eq!(found.len(), all.len());
    }

    #[test]
    fn blocks_left_as_one_file_each_move_into_a_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (block(1, 100), block(2, 100));
        std::fs::write(block_files::path(tmp.path(), &a.0), &a.1).unwrap();
        std::fs::write(block_files::path(tmp.path(), &b.0), b"damaged").unwrap();
        std::fs::create_dir_all(tmp.path().join("spare")).unwrap();
        let (s, found) = Staging::open(tmp.path(), AtRest::Plain).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, a.0);
        assert_eq!(s.read(&found[0].0, found[0].1).unwrap().unwrap(), a.1);
        assert!(!block_files::path(tmp.path(), &a.0).exists());
        assert!(!tmp.path().join("spare").exists());
    }
}
