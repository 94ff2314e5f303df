//! Several mounts of one PostgreSQL volume, each its own daemon: close-to-open consistency,
//! global flock and fcntl locks, a crashed mount's locks released after its session expires,
//! directory renames seen atomically, and other mounts' changes pushed promptly.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::mounted::Mounted;
use common::random_bytes;
use common::relay::Relay;

/// Short sessions so a crashed mount is noticed within seconds.
const OPTS: &str = "session_timeout=2";

fn read(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    v
}

#[test]
fn a_file_closed_on_one_mount_opens_with_its_new_content_on_the_other() {
    graviton_testkit::needs_servers!();
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(OPTS);
    let mut expected = random_bytes(1, 3 << 20);
    std::fs::write(a.path("f"), &expected).unwrap();
    assert_eq!(
        read(&b.path("f")),
        expected,
        "first read on the other mount"
    );
    for round in 0..20u64 {
        // small overwrite in the middle and an append, on alternating mounts
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let patch = random_bytes(100 + round, 4096);
        let at = (round as usize * 77_777) % (expected.len() - 4096);
        expected[at..at + 4096].copy_from_slice(&patch);
        let tail = random_bytes(200 + round, 1000 + round as usize);
        expected.extend_from_slice(&tail);
        {
            let mut f = OpenOptions::new()
                .write(true)
                .open(writer.path("f"))
                .unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(&patch, at as u64).unwrap();
            f.write_all_at(&tail, expected.len() as u64 - tail.len() as u64)
                .unwrap();
            f.flush().unwrap();
        } // closed: committed
        // close-to-open: what an open on the other mount sees
        let mut f = std::fs::File::open(reader.path("f")).unwrap();
        let size = f.metadata().unwrap().len();
        assert_eq!(
            size,
            expected.len() as u64,
            "round {round}: size seen by the other mount"
        );
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert!(
            got == expected,
            "round {round}: content seen by the other mount"
        );
    }
}

/// Two mounts of a new volume, the second through a relay, with `f` written on the first and
/// read on the second (whose kernel then caches its entry, attributes and pages for the TTL);
/// from then on the second mount's change notifications are held back.
fn late_feed(first: &[u8]) -> (Mounted, Relay, Mounted) {
    late_feed_with(first, OPTS)
}

/// `late_feed`, the second mount with the options `b_opts`.
fn late_feed_with(first: &[u8], b_opts: &str) -> (Mounted, Relay, Mounted) {
    let a = Mounted::new_pg(OPTS);
    let (relay, through) = Relay::in_front_of(a.source());
    let b = Mounted::existing(&through, b_opts);
    std::fs::write(a.path("f"), first).unwrap();
    assert_eq!(read(&b.path("f")), first);
    relay.hold_notifications();
    (a, relay, b)
}

/// Close-to-open does not wait for the change feed: with the other mount's notifications held
/// back, an open there still finds the file changed, and the size and bytes it then sees are
/// the new ones (the kernel's cached attributes are dropped with its pages).
#[test]
fn an_open_sees_the_new_size_and_content_while_the_change_feed_is_late() {
    graviton_testkit::needs_servers!();
    let (a, relay, b) = late_feed(b"first version");
    assert_eq!(std::fs::metadata(b.path("f")).unwrap().len(), 13);
    for (round, content) in [&b"the second, longer version"[..], b"third"]
        .into_iter()
        .enumerate()
    {
        std::fs::write(a.path("f"), content).unwrap();
        let mut f = std::fs::File::open(b.path("f")).unwrap();
        assert_eq!(
            f.metadata().unwrap().len(),
            content.len() as u64,
            "round {round}: the size seen on the other mount after an open"
        );
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got, content, "round {round}: the content seen there");
    }
    relay.release_notifications();
}

