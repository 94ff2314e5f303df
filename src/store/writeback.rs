//! Write-back of blocks (`-o writeback`): a put lands in a local staging folder (appended to a
//! segment file, see `staging`) and returns; a few uploader threads then send each block to
//! the volume's store and release the staged copy.
//! Close and fsync no longer wait for the remote store (S3, the database), only for the local
//! disk: fsync makes staged blocks durable there (`sync`).
//!
//! The cost is where the only copy lives meanwhile: until its upload, a block committed in a
//! file's map exists on this machine alone. Another mount of the volume that reads it gets an
//! I/O error (not wrong bytes), and a lost machine loses those bytes. A staged block survives a
//! crash of the daemon: the next mount uploads what the folder holds. An unmount waits for the
//! uploads (`drain`), up to a limit, then leaves the rest to the next mount.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::at_rest::AtRest;
use super::staging::{Loc, Staging};
use super::{BlockStore, PutOutcome, StoreError, Unchecked};
use crate::domain::BlockKey;

/// Blocks uploaded at once.
const UPLOADERS: usize = 4;
/// How long a block stays staged before its upload starts (unless an unmount is waiting): a
/// burst of writes finishes at local speed instead of sharing the machine with its uploads.
const UPLOAD_DELAY: Duration = Duration::from_secs(2);

/// Called when an upload finds the block already stored (see `Core::store_new`: a copy found
/// may be a gc candidate about to be referenced again).
pub type OnDuplicate = Box<dyn Fn(&BlockKey) + Send + Sync>;

pub struct WriteBack {
    uploads: Arc<Uploads>,
    uploaders: Vec<std::thread::JoinHandle<()>>,
}

struct Uploads {
    inner: Arc<dyn BlockStore>,
    staging: Staging,
    state: Mutex<State>,
    /// Signalled when a block is queued or the store is closing.
    work: Condvar,
    /// Signalled when an upload ends.
    done: Condvar,
    on_duplicate: OnDuplicate,
    /// A put found the staging folder failing (warned once per mount).
    staging_failed: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    /// Blocks in the staging folder, and where.
    staged: HashMap<BlockKey, Loc>,
    /// Staged blocks waiting for an uploader, with when they may go.
    queue: VecDeque<(BlockKey, Instant)>,
    /// An unmount is waiting: no more delay.
    hurry: bool,
    uploading: usize,
    /// The store is dropped: uploaders take no more blocks (those left are the next mount's).
    closing: bool,
    /// Uploader threads not yet exited.
    uploaders: usize,
}

impl WriteBack {
    /// The block's bytes from the staging area while it is staged; `None` once uploaded (also
    /// when that happens between the lookup and the read).
    fn staged_copy(&self, key: &BlockKey) -> Result<Option<Vec<u8>>, StoreError> {
        let s = &self.uploads;
        let staged = s.lock().staged.get(key).copied();
        match staged {
            Some(loc) => s.staging.read(key, loc),
            None => Ok(None),
        }
    }

    /// Opens the staging folder (created if needed), whose records are kept as `at_rest` says,
    /// and starts uploading what an earlier mount left there.
    pub fn open(
        inner: Arc<dyn BlockStore>,
        dir: &Path,
        on_duplicate: OnDuplicate,
        at_rest: AtRest,
    ) -> Result<WriteBack, StoreError> {
        let mut state = State {
            uploaders: UPLOADERS,
            ..State::default()
        };
        let (staging, found) = Staging::open(dir, at_rest)?;
        for (key, loc) in found {
            state.staged.insert(key, loc);
            state.queue.push_back((key, Instant::now()));
        }
        if !state.queue.is_empty() {
            tracing::info!(
                blocks = state.queue.len(),
                "uploading blocks an earlier mount left in {}",
                dir.display()
            );
        }
        let uploads = Arc::new(Uploads {
            inner,
            staging,
            state: Mutex::new(state),
            work: Condvar::new(),
            done: Condvar::new(),
            on_duplicate,
            staging_failed: Default::default(),
        });
        let mut uploaders = Vec::new();
        for n in 0..UPLOADERS {
            let uploads = uploads.clone();
            let thread = std::thread::Builder::new()
                .name(format!("graviton-upload-{n}"))
                .spawn(move || {
                    crate::background::lower_this_threads_priority();
                    uploads.upload_loop();
                    uploads.lock().uploaders -= 1;
                    uploads.done.notify_all();
                })
                .map_err(|e| StoreError::io("write-back", "starting uploader threads", e))?;
            uploaders.push(thread);
        }
        uploads.report();
        Ok(WriteBack { uploads, uploaders })
    }

