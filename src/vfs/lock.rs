//! flock and fcntl locks on a shared volume, through the handle they are taken on. The locks
//! themselves live in the metadata engine (`meta::SharedVolume`); on an embedded volume the
//! kernel keeps them and these calls are not made. A handle open on a file whose lock the
//! mount lost when its session expired gets ENOLCK (`vfs::fence`). Releasing a lock first
//! commits the file's pending writes, so another mount that takes the lock next finds them.

use super::file::Handle;
use super::{Core, Fs, FsError, FsResult};
use crate::meta::{HeldLock, Ino, LockKind, LockRequest, MetaError, SharedVolume};

/// How many times a lock call runs again when the mount's session turns out to have expired
/// and was replaced (once is the rule: the replacement is in place when it runs again).
const RENEWED_SESSION_TRIES: u32 = 3;

/// A fenced handle's lock call fails with ENOLCK rather than EIO.
fn lock_lost(e: FsError) -> FsError {
    match e {
        FsError::Fenced => FsError::LockLost,
        e => e,
    }
}

impl Fs {
    fn shared_volume(&self) -> FsResult<&dyn SharedVolume> {
        self.core.meta.shared().ok_or(FsError::LocksLocal)
    }

    /// F_GETLK: the lock that keeps `req` from being granted, if any.
    pub fn test_lock(&self, fh: u64, req: &LockRequest) -> FsResult<Option<HeldLock>> {
        let shared = self.shared_volume()?;
        let h = self.handle(fh)?;
        self.check_fence(&h).map_err(lock_lost)?;
        Ok(shared.test_lock(h.ino, req)?)
    }

    /// Sets, changes or releases a lock through handle `fh`; with `wait`, blocks until it can
    /// be granted, else returns false when another holder keeps it from being granted.
    pub fn set_lock(&self, fh: u64, req: &LockRequest, wait: bool) -> FsResult<bool> {
        let shared = self.shared_volume()?;
        let h = self.handle(fh)?;
        if req.kind != LockKind::Exclusive {
            // what was written under a write lock is committed before another mount can take
            // it (an unlock, or a downgrade to a read lock)
            self.core
                .flush_file(&h.file, super::flush::FlushMode::All, false)
                .map_err(lock_lost)?;
        }
        let mut tries = 0;
        loop {
            self.check_fence(&h).map_err(lock_lost)?;
            match shared.set_lock(h.ino, req, wait) {
                Ok(Some(session)) => {
                    if req.kind != LockKind::Unlock {
                        Core::claim(&h.file, Some(session));
                        let mut owners = h.lock_owners.lock().expect("lock");
                        if !owners.contains(&req.owner) {
                            owners.push(req.owner);
                        }
                    }
                    return Ok(true);
                }
                Ok(None) => return Ok(false),
                // a new session replaced the expired one: unless this handle relied on the
                // old one (checked above), the call runs again under the new one
                Err(MetaError::SessionExpired) if tries < RENEWED_SESSION_TRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Releases every lock `owner` holds on `ino`: a close of a descriptor by the process
    /// `owner` stands for, through handle `fh` (FUSE flush), or the last close of `fh`.
    pub fn release_locks(&self, fh: u64, ino: Ino, owner: u64) -> FsResult<()> {
        if let Ok(h) = self.handle(fh) {
            h.lock_owners.lock().expect("lock").retain(|&o| o != owner);
        }
        match self.core.meta.shared() {
            Some(shared) => Ok(shared.release_locks(ino, owner)?),
            None => Ok(()),
        }
    }

    /// At the last close of an open file description: releases the locks taken through it
    /// that no close released. A process's fcntl locks go when it closes a descriptor of the
    /// file (FUSE flush names the process); what is left are the description's own locks
    /// (`F_OFD_SETLK`), which the kernel leaves to the filesystem at that point.
    pub(super) fn release_description_locks(&self, h: &Handle) -> FsResult<()> {
        let owners = std::mem::take(&mut *h.lock_owners.lock().expect("lock"));
        let Some(shared) = self.core.meta.shared() else {
            return Ok(());
        };
        for owner in owners {
            shared.release_locks(h.ino, owner)?;
        }
        Ok(())
    }
}
