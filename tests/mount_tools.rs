//! Real mounts used by ordinary tools: tar, cp, git, sqlite, rsync, mmap, plus the CLI's
//! behaviour around mounting. Every mount is unmounted when its test ends, pass or fail.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use common::mounted::{BIN, Mounted, ok, run};

fn tree_matches(a: &Path, b: &Path) {
    let out = run(
        "diff",
        &[
            "-r",
            "--no-dereference",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
        Path::new("/"),
    );
    ok(out, "diff -r of the copied tree");
}

/// A source tree with regular files, symlinks, empty files and nested folders.
fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("src/deep/er")).unwrap();
    for i in 0..50 {
        let data: Vec<u8> = (0..(i * 997 % 70_000))
            .map(|j| (j * 31 + i) as u8)
            .collect();
        std::fs::write(root.join(format!("src/f{i}.txt")), &data).unwrap();
    }
    std::fs::write(root.join("src/deep/er/empty"), b"").unwrap();
    std::fs::write(root.join("big.bin"), common::random_bytes(3, 5 << 20)).unwrap();
    std::os::unix::fs::symlink("src/f1.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", root.join("dangling")).unwrap();
}

/// Builds the sample tree in the temporary folder, tars it, untars it into `untar` on the
/// mount and checks the copy; returns the source tree.
fn untar_sample(m: &Mounted) -> std::path::PathBuf {
    let src = m.dir.path().join("tree");
    sample_tree(&src);
    let tarball = m.dir.path().join("t.tar");
    let (t, s) = (tarball.to_str().unwrap(), src.to_str().unwrap());
    ok(run("tar", &["cf", t, "-C", s, "."], m.dir.path()), "tar c");
    std::fs::create_dir(m.path("untar")).unwrap();
    ok(
        run(
            "tar",
            &["xf", t, "-C", m.path("untar").to_str().unwrap()],
            m.dir.path(),
        ),
        "tar x",
    );
    tree_matches(&src, &m.path("untar"));
    src
}

#[test]
fn tar_cp_and_rsync_copy_trees_exactly() {
    let m = Mounted::new(&[], "");
    let src = untar_sample(&m);
    ok(
        run(
            "cp",
            &["-a", src.to_str().unwrap(), m.path("cp").to_str().unwrap()],
            m.dir.path(),
        ),
        "cp -a",
    );
    tree_matches(&src, &m.path("cp"));
    let dst = format!("{}/", m.path("rsync").display());
    ok(
        run(
            "rsync",
            &["-a", &format!("{}/", src.display()), &dst],
            m.dir.path(),
        ),
        "rsync -a",
    );
    tree_matches(&src, &m.path("rsync"));
    // a second rsync with changes transfers only those and still matches
    let pristine = m.dir.path().join("pristine");
    ok(
        run(
            "cp",
            &["-a", src.to_str().unwrap(), pristine.to_str().unwrap()],
            m.dir.path(),
        ),
        "cp -a locally",
    );
    std::fs::write(src.join("src/f3.txt"), b"changed").unwrap();
    ok(
        run(
            "rsync",
            &["-a", "--delete", &format!("{}/", src.display()), &dst],
            m.dir.path(),
        ),
        "rsync again",
    );
    tree_matches(&src, &m.path("rsync"));
    // everything survives an unmount and a fresh mount
    m.unmount();
    m.mount();
    tree_matches(&pristine, &m.path("untar"));
    tree_matches(&src, &m.path("rsync"));
}

