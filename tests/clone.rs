//! `graviton clone`: a copy of a file or a tree made of metadata only, through a real mount.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::mounted::{BIN, Mounted, PendingWriter, as_nobody, ok, run};

fn clone(m: &Mounted, src: &str, dst: &str) -> Output {
    m.graviton(&[
        "clone",
        m.path(src).to_str().unwrap(),
        m.path(dst).to_str().unwrap(),
    ])
}

fn failed_with(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(what),
        "expected a failure saying {what:?}, got {}: {err}",
        out.status
    );
}

/// A tree of files with several blocks, a hard link, a symlink, a fifo, an xattr and odd modes.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("deep/er/est")).unwrap();
    for i in 0..20u64 {
        let data = common::random_bytes(i, (i as usize) * 150_000 + 1);
        std::fs::write(root.join(format!("deep/f{i}")), data).unwrap();
    }
    std::fs::write(root.join("deep/er/est/small"), b"small").unwrap();
    std::fs::hard_link(root.join("deep/er/est/small"), root.join("link")).unwrap();
    std::os::unix::fs::symlink("deep/er/est/small", root.join("sym")).unwrap();
    ok(
        run("mkfifo", &[root.join("fifo").to_str().unwrap()], root),
        "mkfifo",
    );
    ok(
        run(
            "setfattr",
            &[
                "-n",
                "user.colour",
                "-v",
                "blue",
                root.join("deep/f3").to_str().unwrap(),
            ],
            root,
        ),
        "setfattr",
    );
    std::fs::set_permissions(
        root.join("deep/f1"),
        std::fs::Permissions::from_mode(0o4750),
    )
    .unwrap();
    std::os::unix::fs::chown(root.join("deep/f2"), Some(1234), Some(5678)).unwrap();
}

