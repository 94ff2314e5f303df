//! The metadata conformance suite, written once and run against every engine.

use std::collections::HashSet;
use std::sync::Arc;

use graviton::domain::extent::{self, Splice};
use graviton::domain::{BlockKey, Extent, HashAlgo};
use graviton::meta::{DirEntry, FileKind, Inode, MetaError, MetaStore, MetaTxn, Timestamp};

pub fn run_all(store: Arc<dyn MetaStore>) {
    inodes_round_trip(store.as_ref());
    uncommitted_changes_vanish(store.as_ref());
    directory_entries_list_in_cookie_order(store.as_ref());
    extents_and_block_references(store.as_ref());
    xattrs_symlinks_orphans(store.as_ref());
    settings_and_kv(store.as_ref());
    read_views_see_every_commit(store.as_ref());
    conflicting_writers_do_not_both_commit(store.as_ref());
    concurrent_increments_are_isolated(store.clone());
    inode_numbers_are_unique(store.clone());
    reserved_inode_numbers_are_not_handed_out(store.as_ref());
    snapshots_do_not_see_later_commits(store.as_ref());
}

fn commit(tx: Box<dyn MetaTxn + '_>) {
    tx.commit().expect("commit");
}

fn sample_inode(store: &dyn MetaStore, kind: FileKind) -> Inode {
    Inode::new(
        store.allocate_ino().expect("allocate"),
        kind,
        0o644,
        1000,
        1000,
        Timestamp { secs: 5, nanos: 7 },
    )
}

fn key(n: u8) -> BlockKey {
    BlockKey::for_data(HashAlgo::Blake3, &[n; 100])
}

pub fn inodes_round_trip(store: &dyn MetaStore) {
    let mut ino = sample_inode(store, FileKind::File);
    ino.size = 1 << 40;
    let mut tx = store.begin().expect("begin");
    tx.put_inode(&ino).expect("put");
    commit(tx);
    assert_eq!(store.read_inode(ino.ino).expect("read"), Some(ino.clone()));
    let mut tx = store.begin().expect("begin");
    assert_eq!(tx.inode(ino.ino).expect("get"), Some(ino.clone()));
    tx.delete_inode(ino.ino).expect("delete");
    commit(tx);
    assert_eq!(store.begin().unwrap().inode(ino.ino).expect("get"), None);
    assert_eq!(store.read_inode(ino.ino).expect("read"), None);
}

pub fn uncommitted_changes_vanish(store: &dyn MetaStore) {
    let ino = sample_inode(store, FileKind::File);
    {
        let mut tx = store.begin().expect("begin");
        tx.put_inode(&ino).expect("put");
        tx.put_dirent(
            1_000_000,
            b"ghost",
            &DirEntry::new(ino.ino, FileKind::File, 3),
        )
        .expect("put");
        assert!(
            tx.inode(ino.ino).expect("own write").is_some(),
            "a transaction sees its own writes"
        );
    }
    let mut tx = store.begin().expect("begin");
    assert_eq!(tx.inode(ino.ino).expect("get"), None);
    assert_eq!(tx.dirent(1_000_000, b"ghost").expect("get"), None);
}

