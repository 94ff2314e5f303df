//! `Mirror`: in-memory copies of the local metadata cache's inodes and complete directory
//! listings, so `getattr` and `readdir` skip RocksDB's lookups: a copy from memory costs a
//! small fraction of a RocksDB point read or of iterating a listing.
//!
//! The mirror only ever holds what the RocksDB cache holds: the cache updates it where it
//! writes the same records (its own commits) and empties it where it drops them
//! (invalidations, wipes). A copy read from RocksDB or the engine is put in with the token
//! taken before the read, and refused when any commit or invalidation came in between: it may
//! be older than what that change left. It is bounded: least recently used inodes and
//! listings go first, and a directory larger than a quarter of the entry budget is not
//! mirrored at all.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::{DirEntry, Ino, Inode};

/// Inodes kept (about 150 bytes each).
const INODES: usize = 65_536;
/// Directory entries kept over all mirrored listings (a name and 24 bytes each).
const ENTRIES: usize = 65_536;
const DIRS: usize = 4096;

/// A directory's entries by cookie.
type Entries = BTreeMap<u64, (Vec<u8>, DirEntry)>;

pub(super) struct Mirror {
    state: Mutex<State>,
}

/// Taken before a read whose result may go into the mirror (see [`Mirror::put_inode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Token(u64);

/// One name's change in a commit: in directory `dir`, the entry with cookie `old` goes and
/// `new` comes.
pub(super) struct EntryChange<'a> {
    pub dir: Ino,
    pub old: Option<u64>,
    pub new: Option<(&'a [u8], DirEntry)>,
}

struct State {
    /// Bumped by every commit and invalidation.
    generation: u64,
    inodes: LruCache<Ino, Inode>,
    listings: LruCache<Ino, Entries>,
    /// Entries over all listings.
    entries: usize,
}

impl State {
    fn drop_listing(&mut self, dir: Ino) {
        if let Some(gone) = self.listings.pop(&dir) {
            self.entries -= gone.len();
        }
    }

    fn set_listing<'a>(&mut self, dir: Ino, all: impl IntoIterator<Item = (&'a [u8], DirEntry)>) {
        let entries: Entries = all
            .into_iter()
            .map(|(name, e)| (e.cookie, (name.to_vec(), e)))
            .collect();
        self.drop_listing(dir);
        if entries.len() > ENTRIES / 4 {
            return;
        }
        self.entries += entries.len();
        if let Some((_, gone)) = self.listings.push(dir, entries) {
            self.entries -= gone.len();
        }
        self.fit();
    }

    /// A directory not mirrored stays so.
    fn change_entry(&mut self, c: &EntryChange<'_>) {
        let Some(entries) = self.listings.peek_mut(&c.dir) else {
            return;
        };
        let before = entries.len();
        if let Some(cookie) = c.old {
            entries.remove(&cookie);
        }
        if let Some((name, e)) = c.new {
            entries.insert(e.cookie, (name.to_vec(), e));
        }
        let after = entries.len();
        self.entries = self.entries + after - before;
        if after > ENTRIES / 4 {
            self.drop_listing(c.dir);
        }
        self.fit();
    }

    /// Evicts least recently used listings until the budget holds.
    fn fit(&mut self) {
        while self.entries > ENTRIES {
            match self.listings.pop_lru() {
                Some((_, gone)) => self.entries -= gone.len(),
                None => break,
            }
        }
    }
}

impl Default for Mirror {
    fn default() -> Self {
        let n = |v: usize| NonZeroUsize::new(v).expect("nonzero");
        Mirror {
            state: Mutex::new(State {
                generation: 0,
                inodes: LruCache::new(n(INODES)),
                listings: LruCache::new(n(DIRS)),
                entries: 0,
            }),
        }
    }
}

