//! Tests of the metadata cache.

use super::local::*;
use super::*;
use crate::domain::extent::Splice;
use crate::domain::{BlockKey, Extent};
use crate::meta::{DirEntry, FileKind};

#[cfg(test)]
mod encodings {
    use super::*;

    #[test]
    fn records_round_trip_through_their_encodings() {
        let key = BlockKey::for_data(crate::domain::HashAlgo::Blake3, b"x");
        let extents = vec![
            Extent {
                offset: 0,
                key,
                block_offset: 3,
                len: 9,
            },
            Extent {
                offset: 9,
                key,
                block_offset: 0,
                len: 1 << 20,
            },
        ];
        assert_eq!(decode_extents(&encode_extents(&extents)).unwrap(), extents);
        let xattrs = vec![
            (b"user.a".to_vec(), b"".to_vec()),
            (b"user.b".to_vec(), vec![0, 1, 2]),
        ];
        assert_eq!(decode_xattrs(&encode_xattrs(&xattrs)).unwrap(), xattrs);
        let e = DirEntry::new(77, FileKind::Symlink, 12);
        assert_eq!(
            decode_listed(&encode_listed(b"name", &e)).unwrap(),
            (b"name".to_vec(), e)
        );
        assert!(
            decode_extents(&[0u8; 5]).is_err(),
            "a torn record is an error"
        );
    }
}

/// Against the PostgreSQL server `scripts/test.sh` starts.
#[cfg(test)]
mod pg_tests {
    use super::*;
    use crate::meta::Timestamp;
    use crate::meta::pg::PgMetaStore;
    use crate::meta::prelude::*;
    use std::time::Instant;

    fn fresh_database() -> String {
        graviton_testkit::scratch_database()
    }

    fn start_session(store: &dyn MetaStore) {
        store
            .begin_session(&crate::meta::SessionInfo {
                host: "test".into(),
                pid: std::process::id(),
                mountpoint: "/test".into(),
                timeout: Duration::from_secs(5),
            })
            .expect("session");
    }

    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "never happened: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A cache in `dir` in front of a fresh connection, serving.
    fn cached(url: &str, dir: &Path) -> Arc<CachedMeta> {
        let inner: Arc<dyn MetaStore> = Arc::new(PgMetaStore::connect(url).unwrap());
        // a cache closed a moment ago may still hold its lock while its thread finishes
        let deadline = Instant::now() + Duration::from_secs(10);
        let c = loop {
            match CachedMeta::open(inner.clone(), dir) {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("opening the cache: {e}"),
            }
        };
        drop(inner);
        start_session(&c);
        eventually("the cache goes live", || c.is_live());
        Arc::new(c)
    }

    /// A new empty directory, committed through `a`.
    fn new_dir(a: &CachedMeta) -> (Ino, Inode) {
        let d = a.allocate_ino().unwrap();
        let parent = Inode::new(d, FileKind::Dir, 0o755, 0, 0, Timestamp::default());
        let mut tx = a.begin().unwrap();
        tx.put_inode(&parent).unwrap();
        tx.commit().unwrap();
        (d, parent)
    }

    fn file(ino: Ino, size: u64) -> Inode {
        let mut n = Inode::new(
            ino,
            FileKind::File,
            0o644,
            0,
            0,
            Timestamp { secs: 1, nanos: 0 },
        );
        n.size = size;
        n
    }

