//! `-o writeback` on a PostgreSQL volume: metadata commits go to a journal on the local disk
//! first and reach PostgreSQL in the background (`meta::write_behind`). Such a mount has the
//! volume to itself, and what a killed daemon left in its journal reaches PostgreSQL at the
//! next mount on the same machine.

mod common;

use std::process::Command;

use common::mounted::{BIN, Mounted, mount_elsewhere, s3_scratch_url};
use common::random_bytes;

#[test]
fn a_writeback_mount_has_the_volume_to_itself_and_its_journal_survives_a_kill() {
    graviton::needs_servers!();
    let m = Mounted::new_pg_with_store("writeback", Some(&s3_scratch_url()));
    let dir = m.path("d");
    std::fs::create_dir(&dir).unwrap();
    let bodies: Vec<Vec<u8>> = (0..60)
        .map(|i| random_bytes(i, 1000 + i as usize * 3_001))
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        std::fs::write(dir.join(format!("f{i}")), body).unwrap();
    }
    std::fs::rename(dir.join("f0"), dir.join("renamed")).unwrap();
    std::fs::remove_file(dir.join("f1")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink("renamed", dir.join("sub/link")).unwrap();

    let refused = mount_elsewhere(&m.source).expect("another machine may not mount it now");
    assert!(refused.contains("-o writeback"), "{refused}");

    // what the journal holds (anything not applied yet) must survive this
    m.kill_daemon();
    let refused = mount_elsewhere(&m.source).expect("nor after the daemon died");
    assert!(
        refused.contains("mount the volume there again"),
        "{refused}"
    );
    m.mount();
    m.unmount();

    // released: any machine mounts it, and finds every change
    let elsewhere = m.another_mount("");
    let d = elsewhere.path("d");
    assert_eq!(std::fs::read(d.join("renamed")).unwrap(), bodies[0]);
    assert!(!d.join("f0").exists() && !d.join("f1").exists());
    for (i, body) in bodies.iter().enumerate().skip(2) {
        let got = std::fs::read(d.join(format!("f{i}"))).unwrap();
        assert!(got == *body, "f{i} reads back from another machine");
    }
    assert_eq!(
        std::fs::read_link(d.join("sub/link")).unwrap().to_str(),
        Some("renamed")
    );
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 60);
}

/// `fsck` and `dump` of a PostgreSQL volume with a write-back mount on this machine run in that
/// mount's daemon, so they see the commits its journal has not sent to PostgreSQL yet (run on
/// PostgreSQL right after the writes, dump missed them and fsck judged an older tree).
#[test]
fn fsck_and_dump_run_in_the_writeback_mount_and_see_its_journal() {
    graviton::needs_servers!();
    // the daemon logs the requests it runs (nextest gives each test a process of its own)
    // SAFETY: no other thread of this test process reads the environment yet
    unsafe { std::env::set_var("GRAVITON_LOG", "graviton::daemon::control=info") };
    let m = Mounted::new_pg_with_store("writeback", Some(&s3_scratch_url()));
    let dir = m.path("fresh");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..20 {
        std::fs::write(dir.join(format!("f{i}")), random_bytes(i, 5000)).unwrap();
    }
    let cli = |args: &[&str]| {
        let out = Command::new("timeout")
            .args(["-k5", "120", BIN])
            .args(args)
            .arg(&m.source)
            .env("XDG_STATE_HOME", m.dir.path().join("state"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "graviton {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dump = cli(&["dump", "--output", "-"]);
    for i in 0..20 {
        assert!(dump.contains(&format!("\"f{i}\"")), "dump lists fresh/f{i}");
    }
    let fsck = cli(&["fsck"]);
    assert!(fsck.contains(": 0 problems"), "{fsck}");
    let log = std::fs::read_to_string(m.state.join("graviton.log")).unwrap();
    assert_eq!(
        log.matches("control request").count(),
        2,
        "both ran in the daemon"
    );
}
