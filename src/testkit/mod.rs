//! Test support, built only for tests (`cargo test`, or the `testkit` feature for the
//! integration tests in `tests/`): a fault-injecting block store layer, and the scratch
//! servers the test command starts.

mod faulty_store;

pub use faulty_store::FaultyStore;

/// The PostgreSQL server `scripts/test.sh` starts (`GRAVITON_TEST_PG`), if any.
pub fn pg_server() -> Option<String> {
    std::env::var("GRAVITON_TEST_PG")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A new empty database on the test server, or `None` (with a line saying the test was
/// skipped) when no server was started: a plain `cargo test` runs what needs no server.
pub fn scratch_pg(test: &str) -> Option<String> {
    let Some(admin) = pg_server() else {
        eprintln!(
            "{test}: skipped: no PostgreSQL server (GRAVITON_TEST_PG; scripts/test.sh starts one)"
        );
        return None;
    };
    Some(crate::postgres::create_scratch_database(&admin).expect("scratch database"))
}