#[test]
fn git_repository_works() {
    let m = Mounted::new(&[], "");
    let repo = m.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| ok(run("git", args, &repo), &format!("git {}", args.join(" ")));
    git(&["init", "-q"]);
    git(&["config", "user.email", "t@example.invalid"]);
    git(&["config", "user.name", "Tester"]);
    for i in 0..20 {
        std::fs::write(
            repo.join(format!("file{i}")),
            format!("content {i}\n").repeat(100),
        )
        .unwrap();
        git(&["add", "."]);
        git(&["commit", "-qm", &format!("commit {i}")]);
    }
    git(&["mv", "file0", "renamed"]);
    git(&["commit", "-qm", "rename"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--strict"]);
    let log = git(&["log", "--oneline"]);
    assert_eq!(log.lines().count(), 21);
    assert!(
        git(&["status", "--porcelain"]).is_empty(),
        "clean work tree"
    );
}

#[test]
fn sqlite_in_wal_mode_stays_consistent() {
    sqlite_wal_check(&Mounted::new(&[], ""));
}

/// A WAL-mode database built, checked, and checked again after a remount.
fn sqlite_wal_check(m: &Mounted) {
    let db = m.path("test.db");
    let sql = "PRAGMA journal_mode=WAL;\
        CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);\
        WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<20000) INSERT INTO t(v) SELECT hex(randomblob(40)) FROM c;\
        UPDATE t SET v = 'x' || v WHERE id % 7 = 0;\
        DELETE FROM t WHERE id % 11 = 0;\
        PRAGMA wal_checkpoint(TRUNCATE);\
        CREATE INDEX iv ON t(v);";
    let out = ok(
        run("sqlite3", &[db.to_str().unwrap(), sql], m.dir.path()),
        "sqlite3",
    );
    assert!(out.contains("wal"), "WAL mode on: {out}");
    let integrity = |when: &str| {
        let q = "PRAGMA integrity_check; SELECT count(*) FROM t;";
        let check = ok(
            run("sqlite3", &[db.to_str().unwrap(), q], m.dir.path()),
            when,
        );
        assert_eq!(
            check.split_whitespace().collect::<Vec<_>>(),
            ["ok", "18182"],
            "{when}"
        );
    };
    integrity("integrity");
    m.unmount();
    m.mount();
    integrity("integrity after remount");
}

#[test]
fn mmap_reads_and_writes_reach_the_file() {
    mmap_check(&Mounted::new(&[], ""));
}

/// Bytes written through a shared mapping reach the file, also after a remount.
fn mmap_check(m: &Mounted) {
    let path = m.path("mapped");
    let len = 3 * 4096 + 100;
    let initial = common::random_bytes(8, len);
    std::fs::write(&path, &initial).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: a shared mapping of a file this test owns, unmapped before the file is closed.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let s = std::slice::from_raw_parts_mut(p as *mut u8, len);
        assert!(s == &initial[..], "mapped bytes match the file");
        s[5000..5010].copy_from_slice(b"0123456789");
        s[len - 1] = 0xAB;
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        libc::munmap(p, len);
    }
    drop(f);
    let mut expect = initial.clone();
    expect[5000..5010].copy_from_slice(b"0123456789");
    expect[len - 1] = 0xAB;
    assert!(std::fs::read(&path).unwrap() == expect);
    m.unmount();
    m.mount();
    assert!(
        std::fs::read(&path).unwrap() == expect,
        "mmap writes persisted"
    );
}

#[test]
fn unlinked_open_file_works_through_the_mount() {
    let m = Mounted::new(&[], "");
    let path = m.path("scratch");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all(b"before unlink").unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    f.write_all(b", after").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before unlink, after");
    drop(f);
    // the kernel sends the last release after close() returns: give it a moment
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut files = m.status_json()["usage"]["files"].as_u64().unwrap();
    while files != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        files = m.status_json()["usage"]["files"].as_u64().unwrap();
    }
    assert_eq!(files, 0, "the file is gone after its last close");
}