/// A change this mount makes to a file that another mount rewrote in place (same size), made
/// before the change feed says so, does not vouch for the pages the kernel kept of the old
/// content: the next open here reads the new bytes.
#[test]
fn an_open_after_a_chmod_here_reads_what_another_mount_rewrote_while_the_change_feed_is_late() {
    graviton_testkit::needs_servers!();
    let (a, relay, b) = late_feed(b"version one!");
    std::fs::write(a.path("f"), b"version two!").unwrap();
    std::fs::set_permissions(b.path("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read(&b.path("f")), b"version two!");
    relay.release_notifications();
}

/// The pattern of editors and configuration tools, a new version written aside and renamed
/// over the old, with the other mount's notifications held back: an open there by name finds
/// the new file, not the one it replaced (nor an error).
#[test]
fn an_open_finds_a_file_renamed_over_the_name_while_the_change_feed_is_late() {
    graviton_testkit::needs_servers!();
    let (a, relay, b) = late_feed(b"first version");
    for content in [&b"second version"[..], b"third"] {
        // the other mount's close is behind it: the file renamed over is deleted, not kept
        std::thread::sleep(std::time::Duration::from_millis(200));
        std::fs::write(a.path("f.tmp"), content).unwrap();
        std::fs::rename(a.path("f.tmp"), a.path("f")).unwrap();
        assert_eq!(
            read(&b.path("f")),
            content,
            "the other mount opens the new file"
        );
    }
    // removed and made again under the same name
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::remove_file(a.path("f")).unwrap();
    std::fs::write(a.path("f"), b"made again").unwrap();
    assert_eq!(read(&b.path("f")), b"made again");
    relay.release_notifications();
}

/// A change feed that stalls without its connection failing (the server's notifications to
/// the mount held back) is noticed within seconds: the mount stops answering from its local
/// cache, and a stat there (no kernel attribute cache) shows another mount's chmod.
#[test]
fn a_stalled_change_feed_is_noticed_and_the_cache_is_bypassed() {
    graviton_testkit::needs_servers!();
    let (a, relay, b) = late_feed_with(b"x", &format!("{OPTS},attr_timeout=0"));
    let mode = || std::fs::metadata(b.path("f")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(), 0o644);
    std::fs::set_permissions(a.path("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let start = Instant::now();
    while mode() != 0o600 && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let waited = start.elapsed();
    relay.release_notifications();
    assert_eq!(
        mode(),
        0o600,
        "the chmod seen on the mount whose feed stalled"
    );
    assert!(waited < Duration::from_secs(10), "seen after {waited:?}");
}

/// A mount answers from its local cache of records, and its changes are read-modify-writes of
/// them. With its notifications held back, its copy of a file another mount has grown is
/// stale: a chmod there keeps the other mount's size and bytes, and takes effect.
#[test]
fn a_chmod_while_the_change_feed_is_late_keeps_what_another_mount_wrote() {
    graviton_testkit::needs_servers!();
    let (a, relay, b) = late_feed(b"short");
    let grown = b"a much longer version of the file";
    std::fs::write(a.path("f"), grown).unwrap();
    std::fs::set_permissions(b.path("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    relay.release_notifications();
    for (m, which) in [(&a, "the writer"), (&b, "the mount that changed the mode")] {
        let f = std::fs::File::open(m.path("f")).unwrap();
        let meta = f.metadata().unwrap();
        assert_eq!(meta.len(), grown.len() as u64, "the size seen by {which}");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "the mode seen by {which}"
        );
        assert_eq!(read(&m.path("f")), grown, "the content seen by {which}");
    }
}

/// With its notifications held back, a mount's cached listing misses a name another mount
/// has just created there: an exclusive create of that name fails (EEXIST) and leaves the
/// other mount's file, rather than replacing its entry.
#[test]
fn an_exclusive_create_while_the_change_feed_is_late_does_not_replace_another_mounts_file() {
    graviton_testkit::needs_servers!();
    let (a, relay, b) = late_feed(b"x");
    // the listing is cached on the second mount, without the name
    assert_eq!(std::fs::read_dir(b.path("")).unwrap().count(), 1);
    std::fs::write(a.path("g"), b"made on the first mount").unwrap();
    let made = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(b.path("g"));
    assert_eq!(
        made.map(drop).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::AlreadyExists),
        "an exclusive create of a name another mount created"
    );
    std::fs::create_dir(b.path("g")).expect_err("a mkdir of that name");
    relay.release_notifications();
    assert_eq!(read(&a.path("g")), b"made on the first mount");
    // a lookup on the second mount answers from its listing until the released feed arrives
    let start = Instant::now();
    while !b.path("g").exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read(&b.path("g")), b"made on the first mount");
}

/// Appends a line to `data` `n` times, each under an exclusive lock taken with `lock`.
fn append_locked(
    lockfile: &Path,
    data: &Path,
    tag: &str,
    n: usize,
    lock: fn(&std::fs::File, bool),
) {
    for i in 0..n {
        let l = OpenOptions::new()
            .read(true)
            .write(true)
            .open(lockfile)
            .unwrap();
        lock(&l, true);
        let mut f = OpenOptions::new().append(true).open(data).unwrap();
        f.write_all(format!("{tag} {i}\n").as_bytes()).unwrap();
        drop(f);
        lock(&l, false);
    }
}

fn flock(f: &std::fs::File, on: bool) {
    let op = if on { libc::LOCK_EX } else { libc::LOCK_UN };
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), op) },
        0,
        "flock: {}",
        std::io::Error::last_os_error()
    );
}