    #[test]
    fn another_mounts_writes_reach_the_cache() {
        graviton_testkit::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let a = cached(&url, dir.path());
        let b = PgMetaStore::connect(&url).unwrap();
        start_session(&b);
        let (d, x) = (b.allocate_ino().unwrap(), b.allocate_ino().unwrap());
        let mut parent = Inode::new(d, FileKind::Dir, 0o755, 0, 0, Timestamp::default());
        let entry = |ino, cookie| DirEntry::new(ino, FileKind::File, cookie);
        let mut tx = b.begin().unwrap();
        tx.put_inode(&parent).unwrap();
        tx.put_inode(&file(x, 1)).unwrap();
        tx.put_dirent(d, b"x", &entry(x, 3)).unwrap();
        tx.commit().unwrap();
        assert_eq!(a.read_inode(x).unwrap(), Some(file(x, 1)));
        assert_eq!(a.read().unwrap().list_dir(d, 0, 10).unwrap().len(), 1);
        // (the feed may still bring b's commit, which drops what a just cached)
        eventually("a read is a cache hit", || {
            let hits = a.hit_counts().0;
            assert_eq!(a.read_inode(x).unwrap(), Some(file(x, 1)));
            a.hit_counts().0 > hits
        });

        let mut tx = b.begin().unwrap();
        tx.put_inode(&file(x, 2)).unwrap();
        parent.next_cookie += 1;
        tx.put_inode(&parent).unwrap();
        tx.put_dirent(d, b"y", &entry(x, 4)).unwrap();
        tx.commit().unwrap();
        eventually("the new size reaches the cache", || {
            a.read_inode(x).unwrap() == Some(file(x, 2))
        });
        eventually("the new entry reaches the cached listing", || {
            a.read().unwrap().list_dir(d, 0, 10).unwrap().len() == 2
        });
        assert!(a.read().unwrap().dirent(d, b"y").unwrap().is_some());
        // close-to-open: a stale copy is caught by revalidate even before the feed brings it
        assert!(
            !a.revalidate(x).unwrap(),
            "unchanged: the kernel keeps its pages"
        );
    }

