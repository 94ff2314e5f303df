//! The mountpoint a mount is about to use: it exists, is a directory, and is not mounted,
//! unless by a daemon that died (then the dead mount is cleaned up).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Checks the mountpoint, cleaning up a mount whose daemon died.
pub fn prepare_mountpoint(mp: &Path) -> anyhow::Result<PathBuf> {
    let dead = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    match std::fs::metadata(mp) {
        Err(e) if dead(&e) => detach_dead_mount(mp)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mountpoint {} does not exist", mp.display())
        }
        Err(e) => bail!("mountpoint {}: {e}", mp.display()),
        Ok(m) if !m.is_dir() => bail!("mountpoint {} is not a directory", mp.display()),
        Ok(_) => {}
    }
    let mp = mp
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mp.display()))?;
    if let Some((fstype, source)) = fuse_mount_at(&mp) {
        // The kernel may answer stat from its cache; statfs always asks the daemon.
        match nix::sys::statfs::statfs(&mp) {
            Err(nix::Error::ENOTCONN) => detach_dead_mount(&mp)?,
            _ => bail!(
                "{} is already mounted ({fstype} from {source})",
                mp.display()
            ),
        }
    }
    Ok(mp)
}

/// The FUSE mount on `mp`, if any: (type, source).
fn fuse_mount_at(mp: &Path) -> Option<(String, String)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let escaped = mp.to_string_lossy().replace(' ', "\\040");
    mounts.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        (f.len() > 2 && f[1] == escaped && f[2].starts_with("fuse"))
            .then(|| (f[2].to_string(), f[0].to_string()))
    })
}

fn detach_dead_mount(mp: &Path) -> anyhow::Result<()> {
    eprintln!("{}: cleaning up a mount whose daemon is gone", mp.display());
    if nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH).is_ok() {
        return Ok(());
    }
    let status = Command::new("fusermount3").arg("-uz").arg(mp).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => bail!(
            "could not unmount the dead mount on {} (try `fusermount3 -uz {}`)",
            mp.display(),
            mp.display()
        ),
    }
}
