//! What a metadata engine shared by several mounts adds to the records: a session per mount,
//! byte-range locks that hold across mounts, and a feed of changes made by other mounts so
//! each one can drop what it cached.
//!
//! The lock arithmetic here is engine-free: `conflict` and `replace` implement POSIX record
//! lock rules over a list of held locks, and engines store the result.

use super::{Ino, MetaResult};

/// Who is mounting, recorded in the session so `graviton status` can show it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub host: String,
    pub pid: u32,
    pub mountpoint: String,
    /// A session whose heartbeat is older than this is dead: other mounts release its locks
    /// and reclaim its unlinked-while-open files.
    pub timeout: std::time::Duration,
}

/// End offset meaning "to the end of the file, however long it grows".
pub const TO_EOF: u64 = i64::MAX as u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
    Unlock,
}

/// A lock request from the kernel: `owner` identifies the lock holder within this mount
/// (the open file for flock, the process's file table for fcntl locks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    pub owner: u64,
    pub kind: LockKind,
    /// Inclusive byte range.
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

/// A lock some mount holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub session: i64,
    pub owner: u64,
    pub exclusive: bool,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

impl HeldLock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// The first lock held by someone else that keeps `req` (made by `session`) from being
/// granted.
pub fn conflict(held: &[HeldLock], session: i64, req: &LockRequest) -> Option<HeldLock> {
    if req.kind == LockKind::Unlock {
        return None;
    }
    let exclusive = req.kind == LockKind::Exclusive;
    held.iter()
        .find(|h| {
            (h.session, h.owner) != (session, req.owner)
                && h.overlaps(req.start, req.end)
                && (h.exclusive || exclusive)
        })
        .copied()
}

/// The locks one owner holds after `req`: the requested range is taken out of what it held
/// (splitting locks that straddle it), then added with the new kind unless it is an unlock;
/// adjacent or overlapping locks of the same kind merge, as POSIX prescribes.
pub fn replace(mine: &[HeldLock], session: i64, req: &LockRequest) -> Vec<HeldLock> {
    let mut out = Vec::new();
    for h in mine {
        if !h.overlaps(req.start, req.end) {
            out.push(*h);
            continue;
        }
        if h.start < req.start {
            out.push(HeldLock {
                end: req.start - 1,
                ..*h
            });
        }
        if h.end > req.end {
            out.push(HeldLock {
                start: req.end + 1,
                ..*h
            });
        }
    }
    if req.kind != LockKind::Unlock {
        out.push(HeldLock {
            session,
            owner: req.owner,
            exclusive: req.kind == LockKind::Exclusive,
            start: req.start,
            end: req.end,
            pid: req.pid,
        });
    }
    out.sort_by_key(|h| (h.start, h.end));
    let mut merged: Vec<HeldLock> = Vec::with_capacity(out.len());
    for h in out {
        match merged.last_mut() {
            Some(last)
                if last.exclusive == h.exclusive && h.start <= last.end.saturating_add(1) =>
            {
                last.end = last.end.max(h.end);
            }
            _ => merged.push(h),
        }
    }
    merged
}

/// What another mount (or the engine's connection) tells this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// These inodes (their attributes, entries if a directory, extents, xattrs) changed.
    Inodes(Vec<Ino>),
    /// Anything may have changed.
    All,
    /// The feed broke: changes may be missed until `Resumed`.
    Lost,
    /// The feed is back; changes made while it was down must be caught up from the change log.
    Resumed,
    /// The feed was up at this server time (microseconds since the Unix epoch).
    Alive(i64),
}

pub type ChangeSink = std::sync::Arc<dyn Fn(&Change) + Send + Sync>;

