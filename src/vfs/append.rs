//! O_APPEND writes on a shared volume. Another mount may have grown the file since this one
//! last saw its size, so the kernel's offset for an O_APPEND write can be stale. Each such write
//! is instead committed on its own, at the end of the file as the metadata engine has it when
//! the transaction runs (the transaction reads the size it extends, so two mounts' appends
//! serialize): appends from several mounts never overwrite each other, with or without a lock.
//! The FUSE adapter opens these handles for direct I/O, so the kernel caches no pages at its
//! stale offset, and drops its cached size and the pages where the data landed.
//!
//! A write larger than the kernel's largest request (`max_write`) reaches the daemon in pieces,
//! each appended on its own.

use std::sync::Arc;

use super::file::Handle;
use super::flush::FlushMode;
use super::{Fs, FsError, FsResult};
use crate::meta::Timestamp;

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

    /// Commits `data` at the end of the file; returns the offset it landed at.
    pub(super) fn append_committed(&self, h: &Arc<Handle>, data: &[u8]) -> FsResult<u64> {
        let file = &h.file;
        let _one_at_a_time = file.flush_lock.lock().expect("flush lock");
        let mut st = file.lock();
        // this mount's earlier writes to the file land first
        self.core
            .flush_locked(file, &mut st, FlushMode::All, false)?;
        if let Some(session) = self.core.session() {
            file.written_in
                .store(session, std::sync::atomic::Ordering::SeqCst);
        }
        let mut kept = Vec::new();
        let inode = self.core.store_and_commit(
            file,
            &[(0, data.to_vec())],
            FlushMode::All,
            0,
            Some(Timestamp::now()),
            None,
            false,
            true,
            &mut kept,
        )?;
        let inode = inode.ok_or(FsError::Invalid)?;
        if !st.has_pending() {
            file.written_in
                .store(0, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(inode.size - data.len() as u64)
    }
}
