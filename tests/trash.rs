//! The trash through real mounts: what `rm -rf` removed comes back byte-identical, open files
//! removed keep working, and what expires is deleted and its blocks freed.

mod common;

use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mounted::{Mounted, PendingWriter, ok, run};

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
    assert_eq!(m.status_json()["trash_entries"], 12);

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

    // nothing is made in a directory in the trash, through a descriptor still open on it
    std::fs::create_dir(m.path("dir")).unwrap();
    let made = run(
        "python3",
        &[
            "-c",
            "import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); os.rmdir(sys.argv[1]); \
             os.open('new', os.O_CREAT|os.O_WRONLY, 0o644, dir_fd=fd)",
            m.path("dir").to_str().unwrap(),
        ],
        Path::new("/"),
    );
    let err = String::from_utf8_lossy(&made.stderr);
    assert!(
        !made.status.success() && err.contains("FileNotFoundError"),
        "{err}"
    );

    // and the trash folder itself is read-only to the mount
    std::fs::remove_file(m.path("open")).unwrap();
    let hour = std::fs::read_dir(m.path(".trash"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::read_dir(&hour)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    let err = std::fs::remove_file(&file).unwrap_err();
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
    // a file removed while a process of its own keeps it open (a log, say)
    let held = PendingWriter::start(&m.path("held"), "committed", "");
    std::fs::remove_file(m.path("held")).unwrap();
    std::fs::remove_file(m.path("gone")).unwrap();
    ok(m.graviton(&["gc", "--grace", "0s", &m.source]), "gc");
    assert_eq!(blocks(&m), 5, "the trash holds the removed files' blocks");
    let list = |m: &Mounted| ok(m.graviton(&["trash", "list", &m.source]), "trash list");
    let start = Instant::now();
    while list(&m).contains("/gone") {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing expired");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "expired before its time"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        list(&m).contains("/held"),
        "an open file expired: {}",
        list(&m)
    );
    drop(held);
    while !list(&m).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the closed file never expired"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
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

/// Snapshots, the trash and the settings that name them move with a dump to another engine.
#[test]
fn snapshots_and_the_trash_travel_in_a_dump() {
    if !graviton_testkit::servers_present() {
        return;
    }
    let m = Mounted::new(&["--trash-days", "3"], "");
    std::fs::write(m.path("kept"), b"kept").unwrap();
    std::fs::write(m.path("gone"), common::random_bytes(9, 2 << 20)).unwrap();
    ok(
        m.graviton(&["snapshot", "create", "s", &m.source]),
        "snapshot",
    );
    std::fs::remove_file(m.path("gone")).unwrap();
    m.unmount();
    let pg = m.load_into_postgres();
    let other = Mounted::existing(&pg, "");
    let shown = ok(other.graviton(&["settings", &pg]), "settings");
    assert!(shown.contains("trash_days = 3\n"), "{shown}");
    let list = ok(other.graviton(&["trash", "list", &pg]), "trash list");
    assert!(list.contains("\t/gone\n"), "{list}");
    assert_eq!(
        std::fs::read(other.path(".snapshots/s/kept")).unwrap(),
        b"kept"
    );
    let err = std::fs::write(other.path(".snapshots/s/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "still a snapshot");
    ok(other.graviton(&["trash", "restore", &pg]), "trash restore");
    assert_eq!(
        std::fs::read(other.path("gone")).unwrap(),
        common::random_bytes(9, 2 << 20)
    );
    // new inodes take numbers after the loaded ones, not after the snapshot's frozen ones
    std::fs::write(other.path("new"), b"new").unwrap();
    assert!(std::fs::metadata(other.path("new")).unwrap().ino() < graviton::meta::FROZEN);
    ok(other.graviton(&["fsck", &pg]), "fsck");
}

/// The folders left out of the root's listing take no other entry with them.
#[test]
fn the_root_lists_every_entry_beside_the_hidden_folders() {
    let m = Mounted::new(&["--trash-days", "1"], "");
    ok(
        m.graviton(&["snapshot", "create", "s", &m.source]),
        "snapshot",
    );
    for i in 0..5000 {
        std::fs::write(m.path(&format!("f{i}")), b"").unwrap();
    }
    assert_eq!(std::fs::read_dir(&m.mnt).unwrap().count(), 5000);
    let ls = ok(
        run("ls", &["-f", m.mnt.to_str().unwrap()], Path::new("/")),
        "ls -f",
    );
    assert_eq!(
        ls.lines().count(),
        5002,
        "ls -f lists . and .. and every file"
    );
}

/// Trash expiry on one machine spares a file another machine's mount has open: the entry
/// goes, but the file stays readable and writable there (the database keeps an inode a mount
/// holds as an orphan, as for any unlink), and its blocks are freed once it is closed.
#[test]
fn expiry_on_one_mount_spares_a_file_another_mount_has_open() {
    if !graviton_testkit::servers_present() {
        return;
    }
    // 0.0001 days: 8.6 s; this mount expires the trash every second
    let a = Mounted::new_pg_formatted(&["--trash-days", "0.0001"], "trash_every=1s", None);
    let b = a.another_mount("trash_every=1h");
    let first = common::random_bytes(3, 1 << 20);
    let mut open_on_b = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(b.path("log"))
        .unwrap();
    open_on_b.write_all(&first).unwrap();
    open_on_b.sync_all().unwrap();
    std::fs::remove_file(a.path("log")).unwrap();
    let list = |m: &Mounted| ok(m.graviton(&["trash", "list", &m.source]), "trash list");
    assert!(list(&a).contains("\t/log\n"), "{}", list(&a));
    let start = Instant::now();
    while list(&a).contains("/log") {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing expired");
        std::thread::sleep(Duration::from_millis(500));
    }
    // the other machine's program goes on with its file
    let more = common::random_bytes(4, 300_000);
    open_on_b.write_all(&more).unwrap();
    open_on_b.sync_all().unwrap();
    open_on_b.seek(std::io::SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    open_on_b.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), first.len() + more.len());
    assert!(back[..first.len()] == first[..] && back[first.len()..] == more[..]);
    drop(open_on_b);
    b.unmount();
    ok(a.graviton(&["fsck", &a.source]), "fsck");
}

/// A file in the trash has no links as applications see it: it takes no new name (ENOENT,
/// as for any unlinked file), even from root, who may reach the trash folder.
#[test]
fn a_trashed_file_takes_no_new_name() {
    let m = Mounted::new(&["--trash-days", "1"], "");
    std::fs::write(m.path("f"), b"f").unwrap();
    std::fs::remove_file(m.path("f")).unwrap();
    let list = ok(m.graviton(&["trash", "list", &m.source]), "trash list");
    let entry = list.split('\t').next().unwrap().to_string();
    let trashed = m.path(&format!(".trash/{entry}"));
    let err = std::fs::hard_link(&trashed, m.path("g")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    assert!(!m.path("g").exists());
    assert_eq!(std::fs::read(&trashed).unwrap(), b"f", "{list}");
    ok(m.graviton(&["fsck", &m.source]), "fsck");
}
