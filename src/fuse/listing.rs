//! Open directory handles. Each keeps the chunk of entries it read last, so a listing costs one
//! metadata read per `CHUNK` entries rather than one or more per readdir reply, and the reply
//! that finds the end costs none. A listing of 2000 names takes three replies and a final empty
//! one; each used to read the metadata again.
//!
//! POSIX leaves unspecified whether entries added or removed after `opendir` or `rewinddir`
//! show up; a reply at offset 0 (a new listing or `rewinddir`) always reads afresh, and
//! readdirplus skips an entry whose inode is gone by the time it is answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::vfs::{DirListing, Fs, FsError};

/// Entries read at once: a 32 KiB `getdents` buffer holds about 1000 short names.
const CHUNK: usize = 4096;

/// The entries a handle read last: those with cookies after `after`, in cookie order; all of
/// them when `complete`.
#[derive(Default)]
struct Chunk {
    after: u64,
    entries: Vec<DirListing>,
    complete: bool,
}

impl Chunk {
    fn read(fs: &Fs, dir: u64, after: u64) -> Result<Chunk, FsError> {
        let entries = fs.readdir(dir, after, CHUNK)?;
        Ok(Chunk {
            after,
            complete: entries.len() < CHUNK,
            entries,
        })
    }

    /// Whether the chunk answers a reply at `offset` without reading again.
    fn covers(&self, offset: u64) -> bool {
        let last = self.entries.last().map_or(self.after, |e| e.cookie);
        offset != 0 && offset >= self.after && (offset < last || self.complete)
    }

    fn after(&self, offset: u64) -> &[DirListing] {
        let start = self.entries.partition_point(|e| e.cookie <= offset);
        &self.entries[start..]
    }
}

/// The open directory handles of a mount.
#[derive(Default)]
pub(super) struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Mutex<Chunk>>>>,
}

impl DirHandles {
    pub(super) fn open(&self) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let chunk = Arc::new(Mutex::new(Chunk::default()));
        self.open.lock().unwrap().insert(fh, chunk);
        fh
    }

    pub(super) fn release(&self, fh: u64) {
        self.open.lock().unwrap().remove(&fh);
    }

    /// Hands `add` the entries of `dir` after `offset` until it reports the reply full.
    pub(super) fn fill(
        &self,
        fs: &Fs,
        fh: u64,
        dir: u64,
        mut offset: u64,
        mut add: impl FnMut(&DirListing) -> Result<bool, FsError>,
    ) -> Result<(), FsError> {
        let handle = self.open.lock().unwrap().get(&fh).cloned();
        // a handle this mount did not open (none should reach here) reads for itself
        let handle = handle.unwrap_or_default();
        let mut chunk = handle.lock().unwrap();
        loop {
            if !chunk.covers(offset) {
                *chunk = Chunk::read(fs, dir, offset)?;
            }
            for e in chunk.after(offset) {
                if add(e)? {
                    return Ok(());
                }
                offset = e.cookie;
            }
            if chunk.complete {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::FileKind;

    fn chunk(after: u64, cookies: &[u64], complete: bool) -> Chunk {
        let entries = cookies
            .iter()
            .map(|&cookie| DirListing {
                cookie,
                ino: cookie,
                kind: FileKind::File,
                name: cookie.to_string().into_bytes(),
            })
            .collect();
        Chunk {
            after,
            entries,
            complete,
        }
    }

    #[test]
    fn a_chunk_answers_offsets_inside_it_and_reads_again_past_it_or_at_zero() {
        let partial = chunk(2, &[5, 9, 14], false);
        assert!(partial.covers(2) && partial.covers(5) && partial.covers(10));
        assert!(
            !partial.covers(14),
            "past the chunk's last entry: more may follow"
        );
        assert!(!partial.covers(1), "before the chunk");
        let cookies = |entries: &[DirListing]| entries.iter().map(|e| e.cookie).collect::<Vec<_>>();
        assert_eq!(cookies(partial.after(9)), [14]);
        assert_eq!(cookies(partial.after(6)), [9, 14]);

        let whole = chunk(0, &[1, 2, 7], true);
        assert!(
            whole.covers(7) && whole.covers(100),
            "the end of a complete listing"
        );
        assert!(!whole.covers(0), "offset 0 is a new listing or rewinddir");
        assert!(whole.after(7).is_empty());
    }
}
