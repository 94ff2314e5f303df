//! Write-back of blocks (`-o writeback`): a put lands in a local staging folder and returns; a
//! few uploader threads then send each block to the volume's store and drop the staged copy.
//! Close and fsync no longer wait for the remote store (S3, the database), only for the local
//! disk: fsync makes staged blocks durable there (`sync`).
//!
//! The cost is where the only copy lives meanwhile: until its upload, a block committed in a
//! file's map exists on this machine alone. Another mount of the volume that reads it gets an
//! I/O error (not wrong bytes), and a lost machine loses those bytes. A staged block survives a
//! crash of the daemon: the next mount uploads what the folder holds. An unmount waits for the
//! uploads (`drain`), up to a limit, then leaves the rest to the next mount.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{BlockStore, PutOutcome, StoreError, block_files};
use crate::core::BlockKey;

/// Blocks uploaded at once.
const UPLOADERS: usize = 4;
/// How long a block stays staged before its upload starts (unless an unmount is waiting): a
/// burst of writes finishes at local speed instead of sharing the machine with its uploads.
const UPLOAD_DELAY: Duration = Duration::from_secs(2);
/// Wait after a failed upload before the block is tried again (doubling up to the maximum).
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Called when an upload finds the block already stored (see `Core::store_new`: a copy found
/// may be a gc candidate about to be referenced again).
pub type OnDuplicate = Box<dyn Fn(&BlockKey) + Send + Sync>;

pub struct WriteBack {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn BlockStore>,
    dir: PathBuf,
    state: Mutex<State>,
    /// Signalled when a block is queued or the store is closing.
    work: Condvar,
    /// Signalled when an upload ends.
    done: Condvar,
    on_duplicate: OnDuplicate,
}

#[derive(Default)]
struct State {
    /// Blocks in the staging folder.
    staged: HashSet<BlockKey>,
    /// Staged blocks waiting for an uploader, with when they may go.
    queue: VecDeque<(BlockKey, Instant)>,
    /// An unmount is waiting: no more delay.
    hurry: bool,
    uploading: usize,
    /// Staged files written since the last `sync`.
    unsynced: Vec<BlockKey>,
    closing: bool,
    /// Files of uploaded blocks kept for reuse (in `spare/`), and the next spare's number.
    spares: Vec<PathBuf>,
    next_spare: u64,
}

/// Uploaded blocks' files are kept for reuse up to this many. Creating and deleting a file
/// per block made ext4 (without a journal) scan for recently deleted inodes at each create:
/// a third of the daemon's CPU time in an untar.
const MAX_SPARES: usize = 1024;

fn io(context: String, e: std::io::Error) -> StoreError {
    StoreError::io("write-back", context, e)
}

impl WriteBack {
    /// Opens the staging folder (created if needed) and starts uploading what an earlier mount
    /// left there.
    pub fn open(
        inner: Arc<dyn BlockStore>,
        dir: &Path,
        on_duplicate: OnDuplicate,
    ) -> Result<WriteBack, StoreError> {
        let mut state = State::default();
        let spare_dir = dir.join("spare");
        std::fs::create_dir_all(&spare_dir)
            .map_err(|e| io(format!("creating {}", spare_dir.display()), e))?;
        for e in std::fs::read_dir(&spare_dir)
            .map_err(|e| io(format!("listing {}", spare_dir.display()), e))?
            .flatten()
        {
            if state.spares.len() < MAX_SPARES {
                state.spares.push(e.path());
            } else {
                let _ = std::fs::remove_file(e.path());
            }
        }
        state.next_spare = state.spares.len() as u64;
        // (a put interrupted before its rename never returned: its file goes)
        for (key, _) in block_files::scan(dir, "write-back")? {
            state.staged.insert(key);
            state.queue.push_back((key, Instant::now()));
        }
        if !state.queue.is_empty() {
            tracing::info!(
                blocks = state.queue.len(),
                "uploading blocks an earlier mount left in {}",
                dir.display()
            );
        }
        let shared = Arc::new(Shared {
            inner,
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            work: Condvar::new(),
            done: Condvar::new(),
            on_duplicate,
        });
        for n in 0..UPLOADERS {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("graviton-upload-{n}"))
                .spawn(move || shared.upload_loop())
                .map_err(|e| io("starting uploader threads".into(), e))?;
        }
        shared.report();
        Ok(WriteBack { shared })
    }

    /// Blocks still staged (waiting or being uploaded).
    pub fn staged(&self) -> usize {
        self.shared.lock().staged.len()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("write-back state")
    }

    fn path(&self, key: &BlockKey) -> PathBuf {
        block_files::path(&self.dir, key)
    }

    fn report(&self) {
        let staged = self.lock().staged.len();
        metrics::gauge!(crate::metrics::WRITEBACK_STAGED).set(staged as f64);
    }

    fn upload_loop(&self) {
        let mut backoff = RETRY_FIRST;
        loop {
            let key = {
                let mut st = self.lock();
                loop {
                    let now = Instant::now();
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
                        None if st.closing => return,
                        None => st = self.work.wait(st).expect("write-back state"),
                    }
                }
            };
            let result = self.upload(&key);
            let mut st = self.lock();
            st.uploading -= 1;
            match result {
                Ok(()) => {
                    st.staged.remove(&key);
                    backoff = RETRY_FIRST;
                }
                Err(e) => {
                    // the store's own retries are spent: try again later, after the others
                    tracing::warn!(block = %key, "upload of a staged block failed, will retry: {e}");
                    st.queue.push_back((key, Instant::now()));
                }
            }
            let failed = st.staged.contains(&key);
            drop(st);
            self.done.notify_all();
            self.report();
            if failed {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }

    fn upload(&self, key: &BlockKey) -> Result<(), StoreError> {
        let path = self.path(key);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            // deleted meanwhile (`delete`)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(format!("reading {}", path.display()), e)),
        };
        if !key.matches(&data) {
            // the staged copy was damaged on this disk: nothing good to upload
            tracing::error!(block = %key, "staged block does not match its key; dropped");
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::Corrupt(*key, "write-back"));
        }
        if self.inner.put_new(key, &data)? == PutOutcome::Duplicate {
            (self.on_duplicate)(key);
        }
        self.retire(&path)
    }

    /// Keeps an uploaded block's file as a spare, or deletes it when there are enough.
    fn retire(&self, path: &Path) -> Result<(), StoreError> {
        let spare = {
            let mut st = self.lock();
            (st.spares.len() < MAX_SPARES).then(|| {
                st.next_spare += 1;
                self.dir.join("spare").join(st.next_spare.to_string())
            })
        };
        if let Some(spare) = spare
            && std::fs::rename(path, &spare).is_ok()
        {
            self.lock().spares.push(spare);
            return Ok(());
        }
        std::fs::remove_file(path).map_err(|e| io(format!("removing {}", path.display()), e))
    }
}

