//! Snapshots through real mounts: point in time, read-only, hidden from the root's listing,
//! and freeing their blocks once deleted.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::mounted::{Mounted, PendingWriter, ok, run};

fn snapshot(m: &Mounted, args: &[&str]) -> Output {
    let mut all = vec!["snapshot"];
    all.extend_from_slice(args);
    all.push(&m.source);
    m.graviton(&all)
}

fn erofs(r: std::io::Result<impl Sized>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
        Err(e) => panic!("{what}: {e}, not EROFS"),
        Ok(_) => panic!("{what} succeeded in a snapshot"),
    }
}

fn points_in_time_and_refuses_writes(m: &Mounted) {
    std::fs::create_dir_all(m.path("data/sub")).unwrap();
    let big = common::random_bytes(7, 3 << 20);
    std::fs::write(m.path("data/big"), &big).unwrap();
    std::fs::write(m.path("data/sub/kept"), b"before").unwrap();
    std::fs::write(m.path("data/doomed"), b"soon gone").unwrap();
    ok(snapshot(m, &["create", "first"]), "snapshot create");

    // changes after it
    std::fs::write(m.path("data/sub/kept"), b"after").unwrap();
    std::fs::remove_file(m.path("data/doomed")).unwrap();
    std::fs::rename(m.path("data/big"), m.path("data/moved")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("data/moved"))
        .unwrap()
        .set_len(10)
        .unwrap();
    std::fs::write(m.path("data/new"), b"new").unwrap();

    let snap = m.path(".snapshots/first/data");
    assert_eq!(std::fs::read(snap.join("sub/kept")).unwrap(), b"before");
    assert_eq!(std::fs::read(snap.join("doomed")).unwrap(), b"soon gone");
    assert_eq!(std::fs::read(snap.join("big")).unwrap(), big);
    assert!(!snap.join("new").exists() && !snap.join("moved").exists());

    // hidden from the root's listing, found by name
    let root: Vec<String> = std::fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(root, vec!["data".to_string()]);
    let names: Vec<_> = std::fs::read_dir(m.path(".snapshots")).unwrap().collect();
    assert_eq!(names.len(), 1);

    // read-only to everything
    erofs(std::fs::write(snap.join("x"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(snap.join("sub/kept")),
        "open for writing",
    );
    erofs(std::fs::remove_file(snap.join("doomed")), "unlink");
    erofs(
        std::fs::rename(snap.join("doomed"), snap.join("d2")),
        "rename inside",
    );
    erofs(
        std::fs::rename(snap.join("doomed"), m.path("data/out")),
        "rename out",
    );
    erofs(
        std::fs::rename(m.path("data/new"), snap.join("in")),
        "rename in",
    );
    erofs(
        std::fs::set_permissions(snap.join("big"), std::fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    erofs(std::fs::create_dir(snap.join("d")), "mkdir");
    erofs(
        std::fs::hard_link(snap.join("big"), m.path("data/l")),
        "link from a snapshot",
    );
    erofs(
        std::fs::remove_dir(m.path(".snapshots/first/data/sub")),
        "rmdir",
    );
    erofs(
        std::fs::remove_dir_all(m.path(".snapshots")),
        "removing the folder",
    );
    erofs(
        std::fs::create_dir(m.path(".snapshots/mine")),
        "mkdir in the folder",
    );
    let setfattr = run(
        "setfattr",
        &[
            "-n",
            "user.a",
            "-v",
            "1",
            snap.join("big").to_str().unwrap(),
        ],
        Path::new("/"),
    );
    assert!(!setfattr.status.success(), "setfattr in a snapshot");
    // a file is read-only even through a clone's source path: copies made from a snapshot are
    // ordinary files
    ok(
        m.graviton(&[
            "clone",
            snap.join("sub").to_str().unwrap(),
            m.path("data/restored").to_str().unwrap(),
        ]),
        "clone out of a snapshot",
    );
    std::fs::write(m.path("data/restored/kept"), b"writable again").unwrap();

    let list = ok(snapshot(m, &["list"]), "snapshot list");
    assert!(
        list.starts_with("first\t") && list.trim_end().ends_with("\t/"),
        "{list}"
    );
    ok(
        snapshot(m, &["create", "part", "--path", "/data/sub"]),
        "snapshot of a directory",
    );
    assert_eq!(
        std::fs::read(m.path(".snapshots/part/kept")).unwrap(),
        b"after"
    );
    let out = snapshot(m, &["create", "part"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exists"));
    ok(m.graviton(&["fsck", &m.source]), "fsck");
    assert_eq!(
        m.status_json()["snapshots"],
        serde_json::json!(["first", "part"])
    );
}

#[test]
fn a_snapshot_keeps_the_moment_it_was_taken_and_refuses_every_change() {
    let m = Mounted::new(&[], "");
    points_in_time_and_refuses_writes(&m);
    // snapshots survive a remount and go into a dump
    m.unmount();
    m.mount();
    assert_eq!(
        std::fs::read(m.path(".snapshots/first/data/sub/kept")).unwrap(),
        b"before"
    );
    let file = m.dir.path().join("dump.jsonl");
    ok(
        m.graviton(&["dump", "--output", file.to_str().unwrap(), &m.source]),
        "dump",
    );
    let dump = std::fs::read_to_string(&file).unwrap();
    let frozen = graviton::meta::FROZEN;
    assert!(
        dump.lines().filter(|l| l.contains("\"ino\":")).any(|l| {
            l.split("\"ino\":")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n & frozen != 0)
        }),
        "the dump has the snapshot's inodes"
    );
}

#[test]
fn a_snapshot_of_a_postgres_volume_is_seen_by_every_mount() {
    if !graviton_testkit::servers_present() {
        return;
    }
    let m = Mounted::new_pg("");
    points_in_time_and_refuses_writes(&m);
    let other = m.another_mount("");
    assert_eq!(
        std::fs::read(other.path(".snapshots/first/data/sub/kept")).unwrap(),
        b"before"
    );
    erofs(
        std::fs::write(other.path(".snapshots/first/data/x"), b"x"),
        "create on another mount",
    );
}

#[test]
fn a_snapshot_holds_an_open_files_last_committed_state() {
    let m = Mounted::new(&[], "");
    let writer = PendingWriter::start(&m.path("log"), "committed", " and pending");
    ok(snapshot(&m, &["create", "mid"]), "snapshot create");
    drop(writer);
    assert_eq!(
        std::fs::read(m.path(".snapshots/mid/log")).unwrap(),
        b"committed"
    );
    assert_eq!(
        std::fs::read(m.path("log")).unwrap(),
        b"committed and pending"
    );
}

#[test]
fn deleting_a_snapshot_lets_gc_free_exactly_the_blocks_nothing_else_references() {
    let m = Mounted::new(&[], "");
    let gc = |m: &Mounted| {
        ok(m.graviton(&["gc", "--grace", "0s", &m.source]), "gc");
        let s = m.status_json();
        (
            s["stored_blocks"].as_u64().unwrap(),
            s["stored_bytes"].as_u64().unwrap(),
        )
    };
    // 1 MiB blocks: `kept` has 2, `gone` 3 of its own and one it shares with `kept`
    let kept = common::random_bytes(1, 2 << 20);
    let mut gone = kept[..1 << 20].to_vec();
    gone.extend(common::random_bytes(2, 3 << 20));
    std::fs::write(m.path("kept"), &kept).unwrap();
    std::fs::write(m.path("gone"), &gone).unwrap();
    let full = gc(&m);
    assert_eq!(full.0, 5);
    ok(snapshot(&m, &["create", "s"]), "snapshot create");
    std::fs::remove_file(m.path("gone")).unwrap();
    assert_eq!(gc(&m), full, "the snapshot keeps the removed file's blocks");

    // a copy being removed or made spares every block until it is done: here, none is
    ok(snapshot(&m, &["delete", "s"]), "snapshot delete");
    assert!(!m.path(".snapshots/s").exists());
    assert_eq!(
        gc(&m),
        (2, 2 << 20),
        "exactly the blocks only the snapshot held are freed"
    );
    assert_eq!(std::fs::read(m.path("kept")).unwrap(), kept);
    ok(m.graviton(&["fsck", "--verify-data", &m.source]), "fsck");
    let list = ok(snapshot(&m, &["list"]), "snapshot list");
    assert_eq!(list, "");
}

#[test]
fn the_snapshots_folder_does_not_take_a_name_in_use() {
    let m = Mounted::new(&[], "");
    std::fs::create_dir(m.path(".snapshots")).unwrap();
    std::fs::write(m.path(".snapshots/mine"), b"user data").unwrap();
    let out = snapshot(&m, &["create", "s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already has an entry named .snapshots"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(m.path(".snapshots/mine")).unwrap(),
        b"user data"
    );
}
