//! Outages injected in-process through the fault layers: of a block store
//! (`testkit::FaultyStore`, under the production retry layer) and of the metadata engine's
//! commits (`testkit::FaultyMeta`). The filesystem core over RocksDB metadata and blocks in
//! memory, no mount and no server.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{create, random_bytes, read_all, small_cfg, tempdir, write_all};
use graviton::meta::{MetaStore, ROOT_INO, RocksMetaStore};
use graviton::retry::Backoff;
use graviton::store::retrying::Retrying;
use graviton::store::{BlockStore, MemoryBlockStore, Transience};
use graviton::vfs::{Fs, FsConfig, OpenFlags};
use graviton_testkit::{CommitFault, FaultyMeta, FaultyStore};

/// A volume whose blocks pass through the fault layer, then the retry layer with `patience`.
struct Volume {
    dir: tempfile::TempDir,
    blocks: Arc<MemoryBlockStore>,
    faults: Arc<FaultyStore>,
    patience: Duration,
}

impl Volume {
    fn new(patience: Duration) -> Volume {
        let blocks = Arc::new(MemoryBlockStore::new());
        Volume {
            dir: tempdir(true),
            faults: Arc::new(FaultyStore::new(blocks.clone())),
            blocks,
            patience,
        }
    }

    fn mount(&self, cfg: FsConfig) -> Fs {
        let meta: Arc<dyn MetaStore> =
            Arc::new(RocksMetaStore::open(self.dir.path().join("meta")).expect("open meta"));
        let quick = Backoff {
            first: Duration::from_millis(5),
            max: Duration::from_millis(50),
            jitter: true,
        };
        let store = Arc::new(Retrying::new(self.faults.clone(), quick, self.patience));
        Fs::new(meta, store, cfg).expect("fs")
    }

    /// `mount`, with the metadata engine's commits through the fault layer.
    fn mount_with_commit_faults(&self, cfg: FsConfig) -> (Fs, Arc<FaultyMeta>) {
        let engine: Arc<dyn MetaStore> =
            Arc::new(RocksMetaStore::open(self.dir.path().join("meta")).expect("open meta"));
        let faults = Arc::new(FaultyMeta::new(engine));
        let fs = Fs::new(faults.clone(), self.faults.clone(), cfg).expect("fs");
        (fs, faults)
    }

    /// Every extent the metadata holds for `ino` names a block the store has.
    fn assert_blocks_stored(&self, fs: &Fs, ino: u64) {
        let mut tx = fs.meta().read().unwrap();
        let extents = tx.extents(ino, 0..u64::MAX).unwrap();
        assert!(!extents.is_empty());
        for e in extents {
            assert!(self.blocks.exists(&e.key).unwrap(), "{ino}: {e:?}");
        }
    }
}

/// Caches too small to hold the test's file: every read goes to the store.
fn uncached() -> FsConfig {
    let mut cfg = small_cfg();
    cfg.block_cache_bytes = 0;
    cfg
}