    /// Blocks still staged (waiting or being uploaded).
    pub fn staged(&self) -> usize {
        self.uploads.lock().staged.len()
    }

    /// For a mount that stages nothing itself: uploads what a write-back mount left in `dir`
    /// (one killed, or unmounted while the store was away). Waits as long as uploads go on, and
    /// fails once none has succeeded for `stall` with blocks still staged. Returns how many
    /// blocks it uploaded.
    pub fn upload_left(
        inner: Arc<dyn BlockStore>,
        dir: &Path,
        on_duplicate: OnDuplicate,
        stall: Duration,
        at_rest: AtRest,
    ) -> Result<usize, StoreError> {
        if !dir.exists() {
            return Ok(0);
        }
        let wb = WriteBack::open(inner, dir, on_duplicate, at_rest)?;
        let found = wb.staged();
        let (mut left, mut progress) = (found, Instant::now());
        // `drain` in short steps, to tell "slow" from "stuck"
        while let Err(e) = BlockStore::drain(&wb, Duration::from_secs(1)) {
            let now = wb.staged();
            if now < left {
                (left, progress) = (now, Instant::now());
            } else if progress.elapsed() > stall {
                let context = format!(
                    "no upload succeeded for {} s: the {left} blocks an earlier -o writeback mount left in {} wait",
                    stall.as_secs(),
                    dir.display()
                );
                let transience = e.transience();
                let why = std::io::Error::other(e.to_string());
                return Err(StoreError::failed("write-back", context, why, transience));
            }
        }
        Ok(found)
    }
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("write-back state")
    }

    fn report(&self) {
        let staged = self.lock().staged.len();
        metrics::gauge!(crate::metrics::WRITEBACK_STAGED).set(staged as f64);
    }

    fn upload_loop(&self) {
        // the wait after a failed upload before the next is tried
        let mut attempts = crate::retry::Backoff::UPLOADS.start(None);
        loop {
            let key = {
                let mut st = self.lock();
                loop {
                    let now = Instant::now();
                    if st.closing {
                        return;
                    }
                    match st.queue.front() {
                        Some(&(key, at)) if at <= now || st.hurry => {
                            st.queue.pop_front();
                            st.uploading += 1;
                            break key;
                        }
                        Some(&(_, at)) => {
                            st = self
                                .work
                                .wait_timeout(st, at - now)
                                .expect("write-back state")
                                .0;
                        }
                        None => st = self.work.wait(st).expect("write-back state"),
                    }
                }
            };
            let result = self.upload(&key);
            let mut st = self.lock();
            st.uploading -= 1;
            match result {
                Ok(()) => {
                    if let Some(loc) = st.staged.remove(&key) {
                        self.staging.release(loc);
                    }
                    attempts.reset();
                }
                Err(e) => {
                    // the store's own retries are spent: try again later, after the others
                    tracing::warn!(block = %key, "upload of a staged block failed, will retry: {e}");
                    st.queue.push_back((key, Instant::now()));
                }
            }
            let failed = st.staged.contains_key(&key);
            drop(st);
            self.done.notify_all();
            self.report();
            if failed {
                attempts.wait();
            }
        }
    }

    fn upload(&self, key: &BlockKey) -> Result<(), StoreError> {
        let Some(loc) = self.lock().staged.get(key).copied() else {
            return Ok(()); // deleted meanwhile (`delete`)
        };
        let Some(data) = self.staging.read(key, loc)? else {
            return Ok(());
        };
        // checked and group-hashed in one pass (the S3 store keeps the group hashes)
        let (found, groups) = BlockKey::for_data_grouped(key.algo, &data);
        if found != *key {
            // the staged copy was damaged on this disk: nothing good to upload
            tracing::error!(block = %key, "staged block does not match its key; dropped");
            if let Some(loc) = self.lock().staged.remove(key) {
                self.staging.release(loc);
            }
            return Err(StoreError::Corrupt(*key, "write-back"));
        }
        super::store_for_reference(self.inner.as_ref(), key, &data, groups.as_ref(), |k| {
            (self.on_duplicate)(k);
            Ok::<(), StoreError>(())
        })
    }
}