fn fcntl_lock(f: &std::fs::File, on: bool) {
    // SAFETY: a zeroed flock struct is valid; fcntl on a descriptor we own.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if on { libc::F_WRLCK } else { libc::F_UNLCK } as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLKW, &fl) };
    assert_eq!(r, 0, "fcntl: {}", std::io::Error::last_os_error());
}

fn appends_from_two_mounts_lose_nothing(lock: fn(&std::fs::File, bool)) {
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(OPTS);
    std::fs::write(a.path("lock"), b"").unwrap();
    std::fs::write(a.path("data"), b"").unwrap();
    const N: usize = 150;
    from_both_mounts(&a, &b, |m, tag| {
        append_locked(&m.path("lock"), &m.path("data"), tag, N, lock)
    });
    for m in [&a, &b] {
        let text = String::from_utf8(read(&m.path("data"))).unwrap();
        assert_each_writers_lines(&text, N);
    }
}

/// Runs `append(mount, tag)` on mounts A and B at once.
fn from_both_mounts(a: &Mounted, b: &Mounted, append: impl Fn(&Mounted, &'static str) + Sync) {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        for (m, tag) in [(a, "A"), (b, "B")] {
            let (start, append) = (&start, &append);
            s.spawn(move || {
                start.wait();
                append(m, tag)
            });
        }
    });
}

/// `text` holds the lines "A i" and "B i" for every i below `n`, each once, in each writer's
/// order, and nothing else.
fn assert_each_writers_lines(text: &str, n: usize) {
    let lines: Vec<&str> = text.lines().collect();
    for tag in ["A", "B"] {
        let mine: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with(tag))
            .collect();
        let want: Vec<String> = (0..n).map(|i| format!("{tag} {i}")).collect();
        assert_eq!(
            mine, want,
            "mount {tag}'s lines, in order, none lost or torn"
        );
    }
    assert_eq!(
        lines.len(),
        2 * n,
        "every append is there, and nothing else"
    );
}

#[test]
fn appends_under_flock_from_two_mounts_lose_nothing() {
    graviton_testkit::needs_servers!();
    appends_from_two_mounts_lose_nothing(flock);
}

#[test]
fn appends_under_fcntl_locks_from_two_mounts_lose_nothing() {
    graviton_testkit::needs_servers!();
    appends_from_two_mounts_lose_nothing(fcntl_lock);
}

