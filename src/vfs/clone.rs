//! `graviton clone`: a copy of a file or a directory tree made of metadata only, requested
//! through the mount (an ioctl, `fuse::ioctl`) so that it carries the caller's identity. The
//! paths are walked and checked here as the kernel would for the caller; the copy itself is
//! `tree::copy`'s, and appears at its destination in one transaction.

use super::access::{EXEC, MAX_DEPTH, WRITE, Who, components, walk};
use super::{Fs, FsError, FsResult};
use crate::meta::{Ino, ROOT_INO, is_frozen};
use crate::vfs::tree::copy::{Copied, Plan, copy_detached, link};

impl Fs {
    /// Copies `src` to `dst` (paths from the volume's root) as `who`, as metadata only. The
    /// destination must not exist; its directory must be writable by `who` and not inside a
    /// snapshot (EROFS) or inside the source (EINVAL). Writes this mount has not committed yet
    /// are committed first, so the copy holds everything written before the request.
    /// Returns the destination's directory and name (for the kernel's caches) and the copy.
    pub fn clone_path(
        &self,
        who: &Who,
        src: &[u8],
        dst: &[u8],
    ) -> FsResult<(Ino, Vec<u8>, Copied)> {
        // the kernel passes ioctls on even on a read-only mount
        if self.core.cfg.read_only || self.is_frozen() {
            return Err(FsError::ReadOnly);
        }
        let src_parts = components(src)?;
        let dst_parts = components(dst)?;
        let (name, dst_dirs) = dst_parts.split_last().ok_or(FsError::Exists)?;
        let meta = self.core.meta.as_ref();
        let (source, parent) = {
            let mut view = meta.read()?;
            let source = match src_parts.split_last() {
                None => ROOT_INO,
                Some((last, dirs)) => {
                    let dir = walk(view.as_mut(), who, dirs, EXEC)?;
                    view.dirent(dir, last)?.ok_or(FsError::NotFound)?.ino
                }
            };
            let parent = walk(view.as_mut(), who, dst_dirs, EXEC)?;
            let dir = view.inode(parent)?.ok_or(FsError::NotFound)?;
            if is_frozen(parent) {
                return Err(FsError::Frozen);
            }
            if !who.may(&dir, WRITE | EXEC) {
                return Err(FsError::Denied);
            }
            if view.dirent(parent, name)?.is_some() {
                return Err(FsError::Exists);
            }
            // a directory copied into itself would never end
            let mut up = parent;
            for depth in 0.. {
                if up == source || depth > MAX_DEPTH {
                    return Err(FsError::Invalid);
                }
                if up == ROOT_INO {
                    break;
                }
                up = view.inode(up)?.ok_or(FsError::NotFound)?.parent;
            }
            (source, parent)
        };
        self.commit_open_files()?;
        let skip: Vec<Ino> = crate::vfs::tree::snapshot::folder(meta)?
            .into_iter()
            .collect();
        let plan = Plan {
            who,
            exact: false,
            frozen: false,
            skip: &skip,
        };
        let copied = copy_detached(meta, source, &plan)?;
        link(meta, &copied, parent, name)?;
        Ok((parent, name.to_vec(), copied))
    }

    /// Commits every open file's pending writes on this mount.
    fn commit_open_files(&self) -> FsResult<()> {
        for ino in self.open_files() {
            self.flush_inode(ino, false)?;
        }
        Ok(())
    }
}
