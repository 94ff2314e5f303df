//! flock and fcntl locks on a shared volume, through the handle they are taken on. The locks
//! themselves live in the metadata engine (`meta::SharedVolume`); on an embedded volume the
//! kernel keeps them and these calls are not made.

use super::{Fs, FsError, FsResult};
use crate::meta::{HeldLock, Ino, LockRequest, SharedVolume};

impl Fs {
    fn shared_volume(&self) -> FsResult<&dyn SharedVolume> {
        self.core.meta.shared().ok_or(FsError::NotSupported)
    }

    /// F_GETLK: the lock that keeps `req` from being granted, if any.
    pub fn test_lock(&self, fh: u64, req: &LockRequest) -> FsResult<Option<HeldLock>> {
        let h = self.handle(fh)?;
        Ok(self.shared_volume()?.test_lock(h.ino, req)?)
    }

    /// Sets, changes or releases a lock through handle `fh`; with `wait`, blocks until it can
    /// be granted, else returns false when another holder keeps it from being granted.
    pub fn set_lock(&self, fh: u64, req: &LockRequest, wait: bool) -> FsResult<bool> {
        let h = self.handle(fh)?;
        Ok(self.shared_volume()?.set_lock(h.ino, req, wait)?.is_some())
    }

    /// Releases every lock `owner` holds on `ino` (close).
    pub fn release_locks(&self, ino: Ino, owner: u64) -> FsResult<()> {
        match self.core.meta.shared() {
            Some(shared) => Ok(shared.release_locks(ino, owner)?),
            None => Ok(()),
        }
    }
}
