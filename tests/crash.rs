//! Crash safety: write and fsync files (and their directory), kill the daemon with SIGKILL,
//! mount again; every fsync'd byte is intact, and a file that was unlinked while open when the
//! daemon died is reclaimed. Repeated 20 times on one volume.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;

use common::mounted::Mounted;

const ROUNDS: usize = 20;

#[test]
fn fsynced_data_survives_kill_9_twenty_times() {
    let m = Mounted::new(&[], "");
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..ROUNDS {
        let dir = m.path(&format!("r{round}"));
        std::fs::create_dir(&dir).unwrap();
        // durable files: written, fsync'd, directory fsync'd
        for i in 0..3 {
            let name = format!("r{round}/f{i}");
            let data =
                common::random_bytes((round * 10 + i) as u64, 10_000 + round * 7919 + i * 100_000);
            let mut f = std::fs::File::create(m.path(&name)).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
            expected.push((name, data));
        }
        // an overwrite in the middle of an older file, fsync'd
        if round > 0 {
            let (name, data) = &mut expected[round];
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(m.path(name))
                .unwrap();
            let at = data.len() / 2;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at as u64)).unwrap();
            f.write_all(b"OVERWRITTEN").unwrap();
            f.sync_all().unwrap();
            data[at..at + 11].copy_from_slice(b"OVERWRITTEN");
        }
        let d = std::fs::File::open(&dir).unwrap();
        // SAFETY: fsync of a directory descriptor this test owns.
        assert_eq!(unsafe { libc::fsync(d.as_raw_fd()) }, 0);
        // a file unlinked while open, and data never fsync'd, at the moment of the crash
        let doomed = m.path(&format!("r{round}/doomed"));
        let mut open = std::fs::File::create(&doomed).unwrap();
        open.write_all(&vec![7u8; 200_000]).unwrap();
        open.sync_all().unwrap();
        std::fs::remove_file(&doomed).unwrap();
        open.write_all(b"unsynced tail").unwrap();

        m.kill_daemon();
        drop(open);
        drop(d);
        // `graviton mount` cleans up the dead mount itself
        m.mount();
        for (name, data) in &expected {
            let got = std::fs::read(m.path(name))
                .unwrap_or_else(|e| panic!("round {round}: {name}: {e}"));
            assert!(got == *data, "round {round}: {name} differs after kill -9");
        }
        assert!(!doomed.exists());
        let s = m.status_json();
        assert_eq!(
            s["usage"]["files"].as_u64().unwrap() as usize,
            expected.len(),
            "round {round}: the unlinked-while-open file was reclaimed"
        );
    }
}

/// close(2) returns with the data stored and the file's map committed: a file closed without
/// fsync survives the daemon's SIGKILL right after (not a power loss, which needs fsync).
#[test]
fn closed_files_survive_kill_9_without_fsync() {
    graviton_testkit::needs_servers!();
    for m in [Mounted::new(&[], ""), Mounted::new_pg("")] {
        let files: Vec<(String, Vec<u8>)> = (0..8)
            .map(|i| {
                (
                    format!("closed{i}"),
                    common::random_bytes(500 + i, 3_000 + i as usize * 700_000),
                )
            })
            .collect();
        for (name, data) in &files {
            std::fs::write(m.path(name), data).unwrap();
        }
        m.kill_daemon();
        m.mount();
        for (name, data) in &files {
            let got = std::fs::read(m.path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(got == *data, "{name} differs after kill -9 following close");
        }
    }
}
