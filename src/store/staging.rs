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

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{StoreError, block_files};
use crate::core::BlockKey;
use crate::core::key::KEY_BYTES;

/// A segment stops taking records past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
const MAGIC: [u8; 4] = *b"GBK1";
/// Written over a released record's magic, so the next open does not stage it again.
const RELEASED: [u8; 4] = *b"GBK0";
const HEADER: usize = MAGIC.len() + KEY_BYTES + 4;

/// Where a staged block's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

pub struct Staging {
    dir: PathBuf,
    state: Mutex<Segments>,
}

#[derive(Default)]
struct Segments {
    all: HashMap<u64, Segment>,
    /// Open segments nobody is writing now.
    idle: Vec<u64>,
    next: u64,
    /// A segment was created or deleted since the last `sync`.
    dir_changed: bool,
}

struct Segment {
    file: Arc<File>,
    /// Records still needed (or being written).
    live: usize,
    /// Where the next record goes.
    size: u64,
    /// Still taking records (sealed segments go once `live` reaches 0).
    open: bool,
    unsynced: bool,
}

fn io(context: String, e: std::io::Error) -> StoreError {
    StoreError::io("write-back", context, e)
}

fn header(key: &BlockKey, len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..MAGIC.len()].copy_from_slice(&MAGIC);
    h[MAGIC.len()..MAGIC.len() + KEY_BYTES].copy_from_slice(&key.to_bytes());
    h[MAGIC.len() + KEY_BYTES..].copy_from_slice(&len.to_le_bytes());
    h
}

impl Staging {
    /// Opens the staging folder `dir` (created if needed) and returns the blocks found in it,
    /// each once. Blocks an older version left as one file each are moved into a segment.
    pub fn open(dir: &Path) -> Result<(Staging, Vec<(BlockKey, Loc)>), StoreError> {
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir)
            .map_err(|e| io(format!("creating {}", seg_dir.display()), e))?;
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
            let records = scan(&file).map_err(|e| io(format!("reading {}", path.display()), e))?;
            let mut live = 0;
            for (key, offset, len) in records {
                if seen.insert(key) {
                    live += 1;
                    found.push((
                        key,
                        Loc {
                            segment: id,
                            offset,
                            len,
                        },
                    ));
                }
            }
            let mut st = staging.lock();
            st.all.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    live,
                    size: 0,
                    open: false,
                    unsynced: false,
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

    /// The folder of the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.state.lock().expect("staging state")
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    /// Forgets and deletes segment `id`.
    fn remove(&self, st: &mut Segments, id: u64) {
        st.all.remove(&id);
        st.dir_changed = true;
        if let Err(e) = std::fs::remove_file(self.path(id)) {
            tracing::warn!("removing staged segment {id}: {e}");
        }
    }

    /// Appends `data` (named by `key`) to an open segment, creating one when every open
    /// segment is being written.
    pub fn append(&self, key: &BlockKey, data: &[u8]) -> Result<Loc, StoreError> {
        let len = u32::try_from(data.len()).map_err(|_| {
            io(
                "staging a block".into(),
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?;
        let (id, file, offset) = {
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
                    st.dir_changed = true;
                    let seg = Segment {
                        file: Arc::new(file),
                        live: 0,
                        size: 0,
                        open: true,
                        unsynced: false,
                    };
                    st.all.insert(id, seg);
                    id
                }
            };
            let seg = st.all.get_mut(&id).expect("open segment");
            seg.live += 1;
            (id, seg.file.clone(), seg.size)
        };
        // this thread is the segment's only writer until it goes back to `idle`
        let written = file
            .write_all_at(&header(key, len), offset)
            .and_then(|()| file.write_all_at(data, offset + HEADER as u64));
        if written.is_ok() {
            start_writeback(&file, offset, HEADER as u64 + data.len() as u64);
        }
        let mut st = self.lock();
        let seg = st.all.get_mut(&id).expect("segment being written");
        if written.is_ok() {
            seg.size = offset + HEADER as u64 + data.len() as u64;
            seg.unsynced = true;
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
        })
    }

    /// The bytes at `loc` (unverified), or None once its segment was deleted.
    pub fn read(&self, loc: Loc) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(file) = self.lock().all.get(&loc.segment).map(|s| s.file.clone()) else {
            return Ok(None);
        };
        let mut data = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut data, loc.offset + HEADER as u64)
            .map_err(|e| io(format!("reading staged segment {}", loc.segment), e))?;
        Ok(Some(data))
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
        } else if let Err(e) = seg.file.write_all_at(&RELEASED, loc.offset) {
            tracing::warn!(
                "marking a staged record released in segment {}: {e}",
                loc.segment
            );
        }
    }

    /// Makes every record appended so far durable on the local disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        let (files, dir_changed) = {
            let mut st = self.lock();
            let files: Vec<(u64, Arc<File>)> = st
                .all
                .iter_mut()
                .filter(|(_, s)| s.unsynced)
                .map(|(&id, s)| {
                    s.unsynced = false;
                    (id, s.file.clone())
                })
                .collect();
            (files, std::mem::take(&mut st.dir_changed))
        };
        for (id, file) in files {
            file.sync_data()
                .map_err(|e| io(format!("syncing staged segment {id}"), e))?;
        }
        if dir_changed {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(format!("syncing {}", self.dir.display()), e))?;
        }
        Ok(())
    }
}