#[test]
fn a_store_away_for_less_than_its_patience_delays_writes_and_reads_but_fails_none() {
    let vol = Volume::new(Duration::from_secs(20));
    let fs = vol.mount(uncached());
    let data = random_bytes(1, 300_000);
    let (_, fh) = create(&fs, "f");
    write_all(&fs, fh, 0, &data, 65536);
    vol.faults.go_down_for(Duration::from_millis(400));
    fs.fsync(fh)
        .expect("fsync waits for the store to come back");
    let before = vol.faults.counts().1;
    vol.faults.go_down_for(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(read_all(&fs, fh, 0, data.len() as u64), data);
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    let (calls, failed) = vol.faults.counts();
    assert!(
        failed > before && calls > failed,
        "{calls} calls, {failed} failed"
    );
    fs.release(fh).unwrap();
}

#[test]
fn a_store_away_longer_than_its_patience_fails_the_fsync_with_eio_and_keeps_what_was_committed() {
    let vol = Volume::new(Duration::from_millis(300));
    let fs = vol.mount(small_cfg());
    let (ino, fh) = create(&fs, "f");
    let first = random_bytes(2, 100_000);
    write_all(&fs, fh, 0, &first, 65536);
    fs.fsync(fh).unwrap();
    write_all(&fs, fh, 0, &random_bytes(3, 100_000), 65536);
    vol.faults.go_down_for(Duration::from_secs(3600));
    let e = fs.fsync(fh).expect_err("the store is gone");
    assert_eq!(e.errno(), libc::EIO, "{e}");
    // what the earlier fsync committed still names stored blocks
    let mut tx = fs.meta().read().unwrap();
    for extent in tx.extents(ino, 0..u64::MAX).unwrap() {
        assert!(vol.blocks.exists(&extent.key).unwrap(), "{extent:?}");
    }
    drop(tx);
    vol.faults.go_down_for(Duration::ZERO);
    let _ = fs.release(fh);
    drop(fs);
    let fs = vol.mount(small_cfg());
    let fh = fs.open(ino, OpenFlags::READ).unwrap();
    let got = read_all(&fs, fh, 0, first.len() as u64);
    assert_eq!(got.len(), first.len());
}

#[test]
fn a_permanent_refusal_is_not_retried_and_reaches_the_caller_as_eio() {
    let vol = Volume::new(Duration::from_secs(3600));
    let fs = vol.mount(uncached());
    let (_, fh) = create(&fs, "f");
    write_all(&fs, fh, 0, &random_bytes(4, 50_000), 65536);
    fs.fsync(fh).unwrap();
    vol.faults.fail_next(1, Transience::Permanent);
    let t = Instant::now();
    let e = fs.read(fh, 0, 4096).expect_err("refused");
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "not retried for an hour"
    );
    assert_eq!(
        fs.read(fh, 0, 4096).unwrap().len(),
        4096,
        "the next read works"
    );
}

#[test]
fn a_power_cut_after_an_fsync_loses_no_block_the_metadata_names() {
    let vol = Volume::new(Duration::from_secs(20));
    let fs = vol.mount(small_cfg());
    let mut files = Vec::new();
    for i in 0..8 {
        let name = format!("f{i}");
        let (ino, fh) = create(&fs, &name);
        write_all(&fs, fh, 0, &random_bytes(10 + i, 70_000), 65536);
        fs.fsync(fh).unwrap();
        fs.release(fh).unwrap();
        files.push(ino);
    }
    fs.shutdown().unwrap();
    drop(fs);
    vol.faults.crash();
    let fs = vol.mount(small_cfg());
    let mut tx = fs.meta().read().unwrap();
    for ino in files {
        let extents = tx.extents(ino, 0..u64::MAX).unwrap();
        assert!(!extents.is_empty());
        for e in extents {
            assert!(vol.blocks.exists(&e.key).unwrap(), "{ino}: {e:?}");
        }
    }
    assert!(fs.lookup(ROOT_INO, b"f7").is_ok());
}

/// Commits refused while the engine is away: the fsync is EIO, and a mount that ends while
/// they still are leaves the file as its last commit made it, naming only stored blocks.
#[test]
fn refused_commits_fail_the_fsync_and_leave_the_last_committed_content() {
    let vol = Volume::new(Duration::from_secs(20));
    let (fs, faults) = vol.mount_with_commit_faults(small_cfg());
    let (ino, fh) = create(&fs, "f");
    let first = random_bytes(20, 150_000);
    write_all(&fs, fh, 0, &first, 65536);
    fs.fsync(fh).unwrap();
    write_all(&fs, fh, 0, &random_bytes(21, 150_000), 65536);
    faults.fail_next_commits(1_000, CommitFault::Refused);
    let e = fs.fsync(fh).expect_err("the engine refuses every commit");
    assert_eq!(e.errno(), libc::EIO, "{e}");
    let _ = fs.release(fh);
    drop(fs);
    assert!(faults.pending_faults() > 0, "the mount ended while refused");
    drop(faults);

    let fs = vol.mount(small_cfg());
    vol.assert_blocks_stored(&fs, ino);
    let fh = fs.open(ino, OpenFlags::READ).unwrap();
    assert!(
        read_all(&fs, fh, 0, first.len() as u64) == first,
        "the first version"
    );
}