pub fn directory_entries_list_in_cookie_order(store: &dyn MetaStore) {
    let dir = sample_inode(store, FileKind::Dir);
    let mut tx = store.begin().expect("begin");
    tx.put_inode(&dir).expect("put");
    assert!(tx.dir_is_empty(dir.ino).expect("empty"));
    // names inserted in an order unlike both name order and cookie order
    for (i, name) in ["zeta", "alpha", "mid", "\u{e9}t\u{e9}"].iter().enumerate() {
        let e = DirEntry::new(100 + i as u64, FileKind::File, 10 - i as u64);
        tx.put_dirent(dir.ino, name.as_bytes(), &e).expect("put");
    }
    commit(tx);
    let mut tx = store.begin().expect("begin");
    assert!(!tx.dir_is_empty(dir.ino).expect("empty"));
    let all = tx.list_dir(dir.ino, 0, 100).expect("list");
    let names: Vec<_> = all
        .iter()
        .map(|(n, _)| String::from_utf8(n.clone()).unwrap())
        .collect();
    assert_eq!(names, ["\u{e9}t\u{e9}", "mid", "alpha", "zeta"]);
    let page = tx.list_dir(dir.ino, 8, 1).expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0, b"alpha");
    assert_eq!(
        tx.dirent(dir.ino, b"mid").expect("get").map(|e| e.ino),
        Some(102)
    );
    // replacing an entry moves its cookie; deleting removes it from listings
    tx.put_dirent(dir.ino, b"mid", &DirEntry::new(555, FileKind::Dir, 20))
        .expect("replace");
    tx.delete_dirent(dir.ino, b"zeta").expect("delete");
    commit(tx);
    let mut tx = store.begin().expect("begin");
    let all = tx.list_dir(dir.ino, 0, 100).expect("list");
    let got: Vec<_> = all
        .iter()
        .map(|(n, e)| (n.as_slice(), e.ino, e.cookie))
        .collect();
    assert_eq!(
        got,
        [
            (&b"\xc3\xa9t\xc3\xa9"[..], 103, 7),
            (b"alpha", 101, 9),
            (b"mid", 555, 20)
        ]
    );
    assert_eq!(tx.dirent(dir.ino, b"zeta").expect("get"), None);
    // the directory and one entry in one read
    let (d, e) = tx.inode_and_dirent(dir.ino, b"mid").expect("both");
    assert_eq!(d.as_ref(), Some(&dir));
    assert_eq!(
        e.map(|e| (e.ino, e.kind, e.cookie)),
        Some((555, FileKind::Dir, 20))
    );
    let (d, e) = tx.inode_and_dirent(dir.ino, b"zeta").expect("both");
    assert_eq!((d.is_some(), e), (true, None));
    assert_eq!(
        tx.inode_and_dirent(dir.ino + 1_000_000, b"mid")
            .expect("both"),
        (None, None)
    );
    assert!(
        tx.list_dir(dir.ino + 1_000_000, 0, 10)
            .expect("other dir")
            .is_empty()
    );
}

pub fn extents_and_block_references(store: &dyn MetaStore) {
    let file = sample_inode(store, FileKind::File);
    let ex = |offset, n, len| Extent {
        offset,
        key: key(n),
        block_offset: 0,
        len,
    };
    let mut tx = store.begin().expect("begin");
    tx.put_inode(&file).expect("put");
    let first = Splice {
        remove: vec![],
        insert: vec![ex(0, 1, 100), ex(100, 2, 50), ex(1000, 3, 10)],
    };
    tx.apply_splice(file.ino, &first).expect("splice");
    commit(tx);
    let mut tx = store.begin().expect("begin");
    assert_eq!(
        tx.extents(file.ino, 50..60).expect("extents"),
        vec![ex(0, 1, 100)],
        "straddling extent found"
    );
    assert_eq!(tx.extents(file.ino, 100..1001).expect("extents").len(), 2);
    assert_eq!(
        tx.extents(file.ino, 150..1000).expect("extents"),
        vec![],
        "holes are empty"
    );
    assert!(store.is_referenced(&key(2)).expect("referenced"));
    // overwrite the middle of block 1's extent with block 4
    let current = tx.extents(file.ino, 40..60).expect("extents");
    let s = extent::overwrite(&current, &[ex(40, 4, 20)]);
    tx.apply_splice(file.ino, &s).expect("splice");
    let got = tx.extents(file.ino, 0..100).expect("extents");
    assert_eq!(
        got.iter().map(|e| (e.offset, e.len)).collect::<Vec<_>>(),
        [(0, 40), (40, 20), (60, 40)]
    );
    assert_eq!(got[2].block_offset, 60);
    // block 2 loses its only reference
    let current = tx.extents(file.ino, 100..150).expect("extents");
    tx.apply_splice(file.ino, &extent::punch(&current, 100..150))
        .expect("punch");
    commit(tx);
    assert!(!store.is_referenced(&key(2)).expect("referenced"));
    let refs = store.referenced_blocks().expect("refs");
    for n in [1, 3, 4] {
        assert!(refs.contains(&key(n)), "block {n} referenced");
    }
    let mut tx = store.begin().expect("begin");
    tx.delete_inode(file.ino).expect("delete");
    commit(tx);
    for n in [1, 3, 4] {
        assert!(
            !store.is_referenced(&key(n)).expect("referenced"),
            "delete_inode drops references"
        );
    }
    assert!(
        store
            .begin()
            .unwrap()
            .extents(file.ino, 0..u64::MAX)
            .expect("extents")
            .is_empty()
    );
}

