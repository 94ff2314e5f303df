//! The write-behind journal: committed metadata transactions not yet sent to the shared engine,
//! appended to files in the volume's state folder (see `write_behind`).
//!
//! A record is `[length u32][checksum u32][postcard bytes]`, the checksum being the first four
//! bytes of the payload's BLAKE3 hash. Records go to the kernel at each commit (a killed daemon
//! loses none) and to the disk at `sync` (fsync). Reading stops at the first torn or corrupt
//! record, in whichever segment: only a record written after the last `sync` can be torn by a
//! power loss, and what follows a damaged record is never replayed (later segments are set
//! aside), since applying it without the lost records would apply changes out of order.
//!
//! Files are segments named by the sequence number of their first record; the folder is
//! synced when one is created, so its name is as durable as its records. A segment whose
//! records are all applied is deleted. Replaying a suffix of records that were already applied
//! is harmless: every operation is a blind write (a record's final value does not depend on
//! the state it is applied to), so applying records k..n over the state after record m ≥ k
//! gives the state after n.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DirEntry, FileKind, Ino, Inode, MetaError, MetaResult, MetaTxn};
use crate::domain::extent::Splice;
use crate::domain::{BlockKey, Extent};

/// A new segment is started once the current one is this big.
const SEGMENT_BYTES: u64 = 16 << 20;
const HEADER: usize = 8;

/// One write of a transaction, as [`MetaTxn`] names them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    PutInode(Inode),
    DeleteInode(Ino),
    PutDirent {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
        kind: u8,
        cookie: u64,
    },
    DeleteDirent {
        parent: Ino,
        name: Vec<u8>,
    },
    Splice {
        ino: Ino,
        remove: Vec<JournalExtent>,
        insert: Vec<JournalExtent>,
    },
    PutXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    DeleteXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    PutSymlink {
        ino: Ino,
        target: Vec<u8>,
    },
    AddOrphan(Ino),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalExtent {
    offset: u64,
    key: Vec<u8>,
    block_offset: u32,
    len: u32,
}

impl From<&Extent> for JournalExtent {
    fn from(e: &Extent) -> Self {
        JournalExtent {
            offset: e.offset,
            key: e.key.to_bytes().to_vec(),
            block_offset: e.block_offset,
            len: e.len,
        }
    }
}

impl JournalExtent {
    fn extent(&self) -> MetaResult<Extent> {
        Ok(Extent {
            offset: self.offset,
            key: BlockKey::from_bytes(&self.key).ok_or_else(|| corrupt("block key"))?,
            block_offset: self.block_offset,
            len: self.len,
        })
    }
}

fn corrupt(what: &str) -> MetaError {
    MetaError::Corrupt(format!("write-behind journal: {what}"))
}

fn io_err(what: &str, e: std::io::Error) -> MetaError {
    MetaError::backend("write-behind journal", format!("{what}: {e}"))
}

impl Op {
    pub fn dirent(parent: Ino, name: &[u8], e: &DirEntry) -> Op {
        Op::PutDirent {
            parent,
            name: name.to_vec(),
            ino: e.ino,
            kind: e.kind.tag(),
            cookie: e.cookie,
        }
    }

    pub fn splice(ino: Ino, s: &Splice) -> Op {
        Op::Splice {
            ino,
            remove: s.remove.iter().map(Into::into).collect(),
            insert: s.insert.iter().map(Into::into).collect(),
        }
    }

    /// The splice's extents, decoded.
    pub fn decode_splice(remove: &[JournalExtent], insert: &[JournalExtent]) -> MetaResult<Splice> {
        let decode = |es: &[JournalExtent]| -> MetaResult<Vec<Extent>> {
            es.iter().map(JournalExtent::extent).collect()
        };
        Ok(Splice {
            remove: decode(remove)?,
            insert: decode(insert)?,
        })
    }

    pub fn decode_dirent(ino: Ino, kind: u8, cookie: u64) -> MetaResult<DirEntry> {
        Ok(DirEntry::new(
            ino,
            FileKind::from_tag(kind).ok_or_else(|| corrupt("entry kind"))?,
            cookie,
        ))
    }

    /// Performs the write in `tx`.
    pub fn apply(&self, tx: &mut dyn MetaTxn) -> MetaResult<()> {
        match self {
            Op::PutInode(n) => tx.put_inode(n),
            Op::DeleteInode(ino) => tx.delete_inode(*ino),
            Op::PutDirent {
                parent,
                name,
                ino,
                kind,
                cookie,
            } => tx.put_dirent(*parent, name, &Op::decode_dirent(*ino, *kind, *cookie)?),
            Op::DeleteDirent { parent, name } => tx.delete_dirent(*parent, name),
            Op::Splice {
                ino,
                remove,
                insert,
            } => tx.apply_splice(*ino, &Op::decode_splice(remove, insert)?),
            Op::PutXattr { ino, name, value } => tx.put_xattr(*ino, name, value),
            Op::DeleteXattr { ino, name } => tx.delete_xattr(*ino, name),
            Op::PutSymlink { ino, target } => tx.put_symlink_target(*ino, target),
            Op::AddOrphan(ino) => tx.add_orphan(*ino),
        }
    }
}

