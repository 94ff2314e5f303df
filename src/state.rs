//! Where the mount daemon of a PostgreSQL volume keeps its state (write-back journal, staged
//! blocks, metadata cache, pid file, log, control socket), and how state an earlier version
//! left elsewhere is brought there.
//!
//! The base folder is `$XDG_STATE_HOME` when set; else `/var/lib` for root, whatever its HOME
//! (fstab mounts start without one, and interactive mounts must find the same journal); else
//! `~/.local/state`. Under it, `graviton/<volume id>` per volume and a folder per mountpoint
//! below that. Earlier versions used `$HOME/.local/state` for root too, and `/tmp` without a
//! HOME: a tmpfs that loses an fsync'd journal at reboot, at a path any user can take first.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The folder standing for `$XDG_STATE_HOME`.
pub fn home() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state");
    }
    match user_home() {
        Some(h) => h.join(".local/state"),
        // no home at all: a folder of this user's own, refused if someone else made it first
        None => std::env::temp_dir().join(format!("graviton-state-{}", nix::unistd::geteuid())),
    }
}

/// This user's home folder from the password database.
fn user_home() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// Where earlier versions kept state for the same base (`graviton/<id>` is appended).
fn legacy_homes() -> Vec<PathBuf> {
    let mut homes = Vec::new();
    if std::env::var_os("XDG_STATE_HOME").is_some_and(|v| !v.is_empty()) {
        return homes;
    }
    if nix::unistd::geteuid().is_root() {
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(user_home);
        homes.extend(home.map(|h| h.join(".local/state")));
    }
    homes.push(PathBuf::from("/tmp"));
    homes
}

/// Creates the state folder `dir` (below [`home`]) and checks it (`private::state_dir`); then
/// moves in what an earlier version left for this volume (`rel`: `graviton/<id>`) elsewhere.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    let base = home();
    crate::private::state_dir(&base, dir)?;
    if base.starts_with(std::env::temp_dir()) {
        // the fallback without a home: a folder anyone could have made first
        crate::private::check_owned(&base)?;
    }
    let Ok(rel) = dir.strip_prefix(&base) else {
        return Ok(());
    };
    // the volume's folder: `graviton/<id>`, whatever mountpoint folder follows
    let volume_rel: PathBuf = rel.components().take(2).collect();
    let volume_dir = base.join(&volume_rel);
    for old_home in legacy_homes() {
        let old = old_home.join(&volume_rel);
        if old != volume_dir {
            adopt(&old, &volume_dir)?;
        }
    }
    Ok(())
}

/// What must not be lost: the write-back journal and the staged blocks.
const KEPT: [&str; 2] = ["meta-journal", "writeback"];

/// Moves the journal and staged blocks found in `old` (an earlier version's state folder for
/// the same volume) into `new`. A folder another user could have planted or written into is
/// ignored, with a warning: its journal would be replayed into the volume.
pub fn adopt(old: &Path, new: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(old).is_err() {
        return Ok(());
    }
    let parent = old.parent().unwrap_or(old);
    if let Err(e) =
        crate::private::check_owned(parent).and_then(|()| crate::private::check_owned(old))
    {
        tracing::warn!(
            "not taking the state an earlier version left in {}: {e}",
            old.display()
        );
        return Ok(());
    }
    for name in KEPT {
        let from = old.join(name);
        if !has_files(&from) {
            continue;
        }
        let to = new.join(name);
        if has_files(&to) {
            anyhow::bail!(
                "{} (left by an earlier version) and {} both hold unsent changes: mount with one of them moved aside, then the other",
                from.display(),
                to.display()
            );
        }
        let _ = std::fs::remove_dir_all(&to);
        move_tree(&from, &to)?;
        eprintln!("graviton: moved {} to {}", from.display(), to.display());
        tracing::warn!("moved {} to {}", from.display(), to.display());
    }
    Ok(())
}

/// Whether `dir` holds a file at any depth.
fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| match e.file_type() {
            Ok(t) if t.is_dir() => has_files(&e.path()),
            Ok(_) => true,
            Err(_) => false,
        })
    })
}

/// Moves `from` to `to` (which does not exist): a rename, or across file systems a copy of
/// every regular file (synced, with its folder) and then the removal of `from`.
fn move_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => return sync_dir(to.parent().unwrap_or(to)),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
        Err(e) => anyhow::bail!("moving {} to {}: {e}", from.display(), to.display()),
    }
    copy_tree(from, to)?;
    sync_dir(to.parent().unwrap_or(to))?;
    std::fs::remove_dir_all(from)
        .map_err(|e| anyhow::anyhow!("removing {} after copying it: {e}", from.display()))
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    crate::private::dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            copy_tree(&src, &dst)?;
        } else if meta.is_file() && meta.uid() == nix::unistd::geteuid().as_raw() {
            let mut input = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&src)?;
            let mut output = crate::private::create_new(&dst)?;
            std::io::copy(&mut input, &mut output)?;
            output.sync_all()?;
        } else {
            tracing::warn!("not copying {}: not a regular file of ours", src.display());
        }
    }
    sync_dir(to)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| anyhow::anyhow!("syncing {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn state_with_journal(dir: &Path) {
        std::fs::create_dir_all(dir.join("meta-journal")).unwrap();
        std::fs::write(dir.join("meta-journal/00000001.log"), b"journal").unwrap();
        std::fs::create_dir_all(dir.join("writeback/segments")).unwrap();
        std::fs::write(dir.join("writeback/segments/1.seg"), b"staged").unwrap();
        std::fs::create_dir_all(dir.join("0123abcd")).unwrap();
    }

    #[test]
    fn an_earlier_versions_journal_and_staged_blocks_are_moved_in() {
        let old_home = tempfile::tempdir().unwrap();
        let new_home = tempfile::tempdir().unwrap();
        let old = old_home.path().join("graviton/vol");
        let new = new_home.path().join("graviton/vol");
        state_with_journal(&old);
        crate::private::state_dir(new_home.path(), &new).unwrap();
        adopt(&old, &new).unwrap();
        assert_eq!(
            std::fs::read(new.join("meta-journal/00000001.log")).unwrap(),
            b"journal"
        );
        assert_eq!(
            std::fs::read(new.join("writeback/segments/1.seg")).unwrap(),
            b"staged"
        );
        assert!(!old.join("meta-journal").exists());
        // across file systems: copied, then removed
        let old2 = tempfile::tempdir_in("/dev/shm").unwrap();
        let old2 = old2.path().join("graviton/vol2");
        state_with_journal(&old2);
        let new2 = new_home.path().join("graviton/vol2");
        crate::private::state_dir(new_home.path(), &new2).unwrap();
        adopt(&old2, &new2).unwrap();
        assert_eq!(
            std::fs::read(new2.join("writeback/segments/1.seg")).unwrap(),
            b"staged"
        );
        assert!(!old2.join("writeback").exists());
    }

    #[test]
    fn a_folder_another_user_could_plant_is_not_adopted() {
        let old_home = tempfile::tempdir().unwrap();
        let new_home = tempfile::tempdir().unwrap();
        let old = old_home.path().join("graviton/vol");
        state_with_journal(&old);
        std::fs::set_permissions(
            old_home.path().join("graviton"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        let new = new_home.path().join("graviton/vol");
        crate::private::state_dir(new_home.path(), &new).unwrap();
        adopt(&old, &new).unwrap();
        assert!(
            !new.join("meta-journal").exists(),
            "a planted journal was taken"
        );
        assert!(old.join("meta-journal").exists());
    }
}