pub fn xattrs_symlinks_orphans(store: &dyn MetaStore) {
    let link = sample_inode(store, FileKind::Symlink);
    let mut tx = store.begin().expect("begin");
    tx.put_inode(&link).expect("put");
    tx.put_symlink_target(link.ino, b"/some/where")
        .expect("target");
    tx.put_xattr(link.ino, b"user.b", b"2").expect("xattr");
    tx.put_xattr(link.ino, b"user.a", b"").expect("xattr");
    tx.add_orphan(link.ino).expect("orphan");
    commit(tx);
    assert!(store.orphans().expect("orphans").contains(&link.ino));
    let mut tx = store.begin().expect("begin");
    let numbers = tx.inode_numbers().expect("inode numbers");
    assert!(numbers.contains(&(link.ino, true)), "listed as an orphan");
    assert!(
        numbers.windows(2).all(|w| w[0].0 < w[1].0),
        "in number order"
    );
    assert_eq!(
        tx.symlink_target(link.ino).expect("target").as_deref(),
        Some(&b"/some/where"[..])
    );
    assert_eq!(
        tx.xattr_names(link.ino).expect("names"),
        vec![b"user.a".to_vec(), b"user.b".to_vec()]
    );
    assert_eq!(
        tx.xattr(link.ino, b"user.a").expect("get"),
        Some(vec![]),
        "empty values are values"
    );
    tx.delete_xattr(link.ino, b"user.b").expect("delete");
    assert_eq!(tx.xattr(link.ino, b"user.b").expect("get"), None);
    tx.delete_inode(link.ino).expect("delete");
    commit(tx);
    assert!(!store.orphans().expect("orphans").contains(&link.ino));
    let mut tx = store.begin().expect("begin");
    assert!(
        !tx.inode_numbers()
            .expect("inode numbers")
            .iter()
            .any(|(n, _)| *n == link.ino)
    );
    assert_eq!(tx.symlink_target(link.ino).expect("target"), None);
    assert!(tx.xattr_names(link.ino).expect("names").is_empty());
}