/// A commit the engine applied but whose answer was lost on the way back: the data is
/// committed again (the same bytes at the same place), and the file names only stored blocks.
#[test]
fn a_commit_whose_answer_was_lost_keeps_the_data_and_its_blocks() {
    let vol = Volume::new(Duration::from_secs(20));
    let (fs, faults) = vol.mount_with_commit_faults(small_cfg());
    let (ino, fh) = create(&fs, "f");
    let data = random_bytes(22, 200_000);
    write_all(&fs, fh, 0, &data, 65536);
    faults.fail_next_commits(1, CommitFault::AnswerLost);
    let e = fs.fsync(fh).expect_err("the answer was lost");
    assert_eq!(e.errno(), libc::EIO, "{e}");
    fs.fsync(fh).expect("committed again");
    fs.release(fh).unwrap();
    drop(fs);
    drop(faults);

    let fs = vol.mount(small_cfg());
    vol.assert_blocks_stored(&fs, ino);
    assert_eq!(fs.getattr(ino).unwrap().size, data.len() as u64);
    let fh = fs.open(ino, OpenFlags::READ).unwrap();
    assert!(read_all(&fs, fh, 0, data.len() as u64) == data);
}

/// The engine below a write-behind layer (`-o writeback`) refuses commits, or applies them and
/// loses the answer, for a while: the mount's own commits succeed (they are journaled), the
/// applier sends its batches again, and once the engine answers, every file is there with its
/// content, nothing applied twice or lost.
#[test]
fn write_behind_rides_out_an_engine_that_refuses_commits_or_loses_answers() {
    use graviton::meta::prelude::*;
    use graviton::meta::write_behind::WriteBehind;
    let dir = tempdir(true);
    let blocks = Arc::new(MemoryBlockStore::new());
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("f{i}"),
                random_bytes(30 + i, 3_000 + i as usize * 7_000),
            )
        })
        .collect();
    {
        let engine: Arc<dyn MetaStore> =
            Arc::new(RocksMetaStore::open(dir.path().join("meta")).expect("open meta"));
        let faults = Arc::new(FaultyMeta::new(engine));
        let wb = Arc::new(
            WriteBehind::open(faults.clone(), &dir.path().join("journal"), "test").unwrap(),
        );
        let fs = Fs::new(wb.clone(), blocks.clone(), small_cfg()).expect("fs");
        use CommitFault::{AnswerLost, Refused};
        faults.fail_commits(&[
            Refused, AnswerLost, Refused, Refused, AnswerLost, AnswerLost,
        ]);
        for (name, body) in &files {
            let (_, fh) = create(&fs, name);
            write_all(&fs, fh, 0, body, 65536);
            fs.release(fh).expect("a commit reaches the journal");
        }
        for (name, body) in &files {
            let ino = fs.lookup(ROOT_INO, name.as_bytes()).unwrap().ino;
            let fh = fs.open(ino, OpenFlags::READ).unwrap();
            assert!(
                read_all(&fs, fh, 0, body.len() as u64) == *body,
                "{name} on the mount"
            );
            fs.release(fh).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while (faults.pending_faults() > 0 || wb.queued() > 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            (faults.pending_faults(), wb.queued()),
            (0, 0),
            "every fault met, all applied"
        );
        wb.end_session();
    }
    // the engine alone, without the journal
    let meta: Arc<dyn MetaStore> =
        Arc::new(RocksMetaStore::open(dir.path().join("meta")).expect("open meta"));
    let fs = Fs::new(meta, blocks, small_cfg()).expect("fs");
    let listed = fs.readdir(ROOT_INO, 0, 1000).unwrap();
    let names = listed.iter().filter(|e| !e.name.starts_with(b".")).count();
    assert_eq!(names, files.len(), "each file once");
    for (name, body) in &files {
        let attr = fs.lookup(ROOT_INO, name.as_bytes()).unwrap();
        assert_eq!(attr.nlink, 1, "{name} linked once");
        let fh = fs.open(attr.ino, OpenFlags::READ).unwrap();
        assert!(
            read_all(&fs, fh, 0, body.len() as u64) == *body,
            "{name} in the engine"
        );
    }
}
