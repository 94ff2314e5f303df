//! `graviton settings`: shows a volume's settings and changes those that may change after
//! `format`: the trash (`trash_days`, `trash_dir`) and the snapshots folder's name
//! (`snapshot_dir`). Mounts read the trash settings again within their `trash_every`.

use std::io::Write;

use crate::meta::{ROOT_INO, is_frozen};
use crate::vfs::tree::{snapshot, trash};
use crate::volume::Volume;

/// The settings `set` may change.
pub const CHANGEABLE: [&str; 3] = [
    trash::DAYS_SETTING,
    trash::FOLDER_SETTING,
    snapshot::FOLDER_SETTING,
];

/// Writes every setting, one `name = value` a line, secrets left out.
pub fn show(vol: &Volume, out: &mut dyn Write) -> anyhow::Result<()> {
    let meta = vol.meta.as_ref();
    let defaults = [
        (trash::DAYS_SETTING, "0"),
        (trash::FOLDER_SETTING, trash::DEFAULT_FOLDER),
        (snapshot::FOLDER_SETTING, snapshot::DEFAULT_FOLDER),
    ];
    for name in ["hash", "chunker", "compression", "block_store", "replicas"] {
        if let Some(v) = meta.setting(name)? {
            writeln!(out, "{name} = {v}")?;
        }
    }
    for (name, default) in defaults {
        let v = meta.setting(name)?.unwrap_or_else(|| default.to_string());
        writeln!(out, "{name} = {v}")?;
    }
    Ok(())
}

/// Whether the folder a feature keeps at the root under the name in `setting` exists.
fn folder_exists(vol: &Volume, name: &[u8]) -> anyhow::Result<bool> {
    let entry = vol.meta.read()?.dirent(ROOT_INO, name)?;
    Ok(entry.is_some_and(|e| is_frozen(e.ino)))
}

/// Changes setting `name`. Turning the trash on makes its folder, and fails while an
/// ordinary entry has its name; a folder's name changes only while the folder does not exist.
pub fn set(vol: &Volume, name: &str, value: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let meta = vol.meta.as_ref();
    anyhow::ensure!(
        CHANGEABLE.contains(&name),
        "{name} cannot change after format (these can: {})",
        CHANGEABLE.join(", ")
    );
    match name {
        trash::DAYS_SETTING => {
            let keep = trash::parse_days(value)
                .ok_or_else(|| anyhow::anyhow!("{name}: {value:?} is not a number of days"))?;
            if !keep.is_zero() {
                let folder = trash::folder_name(meta)?;
                crate::vfs::tree::reserved_folder(meta, &folder, 0o700, trash::FOLDER_SETTING)?;
            }
        }
        _ => {
            anyhow::ensure!(
                crate::vfs::tree::is_file_name(value),
                "{name}: {value:?} is not a file name"
            );
            let (current, other) = match name {
                trash::FOLDER_SETTING => (trash::folder_name(meta)?, snapshot::folder_name(meta)?),
                _ => (snapshot::folder_name(meta)?, trash::folder_name(meta)?),
            };
            anyhow::ensure!(
                value.as_bytes() != other,
                "{name}: {value} names the other feature's folder"
            );
            anyhow::ensure!(
                !folder_exists(vol, &current)?,
                "{name}: the folder /{} exists; its name changes only while it does not",
                String::from_utf8_lossy(&current)
            );
        }
    }
    meta.put_setting(name, value)?;
    writeln!(out, "{name} = {value}")?;
    Ok(())
}