impl super::StoreLayer for WriteBack {
    fn inner(&self) -> &dyn BlockStore {
        self.uploads.inner.as_ref()
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let s = &self.uploads;
        if s.lock().staged.contains_key(key) {
            return Ok(PutOutcome::Duplicate);
        }
        let loc = match s.staging.append(key, data) {
            Ok(loc) => loc,
            // A full or failing local disk: the block goes straight to the store, as without
            // write-back, and the writer waits for the upload instead of failing.
            Err(e) => {
                if !s
                    .staging_failed
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        "write-back: {e}; blocks the staging folder refuses go straight to the {} store",
                        s.inner.backend()
                    );
                }
                return s.inner.put_new(key, data);
            }
        };
        let mut st = s.lock();
        if st.staged.contains_key(key) {
            // staged by another put meanwhile
            s.staging.release(loc);
            return Ok(PutOutcome::Duplicate);
        }
        st.staged.insert(*key, loc);
        st.queue.push_back((*key, Instant::now() + UPLOAD_DELAY));
        drop(st);
        s.work.notify_one();
        s.report();
        Ok(PutOutcome::Fresh)
    }

    /// Staged like any put (the group hashes are computed again at the upload).
    fn put_new_grouped(
        &self,
        key: &BlockKey,
        data: &[u8],
        _groups: Option<&crate::domain::groups::GroupHashes>,
    ) -> Result<PutOutcome, StoreError> {
        BlockStore::put(self, key, data)
    }

    fn cheap_put(&self, _key: &BlockKey) -> bool {
        true
    }

    fn get_unverified(&self, key: &BlockKey, unchecked: Unchecked) -> Result<Vec<u8>, StoreError> {
        match self.staged_copy(key)? {
            Some(data) => Ok(data),
            None => self.uploads.inner.get_unverified(key, unchecked),
        }
    }

    /// A staged block is checked here; an uploaded one by the store it is in (the S3 store
    /// hashes the body as it arrives).
    fn get(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        match self.staged_copy(key)? {
            Some(data) if key.matches(&data) => Ok(data),
            Some(_) => {
                tracing::error!(block = %key, "staged block does not match its key");
                Err(StoreError::Corrupt(*key, "write-back"))
            }
            None => self.uploads.inner.get(key),
        }
    }

    fn get_range(&self, key: &BlockKey, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        if self.uploads.lock().staged.contains_key(key) {
            let data = BlockStore::get(self, key)?;
            return Ok(super::part_of(&data, range));
        }
        self.uploads.inner.get_range(key, range)
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        if self.uploads.lock().staged.contains_key(key) {
            return Ok(true);
        }
        self.uploads.inner.exists(key)
    }

    // `delete` (forwarded) deletes the store's copy only. A staged copy is a writer's on its
    // way to the store: gc may be deleting an old copy of a block a writer has just staged
    // again (a staged put reports it fresh, so the writer took no gc mark away). A staged block
    // that really is garbage is uploaded, then collected by a later run.

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        // staged first: a block uploaded meanwhile leaves the staging after it is stored below
        let mut all: Vec<BlockKey> = self.uploads.lock().staged.keys().copied().collect();
        all.extend(self.uploads.inner.list()?);
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// Makes every staged block durable on the local disk (not uploaded: see `drain`).
    fn sync(&self) -> Result<(), StoreError> {
        self.uploads.staging.sync()?;
        self.uploads.inner.sync()
    }

    /// Staged blocks are synced before a commit names them.
    fn settle(&self, _keys: &[BlockKey]) -> Result<(), StoreError> {
        BlockStore::sync(self)
    }

    fn drain(&self, limit: Duration) -> Result<(), StoreError> {
        let s = &self.uploads;
        let start = Instant::now();
        let mut st = s.lock();
        st.hurry = true;
        s.work.notify_all();
        while !st.staged.is_empty() && start.elapsed() < limit {
            st = s
                .done
                .wait_timeout(st, Duration::from_millis(200))
                .expect("write-back state")
                .0;
        }
        let left = st.staged.len();
        drop(st);
        if left == 0 {
            return Ok(());
        }
        BlockStore::sync(self)?;
        let context = format!(
            "{left} blocks not uploaded in {} s stay in {}; the next mount on this machine uploads them",
            limit.as_secs(),
            s.staging.dir().display()
        );
        let why = std::io::Error::new(std::io::ErrorKind::TimedOut, "uploads did not finish");
        Err(StoreError::failed(
            "write-back",
            context,
            why,
            super::Transience::Transient,
        ))
    }
}

