//! The PostgreSQL engine when its server goes away: operations wait for it to come back (up to
//! the configured time) and then complete; past that time they fail with EIO, and nothing is
//! half-applied. Uses a private server, since stopping the shared test server would disturb
//! the other tests.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg_server::Server;
use common::relay::Relay;
use common::{CTX, small_cfg};
use graviton::meta::prelude::*;
use graviton::meta::{MetaStore, PgMetaStore, ROOT_INO, SessionInfo};
use graviton::store::MemoryBlockStore;
use graviton::vfs::{Fs, OpenFlags};

fn mount(url: &str, wait: Duration, store: Arc<MemoryBlockStore>) -> Fs {
    let meta: Arc<dyn MetaStore> =
        Arc::new(PgMetaStore::connect_within(url, wait).expect("connect"));
    Fs::new(meta, store, small_cfg()).expect("fs")
}

#[test]
fn operations_wait_for_a_restarted_server_then_succeed() {
    graviton_testkit::needs_servers!();
    let server = Arc::new(Server::new());
    let fs = mount(
        &server.url(),
        Duration::from_secs(30),
        Arc::new(MemoryBlockStore::new()),
    );
    let (_, fh) = fs
        .create(CTX, ROOT_INO, b"before", 0o644, OpenFlags::RW)
        .unwrap();
    fs.write(fh, 0, b"written before the outage").unwrap();
    fs.release(fh).unwrap();

    server.stop();
    let restarter = {
        let server = server.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            server.start();
        })
    };
    let t = Instant::now();
    let (inode, fh) = fs
        .create(CTX, ROOT_INO, b"during", 0o644, OpenFlags::RW)
        .expect("create waits for the server");
    fs.write(fh, 0, b"written across the outage").unwrap();
    fs.release(fh).expect("commit after the server is back");
    let waited = t.elapsed();
    restarter.join().unwrap();
    assert!(
        waited >= Duration::from_secs(2),
        "the operation waited for the server ({waited:?})"
    );
    let fh = fs.open(inode.ino, OpenFlags::READ).unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"written across the outage");
    let before = fs.lookup(ROOT_INO, b"before").unwrap();
    let fh = fs.open(before.ino, OpenFlags::READ).unwrap();
    assert_eq!(fs.read(fh, 0, 100).unwrap(), b"written before the outage");
}

#[test]
fn a_server_that_stays_away_is_eio_and_nothing_half_applied() {
    graviton_testkit::needs_servers!();
    let server = Server::new();
    let fs = mount(
        &server.url(),
        Duration::from_secs(2),
        Arc::new(MemoryBlockStore::new()),
    );
    fs.mkdir(CTX, ROOT_INO, b"kept", 0o755).unwrap();
    server.stop();
    let t = Instant::now();
    let err = fs.mkdir(CTX, ROOT_INO, b"lost", 0o755).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "gave up after about the configured time"
    );
    server.start();
    assert!(fs.lookup(ROOT_INO, b"kept").is_ok());
    assert!(
        fs.lookup(ROOT_INO, b"lost").is_err(),
        "the failed mkdir left nothing behind"
    );
    assert_eq!(
        fs.getattr(ROOT_INO).unwrap().nlink,
        3,
        "the parent's link count is untouched"
    );
}

/// A write loop on a shared-volume stack (session, change feed, local metadata cache) while the
/// server restarts: every write completes, every byte reads back, and the cache serves again.
#[test]
fn a_write_loop_rides_out_a_server_restart() {
    graviton_testkit::needs_servers!();
    use graviton::meta::SessionInfo;
    use graviton::meta::cached::CachedMeta;
    let server = Arc::new(Server::new());
    let cache_dir = tempfile::tempdir().unwrap();
    let pg: Arc<dyn MetaStore> = Arc::new(
        PgMetaStore::connect_within(&server.url(), Duration::from_secs(30)).expect("connect"),
    );
    let cached = Arc::new(CachedMeta::open(pg, cache_dir.path()).expect("cache"));
    cached
        .begin_session(&SessionInfo {
            host: "test".into(),
            pid: std::process::id(),
            mountpoint: "/test".into(),
            timeout: Duration::from_secs(30),
        })
        .unwrap();
    let live = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while cached.is_live() != want {
            assert!(
                Instant::now() < deadline,
                "the cache never became live={want}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    live(true);
    let fs = Fs::new(
        cached.clone() as Arc<dyn MetaStore>,
        Arc::new(MemoryBlockStore::new()),
        small_cfg(),
    )
    .expect("fs");
    let restarter = {
        let server = server.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            server.stop();
            std::thread::sleep(Duration::from_secs(2));
            server.start();
        })
    };
    let mut written = Vec::new();
    let t = Instant::now();
    let mut i = 0u32;
    while t.elapsed() < Duration::from_secs(4) || i < 50 {
        let name = format!("f{i}");
        let (inode, fh) = fs
            .create(CTX, ROOT_INO, name.as_bytes(), 0o644, OpenFlags::RW)
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        let body = format!("content of {name}").repeat(50);
        fs.write(fh, 0, body.as_bytes()).unwrap();
        fs.release(fh)
            .unwrap_or_else(|e| panic!("commit {name}: {e}"));
        written.push((inode.ino, body));
        i += 1;
    }
    restarter.join().unwrap();
    live(true);
    for (ino, body) in &written {
        let fh = fs.open(*ino, OpenFlags::READ).unwrap();
        assert_eq!(fs.read(fh, 0, 1 << 20).unwrap(), body.as_bytes());
        fs.release(fh).unwrap();
    }
    let names = fs.readdir(ROOT_INO, 0, 100_000).unwrap();
    assert_eq!(
        names.len(),
        written.len() + 2,
        "every file is listed (and . and ..)"
    );
}

