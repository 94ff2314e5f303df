//! The trash through real mounts: what `rm -rf` removed comes back byte-identical, open files
//! removed keep working, and what expires is deleted and its blocks freed.

mod common;

use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mounted::{Mounted, ok, run};

fn make_tree(root: &Path) {
    for d in ["a/b/c", "a/d", "e"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (i, f) in ["a/b/c/1", "a/b/2", "a/d/3", "e/4", "5"].iter().enumerate() {
        std::fs::write(
            root.join(f),
            common::random_bytes(i as u64, i * 700_000 + 3),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("b/2", root.join("a/link")).unwrap();
}

fn rm_rf_and_restore(m: &Mounted) {
    make_tree(&m.path("tree"));
    let saved = tempfile::tempdir().unwrap();
    ok(
        run(
            "cp",
            &[
                "-a",
                m.path("tree").to_str().unwrap(),
                saved.path().to_str().unwrap(),
            ],
            Path::new("/"),
        ),
        "cp -a",
    );
    ok(
        run(
            "rm",
            &["-rf", m.path("tree").to_str().unwrap()],
            Path::new("/"),
        ),
        "rm -rf",
    );
    assert!(!m.path("tree").exists());
    let names: Vec<_> = std::fs::read_dir(&m.mnt).unwrap().collect();
    assert!(
        names.is_empty(),
        "the trash folder is not listed at the root"
    );
    let list = ok(m.graviton(&["trash", "list", &m.source]), "trash list");
    assert!(
        list.contains("\t/tree/a/b/c/1\n") && list.contains("\tdir\t"),
        "{list}"
    );

    let out = ok(
        m.graviton(&["trash", "restore", &m.source]),
        "trash restore",
    );
    assert!(out.contains("restored 12 entries"), "{out}");
    ok(
        run(
            "diff",
            &[
                "-r",
                "--no-dereference",
                saved.path().join("tree").to_str().unwrap(),
                m.path("tree").to_str().unwrap(),
            ],
            Path::new("/"),
        ),
        "diff against the copy made before rm -rf",
    );
    assert_eq!(
        ok(m.graviton(&["trash", "list", &m.source]), "trash list"),
        ""
    );
    ok(m.graviton(&["fsck", &m.source]), "fsck");
}

#[test]
fn rm_rf_then_restore_brings_every_file_back() {
    let m = Mounted::new(&["--trash-days", "1"], "");
    rm_rf_and_restore(&m);

    // a file replaced by a rename goes too, and stays when its name is taken again
    std::fs::write(m.path("x"), b"old").unwrap();
    let old_ino = std::fs::metadata(m.path("x")).unwrap().ino();
    std::fs::write(m.path("y"), b"new").unwrap();
    std::fs::rename(m.path("y"), m.path("x")).unwrap();
    let out = m.graviton(&["trash", "restore", &m.source]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && said.contains("its name is in use again"),
        "{said}"
    );
    assert_eq!(std::fs::read(m.path("x")).unwrap(), b"new");
    std::fs::remove_file(m.path("x")).unwrap();
    let list = ok(m.graviton(&["trash", "list", &m.source]), "trash list");
    let entry = list
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .find(|e| e.ends_with(&format!("/{old_ino}-x")))
        .unwrap_or_else(|| panic!("no entry for the replaced file in {list}"));
    ok(
        m.graviton(&["trash", "restore", "--entry", entry, &m.source]),
        "trash restore --entry",
    );
    assert_eq!(
        std::fs::read(m.path("x")).unwrap(),
        b"old",
        "the one asked for comes back"
    );
    ok(m.graviton(&["trash", "purge", &m.source]), "trash purge");

    // a file removed while open keeps working through its descriptor, and shows no links
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("open"))
        .unwrap();
    f.write_all(b"before").unwrap();
    std::fs::remove_file(m.path("open")).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.write_all(b" and after").unwrap();
    f.rewind().unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "before and after");
    drop(f);
    ok(
        m.graviton(&["trash", "restore", &m.source]),
        "trash restore",
    );
    assert_eq!(std::fs::read(m.path("open")).unwrap(), b"before and after");

    // and the trash folder itself is read-only to the mount
    std::fs::remove_file(m.path("open")).unwrap();
    let hour = std::fs::read_dir(m.path(".trash"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let entry = std::fs::read_dir(&hour)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let err = std::fs::remove_file(&entry).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

#[test]
fn rm_rf_then_restore_on_postgres() {
    if !graviton_testkit::servers_present() {
        return;
    }
    let m = Mounted::new_pg_formatted(&["--trash-days", "1"], "", None);
    rm_rf_and_restore(&m);
}

#[test]
fn expired_entries_are_deleted_and_gc_frees_their_blocks() {
    // 0.0001 days: 8.6 s
    let m = Mounted::new(
        &["--trash-days", "0.0001", "--small-blocks", "0"],
        "trash_every=1s",
    );
    let blocks = |m: &Mounted| m.status_json()["stored_blocks"].as_u64().unwrap();
    std::fs::write(m.path("kept"), common::random_bytes(1, 1 << 20)).unwrap();
    std::fs::write(m.path("gone"), common::random_bytes(2, 3 << 20)).unwrap();
    std::fs::remove_file(m.path("gone")).unwrap();
    ok(m.graviton(&["gc", "--grace", "0s", &m.source]), "gc");
    assert_eq!(blocks(&m), 4, "the trash holds the removed file's blocks");
    let start = Instant::now();
    while !ok(m.graviton(&["trash", "list", &m.source]), "trash list").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing expired");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "expired before its time"
    );
    ok(m.graviton(&["gc", "--grace", "0s", &m.source]), "gc");
    assert_eq!(
        blocks(&m),
        1,
        "expiry let gc free the removed file's blocks"
    );
    ok(m.graviton(&["fsck", "--verify-data", &m.source]), "fsck");
}

#[test]
fn the_trash_does_not_take_a_name_in_use_and_turns_on_later() {
    let m = Mounted::new(&[], "trash_every=1s");
    std::fs::create_dir(m.path(".trash")).unwrap();
    let out = m.graviton(&["settings", "set", "trash_days", "2", &m.source]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already has an entry named .trash"),
        "{err}"
    );
    ok(
        m.graviton(&["settings", "set", "trash_dir", ".bin", &m.source]),
        "settings set trash_dir",
    );
    ok(
        m.graviton(&["settings", "set", "trash_days", "2", &m.source]),
        "settings set trash_days",
    );
    let shown = ok(m.graviton(&["settings", &m.source]), "settings");
    assert!(
        shown.contains("trash_days = 2\n") && shown.contains("trash_dir = .bin\n"),
        "{shown}"
    );
    // the mount reads the settings again within trash_every
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(m.path("f"), b"f").unwrap();
    std::fs::remove_file(m.path("f")).unwrap();
    let list = ok(m.graviton(&["trash", "list", &m.source]), "trash list");
    assert!(list.contains("\t/f\n"), "{list}");
    assert!(m.path(".trash").is_dir(), "the user's own folder stays");
    let out = m.graviton(&["settings", "set", "trash_dir", ".other", &m.source]);
    assert!(
        !out.status.success(),
        "the folder's name changes only while it does not exist"
    );
}