/// A read-only view (which an engine may answer from a local cache) sees each committed
/// change as soon as the commit returns, record kind by record kind.
pub fn read_views_see_every_commit(store: &dyn MetaStore) {
    let mut dir = sample_inode(store, FileKind::Dir);
    let mut file = sample_inode(store, FileKind::File);
    let entry = |ino, cookie| DirEntry::new(ino, FileKind::File, cookie);
    let ex = |n| Extent {
        offset: 0,
        key: key(n),
        block_offset: 0,
        len: 10,
    };
    let mut tx = store.begin().expect("begin");
    tx.put_inode(&dir).expect("put");
    tx.put_inode(&file).expect("put");
    tx.put_dirent(dir.ino, b"a", &entry(file.ino, 3))
        .expect("dirent");
    tx.apply_splice(
        file.ino,
        &Splice {
            remove: vec![],
            insert: vec![ex(1)],
        },
    )
    .expect("splice");
    tx.put_xattr(file.ino, b"user.x", b"1").expect("xattr");
    commit(tx);
    for round in 0..3u8 {
        let mut r = store.read().expect("read view");
        assert_eq!(r.inode(file.ino).expect("inode"), Some(file.clone()));
        assert_eq!(store.read_inode(dir.ino).expect("inode"), Some(dir.clone()));
        let names: Vec<Vec<u8>> = r
            .list_dir(dir.ino, 0, 100)
            .expect("list")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let want: Vec<Vec<u8>> = (0..=round).map(|k| vec![b'a' + k]).collect();
        assert_eq!(names, want, "round {round}: listing");
        assert!(r.dirent(dir.ino, b"zz").expect("dirent").is_none());
        assert_eq!(
            r.dirent(dir.ino, b"a").expect("dirent"),
            Some(entry(file.ino, 3))
        );
        assert_eq!(
            r.extents(file.ino, 0..10).expect("extents"),
            vec![ex(1 + round)]
        );
        assert_eq!(
            r.xattr(file.ino, b"user.x").expect("xattr"),
            Some(vec![b'1' + round])
        );
        assert!(!r.dir_is_empty(dir.ino).expect("empty"));
        drop(r);
        // change every record kind the view just read
        let mut tx = store.begin().expect("begin");
        file.size += 1;
        dir.next_cookie += 1;
        tx.put_inode(&file).expect("put");
        tx.put_inode(&dir).expect("put");
        let name = [b'a' + round + 1];
        tx.put_dirent(dir.ino, &name, &entry(file.ino, 4 + round as u64))
            .expect("dirent");
        let s = extent::overwrite(&[ex(1 + round)], &[ex(2 + round)]);
        tx.apply_splice(file.ino, &s).expect("splice");
        tx.put_xattr(file.ino, b"user.x", &[b'2' + round])
            .expect("xattr");
        commit(tx);
    }
    let mut tx = store.begin().expect("begin");
    for n in 0..4u8 {
        tx.delete_dirent(dir.ino, &[b'a' + n]).expect("delete");
    }
    tx.put_inode(&dir).expect("put");
    tx.delete_inode(file.ino).expect("delete");
    commit(tx);
    let mut r = store.read().expect("read view");
    assert!(r.dir_is_empty(dir.ino).expect("empty"));
    assert!(r.list_dir(dir.ino, 0, 100).expect("list").is_empty());
    assert_eq!(r.inode(file.ino).expect("inode"), None);
    assert!(r.extents(file.ino, 0..10).expect("extents").is_empty());
}

pub fn settings_and_kv(store: &dyn MetaStore) {
    store
        .put_setting("conformance.chunker", "fixed-4096")
        .expect("put");
    assert_eq!(
        store
            .setting("conformance.chunker")
            .expect("get")
            .as_deref(),
        Some("fixed-4096")
    );
    assert_eq!(store.setting("conformance.none").expect("get"), None);
    store.kv_put("conf/a", b"1").expect("put");
    store.kv_put("conf/b", b"2").expect("put");
    store.kv_put("other", b"3").expect("put");
    let scanned = store.kv_scan("conf/").expect("scan");
    assert_eq!(
        scanned,
        vec![
            ("conf/a".into(), b"1".to_vec()),
            ("conf/b".into(), b"2".to_vec())
        ]
    );
    store.kv_delete("conf/a").expect("delete");
    assert_eq!(store.kv_get("conf/a").expect("get"), None);
    assert_eq!(store.kv_get("other").expect("get"), Some(b"3".to_vec()));
}

pub fn conflicting_writers_do_not_both_commit(store: &dyn MetaStore) {
    let ino = sample_inode(store, FileKind::File);
    let mut tx = store.begin().expect("begin");
    tx.put_inode(&ino).expect("put");
    commit(tx);
    let mut a = store.begin().expect("begin");
    let mut b = store.begin().expect("begin");
    let mut ia = a.inode(ino.ino).expect("read").expect("exists");
    let mut ib = b.inode(ino.ino).expect("read").expect("exists");
    ia.size = 1;
    ib.size = 2;
    a.put_inode(&ia).expect("put");
    a.commit().expect("first commit wins");
    let lost = b.put_inode(&ib).and_then(|_| b.commit());
    assert!(
        matches!(lost, Err(MetaError::Conflict)),
        "second writer must see a conflict, got {lost:?}"
    );
    assert_eq!(
        store.begin().unwrap().inode(ino.ino).unwrap().unwrap().size,
        1
    );
}

