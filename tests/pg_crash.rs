//! A crash of the PostgreSQL server under a mount: what an fsync covered survives it, and
//! afterwards the mount shows what the database has, not what the crash may have lost. The
//! private server writes its log out only every 10 s (`wal_writer_delay`), so a commit the server
//! acknowledged before its log record was on disk (asynchronous commit) would still be in its
//! memory when the test crashes it.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::mounted::{BIN, Mounted, ok, run};
use common::pg_server::Server;

const SLOW_LOG_WRITER: &str = "-c wal_writer_delay=10000";

/// A private server that writes its log out slowly, a volume formatted in its database (blocks
/// in a folder of the returned temporary folder), mounted.
fn crashable_volume() -> (Server, tempfile::TempDir, String, Mounted) {
    let server = Server::with_settings(SLOW_LOG_WRITER);
    let scratch = tempfile::tempdir().unwrap();
    let url = server.url();
    let store = format!("file://{}", scratch.path().join("blocks").display());
    ok(
        run(BIN, &["format", "--store", &store, &url], scratch.path()),
        "graviton format",
    );
    let mounted = Mounted::existing(&url, "");
    (server, scratch, url, mounted)
}

/// Runs `sql` on the server's database with psql; its output.
fn psql(server: &Server, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args(["-At", "-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(server.port().to_string())
        .args(["-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether the database has an entry `name` in the root folder.
fn entry_in_database(server: &Server, name: &str) -> bool {
    psql(
        server,
        &format!("SELECT count(*) FROM dirents WHERE parent = 1 AND name = '{name}'::bytea"),
    ) == "1"
}

#[test]
fn an_fsynced_file_survives_a_crash_of_the_metadata_server() {
    graviton_testkit::needs_servers!();
    let (server, _scratch, url, a) = crashable_volume();
    let mut f = std::fs::File::create(a.path("synced")).unwrap();
    f.write_all(b"made durable by fsync").unwrap();
    f.sync_all().unwrap();
    // kept open until the crash: a close is soon followed by a synchronous commit (the release
    // of the file's hold), which would write the server's log out anyway
    server.crash();
    server.start();
    drop(f);
    a.unmount();
    let b = Mounted::existing(&url, "");
    assert_eq!(
        std::fs::read(b.path("synced")).expect("the fsynced file is there after the crash"),
        b"made durable by fsync"
    );
    b.unmount();
}

#[test]
fn a_mount_does_not_serve_what_a_crash_of_the_metadata_server_lost() {
    graviton_testkit::needs_servers!();
    let (server, _scratch, _url, a) = crashable_volume();
    // listed once, so the cache holds the folder's entries
    assert!(std::fs::read_dir(a.path("")).unwrap().next().is_none());
    // The volume's changes so far (its format) are made older than the minute a reconnected
    // mount replays, as on a volume in use for a while: a replay of the folder's creation
    // would drop its cached entries whatever the crash lost.
    psql(
        &server,
        "UPDATE changes SET at = at - interval '10 minutes'",
    );
    // kept open: a close would soon be followed by a synchronous commit (the release of the
    // file's hold), which writes the server's log out
    let open = std::fs::File::create(a.path("unsynced")).unwrap();
    assert!(a.path("unsynced").exists());
    server.crash();
    server.start();
    // A crash loses the creation if the server acknowledged it before it was durable. Either
    // way, once the change feed has reconnected (it retries within 2 s) and the cache serves
    // again, the mount agrees with the database. Nothing is written meanwhile: a change to the
    // folder would drop its cached entries anyway.
    let kept = entry_in_database(&server, "unsynced");
    std::thread::sleep(Duration::from_secs(6));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            a.path("unsynced").exists(),
            kept,
            "the mount and the database disagree about a file the crash may have lost"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // and a file created after the crash is there as usual
    std::fs::write(a.path("after"), b"after the crash").unwrap();
    assert_eq!(std::fs::read(a.path("after")).unwrap(), b"after the crash");
    drop(open);
    a.unmount();
}