#[test]
fn corrupt_block_is_eio_through_the_mount() {
    let m = Mounted::new(&["--chunker", "fixed-64k"], "");
    let data = common::random_bytes(4, 300_000);
    std::fs::write(m.path("victim"), &data).unwrap();
    m.unmount();
    // damage one block file in the store
    let blocks = m.vol.join("blocks/blake3");
    let mut files: Vec<_> = walk(&blocks);
    files.sort();
    let victim = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with("-65536"))
        .expect("a full block")
        .clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    m.mount();
    let err = std::fs::read(m.path("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

#[test]
fn status_works_while_mounted_and_counts_dedup() {
    let m = Mounted::new(&[], "");
    let data = common::random_bytes(6, 3 << 20);
    std::fs::write(m.path("one"), &data).unwrap();
    std::fs::write(m.path("two"), &data).unwrap();
    let s = m.status_json();
    assert_eq!(s["usage"]["files"], 2);
    assert_eq!(s["usage"]["logical_bytes"], 6 << 20);
    assert_eq!(s["referenced_bytes"], 3 << 20, "two copies stored once");
    let ratio = s["dedup_ratio"].as_f64().unwrap();
    assert!((ratio - 2.0).abs() < 0.01, "dedup ratio {ratio}");
}

/// Sequential reads reach the daemon as 1 MiB requests, not the 256 KiB a FUSE mount's default
/// 128 KiB kernel read-ahead gives.
#[test]
fn the_mount_reads_ahead_a_mebibyte() {
    use std::os::unix::fs::MetadataExt;
    let m = Mounted::new(&[], "");
    let dev = std::fs::metadata(&m.mnt).unwrap().dev();
    let setting = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let kb = std::fs::read_to_string(&setting).unwrap();
        if kb.trim() == "1024" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{setting}: {kb}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_large_listing_has_every_name_once_with_its_attributes() {
    // the first reply of a listing carries attributes for its first entries only; the rest
    // come as plain entries, and `ls -l` then looks them up
    let m = Mounted::new(&[], "");
    let dir = m.path("big");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..300usize {
        std::fs::write(dir.join(format!("f{i}")), vec![b'x'; i]).unwrap();
    }
    for pass in ["warm", "after a remount"] {
        if pass != "warm" {
            m.unmount();
            m.mount();
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                let i: usize = name[1..].parse().unwrap();
                assert_eq!(
                    e.metadata().unwrap().len(),
                    i as u64,
                    "{pass}: size of {name}"
                );
                name
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 300, "{pass}: every name, once");
    }
}

#[test]
fn cli_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (v, w, nothing) = (d.join("v"), d.join("w"), d.join("nothing"));
    let (v, w, nothing, here) = (
        v.to_str().unwrap(),
        w.to_str().unwrap(),
        nothing.to_str().unwrap(),
        d.to_str().unwrap(),
    );
    ok(run(BIN, &["format", v], d), "format");
    let cases: [(&[&str], &str); 10] = [
        (
            &["mount", "/nonexistent-volume", "/tmp"],
            "not a Graviton volume",
        ),
        (&["format", v], "already a Graviton volume"),
        (&["mount", v, "/no/such/mountpoint"], "does not exist"),
        (&["mount", v, here, "-o", "bogus_opt"], "bogus_opt"),
        (&["mount", v, here, "-o", "cache_mb"], "cache_mb"),
        (&["mount", v, here, "-o", "write_cache"], "needs writeback"),
        (&["format", "--chunker", "fixed-7", w], "block size"),
        (
            &["format", "--store", "ftp://x", w],
            "unsupported block store URL",
        ),
        (
            &["format", "postgres://u:secret@127.0.0.1:1/x"],
            "needs a block store",
        ),
        (&["status", nothing], "not a Graviton volume"),
    ];
    for (args, needle) in cases {
        let out = run(BIN, args, d);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
        assert!(
            !err.contains("secret"),
            "{args:?}: a password leaked: {err:?}"
        );
    }
}

#[test]
fn same_volume_cannot_be_mounted_twice() {
    let m = Mounted::new(&[], "");
    let other = m.dir.path().join("mnt2");
    std::fs::create_dir(&other).unwrap();
    let out = run(
        BIN,
        &["mount", m.vol.to_str().unwrap(), other.to_str().unwrap()],
        m.dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use") || err.contains("already mounted"),
        "{err}"
    );
    let out = run(
        BIN,
        &["mount", m.vol.to_str().unwrap(), m.mnt.to_str().unwrap()],
        m.dir.path(),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already mounted"));
}

#[test]
fn default_volume_is_created_on_first_mount() {
    let home = tempfile::Builder::new()
        .prefix("graviton-home")
        .tempdir_in("/tmp")
        .unwrap();
    let mnt = home.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new("timeout")
        .args(["60", BIN, "mount", mnt.to_str().unwrap()])
        .env("XDG_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    let guard = scopeguard(mnt.clone());
    ok(out, "graviton mount MOUNTPOINT");
    std::fs::write(mnt.join("hello"), b"world").unwrap();
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"world");
    assert!(
        home.path()
            .join("data/graviton/default/meta/CURRENT")
            .exists()
    );
    drop(guard);
}

/// Unmounts a mountpoint when dropped.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.0)
            .output();
    }
}
fn scopeguard(p: std::path::PathBuf) -> Unmount {
    Unmount(p)
}

/// open(O_TRUNC) of a program that is running must fail with ETXTBSY and leave it running
/// (with FUSE's atomic O_TRUNC the kernel dropped the file's pages first and crashed it).
#[test]
fn running_program_is_text_busy_and_keeps_running() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let m = Mounted::new(&[], "");
    for i in 0..5 {
        let p = m.path(&format!("sleep{i}"));
        std::fs::copy("/bin/sleep", &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = std::process::Command::new(&p).arg("10").spawn().unwrap();
        for (read, write, trunc) in [
            (false, true, false),
            (true, true, false),
            (true, false, true),
        ] {
            let mut o = std::fs::OpenOptions::new();
            o.read(read).write(write);
            if trunc {
                o.custom_flags(libc::O_TRUNC);
            }
            let err = o.open(&p).map(drop).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(libc::ETXTBSY),
                "read {read} write {write} trunc {trunc}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the program still runs"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read("/bin/sleep").unwrap()
        );
    }
}

/// SIGTERM (like `umount`) makes the daemon commit what it holds before exiting: a file written
/// and still open when the signal arrives reads back whole after a remount.
#[test]
fn sigterm_drains_pending_writes_before_exit() {
    let m = Mounted::new(&[], "");
    let data = common::random_bytes(12, 5 << 20);
    let mut f = std::fs::File::create(m.path("pending")).unwrap();
    f.write_all(&data).unwrap();
    let pid = m.daemon_pid().unwrap();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !common::mounted::exited(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not exit on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(f);
    m.mount();
    assert!(
        std::fs::read(m.path("pending")).unwrap() == data,
        "pending writes were committed at SIGTERM"
    );
}

/// Ordinary tools on a volume whose metadata is in PostgreSQL, across a remount.
#[test]
fn postgres_volume_works_with_tar_and_git() {
    graviton_testkit::needs_servers!();
    postgres_volume_with(None);
}

/// The same with the block content in PostgreSQL too.
#[test]
fn postgres_volume_with_postgres_blocks_works() {
    graviton_testkit::needs_servers!();
    postgres_volume_with(Some("postgres"));
}

/// And with the block content in S3 (the loopback test server).
#[test]
fn postgres_volume_with_s3_blocks_works() {
    graviton_testkit::needs_servers!();
    postgres_volume_with(Some(&common::mounted::s3_scratch_url()));
}

fn postgres_volume_with(store: Option<&str>) {
    let m = Mounted::new_pg_with_store("", store);
    let src = untar_sample(&m);
    let repo = m.path("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| ok(run("git", args, &repo), &format!("git {}", args.join(" ")));
    git(&["init", "-q"]);
    git(&["config", "user.email", "t@example.invalid"]);
    git(&["config", "user.name", "Tester"]);
    git(&["config", "gc.auto", "0"]); // no background gc holding the mount busy
    std::fs::write(repo.join("a"), "a\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    m.unmount();
    m.mount();
    tree_matches(&src, &m.path("untar"));
    git(&["fsck", "--strict"]);
    // a second mount of the volume sees the same tree; status lists both mounts
    let second = m.another_mount("");
    tree_matches(&src, &second.path("untar"));
    let s = m.status_json();
    let sessions = s["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 2, "{s}");
    assert!(!s.to_string().contains("password"));
    second.unmount();
    let s = m.status_json();
    assert_eq!(s["engine"], "postgres");
    assert!(!s["volume"].as_str().unwrap().is_empty());
}

/// Writes, truncates and chowns drop setuid (and setgid on a group-executable file) as on
/// ext4; the filesystem does it itself (FUSE_HANDLE_KILLPRIV_V2), so the kernel does not ask
/// for security.capability before every write.
#[test]
fn writes_truncates_and_chowns_drop_setuid_and_setgid() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mounted::new(&[], "");
    let f = m.path("prog");
    std::fs::write(&f, b"#!/bin/sh\n").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let set = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let as_nobody = |script: &str| {
        ok(
            run(
                "runuser",
                &["-u", "nobody", "--", "sh", "-c", script],
                Path::new("/"),
            ),
            script,
        )
    };
    let path = f.to_str().unwrap().to_string();

    set(&f, 0o6777);
    as_nobody(&format!("printf x >> {path}"));
    assert_eq!(mode(&f), 0o777, "an unprivileged write drops both bits");

    set(&f, 0o6777);
    as_nobody(&format!("truncate -s 1 {path}"));
    assert_eq!(mode(&f), 0o777, "an unprivileged truncate drops both bits");

    // fallocate too, in every mode (as on ext4), and the kernel shows it at once
    let g = m.path("alloc");
    std::fs::write(&g, b"data").unwrap();
    let gpath = g.to_str().unwrap();
    for how in ["-l 1M", "-n -l 2M", "-p -o 0 -l 4096"] {
        set(&g, 0o6777);
        as_nobody(&format!("fallocate {how} {gpath}"));
        assert_eq!(
            mode(&g),
            0o777,
            "an unprivileged fallocate {how} drops both bits"
        );
    }
    set(&g, 0o6777);
    ok(
        run("fallocate", &["-l", "3M", gpath], Path::new("/")),
        "fallocate",
    );
    assert_eq!(
        mode(&g),
        0o6777,
        "root (CAP_FSETID) keeps them when fallocating"
    );

    set(&f, 0o6757);
    as_nobody(&format!("printf y >> {path}"));
    // as on ext4 (Linux 6.x): the writer is not in the file's group, so setgid goes too
    assert_eq!(
        mode(&f),
        0o757,
        "a writer outside the group drops setgid too"
    );

    set(&f, 0o4755);
    std::os::unix::fs::chown(&f, Some(1234), None).unwrap();
    assert_eq!(mode(&f), 0o755, "chown drops setuid");

    set(&f, 0o4777);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"z")
        .unwrap();
    assert_eq!(
        mode(&f),
        0o4777,
        "root (CAP_FSETID) keeps setuid when writing"
    );

    let d = m.path("shared");
    std::fs::create_dir(&d).unwrap();
    set(&d, 0o2775);
    std::os::unix::fs::chown(&d, Some(1234), Some(1234)).unwrap();
    assert_eq!(mode(&d), 0o2775, "a directory keeps setgid across chown");
    m.unmount();
    m.mount();
    assert_eq!(mode(&f), 0o4777);
    assert_eq!(
        std::fs::read(&f).unwrap(),
        b"#yz",
        "the writes themselves landed"
    );
}

/// `-o writeback,write_cache` on PostgreSQL + S3, where the kernel also buffers writes in its
/// page cache (FUSE_WRITEBACK_CACHE): tar, sqlite, mmap and scattered writes, read back after a
/// remount and by an ordinary mount once the write-back mount is gone.
#[test]
fn writeback_mount_with_the_kernels_write_cache_keeps_every_byte() {
    graviton_testkit::needs_servers!();
    let m = Mounted::new_pg_with_store(
        "writeback,write_cache",
        Some(&common::mounted::s3_scratch_url()),
    );
    // the kernel writes back the times of a written file after its unlink: syncfs succeeds
    std::fs::write(m.path("doomed"), b"x").unwrap();
    std::fs::remove_file(m.path("doomed")).unwrap();
    ok(
        run("sync", &["-f", m.path("").to_str().unwrap()], m.dir.path()),
        "sync -f",
    );
    let src = untar_sample(&m);
    sqlite_wal_check(&m);
    mmap_check(&m);
    // scattered writes, appends and a truncate, mirrored in a local file
    let local = m.dir.path().join("model");
    let on_mount = m.path("scattered");
    for path in [&local, &on_mount] {
        let mut f = std::fs::File::create(path).unwrap();
        let mut x = 7u64;
        for i in 0..3000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 33) % (3 << 20);
            let len = 1 + (x >> 20) as usize % 9000;
            f.seek(SeekFrom::Start(off)).unwrap();
            f.write_all(&common::random_bytes(i, len)).unwrap();
            if i == 2000 {
                f.set_len(1 << 20).unwrap();
            }
        }
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"tail").unwrap();
        f.sync_all().unwrap();
    }
    let want = std::fs::read(&local).unwrap();
    assert!(
        std::fs::read(&on_mount).unwrap() == want,
        "read back before a remount"
    );
    m.unmount();
    m.mount();
    assert!(std::fs::read(&on_mount).unwrap() == want, "after a remount");
    tree_matches(&src, &m.path("untar"));
    m.unmount();
    let plain = Mounted::existing(&m.source, "");
    assert!(
        std::fs::read(plain.path("scattered")).unwrap() == want,
        "through a plain mount"
    );
    tree_matches(&src, &plain.path("untar"));
}

