//! What a mount's session expiry means on a shared PostgreSQL volume. A mount cut off from the
//! database for longer than its session timeout loses its locks and the files it kept unlinked
//! while open; once it is back, every handle that held them, or had writes not yet committed,
//! fails, and its session id is not used again. An outage of the database itself, during which no mount can reach it, expires
//! no session.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg_server::Server;
use common::relay::Relay;
use common::{CTX, small_cfg};
use graviton::meta::prelude::*;
use graviton::meta::{Ino, LockKind, LockRequest, PgMetaStore, ROOT_INO, SessionInfo, TO_EOF};
use graviton::store::MemoryBlockStore;
use graviton::vfs::{Fs, FsError, OpenFlags};

/// A mount of the volume at `url` with a session of `timeout`, blocks in `store`.
fn mount(url: &str, store: &Arc<MemoryBlockStore>, timeout: Duration) -> Fs {
    let meta = PgMetaStore::connect_within(url, Duration::from_secs(30)).expect("connect");
    meta.begin_session(&SessionInfo {
        host: "test".into(),
        pid: std::process::id(),
        mountpoint: url.into(),
        timeout,
    })
    .expect("session");
    Fs::new(Arc::new(meta), store.clone(), small_cfg()).expect("fs")
}

fn session(fs: &Fs) -> i64 {
    fs.meta()
        .shared()
        .and_then(|s| s.session())
        .expect("a session")
}

/// An exclusive flock (or its release) through handle `fh`.
fn flock(fh: u64, kind: LockKind) -> LockRequest {
    LockRequest {
        owner: fh,
        kind,
        start: 0,
        end: TO_EOF,
        pid: 1,
    }
}

/// Waits up to 30 s for `done`.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn create(fs: &Fs, name: &str, content: &[u8]) -> (Ino, u64) {
    let (inode, fh) = fs
        .create(CTX, ROOT_INO, name.as_bytes(), 0o644, OpenFlags::RW)
        .expect("create");
    fs.write(fh, 0, content).expect("write");
    fs.fsync(fh).expect("fsync");
    (inode.ino, fh)
}

fn read(fs: &Fs, ino: Ino) -> Vec<u8> {
    let fh = fs.open(ino, OpenFlags::READ).expect("open");
    let data = fs.read(fh, 0, 1 << 20).expect("read");
    fs.release(fh).expect("release");
    data
}

/// The errno `what` failed with.
fn errno<T: std::fmt::Debug>(r: Result<T, FsError>, what: &str) -> i32 {
    match r {
        Ok(v) => panic!("{what} succeeded ({v:?})"),
        Err(e) => e.errno(),
    }
}

