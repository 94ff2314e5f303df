//! What the two PostgreSQL adapters share (the metadata engine, `meta::pg`, and the block
//! store, `store::pg`): the schema's migrations, how a failure is classified, and scratch
//! databases for tests and tools.

pub(crate) mod conn;

use sqlx::postgres::PgPoolOptions;

/// The schema, applied by every PostgreSQL adapter when it connects.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Whether the server could not be reached or could not serve the statement for now (as
/// opposed to refusing it): lost connections (SQLSTATE class 08), a server shutting down
/// (57P), one out of resources such as connections or lock slots (53).
pub fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")),
        _ => false,
    }
}

/// Creates an empty database with a unique name on the server `admin_url` points at and
/// returns its URL (tests and tools that need a throwaway volume).
pub fn create_scratch_database(admin_url: &str) -> Result<String, sqlx::Error> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("graviton_t{}_{n}_{nanos}", std::process::id());
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .ok_or_else(|| sqlx::Error::Configuration("the server URL names no database".into()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await?;
        // the name is made of digits and underscores only
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await?;
        pool.close().await;
        Ok::<_, sqlx::Error>(())
    })?;
    Ok(format!("{base}/{name}"))
}