#[test]
fn locks_conflict_across_mounts_and_a_killed_mount_releases_its_locks() {
    graviton_testkit::needs_servers!();
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(OPTS);
    std::fs::write(a.path("f"), b"x").unwrap();
    let held = OpenOptions::new().read(true).open(b.path("f")).unwrap();
    // SAFETY: flock on descriptors we own.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let other = OpenOptions::new().read(true).open(a.path("f")).unwrap();
    let r = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(r, -1, "the lock is held on the other mount");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EWOULDBLOCK)
    );
    // a shared lock is also refused, and F_GETLK reports the holder as a write lock
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(a.path("f"))
        .unwrap();
    assert_eq!(
        unsafe { libc::fcntl(rw.as_raw_fd(), libc::F_GETLK, &mut fl) },
        0
    );
    assert_eq!(
        fl.l_type,
        libc::F_WRLCK as i16,
        "F_GETLK sees the other mount's lock"
    );
    drop(rw);

    // a blocked waiter on mount A wakes once B's daemon dies and its session expires
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        // SAFETY: flock on a descriptor this thread owns.
        let r = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX) };
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiter.is_finished(),
        "the waiter blocks while the lock is held"
    );
    let killed = Instant::now();
    b.kill_daemon();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiter.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the dead mount's lock was never released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (r, _) = waiter.join().unwrap();
    assert_eq!(r, 0, "the waiter got the lock");
    let after = killed.elapsed();
    eprintln!("lock of a killed mount released {after:?} after kill -9 (session timeout 2 s)");
    assert!(
        after < Duration::from_secs(2 + 5),
        "released within the session timeout plus a heartbeat or two: {after:?}"
    );
    drop(held);
}