#[test]
fn a_mount_cut_off_past_its_timeout_loses_its_lock_and_its_handles_fail() {
    graviton_testkit::needs_servers!();
    const TIMEOUT: Duration = Duration::from_secs(2);
    let url = graviton_testkit::scratch_database();
    let (relay, through_relay) = Relay::in_front_of(&url);
    let store = Arc::new(MemoryBlockStore::new());
    let a = mount(&through_relay, &store, TIMEOUT);
    let b = mount(&url, &store, TIMEOUT);

    let (closed, fh) = create(&a, "closed", b"written and closed before the cut");
    a.release(fh).unwrap();
    let (locked, held) = create(&a, "locked", b"committed under A's lock");
    assert!(
        a.set_lock(held, &flock(held, LockKind::Exclusive), false)
            .unwrap()
    );
    // a file the lock protects by convention, written and not yet closed
    let (data, writing) = create(&a, "data", b"data committed under the lock");
    a.write(writing, 0, b"written, not closed").unwrap();
    let (unlinked, open) = create(&a, "unlinked", b"kept while open");
    a.unlink(ROOT_INO, b"unlinked").unwrap();
    let wanting = b.open(locked, OpenFlags::RW).unwrap();
    assert!(
        !b.set_lock(wanting, &flock(wanting, LockKind::Exclusive), false)
            .unwrap(),
        "A holds the lock"
    );
    let old = session(&a);

    relay.cut();
    until("B takes the lock of the mount that is cut off", || {
        b.set_lock(wanting, &flock(wanting, LockKind::Exclusive), false)
            .unwrap()
    });
    until("A's unlinked open file is reclaimed", || {
        b.meta().read_inode(unlinked).unwrap().is_none()
    });
    b.write(wanting, 0, b"B's").unwrap();
    b.flush(wanting).unwrap();

    relay.restore();
    until("A is back with a session", || {
        let a_now = session(&a);
        b.meta()
            .shared()
            .unwrap()
            .sessions()
            .unwrap()
            .iter()
            .any(|s| s.id == a_now)
    });

    // every operation on the handles that held the lock or the unlinked file fails
    assert_eq!(errno(a.write(held, 0, b"late"), "write"), libc::EIO);
    assert_eq!(errno(a.read(held, 0, 100), "read"), libc::EIO);
    assert_eq!(errno(a.flush(held), "flush"), libc::EIO);
    assert_eq!(errno(a.fsync(held), "fsync"), libc::EIO);
    let relock = a.set_lock(held, &flock(held, LockKind::Exclusive), false);
    assert_eq!(
        errno(relock, "locking through the handle that lost its lock"),
        libc::ENOLCK
    );
    let unlock = a.set_lock(held, &flock(held, LockKind::Unlock), false);
    assert_eq!(
        errno(unlock, "unlocking a lock the handle lost"),
        libc::ENOLCK
    );
    assert_eq!(
        errno(a.read(open, 0, 100), "read of the reclaimed file"),
        libc::EIO
    );
    assert_eq!(
        errno(a.write(open, 0, b"x"), "write to the reclaimed file"),
        libc::EIO
    );
    let closing = a.flush(writing);
    assert_eq!(
        errno(closing, "closing a file written under the lost lock"),
        libc::EIO
    );
    let _ = a.release(held);
    let _ = a.release(open);
    let _ = a.release(writing);
    assert_ne!(session(&a), old, "a session id is never used again");

    // B still holds the lock, A's new session takes other locks, and nothing is lost
    let again = a.open(locked, OpenFlags::RW).unwrap();
    assert!(
        !a.set_lock(again, &flock(again, LockKind::Exclusive), false)
            .unwrap(),
        "B's lock holds against A's new session"
    );
    a.release(again).unwrap();
    let (_, other) = create(&a, "other", b"after");
    assert!(
        a.set_lock(other, &flock(other, LockKind::Exclusive), false)
            .unwrap()
    );
    a.release(other).unwrap();
    assert_eq!(read(&b, locked), b"B'smitted under A's lock");
    assert_eq!(read(&a, locked), b"B'smitted under A's lock");
    assert_eq!(read(&b, closed), b"written and closed before the cut");
    assert_eq!(read(&b, data), b"data committed under the lock");
    b.release(wanting).unwrap();
}

#[test]
fn an_outage_of_the_database_expires_no_session() {
    graviton_testkit::needs_servers!();
    const TIMEOUT: Duration = Duration::from_secs(3);
    let server = Server::new();
    let store = Arc::new(MemoryBlockStore::new());
    let a = mount(&server.url(), &store, TIMEOUT);
    let b = mount(&server.url(), &store, TIMEOUT);
    let hold = |fs: &Fs, name: &str| {
        let (ino, fh) = create(fs, name, name.as_bytes());
        assert!(
            fs.set_lock(fh, &flock(fh, LockKind::Exclusive), false)
                .unwrap()
        );
        let gone = format!("{name}-unlinked");
        let (_, open) = create(fs, &gone, gone.as_bytes());
        fs.unlink(ROOT_INO, gone.as_bytes()).unwrap();
        (ino, fh, open)
    };
    let (a_file, a_held, a_open) = hold(&a, "a");
    let (b_file, b_held, b_open) = hold(&b, "b");
    let sessions = (session(&a), session(&b));

    server.stop();
    std::thread::sleep(3 * TIMEOUT);
    server.start();
    until("both mounts beat again", || {
        let listed = a.meta().shared().unwrap().sessions().unwrap();
        [sessions.0, sessions.1].iter().all(|id| {
            listed
                .iter()
                .any(|s| s.id == *id && s.heartbeat_age_secs < 1.0)
        })
    });
    // time enough for a mount to (wrongly) expire the other
    std::thread::sleep(2 * TIMEOUT);

    assert_eq!(
        (session(&a), session(&b)),
        sessions,
        "both sessions live on"
    );
    for (fs, file, other) in [(&a, b_file, &b), (&b, a_file, &a)] {
        let fh = fs.open(file, OpenFlags::RW).unwrap();
        assert!(
            !fs.set_lock(fh, &flock(fh, LockKind::Exclusive), false)
                .unwrap(),
            "the other mount's lock still holds"
        );
        fs.release(fh).unwrap();
        assert!(other.meta().read_inode(file).unwrap().is_some());
    }
    for (fs, held, open, gone) in [
        (&a, a_held, a_open, "a-unlinked"),
        (&b, b_held, b_open, "b-unlinked"),
    ] {
        assert_eq!(
            fs.read(open, 0, 100).unwrap(),
            gone.as_bytes(),
            "unlinked file kept"
        );
        fs.write(held, 0, b"still mine").unwrap();
        fs.flush(held).unwrap();
        fs.release(held).unwrap();
        fs.release(open).unwrap();
    }
}
