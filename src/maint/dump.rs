//! `graviton dump`: a volume's metadata as JSON lines, for backup and for moving a volume
//! between engines (`graviton load` restores it). Blocks stay where they are: a dump names
//! them by key, and the volume it is loaded into must use a block store that holds them.
//!
//! The file is one [`Record`] per line: a header with the volume's settings, then every inode
//! reachable from the root (once, however many names it has) with its extents, xattrs and
//! symlink target, and every directory entry. Names and values that are not UTF-8 are written
//! as hex. Inodes keep their numbers. The dump is read in one transaction: a consistent copy
//! even while a PostgreSQL volume is mounted.

use std::collections::HashSet;
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::domain::Extent;
use crate::meta::{FileKind, Ino, Inode, MetaRead, ROOT_INO};
use crate::volume::Volume;

/// The first line's `format`: what `graviton load` understands.
pub const DUMP_FORMAT: u32 = 1;
/// The format of a dump of a volume whose blocks are frames (`--compress`): a build that
/// predates frames must refuse it, or it would load it over the same block store as a plain
/// volume, which reads each framed block as damaged.
pub const FRAMED_DUMP_FORMAT: u32 = 2;

/// Whether this build reads dumps of `format`.
pub fn readable(format: u32) -> anyhow::Result<()> {
    anyhow::ensure!(
        format == DUMP_FORMAT || format == FRAMED_DUMP_FORMAT,
        "dump format {format} is not one this graviton reads ({DUMP_FORMAT} or {FRAMED_DUMP_FORMAT})"
    );
    Ok(())
}

/// Bytes as text when they are UTF-8, else as hex: names and xattr values stay readable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bytes {
    Text(String),
    Hex { hex: String },
}

impl Bytes {
    pub fn new(b: &[u8]) -> Bytes {
        match std::str::from_utf8(b) {
            Ok(s) => Bytes::Text(s.to_string()),
            Err(_) => Bytes::Hex {
                hex: hex::encode(b),
            },
        }
    }

    pub fn to_vec(&self) -> anyhow::Result<Vec<u8>> {
        Ok(match self {
            Bytes::Text(s) => s.as_bytes().to_vec(),
            Bytes::Hex { hex } => hex::decode(hex)?,
        })
    }
}

/// An extent, its block named by the key's text (`algo:hex:size`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedSpan {
    pub offset: u64,
    pub block: String,
    pub block_offset: u32,
    pub len: u32,
}

impl MappedSpan {
    pub fn new(e: &Extent) -> MappedSpan {
        MappedSpan {
            offset: e.offset,
            block: e.key.to_string(),
            block_offset: e.block_offset,
            len: e.len,
        }
    }

    pub fn extent(&self) -> anyhow::Result<Extent> {
        Ok(Extent {
            offset: self.offset,
            key: self.block.parse()?,
            block_offset: self.block_offset,
            len: self.len,
        })
    }
}

/// One line of a dump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Header {
        format: u32,
        hash: String,
        chunker: String,
        /// Where the blocks were (for the reader; `load` does not use it).
        block_store: String,
        /// Blocks shorter than this were kept in the volume's database: they travel in the
        /// dump as `block` records, since the database does not move with it.
        #[serde(default)]
        small_blocks: u32,
        /// How the volume's blocks were stored (`--compress`): a target that loads the dump
        /// with the same block store must read them the same way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<String>,
        /// An encrypted volume's data key, wrapped under its passphrase (never in the clear):
        /// the volume a dump is loaded into takes it, and `block` records are sealed with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_key: Option<String>,
        /// The settings `graviton settings` changes (trash, folder names), as set.
        #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        settings: std::collections::BTreeMap<String, String>,
    },
    Inode(Inode),
    Entry {
        parent: Ino,
        name: Bytes,
        ino: Ino,
        kind: FileKind,
        cookie: u64,
    },
    Extents {
        ino: Ino,
        extents: Vec<MappedSpan>,
    },
    Xattr {
        ino: Ino,
        name: Bytes,
        value: Bytes,
    },
    Symlink {
        ino: Ino,
        target: Bytes,
    },
    /// A block that lived in the dumped volume's database (hex; sealed as the volume's local
    /// copies are, `AtRest`, when the volume is encrypted).
    Block {
        key: String,
        data: String,
    },
    /// A quota's limits (`vfs::quota`); `load` makes it again, counting what it loaded.
    Quota {
        key: crate::vfs::quota::Key,
        bytes_limit: u64,
        inodes_limit: u64,
    },
    /// The last line: a dump without it was cut short.
    End {
        inodes: u64,
        entries: u64,
        #[serde(default)]
        blocks: u64,
    },
}

