//! Quotas through real mounts: a directory, user or volume quota refuses (EDQUOT) the write,
//! create, chown or rename that would take it past its limit, never more; a rename moves
//! usage, a hard link across quota trees is EXDEV; `df` shows the volume's capacity; usage
//! matches a recount (`fsck`), also after a crash, and on two mounts of one PostgreSQL volume
//! writing at once. One race is opened in-process, through the metadata fault layer: a
//! write while a close gives the file's reservation back.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::mounted::{Mounted, ok, run};

const MIB: u64 = 1 << 20;

fn quota(m: &Mounted, args: &[&str]) -> String {
    let mut all = vec!["quota"];
    all.extend_from_slice(args);
    all.push(&m.source);
    ok(m.graviton(&all), &format!("graviton {}", all.join(" ")))
}

/// A quota's (bytes, inodes), from `graviton quota get --json`.
fn usage(m: &Mounted, target: &[&str]) -> (u64, u64) {
    let mut args = vec!["get", "--json"];
    args.extend_from_slice(target);
    let out = quota(m, &args);
    let v: serde_json::Value = serde_json::from_str(&out).expect("quota json");
    let r = &v[0];
    assert_eq!(r["counting"], false, "{out}");
    (r["bytes"].as_u64().unwrap(), r["inodes"].as_u64().unwrap())
}

fn edquot<T>(r: std::io::Result<T>, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EDQUOT) => {}
        Err(e) => panic!("{what}: {e}, not EDQUOT"),
        Ok(_) => panic!("{what} succeeded past the quota"),
    }
}

/// Writes `total` bytes in 128 KiB pieces until done or refused; the bytes written and the
/// error that stopped it.
fn write_until(path: &Path, total: u64) -> (u64, Option<std::io::Error>) {
    let mut f = std::fs::File::create(path).expect("create");
    let piece = vec![7u8; 128 << 10];
    let mut done = 0;
    while done < total {
        if let Err(e) = f.write_all(&piece) {
            return (done, Some(e));
        }
        done += piece.len() as u64;
    }
    (done, f.sync_all().err())
}

fn fsck_clean(m: &Mounted) {
    let out = ok(m.graviton(&["fsck", &m.source]), "fsck");
    assert!(out.contains(": 0 problems"), "{out}");
}