/// One committed transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ops: Vec<Op>,
}

impl AsRef<Record> for Record {
    fn as_ref(&self) -> &Record {
        self
    }
}

/// The journal's folder and the segment being appended to.
pub struct Journal {
    dir: PathBuf,
    /// (first sequence number, last sequence number) of each segment, oldest first; the last
    /// one is `current`.
    segments: Vec<(u64, u64)>,
    current: Option<File>,
    current_bytes: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.journal")
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let h = blake3::hash(payload);
    h.as_bytes()[..4].try_into().expect("four bytes")
}

/// Decodes the whole records at the start of `bytes` into `out`; returns how many bytes they
/// take. Decoding stops at the first torn or corrupt record.
fn read_records(bytes: &[u8], out: &mut Vec<Record>) -> usize {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4")) as usize;
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if header[4..] != checksum(payload) {
            break;
        }
        let Ok(record) = postcard::from_bytes::<Record>(payload) else {
            break;
        };
        out.push(record);
        at += HEADER + len;
    }
    at
}

/// Ends a replay at a torn or corrupt record in `path`, `left` bytes before its end. The
/// segments after it (`later`) hold transactions that followed the lost ones: replaying them
/// would apply changes out of order, so they are set aside (renamed `*.journal.dropped`, which
/// nothing reads) and named in an error. A torn tail of the last segment is what a crash
/// leaves before a `sync`, and only a warning.
fn stop_at_damage(dir: &Path, path: &Path, left: usize, later: &[(u64, PathBuf)]) {
    if later.is_empty() {
        tracing::warn!(
            "write-behind journal {}: {left} bytes after the last whole record ignored (torn by a crash)",
            path.display()
        );
        return;
    }
    let mut dropped = Vec::new();
    for (_, p) in later {
        let mut aside = p.clone().into_os_string();
        aside.push(".dropped");
        let aside = PathBuf::from(aside);
        match std::fs::rename(p, &aside) {
            Ok(()) => dropped.push(aside.display().to_string()),
            // still not replayed: the journal is cleared once the records before are applied
            Err(e) => dropped.push(format!("{} (not set aside: {e})", p.display())),
        }
    }
    let _ = sync_folder(dir);
    tracing::error!(
        "write-behind journal {}: a corrupt record {left} bytes before its end; the transactions from there on are lost, and the {} later segments are not replayed (they would apply changes out of order): {}",
        path.display(),
        later.len(),
        dropped.join(", ")
    );
}

/// Makes the names of the files in the journal's folder durable.
fn sync_folder(dir: &Path) -> MetaResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(&format!("syncing {}", dir.display()), e))
}