pub fn concurrent_increments_are_isolated(store: Arc<dyn MetaStore>) {
    let ino = sample_inode(store.as_ref(), FileKind::File);
    let mut tx = store.begin().expect("begin");
    tx.put_inode(&ino).expect("put");
    commit(tx);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    loop {
                        let run = || -> Result<(), MetaError> {
                            let mut tx = store.begin()?;
                            let mut i = tx.inode(ino.ino)?.expect("exists");
                            i.nlink += 1;
                            tx.put_inode(&i)?;
                            tx.commit()
                        };
                        match run() {
                            Ok(()) => break,
                            Err(MetaError::Conflict) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(
        store
            .begin()
            .unwrap()
            .inode(ino.ino)
            .unwrap()
            .unwrap()
            .nlink,
        1 + 200,
        "no increment lost"
    );
}

pub fn inode_numbers_are_unique(store: Arc<dyn MetaStore>) {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..3000)
                    .map(|_| store.allocate_ino().expect("allocate"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in threads {
        for ino in t.join().expect("thread") {
            assert!(ino > graviton::meta::ROOT_INO);
            assert!(seen.insert(ino), "inode {ino} handed out twice");
        }
    }
}

/// What dump and fsck of a mounted volume rely on: a snapshot view reads one moment, whatever
/// commits meanwhile.
pub fn snapshots_do_not_see_later_commits(store: &dyn MetaStore) {
    let mut dir = sample_inode(store, FileKind::Dir);
    let file = sample_inode(store, FileKind::File);
    let mut tx = store.begin().expect("begin");
    tx.put_inode(&dir).expect("put");
    tx.put_inode(&file).expect("put");
    commit(tx);
    let mut view = store.snapshot().expect("snapshot");
    // read something first: an engine may take its snapshot at the first read
    assert!(view.inode(dir.ino).expect("inode").is_some());
    let mut tx = store.begin().expect("begin");
    dir.size = 4242;
    tx.put_inode(&dir).expect("put");
    let entry = DirEntry::new(file.ino, FileKind::File, 3);
    tx.put_dirent(dir.ino, b"late", &entry).expect("dirent");
    commit(tx);
    assert_eq!(view.inode(dir.ino).expect("inode").expect("dir").size, 0);
    assert!(view.list_dir(dir.ino, 0, 10).expect("list").is_empty());
    assert!(view.dirent(dir.ino, b"late").expect("dirent").is_none());
    drop(view);
    let mut now = store.snapshot().expect("snapshot");
    assert_eq!(now.inode(dir.ino).expect("inode").expect("dir").size, 4242);
    assert_eq!(now.list_dir(dir.ino, 0, 10).expect("list").len(), 1);
}

pub fn reserved_inode_numbers_are_not_handed_out(store: &dyn MetaStore) {
    let last = store.allocate_ino().expect("allocate") + 100_000;
    store.reserve_inos_through(last).expect("reserve");
    let next = store.allocate_ino().expect("allocate");
    assert!(
        next > last,
        "{next} handed out after reserving through {last}"
    );
    // reserving below what was handed out changes nothing
    store.reserve_inos_through(5).expect("reserve");
    assert!(store.allocate_ino().expect("allocate") > next);
}

/// Writes records that [`check_sample`] expects after the engine is reopened.
pub fn write_sample(store: &dyn MetaStore) {
    let mut tx = store.begin().expect("begin");
    let mut ino = Inode::new(
        777,
        FileKind::File,
        0o600,
        1,
        2,
        Timestamp { secs: 9, nanos: 9 },
    );
    ino.size = 12345;
    tx.put_inode(&ino).expect("put");
    tx.put_dirent(1, b"sample", &DirEntry::new(777, FileKind::File, 3))
        .expect("dirent");
    let e = Extent {
        offset: 0,
        key: key(9),
        block_offset: 0,
        len: 100,
    };
    tx.apply_splice(
        777,
        &Splice {
            remove: vec![],
            insert: vec![e],
        },
    )
    .expect("splice");
    commit(tx);
    store.sync().expect("sync");
}

pub fn check_sample(store: &dyn MetaStore) {
    let mut tx = store.begin().expect("begin");
    assert_eq!(tx.inode(777).expect("get").map(|i| i.size), Some(12345));
    assert_eq!(
        tx.dirent(1, b"sample").expect("get").map(|e| e.ino),
        Some(777)
    );
    assert_eq!(tx.extents(777, 0..1).expect("extents").len(), 1);
    assert!(store.is_referenced(&key(9)).expect("referenced"));
}