impl Mirror {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mirror lock")
    }

    pub fn token(&self) -> Token {
        Token(self.lock().generation)
    }

    pub fn inode(&self, ino: Ino) -> Option<Inode> {
        self.lock().inodes.get(&ino).cloned()
    }

    /// Mirrors an inode read after `token` was taken, unless anything changed since.
    pub fn put_inode(&self, token: Token, inode: &Inode) {
        let mut st = self.lock();
        if st.generation == token.0 {
            st.inodes.put(inode.ino, inode.clone());
        }
    }

    /// Up to `limit` entries with cookies above `after`, when the whole listing is mirrored.
    pub fn listing(&self, dir: Ino, after: u64, limit: usize) -> Option<Vec<(Vec<u8>, DirEntry)>> {
        let mut st = self.lock();
        let entries = st.listings.get(&dir)?;
        Some(
            entries
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(_, (name, e))| (name.clone(), *e))
                .collect(),
        )
    }

    /// Mirrors a directory's complete listing, read after `token` was taken, unless anything
    /// changed since.
    pub fn put_listing(&self, token: Token, dir: Ino, all: &[(Vec<u8>, DirEntry)]) {
        let mut st = self.lock();
        if st.generation == token.0 {
            st.set_listing(dir, all.iter().map(|(n, e)| (n.as_slice(), *e)));
        }
    }

    /// What a commit wrote to the cache: `fresh` directories (created empty in it), changed
    /// names, and inodes.
    pub fn committed<'a>(
        &self,
        fresh: impl IntoIterator<Item = Ino>,
        changes: &[EntryChange<'_>],
        inodes: impl IntoIterator<Item = &'a Inode>,
    ) {
        let mut st = self.lock();
        st.generation += 1;
        for dir in fresh {
            st.set_listing(dir, std::iter::empty());
        }
        for c in changes {
            st.change_entry(c);
        }
        for inode in inodes {
            st.inodes.put(inode.ino, inode.clone());
        }
    }

    /// Drops everything mirrored about these inodes (their inodes and, for directories, their
    /// listings).
    pub fn forget(&self, inos: &[Ino]) {
        let mut st = self.lock();
        st.generation += 1;
        for ino in inos {
            st.inodes.pop(ino);
            st.drop_listing(*ino);
        }
    }

    pub fn clear(&self) {
        let mut st = self.lock();
        st.generation += 1;
        st.inodes.clear();
        st.listings.clear();
        st.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::FileKind;

    fn entry(cookie: u64) -> DirEntry {
        DirEntry::new(100 + cookie, FileKind::File, cookie)
    }

    fn change(dir: Ino, old: Option<u64>, new: Option<(&[u8], DirEntry)>) -> EntryChange<'_> {
        EntryChange { dir, old, new }
    }

    fn names(l: Vec<(Vec<u8>, DirEntry)>) -> Vec<Vec<u8>> {
        l.into_iter().map(|(n, _)| n).collect()
    }

    fn none() -> Vec<&'static Inode> {
        Vec::new()
    }

    #[test]
    fn listings_follow_commits_and_stay_within_budget() {
        let m = Mirror::default();
        assert!(m.listing(1, 0, 10).is_none(), "nothing mirrored yet");
        m.committed([], &[change(1, None, Some((b"x", entry(3))))], none());
        assert!(
            m.listing(1, 0, 10).is_none(),
            "a change does not start a listing"
        );
        // created in the commit: mirrored from its first entry
        m.committed([1], &[change(1, None, Some((b"a", entry(3))))], none());
        m.committed([], &[change(1, None, Some((b"b", entry(5))))], none());
        m.committed([], &[change(1, Some(3), Some((b"c", entry(7))))], none()); // rename a -> c
        m.committed([], &[change(1, None, Some((b"d", entry(8))))], none());
        m.committed([], &[change(1, Some(8), None)], none()); // unlink d
        assert_eq!(
            names(m.listing(1, 0, 10).unwrap()),
            [b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(names(m.listing(1, 5, 1).unwrap()), [b"c".to_vec()]);
        m.forget(&[1]);
        assert!(m.listing(1, 0, 10).is_none());

        // a directory past a quarter of the budget is not mirrored
        let big: Vec<(Vec<u8>, DirEntry)> = (0..ENTRIES as u64 / 4 + 1)
            .map(|c| (c.to_string().into_bytes(), entry(c + 3)))
            .collect();
        m.put_listing(m.token(), 2, &big);
        assert!(m.listing(2, 0, 1).is_none());
        // many directories: the oldest go, the entry count stays within the budget
        for dir in 10..20u64 {
            m.put_listing(m.token(), dir, &big[..ENTRIES / 4]);
        }
        assert!(m.lock().entries <= ENTRIES);
        assert!(m.listing(19, 0, 1).is_some() && m.listing(10, 0, 1).is_none());
    }

    #[test]
    fn a_copy_read_before_a_change_is_refused() {
        let m = Mirror::default();
        let old = Inode::new(9, FileKind::Dir, 0o755, 0, 0, crate::meta::Timestamp::now());
        let new = Inode {
            nlink: 3,
            ..old.clone()
        };
        // read before a commit, put after it: refused
        let token = m.token();
        m.committed([], &[], [&new]);
        m.put_inode(token, &old);
        assert_eq!(m.inode(9), Some(new.clone()));
        // read before an invalidation: refused
        let token = m.token();
        m.forget(&[9]);
        m.put_inode(token, &old);
        assert_eq!(m.inode(9), None);
        let listing = vec![(b"a".to_vec(), entry(3))];
        let token = m.token();
        m.clear();
        m.put_listing(token, 1, &listing);
        assert!(m.listing(1, 0, 10).is_none());
        // nothing in between: taken
        m.put_inode(m.token(), &old);
        m.put_listing(m.token(), 1, &listing);
        assert_eq!(m.inode(9), Some(old));
        assert_eq!(names(m.listing(1, 0, 10).unwrap()), [b"a".to_vec()]);
    }
}
