//! O_APPEND writes on a shared volume. Another mount may have grown the file since this one
//! last saw its size, so neither the kernel's offset for an O_APPEND write nor this mount's
//! idea of the end can be trusted. Such writes are buffered like others, placed for now after
//! the end this mount knows (so its own reads find them there), and their flush commits them
//! at the end of the file as the metadata engine has it when the transaction runs (the
//! transaction reads the size it extends, so two mounts' commits serialize). Appends from
//! several mounts never overwrite each other, with or without a lock, at a commit per flush
//! rather than per write; each write stays whole and in order.
//!
//! - Pending appends and other writes are never buffered together: a write of the other kind
//!   first flushes what is pending (`FileState::append_base`).
//! - When a commit moves the appends (another mount appended meanwhile), the ones still
//!   pending move with them, and the kernel's cached size and pages of the file are dropped.
//! - Releasing a lock flushes the file first (`vfs::lock`), so appends made under a lock are
//!   in place before another mount can take it.
//! - The FUSE adapter opens these handles for direct I/O, so the kernel caches no pages at its
//!   own offset, and drops its cached size and pages when a write's place differs from it.

use super::Fs;
use super::file::Handle;

impl Fs {
    /// Whether writes through `h` go to the end of the file as committed (see above).
    pub(super) fn appends_at_committed_end(&self, h: &Handle) -> bool {
        h.flags.write && h.flags.append && self.core.meta.shared().is_some()
    }

    /// Whether writes through handle `fh` go to the end of the file as committed: the kernel
    /// must not cache them at its own offset.
    pub fn appends_at_end(&self, fh: u64) -> bool {
        self.handle(fh)
            .is_ok_and(|h| self.appends_at_committed_end(&h))
    }
}
