//! Test support, built only for tests (`cargo test`, or the `testkit` feature for the
//! integration tests in `tests/`): the conformance suites of both ports, a fault-injecting
//! block store layer, and the scratch servers the test command starts.

pub mod block_conformance;
mod faulty_store;
pub mod meta_conformance;

pub use faulty_store::FaultyStore;

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
    crate::postgres::create_scratch_database(&admin).expect("scratch database")
}
