//! `-o writeback` on a PostgreSQL volume: metadata commits go to a journal on the local disk
//! first and reach PostgreSQL in the background (`meta::write_behind`). Such a mount has the
//! volume to itself, and what a killed daemon left in its journal reaches PostgreSQL at the
//! next mount on the same machine.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::mounted::{BIN, Mounted, mount_elsewhere, s3_scratch_url};
use common::random_bytes;
use graviton::meta::prelude::*;
use graviton::meta::write_behind::{CLAIM_KEY, ClaimError, WriteBehind, check_unclaimed};
use graviton::meta::{MetaStore, PgMetaStore};
use graviton_testkit::{meta_conformance, needs_servers};

#[test]
fn a_writeback_mount_has_the_volume_to_itself_and_its_journal_survives_a_kill() {
    graviton_testkit::needs_servers!();
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
    graviton_testkit::needs_servers!();
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

// The layer on its own, over the PostgreSQL engine.

fn pg(url: &str) -> Arc<dyn MetaStore> {
    Arc::new(PgMetaStore::connect(url).unwrap())
}

fn fresh_database() -> String {
    graviton_testkit::scratch_database()
}

/// Every read answered from pending records merged with the engine's.
#[test]
fn conformance_with_nothing_applied() {
    needs_servers!();
    let dir = tempfile::tempdir().unwrap();
    let wb = WriteBehind::open_paused(pg(&fresh_database()), dir.path(), "test").unwrap();
    let store: Arc<dyn MetaStore> = Arc::new(wb);
    meta_conformance::inodes_round_trip(store.as_ref());
    meta_conformance::uncommitted_changes_vanish(store.as_ref());
    meta_conformance::directory_entries_list_in_cookie_order(store.as_ref());
    meta_conformance::extents_and_block_references(store.as_ref());
    meta_conformance::xattrs_symlinks_orphans(store.as_ref());
    meta_conformance::read_views_see_every_commit(store.as_ref());
    meta_conformance::conflicting_writers_do_not_both_commit(store.as_ref());
    meta_conformance::concurrent_increments_are_isolated(store.clone());
    meta_conformance::write_sample(store.as_ref());
    meta_conformance::check_sample(store.as_ref());
}

#[test]
fn a_killed_mounts_journal_reaches_the_engine_at_the_next_open() {
    needs_servers!();
    let url = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    {
        let wb = WriteBehind::open_paused(pg(&url), dir.path(), "host-a:/state").unwrap();
        meta_conformance::write_sample(&wb);
        assert!(wb.queued() > 0);
        // dropped with nothing applied, like a killed daemon
    }
    let inner = pg(&url);
    let err = check_unclaimed(inner.as_ref(), None).unwrap_err();
    assert!(err.to_string().contains("host-a:/state"), "{err}");
    let err = WriteBehind::open(inner.clone(), dir.path(), "host-b:/other")
        .err()
        .expect("another host may not take over pending changes");
    assert!(matches!(err, ClaimError::Claimed(_)), "{err}");

    let wb = WriteBehind::open(inner.clone(), dir.path(), "host-a:/state").unwrap();
    meta_conformance::check_sample(inner.as_ref());
    wb.end_session();
    check_unclaimed(inner.as_ref(), None).expect("the claim is released at a clean end");
}

/// A mount that could not finish (its uploads failed) keeps its claim; a mount whose end runs
/// again after another mount claimed the volume leaves that claim alone.
#[test]
fn the_claim_stays_after_an_unfinished_end_and_is_only_ever_released_by_its_owner() {
    needs_servers!();
    let url = fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let inner = pg(&url);
    let wb = WriteBehind::open(inner.clone(), dir.path(), "host-a:/state").unwrap();
    meta_conformance::write_sample(&wb);
    wb.end_session_unfinished();
    let err = check_unclaimed(inner.as_ref(), None).unwrap_err();
    assert!(err.to_string().contains("host-a:/state"), "{err}");

    let wb = WriteBehind::open(inner.clone(), dir.path(), "host-a:/state").unwrap();
    meta_conformance::check_sample(inner.as_ref());
    assert!(wb.finish(), "released");
    inner.kv_put(CLAIM_KEY, b"host-b:/state").unwrap(); // another host's mount, since
    assert!(wb.finish(), "a second end has nothing to send");
    let err = check_unclaimed(inner.as_ref(), None).unwrap_err();
    assert!(err.to_string().contains("host-b:/state"), "{err}");
}
