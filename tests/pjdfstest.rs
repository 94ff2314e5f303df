//! The POSIX conformance suite (the `pjdfstest` crate, installed by scripts/test.sh) against a
//! real mount. On ext4 here it reports 383 passed; on any FUSE mount `link::link_count_max`
//! is skipped because pathconf cannot report LINK_MAX for FUSE, so 382 is the most it can pass.

mod common;

use common::mounted::Mounted;

#[test]
fn pjdfstest_has_no_failures() {
    run_suite(&Mounted::new(&[], ""));
}

#[test]
fn pjdfstest_with_the_trash_on_has_no_failures() {
    run_suite(&Mounted::new(&["--trash-days", "1"], ""));
}

/// Every change counted against quotas of the volume, of the users and groups the suite
/// switches to, and of its directory (limits no test reaches): the same answers.
#[test]
fn pjdfstest_under_quotas_has_no_failures() {
    let m = Mounted::new(&[], "");
    std::fs::create_dir(m.path("pjd")).unwrap();
    let mut sets = vec![vec!["--volume"], vec!["--path", "/pjd"]];
    for id in ["0", "65534", "65533"] {
        sets.push(vec!["--user", id]);
        sets.push(vec!["--group", id]);
    }
    for target in sets {
        let mut args = vec!["quota", "set"];
        args.extend(target);
        args.extend(["--bytes", "1t", "--inodes", "10000000", &m.source]);
        common::mounted::ok(m.graviton(&args), "quota set");
    }
    run_suite_in(&m.path("pjd/suite"));
    let out = common::mounted::ok(m.graviton(&["fsck", &m.source]), "fsck");
    assert!(
        out.contains(": 0 problems"),
        "usage matches a recount: {out}"
    );
}

fn run_suite(m: &Mounted) {
    run_suite_in(&m.path("pjd"));
}

fn run_suite_in(dir: &std::path::Path) {
    let which = std::process::Command::new("sh")
        .args(["-c", "command -v pjdfstest"])
        .output()
        .unwrap();
    assert!(
        which.status.success(),
        "pjdfstest is not installed: run scripts/test.sh, which installs it"
    );
    std::fs::create_dir(dir).unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pjdfstest.toml");
    let out = std::process::Command::new("timeout")
        .args([
            "-k10",
            "900",
            "pjdfstest",
            "-c",
            config,
            "-p",
            dir.to_str().unwrap(),
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .collect();
    let passed = log
        .lines()
        .filter(|l| l.trim_end().ends_with(" ok"))
        .count();
    let summary = log
        .lines()
        .find(|l| l.starts_with("Summary"))
        .unwrap_or("no summary");
    eprintln!("pjdfstest: {summary}");
    assert!(
        failed.is_empty(),
        "pjdfstest failures:\n{}",
        failed.join("\n")
    );
    assert!(passed >= 382, "only {passed} cases passed: {summary}");
}

/// The same suite on a volume whose metadata lives in PostgreSQL.
#[test]
fn pjdfstest_on_postgres_has_no_failures() {
    graviton_testkit::needs_servers!();
    run_suite(&Mounted::new_pg(""));
}

/// And with the blocks in S3 (the loopback test server).
#[test]
fn pjdfstest_on_postgres_and_s3_has_no_failures() {
    graviton_testkit::needs_servers!();
    let store = common::mounted::s3_scratch_url();
    run_suite(&Mounted::new_pg_with_store("", Some(&store)));
}

/// `-o writeback`: blocks staged on the local disk, metadata committed to a local journal and
/// sent to PostgreSQL in the background; every answer must be the same.
#[test]
fn pjdfstest_on_postgres_and_s3_with_writeback_has_no_failures() {
    graviton_testkit::needs_servers!();
    let store = common::mounted::s3_scratch_url();
    run_suite(&Mounted::new_pg_with_store("writeback", Some(&store)));
}

/// `-o writeback,write_cache`: also the kernel's page cache buffers writes.
#[test]
fn pjdfstest_on_postgres_and_s3_with_the_write_cache_has_no_failures() {
    graviton_testkit::needs_servers!();
    let store = common::mounted::s3_scratch_url();
    run_suite(&Mounted::new_pg_with_store(
        "writeback,write_cache",
        Some(&store),
    ));
}

/// `format --compress zstd --encrypt`: every block a sealed, compressed frame in S3 and in
/// PostgreSQL, named by a keyed hash; every answer must be the same.
#[test]
fn pjdfstest_on_an_encrypted_compressed_postgres_and_s3_volume_has_no_failures() {
    graviton_testkit::needs_servers!();
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("key");
    std::fs::write(&key, "pjdfstest's passphrase").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = key.to_str().unwrap();
    let store = common::mounted::s3_scratch_url();
    run_suite(&Mounted::new_pg_formatted(
        &["--compress", "zstd", "--encrypt", "--key-file", key],
        &format!("key_file={key}"),
        Some(&store),
    ));
}