/// The names `readdir` returns from `dir` until the end, with the position after each.
///
/// # Safety
/// `dir` is an open directory stream.
unsafe fn read_names(dir: *mut libc::DIR) -> Vec<(String, libc::c_long)> {
    let mut out = Vec::new();
    loop {
        let e = unsafe { libc::readdir(dir) };
        if e.is_null() {
            return out;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        let pos = unsafe { libc::telldir(dir) };
        out.push((name.to_string_lossy().into_owned(), pos));
    }
}

#[test]
fn long_listings_seekdir_and_rewinddir_through_the_mount() {
    // more names than a directory handle reads at once (4096), so a listing spans chunks
    let m = Mounted::new(&[], "");
    let d = m.path("many");
    std::fs::create_dir(&d).unwrap();
    let n = 5000;
    for i in 0..n {
        std::fs::write(d.join(format!("file-{i:05}")), b"").unwrap();
    }
    let c = std::ffi::CString::new(d.to_str().unwrap()).unwrap();
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!dir.is_null(), "opendir");
    let first = unsafe { read_names(dir) };
    let mut names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<String> = (0..n).map(|i| format!("file-{i:05}")).collect();
    expected.extend([".".to_string(), "..".to_string()]);
    expected.sort_unstable();
    assert_eq!(names, expected, "every name exactly once");

    // seekdir back into the second chunk replays the same names in the same order
    let at = 4500;
    unsafe { libc::seekdir(dir, first[at].1) };
    let replay = unsafe { read_names(dir) };
    assert_eq!(replay, first[at + 1..], "seekdir to a telldir position");

    // a name created while the stream is open shows up after rewinddir
    std::fs::write(d.join("late"), b"").unwrap();
    unsafe { libc::rewinddir(dir) };
    let again = unsafe { read_names(dir) };
    assert_eq!(again.len(), n + 3);
    assert!(
        again.iter().any(|(n, _)| n == "late"),
        "rewinddir reads afresh"
    );

    // names removed while the stream is open are never returned twice, and the rest stay
    unsafe { libc::rewinddir(dir) };
    let head: Vec<_> = (0..10)
        .map(|_| unsafe { std::ffi::CStr::from_ptr((*libc::readdir(dir)).d_name.as_ptr()) })
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    for i in (0..n).step_by(2) {
        std::fs::remove_file(d.join(format!("file-{i:05}"))).unwrap();
    }
    let rest = unsafe { read_names(dir) };
    let mut seen: Vec<&str> = head
        .iter()
        .map(String::as_str)
        .chain(rest.iter().map(|(n, _)| n.as_str()))
        .collect();
    seen.sort_unstable();
    let before = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), before, "no name twice");
    for i in (1..n).step_by(2) {
        let kept = format!("file-{i:05}");
        assert!(seen.binary_search(&kept.as_str()).is_ok(), "{kept} kept");
    }
    assert_eq!(unsafe { libc::closedir(dir) }, 0);

    // a fresh listing sees exactly what is left
    let left = std::fs::read_dir(&d).unwrap().count();
    assert_eq!(left, n / 2 + 1);
}

