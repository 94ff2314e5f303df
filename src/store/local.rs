//! Local-directory block store: one file per block under
//! `<root>/<algo>/<hex[0..2]>/<hex>-<size>`, written to a temp file and renamed into place.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::pending_sync::{PendingSync, ToSync};
use super::{BlockStore, PutOutcome, StoreError, Unchecked};
use crate::domain::{BlockKey, HashAlgo};

const BACKEND: &str = "local";
/// Blocks this large start their way to the disk as soon as they are written (a stream's
/// blocks, not the packed small ones a short-lived file may leave), so `sync` after a long
/// write waits for the last blocks only.
const EARLY_WRITEBACK_FROM: usize = 512 << 10;
/// Past this many files and folders to make durable, one syncfs is cheaper than an fsync each.
const SYNCFS_ABOVE: usize = 32;
/// Blocks up to this size are stored without asking the block index first (`cheap_put`):
/// reading and checking a copy already on the local disk costs less than the question, a
/// round trip to the database on a PostgreSQL volume.
const CHEAP_PUT_UP_TO: u32 = 64 << 10;
/// Another process's temp folder is removed only once nobody holds its lock and it is at least
/// this old (a process creates its folder, then locks it, a moment later).
const STALE_TMP_AFTER: Duration = Duration::from_secs(60);
/// Temp files left directly in `tmp/` by earlier versions, which had no folder per process,
/// are removed once this old: no block takes that long to write.
const STALE_LEGACY_TMP_AFTER: Duration = Duration::from_secs(3600);

/// How the store makes files durable: the disk itself, or (in tests) a layer that delays or
/// fails syncs to show what callers see then.
pub trait Disk: Send + Sync {
    fn fsync(&self, path: &Path) -> std::io::Result<()>;
    /// Every file on the file system that holds `root`.
    fn syncfs(&self, root: &Path) -> std::io::Result<()>;
}

/// The real disk.
pub struct RealDisk {
    /// The store's root, opened once: syncfs reports a write error to each descriptor opened
    /// before it, even when another process's syncfs saw it first, but not to one opened
    /// after that (Linux 5.8 on); one opened afresh for every sync could miss it.
    root: Option<File>,
}

impl RealDisk {
    pub fn new(root: Option<File>) -> RealDisk {
        RealDisk { root }
    }
}

impl Disk for RealDisk {
    fn fsync(&self, path: &Path) -> std::io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn syncfs(&self, root: &Path) -> std::io::Result<()> {
        let opened;
        let fd = match &self.root {
            Some(f) => f.as_raw_fd(),
            None => {
                opened = File::open(root)?;
                opened.as_raw_fd()
            }
        };
        // a descriptor we own, open for the whole call
        Ok(nix::unistd::syncfs(fd)?)
    }
}

/// What a `sync` makes durable: a block's file, or a folder whose entries changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Unsynced {
    Block(BlockKey),
    Folder(PathBuf),
}

/// This process's temp folder under `<root>/tmp`, locked (flock) for as long as the store is
/// open, so other processes sharing the store (other hosts' mounts of a PostgreSQL volume,
/// `graviton scrub`) know it is in use.
struct OwnTmp {
    path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl Drop for OwnTmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

pub struct LocalBlockStore {
    root: PathBuf,
    tmp: PathBuf,
    own_tmp: OnceLock<OwnTmp>,
    pending: PendingSync<Unsynced>,
    disk: Arc<dyn Disk>,
    tmp_seq: AtomicU64,
    /// Whether a file's bytes are a good copy of the block its name gives.
    stored_check: StoredCheck,
}

/// Whether bytes found stored are a good copy of a block: by default, the block itself.
pub type StoredCheck = Arc<dyn Fn(&BlockKey, &[u8]) -> bool + Send + Sync>;

fn io(context: impl Into<String>, e: std::io::Error) -> StoreError {
    StoreError::io(BACKEND, context, e)
}

impl LocalBlockStore {
    /// Opens (creating if needed) a store rooted at `root`. Temp folders that crashed
    /// processes left are removed; those of processes still writing are left alone.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref();
        crate::private::dir(root).map_err(|e| io(format!("creating {}", root.display()), e))?;
        let fd = File::open(root).map_err(|e| io(format!("opening {}", root.display()), e))?;
        Self::open_on(root, Arc::new(RealDisk::new(Some(fd))))
    }

