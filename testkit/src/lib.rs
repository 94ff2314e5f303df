//! Test support for Graviton's tests (unit tests and `tests/`): the conformance suites of both
//! ports, fault-injecting layers for both, and the scratch servers the test command starts. Not
//! part of the shipped crate.

pub mod block_conformance;
mod faulty_meta;
mod faulty_store;
pub mod meta_conformance;

pub use faulty_meta::{CommitFault, FaultyMeta, Hold};
pub use faulty_store::FaultyStore;

/// What `scripts/test.sh` sets once it has started the test servers (PostgreSQL and an
/// S3-compatible server, and the programs of both for tests that start their own).
const SERVER_VARS: [&str; 5] = [
    "GRAVITON_TEST_PG",
    "GRAVITON_PG_BIN",
    "GRAVITON_TEST_S3",
    "GRAVITON_TEST_S3_ROOT",
    "GRAVITON_S3_BIN",
];

/// Whether the test servers are there. Without them (a plain `cargo test`) a test that needs
/// them is skipped and says so on the terminal; under `scripts/test.sh`, which sets
/// `GRAVITON_TEST_SERVERS=required`, a missing server fails it instead.
pub fn servers_present() -> bool {
    let missing: Vec<&str> = SERVER_VARS
        .into_iter()
        .filter(|v| std::env::var_os(v).is_none_or(|x| x.is_empty()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if std::env::var("GRAVITON_TEST_SERVERS").as_deref() == Ok("required") {
        panic!(
            "{test} needs the test servers: {} not set",
            missing.join(", ")
        );
    }
    // straight to the terminal: the harness hides what a passing test prints
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs the test servers (scripts/test.sh starts them)"
    );
    false
}

/// Returns from the calling test when the test servers are missing ([`servers_present`]).
#[macro_export]
macro_rules! needs_servers {
    () => {
        if !$crate::servers_present() {
            return;
        }
    };
}

/// A place on the S3-compatible server `scripts/test.sh` starts (`GRAVITON_TEST_S3`): its URL
/// with a prefix of the caller's own, so tests never see each other's blocks.
pub fn s3_scratch_url() -> String {
    let base = std::env::var("GRAVITON_TEST_S3").expect(
        "GRAVITON_TEST_S3 is not set: run the tests through scripts/test.sh, which starts an S3 server",
    );
    let (head, query) = base.split_once('?').unwrap_or((&base, ""));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{head}/t{}-{nanos}?{query}", std::process::id())
}

/// The PostgreSQL server `scripts/test.sh` starts (`GRAVITON_TEST_PG`), if any.
pub fn pg_server() -> Option<String> {
    std::env::var("GRAVITON_TEST_PG")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A new empty database on the test server `scripts/test.sh` starts; a test that needs one
/// fails with a message saying how to run it.
pub fn scratch_database() -> String {
    let admin = pg_server().expect(
        "GRAVITON_TEST_PG is not set: run the tests through scripts/test.sh, which starts PostgreSQL",
    );
    graviton::postgres::create_scratch_database(&admin).expect("scratch database")
}