/// A tmpfs of `bytes` on a fresh folder, unmounted when dropped (after the mount on it).
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new(bytes: usize) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let size = format!("size={bytes}");
        ok(
            run(
                "mount",
                &[
                    "-t",
                    "tmpfs",
                    "-o",
                    &size,
                    "tmpfs",
                    dir.path().to_str().unwrap(),
                ],
                Path::new("/"),
            ),
            "mounting a small tmpfs",
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run(
            "umount",
            &["-l", self.0.path().to_str().unwrap()],
            Path::new("/"),
        );
    }
}

#[test]
fn a_full_disk_is_enospc_and_spares_the_files_already_written() {
    let disk = SmallDisk::new(24 << 20);
    let vol = disk.0.path().join("vol");
    ok(
        run(BIN, &["format", vol.to_str().unwrap()], Path::new("/")),
        "graviton format",
    );
    let m = Mounted::existing(vol.to_str().unwrap(), "");
    let kept: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(m.path("kept"), &kept).unwrap();
    std::fs::File::open(m.path("kept"))
        .unwrap()
        .sync_all()
        .unwrap();

    // 64 MiB of bytes that do not dedup, onto 24 MiB
    let mut f = std::fs::File::create(m.path("big")).unwrap();
    let mut block = vec![0u8; 1 << 20];
    let mut failed = None;
    for i in 0..64u64 {
        for (j, b) in block.iter_mut().enumerate() {
            *b = ((i * 1_000_003 + j as u64 * 2_654_435_761) >> 7) as u8;
        }
        if let Err(e) = f.write_all(&block) {
            failed = Some(e);
            break;
        }
    }
    let failed = failed
        .or_else(|| f.sync_all().err())
        .expect("the disk filled");
    assert_eq!(
        failed.raw_os_error(),
        Some(libc::ENOSPC),
        "a full disk says so: {failed}"
    );
    drop(f);
    assert_eq!(
        std::fs::read(m.path("kept")).unwrap(),
        kept,
        "a file written before is intact"
    );
    drop(m);
}

