//! The mount's entry in libmount's table of its own (`/run/mount/utab`), which makes
//! `umount MOUNTPOINT` wait for the daemon.
//!
//! umount(8) runs a helper (`umount.<type>`) only when it looks the mount up in the mount table.
//! For a live mount without an entry of its own there, libmount takes the shortcut of asking
//! statfs(2) for the type, which for every FUSE filesystem is plain `fuse`: it unmounts without
//! a helper and returns as soon as the kernel lets go, while the daemon is still committing and
//! still holds the volume. An entry carrying `helper=graviton` sends every unmount of the mount
//! through `umount.graviton` (mount-helpers/), which waits for the daemon to exit. mount(8)
//! writes the entry (`--fake --internal-only`: it records, mounts nothing and runs no helper);
//! umount(8) removes it. A mount unmounted otherwise (`fusermount3 -u`, SIGTERM) leaves an
//! entry libmount ignores, since no mount matches it.

use std::path::Path;
use std::process::{Command, Stdio};

/// Records the mount of `source` (as the kernel shows it) on `mountpoint`, with the mount(8)
/// and systemd options it was given. Only root's mounts: the table is root's, and a user's
/// FUSE mount is unmounted with fusermount3, which runs no helper. The error says why not.
pub fn record(source: &str, mountpoint: &Path, options: &[String]) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let mut options = options.to_vec();
    options.push("helper=graviton".into());
    let out = Command::new("mount")
        .args(["--fake", "--internal-only", "--no-canonicalize"])
        .args(["-t", "fuse.graviton", "-o", &options.join(",")])
        .arg(source)
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("running mount(8): {e}")),
    }
}
