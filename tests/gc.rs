//! `graviton gc`: deletes exactly the blocks no file references, only once they have been
//! unreferenced for the grace period, and none a concurrent writer is committing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::mounted::{Mounted, ok};
use common::random_bytes;
use graviton::domain::BlockKey;
use graviton::volume::{Source, Volume};

const MIB: usize = 1 << 20;

/// (blocks stored, blocks referenced) of a volume, read outside any mount.
fn blocks(source: &str) -> (BTreeSet<BlockKey>, BTreeSet<BlockKey>) {
    let vol = Volume::open(&Source::parse(source)).unwrap();
    let stored = vol.store.list().unwrap().into_iter().collect();
    let referenced = vol.meta.referenced_blocks().unwrap().into_iter().collect();
    (stored, referenced)
}

#[test]
fn gc_waits_out_the_grace_period_and_spares_blocks_being_committed() {
    graviton_testkit::needs_servers!();
    let m = Mounted::new_pg("");
    let kept = random_bytes(1, MIB);
    std::fs::write(m.path("kept"), &kept).unwrap();
    std::fs::write(m.path("gone"), random_bytes(2, MIB)).unwrap();
    std::fs::remove_file(m.path("gone")).unwrap();
    // a writer between its upload and its commit: the block is stored, no extent names it yet
    let late = random_bytes(3, MIB);
    let late_key = {
        let vol = Volume::open(&Source::parse(&m.source)).unwrap();
        let key = BlockKey::for_data(vol.hash, &late);
        vol.store.put(&key, &late).unwrap();
        key
    };
    let (stored, referenced) = blocks(&m.source);
    let garbage: BTreeSet<_> = stored.difference(&referenced).copied().collect();
    assert_eq!(
        garbage.len(),
        2,
        "the deleted file's block and the uncommitted one"
    );
    // the mount's writers released their pins at their commits; the releases reach the
    // database a moment later (gathered), and gc spares a block pinned until then
    let vol = Volume::open(&Source::parse(&m.source)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !graviton::meta::pins::pinned_blocks(vol.meta.as_ref())
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "pins never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(vol);
    assert!(garbage.contains(&late_key));

    let first = ok(m.graviton(&["gc", "--grace", "3s", &m.source]), "gc");
    assert!(
        first.contains("deleted 0 blocks") && first.contains("2 newly unreferenced"),
        "{first}"
    );
    assert_eq!(
        blocks(&m.source).0,
        stored,
        "nothing deleted inside the grace period"
    );

    // the writer commits: a file with the same content names the uploaded block; finding
    // the copy there, it took away the gc mark (gc would otherwise count its grace period
    // from when the block was first seen unreferenced)
    let mark = graviton::meta::gc_candidate_key(&late_key);
    let vol = Volume::open(&Source::parse(&m.source)).unwrap();
    assert!(
        vol.meta.kv_get(&mark).unwrap().is_some(),
        "marked by the first run"
    );
    std::fs::write(m.path("late"), &late).unwrap();
    assert!(
        vol.meta.kv_get(&mark).unwrap().is_none(),
        "the writer that found the copy removed the mark"
    );
    drop(vol);
    std::thread::sleep(Duration::from_millis(3100));

    // another writer keeps uploading and committing while gc runs
    let writer = {
        let dir = m.mnt.clone();
        std::thread::spawn(move || {
            for i in 0..20u64 {
                std::fs::write(dir.join(format!("w{i}")), random_bytes(100 + i, 300_000)).unwrap();
            }
        })
    };
    let dry = ok(
        m.graviton(&["gc", "--grace", "3s", "--dry-run", &m.source]),
        "gc --dry-run",
    );
    assert!(
        dry.contains(&format!("would delete 1 blocks ({MIB} bytes)")),
        "{dry}"
    );
    let second = ok(m.graviton(&["gc", "--grace", "3s", &m.source]), "gc");
    writer.join().unwrap();
    assert!(
        second.contains(&format!("deleted 1 blocks ({MIB} bytes)")),
        "{second}"
    );

    let (after, referenced) = blocks(&m.source);
    assert!(
        referenced.is_subset(&after),
        "every referenced block is still stored"
    );
    assert!(after.contains(&late_key), "the committed block was kept");
    assert_eq!(
        after.len(),
        stored.len() - 1 + 20,
        "exactly the deleted file's block went: {second}"
    );
    assert_eq!(std::fs::read(m.path("kept")).unwrap(), kept);
    assert_eq!(std::fs::read(m.path("late")).unwrap(), late);
    for i in 0..20u64 {
        assert_eq!(
            std::fs::read(m.path(&format!("w{i}"))).unwrap(),
            random_bytes(100 + i, 300_000)
        );
    }
    let check = ok(m.graviton(&["fsck", &m.source]), "fsck after gc");
    assert!(check.contains(": 0 problems"), "{check}");
}

#[test]
fn gc_of_an_embedded_volume_mounted_or_not_deletes_exactly_the_unreferenced_blocks() {
    let m = Mounted::new(&[], "");
    let size = 2 * MIB + 5;
    for i in 0..4u64 {
        std::fs::write(m.path(&format!("f{i}")), random_bytes(i, size)).unwrap();
    }
    // mounted: the daemon runs gc on the volume it has open
    std::fs::remove_file(m.path("f1")).unwrap();
    let out = ok(
        m.graviton(&["gc", "--grace", "0s", &m.source]),
        "gc through the daemon",
    );
    assert!(
        out.contains(&format!("deleted 3 blocks ({size} bytes)")),
        "{out}"
    );
    assert_eq!(std::fs::read(m.path("f3")).unwrap(), random_bytes(3, size));

    std::fs::remove_file(m.path("f3")).unwrap();
    m.unmount();
    let (stored, referenced) = blocks(&m.source);
    let garbage: u64 = stored.difference(&referenced).map(|k| k.size as u64).sum();
    assert_eq!(garbage, size as u64, "one file's blocks are garbage");
    let out = ok(m.graviton(&["gc", "--grace", "0s", &m.source]), "gc");
    assert!(
        out.contains(&format!("deleted 3 blocks ({garbage} bytes)")),
        "{out}"
    );
    let (after, referenced) = blocks(&m.source);
    assert_eq!(
        after, referenced,
        "stored blocks are exactly the referenced ones"
    );

    m.mount();
    for i in [0u64, 2] {
        assert_eq!(
            std::fs::read(m.path(&format!("f{i}"))).unwrap(),
            random_bytes(i, size)
        );
    }
}

/// A store where gc deletes a block the moment a writer's store finds it already there.
struct GcRightAfterTheDuplicate(graviton::store::MemoryBlockStore);

impl graviton::store::StoreLayer for GcRightAfterTheDuplicate {
    fn inner(&self) -> &dyn graviton::store::BlockStore {
        &self.0
    }
    fn put(
        &self,
        key: &BlockKey,
        data: &[u8],
    ) -> Result<graviton::store::PutOutcome, graviton::store::StoreError> {
        use graviton::store::BlockStore;
        let outcome = self.0.put(key, data)?;
        if outcome == graviton::store::PutOutcome::Duplicate {
            self.0.delete(key)?;
        }
        Ok(outcome)
    }
}

#[test]
fn a_writer_stores_again_a_copy_gc_deletes_as_the_writer_finds_it() {
    use graviton::store::BlockStore;
    // garbage that a new file is about to reference again: the writer's store finds the copy,
    // and gc deletes it right then
    let content = random_bytes(7, MIB);
    let store = std::sync::Arc::new(GcRightAfterTheDuplicate(
        graviton::store::MemoryBlockStore::new(),
    ));
    let key = BlockKey::for_data(graviton::domain::HashAlgo::Blake3, &content);
    store.0.put(&key, &content).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meta = std::sync::Arc::new(graviton::meta::RocksMetaStore::open(dir.path()).unwrap());
    let cfg = graviton::vfs::FsConfig::new(
        graviton::domain::HashAlgo::Blake3,
        "fixed-1m".parse().unwrap(),
    );
    let fs = graviton::vfs::Fs::new(meta, store.clone(), cfg).unwrap();
    let (ino, fh) = common::create(&fs, "again");
    common::write_all(&fs, fh, 0, &content, MIB);
    fs.release(fh).unwrap();
    assert!(
        store.exists(&key).unwrap(),
        "the writer stored the block again"
    );
    let fh = fs.open(ino, graviton::vfs::OpenFlags::READ).unwrap();
    assert!(common::read_all(&fs, fh, 0, MIB as u64) == content);
}

/// Bytes in the files under `dir`, at any depth.
fn bytes_under(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => bytes_under(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_mount_of_an_embedded_volume_collects_its_own_garbage() {
    // the shortest grace period a mount takes: a minute
    let m = Mounted::new(&[], "gc_every=1s,gc_grace=1m");
    let blocks_dir = m.vol.join("blocks");
    let kept = random_bytes(1, MIB);
    std::fs::write(m.path("kept"), &kept).unwrap();
    std::fs::write(m.path("gone"), random_bytes(2, 8 * MIB)).unwrap();
    let before = bytes_under(&blocks_dir);
    assert!(before >= 9 * MIB as u64, "both files stored: {before}");
    std::fs::remove_file(m.path("gone")).unwrap();

    // marked by the first run after the removal, deleted by the first run a minute later
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut now = before;
    while now > 2 * MIB as u64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = bytes_under(&blocks_dir);
    }
    assert!(
        now <= 2 * MIB as u64,
        "the deleted file's blocks went without a `graviton gc`: {before} bytes, then {now}"
    );
    assert_eq!(std::fs::read(m.path("kept")).unwrap(), kept);
    m.unmount();
    let (stored, referenced) = blocks(&m.source);
    assert_eq!(
        stored, referenced,
        "no garbage left, nothing referenced lost"
    );
}

/// fio writes 2 GiB (8 files) into the mount while `graviton gc --grace 0s` runs over and
/// over; after a remount every byte verifies and fsck finds nothing wrong. Blocks stored but
/// not yet committed are pinned (`meta::pins`), so no grace period is needed to spare them.
fn gc_with_no_grace_spares_every_block_being_written(m: &Mounted) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let fio = |extra: &[&str]| {
        let dir = format!("--directory={}", m.mnt.display());
        let mut args = vec![
            "--name=gcrace",
            dir.as_str(),
            "--rw=write",
            "--bs=1M",
            "--size=256M",
            "--numjobs=8",
            "--ioengine=psync",
            "--verify=crc32c",
            "--group_reporting",
        ];
        args.extend_from_slice(extra);
        common::mounted::run("fio", &args, m.dir.path())
    };
    let runs = std::thread::scope(|s| {
        let gc = s.spawn(|| {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ok(m.graviton(&["gc", "--grace", "0s", &m.source]), "gc");
                runs += 1;
            }
            runs
        });
        let written = fio(&["--do_verify=0"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = gc.join().unwrap();
        ok(written, "fio write");
        runs
    });
    assert!(runs >= 2, "gc ran {runs} times during the write");
    m.unmount();
    m.mount();
    ok(fio(&["--verify_only"]), "fio verify after a remount");
    let check = ok(m.graviton(&["fsck", &m.source]), "fsck");
    assert!(check.contains(": 0 problems"), "{check}");
}

#[test]
fn gc_with_no_grace_spares_blocks_in_flight_on_an_embedded_volume() {
    gc_with_no_grace_spares_every_block_being_written(&Mounted::new(&[], "gc_every=off"));
}

#[test]
fn gc_with_no_grace_from_another_process_spares_blocks_in_flight_on_a_postgresql_volume() {
    graviton_testkit::needs_servers!();
    gc_with_no_grace_spares_every_block_being_written(&Mounted::new_pg(""));
}