/// Sessions, global locks and the change feed of a volume several mounts share.
pub trait SharedVolume: Send + Sync {
    /// This mount's session, once started. A session that expired is replaced by a new one
    /// with another id; ids are never used again.
    fn session(&self) -> Option<i64>;
    /// The lock that conflicts with `req`, if any (F_GETLK).
    fn test_lock(&self, ino: Ino, req: &LockRequest) -> MetaResult<Option<HeldLock>>;
    /// Sets, changes or releases a lock; returns the session it was done in. When it
    /// conflicts: with `wait`, blocks until it can be granted (woken by the release, no
    /// polling); without, returns None. [`MetaError::SessionExpired`] when the mount's session
    /// turned out to have expired (a new one has started; the call was not carried out).
    ///
    /// [`MetaError::SessionExpired`]: super::MetaError::SessionExpired
    fn set_lock(&self, ino: Ino, req: &LockRequest, wait: bool) -> MetaResult<Option<i64>>;
    /// Releases every lock `owner` holds on `ino` (close).
    fn release_locks(&self, ino: Ino, owner: u64) -> MetaResult<()>;
    /// Calls `sink` with every change other mounts make, in commit order, from the feed's own
    /// task: a sink must be quick and must not call the engine (hand slow work to a thread).
    /// Changes a mount learns before a lock is granted to it are applied before the grant.
    fn subscribe(&self, sink: ChangeSink);
    /// Inodes changed since `since` (server microseconds), or None when the change log no
    /// longer reaches back that far; with the server's time when it answered.
    fn changes_since(&self, since: i64) -> MetaResult<(Option<Vec<Ino>>, i64)>;
    /// The mounts using the volume now.
    fn sessions(&self) -> MetaResult<Vec<SessionRecord>>;
    /// Pins blocks for this mount's session (`meta::pins`): every host's gc spares them until
    /// they are unpinned or the session ends. Without a session, pins stay in this process.
    fn pin_blocks(&self, keys: &[crate::domain::BlockKey]) -> MetaResult<()>;
    /// Unpins blocks; may reach the engine later (a pin kept longer only delays gc). Must not
    /// block: callers hold the process's pin lock.
    fn unpin_blocks(&self, keys: &[crate::domain::BlockKey]);
    /// Drops queued unpins of `keys`, which are being pinned again. Must not block.
    fn cancel_unpins(&self, keys: &[crate::domain::BlockKey]);
    /// Every block some mount has pinned.
    fn pinned_blocks(&self) -> MetaResult<Vec<crate::domain::BlockKey>>;
    /// Records that this mount has `ino` open: until [`SharedVolume::unhold`], or the end of
    /// the session, another mount's unlink or rename over it leaves it in place (nameless),
    /// readable and writable here. The caller checks that the inode exists afterwards: a
    /// deletion that did not see the hold happened before it.
    fn hold(&self, ino: Ino) -> MetaResult<()>;
    /// Ends this mount's hold on `ino` (its last close here); may reach the engine later (a
    /// hold kept longer only delays the reclaim of a nameless file). Must not block. The
    /// last hold on a file with no name deletes it.
    fn unhold(&self, ino: Ino);
}

/// A live mount, as `graviton status` lists it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub id: i64,
    pub host: String,
    pub pid: u32,
    pub mountpoint: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_secs: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(owner: u64, kind: LockKind, start: u64, end: u64) -> LockRequest {
        LockRequest {
            owner,
            kind,
            start,
            end,
            pid: 7,
        }
    }

    #[test]
    fn readers_share_and_writers_exclude() {
        let held = replace(&[], 1, &req(1, LockKind::Shared, 0, TO_EOF));
        assert_eq!(conflict(&held, 1, &req(2, LockKind::Shared, 0, 10)), None);
        assert!(conflict(&held, 1, &req(2, LockKind::Exclusive, 5, 5)).is_some());
        assert!(
            conflict(&held, 2, &req(1, LockKind::Exclusive, 5, 5)).is_some(),
            "the same owner number in another session is someone else"
        );
        assert_eq!(
            conflict(&held, 1, &req(1, LockKind::Exclusive, 0, 10)),
            None,
            "an owner never conflicts with itself (upgrade)"
        );
    }

    #[test]
    fn unlocking_the_middle_splits_a_lock() {
        let held = replace(&[], 1, &req(1, LockKind::Exclusive, 0, 99));
        let held = replace(&held, 1, &req(1, LockKind::Unlock, 10, 19));
        let ranges: Vec<_> = held.iter().map(|h| (h.start, h.end)).collect();
        assert_eq!(ranges, [(0, 9), (20, 99)]);
        assert_eq!(
            conflict(&held, 1, &req(2, LockKind::Exclusive, 10, 19)),
            None
        );
    }

    #[test]
    fn adjacent_locks_of_one_kind_merge() {
        let held = replace(&[], 1, &req(1, LockKind::Shared, 0, 9));
        let held = replace(&held, 1, &req(1, LockKind::Shared, 10, 19));
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].start, held[0].end), (0, 19));
        let held = replace(&held, 1, &req(1, LockKind::Exclusive, 5, 7));
        assert_eq!(held.len(), 3, "a different kind in the middle splits");
    }

    proptest! {
        /// After any sequence of requests by one owner, a byte is locked with the kind of
        /// the last request that covered it, and the locks never overlap.
        #[test]
        fn replace_matches_a_byte_model(ops in prop::collection::vec((0u8..3, 0u64..40, 0u64..12), 1..30)) {
            let mut held = Vec::new();
            let mut model = [None::<bool>; 64];
            for (k, start, len) in ops {
                let kind = [LockKind::Shared, LockKind::Exclusive, LockKind::Unlock][k as usize];
                let end = start + len;
                held = replace(&held, 1, &req(1, kind, start, end));
                for b in start..=end {
                    model[b as usize] = match kind {
                        LockKind::Unlock => None,
                        k => Some(k == LockKind::Exclusive),
                    };
                }
            }
            for w in held.windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
            for (b, want) in model.iter().enumerate() {
                let got = held.iter().find(|h| h.overlaps(b as u64, b as u64)).map(|h| h.exclusive);
                prop_assert_eq!(got, *want, "byte {}", b);
            }
        }
    }
}