#[test]
fn a_directory_quota_refuses_writes_creates_and_renames_past_its_limit() {
    let m = Mounted::new(&[], "");
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/a"), vec![1u8; MIB as usize]).unwrap();
    std::fs::write(m.path("d/small"), b"x").unwrap();
    // the quota counts what is there already
    quota(
        &m,
        &["set", "--path", "/d", "--bytes", "3m", "--inodes", "5"],
    );
    assert_eq!(usage(&m, &["--path", "d"]), (MIB + 4096, 2));

    // a write stops at the limit, with EDQUOT, and what it wrote counts
    let (written, err) = write_until(&m.path("d/b"), 4 * MIB);
    edquot(err.map_or(Ok(()), Err), "writing past 3 MiB");
    assert!(
        written <= 2 * MIB - 4096,
        "{written} bytes written past the quota"
    );
    assert!(
        written >= 2 * MIB - 4096 - (128 << 10),
        "refused early: {written}"
    );
    let b = std::fs::metadata(m.path("d/b")).unwrap().len();
    assert_eq!(b, written);
    assert_eq!(
        usage(&m, &["--path", "/d"]),
        (MIB + 4096 + b.div_ceil(4096) * 4096, 3)
    );

    // outside the tree nothing is limited
    let (outside, err) = write_until(&m.path("big"), 4 * MIB);
    assert!(err.is_none() && outside == 4 * MIB, "{err:?}");

    // renaming in moves the usage, so a file that does not fit is EDQUOT, never EXDEV
    edquot(
        std::fs::rename(m.path("big"), m.path("d/big")),
        "rename into a full quota",
    );
    std::fs::write(m.path("tiny"), b"t").unwrap();
    std::fs::rename(m.path("tiny"), m.path("d/tiny")).unwrap();
    assert_eq!(usage(&m, &["--path", "/d"]).1, 4);
    // and out again frees it
    std::fs::rename(m.path("d/a"), m.path("a")).unwrap();
    let (bytes, inodes) = usage(&m, &["--path", "/d"]);
    assert_eq!((bytes, inodes), (2 * 4096 + b.div_ceil(4096) * 4096, 3));

    // creates stop at the inode limit: 3 + 2 more
    std::fs::create_dir(m.path("d/sub")).unwrap();
    std::fs::write(m.path("d/sub/f"), b"f").unwrap();
    edquot(
        std::fs::write(m.path("d/g"), b"g"),
        "a create past the inode limit",
    );
    edquot(
        std::fs::create_dir(m.path("d/h")),
        "a mkdir past the inode limit",
    );
    edquot(
        std::os::unix::fs::symlink("a", m.path("d/s")),
        "a symlink past the inode limit",
    );
    // a directory moved in brings its tree: refused whole
    std::fs::create_dir_all(m.path("t/u")).unwrap();
    edquot(
        std::fs::rename(m.path("t"), m.path("d/t")),
        "a tree renamed in",
    );

    // a hard link may not join two quota trees (as ext4's project quotas)
    let e = std::fs::hard_link(m.path("d/tiny"), m.path("tiny-link")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
    std::fs::hard_link(m.path("a"), m.path("a-link")).unwrap();
    // nor may a rename take one of a file's several names out of its quota tree
    std::fs::hard_link(m.path("d/tiny"), m.path("d/tiny2")).unwrap();
    let e = std::fs::rename(m.path("d/tiny2"), m.path("tiny2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
    std::fs::remove_file(m.path("d/tiny2")).unwrap();

    // removing gives back; the counts are exact (fsck recounts), mounted and not
    std::fs::remove_dir_all(m.path("d/sub")).unwrap();
    std::fs::write(m.path("d/g"), b"g").unwrap();
    fsck_clean(&m);
    m.unmount();
    fsck_clean(&m);
}

#[test]
fn a_user_quota_follows_chown_and_df_shows_the_volume_capacity() {
    let m = Mounted::new(&[], "");
    quota(
        &m,
        &["set", "--volume", "--bytes", "100m", "--inodes", "1000"],
    );
    let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    assert_eq!(
        st.blocks() * st.fragment_size(),
        100 * MIB,
        "df shows the capacity"
    );
    assert_eq!(st.files(), 1000);
    std::fs::write(m.path("f"), vec![0u8; 10 * MIB as usize]).unwrap();
    let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    assert_eq!(st.blocks_available() * st.fragment_size(), 90 * MIB);
    assert_eq!(st.files_free(), 1000 - 2, "the root counts too");

    quota(&m, &["set", "--user", "65534", "--bytes", "1m"]);
    std::fs::write(m.path("two"), vec![0u8; 2 * MIB as usize]).unwrap();
    std::fs::write(m.path("half"), vec![0u8; 512 << 10]).unwrap();
    let chown = |p: &str| std::os::unix::fs::chown(m.path(p), Some(65534), Some(65534));
    edquot(chown("two"), "chown of 2 MiB to a user with 1 MiB");
    chown("half").unwrap();
    assert_eq!(usage(&m, &["--user", "65534"]), (512 << 10, 1));
    // the user's own writes stop at the limit
    let out = common::mounted::as_nobody(
        "dd",
        &[
            "if=/dev/zero",
            &format!("of={}", m.path("half").display()),
            "bs=128k",
            "count=16",
            "oflag=append",
            "conv=notrunc",
        ],
    );
    assert!(!out.status.success(), "dd past the user quota succeeded");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("quota exceeded"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(m.path("half")).unwrap().len(), MIB);
    let list = quota(&m, &["list"]);
    assert!(
        list.contains("user:65534\tbytes 1048576 of 1048576"),
        "{list}"
    );
    assert!(list.contains("volume\tbytes "), "{list}");
    let status = m.status_json();
    // the volume's and the user's, and the trash's count that comes with the volume's
    assert_eq!(
        status["quotas"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    quota(&m, &["remove", "--user", "65534"]);
    chown("two").unwrap();
    fsck_clean(&m);
}

#[test]
fn trash_counts_against_the_volume_but_not_the_directory() {
    let m = Mounted::new(&["--trash-days", "1"], "");
    std::fs::create_dir(m.path("d")).unwrap();
    quota(&m, &["set", "--path", "/d", "--bytes", "1g"]);
    quota(&m, &["set", "--volume", "--bytes", "1g"]);
    std::fs::write(m.path("d/f"), vec![3u8; 3 * MIB as usize]).unwrap();
    assert_eq!(usage(&m, &["--path", "/d"]), (3 * MIB, 1));
    let used_and_avail = || {
        let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
        assert_eq!(st.blocks() * st.fragment_size(), 1 << 30);
        (
            (st.blocks() - st.blocks_free()) * st.fragment_size(),
            st.blocks_available() * st.fragment_size(),
        )
    };
    assert_eq!(used_and_avail(), (3 * MIB, (1 << 30) - 3 * MIB));
    std::fs::remove_file(m.path("d/f")).unwrap();
    assert_eq!(usage(&m, &["--path", "/d"]), (0, 0));
    // the root, d and the file (the trash's own folders count nothing)
    assert_eq!(usage(&m, &["--volume"]), (3 * MIB, 3));
    // the trash is counted apart: df leaves it out of Used, and it is not available
    assert_eq!(trash_usage(&m), (3 * MIB, 1));
    assert_eq!(used_and_avail(), (0, (1 << 30) - 3 * MIB));
    ok(
        m.graviton(&["trash", "restore", &m.source]),
        "trash restore",
    );
    assert_eq!(usage(&m, &["--path", "/d"]), (3 * MIB, 1));
    assert_eq!(trash_usage(&m), (0, 0));
    assert_eq!(used_and_avail(), (3 * MIB, (1 << 30) - 3 * MIB));
    std::fs::remove_file(m.path("d/f")).unwrap();
    fsck_clean(&m);
    ok(m.graviton(&["trash", "purge", &m.source]), "trash purge");
    assert_eq!(trash_usage(&m), (0, 0));
    assert_eq!(usage(&m, &["--volume"]), (0, 2));
    assert_eq!(used_and_avail(), (0, 1 << 30));
    fsck_clean(&m);
    quota(&m, &["remove", "--volume"]);
    let list = quota(&m, &["list"]);
    assert!(
        !list.contains("trash"),
        "the trash's count goes with the volume's quota: {list}"
    );
}

/// The trash's (bytes, inodes), from `graviton quota list --json`.
fn trash_usage(m: &Mounted) -> (u64, u64) {
    let out = quota(m, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("quota json");
    let t = v
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["of"] == "trash")
        .unwrap_or_else(|| panic!("no trash count: {out}"));
    (t["bytes"].as_u64().unwrap(), t["inodes"].as_u64().unwrap())
}

#[test]
fn a_crash_leaves_reservations_fsck_finds_and_repairs() {
    let m = Mounted::new(&[], "");
    std::fs::create_dir(m.path("d")).unwrap();
    quota(&m, &["set", "--path", "/d", "--bytes", "1g"]);
    // a close gives back what its writes held, before it returns
    std::fs::write(m.path("d/closed"), vec![5u8; 3 * MIB as usize]).unwrap();
    assert_eq!(usage(&m, &["--path", "/d"]), (3 * MIB, 1));
    std::fs::remove_file(m.path("d/closed")).unwrap();
    let mut f = std::fs::File::create(m.path("d/open")).unwrap();
    f.write_all(&vec![5u8; 3 * MIB as usize]).unwrap();
    f.sync_all().unwrap();
    let (held, _) = usage(&m, &["--path", "/d"]);
    assert!(
        held > 3 * MIB,
        "an open file being written holds room: {held}"
    );
    m.kill_daemon();
    drop(f);
    let _ = run(
        "fusermount3",
        &["-uz", m.mnt.to_str().unwrap()],
        Path::new("/"),
    );
    let out = m.graviton(&["fsck", &m.source]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("1 files hold quota reservations no mount uses"),
        "{said}"
    );
    let out = ok(
        m.graviton(&["fsck", "--repair", &m.source]),
        "fsck --repair",
    );
    assert!(out.contains(": 0 problems"), "{out}");
    m.mount();
    assert_eq!(usage(&m, &["--path", "/d"]), (3 * MIB, 1));
}

#[test]
fn two_mounts_of_a_postgres_volume_stay_within_a_directory_quota() {
    let a = Mounted::new_pg("");
    let b = a.another_mount("");
    std::fs::create_dir(a.path("d")).unwrap();
    quota(&a, &["set", "--path", "/d", "--bytes", "100m"]);
    let writer = |m: &Mounted, who: &str| {
        let dir = m.path("d");
        let who = who.to_string();
        std::thread::spawn(move || {
            let (mut total, mut files) = (0, 0);
            for i in 0..100 {
                let (n, err) = write_until(&dir.join(format!("{who}-{i}")), 4 * MIB);
                total += n;
                files += 1;
                match err {
                    None => {}
                    Some(e) if e.raw_os_error() == Some(libc::EDQUOT) => {
                        return (total, files, true);
                    }
                    Some(e) => panic!("{who}: {e}"),
                }
            }
            (total, files, false)
        })
    };
    let (wa, wb) = (writer(&a, "a"), writer(&b, "b"));
    let (ta, fa, ra) = wa.join().unwrap();
    let (tb, fb, rb) = wb.join().unwrap();
    assert!(ra && rb, "both writers are refused at the quota");
    assert!(
        ta + tb <= 100 * MIB,
        "{} bytes written under 100 MiB",
        ta + tb
    );
    assert!(ta + tb >= 90 * MIB, "refused early: {} bytes", ta + tb);
    let (bytes, _) = usage(&a, &["--path", "/d"]);
    assert!(bytes <= 100 * MIB, "usage {bytes}");
    b.unmount();
    a.unmount();
    // what was written, exactly (128 KiB pieces: whole units), and a recount agrees
    assert_eq!(usage(&a, &["--path", "/d"]), (ta + tb, fa + fb));
    fsck_clean(&a);
}

#[test]
fn quotas_move_with_dump_and_load_and_are_counted_again() {
    graviton_testkit::needs_servers!();
    let m = Mounted::new(&[], "");
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/f"), vec![1u8; 5000]).unwrap();
    quota(
        &m,
        &["set", "--path", "/d", "--bytes", "1m", "--inodes", "10"],
    );
    quota(&m, &["set", "--group", "0", "--inodes", "100"]);
    m.unmount();
    let pg = m.load_into_postgres();
    let loaded = Mounted::existing(&pg, "");
    assert_eq!(usage(&loaded, &["--path", "/d"]), (8192, 1));
    // the root, d and f
    assert_eq!(usage(&loaded, &["--group", "0"]), (8192, 3));
    let list = quota(&loaded, &["list"]);
    assert!(
        list.contains("/d\tbytes 8192 of 1048576\tinodes 1 of 10"),
        "{list}"
    );
    edquot(
        std::fs::write(loaded.path("d/big"), vec![0u8; 2 << 20]),
        "a write past the loaded quota",
    );
}

/// Several processes write through one handle (an inherited descriptor) and one of them
/// closes it: the close gives the file's reservation back in its commit. A write that
/// reserves while that commit is in flight keeps its room: a later writer of another file
/// meets EDQUOT, and this file's own commit does not.
#[test]
fn a_write_while_a_close_gives_room_back_keeps_its_reservation() {
    use common::{create, random_bytes, read_all, small_cfg, tempdir};
    use graviton::meta::{MetaStore, RocksMetaStore};
    use graviton::store::MemoryBlockStore;
    use graviton::vfs::{Fs, FsError, OpenFlags, quota};

    let dir = tempdir(true);
    let engine: Arc<dyn MetaStore> =
        Arc::new(RocksMetaStore::open(dir.path().join("meta")).expect("open meta"));
    let faults = Arc::new(graviton_testkit::FaultyMeta::new(engine));
    let fs = Fs::new(
        faults.clone(),
        Arc::new(MemoryBlockStore::new()),
        small_cfg(),
    )
    .expect("fs");
    quota::scan::set(fs.meta().as_ref(), quota::Key::Volume, 8 * MIB, 0).expect("set");

    let (ino, fh) = create(&fs, "shared");
    let first = random_bytes(1, MIB as usize);
    assert_eq!(fs.write(fh, 0, &first).expect("write"), first.len());
    let later = random_bytes(2, MIB as usize);
    let hold = faults.hold_commit_deleting(quota::RESERVED);
    std::thread::scope(|s| {
        // one process closes its copy of the descriptor: the close's commit is held
        let closing = s.spawn(|| fs.flush(fh));
        hold.wait_reached(Duration::from_secs(30));
        // another process writes on through its copy, past the room the close gives back
        let (done, wrote) = std::sync::mpsc::channel();
        let (fs, later) = (&fs, &later);
        let writer = s.spawn(move || {
            let r = fs.write(fh, 3 * MIB, later);
            let _ = done.send(());
            r
        });
        // (a write that waits for the close is let through when the commit goes on)
        let _ = wrote.recv_timeout(Duration::from_secs(1));
        hold.release();
        closing.join().unwrap().expect("close");
        assert_eq!(writer.join().unwrap().expect("write"), later.len());
    });

    // another file takes what the quota has left
    let (_, other) = create(&fs, "other");
    let piece = vec![7u8; 256 << 10];
    let mut written = 0;
    let refused = loop {
        match fs.write(other, written, &piece) {
            Ok(n) => written += n as u64,
            Err(e) => break e,
        }
        assert!(
            written <= 8 * MIB,
            "wrote {written} bytes under an 8 MiB quota"
        );
    };
    assert!(matches!(refused, FsError::QuotaExceeded), "{refused:?}");
    fs.flush(other).expect("close the other file");
    fs.release(other).expect("release the other file");

    // the file's own last close commits what was written while the first close ran
    fs.flush(fh).expect("the shared file's close");
    fs.release(fh).expect("release");
    let fh = fs.open(ino, OpenFlags::READ).expect("open");
    assert_eq!(read_all(&fs, fh, 0, MIB), first);
    assert_eq!(read_all(&fs, fh, 3 * MIB, MIB), later);
    fs.release(fh).expect("release");
    let rec = quota::record(fs.meta().read().unwrap().as_mut(), quota::Key::Volume)
        .unwrap()
        .unwrap();
    assert!(rec.bytes <= 8 << 20, "usage {} over the quota", rec.bytes);
}
