//! Helpers shared by the core tests: volumes in temporary folders, file helpers.
#![allow(dead_code)]

pub mod mounted;
pub mod pg_server;
pub mod relay;
pub mod scrape;
pub mod stacks;

use std::path::Path;
use std::sync::Arc;

use graviton::domain::{Chunker, HashAlgo};
use graviton::meta::{Ino, MetaStore, ROOT_INO, RocksMetaStore};
use graviton::store::{BlockStore, LocalBlockStore, MemoryBlockStore};
use graviton::vfs::{Ctx, Fs, FsConfig, OpenFlags};

pub const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 1000,
};

/// A temporary folder, on tmpfs when the test asks for speed over realism.
pub fn tempdir(in_memory: bool) -> tempfile::TempDir {
    if in_memory && Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").expect("tempdir")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

/// RocksDB metadata in `dir/meta`, blocks in memory.
pub struct MemVolume {
    pub dir: tempfile::TempDir,
    pub store: Arc<MemoryBlockStore>,
    pub cfg: FsConfig,
}

impl MemVolume {
    pub fn new(cfg: FsConfig) -> MemVolume {
        MemVolume {
            dir: tempdir(true),
            store: Arc::new(MemoryBlockStore::new()),
            cfg,
        }
    }

    pub fn mount(&self) -> Fs {
        let meta: Arc<dyn MetaStore> =
            Arc::new(RocksMetaStore::open(self.dir.path().join("meta")).expect("open meta"));
        Fs::new(meta, self.store.clone(), self.cfg.clone()).expect("fs")
    }
}

/// PostgreSQL metadata (a scratch database on the server `scripts/test.sh` starts), blocks
/// in memory.
pub struct PgVolume {
    pub url: String,
    pub store: Arc<MemoryBlockStore>,
    pub cfg: FsConfig,
}

impl PgVolume {
    pub fn new(cfg: FsConfig) -> PgVolume {
        let url = graviton_testkit::scratch_database();
        PgVolume {
            url,
            store: Arc::new(MemoryBlockStore::new()),
            cfg,
        }
    }

    pub fn mount(&self) -> Fs {
        let meta: Arc<dyn MetaStore> =
            Arc::new(graviton::meta::PgMetaStore::connect(&self.url).expect("connect"));
        Fs::new(meta, self.store.clone(), self.cfg.clone()).expect("fs")
    }
}

/// RocksDB metadata and a local block store, both in `dir`.
pub struct DiskVolume {
    pub dir: tempfile::TempDir,
    pub cfg: FsConfig,
}

impl DiskVolume {
    pub fn new(cfg: FsConfig, in_memory: bool) -> DiskVolume {
        DiskVolume {
            dir: tempdir(in_memory),
            cfg,
        }
    }

    pub fn mount(&self) -> (Fs, Arc<LocalBlockStore>) {
        let meta: Arc<dyn MetaStore> =
            Arc::new(RocksMetaStore::open(self.dir.path().join("meta")).expect("open meta"));
        let store =
            Arc::new(LocalBlockStore::open(self.dir.path().join("blocks")).expect("open store"));
        (
            Fs::new(meta, store.clone(), self.cfg.clone()).expect("fs"),
            store,
        )
    }

    /// Bytes of block content stored.
    pub fn stored_bytes(store: &dyn BlockStore) -> u64 {
        store
            .list()
            .expect("list")
            .iter()
            .map(|k| k.size as u64)
            .sum()
    }
}

pub fn small_cfg() -> FsConfig {
    FsConfig::new(
        HashAlgo::Blake3,
        "fastcdc-1k-4k-16k".parse::<Chunker>().unwrap(),
    )
}

pub fn create(fs: &Fs, name: &str) -> (Ino, u64) {
    let (inode, fh) = fs
        .create(CTX, ROOT_INO, name.as_bytes(), 0o644, OpenFlags::RW)
        .expect("create");
    (inode.ino, fh)
}

pub fn write_all(fs: &Fs, fh: u64, mut offset: u64, data: &[u8], piece: usize) {
    for chunk in data.chunks(piece.max(1)) {
        assert_eq!(fs.write(fh, offset, chunk).expect("write"), chunk.len());
        offset += chunk.len() as u64;
    }
}

pub fn read_all(fs: &Fs, fh: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < offset + len {
        let n = ((offset + len - pos) as u32).min(1 << 20);
        let got = fs.read(fh, pos, n).expect("read");
        if got.is_empty() {
            break;
        }
        pos += got.len() as u64;
        out.extend_from_slice(&got);
    }
    out
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}
