//! The kernel's read-ahead for the mount. A FUSE mount starts at the kernel's default of 128 KiB
//! (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`), and the INIT reply's `max_readahead` can
//! only lower it, so sequential reads reached the daemon as 256 KiB requests: four FUSE round
//! trips per MiB. Raised to `MAX_READAHEAD`, they arrive as 1 MiB requests.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The read-ahead asked for in INIT, and set on the mount's backing device.
pub const MAX_READAHEAD: u32 = 1 << 20;

/// Where the kernel keeps the read-ahead of the filesystem on device `dev`.
fn setting(dev: u64) -> PathBuf {
    PathBuf::from(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    ))
}

/// Raises the mount's read-ahead once the kernel has taken the INIT reply (which would lower it
/// again): a thread stats the mount point, which waits until the session has answered INIT.
/// Without the right to write the setting (an unprivileged mount), the default stays.
pub fn widen(mountpoint: &Path) {
    let mountpoint = mountpoint.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("graviton-readahead".into())
        .spawn(move || {
            let dev = match std::fs::metadata(&mountpoint) {
                Ok(m) => m.dev(),
                Err(e) => return tracing::debug!("kernel read-ahead left as is: {e}"),
            };
            let path = setting(dev);
            match std::fs::write(&path, (MAX_READAHEAD >> 10).to_string()) {
                Ok(()) => tracing::debug!("{}: {} KiB", path.display(), MAX_READAHEAD >> 10),
                Err(e) => tracing::info!(
                    "kernel read-ahead stays at its default ({}: {e})",
                    path.display()
                ),
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("kernel read-ahead left as is: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_devices_bdi() {
        // FUSE mounts are anonymous devices: major 0
        let dev = libc::makedev(0, 52);
        assert_eq!(setting(dev), Path::new("/sys/class/bdi/0:52/read_ahead_kb"));
    }
}