/// Writes `data` as the whole content of `path`. An existing (spare) file is written over in
/// place, not truncated first: ext4 then reuses its allocated blocks instead of freeing them
/// and allocating them again.
fn overwrite(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all(data)?;
    if f.metadata()?.len() > data.len() as u64 {
        f.set_len(data.len() as u64)?;
    }
    Ok(())
}

impl BlockStore for WriteBack {
    fn backend(&self) -> &'static str {
        self.shared.inner.backend()
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let s = &self.shared;
        if s.lock().staged.contains(key) {
            return Ok(PutOutcome::Duplicate);
        }
        let path = s.path(key);
        let tmp = path.with_extension("part");
        // a spare file is overwritten rather than a new one created
        if let Some(spare) = s.lock().spares.pop() {
            let _ = std::fs::rename(spare, &tmp);
        }
        overwrite(&tmp, data)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io(format!("staging {}", path.display()), e))?;
        let mut st = s.lock();
        if st.staged.insert(*key) {
            st.queue.push_back((*key, Instant::now() + UPLOAD_DELAY));
            st.unsynced.push(*key);
        }
        drop(st);
        s.work.notify_one();
        s.report();
        Ok(PutOutcome::Fresh)
    }

    fn cheap_put(&self, _key: &BlockKey) -> bool {
        true
    }

    fn get_unverified(&self, key: &BlockKey) -> Result<Vec<u8>, StoreError> {
        let s = &self.shared;
        if s.lock().staged.contains(key) {
            match std::fs::read(s.path(key)) {
                Ok(data) => return Ok(data),
                // uploaded and removed since the check
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("reading staged block {key}"), e)),
            }
        }
        s.inner.get_unverified(key)
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        if self.shared.lock().staged.contains(key) {
            return Ok(true);
        }
        self.shared.inner.exists(key)
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        let s = &self.shared;
        let staged = {
            let mut st = s.lock();
            st.queue.retain(|(k, _)| k != key);
            st.staged.remove(key)
        };
        if staged {
            let _ = std::fs::remove_file(s.path(key));
        }
        s.inner.delete(key)
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let mut all = self.shared.inner.list()?;
        all.extend(self.shared.lock().staged.iter().copied());
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// Makes every staged block durable on the local disk (not uploaded: see `drain`).
    fn sync(&self) -> Result<(), StoreError> {
        let s = &self.shared;
        let written = std::mem::take(&mut s.lock().unsynced);
        for key in &written {
            match std::fs::File::open(s.path(key)).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                // uploaded and removed meanwhile
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("syncing staged block {key}"), e)),
            }
        }
        if !written.is_empty() {
            std::fs::File::open(&s.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(format!("syncing {}", s.dir.display()), e))?;
        }
        s.inner.sync()
    }

    fn drain(&self, limit: Duration) -> Result<(), StoreError> {
        let s = &self.shared;
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
        if left > 0 {
            self.sync()?;
            tracing::warn!(
                blocks = left,
                "blocks not uploaded yet stay in {}; the next mount uploads them",
                s.dir.display()
            );
        }
        Ok(())
    }
}

impl Drop for WriteBack {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
    }
}
