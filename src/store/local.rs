//! Local-directory block store: one file per block under
//! `<root>/<algo>/<hex[0..2]>/<hex>-<size>`, written to a temp file and renamed into place.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{BlockStore, PutOutcome, StoreError};
use crate::core::{BlockKey, HashAlgo};

const BACKEND: &str = "local";
/// Blocks this large start their way to the disk as soon as they are written (a stream's
/// blocks, not the packed small ones a short-lived file may leave), so `sync` after a long
/// write waits for the last blocks only.
const EARLY_WRITEBACK_FROM: usize = 512 << 10;
/// Past this many files and folders to make durable, one syncfs is cheaper than an fsync each.
const SYNCFS_ABOVE: usize = 32;

pub struct LocalBlockStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Files and folders written since the last `sync`, to be fsync'd by it.
    unsynced: Mutex<BTreeSet<PathBuf>>,
    tmp_seq: AtomicU64,
}

fn io(context: impl Into<String>, e: std::io::Error) -> StoreError {
    StoreError::io(BACKEND, context, e)
}

impl LocalBlockStore {
    /// Opens (creating if needed) a store rooted at `root`. Leftover temp files from a crash are removed.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref().to_path_buf();
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| io(format!("creating {}", tmp.display()), e))?;
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(LocalBlockStore {
            root,
            tmp,
            unsynced: Mutex::new(BTreeSet::new()),
            tmp_seq: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the block's file lives (tests use it to damage blocks on purpose).
    pub fn path_of(&self, key: &BlockKey) -> PathBuf {
        let hex = key.hex();
        self.root
            .join(key.algo.name())
            .join(&hex[..2])
            .join(format!("{hex}-{}", key.size))
    }

    fn key_of(algo: HashAlgo, file_name: &str) -> Option<BlockKey> {
        let (hex, size) = file_name.split_once('-')?;
        format!("{algo}:{hex}:{size}").parse().ok()
    }
}

impl BlockStore for LocalBlockStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let path = self.path_of(key);
        if let Ok(meta) = fs::metadata(&path)
            && meta.len() == key.size as u64
        {
            return Ok(PutOutcome::Duplicate);
        }
        let dir = path.parent().expect("block path has a parent");
        let tmp = self.tmp.join(format!(
            "{}-{}-{}",
            key.hex(),
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            if data.len() >= EARLY_WRITEBACK_FROM {
                super::staging::start_writeback(&f, 0, data.len() as u64);
            }
            match fs::rename(&tmp, &path) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    fs::create_dir_all(dir)?;
                    fs::rename(&tmp, &path)
                }
                other => other,
            }
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io(format!("writing block {key}"), e));
        }
        let mut unsynced = self.unsynced.lock().expect("lock");
        unsynced.insert(path.clone());
        unsynced.insert(dir.to_path_buf());
        Ok(PutOutcome::Fresh)
    }

    fn get_unverified(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        match fs::read(self.path_of(key)) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NotFound(*key, BACKEND)),
            Err(e) => Err(io(format!("reading block {key}"), e)),
        }
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        match fs::metadata(self.path_of(key)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(format!("checking block {key}"), e)),
        }
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        match fs::remove_file(self.path_of(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("deleting block {key}"), e)),
        }
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let mut out = Vec::new();
        for algo in [HashAlgo::Blake3, HashAlgo::Sha256] {
            let dir = self.root.join(algo.name());
            let prefixes = match fs::read_dir(&dir) {
                Ok(p) => p,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("listing {}", dir.display()), e)),
            };
            for prefix in prefixes {
                let prefix = prefix.map_err(|e| io("listing blocks", e))?;
                for entry in fs::read_dir(prefix.path()).map_err(|e| io("listing blocks", e))? {
                    let entry = entry.map_err(|e| io("listing blocks", e))?;
                    if let Some(key) = entry
                        .file_name()
                        .to_str()
                        .and_then(|n| Self::key_of(algo, n))
                    {
                        out.push(key);
                    }
                }
            }
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.unsynced.lock().expect("lock"));
        if pending.len() > SYNCFS_ABOVE {
            // One syncfs commits the journal once; hundreds of fsyncs would commit it each time.
            let root = File::open(&self.root).map_err(|e| io("opening the store root", e))?;
            // SAFETY: syncfs on a descriptor we own.
            if unsafe { libc::syncfs(root.as_raw_fd()) } != 0 {
                return Err(io("syncfs of the store", std::io::Error::last_os_error()));
            }
            return Ok(());
        }
        // Files sort before the folders that hold them only by accident; sync files first, then folders.
        let (dirs, files): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| p.is_dir());
        for p in files.iter().chain(dirs.iter()) {
            match File::open(p).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {} // deleted since: nothing to make durable
                Err(e) => return Err(io(format!("syncing {}", p.display()), e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlockStore::open(dir.path()).unwrap();
        super::super::conformance::run_all(&store);
    }

    #[test]
    fn corrupt_file_is_an_error_not_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlockStore::open(dir.path()).unwrap();
        super::super::conformance::corruption_is_detected(&store, &|key| {
            let p = store.path_of(key);
            let mut data = fs::read(&p).unwrap();
            data[0] ^= 0xff;
            fs::write(&p, data).unwrap();
        });
    }

    #[test]
    fn reopen_keeps_blocks_and_clears_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let store = LocalBlockStore::open(dir.path()).unwrap();
            let key = BlockKey::for_data(HashAlgo::Blake3, b"persist me");
            store.put(&key, b"persist me").unwrap();
            store.sync().unwrap();
            fs::write(dir.path().join("tmp").join("leftover"), b"x").unwrap();
            key
        };
        let store = LocalBlockStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&key).unwrap(), b"persist me");
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