    /// This mount's own creates, renames and removals in a directory it has listed are written
    /// through: the listing and negative lookups keep being answered by the cache (no miss),
    /// and they match the engine.
    #[test]
    fn own_commits_are_written_through() {
        graviton_testkit::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let a = cached(&url, dir.path());
        let (d, mut parent) = new_dir(&a);
        assert!(
            a.cache.has(&key(LISTED, d)),
            "a new directory's (empty) listing is known without asking the engine"
        );
        assert!(a.read().unwrap().list_dir(d, 0, 10).unwrap().is_empty());
        let entry = |ino, cookie| DirEntry::new(ino, FileKind::File, cookie);
        for (i, name) in [b"a", b"b", b"c"].iter().enumerate() {
            let x = a.allocate_ino().unwrap();
            assert!(a.read().unwrap().dirent(d, *name).unwrap().is_none());
            let mut tx = a.begin().unwrap();
            parent.next_cookie += 1;
            parent.size += 1;
            tx.put_inode(&parent).unwrap();
            tx.put_inode(&file(x, i as u64)).unwrap();
            tx.put_dirent(d, *name, &entry(x, 3 + i as u64)).unwrap();
            tx.commit().unwrap();
        }
        // rename b -> z, remove c
        let b = a.read().unwrap().dirent(d, b"b").unwrap().unwrap();
        let mut tx = a.begin().unwrap();
        tx.delete_dirent(d, b"b").unwrap();
        tx.put_dirent(d, b"z", &entry(b.ino, 6)).unwrap();
        tx.delete_dirent(d, b"c").unwrap();
        parent.size -= 1;
        tx.put_inode(&parent).unwrap();
        tx.commit().unwrap();
        let names = |r: &mut dyn MetaRead| -> Vec<Vec<u8>> {
            r.list_dir(d, 0, 10)
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        let mut view = a.read().unwrap();
        assert_eq!(names(view.as_mut()), [b"a".to_vec(), b"z".to_vec()]);
        assert!(view.dirent(d, b"c").unwrap().is_none());
        assert!(view.dirent(d, b"b").unwrap().is_none());
        assert_eq!(view.dirent(d, b"z").unwrap().map(|e| e.ino), Some(b.ino));
        assert_eq!(a.read_inode(d).unwrap(), Some(parent.clone()));
        drop(view);
        assert!(
            a.cache.has(&key(LISTED, d)) && a.cache.has(&key(INODE, d)),
            "the listing and the directory's record stayed cached through this mount's commits"
        );
        // and the engine agrees
        let engine = PgMetaStore::connect(&url).unwrap();
        let mut r = engine.read().unwrap();
        assert_eq!(names(r.as_mut()), [b"a".to_vec(), b"z".to_vec()]);
    }

    /// The reads a create makes before and after it (a lookup of the new name, then the
    /// kernel's xattr lookup on the new file) are answered by the cache: in a directory
    /// created elsewhere, once its small listing was read at the first miss; on a new file,
    /// whose xattrs are known to be none. A name another mount adds still turns up.
    #[test]
    fn lookups_around_a_create_are_answered_by_the_cache() {
        graviton_testkit::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let b = PgMetaStore::connect(&url).unwrap();
        start_session(&b);
        let d = b.allocate_ino().unwrap();
        let mut parent = Inode::new(d, FileKind::Dir, 0o755, 0, 0, Timestamp::default());
        let mut tx = b.begin().unwrap();
        tx.put_inode(&parent).unwrap();
        tx.commit().unwrap();
        let a = cached(&url, dir.path());
        assert!(a.read_inode(d).unwrap().is_some());
        let entry = |ino, cookie| DirEntry::new(ino, FileKind::File, cookie);
        let misses = |a: &CachedMeta| a.hit_counts().1;
        assert!(a.read().unwrap().dirent(d, b"first").unwrap().is_none());
        let before = misses(&a);
        for (i, name) in [b"a", b"b", b"c"].iter().enumerate() {
            assert!(a.read().unwrap().dirent(d, *name).unwrap().is_none());
            let x = a.allocate_ino().unwrap();
            let mut tx = a.begin().unwrap();
            parent.next_cookie += 1;
            tx.put_inode(&parent).unwrap();
            tx.put_inode(&file(x, 0)).unwrap();
            tx.put_dirent(d, *name, &entry(x, 3 + i as u64)).unwrap();
            tx.commit().unwrap();
            assert!(
                a.cache.has(&key(XATTRS, x)),
                "a new file's xattrs are known"
            );
            assert_eq!(
                a.read().unwrap().xattr(x, b"security.capability").unwrap(),
                None
            );
        }
        assert_eq!(misses(&a), before, "no lookup went to the engine");
        // another mount's new name reaches the listing the cache now holds
        let y = b.allocate_ino().unwrap();
        let mut tx = b.begin().unwrap();
        tx.put_inode(&file(y, 0)).unwrap();
        tx.put_dirent(d, b"other", &entry(y, 10)).unwrap();
        tx.commit().unwrap();
        eventually("another mount's entry is found", || {
            a.read().unwrap().dirent(d, b"other").unwrap().is_some()
        });
        // and an xattr set on a new file is found
        let z = a.allocate_ino().unwrap();
        let mut tx = a.begin().unwrap();
        tx.put_inode(&file(z, 0)).unwrap();
        tx.put_xattr(z, b"user.k", b"v").unwrap();
        tx.commit().unwrap();
        assert_eq!(
            a.read().unwrap().xattr(z, b"user.k").unwrap(),
            Some(b"v".to_vec())
        );
    }

    /// A listing read from the engine before a directory changed must never be served after
    /// the change, not even for a moment: a lookup of a name made meanwhile would be answered
    /// "no such entry" from the stale listing (a `git clone` onto a PostgreSQL volume failed
    /// that way, creating a file in a fan-out directory it had just made).
    #[test]
    fn a_listing_read_before_a_change_never_hides_the_change() {
        graviton_testkit::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let a = cached(&url, dir.path());
        let (d, mut parent) = new_dir(&a);
        a.cache.invalidate(&[d]); // as another mount's change would
        // a lister reads d's (empty) listing from the engine, and is held there
        let [lister_at] = hold(&a, ["lister"]);
        let lister = {
            let a = a.clone();
            named("lister", move || {
                a.read().unwrap().list_dir(d, 0, 100).unwrap().len()
            })
        };
        lister_at.reaches("listing read");
        // meanwhile: a directory made in d, and d invalidated again
        let e1 = a.allocate_ino().unwrap();
        let mut tx = a.begin().unwrap();
        parent.next_cookie += 1;
        tx.put_inode(&parent).unwrap();
        tx.put_inode(&Inode::new(
            e1,
            FileKind::Dir,
            0o755,
            0,
            0,
            Timestamp::default(),
        ))
        .unwrap();
        let entry = DirEntry::new(e1, FileKind::Dir, 3);
        tx.put_dirent(d, b"e1", &entry).unwrap();
        tx.commit().unwrap();
        a.cache.invalidate(&[d]);
        lister_at.go_on.send(()).unwrap();
        lister_at.reaches("filling");
        lister_at.go_on.send(()).unwrap();
        // the lister's fill is done (stored or refused), and held again
        lister_at.reaches("filled");
        let seen = a.read().unwrap().dirent(d, b"e1").unwrap();
        release(&a, &lister_at);
        lister.join().unwrap();
        assert_eq!(
            seen,
            Some(entry),
            "the new entry, while the stale fill lands"
        );
        assert_eq!(a.read().unwrap().dirent(d, b"e1").unwrap(), Some(entry));
    }

    /// A thread held at every point it reaches in a cache: the point's name arrives on
    /// `reached`, and the thread goes on when sent `()` on `go_on`.
    struct Held {
        reached: std::sync::mpsc::Receiver<String>,
        go_on: std::sync::mpsc::Sender<()>,
    }

    impl Held {
        fn reaches(&self, point: &str) {
            let at = self.reached.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(at, point);
        }
    }

    /// Holds the threads named in `threads` at every point they reach in `a`'s cache (until
    /// `release`).
    fn hold<const N: usize>(a: &CachedMeta, threads: [&'static str; N]) -> [Held; N] {
        let mut routes = Vec::new();
        let held = threads.map(|name| {
            let (at_point, reached) = std::sync::mpsc::channel::<String>();
            let (go_on, proceed) = std::sync::mpsc::channel::<()>();
            routes.push((name, at_point, std::sync::Mutex::new(proceed)));
            Held { reached, go_on }
        });
        *a.cache.pause.lock().unwrap() = Some(Arc::new(move |point: &str| {
            let me = std::thread::current();
            if let Some((_, at_point, proceed)) = routes.iter().find(|r| me.name() == Some(r.0)) {
                at_point.send(point.to_string()).unwrap();
                let _ = proceed
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(20));
            }
        }));
        held
    }

    /// Lets every thread go on unheld from here on, and lets `h` go on from where it is.
    fn release(a: &CachedMeta, h: &Held) {
        *a.cache.pause.lock().unwrap() = None;
        h.go_on.send(()).unwrap();
    }

    /// Runs `f` in a thread named `name`.
    fn named<T: Send + 'static>(
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .unwrap()
    }