/// The mount's flags as /proc/mounts lists them.
fn kernel_flags(mnt: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
        .expect("mounted");
    line.split(' ')
        .nth(3)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Runs `id -u`'s copy `id` in the mount as nobody: the effective user it reports.
fn euid_of_setuid_copy(m: &Mounted) -> String {
    let id = m.path("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = common::mounted::as_nobody(id.to_str().unwrap(), &["-u"]);
    ok(out, "the setuid copy of id").trim().to_string()
}

#[test]
fn suid_and_dev_are_off_unless_asked_for_and_reach_the_kernel_when_they_are() {
    let m = Mounted::new(&[], "");
    let flags = kernel_flags(&m.mnt);
    assert!(flags.contains(&"nosuid".to_string()), "{flags:?}");
    assert!(flags.contains(&"nodev".to_string()), "{flags:?}");
    assert_eq!(euid_of_setuid_copy(&m), "65534", "a setuid bit took effect");
    drop(m);

    let m = Mounted::new(&[], "suid,dev");
    let flags = kernel_flags(&m.mnt);
    assert!(!flags.contains(&"nosuid".to_string()), "{flags:?}");
    assert!(!flags.contains(&"nodev".to_string()), "{flags:?}");
    assert_eq!(
        euid_of_setuid_copy(&m),
        "0",
        "-o suid: the setuid bit works"
    );
}

/// A PostgreSQL URL with a password on the command line: the process puts it in its
/// environment and runs itself again, so `/proc/PID/cmdline` (readable by every user) no
/// longer holds it, and it warns.
#[test]
fn a_password_on_the_command_line_leaves_the_process_list_at_once() {
    // nothing listens on port 1: the command keeps retrying long enough to be looked at
    let mut child = std::process::Command::new(BIN)
        .args([
            "status",
            "postgres://graviton:hunter2-secret@127.0.0.1:1/vol",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("status"), "{cmdline}");
    assert!(
        !cmdline.contains("hunter2"),
        "the password is in the process list: {cmdline}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("carries a password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A daemon that logs more than a pipe holds before the mount is ready still starts: the
/// launcher reads its output as it comes.
#[test]
fn a_daemon_that_logs_a_lot_while_starting_still_mounts() {
    let m = Mounted::new(&[], "");
    m.unmount();
    let out = std::process::Command::new("timeout")
        .args([
            "-k5",
            "60",
            BIN,
            "mount",
            &m.source,
            m.mnt.to_str().unwrap(),
        ])
        .env("GRAVITON_LOG", "trace")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(m.path("f"), b"x").unwrap();
}

/// An unprivileged copy_file_range into a setuid/setgid file clears both bits, as a write
/// does on ext4 (which copies through its write path); root's copy keeps them.
#[test]
fn an_unprivileged_copy_file_range_drops_setuid_and_setgid() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = Mounted::new(&[], "");
    let (src, dst) = (m.path("src"), m.path("dst"));
    std::fs::write(&src, vec![7u8; 10_000]).unwrap();
    std::fs::write(&dst, b"").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    let script = "import os,sys\n\
        i=os.open(sys.argv[1], os.O_RDONLY)\n\
        o=os.open(sys.argv[2], os.O_WRONLY)\n\
        assert os.copy_file_range(i, o, 10000) == 10000\n";
    let copy = ["-c", script, src.to_str().unwrap(), dst.to_str().unwrap()];
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o6777)).unwrap();
    assert_eq!(mode(&dst), 0o6777, "cached by the kernel");
    ok(
        common::mounted::as_nobody("/usr/bin/python3", &copy),
        "copy_file_range as nobody",
    );
    assert_eq!(mode(&dst), 0o777, "an unprivileged copy drops both bits");
    assert_eq!(std::fs::read(&dst).unwrap(), vec![7u8; 10_000]);

    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o6777)).unwrap();
    ok(
        run("/usr/bin/python3", &copy, Path::new("/")),
        "copy_file_range as root",
    );
    assert_eq!(mode(&dst), 0o6777, "root (CAP_FSETID) keeps them");
}