/// How long dropping the store waits for uploads in flight to end.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl Drop for WriteBack {
    /// Stops the uploaders and waits for uploads in flight, so that what they hold (the store
    /// below, the metadata the duplicate hook marks) is released with the store.
    fn drop(&mut self) {
        let s = &self.uploads;
        let mut st = s.lock();
        st.closing = true;
        s.work.notify_all();
        let deadline = Instant::now() + CLOSE_WAIT;
        while st.uploaders > 0 && Instant::now() < deadline {
            st = s
                .done
                .wait_timeout(st, Duration::from_millis(200))
                .expect("write-back state")
                .0;
        }
        if st.uploaders == 0 {
            drop(st);
            for t in self.uploaders.drain(..) {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::HashAlgo;
    use crate::store::memory::MemoryBlockStore;

    /// A tmpfs of `bytes` on a fresh folder, unmounted when dropped.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn new(bytes: usize) -> Option<SmallDisk> {
            let dir = tempfile::tempdir().unwrap();
            let size = format!("size={bytes}");
            nix::mount::mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(size.as_str()),
            )
            .ok()?;
            Some(SmallDisk(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn gc_deleting_an_old_copy_spares_the_one_a_writer_just_staged() {
        let staging = tempfile::tempdir().unwrap();
        let inner = Arc::new(MemoryBlockStore::new());
        let data = vec![7u8; 100 << 10];
        let key = BlockKey::for_data(HashAlgo::Blake3, &data);
        inner.put(&key, &data).unwrap(); // the old copy, unreferenced and marked by gc
        let wb = WriteBack::open(
            inner.clone(),
            staging.path(),
            Box::new(|_| {}),
            AtRest::Plain,
        )
        .unwrap();
        // a writer stores the same bytes again: staged, reported fresh, so no mark is taken
        assert_eq!(wb.put(&key, &data).unwrap(), PutOutcome::Fresh);
        // gc's deletion, decided before the writer's commit
        wb.delete(&key).unwrap();
        assert!(!inner.exists(&key).unwrap());
        assert_eq!(wb.get(&key).unwrap(), data, "the staged copy is still read");
        wb.drain(Duration::from_secs(30)).unwrap();
        assert_eq!(inner.get(&key).unwrap(), data, "and it reaches the store");
    }

    /// A store whose listing is taken before an upload lands and answered after it.
    struct ListsBeforeAnUpload {
        inner: Arc<MemoryBlockStore>,
        key: BlockKey,
        listed: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    }

    impl crate::store::StoreLayer for ListsBeforeAnUpload {
        fn inner(&self) -> &dyn BlockStore {
            self.inner.as_ref()
        }

        fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
            let before = self.inner.list()?;
            if let Some(tx) = self.listed.lock().unwrap().take() {
                tx.send(()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(30);
                while !self.inner.exists(&self.key)? {
                    assert!(Instant::now() < deadline, "the upload never came");
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::thread::sleep(Duration::from_millis(200)); // the uploader unstages it
            }
            Ok(before)
        }
    }

    #[test]
    fn a_block_uploaded_while_the_store_is_listed_is_listed() {
        let staging = tempfile::tempdir().unwrap();
        let data = vec![3u8; 10 << 10];
        let key = BlockKey::for_data(HashAlgo::Blake3, &data);
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = Arc::new(ListsBeforeAnUpload {
            inner: Arc::new(MemoryBlockStore::new()),
            key,
            listed: Mutex::new(Some(tx)),
        });
        let wb = WriteBack::open(inner, staging.path(), Box::new(|_| {}), AtRest::Plain).unwrap();
        wb.put(&key, &data).unwrap();
        std::thread::scope(|s| {
            let wb = &wb;
            s.spawn(move || {
                rx.recv().unwrap();
                wb.drain(Duration::from_secs(30)).unwrap();
            });
            assert!(
                wb.list().unwrap().contains(&key),
                "staged, then uploaded: listed"
            );
        });
    }

    #[test]
    fn a_full_staging_disk_sends_blocks_straight_to_the_store() {
        // (the suite runs as root, as its FUSE tests need)
        let disk = SmallDisk::new(1 << 20).expect("mounting a 1 MiB tmpfs (as root)");
        let inner = Arc::new(MemoryBlockStore::new());
        let wb = WriteBack::open(
            inner.clone(),
            disk.0.path(),
            Box::new(|_| {}),
            AtRest::Plain,
        )
        .unwrap();
        let blocks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 400 << 10]).collect();
        let key = |b: &[u8]| BlockKey::for_data(HashAlgo::Blake3, b);
        for b in &blocks {
            assert_eq!(wb.put(&key(b), b).unwrap(), PutOutcome::Fresh, "no error");
        }
        // uploads wait two seconds: what the store has now went there directly
        let direct = blocks
            .iter()
            .filter(|b| inner.exists(&key(b)).unwrap())
            .count();
        assert!(
            (2..4).contains(&direct),
            "1 MiB stages one or two of four 400 KiB blocks, the rest go direct: {direct}"
        );
        for b in &blocks {
            assert_eq!(wb.get(&key(b)).unwrap(), *b);
        }
        wb.drain(Duration::from_secs(30)).unwrap();
        assert_eq!(wb.staged(), 0);
        for b in &blocks {
            assert_eq!(
                inner.get(&key(b)).unwrap(),
                *b,
                "every block reached the store"
            );
        }
    }
}