/// Starts writing a record to the disk without waiting, so an fsync after a long stream of
/// writes waits for the last blocks only rather than for everything staged since the last one
/// (fio's 256 MiB sequential write: its final fsync took 0.13 s of 0.42). Failure is harmless:
/// `sync` still writes whatever this did not.
fn start_writeback(file: &File, offset: u64, len: u64) {
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

/// The whole records of a segment, in order: (key, offset, length). The scan stops at the
/// first record that is short, lacks the magic, or whose bytes do not match its key.
fn scan(file: &File) -> std::io::Result<Vec<(BlockKey, u64, u32)>> {
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
        if h[..MAGIC.len()] == RELEASED {
            r.seek_relative(len as i64)?;
            offset += HEADER as u64 + len as u64;
            continue;
        }
        if h[..MAGIC.len()] != MAGIC {
            return Ok(out);
        }
        let Some(key) = BlockKey::from_bytes(&h[MAGIC.len()..MAGIC.len() + KEY_BYTES]) else {
            return Ok(out);
        };
        data.resize(len as usize, 0);
        if r.read_exact(&mut data).is_err() || !key.matches(&data) {
            return Ok(out);
        }
        out.push((key, offset, len));
        offset += HEADER as u64 + len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::HashAlgo;

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
        let (s, found) = Staging::open(tmp.path()).unwrap();
        assert!(found.is_empty());
        let la = s.append(&a.0, &a.1).unwrap();
        let lb = s.append(&b.0, &b.1).unwrap();
        assert_eq!(
            la.segment, lb.segment,
            "one writer at a time reuses the open segment"
        );
        assert_eq!(s.read(lb).unwrap().unwrap(), b.1);
        s.sync().unwrap();
        drop(s);

        let (s, found) = Staging::open(tmp.path()).unwrap();
        assert_eq!(found, vec![(a.0, la), (b.0, lb)]);
        assert_eq!(s.read(la).unwrap().unwrap(), a.1);
        s.release(la);
        assert_eq!(segment_files(tmp.path()), 1, "a record is still needed");
        s.release(lb);
        assert_eq!(
            segment_files(tmp.path()),
            0,
            "the reopened segment went with its last record"
        );
        assert_eq!(s.read(lb).unwrap(), None);
    }

    #[test]
    fn released_records_of_an_open_segment_do_not_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (block(1, 100), block(2, 200), block(3, 300));
        let (s, _) = Staging::open(tmp.path()).unwrap();
        let la = s.append(&a.0, &a.1).unwrap();
        let lb = s.append(&b.0, &b.1).unwrap();
        s.release(la);
        assert_eq!(segment_files(tmp.path()), 1);
        drop(s);
        let (s, found) = Staging::open(tmp.path()).unwrap();
        assert_eq!(found, vec![(b.0, lb)], "the released record stays released");
        drop(s);
        // an idle open segment goes with its last record
        let (s, found) = Staging::open(tmp.path()).unwrap();
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
        assert!(Staging::open(tmp.path()).unwrap().1.is_empty());
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_segment_at_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b, c) = (block(1, 500), block(2, 500), block(3, 500));
        let (s, _) = Staging::open(tmp.path()).unwrap();
        let la = s.append(&a.0, &a.1).unwrap();
        let lb = s.append(&b.0, &b.1).unwrap();
        s.append(&c.0, &c.1).unwrap();
        drop(s);
        let path = tmp
            .path()
            .join("segments")
            .join(format!("{:020}.seg", la.segment));
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // the last record cut short, as by a crash mid-write
        f.set_len(f.metadata().unwrap().len() - 10).unwrap();
        let (_, found) = Staging::open(tmp.path()).unwrap();
        assert_eq!(found, vec![(a.0, la), (b.0, lb)]);
        // a flipped byte in the second record's data
        f.write_all_at(b"x", lb.offset + HEADER as u64 + 7).unwrap();
        let (_, found) = Staging::open(tmp.path()).unwrap();
        assert_eq!(
            found,
            vec![(a.0, la)],
            "never a record whose bytes do not match"
        );
    }

    #[test]
    fn concurrent_appends_all_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, _) = Staging::open(tmp.path()).unwrap();
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
        for (_, loc, data) in &all {
            assert_eq!(s.read(*loc).unwrap().as_ref(), Some(data));
        }
        drop(s);
        let (_, found) = Staging::open(tmp.path()).unwrap();
        assert_eq!(found.len(), all.len());
    }

    #[test]
    fn blocks_left_as_one_file_each_move_into_a_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (block(1, 100), block(2, 100));
        std::fs::write(block_files::path(tmp.path(), &a.0), &a.1).unwrap();
        std::fs::write(block_files::path(tmp.path(), &b.0), b"damaged").unwrap();
        std::fs::create_dir_all(tmp.path().join("spare")).unwrap();
        let (s, found) = Staging::open(tmp.path()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, a.0);
        assert_eq!(s.read(found[0].1).unwrap().unwrap(), a.1);
        assert!(!block_files::path(tmp.path(), &a.0).exists());
        assert!(!tmp.path().join("spare").exists());
    }
}