    /// As `open`, making files durable through `disk`.
    pub fn open_on(root: impl AsRef<Path>, disk: Arc<dyn Disk>) -> Result<Self, StoreError> {
        let root = root.as_ref().to_path_buf();
        let tmp = root.join("tmp");
        crate::private::dir(&root)
            .and_then(|()| crate::private::dir(&tmp))
            .map_err(|e| io(format!("creating {}", tmp.display()), e))?;
        remove_stale_tmp(&tmp);
        Ok(LocalBlockStore {
            root,
            tmp,
            own_tmp: OnceLock::new(),
            pending: PendingSync::default(),
            disk,
            tmp_seq: AtomicU64::new(0),
            stored_check: Arc::new(|key, bytes| key.matches(bytes)),
        })
    }

    /// The store, checking a copy it finds stored (before writing the block again, or to
    /// write it afresh after a failed sync) with `check`: a layer above that stores blocks in
    /// another form (`store::framed`) knows what a good copy is.
    pub fn with_stored_check(mut self, check: StoredCheck) -> Self {
        self.stored_check = check;
        self
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
            .join(format!("{hex}-{}", key.name_len()))
    }

    /// Each block file, with its key.
    fn each_file(&self, mut each: impl FnMut(BlockKey, &fs::DirEntry)) -> Result<(), StoreError> {
        for algo in HashAlgo::ALL {
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
                        each(key, &entry);
                    }
                }
            }
        }
        Ok(())
    }

    fn key_of(algo: HashAlgo, file_name: &str) -> Option<BlockKey> {
        let (hex, len) = file_name.split_once('-')?;
        BlockKey::from_name(algo, hex, len)
    }

    /// This process's temp folder, created and locked on first use.
    fn own_tmp(&self) -> std::io::Result<&Path> {
        if let Some(t) = self.own_tmp.get() {
            return Ok(&t.path);
        }
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().replace(['/', '.'], "_"))
            .unwrap_or_default();
        let path = self.tmp.join(format!(
            "{host}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir(&path)?;
        let lock = nix::fcntl::Flock::lock(
            File::open(&path)?,
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .map_err(|(_, e)| std::io::Error::from(e))?;
        // a thread that lost the race removes its folder as its `OwnTmp` drops
        let _ = self.own_tmp.set(OwnTmp { path, _lock: lock });
        Ok(&self.own_tmp.get().expect("just set").path)
    }

    /// Writes `data` to the block's file afresh: a temp file, renamed into place.
    fn write_block(&self, key: &BlockKey, data: &[u8], path: &Path) -> std::io::Result<()> {
        let dir = path.parent().expect("block path has a parent");
        let tmp = self.own_tmp()?.join(format!(
            "{}-{}",
            key.hex(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            if data.len() >= EARLY_WRITEBACK_FROM {
                super::staging::start_writeback(&f, 0, data.len() as u64);
            }
            match fs::rename(&tmp, path) {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    fs::create_dir_all(dir)?;
                    fs::rename(&tmp, path)
                }
                other => other,
            }
        };
        let written = write();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// A copy of the block already on disk whose bytes match its key. A process killed while
    /// writing (or a power cut) can leave a file of the right size whose bytes never reached
    /// the disk.
    fn good_copy_on_disk(&self, key: &BlockKey, path: &Path) -> bool {
        fs::read(path).is_ok_and(|bytes| (self.stored_check)(key, &bytes))
    }

    /// Makes `items` durable; returns those it could not, with the error.
    fn sync_items(&self, items: &[ToSync<Unsynced>]) -> Vec<(Unsynced, std::io::Error)> {
        let mut failed = Vec::new();
        let (repairs, plain): (Vec<_>, Vec<_>) = items.iter().partition(|t| t.failed_before);
        if plain.len() > SYNCFS_ABOVE {
            // One syncfs commits the journal once; hundreds of fsyncs would commit it each time.
            if let Err(e) = self.disk.syncfs(&self.root) {
                let failure = super::pending_sync::Failure::from(&e);
                for t in &plain {
                    failed.push((t.item.clone(), failure.to_io_error()));
                }
            }
        } else {
            // files before the folders that name them
            let files = plain
                .iter()
                .filter(|t| matches!(t.item, Unsynced::Block(_)));
            let folders = plain
                .iter()
                .filter(|t| matches!(t.item, Unsynced::Folder(_)));
            for t in files.chain(folders) {
                let path = match &t.item {
                    Unsynced::Block(key) => self.path_of(key),
                    Unsynced::Folder(p) => p.clone(),
                };
                match self.disk.fsync(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {} // deleted since
                    Err(e) => failed.push((t.item.clone(), e)),
                }
            }
        }
        for t in repairs {
            if let Err(e) = self.repair(&t.item) {
                failed.push((t.item.clone(), e));
            }
        }
        failed
    }

    /// After a failed sync the file's bytes may be lost even though a read still returns them
    /// from memory, and syncing it again would succeed without writing them: a copy whose
    /// bytes still match the key is written afresh (a new file) and synced with its folder.
    fn repair(&self, item: &Unsynced) -> std::io::Result<()> {
        let key = match item {
            Unsynced::Block(key) => key,
            Unsynced::Folder(p) => return self.disk.fsync(p),
        };
        let path = self.path_of(key);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()), // deleted since
            Err(e) => return Err(e),
        };
        if !(self.stored_check)(key, &data) {
            return Err(std::io::Error::other(format!(
                "block {key} was lost when its sync failed"
            )));
        }
        self.write_block(key, &data, &path)?;
        self.disk.fsync(&path)?;
        self.disk
            .fsync(path.parent().expect("block path has a parent"))
    }
}

/// Removes the temp folders of processes that are gone (their lock is free) and old temp
/// files of earlier versions.
fn remove_stale_tmp(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    let old = |entry: &fs::DirEntry, age: Duration| {
        entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|a| a >= age))
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            if old(&entry, STALE_LEGACY_TMP_AFTER) {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        if !old(&entry, STALE_TMP_AFTER) {
            continue;
        }
        let Ok(dir) = File::open(&path) else { continue };
        if let Ok(_unused) =
            nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            tracing::info!(
                "removing {}, left by a process that is gone",
                path.display()
            );
            let _ = fs::remove_dir_all(&path);
        }
    }
}

