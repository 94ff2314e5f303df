//! Tests of write-behind metadata, against the PostgreSQL server `scripts/test.sh` starts.

use super::*;
use crate::domain::Extent;
use crate::domain::extent::Splice;
use crate::meta::prelude::*;
use crate::meta::{DirEntry, PgMetaStore};

fn fresh_database() -> String {
    graviton_testkit::scratch_database()
}

fn pg(url: &str) -> Arc<dyn MetaStore> {
    Arc::new(PgMetaStore::connect(url).unwrap())
}

/// Records applied and records pending: listings, maps and xattr names merge both, and
/// read the same once everything is applied. Long because it is one scenario, checked before
/// and after the applier runs.
#[test]
fn pending_records_merge_with_applied_ones() {
    graviton_testkit::needs_servers!();
    use crate::domain::{BlockKey, HashAlgo};
    use crate::meta::{FileKind, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let wb = WriteBehind::open(pg(&fresh_database()), dir.path(), "test").unwrap();
    let new = |kind| {
        Inode::new(
            wb.allocate_ino().unwrap(),
            kind,
            0o755,
            0,
            0,
            Timestamp::default(),
        )
    };
    let d = new(FileKind::Dir);
    let f = new(FileKind::File);
    let ext = |off: u64, n: u8| Extent {
        offset: off,
        key: BlockKey::for_data(HashAlgo::Blake3, &[n; 10]),
        block_offset: 0,
        len: 10,
    };
    let entry = |i: u64| DirEntry::new(f.ino, FileKind::File, 3 + i);
    let mut tx = wb.begin().unwrap();
    tx.put_inode(&d).unwrap();
    tx.put_inode(&f).unwrap();
    for i in 0..50 {
        tx.put_dirent(d.ino, format!("a{i}").as_bytes(), &entry(i))
            .unwrap();
    }
    let first = Splice {
        remove: vec![],
        insert: (0..20).map(|i| ext(i * 10, i as u8)).collect(),
    };
    tx.apply_splice(f.ino, &first).unwrap();
    tx.put_xattr(f.ino, b"user.x", b"1").unwrap();
    tx.put_xattr(f.ino, b"user.y", b"2").unwrap();
    tx.commit().unwrap();
    assert!(wb.state.drain(Duration::from_secs(30)));
    assert_eq!(
        wb.state.lock().overlay.inode(d.ino),
        None,
        "applied records leave"
    );

    wb.state.paused.store(true, Ordering::SeqCst);
    let mut tx = wb.begin().unwrap();
    tx.inode(d.ino).unwrap();
    for i in 10..20 {
        tx.delete_dirent(d.ino, format!("a{i}").as_bytes()).unwrap();
    }
    for i in 0..30 {
        tx.put_dirent(d.ino, format!("b{i}").as_bytes(), &entry(100 + i))
            .unwrap();
    }
    let second = Splice {
        remove: vec![ext(50, 5), ext(60, 6)],
        insert: vec![ext(50, 99)],
    };
    tx.apply_splice(f.ino, &second).unwrap();
    tx.delete_xattr(f.ino, b"user.x").unwrap();
    tx.put_xattr(f.ino, b"user.z", b"3").unwrap();
    tx.commit().unwrap();
    assert!(wb.queued() > 0);

    let check = |wb: &WriteBehind| {
        let mut r = wb.read().unwrap();
        let mut names = Vec::new();
        let mut after = 0;
        loop {
            let page = r.list_dir(d.ino, after, 7).unwrap();
            let Some(last) = page.last() else { break };
            after = last.1.cookie;
            names.extend(page.into_iter().map(|(n, _)| String::from_utf8(n).unwrap()));
        }
        let want: Vec<String> = (0..10)
            .chain(20..50)
            .map(|i| format!("a{i}"))
            .chain((0..30).map(|i| format!("b{i}")))
            .collect();
        assert_eq!(names, want, "cookie order, each name once");
        assert!(!r.dir_is_empty(d.ino).unwrap());
        let map = r.extents(f.ino, 45..75).unwrap();
        assert_eq!(
            map.iter().map(|e| (e.offset, e.key)).collect::<Vec<_>>(),
            vec![
                (40, ext(0, 4).key),
                (50, ext(0, 99).key),
                (70, ext(0, 7).key)
            ]
        );
        assert_eq!(r.extents(f.ino, 0..u64::MAX).unwrap().len(), 19);
        assert_eq!(
            r.xattr_names(f.ino).unwrap(),
            vec![b"user.y".to_vec(), b"user.z".to_vec()]
        );
        assert_eq!(r.xattr(f.ino, b"user.x").unwrap(), None);
    };
    check(&wb);
    wb.state.paused.store(false, Ordering::SeqCst);
    assert!(wb.state.drain(Duration::from_secs(30)));
    check(&wb);
}

#[test]
fn another_live_mount_keeps_write_behind_out() {
    graviton_testkit::needs_servers!();
    let url = fresh_database();
    let info = |mp: &str| crate::meta::SessionInfo {
        host: "h".into(),
        pid: 1,
        mountpoint: mp.into(),
        timeout: Duration::from_secs(30),
    };
    let other = pg(&url);
    other.begin_session(&info("/mnt/other")).unwrap();
    let mine = pg(&url);
    mine.begin_session(&info("/mnt/mine")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = WriteBehind::open(mine.clone(), dir.path(), "h:/state")
        .err()
        .expect("refused while another mount is live");
    assert!(err.to_string().contains("/mnt/other"), "{err}");
    check_unclaimed(mine.as_ref(), None).expect("a refused mount leaves no claim");
    other.end_session();
    let wb = WriteBehind::open(mine.clone(), dir.path(), "h:/state").unwrap();
    wb.end_session();
}
