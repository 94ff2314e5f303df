//! The S3 block store when its server goes away: a write loop through a real mount keeps going
//! (its closes wait while uploads are retried) and every byte reads back once the server is
//! back. Uses a private S3 server, since stopping the shared one would disturb other tests.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mounted::Mounted;
use common::random_bytes;

/// s3s-fs behind a TCP relay. An outage is the relay cutting every connection and refusing new
/// ones (reset at once): the server cannot be restarted on its port quickly, as its closed
/// connections keep the port busy for a minute.
struct Server {
    _root: tempfile::TempDir,
    child: Child,
    port: u16,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Server {
    fn new() -> Server {
        let root = tempfile::Builder::new()
            .prefix("graviton-s3")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir(root.path().join("outage")).unwrap();
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let backend = free_port();
        let bin = std::env::var("GRAVITON_S3_BIN")
            .expect("GRAVITON_S3_BIN is not set: run the tests through scripts/test.sh");
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &backend.to_string()])
            .arg("--access-key")
            .arg(std::env::var("AWS_ACCESS_KEY_ID").unwrap())
            .arg("--secret-key")
            .arg(std::env::var("AWS_SECRET_ACCESS_KEY").unwrap())
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", backend)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let relay = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = relay.local_addr().unwrap().port();
        let (down, open) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let (d, o) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for client in relay.incoming().flatten() {
                if d.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection reset
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                    continue;
                };
                let mut conns = o.lock().unwrap();
                conns.push(client.try_clone().unwrap());
                conns.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Server {
            _root: root,
            child,
            port,
            down,
            open,
        }
    }

    fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn start(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!(
            "s3://outage/blocks?endpoint=http://127.0.0.1:{}&region=us-east-1",
            self.port
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_write_loop_rides_out_twenty_seconds_without_s3() {
    graviton_testkit::needs_servers!();
    let server = Server::new();
    let m = Mounted::new_pg_with_store("", Some(&server.url()));
    let dir: PathBuf = m.path("loop");
    std::fs::create_dir(&dir).unwrap();
    let mut written = Vec::new();
    let write = |i: usize| -> Vec<u8> {
        let body = random_bytes(i as u64, 200_000 + i * 1000);
        let mut f = std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
        f.write_all(&body)
            .unwrap_or_else(|e| panic!("write f{i}: {e}"));
        f.sync_all().unwrap_or_else(|e| panic!("fsync f{i}: {e}"));
        body
    };
    for i in 0..5 {
        written.push(write(i));
    }
    server.stop();
    let down = Instant::now();
    let restart = std::thread::scope(|scope| {
        let restarter = scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(20));
            server.start();
            down.elapsed()
        });
        // keep writing while the server is away: each fsync waits for its uploads
        for i in 5..15 {
            written.push(write(i));
        }
        restarter.join().unwrap()
    });
    assert!(restart >= Duration::from_secs(20));
    assert!(
        down.elapsed() >= Duration::from_secs(20),
        "the writes waited for the server"
    );
    m.unmount();
    m.mount();
    for (i, body) in written.iter().enumerate() {
        let got = std::fs::read(dir.join(format!("f{i}"))).unwrap();
        assert!(got == *body, "f{i} reads back intact after the outage");
    }
}

/// With `-o writeback`, writes `files` files while the server is away (each closed and
/// fsync'd) and checks that they read back at once. Returns what was written.
fn write_while_away(server: &Server, m: &Mounted, files: usize) -> Vec<Vec<u8>> {
    let dir: PathBuf = m.path("wb");
    std::fs::create_dir(&dir).unwrap();
    server.stop();
    let written: Vec<Vec<u8>> = (0..files)
        .map(|i| {
            let body = random_bytes(100 + i as u64, 300_000 + i * 70_000);
            let mut f = std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
            f.write_all(&body)
                .unwrap_or_else(|e| panic!("write f{i}: {e}"));
            f.sync_all()
                .unwrap_or_else(|e| panic!("fsync f{i} with S3 away: {e}"));
            body
        })
        .collect();
    assert_reads_back(m, &written, "from this machine while S3 is away");
    written
}

/// `write_while_away`, then the daemon is killed before a single upload could happen and the
/// server comes back.
fn write_staged_and_kill(server: &Server, m: &Mounted, files: usize) -> Vec<Vec<u8>> {
    let written = write_while_away(server, m, files);
    m.kill_daemon();
    server.start();
    written
}

fn assert_reads_back(m: &Mounted, written: &[Vec<u8>], how: &str) {
    for (i, body) in written.iter().enumerate() {
        let got = std::fs::read(m.path(&format!("wb/f{i}")))
            .unwrap_or_else(|e| panic!("reading f{i} {how}: {e}"));
        assert!(got == *body, "f{i} reads back {how}");
    }
}

/// Once `m` is unmounted, a mount that reads S3 alone (another machine: no staging folder)
/// reads every byte, and fsck finds every block whole.
fn assert_on_s3_alone(m: &Mounted, written: &[Vec<u8>]) {
    m.unmount();
    let elsewhere = Mounted::existing(&m.source, "");
    assert_reads_back(&elsewhere, written, "from S3 alone");
    let fsck = elsewhere.graviton(&["fsck", "--verify-data", &m.source]);
    let report = common::mounted::ok(fsck, "graviton fsck");
    assert!(report.contains("0 problems"), "{report}");
}

/// With `-o writeback`, close and fsync wait for the local disk only: files written while the
/// server is away are complete and read back at once. A daemon killed with blocks still staged
/// uploads them at its next mount.
#[test]
fn writeback_writes_complete_without_s3_and_reach_it_later() {
    graviton_testkit::needs_servers!();
    let server = Server::new();
    let m = Mounted::new_pg_with_store("writeback", Some(&server.url()));
    let written = write_staged_and_kill(&server, &m, 10);
    m.mount();
    assert_on_s3_alone(&m, &written); // the unmount waits for the staged blocks to go up
}

/// The next mount on the machine uploads what a killed `-o writeback` mount left staged even
/// when it is mounted without `-o writeback` (it also sends the journal such a mount left).
#[test]
fn a_mount_without_writeback_uploads_what_a_killed_writeback_mount_staged() {
    graviton_testkit::needs_servers!();
    let server = Server::new();
    let mut m = Mounted::new_pg_with_store("writeback", Some(&server.url()));
    let written = write_staged_and_kill(&server, &m, 6);
    m.options = String::new();
    m.mount();
    assert_reads_back(&m, &written, "from the next mount, without -o writeback");
    assert_on_s3_alone(&m, &written);
}

/// An unmount that cannot upload every staged block within `upload_wait` fails as a killed
/// mount would: the volume stays claimed by this machine, so no other machine mounts it (and
/// reads EIO) before this machine's next mount has uploaded the rest.
#[test]
fn an_unmount_that_cannot_upload_keeps_the_volume_for_this_machine() {
    graviton_testkit::needs_servers!();
    let server = Server::new();
    let mut m = Mounted::new_pg_with_store("writeback,upload_wait=1", Some(&server.url()));
    let written = write_while_away(&server, &m, 4);
    m.unmount();
    let refused = common::mounted::mount_elsewhere(&m.source)
        .expect("another machine may not mount it while blocks are staged here");
    assert!(refused.contains("-o writeback"), "{refused}");
    server.start();
    m.options = String::new();
    m.mount();
    assert_reads_back(&m, &written, "from the next mount, without -o writeback");
    assert_on_s3_alone(&m, &written);
}