impl BlockStore for LocalBlockStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn cheap_put(&self, key: &BlockKey) -> bool {
        key.size <= CHEAP_PUT_UP_TO
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let path = self.path_of(key);
        let item = Unsynced::Block(*key);
        // A copy whose sync failed is written again whatever it holds; another one is kept if
        // its bytes are right, and synced by the next sync like a new one.
        if !self.pending.is_failed(&item) && self.good_copy_on_disk(key, &path) {
            // the name too: whoever renamed it into place may not have synced its folder
            self.pending.written(item);
            let dir = path.parent().expect("block path has a parent");
            self.pending.written(Unsynced::Folder(dir.to_path_buf()));
            return Ok(PutOutcome::Duplicate);
        }
        self.write_block(key, data, &path)
            .map_err(|e| io(format!("writing block {key}"), e))?;
        self.pending.written(item);
        let dir = path.parent().expect("block path has a parent");
        self.pending.written(Unsynced::Folder(dir.to_path_buf()));
        Ok(PutOutcome::Fresh)
    }

    fn get_unverified(&self, key: &BlockKey, _: Unchecked) -> Result<Vec<u8>, StoreError> {
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
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("deleting block {key}"), e)),
        }
        self.pending.forget(&Unsynced::Block(*key));
        Ok(())
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let mut out = Vec::new();
        self.each_file(|key, _| out.push(key))?;
        Ok(out)
    }

    fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        let mut total = 0;
        self.each_file(|_, entry| {
            total += entry.metadata().map_or(0, |m| m.len());
        })?;
        Ok(Some(total))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.pending
            .sync(|items| self.sync_items(items))
            .map_err(|(item, failure)| {
                let what = match item {
                    Unsynced::Block(key) => format!("syncing block {key}"),
                    Unsynced::Folder(p) => format!("syncing {}", p.display()),
                };
                io(what, failure.to_io_error())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_keeps_blocks_and_clears_the_temp_folders_of_processes_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let store = LocalBlockStore::open(dir.path()).unwrap();
            let key = BlockKey::for_data(HashAlgo::Blake3, b"persist me");
            store.put(&key, b"persist me").unwrap();
            store.sync().unwrap();
            key
        };
        // a crashed process's folder: unlocked, and not new
        let left = dir.path().join("tmp").join("otherhost-123-00");
        fs::create_dir(&left).unwrap();
        fs::write(left.join("half-written"), b"x").unwrap();
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        File::open(&left)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
        // one made a moment ago may not be locked yet by its process
        let new = dir.path().join("tmp").join("otherhost-124-00");
        fs::create_dir(&new).unwrap();
        let store = LocalBlockStore::open(dir.path()).unwrap();
        assert_eq!(store.get(&key).unwrap(), b"persist me");
        assert!(!left.exists(), "a dead process's temp folder is removed");
        assert!(new.exists(), "a new folder is spared");
    }

    /// Another process opening the same store (another host's mount of a shared volume,
    /// `graviton scrub`) must not delete the temp files of blocks this one is writing.
    #[test]
    fn another_process_opening_the_store_spares_blocks_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let writer = LocalBlockStore::open(dir.path()).unwrap();
        // make the writer's folder look old: only its lock protects it
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        let key0 = BlockKey::for_data(HashAlgo::Blake3, b"first");
        writer.put(&key0, b"first").unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    for e in fs::read_dir(dir.path().join("tmp")).unwrap().flatten() {
                        let _ = File::open(e.path()).and_then(|f| f.set_modified(old));
                    }
                    drop(LocalBlockStore::open(dir.path()).unwrap());
                }
            });
            for i in 0..2000u32 {
                let data = vec![(i % 251) as u8; 4096 + i as usize];
                let key = BlockKey::for_data(HashAlgo::Blake3, &data);
                let put = writer.put(&key, &data);
                if put.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                put.unwrap();
                assert_eq!(writer.get(&key).unwrap(), data);
            }
            stop.store(true, Ordering::Relaxed);
        });
        writer.sync().unwrap();
    }

    /// A disk whose fsyncs can be held back or made to fail, path by path, and that records
    /// what each successful sync made durable.
    #[derive(Default)]
    struct TestDisk {
        /// fsyncs of paths containing this wait until it is cleared
        hold: std::sync::Mutex<Option<String>>,
        held: std::sync::Condvar,
        /// fsyncs of paths containing this fail with EIO
        fail: std::sync::Mutex<Option<String>>,
        durable: std::sync::Mutex<Vec<PathBuf>>,
        entered: std::sync::Mutex<Vec<PathBuf>>,
    }

    impl TestDisk {
        fn matches(slot: &std::sync::Mutex<Option<String>>, path: &Path) -> bool {
            let s = slot.lock().unwrap();
            s.as_ref()
                .is_some_and(|m| path.to_string_lossy().contains(m.as_str()))
        }
        fn release(&self) {
            *self.hold.lock().unwrap() = None;
            self.held.notify_all();
        }
        fn is_durable(&self, path: &Path) -> bool {
            self.durable.lock().unwrap().iter().any(|p| p == path)
        }
    }

    impl Disk for TestDisk {
        fn fsync(&self, path: &Path) -> std::io::Result<()> {
            self.entered.lock().unwrap().push(path.to_path_buf());
            let mut hold = self.hold.lock().unwrap();
            while hold
                .as_ref()
                .is_some_and(|m| path.to_string_lossy().contains(m.as_str()))
            {
                hold = self.held.wait(hold).unwrap();
            }
            drop(hold);
            if Self::matches(&self.fail, path) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            RealDisk::new(None).fsync(path)?;
            self.durable.lock().unwrap().push(path.to_path_buf());
            Ok(())
        }
        fn syncfs(&self, _root: &Path) -> std::io::Result<()> {
            unreachable!("tests sync fewer files")
        }
    }

    fn store_on(disk: &Arc<TestDisk>) -> (tempfile::TempDir, LocalBlockStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlockStore::open_on(dir.path(), disk.clone()).unwrap();
        (dir, store)
    }

    /// Two fsyncs at once: the second must not return while the first is still syncing the
    /// block both depend on.
    #[test]
    fn a_sync_returns_only_once_every_block_put_before_it_is_durable() {
        let disk = Arc::new(TestDisk::default());
        let (_dir, store) = store_on(&disk);
        let key = BlockKey::for_data(HashAlgo::Blake3, b"shared block");
        *disk.hold.lock().unwrap() = Some(key.hex());
        store.put(&key, b"shared block").unwrap();
        let path = store.path_of(&key);
        std::thread::scope(|s| {
            let first = s.spawn(|| store.sync());
            while !disk.entered.lock().unwrap().contains(&path) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let second = s.spawn(|| {
                let r = store.sync();
                (r, disk.is_durable(&path))
            });
            std::thread::sleep(Duration::from_millis(200));
            disk.release();
            let (r, durable) = second.join().unwrap();
            r.unwrap();
            assert!(
                durable,
                "the second sync returned before the block was durable"
            );
            first.join().unwrap().unwrap();
        });
    }

    /// A failed fsync is reported to later syncs too, until the block is written afresh and
    /// synced: a plain second fsync would succeed for bytes the disk lost.
    #[test]
    fn a_failed_sync_fails_later_syncs_until_the_block_is_written_again() {
        let disk = Arc::new(TestDisk::default());
        let (_dir, store) = store_on(&disk);
        let key = BlockKey::for_data(HashAlgo::Blake3, b"unlucky");
        *disk.fail.lock().unwrap() = Some(key.hex());
        store.put(&key, b"unlucky").unwrap();
        let e = store.sync().unwrap_err();
        assert!(
            matches!(&e, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::EIO)),
            "{e}"
        );
        let other = BlockKey::for_data(HashAlgo::Blake3, b"another block");
        store.put(&other, b"another block").unwrap();
        assert!(
            store.sync().is_err(),
            "a later sync depends on the lost block too"
        );
        assert!(store.sync().is_err());
        *disk.fail.lock().unwrap() = None;
        let written_before = fs::metadata(store.path_of(&key)).unwrap();
        store.sync().unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            fs::metadata(store.path_of(&key)).unwrap().ino(),
            written_before.ino(),
            "repaired by writing a new file, not by syncing the old one again"
        );
        assert!(disk.is_durable(&store.path_of(&key)));
        assert_eq!(store.get(&key).unwrap(), b"unlucky");
        store.sync().unwrap();
    }

    /// A file of the right size already at a block's path may hold bytes that never reached
    /// the disk (a killed daemon's, a torn write): a put checks it, rewrites it when wrong,
    /// and syncs it either way.
    #[test]
    fn a_copy_found_on_disk_is_checked_and_synced() {
        let disk = Arc::new(TestDisk::default());
        let (_dir, store) = store_on(&disk);
        let data = vec![5u8; 8192];
        let key = BlockKey::for_data(HashAlgo::Blake3, &data);
        let path = store.path_of(&key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![0u8; 8192]).unwrap();
        assert_eq!(store.put(&key, &data).unwrap(), PutOutcome::Fresh);
        assert_eq!(store.get(&key).unwrap(), data, "the wrong copy was kept");

        let good = vec![6u8; 8192];
        let key = BlockKey::for_data(HashAlgo::Blake3, &good);
        let path = store.path_of(&key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &good).unwrap(); // as a killed daemon leaves it: not synced
        assert_eq!(store.put(&key, &good).unwrap(), PutOutcome::Duplicate);
        store.sync().unwrap();
        assert!(
            disk.is_durable(&path),
            "the copy found on disk was not synced"
        );
    }
}
