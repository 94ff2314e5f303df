//! The power-cut promises: after a power cut, fsync'd content is there, and no file names a
//! block that is not on disk: each file closed before the cut reads its old or its new
//! content, never EIO.
//!
//! The cut is simulated through the local block store's `Disk` layer, which records which
//! block files a sync made durable and, at the cut, deletes every other one (a page cache
//! lost with the power). The metadata is kept whole: the worst case for this promise, since
//! RocksDB's log and PostgreSQL's commits may reach the disk before block files do.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{CTX, random_bytes, read_all, write_all};
use graviton::domain::{DEFAULT_CHUNKER, HashAlgo};
use graviton::meta::ROOT_INO;
use graviton::store::local::Disk;
use graviton::vfs::{Fs, OpenFlags};
use graviton::volume::{Source, Volume};

/// A disk that forgets, at `cut`, every file a sync did not make durable: a file is durable
/// once its bytes were synced (fsync, or a syncfs after it was written) and its name too (its
/// folder synced after it appeared, or a syncfs).
struct PowerCutDisk {
    root: PathBuf,
    content: Mutex<HashSet<PathBuf>>,
    named: Mutex<HashSet<PathBuf>>,
    dead: AtomicBool,
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

impl PowerCutDisk {
    fn new(root: PathBuf) -> PowerCutDisk {
        PowerCutDisk {
            root,
            content: Mutex::default(),
            named: Mutex::default(),
            dead: AtomicBool::new(false),
        }
    }

    fn alive(&self) -> std::io::Result<()> {
        match self.dead.load(Ordering::SeqCst) {
            true => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            false => Ok(()),
        }
    }

    /// The power goes: block files not durable are gone, and the disk takes no more syncs.
    /// Returns how many files were lost.
    fn cut(&self) -> usize {
        self.dead.store(true, Ordering::SeqCst);
        let (content, named) = (self.content.lock().unwrap(), self.named.lock().unwrap());
        let mut files = Vec::new();
        files_under(&self.root, &mut files);
        let mut lost = 0;
        for f in files {
            if f.starts_with(self.root.join("tmp")) {
                continue;
            }
            if !content.contains(&f) || !named.contains(&f) {
                std::fs::remove_file(&f).unwrap();
                lost += 1;
            }
        }
        lost
    }
}

impl Disk for PowerCutDisk {
    fn fsync(&self, path: &Path) -> std::io::Result<()> {
        self.alive()?;
        std::fs::File::open(path)?.sync_all()?;
        if path.is_dir() {
            let mut named = self.named.lock().unwrap();
            for e in std::fs::read_dir(path)?.flatten() {
                named.insert(e.path());
            }
        } else {
            self.content.lock().unwrap().insert(path.to_path_buf());
        }
        Ok(())
    }

    fn syncfs(&self, root: &Path) -> std::io::Result<()> {
        self.alive()?;
        let mut files = Vec::new();
        files_under(root, &mut files);
        let (mut content, mut named) = (self.content.lock().unwrap(), self.named.lock().unwrap());
        for f in files {
            content.insert(f.clone());
            named.insert(f);
        }
        Ok(())
    }
}

/// File sizes that cover every path a block takes: packed pieces, a block under 64 KiB, one
/// under 1 MiB, full 1 MiB blocks and a tail.
const SIZES: [usize; 6] = [1_000, 40_000, 200_000, 900_000, 1 << 20, (3 << 20) + 12_345];

fn write_file(fs: &Fs, name: &str, data: &[u8], fsync: bool) {
    let fh = match fs.lookup(ROOT_INO, name.as_bytes()) {
        // same size: an overwrite in place, no truncate
        Ok(inode) => fs.open(inode.ino, OpenFlags::RW).unwrap(),
        Err(_) => {
            fs.create(CTX, ROOT_INO, name.as_bytes(), 0o644, OpenFlags::RW)
                .unwrap()
                .1
        }
    };
    write_all(fs, fh, 0, data, 128 << 10);
    if fsync {
        fs.fsync(fh).unwrap();
    }
    fs.release(fh).unwrap();
}

/// Writes files (some fsync'd, then overwritten without), cuts the power, opens the volume
/// again and reads every file.
fn closed_files_survive_a_power_cut(source: &Source, blocks: PathBuf) {
    let disk = Arc::new(PowerCutDisk::new(blocks));
    let vol = Volume::open_on_disk(source, disk.clone()).unwrap();
    let fs = vol.filesystem(vol.fs_config()).unwrap();
    let old = |i: usize| random_bytes(i as u64, SIZES[i]);
    let new = |i: usize| random_bytes(100 + i as u64, SIZES[i]);
    let mut expect = Vec::new();
    for i in 0..SIZES.len() {
        write_file(&fs, &format!("kept-{i}"), &old(i), true);
        write_file(&fs, &format!("synced-{i}"), &old(i), true);
        expect.push((format!("synced-{i}"), vec![old(i)]));
    }
    for i in 0..SIZES.len() {
        write_file(&fs, &format!("kept-{i}"), &new(i), false);
        expect.push((format!("kept-{i}"), vec![old(i), new(i)]));
        write_file(&fs, &format!("new-{i}"), &new(i), false);
        expect.push((format!("new-{i}"), vec![Vec::new(), new(i)]));
    }
    let lost = disk.cut();
    drop(fs);
    drop(vol);
    eprintln!("the power cut lost {lost} block files");

    let vol = Volume::open(source).unwrap();
    let fs = vol.filesystem(vol.fs_config()).unwrap();
    for (name, allowed) in expect {
        let inode = fs.lookup(ROOT_INO, name.as_bytes()).unwrap();
        let fh = fs.open(inode.ino, OpenFlags::READ).unwrap();
        let mut got = Vec::new();
        let mut pos = 0u64;
        while pos < inode.size {
            match fs.read(fh, pos, 1 << 20) {
                Ok(b) if b.is_empty() => break,
                Ok(b) => {
                    pos += b.len() as u64;
                    got.extend_from_slice(&b);
                }
                Err(e) => panic!("{name}: reading at {pos} after the power cut: {e}"),
            }
        }
        assert!(
            allowed.contains(&got),
            "{name} reads {} bytes that are neither its old nor its new content",
            got.len()
        );
        assert_eq!(read_all(&fs, fh, 0, inode.size), got);
        fs.release(fh).unwrap();
    }
}

#[test]
fn after_a_power_cut_every_closed_file_reads_old_or_new_content_embedded() {
    let dir = common::tempdir(false);
    let source = Source::Dir(dir.path().join("vol"));
    Volume::format(&source, HashAlgo::Blake3, DEFAULT_CHUNKER, None).unwrap();
    closed_files_survive_a_power_cut(&source, dir.path().join("vol").join("blocks"));
}

#[test]
fn after_a_power_cut_every_closed_file_reads_old_or_new_content_postgresql() {
    graviton_testkit::needs_servers!();
    let url = graviton_testkit::scratch_database();
    let dir = common::tempdir(false);
    let blocks = dir.path().join("blocks");
    let source = Source::Postgres(url);
    let store = format!("file://{}", blocks.display());
    Volume::format(&source, HashAlgo::Blake3, DEFAULT_CHUNKER, Some(&store)).unwrap();
    closed_files_survive_a_power_cut(&source, blocks);
}