/// Writes the dump; returns the numbers of inodes and entries written.
pub fn dump(vol: &Volume, out: &mut dyn Write) -> anyhow::Result<(u64, u64)> {
    let mut line = |r: &Record| -> anyhow::Result<()> {
        serde_json::to_writer(&mut *out, r)?;
        out.write_all(b"\n")?;
        Ok(())
    };
    line(&Record::Header {
        format: match vol.settings.compression {
            None => DUMP_FORMAT,
            Some(_) => FRAMED_DUMP_FORMAT,
        },
        hash: vol.settings.hash.clone(),
        chunker: vol.settings.chunker.clone(),
        block_store: crate::volume::redact(&vol.settings.block_store),
        small_blocks: vol.settings.small_blocks,
        compression: vol.settings.compression.clone(),
        data_key: match vol.encrypted() {
            true => vol.meta.setting(crate::volume::DATA_KEY)?,
            false => None,
        },
        settings: {
            let mut set = std::collections::BTreeMap::new();
            for name in super::settings::CHANGEABLE {
                if let Some(v) = vol.meta.setting(name)? {
                    set.insert(name.to_string(), v);
                }
            }
            set
        },
    })?;
    let mut in_db: std::collections::BTreeSet<crate::domain::BlockKey> = Default::default();
    let mut tx = vol.meta.snapshot()?;
    let tx: &mut dyn MetaRead = tx.as_mut();
    let bar = super::progress::spinner("inodes");
    bar.set_prefix("dump");
    let (mut inodes, mut entries) = (0u64, 0u64);
    let mut seen: HashSet<Ino> = HashSet::new();
    let mut todo = vec![ROOT_INO];
    while let Some(ino) = todo.pop() {
        if !seen.insert(ino) {
            continue;
        }
        let Some(inode) = tx.inode(ino)? else {
            anyhow::bail!("inode {ino} is named but missing (run `graviton fsck --repair`)");
        };
        line(&Record::Inode(inode.clone()))?;
        inodes += 1;
        bar.inc(1);
        for name in tx.xattr_names(ino)? {
            if name == crate::vfs::quota::RESERVED {
                // held for a mount's open file: nothing to carry
                continue;
            }
            if let Some(value) = tx.xattr(ino, &name)? {
                line(&Record::Xattr {
                    ino,
                    name: Bytes::new(&name),
                    value: Bytes::new(&value),
                })?;
            }
        }
        match inode.kind {
            FileKind::File => {
                let extents = tx.extents(ino, 0..u64::MAX)?;
                in_db.extend(
                    extents
                        .iter()
                        .map(|e| e.key)
                        .filter(|k| k.size < vol.settings.small_blocks),
                );
                if !extents.is_empty() {
                    let extents = extents.iter().map(MappedSpan::new).collect();
                    line(&Record::Extents { ino, extents })?;
                }
            }
            FileKind::Symlink => {
                if let Some(target) = tx.symlink_target(ino)? {
                    line(&Record::Symlink {
                        ino,
                        target: Bytes::new(&target),
                    })?;
                }
            }
            FileKind::Dir => {
                super::each_entry_page(tx, ino, |_, page| {
                    for (name, e) in page {
                        line(&Record::Entry {
                            parent: ino,
                            name: Bytes::new(name),
                            ino: e.ino,
                            kind: e.kind,
                            cookie: e.cookie,
                        })?;
                        entries += 1;
                        todo.push(e.ino);
                    }
                    Ok(())
                })?;
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    for key in crate::vfs::quota::map(tx)? {
        if let Some(r) = crate::vfs::quota::record(tx, key)? {
            line(&Record::Quota {
                key,
                bytes_limit: r.bytes_limit,
                inodes_limit: r.inodes_limit,
            })?;
        }
    }
    let bar = super::progress::bar(in_db.len() as u64, "blocks");
    bar.set_prefix("dump: blocks kept in the database");
    for key in &in_db {
        line(&Record::Block {
            key: key.to_string(),
            data: hex::encode(vol.at_rest.seal(key, &vol.store.get(key)?)),
        })?;
        bar.inc(1);
    }
    line(&Record::End {
        inodes,
        entries,
        blocks: in_db.len() as u64,
    })?;
    bar.finish_and_clear();
    out.flush()?;
    Ok((inodes, entries))
}
