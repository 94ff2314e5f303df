//! Restores a `graviton dump` into an empty volume of either engine.
//!
//! The target is formatted first, with a block store that holds the dump's blocks (the same
//! store as the dumped volume, or a copy of it). The whole dump is checked before anything is
//! written (see `dump_check`): a broken or hostile one is refused and the target left as it
//! was. A dump on standard input is copied to a private temporary file for that. Inodes keep
//! their numbers; new ones are allocated above them. After loading, every block the files
//! name is looked up in the target's store, and missing ones are an error.

use std::collections::HashSet;
use std::io::BufRead;

use crate::domain::BlockKey;
use crate::domain::extent::Splice;
use crate::meta::{DirEntry, Ino, MetaTxn, ROOT_INO};
use crate::volume::Volume;

use super::dump::{FRAMED_DUMP_FORMAT, Record};

/// Records written per transaction.
const BATCH: usize = 512;

#[derive(Debug, Default)]
pub struct LoadReport {
    pub inodes: u64,
    pub entries: u64,
    /// Blocks the dump carried (those its volume kept in its database).
    pub blocks: u64,
    pub missing_blocks: u64,
}

fn parse(line: std::io::Result<String>, n: usize) -> anyhow::Result<Record> {
    let line = line?;
    serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("dump line {n}: {e}"))
}

/// Long because records come in one pass, in the dump's order, each kind with its own few
/// lines of restoring.
pub fn load(vol: &Volume, input: Box<dyn BufRead>) -> anyhow::Result<LoadReport> {
    if let Some(shared) = vol.meta.shared()
        && !shared.sessions()?.is_empty()
    {
        anyhow::bail!(
            "{} is mounted: load restores into a volume nothing uses",
            vol.source.display()
        );
    }
    let mut probe = vol.meta.read()?;
    if !probe.list_dir(ROOT_INO, 2, 1)?.is_empty() || vol.meta.usage()?.inodes > 1 {
        anyhow::bail!(
            "{} is not empty: load restores into a freshly formatted volume",
            vol.source.display()
        );
    }
    drop(probe);
    let mut lines = input.lines().enumerate();
    match lines.next() {
        Some((n, line)) => match parse(line, n + 1)? {
            Record::Header {
                format,
                hash,
                chunker,
                compression,
                settings,
                ..
            } => {
                super::dump::readable(format)?;
                anyhow::ensure!(
                    (format == FRAMED_DUMP_FORMAT) == compression.is_some(),
                    "the dump's header is damaged: format {format} with compression {compression:?}"
                );
                anyhow::ensure!(
                    hash == vol.settings.hash,
                    "the dump's blocks are named by {hash}, the target's by {}: format the target with --hash {hash}",
                    vol.settings.hash
                );
                // frames name their own compression: any framed target reads a framed
                // volume's blocks, a plain one none of them (nor the other way round)
                let stored_as = |c: &Option<String>| c.clone().unwrap_or_else(|| "none".into());
                anyhow::ensure!(
                    compression.is_some() == vol.settings.compression.is_some(),
                    "the dump's blocks were stored with --compress {}, the target's are stored with --compress {}: format the target with --compress {}",
                    stored_as(&compression),
                    stored_as(&vol.settings.compression),
                    stored_as(&compression)
                );
                for (name, value) in &settings {
                    if super::settings::CHANGEABLE.contains(&name.as_str()) {
                        vol.meta.put_setting(name, value)?;
                    }
                }
                if chunker != vol.settings.chunker {
                    // new writes cut blocks as the dumped volume did, so they dedup with it
                    vol.meta.put_setting("chunker", &chunker)?;
                    eprintln!("chunker set to {chunker}, as in the dump");
                }
            }
            _ => anyhow::bail!("not a graviton dump: the first line is not its header"),
        },
        None => anyhow::bail!("the dump is empty"),
    }

    let bar = super::progress::spinner("records");
    bar.set_prefix("load");
    let mut report = LoadReport::default();
    let mut max_ino: Ino = ROOT_INO;
    let mut ended = false;
    let mut quotas = Vec::new();
    let mut tx: Box<dyn MetaTxn + '_> = vol.meta.begin()?;
    let mut in_tx = 0;
    for (n, line) in lines {
        anyhow::ensure!(!ended, "dump line {}: records after the end record", n + 1);
        match parse(line, n + 1)? {
            Record::Header { .. } => anyhow::bail!("dump line {}: a second header", n + 1),
            Record::Inode(inode) => {
                // a snapshot's numbers are ordinary ones with the frozen bit set
                max_ino = max_ino.max(inode.ino & !crate::meta::FROZEN);
                tx.put_inode(&inode)?;
                report.inodes += 1;
            }
            Record::Entry {
                parent,
                name,
                ino,
                kind,
                cookie,
            } => {
                tx.put_dirent(parent, &name.to_vec()?, &DirEntry { ino, kind, cookie })?;
                report.entries += 1;
            }
            Record::Extents { ino, extents } => {
                let insert = extents
                    .iter()
                    .map(|e| e.extent())
                    .collect::<anyhow::Result<Vec<_>>>()?;
                tx.apply_splice(
                    ino,
                    &Splice {
                        remove: Vec::new(),
                        insert,
                    },
                )?;
            }
            Record::Xattr { ino, name, value } => {
                tx.put_xattr(ino, &name.to_vec()?, &value.to_vec()?)?
            }
            Record::Symlink { ino, target } => tx.put_symlink_target(ino, &target.to_vec()?)?,
            Record::Block { key, data } => {
                let key: BlockKey = key.parse()?;
                let data = vol.at_rest.open(&key, hex::decode(&data)?);
                anyhow::ensure!(
                    key.matches(&data),
                    "dump line {}: block {key} does not match its key",
                    n + 1
                );
                vol.store.put(&key, &data)?;
                report.blocks += 1;
            }
            Record::Quota {
                key,
                bytes_limit,
                inodes_limit,
            } => quotas.push((key, bytes_limit, inodes_limit)),
            Record::End {
                inodes,
                entries,
                blocks,
            } => {
                anyhow::ensure!(
                    (inodes, entries, blocks) == (report.inodes, report.entries, report.blocks),
                    "the dump's end record counts {inodes} inodes, {entries} entries and {blocks} blocks, its lines {}, {} and {}",
                    report.inodes,
                    report.entries,
                    report.blocks
                );
                ended = true;
            }
        }
        bar.inc(1);
        in_tx += 1;
        if in_tx == BATCH {
            tx.commit()?;
            tx = vol.meta.begin()?;
            in_tx = 0;
        }
    }
    tx.commit()?;
    bar.finish_and_clear();
    anyhow::ensure!(
        ended,
        "the dump is incomplete (no end record): what it had is loaded; format the target again before loading a complete dump"
    );
    vol.meta.reserve_inos_through(max_ino)?;
    for (key, bytes, inodes) in quotas {
        // counted afresh from what was loaded
        crate::vfs::quota::scan::set(vol.meta.as_ref(), key, bytes, inodes)?;
    }
    vol.meta.sync()?;

    let stored: HashSet<BlockKey> = vol.store.list()?.into_iter().collect();
    report.missing_blocks = vol
        .meta
        .referenced_blocks()?
        .iter()
        .filter(|k| !stored.contains(k))
        .count() as u64;
    Ok(report)
}
