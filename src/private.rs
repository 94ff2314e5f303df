//! Files Graviton keeps on the local disk (block files, metadata, caches, staged blocks, the
//! daemon's state, dumps) are readable by their owner only: a block file holds file content,
//! whatever the permissions of the file it came from.
//!
//! - Every process runs with umask 077, so whatever it creates (RocksDB's files included) is
//!   0600 and every folder 0700.
//! - Folders that already exist (made by an earlier version, or by hand) are tightened to 0700
//!   when a volume is opened: without search permission on the folder nobody else reaches the
//!   files inside, whatever their own modes.
//! - State folders sit at predictable paths, so one that another user could have made or can
//!   write into is refused ([`state_dir`]): a planted folder or symlink would let that user
//!   feed the daemon a journal to replay or have it write through a link.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Sets this process's umask to 077 (called first thing by `main`).
pub fn restrict_umask() {
    // SAFETY: umask only changes this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (and missing parents) with mode 0700; an existing folder of ours that others
/// may read or search is tightened to 0700. One owned by someone else is left as it is.
pub fn dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() == euid() && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates the state folder `dir` (mode 0700) below `trusted`, a folder that only its owner
/// can write into (`/var/lib`, the user's home). Every folder from `trusted` down to `dir` must
/// be a real folder (no symlink), owned by this user and not writable by others; anything else
/// is refused with an error naming it. Existing folders are tightened to 0700.
pub fn state_dir(trusted: &Path, dir: &Path) -> std::io::Result<()> {
    let below = dir.strip_prefix(trusted).map_err(|_| {
        std::io::Error::other(format!(
            "{} is not below {}",
            dir.display(),
            trusted.display()
        ))
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(trusted)?;
    let mut at = trusted.to_path_buf();
    for part in below.components() {
        at.push(part);
        match std::fs::DirBuilder::new().mode(0o700).create(&at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        check_owned(&at)?;
        let meta = std::fs::symlink_metadata(&at)?;
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Refuses `path` unless it is a real folder owned by this user that nobody else can write.
pub fn check_owned(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "refusing the state folder {}: {why} (remove it, or set XDG_STATE_HOME)",
                path.display()
            ),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a folder".into());
    }
    if meta.uid() != euid() {
        return refuse(format!("it belongs to user {}, not {}", meta.uid(), euid()));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "others may write into it (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Opens `path` for appending, creating it 0600; a symlink there is refused (`O_NOFOLLOW`).
pub fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Writes `bytes` to `path` (created 0600, truncated), refusing a symlink there.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(bytes)
}

/// Creates a new file at `path` (0600); fails when anything is there already, a symlink
/// included (`O_EXCL`).
pub fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_folder_another_user_made_or_a_symlink_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let trusted = base.path();
        state_dir(trusted, &trusted.join("graviton/abc")).unwrap();
        let mode = std::fs::metadata(trusted.join("graviton/abc"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        // planted by another user
        let planted = trusted.join("graviton/planted");
        std::fs::create_dir(&planted).unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let e = state_dir(trusted, &planted.join("mnt")).unwrap_err();
        assert!(
            e.to_string().contains(&planted.display().to_string()),
            "{e}"
        );
        assert!(e.to_string().contains("belongs to user 65534"), "{e}");

        // a symlink to somewhere else
        let elsewhere = tempfile::tempdir().unwrap();
        let link = trusted.join("graviton/link");
        std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
        let e = state_dir(trusted, &link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");

        // ours, but others may write into it
        let open = trusted.join("graviton/open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(state_dir(trusted, &open).is_err());

        // ours from an earlier version, readable by others: tightened
        let old = trusted.join("graviton/old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        state_dir(trusted, &old).unwrap();
        assert_eq!(std::fs::metadata(&old).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn files_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("graviton.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(append(&link).is_err());
        assert!(write(&link, b"x").is_err());
        assert!(create_new(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        let f = dir.path().join("new");
        write(&f, b"x").unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    }
}
