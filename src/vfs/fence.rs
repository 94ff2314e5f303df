//! Fencing after a mount's session on a shared volume expired. Other mounts then take what the
//! mount held under that session: its locks, and the files it kept unlinked while open (they
//! are deleted). What the mount did meanwhile may have relied on them, so an open file records
//! the session it holds something under (its claim: a lock, or the file itself while unlinked)
//! and the session its uncommitted writes were made in (they may have been made under a lock
//! on another file). Once the mount's session is another one, such a file is fenced: its
//! uncommitted writes are dropped, and every handle that was open on it fails from then on,
//! with EIO (ENOLCK for lock calls), instead of going on as if it still held what it held.
//! Handles opened later work, under the new session.
//!
//! In the database, a transaction of an expired session is refused at commit
//! (`meta::MetaError::SessionExpired`, EIO), and a flush checks its file's claims inside its
//! transaction, so nothing lands after other mounts took the session's locks.

use std::sync::atomic::Ordering;

use super::file::{Handle, OpenFile};
use super::{Core, Fs, FsError, FsResult};

/// What an open file holds under which session, as read at one moment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Claims {
    claim: i64,
    written_in: i64,
}

impl Claims {
    pub(crate) fn of(file: &OpenFile) -> Claims {
        Claims {
            claim: file.claim.load(Ordering::SeqCst),
            written_in: file.written_in.load(Ordering::SeqCst),
        }
    }
}

impl Core {
    /// The mount's session on a shared volume; None on an embedded one.
    pub(crate) fn session(&self) -> Option<i64> {
        self.meta.shared().and_then(|s| s.session())
    }

    /// Records that this mount holds something on `file` under `session` (a lock, or the file
    /// itself while unlinked).
    pub(crate) fn claim(file: &OpenFile, session: Option<i64>) {
        if let Some(s) = session {
            file.claim.store(s, Ordering::SeqCst);
        }
    }

    /// Whether `session` (a claim; 0 for none) is one the mount no longer has.
    fn lost(&self, session: i64) -> bool {
        session != 0 && self.session() != Some(session)
    }

    /// Whether `claims` name a session the mount no longer has.
    pub(crate) fn claims_lost(&self, claims: Claims) -> bool {
        self.lost(claims.claim) || self.lost(claims.written_in)
    }

    /// Fences `file` if it holds something under a session the mount no longer has: its
    /// pending writes are dropped and the handles open on it fail from now on.
    pub(crate) fn fence_if_lost(&self, file: &OpenFile) {
        if !self.claims_lost(Claims::of(file)) {
            return;
        }
        let mut st = file.lock();
        // again under the lock: another caller may have fenced it meanwhile
        let claims = Claims::of(file);
        if !self.claims_lost(claims) {
            return;
        }
        // the lost ones go; a claim made under the new session (even meanwhile) stays
        for (field, was) in [
            (&file.claim, claims.claim),
            (&file.written_in, claims.written_in),
        ] {
            if self.lost(was) {
                let _ = field.compare_exchange(was, 0, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
        let dropped = super::dirty::charge(&st.dirty.take());
        self.add_dirty(-(dropped as i64));
        st.mtime = None;
        st.attrs = None;
        file.fences.fetch_add(1, Ordering::SeqCst);
        drop(st);
        tracing::error!(
            ino = file.ino,
            dropped_bytes = dropped,
            "the mount session this file was locked, kept unlinked or written in has expired: \
             its uncommitted writes are dropped and its open handles fail"
        );
    }
}

impl Fs {
    /// Fails when `h` was open on its file when the file was fenced.
    pub(crate) fn check_fence(&self, h: &Handle) -> FsResult<()> {
        self.core.fence_if_lost(&h.file);
        if h.file.fences.load(Ordering::SeqCst) != h.fences_seen {
            return Err(FsError::Fenced);
        }
        Ok(())
    }
}