    /// A file of `len` bytes mapped to one block made of `fill`, committed through `a` (its map
    /// and inode then read, so both are cached).
    fn mapped_file(a: &CachedMeta, ino: Ino, fill: u8, len: u32, version: u64) -> (Inode, Extent) {
        let e = Extent {
            offset: 0,
            key: BlockKey::for_data(crate::domain::key::HashAlgo::Blake3, &[fill; 64]),
            block_offset: 0,
            len,
        };
        let mut tx = a.begin().unwrap();
        let old = tx.extents(ino, 0..u64::MAX).unwrap();
        tx.apply_splice(
            ino,
            &Splice {
                remove: old,
                insert: vec![e],
            },
        )
        .unwrap();
        let mut n = file(ino, len as u64);
        n.extent_count = 1;
        n.data_version = version;
        tx.put_inode(&n).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            a.read().unwrap().extents(ino, 0..u64::MAX).unwrap(),
            vec![e]
        );
        assert_eq!(a.read_inode(ino).unwrap(), Some(n.clone()));
        (n, e)
    }

    /// A cache (in the returned folder) on a fresh database, with a file of 4096 bytes in one
    /// extent, its map and inode cached: the folder, the cache, the file and its extent.
    fn cache_with_a_mapped_file() -> (tempfile::TempDir, Arc<CachedMeta>, Ino, Extent) {
        let dir = tempfile::tempdir().unwrap();
        let a = cached(&fresh_database(), dir.path());
        let x = a.allocate_ino().unwrap();
        let (_, e) = mapped_file(&a, x, 1, 4096, 1);
        (dir, a, x, e)
    }

    /// A thread named "reader" that reads `x`'s whole map through `a`.
    fn map_reader(a: &Arc<CachedMeta>, x: Ino) -> std::thread::JoinHandle<Vec<Extent>> {
        let a = a.clone();
        named("reader", move || {
            a.read().unwrap().extents(x, 0..u64::MAX).unwrap()
        })
    }

    #[test]
    fn a_reader_that_sees_a_commits_inode_sees_its_extents() {
        graviton_testkit::needs_servers!();
        let (_dir, a, x, _) = cache_with_a_mapped_file();
        // a rewrite commits, and its write-through is held where it has written the cache
        let [writer_at] = hold(&a, ["writer"]);
        let writer = {
            let a = a.clone();
            named("writer", move || mapped_file(&a, x, 2, 4096, 2))
        };
        writer_at.reaches("written through");
        // meanwhile a read: the inode, then its map (as the read path does)
        let (seen, got) = std::sync::mpsc::channel();
        let reader = {
            let a = a.clone();
            std::thread::spawn(move || {
                let n = a.read_inode(x).unwrap().unwrap();
                let map = a.read().unwrap().extents(x, 0..u64::MAX).unwrap();
                seen.send((n, map)).unwrap();
            })
        };
        // the reader may wait for the write-through to finish: let it, after a while
        let early = got.recv_timeout(Duration::from_secs(2)).ok();
        release(&a, &writer_at);
        let (n, map) = early.unwrap_or_else(|| got.recv().unwrap());
        let (_, new) = writer.join().unwrap();
        reader.join().unwrap();
        if n.data_version == 2 {
            assert_eq!(map, vec![new], "the new inode with the old map");
        }
    }

    #[test]
    fn an_extent_lookup_racing_an_invalidation_finds_the_map() {
        graviton_testkit::needs_servers!();
        let (_dir, a, x, e) = cache_with_a_mapped_file();
        // a lookup finds the map cached, and is held there
        let [reader_at] = hold(&a, ["reader"]);
        let reader = map_reader(&a, x);
        reader_at.reaches("mapped");
        // meanwhile another mount changes x's attributes (not its map)
        a.cache.invalidate(&[x]);
        release(&a, &reader_at);
        assert_eq!(
            reader.join().unwrap(),
            vec![e],
            "a mapped file read as a hole"
        );
    }

    #[test]
    fn a_map_read_while_an_invalidation_is_written_is_never_cached_empty() {
        graviton_testkit::needs_servers!();
        let (_dir, a, x, e) = cache_with_a_mapped_file();
        a.cache.invalidate(&[x]);
        // an invalidation of x (from the change feed) has taken its new generation...
        let [invalidator_at, reader_at] = hold(&a, ["invalidator", "reader"]);
        let invalidator = {
            let a = a.clone();
            named("invalidator", move || a.cache.invalidate(&[x]))
        };
        invalidator_at.reaches("generation taken");
        // ...when a lookup reads x's map from the engine (under the generation it replaces)
        let reader = map_reader(&a, x);
        reader_at.reaches("filling");
        invalidator_at.go_on.send(()).unwrap();
        invalidator.join().unwrap();
        release(&a, &reader_at);
        assert_eq!(reader.join().unwrap(), vec![e]);
        assert_eq!(
            a.read().unwrap().extents(x, 0..u64::MAX).unwrap(),
            vec![e],
            "a mapped file read as a hole"
        );
    }

    #[test]
    fn a_reopened_cache_catches_up_with_changes_made_while_it_was_closed() {
        graviton_testkit::needs_servers!();
        let url = fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let b = PgMetaStore::connect(&url).unwrap();
        let x = b.allocate_ino().unwrap();
        let mut tx = b.begin().unwrap();
        tx.put_inode(&file(x, 1)).unwrap();
        tx.commit().unwrap();
        let a = cached(&url, dir.path());
        assert_eq!(a.read_inode(x).unwrap(), Some(file(x, 1)));
        drop(a);
        let mut tx = b.begin().unwrap();
        tx.put_inode(&file(x, 2)).unwrap();
        tx.commit().unwrap();
        let a = cached(&url, dir.path());
        assert_eq!(
            a.read_inode(x).unwrap(),
            Some(file(x, 2)),
            "the change made while closed was replayed from the log"
        );
    }
}
