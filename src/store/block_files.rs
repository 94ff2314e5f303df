//! Blocks kept as files in a folder, named by their key (`algo_hex_size`: no `:` in file
//! names), as the disk cache and the write-back staging folder keep them.

use std::path::{Path, PathBuf};

use super::StoreError;
use crate::domain::BlockKey;

/// Where `key`'s file is in `dir` (a keyed block's length hidden, `BlockKey::name_len`).
pub fn path(dir: &Path, key: &BlockKey) -> PathBuf {
    dir.join(format!("{}_{}_{}", key.algo, key.hex(), key.name_len()))
}

/// The key a file's name gives.
fn key_of(name: &str) -> Option<BlockKey> {
    let mut parts = name.split('_');
    let (algo, hex, len) = (parts.next()?, parts.next()?, parts.next()?);
    match parts.next() {
        None => BlockKey::from_name(algo.parse().ok()?, hex, len),
        Some(_) => None,
    }
}

/// Creates `dir` if needed and lists the blocks in it, with their metadata. Any other file (the
/// leftover of a write that was interrupted before its rename) is deleted.
pub fn scan(
    dir: &Path,
    backend: &'static str,
) -> Result<Vec<(BlockKey, std::fs::Metadata)>, StoreError> {
    let io = |what: &str, e| StoreError::io(backend, format!("{what} {}", dir.display()), e);
    crate::private::dir(dir).map_err(|e| io("creating", e))?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io("listing", e))? {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = key_of(&name);
        match (key, entry.metadata()) {
            (Some(key), Ok(meta)) => found.push((key, meta)),
            _ => drop(std::fs::remove_file(entry.path())),
        }
    }
    Ok(found)
}
