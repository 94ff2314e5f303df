//! The kernel's read-ahead for the mount. A FUSE mount starts at the kernel's default of 128 KiB
//! (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`), and the INIT reply's `max_readahead` can
//! only lower it, so sequential reads reached the daemon as 256 KiB requests: four FUSE round
//! trips per MiB. Raised to `MAX_READAHEAD`, they arrive as 1 MiB requests.

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

/// Raises the mount's read-ahead. The INIT reply can only lower it, to `MAX_READAHEAD` at
/// most, so the setting may be written before or after the kernel takes that reply. The
/// device is found in `/proc/self/mountinfo`: the daemon never sends a request to its own
/// mount, which could wait for ever if the daemon died before answering it (a thread blocked
/// on its own mount keeps a killed daemon from ever exiting). Without the right to write the
/// setting (an unprivileged mount), the default stays.
pub fn widen(mountpoint: &Path) {
    let Some(dev) = device(mountpoint) else {
        return tracing::debug!("kernel read-ahead left as is: the mount is not in mountinfo");
    };
    let path = setting(dev);
    match std::fs::write(&path, (MAX_READAHEAD >> 10).to_string()) {
        Ok(()) => tracing::debug!("{}: {} KiB", path.display(), MAX_READAHEAD >> 10),
        Err(e) => tracing::info!(
            "kernel read-ahead stays at its default ({}: {e})",
            path.display()
        ),
    }
}

/// The device of the last mount on `mountpoint`, as `stat` shows it (`st_dev`), from
/// `/proc/self/mountinfo` (no request to the mount itself: see `widen`).
pub fn device(mountpoint: &Path) -> Option<u64> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (major, minor) = device_of(&mountinfo, mountpoint)?;
    Some(libc::makedev(major, minor))
}

/// The device (major, minor) of the last mount on `mountpoint` in a mountinfo table.
fn device_of(mountinfo: &str, mountpoint: &Path) -> Option<(u32, u32)> {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let dev = fields.nth(2)?;
            let point = fields.nth(1)?;
            (unescape(point) == want).then_some(dev)
        })
        .next_back()
        .and_then(|dev| {
            let (major, minor) = dev.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
}

/// A mountinfo path: the kernel writes space, tab, newline and backslash as `\ooo` (octal).
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
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

    #[test]
    fn finds_the_last_mount_on_a_path_in_mountinfo() {
        let table = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
46 22 0:41 / /tmp/a\\040b/mnt rw,nosuid - fuse.graviton /tmp/v rw,user_id=0
47 22 0:43 / /tmp/mnt rw - fuse.graviton /tmp/v rw
48 47 0:44 / /tmp/mnt rw - fuse.graviton /tmp/w rw
";
        assert_eq!(device_of(table, Path::new("/tmp/a b/mnt")), Some((0, 41)));
        assert_eq!(
            device_of(table, Path::new("/tmp/mnt")),
            Some((0, 44)),
            "the one on top"
        );
        assert_eq!(device_of(table, Path::new("/tmp/a")), None);
        assert_eq!(unescape("x\\134y\\011"), b"x\\y\t");
    }
}