impl Journal {
    /// Opens the journal in `dir` (creating it) and returns the records it holds, in order.
    pub fn open(dir: &Path) -> MetaResult<(Journal, Vec<Record>)> {
        crate::private::dir(dir).map_err(|e| io_err(&dir.display().to_string(), e))?;
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| io_err(&dir.display().to_string(), e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let first = name.strip_suffix(".journal")?.parse().ok()?;
                Some((first, e.path()))
            })
            .collect();
        names.sort();
        let mut records = Vec::new();
        for (i, (_, path)) in names.iter().enumerate() {
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io_err(&path.display().to_string(), e))?;
            let whole = read_records(&bytes, &mut records);
            if whole < bytes.len() {
                stop_at_damage(dir, path, bytes.len() - whole, &names[i + 1..]);
                break;
            }
        }
        let journal = Journal {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            current: None,
            current_bytes: 0,
        };
        // the old segments are deleted once their records are applied (see `reset`)
        Ok((journal, records))
    }

    /// Appends a record; it reaches the kernel before this returns.
    pub fn append(&mut self, record: &Record) -> MetaResult<()> {
        let payload =
            postcard::to_stdvec(record).map_err(|e| corrupt(&format!("encoding: {e}")))?;
        if self.current.is_none() || self.current_bytes >= SEGMENT_BYTES {
            let path = self.dir.join(segment_name(record.seq));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path.display().to_string(), e))?;
            // the new segment's name is durable before any record in it can be (a power
            // loss cannot take the file away while its records count as synced). Not covered
            // by a test: only a power loss tells a synced folder from one in the page cache.
            sync_folder(&self.dir)?;
            if let Some(old) = self.current.replace(f) {
                // records in a finished segment are made durable before a new one starts
                old.sync_data().map_err(|e| io_err("journal sync", e))?;
            }
            self.segments.push((record.seq, record.seq));
            self.current_bytes = 0;
        }
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&checksum(&payload));
        buf.extend_from_slice(&payload);
        let f = self.current.as_mut().expect("a segment is open");
        f.write_all(&buf)
            .map_err(|e| io_err("appending to the journal", e))?;
        self.current_bytes += buf.len() as u64;
        if let Some(last) = self.segments.last_mut() {
            last.1 = record.seq;
        }
        Ok(())
    }

    /// Makes every appended record durable.
    pub fn sync(&self) -> MetaResult<()> {
        match &self.current {
            Some(f) => f.sync_data().map_err(|e| io_err("journal sync", e)),
            None => Ok(()),
        }
    }

    /// Deletes segments whose records are all applied (up to `applied`); with `everything`
    /// (nothing is pending) the current segment goes too.
    pub fn forget_applied(&mut self, applied: u64, everything: bool) {
        let keep_current = !everything;
        let n = self.segments.len();
        let mut kept = Vec::new();
        for (i, &(first, last)) in self.segments.iter().enumerate() {
            let is_current = i + 1 == n;
            if last <= applied && (!is_current || !keep_current) {
                let _ = std::fs::remove_file(self.dir.join(segment_name(first)));
                if is_current {
                    self.current = None;
                    self.current_bytes = 0;
                }
            } else {
                kept.push((first, last));
            }
        }
        self.segments = kept;
    }

    /// Deletes every segment, including those left by an earlier run (all applied).
    pub fn clear(&mut self) -> MetaResult<()> {
        self.current = None;
        self.current_bytes = 0;
        self.segments.clear();
        for e in std::fs::read_dir(&self.dir)
            .map_err(|e| io_err(&self.dir.display().to_string(), e))?
            .flatten()
        {
            if e.file_name().to_string_lossy().ends_with(".journal") {
                std::fs::remove_file(e.path()).map_err(|e| io_err("clearing the journal", e))?;
            }
        }
        Ok(())
    }

    /// Whether no record is on disk.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Record {
        Record {
            seq,
            ops: vec![
                Op::AddOrphan(seq),
                Op::DeleteDirent {
                    parent: 1,
                    name: format!("n{seq}").into_bytes(),
                },
            ],
        }
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, old) = Journal::open(dir.path()).unwrap();
        assert!(old.is_empty());
        for s in 1..=3 {
            j.append(&record(s)).unwrap();
        }
        drop(j);
        // a torn last record: half of a header and payload
        let seg = dir.path().join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2]).unwrap();
        let (_, got) = Journal::open(dir.path()).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_corrupt_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        for s in 1..=3 {
            j.append(&record(s)).unwrap();
        }
        drop(j);
        let seg = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let (_, got) = Journal::open(dir.path()).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    }

    /// A journal whose records `1..=n` are in segments of the given sizes (each run of the
    /// daemon starts a segment at its first append).
    fn segments(dir: &Path, sizes: &[u64]) {
        let mut seq = 0;
        for &size in sizes {
            let (mut j, _) = Journal::open(dir).unwrap();
            for _ in 0..size {
                seq += 1;
                j.append(&record(seq)).unwrap();
            }
        }
    }

    #[test]
    fn a_corrupt_record_in_a_middle_segment_ends_the_replay_there() {
        let dir = tempfile::tempdir().unwrap();
        segments(dir.path(), &[3, 3, 2]);
        let (_, got) = Journal::open(dir.path()).unwrap();
        assert_eq!(got.len(), 8, "three segments, eight records");
        // the second record of the middle segment (5) is damaged
        let seg = dir.path().join(segment_name(4));
        let mut bytes = std::fs::read(&seg).unwrap();
        let first = HEADER + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        bytes[first + HEADER + 1] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let (_, got) = Journal::open(dir.path()).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // the last segment is set aside, not read again
        assert!(!dir.path().join(segment_name(7)).exists());
        let aside = dir.path().join(format!("{}.dropped", segment_name(7)));
        assert!(aside.exists());
        let (_, again) = Journal::open(dir.path()).unwrap();
        assert_eq!(
            again.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn applied_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&record(1)).unwrap();
        j.forget_applied(1, false);
        assert!(
            !j.is_empty(),
            "the current segment stays while records may follow"
        );
        j.forget_applied(1, true);
        assert!(j.is_empty());
        j.append(&record(2)).unwrap();
        let (_, got) = Journal::open(dir.path()).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), [2]);
    }
}