/// `find` with every attribute a copy keeps (`cp -a`): type, mode, owner, size, mtime, links,
/// xattrs are compared by `same_content`.
fn listing(root: &Path) -> String {
    let out = run(
        "find",
        &[".", "-printf", "%p %y %m %U %G %s %T@ %n %l\n"],
        root,
    );
    let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    lines.sort();
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn same_content(a: &Path, b: &Path) {
    // (diff calls two fifos different; `listing` compares them)
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    let diff = run(
        "diff",
        &["-r", "--no-dereference", "-x", "fifo", a_s, b_s],
        Path::new("/"),
    );
    ok(diff, "diff -r");
    assert_eq!(listing(a), listing(b), "attributes differ");
    let xattrs = |p: &Path| {
        ok(
            run("getfattr", &["-R", "-d", "--absolute-names", "."], p),
            "getfattr",
        )
    };
    assert_eq!(xattrs(a), xattrs(b));
}

fn block_bytes(m: &Mounted) -> (u64, u64) {
    let s = m.status_json();
    (
        s["stored_blocks"].as_u64().unwrap(),
        s["stored_bytes"].as_u64().unwrap(),
    )
}

#[test]
fn a_cloned_tree_reads_like_its_source_and_writes_no_block() {
    let m = Mounted::new(&[], "");
    make_tree(&m.path("src"));
    let before = block_bytes(&m);
    let logical = m.status_json()["usage"]["logical_bytes"].as_u64().unwrap();
    ok(clone(&m, "src", "copy"), "clone of a tree");
    same_content(&m.path("src"), &m.path("copy"));
    // the copy's hard link is a link between the copies, not to the source
    let (a, b) = (
        std::fs::metadata(m.path("copy/link")).unwrap(),
        std::fs::metadata(m.path("copy/deep/er/est/small")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_ne!(
        a.ino(),
        std::fs::metadata(m.path("src/link")).unwrap().ino()
    );
    assert_eq!(block_bytes(&m), before, "a clone stores no block");
    let after = m.status_json()["usage"]["logical_bytes"].as_u64().unwrap();
    assert_eq!(after, 2 * logical, "the copy counts like a copy");

    // a file, and copies are independent of their sources
    ok(clone(&m, "src/deep/f7", "f7"), "clone of a file");
    std::fs::write(m.path("copy/deep/f7"), b"changed").unwrap();
    assert_eq!(
        std::fs::read(m.path("f7")).unwrap(),
        std::fs::read(m.path("src/deep/f7")).unwrap()
    );
    assert_eq!(std::fs::read(m.path("copy/deep/f7")).unwrap(), b"changed");

    failed_with(&clone(&m, "src", "copy"), "File exists");
    failed_with(&clone(&m, "src", "src/deep/inside"), "Invalid argument");
    failed_with(&clone(&m, "missing", "x"), "No such file");
    let elsewhere = tempfile::tempdir().unwrap();
    failed_with(
        &m.graviton(&[
            "clone",
            m.path("src").to_str().unwrap(),
            elsewhere.path().join("x").to_str().unwrap(),
        ]),
        "not on one mount",
    );

    // what was written just before, through a handle still open, is in the copy
    let writer = PendingWriter::start(&m.path("src/deep/f0"), "", "late bytes");
    ok(
        clone(&m, "src/deep/f0", "f0"),
        "clone of a file being written",
    );
    let copied = std::fs::read(m.path("f0")).unwrap();
    assert!(copied.ends_with(b"late bytes"));
    assert_eq!(copied, std::fs::read(m.path("src/deep/f0")).unwrap());
    drop(writer);

    m.unmount();
    m.mount();
    same_content(&m.path("src/deep/er"), &m.path("copy/deep/er"));
    ok(m.graviton(&["fsck", "--verify-data", &m.source]), "fsck");
}

#[test]
fn an_ordinary_user_clones_only_what_it_may_read_and_owns_the_copy() {
    let m = Mounted::new(&[], "");
    std::fs::set_permissions(&m.mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(m.path("drop")).unwrap();
    std::fs::set_permissions(m.path("drop"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir(m.path("open")).unwrap();
    std::fs::write(m.path("open/readable"), b"for all").unwrap();
    std::fs::set_permissions(
        m.path("open/readable"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::create_dir(m.path("mixed")).unwrap();
    // enough readable files before it that part of the copy is committed when it fails
    for i in 0..1500 {
        std::fs::write(m.path(&format!("mixed/{i}")), b"x").unwrap();
    }
    std::fs::write(m.path("mixed/secret"), b"root only").unwrap();
    std::fs::set_permissions(
        m.path("mixed/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir(m.path("closed")).unwrap();
    std::fs::write(m.path("closed/inner"), b"behind a closed door").unwrap();
    std::fs::set_permissions(
        m.path("closed/inner"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(m.path("closed"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let nobody_clone = |src: &str, dst: &str| {
        as_nobody(
            BIN,
            &[
                "clone",
                m.path(src).to_str().unwrap(),
                m.path(dst).to_str().unwrap(),
            ],
        )
    };

    ok(nobody_clone("open", "drop/mine"), "clone by nobody");
    let copy = std::fs::metadata(m.path("drop/mine/readable")).unwrap();
    assert_eq!(
        (copy.uid(), copy.gid()),
        (65534, 65534),
        "the copy is the caller's"
    );
    assert_eq!(
        std::fs::read(m.path("drop/mine/readable")).unwrap(),
        b"for all"
    );

    // a tree with one file it may not read: nothing is made, and nothing is left behind
    let inodes = |m: &Mounted| m.status_json()["usage"]["inodes"].as_u64().unwrap();
    let before = inodes(&m);
    failed_with(&nobody_clone("mixed", "drop/theirs"), "Permission denied");
    assert!(!m.path("drop/theirs").exists());
    assert_eq!(inodes(&m), before, "a failed clone left inodes behind");
    ok(
        m.graviton(&["fsck", &m.source]),
        "fsck after a failed clone",
    );
    // into a directory it may not write
    failed_with(&nobody_clone("open", "mixed/x"), "Permission denied");
    // through a directory it may not search, whatever the file's own mode: the daemon walks
    // the path as the caller (the CLI cannot even look, so it fails before asking)
    let out = nobody_clone("closed/inner", "drop/inner");
    assert!(!out.status.success());
    assert!(!m.path("drop/inner").exists());
    // the request itself, sent with a path the client did not check: refused by the daemon
    let arg = graviton::fuse::ioctl::encode_clone(b"closed/inner", b"drop/sneaked").unwrap();
    // Debian's python3, which any user may run (`scripts/setup.sh` installs it)
    let out = as_nobody(
        "/usr/bin/python3",
        &[
            "-c",
            "import fcntl,os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); \
             a=bytearray.fromhex(sys.argv[3]); \
             fcntl.ioctl(fd,int(sys.argv[2]),a)",
            m.mnt.to_str().unwrap(),
            &graviton::fuse::ioctl::CLONE.to_string(),
            &arg.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        ],
    );
    failed_with(&out, "Permission denied");
    assert!(!m.path("drop/sneaked").exists());
}

#[test]
fn another_mount_never_sees_part_of_a_cloned_tree() {
    if !graviton_testkit::servers_present() {
        return;
    }
    let a = Mounted::new_pg("");
    let b = a.another_mount("");
    let files = 3000;
    let src = a.path("src");
    for d in 0..30 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..files / 30 {
            std::fs::write(src.join(format!("d{d}/f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
    let total = files + 30 + 1;
    let (src_path, dst_path) = (
        a.path("src").to_str().unwrap().to_string(),
        a.path("dst").to_str().unwrap().to_string(),
    );
    let start = Instant::now();
    let cloner = std::thread::spawn(move || {
        std::process::Command::new("timeout")
            .args(["-k5", "120", BIN, "clone", &src_path, &dst_path])
            .output()
            .unwrap()
    });
    let count = |root: &Path| walkdir_count(root);
    let mut looks = 0;
    let seen = loop {
        looks += 1;
        if b.path("dst").exists() {
            break count(&b.path("dst"));
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the clone never appeared"
        );
        if cloner.is_finished() && looks > 1 {
            // the other mount learns of it within its change feed's delay
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    ok(cloner.join().unwrap(), "clone");
    assert!(
        looks > 1,
        "the clone was done before the other mount first looked"
    );
    assert_eq!(seen, total, "the other mount saw part of the tree");
    assert_eq!(std::fs::read(b.path("dst/d29/f99")).unwrap(), b"29/99");
}

fn walkdir_count(root: &Path) -> usize {
    let mut n = 1;
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        n += match e.file_type().unwrap().is_dir() {
            true => walkdir_count(&e.path()),
            false => 1,
        };
    }
    n
}

#[test]
fn a_read_only_mount_refuses_a_clone() {
    let m = Mounted::new(&[], "");
    std::fs::write(m.path("f"), b"f").unwrap();
    m.unmount();
    let ro = Mounted::existing(&m.source, "ro");
    failed_with(&clone(&ro, "f", "g"), "Read-only file system");
    assert!(!ro.path("g").exists());
}
