//! The production stacks, each built by the composition root as `graviton format` and
//! `graviton mount` build it (`Volume::format`, `Volume::open`, `stack::mount_layers`), for
//! the tests that run over every one of them.

use std::path::PathBuf;
use std::time::Duration;

use graviton::domain::HashAlgo;
use graviton::meta::SessionInfo;
use graviton::vfs::{Fs, FsConfig};
use graviton::volume::stack::{MountLayers, mount_layers};
use graviton::volume::{POSTGRES_STORE, Source, Volume};

use super::tempdir;

/// The passphrase of `Stack::Sealed` volumes.
const PASSPHRASE: &[u8] = b"a passphrase for the sealed stack";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// The default: RocksDB, small blocks in RocksDB and the rest in files.
    Embedded,
    /// RocksDB, blocks in S3 and a copy of each in files.
    EmbeddedReplicated,
    /// PostgreSQL behind the mount's metadata cache, blocks in PostgreSQL.
    Postgres,
    /// PostgreSQL behind the metadata cache, blocks in S3 behind a disk cache.
    PostgresS3,
    /// `-o writeback,cache_dir=…`: a write-behind journal in front of the metadata cache, and
    /// a write-back staging folder in front of the disk cache.
    PostgresS3Writeback,
    /// `format --compress zstd --encrypt`: PostgreSQL behind the metadata cache, blocks as
    /// compressed, sealed frames in S3 (behind a disk cache, itself sealed) and a copy of each
    /// in files.
    Sealed,
}

impl Stack {
    /// Whether the stack needs the servers `scripts/test.sh` starts (PostgreSQL, S3).
    pub fn needs_servers(self) -> bool {
        self != Stack::Embedded
    }
}

/// A volume on one stack, formatted in a folder of its own (or a scratch database).
pub struct StackVolume {
    pub stack: Stack,
    pub source: Source,
    dir: tempfile::TempDir,
    pub cfg: FsConfig,
}

impl StackVolume {
    pub fn new(stack: Stack, cfg: FsConfig) -> StackVolume {
        let dir = tempdir(true);
        let s3 = graviton_testkit::s3_scratch_url;
        let (source, blocks, replicas) = match stack {
            Stack::Embedded => (Source::Dir(dir.path().join("vol")), None, vec![]),
            Stack::EmbeddedReplicated => {
                let files = format!("file://{}", dir.path().join("copy").display());
                (Source::Dir(dir.path().join("vol")), Some(s3()), vec![files])
            }
            Stack::Postgres => (
                Source::Postgres(graviton_testkit::scratch_database()),
                Some(POSTGRES_STORE.to_string()),
                vec![],
            ),
            Stack::PostgresS3 | Stack::PostgresS3Writeback => (
                Source::Postgres(graviton_testkit::scratch_database()),
                Some(s3()),
                vec![],
            ),
            Stack::Sealed => {
                let files = format!("file://{}", dir.path().join("copy").display());
                (
                    Source::Postgres(graviton_testkit::scratch_database()),
                    Some(s3()),
                    vec![files],
                )
            }
        };
        let compression = match stack {
            Stack::Sealed => graviton::domain::frames::Compression::Zstd(3),
            _ => Default::default(),
        };
        let small_blocks = match stack {
            Stack::Embedded => graviton::volume::embedded_small_blocks(&cfg.chunker),
            _ => 0,
        };
        Volume::format_replicated(
            &source,
            HashAlgo::Blake3,
            cfg.chunker,
            blocks.as_deref(),
            &replicas,
            graviton::volume::BlockFormat {
                small_blocks,
                compression,
                passphrase: (stack == Stack::Sealed).then_some(PASSPHRASE),
            },
        )
        .unwrap_or_else(|e| panic!("formatting a {stack:?} volume: {e}"));
        if stack == Stack::Sealed {
            // how every later opening in this process unlocks it, as a terminal would
            graviton::volume::unlock::ask_with(|_, _| Ok(PASSPHRASE.to_vec().into()));
        }
        StackVolume {
            stack,
            source,
            dir,
            cfg,
        }
    }

    /// The volume opened with the layers a mount puts on it, its session begun.
    pub fn open(&self) -> Volume {
        let mut vol = Volume::open(&self.source).expect("open");
        let remote = matches!(
            self.stack,
            Stack::PostgresS3 | Stack::PostgresS3Writeback | Stack::Sealed
        );
        let layers = MountLayers {
            meta_cache: true,
            disk_cache: remote.then(|| (self.dir.path().join("cache"), 64 << 20)),
            writeback: self.stack == Stack::PostgresS3Writeback,
            session: SessionInfo {
                host: "test".into(),
                pid: std::process::id(),
                mountpoint: self.mountpoint().display().to_string(),
                timeout: Duration::from_secs(30),
            },
        };
        mount_layers(&mut vol, &self.mountpoint(), &layers).expect("mount layers");
        vol
    }

    /// The filesystem core over the opened volume, configured as a mount configures it.
    pub fn mount(&self) -> Fs {
        let vol = self.open();
        let mut cfg = self.cfg.clone();
        cfg.ranged_reads = vol.ranged_reads();
        vol.filesystem(cfg).expect("filesystem")
    }

    fn mountpoint(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

/// A volume the core tests can mount again and again.
pub trait Remountable {
    fn mount(&self) -> Fs;
}

impl Remountable for StackVolume {
    fn mount(&self) -> Fs {
        StackVolume::mount(self)
    }
}

impl Drop for StackVolume {
    /// A PostgreSQL volume's state folder (journals, caches) is named after its database,
    /// which no other test uses.
    fn drop(&mut self) {
        if let Source::Postgres(_) = self.source {
            let _ = std::fs::remove_dir_all(self.source.state_dir());
        }
    }
}