/// The mode `stat -c %a` shows: a statx asking for the mode alone, as xfstests asks, which
/// the kernel answers from its cache while that is valid.
fn shown_mode(p: &Path) -> String {
    ok(
        run("stat", &["-c", "%a", p.to_str().unwrap()], Path::new("/")),
        "stat",
    )
    .trim()
    .to_string()
}

const DIRECT_WRITE: &str = "import os,sys,mmap\n\
    fd=os.open(sys.argv[1], os.O_WRONLY|os.O_DIRECT)\n\
    buf=mmap.mmap(-1, 4096)\n\
    buf.write(b'x'*4096)\n\
    os.pwritev(fd, [buf], 0)\n\
    os.close(fd)\n";

/// The file's owner, in its group and without CAP_FSETID, writes with O_DIRECT into its
/// setuid/setgid file (xfstests generic/355): setuid goes, setgid goes only when the file is
/// group-executable, and a stat asking for the mode alone shows it at once.
#[test]
fn an_owners_direct_write_shows_the_dropped_bits_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mounted::new(&[], "");
    let f = m.path("owned");
    std::fs::write(&f, b"this is a test\n").unwrap();
    std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
    for (before, after) in [
        (0o6644, "2644"),
        (0o6744, "2744"),
        (0o6654, "654"),
        (0o6754, "754"),
    ] {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(before)).unwrap();
        assert_eq!(
            shown_mode(&f),
            format!("{before:o}"),
            "cached by the kernel"
        );
        let out = common::mounted::as_nobody(
            "/usr/bin/python3",
            &["-c", DIRECT_WRITE, f.to_str().unwrap()],
        );
        ok(out, "the direct write as the owner");
        assert_eq!(
            shown_mode(&f),
            after,
            "after a write into a file of mode {before:o}"
        );
    }
}

/// A caller outside the file's group and without CAP_FSETID writes, fallocates, punches a
/// hole in or zeroes a range of a root-owned setuid/setgid file (xfstests generic/683-685):
/// both bits go, whether or not the file is group-executable.
#[test]
fn a_write_or_fallocate_by_a_caller_outside_the_group_drops_setgid() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mounted::new(&[], "");
    let f = m.path("rootfile");
    std::fs::write(&f, vec![1u8; 16384]).unwrap();
    let path = f.to_str().unwrap();
    let write = "import os,sys\nfd=os.open(sys.argv[1], os.O_WRONLY)\nos.pwrite(fd, b'x', 5)\n";
    let calls: [(&str, Vec<&str>); 4] = [
        ("/usr/bin/python3", vec!["-c", write, path]),
        ("/usr/bin/fallocate", vec!["-l", "32768", path]),
        (
            "/usr/bin/fallocate",
            vec!["-p", "-o", "0", "-l", "4096", path],
        ),
        (
            "/usr/bin/fallocate",
            vec!["-z", "-o", "4096", "-l", "4096", path],
        ),
    ];
    for (cmd, args) in &calls {
        for (before, after) in [(0o6666, "666"), (0o6766, "766")] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(before)).unwrap();
            assert_eq!(
                shown_mode(&f),
                format!("{before:o}"),
                "cached by the kernel"
            );
            ok(
                common::mounted::as_nobody(cmd, args),
                &format!("{cmd} {args:?} as nobody"),
            );
            assert_eq!(shown_mode(&f), after, "{cmd} {args:?} on mode {before:o}");
        }
    }
}

/// An unprivileged O_DIRECT write into a group-executable setuid/setgid file clears both
/// bits, and a stat right after shows it, as on ext4.
#[test]
fn an_unprivileged_direct_write_clears_setuid_and_setgid() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = Mounted::new(&[], "");
    let f = m.path("privileged");
    std::fs::write(&f, vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o6777)).unwrap();
    assert_eq!(
        std::fs::metadata(&f).unwrap().mode() & 0o7777,
        0o6777,
        "cached by the kernel"
    );
    let out = common::mounted::as_nobody(
        "/usr/bin/python3",
        &["-c", DIRECT_WRITE, f.to_str().unwrap()],
    );
    ok(out, "the direct write as nobody");
    assert_eq!(
        std::fs::metadata(&f).unwrap().mode() & 0o7777,
        0o777,
        "setuid and setgid still shown after an unprivileged write"
    );
}