/// An unlink that waits on the database (here: a row another session has locked) holds up
/// operations on its own inode only: a stat of another open file, an open and a close go on.
#[test]
fn an_unlink_waiting_on_the_database_stalls_no_other_file() {
    graviton_testkit::needs_servers!();
    use std::io::Write;
    use std::process::{Command, Stdio};
    let vol = common::PgVolume::new(small_cfg());
    let fs = Arc::new(vol.mount());
    let (a, fh_a) = common::create(&fs, "a");
    common::write_all(&fs, fh_a, 0, b"pending", 7);
    let (b, fh_b) = common::create(&fs, "b");
    fs.release(fh_b).unwrap();
    let (c, fh_c) = common::create(&fs, "c");
    fs.release(fh_c).unwrap();

    // another session locks b's row: b's unlink waits for it
    let mut holder = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", &vol.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sql = holder.stdin.take().unwrap();
    writeln!(
        sql,
        "BEGIN; SELECT ino FROM inodes WHERE ino = {b} FOR UPDATE; \\echo locked"
    )
    .unwrap();
    sql.flush().unwrap();
    let mut out = holder.stdout.take().unwrap();
    let mut seen = String::new();
    while !seen.contains("locked") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "psql ended before taking the lock");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let unlinker = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.unlink(ROOT_INO, b"b"))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !unlinker.is_finished(),
        "the unlink waits for the locked row"
    );

    let (done_tx, done_rx) = std::sync::mpsc::channel();
    {
        let fs = fs.clone();
        std::thread::spawn(move || {
            let size = fs.getattr(a).map(|i| i.size);
            let reopened = fs.open(c, OpenFlags::READ).and_then(|fh| fs.release(fh));
            let _ = done_tx.send((size, reopened));
        });
    }
    let got = done_rx.recv_timeout(Duration::from_secs(5));
    // the waiting unlink ends either way
    writeln!(sql, "ROLLBACK;").unwrap();
    drop(sql);
    holder.wait().unwrap();
    unlinker.join().unwrap().unwrap();
    let (size, reopened) = got.expect("a stat and an open of other files went on meanwhile");
    assert_eq!(size.unwrap(), 7, "the other file's pending size");
    reopened.unwrap();
    assert!(fs.lookup(ROOT_INO, b"b").is_err());
    fs.release(fh_a).unwrap();
}

/// An append's commit whose answer is lost (the server committed, then the connection dropped
/// before the client heard so): the appends are found in place and not committed a second
/// time, and the close succeeds.
#[test]
fn appends_whose_commit_answer_was_lost_are_not_committed_twice() {
    graviton_testkit::needs_servers!();
    let url = graviton_testkit::scratch_database();
    let (relay, through_relay) = Relay::in_front_of(&url);
    let meta = PgMetaStore::connect_within(&through_relay, Duration::from_secs(30)).unwrap();
    meta.begin_session(&SessionInfo {
        host: "test".into(),
        pid: std::process::id(),
        mountpoint: url.clone(),
        timeout: Duration::from_secs(30),
    })
    .expect("session");
    let fs = Fs::new(
        Arc::new(meta),
        Arc::new(MemoryBlockStore::new()),
        small_cfg(),
    )
    .unwrap();
    let (inode, fh) = fs
        .create(CTX, ROOT_INO, b"log", 0o644, OpenFlags::RW)
        .unwrap();
    fs.release(fh).unwrap();
    let appending = OpenFlags {
        append: true,
        ..OpenFlags::RW
    };
    let fh = fs.open(inode.ino, appending).unwrap();
    let mut want = Vec::new();
    for i in 0..100 {
        let line = format!("line {i}\n");
        fs.write(fh, 0, line.as_bytes()).unwrap();
        want.extend_from_slice(line.as_bytes());
    }
    relay.lose_answer_to_commit_with(b"\"op\":\"splice\"");
    let closed = fs.flush(fh);
    assert_eq!(relay.answers_lost(), 1, "the commit's answer was lost");
    closed.expect("the close finds its commit landed");
    fs.release(fh).unwrap();
    let fh = fs.open(inode.ino, OpenFlags::READ).unwrap();
    let got = fs.read(fh, 0, 1 << 20).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "each line once"
    );
}
