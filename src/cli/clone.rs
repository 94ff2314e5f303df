//! `graviton clone SRC DST`: asks the mount holding both paths (an ioctl, `fuse::ioctl`) to
//! copy SRC to DST as metadata only, with the caller's permissions.

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use crate::fuse::ioctl;

#[derive(Args, Debug)]
pub struct CloneArgs {
    /// The file or directory to copy (a symlink is copied as a symlink).
    pub src: PathBuf,
    /// The new name; it must not exist, on the same mount as SRC.
    pub dst: PathBuf,
}

/// `path` with its directory made canonical (symlinks resolved) and its last component kept.
fn canonical_parent(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: names no file", path.display()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}", dir.display()))?;
    Ok(dir.join(name))
}

/// The root of the mount holding directory `dir`: the highest ancestor on the same device.
fn mount_root(dir: &Path) -> anyhow::Result<PathBuf> {
    let dev = std::fs::metadata(dir)
        .with_context(|| format!("{}", dir.display()))?
        .dev();
    let mut root = dir.to_path_buf();
    while let Some(up) = root.parent() {
        match std::fs::metadata(up) {
            Ok(m) if m.dev() == dev => root = up.to_path_buf(),
            _ => break,
        }
    }
    Ok(root)
}

pub fn run(args: CloneArgs) -> anyhow::Result<()> {
    let src = canonical_parent(&args.src)?;
    let dst = canonical_parent(&args.dst)?;
    std::fs::symlink_metadata(&src).with_context(|| format!("{}", args.src.display()))?;
    let src_dir = src.parent().expect("a joined path has a parent");
    let dst_dir = dst.parent().expect("a joined path has a parent");
    let root = mount_root(src_dir)?;
    anyhow::ensure!(
        dst_dir.starts_with(&root) && mount_root(dst_dir)? == root,
        "{} and {} are not on one mount: clone copies inside one Graviton volume",
        args.src.display(),
        args.dst.display()
    );
    let rel = |p: &Path| {
        p.strip_prefix(&root)
            .expect("inside the mount")
            .as_os_str()
            .as_bytes()
            .to_vec()
    };
    let arg = ioctl::encode_clone(&rel(&src), &rel(&dst)).context("the paths are too long")?;
    let dir = std::fs::File::open(&root).with_context(|| format!("{}", root.display()))?;
    let start = Instant::now();
    // SAFETY: the argument is ARG_BYTES long, as the request number says; the kernel only reads it.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), ioctl::CLONE as _, arg.as_ptr()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTTY) {
            anyhow::bail!("{} is not on a Graviton mount", root.display());
        }
        return Err(e)
            .with_context(|| format!("clone {} to {}", args.src.display(), args.dst.display()));
    }
    eprintln!(
        "cloned {} to {} in {:.2} s",
        args.src.display(),
        args.dst.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