/// The other mount never finds the directory under neither name, nor with part of its
/// content: it follows a chain of renames d0 → d1 → … → d40 while they happen.
#[test]
fn a_directory_rename_is_seen_atomically_from_the_other_mount() {
    graviton_testkit::needs_servers!();
    const RENAMES: usize = 40;
    const FILES: usize = 20;
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(OPTS);
    std::fs::create_dir(a.path("top")).unwrap();
    std::fs::create_dir(a.path("top/d0")).unwrap();
    for i in 0..FILES {
        std::fs::write(a.path(&format!("top/d0/f{i}")), format!("{i}")).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (top, stop) = (b.path("top"), stop.clone());
        std::thread::spawn(move || {
            let (mut at, mut checks) = (0usize, 0u64);
            while !stop.load(Ordering::SeqCst) {
                // names only move forward: the directory is at `at` or further along
                let found = (at..=RENAMES).find(|&j| top.join(format!("d{j}")).exists());
                let j = found.expect("the directory was under none of its names");
                at = j;
                match std::fs::read_dir(top.join(format!("d{j}"))) {
                    Ok(entries) => {
                        let n = entries.count();
                        assert_eq!(n, FILES, "d{j} seen with part of its content");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("listing d{j}: {e}"),
                }
                checks += 1;
            }
            (checks, at)
        })
    };
    for i in 0..RENAMES {
        std::fs::rename(
            a.path(&format!("top/d{i}")),
            a.path(&format!("top/d{}", i + 1)),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (checks, last) = watcher
        .join()
        .expect("the other mount saw a half-done rename");
    assert!(checks > 10, "the watcher ran ({checks} checks)");
    assert_eq!(
        last, RENAMES,
        "the watcher followed the directory to its last name"
    );
    assert_eq!(
        std::fs::read_to_string(b.path(&format!("top/d{RENAMES}/f7"))).unwrap(),
        "7"
    );
}

#[test]
fn other_mounts_changes_reach_a_mount_promptly() {
    graviton_testkit::needs_servers!();
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(OPTS);
    std::fs::write(a.path("f"), b"hello").unwrap();
    assert_eq!(std::fs::metadata(b.path("f")).unwrap().len(), 5); // cached on B now
    let mut worst = Duration::ZERO;
    for mode in [0o600, 0o640, 0o604, 0o644] {
        std::fs::set_permissions(a.path("f"), std::fs::Permissions::from_mode(mode)).unwrap();
        let t = Instant::now();
        loop {
            let m = std::fs::metadata(b.path("f")).unwrap();
            if m.permissions().mode() & 0o777 == mode {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "B never saw mode {mode:o}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        worst = worst.max(t.elapsed());
    }
    eprintln!("a chmod on one mount was visible on the other after at most {worst:?}");
    // a new file and a removed one, both in a directory the other mount has listed
    let listed: Vec<_> = std::fs::read_dir(b.mnt.clone()).unwrap().collect();
    assert_eq!(listed.len(), 1);
    std::fs::write(a.path("g"), b"g").unwrap();
    std::fs::remove_file(a.path("f")).unwrap();
    let t = Instant::now();
    loop {
        let names: Vec<String> = std::fs::read_dir(&b.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if names == ["g"] {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "B still lists {names:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// With a kernel TTL of a minute on the watching mount, entries and attributes it cached still
/// follow the other mount's renames, removals and chmods within moments: the change feed drops
/// them from the kernel, and the TTL is only the bound when the feed is down.
#[test]
fn kernel_cached_entries_follow_the_other_mount() {
    graviton_testkit::needs_servers!();
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(&format!("{OPTS},attr_timeout=60"));
    std::fs::create_dir(a.path("d")).unwrap();
    std::fs::write(a.path("d/f"), b"one").unwrap();
    // B caches the entry, its attributes and the directory's listing
    assert_eq!(std::fs::metadata(b.path("d/f")).unwrap().len(), 3);
    assert_eq!(std::fs::read_dir(b.path("d")).unwrap().count(), 1);
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !done() {
            assert!(t.elapsed() < Duration::from_secs(5), "B never saw {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
        t.elapsed()
    };
    std::fs::rename(a.path("d/f"), a.path("d/g")).unwrap();
    let renamed = until("the rename", &|| {
        !b.path("d/f").exists() && b.path("d/g").exists()
    });
    std::fs::set_permissions(a.path("d/g"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let chmodded = until("the chmod", &|| {
        std::fs::metadata(b.path("d/g")).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600)
    });
    std::fs::write(a.path("d/g"), b"longer content").unwrap();
    let rewritten = until("the new content", &|| {
        std::fs::read(b.path("d/g")).is_ok_and(|c| c == b"longer content")
    });
    std::fs::remove_file(a.path("d/g")).unwrap();
    let removed = until("the removal", &|| !b.path("d/g").exists());
    eprintln!(
        "with a 60 s TTL the other mount saw a rename after {renamed:?}, a chmod after \
         {chmodded:?}, new content after {rewritten:?}, a removal after {removed:?}"
    );
}

/// The usual logger: the log opened once with O_APPEND, then `n` lines, each written under
/// `lock` taken on the log's own descriptor (or none).
fn append_to_open_log(log: &Path, tag: &str, n: usize, lock: Option<fn(&std::fs::File, bool)>) {
    let mut f = OpenOptions::new().append(true).open(log).unwrap();
    for i in 0..n {
        if let Some(lock) = lock {
            lock(&f, true);
        }
        f.write_all(format!("{tag} {i}\n").as_bytes()).unwrap();
        if let Some(lock) = lock {
            lock(&f, false);
        }
    }
}

/// Both mounts append 300 lines to one log through a descriptor each keeps open; every line
/// is there once, whole, in each writer's order, as both mounts read it.
fn appends_to_an_open_log_lose_nothing(lock: Option<fn(&std::fs::File, bool)>) {
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(OPTS);
    std::fs::write(a.path("log"), b"").unwrap();
    const N: usize = 300;
    from_both_mounts(&a, &b, |m, tag| {
        append_to_open_log(&m.path("log"), tag, N, lock)
    });
    for m in [&a, &b] {
        let text = String::from_utf8(read(&m.path("log"))).unwrap();
        assert_each_writers_lines(&text, N);
        assert_eq!(
            std::fs::metadata(m.path("log")).unwrap().len(),
            text.len() as u64,
            "the size each mount reports"
        );
    }
}

#[test]
fn appends_under_flock_on_the_logs_own_descriptor_from_two_mounts_lose_nothing() {
    graviton_testkit::needs_servers!();
    appends_to_an_open_log_lose_nothing(Some(flock));
}

#[test]
fn o_append_writes_from_two_mounts_without_a_lock_lose_nothing() {
    graviton_testkit::needs_servers!();
    appends_to_an_open_log_lose_nothing(None);
}

/// A logger's O_APPEND writes on a shared volume are buffered: a commit per flush, not per
/// write. Lines buffered on A while B appends one of its own land after it, nothing
/// overwritten, and both mounts (A's kernel included) see the whole log after A's close.
#[test]
fn o_append_writes_are_buffered_and_land_after_another_mounts_append() {
    graviton_testkit::needs_servers!();
    let port = common::scrape::free_port();
    let a = Mounted::new_pg(&format!("{OPTS},metrics=127.0.0.1:{port}"));
    let b = a.another_mount(OPTS);
    std::fs::write(a.path("log"), b"").unwrap();
    let commits = || {
        common::scrape::sample(
            &common::scrape::scrape(port),
            "graviton_meta_query_duration_seconds_count",
            &["kind=\"commit\""],
        )
        .unwrap_or(0.0)
    };
    const N: usize = 2000;
    let before = commits();
    let mut log = OpenOptions::new().append(true).open(a.path("log")).unwrap();
    for i in 0..N / 2 {
        log.write_all(format!("A {i}\n").as_bytes()).unwrap();
    }
    let mut other = OpenOptions::new().append(true).open(b.path("log")).unwrap();
    other.write_all(b"B 0\n").unwrap();
    drop(other);
    for i in N / 2..N {
        log.write_all(format!("A {i}\n").as_bytes()).unwrap();
    }
    drop(log);
    let spent = commits() - before;
    let mut want: Vec<String> = vec!["B 0".into()];
    want.extend((0..N).map(|i| format!("A {i}")));
    for (m, name) in [(&a, "A"), (&b, "B")] {
        let text = String::from_utf8(read(&m.path("log"))).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_by_key(|l| !l.starts_with('B'));
        assert_eq!(
            lines, want,
            "every line once, whole, in order, as {name} reads it"
        );
        assert_eq!(
            std::fs::metadata(m.path("log")).unwrap().len(),
            text.len() as u64,
            "the size {name} reports"
        );
    }
    assert!(spent < 50.0, "{spent} commits for {N} appends");
}

/// An open file description lock (`F_OFD_SETLK`) through a descriptor: 0 or the errno.
fn ofd_lock(f: &std::fs::File) -> i32 {
    // SAFETY: a zeroed flock struct is valid; fcntl on a descriptor we own.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 10;
    match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) } {
        0 => 0,
        _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
    }
}

/// An OFD lock belongs to its open file description: another description is refused it, on
/// this mount and the other, until the description's last close releases it.
#[test]
fn an_ofd_lock_lasts_until_its_descriptions_last_close() {
    graviton_testkit::needs_servers!();
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(OPTS);
    std::fs::write(a.path("f"), b"0123456789").unwrap();
    let open = |m: &Mounted| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("f"))
            .unwrap()
    };
    let held = open(&a);
    assert_eq!(ofd_lock(&held), 0);
    let copy = held.try_clone().unwrap();
    assert_eq!(ofd_lock(&open(&a)), libc::EAGAIN, "held on this mount");
    assert_eq!(ofd_lock(&open(&b)), libc::EAGAIN, "held on the other mount");
    drop(held);
    assert_eq!(
        ofd_lock(&open(&b)),
        libc::EAGAIN,
        "a descriptor of it is still open"
    );
    drop(copy);
    let deadline = Instant::now() + Duration::from_secs(10);
    let other = open(&b);
    while ofd_lock(&other) != 0 {
        assert!(
            Instant::now() < deadline,
            "the lock outlived its description's last close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Inodes in the volume, as `graviton status` counts them.
fn inodes(m: &Mounted) -> u64 {
    m.status_json()["usage"]["inodes"].as_u64().unwrap()
}

/// `inodes` once it is `want`, or after 10 s (a last close reaches the daemon after close()
/// returns, and its release a moment later).
fn settled_inodes(m: &Mounted, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = inodes(m);
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file open on B keeps its content, takes writes and reads them back after A unlinks it
/// (`replace`: renames another file over it instead); it is gone once B closes it.
fn a_file_open_on_one_mount_outlives_its_name_on_the_other(replace: bool) {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let a = Mounted::new_pg(OPTS);
    let b = a.another_mount(OPTS);
    let content = random_bytes(7, 1 << 20);
    std::fs::write(a.path("f"), &content).unwrap();
    let before = inodes(&a);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.path("f"))
        .unwrap();
    if replace {
        std::fs::write(a.path("g"), b"the new f").unwrap();
        std::fs::rename(a.path("g"), a.path("f")).unwrap();
    } else {
        std::fs::remove_file(a.path("f")).unwrap();
    }
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert!(
        got == content,
        "B reads the whole file after A dropped its name"
    );
    f.write_all(b"written after").unwrap();
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(content.len() as u64)).unwrap();
    let mut tail = String::new();
    f.read_to_string(&mut tail).unwrap();
    assert_eq!(
        tail, "written after",
        "B's write to the nameless file reads back"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.metadata().unwrap().nlink() != 0 {
        assert!(Instant::now() < deadline, "B's fstat never showed no links");
        std::thread::sleep(Duration::from_millis(10));
    }
    if replace {
        assert_eq!(
            read(&b.path("f")),
            b"the new f",
            "the name is the new file's"
        );
    } else {
        assert!(!b.path("f").exists());
    }
    drop(f);
    let after = settled_inodes(&a, before - 1 + replace as u64);
    assert_eq!(
        after,
        before - 1 + replace as u64,
        "the nameless file is deleted after B's last close"
    );
}

#[test]
fn a_file_unlinked_on_one_mount_stays_readable_and_writable_where_it_is_open() {
    graviton_testkit::needs_servers!();
    a_file_open_on_one_mount_outlives_its_name_on_the_other(false);
}

#[test]
fn a_file_renamed_over_on_one_mount_stays_readable_and_writable_where_it_is_open() {
    graviton_testkit::needs_servers!();
    a_file_open_on_one_mount_outlives_its_name_on_the_other(true);
}

/// `git clone --no-hardlinks` of a repository of loose objects onto a PostgreSQL volume, 20
/// times, while another process keeps listing the clone's object directories (listings are
/// what the metadata cache keeps whole): every clone succeeds and checks out.
#[test]
fn twenty_clones_onto_a_postgres_volume_succeed_while_their_objects_are_listed() {
    graviton_testkit::needs_servers!();
    use common::mounted::{ok, run};
    let m = Mounted::new_pg(OPTS);
    let src = tempfile::tempdir().unwrap();
    let repo = src.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str], cwd: &Path| ok(run("git", args, cwd), &args.join(" "));
    git(&["init", "-q"], &repo);
    git(&["config", "user.email", "t@example.invalid"], &repo);
    git(&["config", "user.name", "Tester"], &repo);
    for i in 0..100 {
        std::fs::write(repo.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    git(&["add", "."], &repo);
    git(&["commit", "-qm", "many loose objects"], &repo);
    let done = Arc::new(AtomicBool::new(false));
    let lister = {
        let (done, root) = (done.clone(), m.mnt.clone());
        std::thread::spawn(move || {
            let mut listings = 0u64;
            while !done.load(Ordering::Relaxed) {
                for i in 0..20 {
                    let objects = root.join(format!("c{i}/.git/objects"));
                    if let Ok(fanout) = std::fs::read_dir(&objects) {
                        for d in fanout.flatten() {
                            let _ = std::fs::read_dir(d.path()).map(|l| l.count());
                            listings += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            listings
        })
    };
    let started = Instant::now();
    for i in 0..20 {
        let dst = m.path(&format!("c{i}"));
        let out = run(
            "git",
            &[
                "clone",
                "-q",
                "--no-hardlinks",
                repo.to_str().unwrap(),
                dst.to_str().unwrap(),
            ],
            src.path(),
        );
        assert!(
            out.status.success(),
            "clone {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("f99")).unwrap(),
            "file 99\n"
        );
    }
    done.store(true, Ordering::Relaxed);
    let listings = lister.join().unwrap();
    eprintln!(
        "20 clones took {:?}, with {listings} listings of their object directories meanwhile",
        started.elapsed()
    );
    git(&["fsck", "--strict"], &m.path("c19"));
}