/// A file handle (`name_to_handle_at`, what an NFS export of the mount hands out) opens its
/// file and directory again after the kernel has dropped them from its caches, and is stale
/// once the file is gone.
#[test]
fn file_handles_open_files_the_kernel_has_forgotten() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let m = Mounted::new(&[], "");
    std::fs::write(m.path("f"), b"by handle").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    /// A handle buffer: `struct file_handle` and room for its bytes.
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        data: [u8; 128],
    }
    let handle_of = |p: &Path| {
        let path = CString::new(p.as_os_str().as_bytes()).unwrap();
        let mut h = Handle {
            bytes: 128,
            kind: 0,
            data: [0; 128],
        };
        let mut mount_id = 0;
        // SAFETY: `h` is a file_handle followed by 128 bytes, as its `bytes` says.
        let r = unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                path.as_ptr(),
                (&mut h as *mut Handle).cast(),
                &mut mount_id,
                0,
            )
        };
        assert_eq!(
            r,
            0,
            "name_to_handle_at: {}",
            std::io::Error::last_os_error()
        );
        h
    };
    let (mut file, mut dir) = (handle_of(&m.path("f")), handle_of(&m.path("d")));
    let root = std::fs::File::open(&m.mnt).unwrap();
    let forget = || std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches");
    let open = |h: &mut Handle, flags| {
        // SAFETY: a handle filled by name_to_handle_at; the root descriptor is open.
        let fd =
            unsafe { libc::open_by_handle_at(root.as_raw_fd(), (h as *mut Handle).cast(), flags) };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: a descriptor just opened, owned from here.
            Ok(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        }
    };
    forget();
    let mut content = String::new();
    open(&mut file, libc::O_RDONLY)
        .expect("the file, by handle")
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "by handle");
    let d = open(&mut dir, libc::O_RDONLY | libc::O_DIRECTORY).expect("the directory, by handle");
    assert!(d.metadata().unwrap().is_dir());
    drop(d);
    std::fs::remove_file(m.path("f")).unwrap();
    forget();
    let gone = open(&mut file, libc::O_RDONLY).expect_err("a deleted file's handle");
    assert_eq!(gone.raw_os_error(), Some(libc::ESTALE), "{gone}");
}

/// fallocate of more than the free space the mount reports fails with ENOSPC, as on ext4, and
/// leaves the file as it was; one that fits succeeds.
#[test]
fn fallocate_beyond_the_free_space_is_enospc() {
    let m = Mounted::new(&[], "");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("f"))
        .unwrap();
    let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    let avail = st.blocks_available() * st.fragment_size();
    // SAFETY: fallocate on a descriptor we own.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, (2 * avail) as libc::off_t) };
    let err = std::io::Error::last_os_error();
    assert_eq!(
        r, -1,
        "an allocation of twice the free space ({avail} bytes) succeeded"
    );
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(f.metadata().unwrap().len(), 0, "the file is unchanged");
    // SAFETY: as above.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
}

/// An open directory that a rename replaces (or rmdir removes) still answers fstat, with no
/// links, until it is closed; then it is gone from the volume (xfstests generic/035).
#[test]
fn an_open_directory_outlives_its_name() {
    use std::os::unix::fs::MetadataExt;
    let m = Mounted::new(&[], "");
    let inodes = || m.status_json()["usage"]["inodes"].as_u64().unwrap();
    std::fs::create_dir(m.path("dir1")).unwrap();
    std::fs::create_dir(m.path("dir2")).unwrap();
    std::fs::create_dir(m.path("dir3")).unwrap();
    let before = inodes();
    let replaced = std::fs::File::open(m.path("dir2")).unwrap();
    let removed = std::fs::File::open(m.path("dir3")).unwrap();
    std::fs::rename(m.path("dir1"), m.path("dir2")).unwrap();
    std::fs::remove_dir(m.path("dir3")).unwrap();
    for d in [&replaced, &removed] {
        let st = d.metadata().expect("fstat of the open directory");
        assert!(st.is_dir());
        assert_eq!(st.nlink(), 0, "no links once its name is gone");
    }
    assert!(std::fs::read_dir(m.path("dir2")).unwrap().next().is_none());
    drop((replaced, removed));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while inodes() != before - 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the two directories are deleted after their last close: {} inodes, {before} before",
            inodes()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Access times, as the mount options say: relatime (the default) updates a file's access
/// time at its first read after a change and not at the next one, strictatime at every read,
/// noatime never; a read never changes the modification or change time.
#[test]
fn reads_update_access_times_as_the_mount_options_say() {
    use std::os::unix::fs::MetadataExt;
    let times = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (
            (m.atime(), m.atime_nsec()),
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
        )
    };
    let read_after_a_moment = |p: &Path| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::read(p).unwrap();
        times(p)
    };
    let m = Mounted::new(&[], "");
    let f = m.path("f");
    std::fs::write(&f, b"aaa").unwrap();
    let written = times(&f);
    let first = read_after_a_moment(&f);
    assert!(
        first.0 > written.0,
        "relatime: the first read after a write"
    );
    assert_eq!(
        (first.1, first.2),
        (written.1, written.2),
        "mtime and ctime stay"
    );
    let second = read_after_a_moment(&f);
    assert_eq!(second, first, "relatime: not again until the file changes");
    m.unmount();
    for (options, updates) in [("strictatime", true), ("noatime", false)] {
        let again = Mounted::existing(&m.source, options);
        let f = again.path("f");
        let before = times(&f);
        let after = read_after_a_moment(&f);
        assert_eq!(after.0 > before.0, updates, "{options}");
        let after2 = read_after_a_moment(&f);
        assert_eq!(after2.0 > after.0, updates, "{options}, read again");
        again.unmount();
    }
}
