//! PostgreSQL metadata engine: the same records as the RocksDB engine, one row each, and each
//! filesystem operation one SERIALIZABLE transaction. Serialization failures and deadlocks
//! surface as [`MetaError::Conflict`], and the core runs the operation again. Migrations in
//! `migrations/` are applied when the store connects.
//!
//! The core is synchronous; this adapter owns a small tokio runtime and blocks on sqlx futures
//! (callers are FUSE reader threads or the core's blocking pool, never async tasks).

use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::{
    DirEntry, FileKind, Ino, Inode, MetaError, MetaRead, MetaResult, MetaStore, MetaTxn, Timestamp,
    Usage,
};
use crate::core::extent::Splice;
use crate::core::{BlockKey, Extent};

/// The schema, applied by every PostgreSQL adapter when it connects.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Inode numbers reserved per sequence step (the sequence's INCREMENT).
const INO_BATCH: u64 = 1024;

pub struct PgMetaStore {
    pub(super) pool: PgPool,
    /// How long an operation waits for an unreachable server before it fails (EIO).
    retry_for: Duration,
    pub(super) rt: tokio::runtime::Runtime,
    /// This mount's session, heartbeat, change feed and lock waiters (see `pg_shared`).
    pub(super) shared: std::sync::Arc<super::pg_shared::SharedState>,
    /// (next inode to hand out, first inode not reserved)
    ino_range: Mutex<(Ino, Ino)>,
}

/// Whether the server could not be reached (as opposed to refusing the statement).
fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

fn pg_err(e: sqlx::Error) -> MetaError {
    if let Some(code) = e.as_database_error().and_then(|d| d.code())
        && (code == "40001" || code == "40P01")
    {
        return MetaError::Conflict;
    }
    // sqlx errors name the failure, never the connection string or its password.
    MetaError::Backend {
        engine: "postgres",
        message: e.to_string(),
    }
}

fn corrupt(what: &str) -> MetaError {
    MetaError::Corrupt(format!("postgres {what}"))
}

fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn ts(row: &PgRow, s: &str, ns: &str) -> Timestamp {
    Timestamp {
        secs: row.get::<i64, _>(s),
        nanos: row.get::<i32, _>(ns) as u32,
    }
}

fn inode_from(row: &PgRow) -> MetaResult<Inode> {
    Ok(Inode {
        ino: row.get::<i64, _>("ino") as u64,
        kind: FileKind::from_tag(row.get::<i16, _>("kind") as u8)
            .ok_or_else(|| corrupt("file kind"))?,
        perm: row.get::<i32, _>("perm") as u16,
        uid: row.get::<i64, _>("uid") as u32,
        gid: row.get::<i64, _>("gid") as u32,
        nlink: row.get::<i64, _>("nlink") as u32,
        size: row.get::<i64, _>("size") as u64,
        rdev: row.get::<i64, _>("rdev") as u32,
        atime: ts(row, "atime_s", "atime_ns"),
        mtime: ts(row, "mtime_s", "mtime_ns"),
        ctime: ts(row, "ctime_s", "ctime_ns"),
        crtime: ts(row, "crtime_s", "crtime_ns"),
        extent_count: row.get::<i64, _>("extent_count") as u64,
        data_version: row.get::<i64, _>("data_version") as u64,
        next_cookie: row.get::<i64, _>("next_cookie") as u64,
        parent: row.get::<i64, _>("parent") as u64,
    })
}

fn dirent_from(row: &PgRow) -> MetaResult<DirEntry> {
    Ok(DirEntry {
        ino: row.get::<i64, _>("ino") as u64,
        kind: FileKind::from_tag(row.get::<i16, _>("kind") as u8)
            .ok_or_else(|| corrupt("file kind"))?,
        cookie: row.get::<i64, _>("cookie") as u64,
    })
}

fn extent_from(row: &PgRow) -> MetaResult<Extent> {
    let key: Vec<u8> = row.get("block_key");
    Ok(Extent {
        offset: row.get::<i64, _>("file_offset") as u64,
        key: BlockKey::from_bytes(&key).ok_or_else(|| corrupt("block key"))?,
        block_offset: row.get::<i32, _>("block_offset") as u32,
        len: row.get::<i32, _>("len") as u32,
    })
}

impl PgMetaStore {
    /// Connects (waiting up to 30 s for the server), applies pending migrations.
    pub fn connect(url: &str) -> MetaResult<Self> {
        Self::connect_within(url, Duration::from_secs(30))
    }

    /// Connects, waiting up to `wait` for the server, and applies pending migrations.
    pub fn connect_within(url: &str, wait: Duration) -> MetaResult<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("graviton-pg")
            .enable_all()
            .build()
            .map_err(|e| MetaError::Backend {
                engine: "postgres",
                message: format!("starting its runtime: {e}"),
            })?;
        let pool = rt
            .block_on(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(wait.min(Duration::from_secs(5)))
                    .connect(url),
            )
            .map_err(pg_err)?;
        rt.block_on(MIGRATOR.run(&pool))
            .map_err(|e| MetaError::Backend {
                engine: "postgres",
                message: format!("applying migrations: {e}"),
            })?;
        Ok(PgMetaStore {
            pool,
            retry_for: wait,
            rt,
            shared: Default::default(),
            ino_range: Mutex::new((0, 0)),
        })
    }
}

impl PgMetaStore {
    /// Runs a statement outside any transaction, waiting (with backoff, up to `retry_for`)
    /// while the server cannot be reached. A lost connection is replaced by the pool.
    pub(super) fn retrying<T, F: AsyncFnMut() -> Result<T, sqlx::Error>>(
        &self,
        mut f: F,
    ) -> MetaResult<T> {
        let deadline = std::time::Instant::now() + self.retry_for;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.rt.block_on(f()) {
                Err(e) if unavailable(&e) && std::time::Instant::now() < deadline => {
                    tracing::warn!("metadata server unreachable, retrying: {e}");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => return other.map_err(pg_err),
            }
        }
    }
}

impl MetaStore for PgMetaStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>> {
        let tx = self.retrying(async || {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        })?;
        Ok(Box::new(PgTxn {
            store: self,
            tx: Some(tx),
            touched: Vec::new(),
        }))
    }

    fn read(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        Ok(Box::new(PgReader { store: self }))
    }

    fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>> {
        let row = self.retrying(async || {
            sqlx::query("SELECT * FROM inodes WHERE ino = $1")
                .bind(i(ino))
                .fetch_optional(&self.pool)
                .await
        })?;
        row.as_ref().map(inode_from).transpose()
    }

    fn allocate_ino(&self) -> MetaResult<Ino> {
        let mut range = self.ino_range.lock().expect("lock");
        if range.0 >= range.1 {
            let start: i64 = self.retrying(async || {
                sqlx::query_scalar("SELECT nextval('inode_numbers')")
                    .fetch_one(&self.pool)
                    .await
            })?;
            *range = (start as u64, start as u64 + INO_BATCH);
        }
        let ino = range.0;
        range.0 += 1;
        Ok(ino)
    }

    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        let rows: Vec<i64> = self.retrying(async || {
            sqlx::query_scalar(
                "SELECT ino FROM orphans WHERE session IS NULL \
                 OR NOT EXISTS (SELECT 1 FROM sessions WHERE id = orphans.session) ORDER BY ino",
            )
            .fetch_all(&self.pool)
            .await
        })?;
        Ok(rows.into_iter().map(|v| v as u64).collect())
    }

    fn setting(&self, name: &str) -> MetaResult<Option<String>> {
        self.retrying(async || {
            sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
        })
    }

    fn put_setting(&self, name: &str, value: &str) -> MetaResult<()> {
        let q = sqlx::query("INSERT INTO settings VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value")
            .bind(name)
            .bind(value);
        self.rt
            .block_on(q.execute(&self.pool))
            .map(drop)
            .map_err(pg_err)
    }

    fn kv_get(&self, key: &str) -> MetaResult<Option<Vec<u8>>> {
        self.rt
            .block_on(
                sqlx::query_scalar("SELECT value FROM kv WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool),
            )
            .map_err(pg_err)
    }

    fn kv_put(&self, key: &str, value: &[u8]) -> MetaResult<()> {
        let q = sqlx::query(
            "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(key)
        .bind(value);
        self.rt
            .block_on(q.execute(&self.pool))
            .map(drop)
            .map_err(pg_err)
    }

    fn kv_delete(&self, key: &str) -> MetaResult<()> {
        let q = sqlx::query("DELETE FROM kv WHERE key = $1").bind(key);
        self.rt
            .block_on(q.execute(&self.pool))
            .map(drop)
            .map_err(pg_err)
    }

    fn kv_scan(&self, prefix: &str) -> MetaResult<Vec<(String, Vec<u8>)>> {
        // byte-wise order and a prefix match that ignores LIKE's wildcards
        let q = sqlx::query(
            "SELECT key, value FROM kv WHERE starts_with(key, $1) ORDER BY key COLLATE \"C\"",
        )
        .bind(prefix);
        let rows = self.rt.block_on(q.fetch_all(&self.pool)).map_err(pg_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get("key"), r.get("value")))
            .collect())
    }

    fn is_referenced(&self, key: &BlockKey) -> MetaResult<bool> {
        let q = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM extents WHERE block_key = $1)")
            .bind(key.to_bytes().to_vec());
        self.rt.block_on(q.fetch_one(&self.pool)).map_err(pg_err)
    }

    fn referenced_blocks(&self) -> MetaResult<Vec<BlockKey>> {
        let rows: Vec<Vec<u8>> = self
            .rt
            .block_on(
                sqlx::query_scalar("SELECT DISTINCT block_key FROM extents ORDER BY block_key")
                    .fetch_all(&self.pool),
            )
            .map_err(pg_err)?;
        rows.iter()
            .map(|k| BlockKey::from_bytes(k).ok_or_else(|| corrupt("block key")))
            .collect()
    }

    fn usage(&self) -> MetaResult<Usage> {
        let q = sqlx::query(
            "SELECT count(*) AS inodes, count(*) FILTER (WHERE kind = 0) AS files, \
             count(*) FILTER (WHERE kind = 1) AS dirs, coalesce(sum(size) FILTER (WHERE kind = 0), 0)::bigint AS bytes \
             FROM inodes",
        );
        let row = self.rt.block_on(q.fetch_one(&self.pool)).map_err(pg_err)?;
        Ok(Usage {
            inodes: row.get::<i64, _>("inodes") as u64,
            files: row.get::<i64, _>("files") as u64,
            directories: row.get::<i64, _>("dirs") as u64,
            logical_bytes: row.get::<i64, _>("bytes") as u64,
        })
    }

    fn sync(&self) -> MetaResult<()> {
        // A committed PostgreSQL transaction is already durable (synchronous_commit).
        Ok(())
    }

    fn begin_session(&self, info: &super::SessionInfo) -> MetaResult<()> {
        self.start_session(info)
    }

    fn end_session(&self) {
        self.finish_session();
    }

    fn shared(&self) -> Option<&dyn super::SharedVolume> {
        Some(self)
    }

    /// Without a local cache nothing tells whether the kernel's pages are current.
    fn revalidate(&self, _ino: Ino) -> MetaResult<bool> {
        Ok(self.session_id().is_some())
    }
}

impl Drop for PgMetaStore {
    fn drop(&mut self) {
        self.finish_session();
    }
}

/// Creates an empty database with a unique name on the server `admin_url` points at and
/// returns its URL (tests and tools that need a throwaway volume).
pub fn create_scratch_database(admin_url: &str) -> MetaResult<String> {
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
        .ok_or_else(|| MetaError::Backend {
            engine: "postgres",
            message: "the server URL names no database".into(),
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MetaError::Backend {
            engine: "postgres",
            message: e.to_string(),
        })?;
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
    })
    .map_err(pg_err)?;
    Ok(format!("{base}/{name}"))
}

struct PgTxn<'a> {
    store: &'a PgMetaStore,
    tx: Option<Transaction<'static, Postgres>>,
    /// Inodes this transaction wrote, announced to the other mounts when it commits.
    touched: Vec<Ino>,
}

impl PgTxn<'_> {
    fn query<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        self.run(async |tx| f(&mut **tx).await)
    }

    fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Transaction<'static, Postgres>) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        let tx = self.tx.as_mut().expect("transaction open until commit");
        self.store.rt.block_on(f(tx)).map_err(|e| {
            if unavailable(&e) {
                // Nothing was committed: the core runs the whole operation again, and its
                // `begin` waits for the server to come back.
                tracing::warn!(
                    "metadata server lost mid-transaction, running the operation again: {e}"
                );
                MetaError::Conflict
            } else {
                pg_err(e)
            }
        })
    }
}

/// The read queries, shared by transactions and the read-only view: `$self.query(f)` runs `f`
/// on the transaction's or a pooled connection.
macro_rules! pg_reads {
    ($ty:ty) => {
        impl MetaRead for $ty {
            fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
                let row = self.query(async |c| {
                    sqlx::query("SELECT * FROM inodes WHERE ino = $1")
                        .bind(i(ino))
                        .fetch_optional(c)
                        .await
                })?;
                row.as_ref().map(inode_from).transpose()
            }

            fn dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<Option<DirEntry>> {
                let row = self.query(async |c| {
                    sqlx::query("SELECT ino, kind, cookie FROM dirents WHERE parent = $1 AND name = $2")
                        .bind(i(parent))
                        .bind(name)
                        .fetch_optional(c)
                        .await
                })?;
                row.as_ref().map(dirent_from).transpose()
            }

            fn list_dir(
                &mut self,
                parent: Ino,
                after: u64,
                limit: usize,
            ) -> MetaResult<Vec<(Vec<u8>, DirEntry)>> {
                let rows = self.query(async |c| {
                    sqlx::query("SELECT name, ino, kind, cookie FROM dirents WHERE parent = $1 AND cookie > $2 ORDER BY cookie LIMIT $3")
                        .bind(i(parent))
                        .bind(i(after))
                        .bind(limit.min(i64::MAX as usize) as i64)
                        .fetch_all(c)
                        .await
                })?;
                rows.iter()
                    .map(|r| Ok((r.get::<Vec<u8>, _>("name"), dirent_from(r)?)))
                    .collect()
            }

            fn dir_is_empty(&mut self, dir: Ino) -> MetaResult<bool> {
                self.query(async |c| {
                    sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM dirents WHERE parent = $1)")
                        .bind(i(dir))
                        .fetch_one(c)
                        .await
                })
            }

            fn extents(&mut self, ino: Ino, range: Range<u64>) -> MetaResult<Vec<Extent>> {
                if range.start >= range.end {
                    return Ok(Vec::new());
                }
                // the last extent starting before the range, and every one starting inside it
                let rows = self.query(async |c| {
                    sqlx::query(
                        "SELECT * FROM extents WHERE ino = $1 AND file_offset < $3 AND file_offset >= \
                         coalesce((SELECT max(file_offset) FROM extents WHERE ino = $1 AND file_offset < $2), $2) \
                         ORDER BY file_offset",
                    )
                    .bind(i(ino))
                    .bind(i(range.start))
                    .bind(i(range.end))
                    .fetch_all(c)
                    .await
                })?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let e = extent_from(r)?;
                    if e.end() > range.start {
                        out.push(e);
                    }
                }
                Ok(out)
            }

            fn xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<Option<Vec<u8>>> {
                self.query(async |c| {
                    sqlx::query_scalar("SELECT value FROM xattrs WHERE ino = $1 AND name = $2")
                        .bind(i(ino))
                        .bind(name)
                        .fetch_optional(c)
                        .await
                })
            }

            fn xattr_names(&mut self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
                self.query(async |c| {
                    sqlx::query_scalar("SELECT name FROM xattrs WHERE ino = $1 ORDER BY name")
                        .bind(i(ino))
                        .fetch_all(c)
                        .await
                })
            }

            fn symlink_target(&mut self, ino: Ino) -> MetaResult<Option<Vec<u8>>> {
                self.query(async |c| {
                    sqlx::query_scalar("SELECT target FROM symlinks WHERE ino = $1")
                        .bind(i(ino))
                        .fetch_optional(c)
                        .await
                })
            }
        }
    };
}

pg_reads!(PgTxn<'_>);
pg_reads!(PgReader<'_>);

/// Reads outside any transaction, each of them one statement on a pooled connection.
struct PgReader<'a> {
    store: &'a PgMetaStore,
}

impl PgReader<'_> {
    fn query<T>(
        &mut self,
        f: impl AsyncFn(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        self.store.retrying(async || {
            let mut conn = self.store.pool.acquire().await?;
            f(&mut conn).await
        })
    }
}

impl MetaTxn for PgTxn<'_> {
    fn put_inode(&mut self, n: &Inode) -> MetaResult<()> {
        self.touched.push(n.ino);
        let q = sqlx::query(
            "INSERT INTO inodes (ino, kind, perm, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, \
             ctime_s, ctime_ns, crtime_s, crtime_ns, extent_count, data_version, next_cookie, parent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
             ON CONFLICT (ino) DO UPDATE SET kind = EXCLUDED.kind, perm = EXCLUDED.perm, uid = EXCLUDED.uid, \
             gid = EXCLUDED.gid, nlink = EXCLUDED.nlink, size = EXCLUDED.size, rdev = EXCLUDED.rdev, \
             atime_s = EXCLUDED.atime_s, atime_ns = EXCLUDED.atime_ns, mtime_s = EXCLUDED.mtime_s, \
             mtime_ns = EXCLUDED.mtime_ns, ctime_s = EXCLUDED.ctime_s, ctime_ns = EXCLUDED.ctime_ns, \
             crtime_s = EXCLUDED.crtime_s, crtime_ns = EXCLUDED.crtime_ns, extent_count = EXCLUDED.extent_count, \
             data_version = EXCLUDED.data_version, next_cookie = EXCLUDED.next_cookie, parent = EXCLUDED.parent",
        )
        .bind(i(n.ino))
        .bind(n.kind.tag() as i16)
        .bind(n.perm as i32)
        .bind(n.uid as i64)
        .bind(n.gid as i64)
        .bind(n.nlink as i64)
        .bind(i(n.size))
        .bind(n.rdev as i64)
        .bind(n.atime.secs)
        .bind(n.atime.nanos as i32)
        .bind(n.mtime.secs)
        .bind(n.mtime.nanos as i32)
        .bind(n.ctime.secs)
        .bind(n.ctime.nanos as i32)
        .bind(n.crtime.secs)
        .bind(n.crtime.nanos as i32)
        .bind(i(n.extent_count))
        .bind(i(n.data_version))
        .bind(i(n.next_cookie))
        .bind(i(n.parent));
        self.run(async |tx| q.execute(&mut **tx).await).map(drop)
    }

    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        self.touched.push(ino);
        self.run(async |tx| {
            for sql in [
                "DELETE FROM extents WHERE ino = $1",
                "DELETE FROM xattrs WHERE ino = $1",
                "DELETE FROM symlinks WHERE ino = $1",
                "DELETE FROM orphans WHERE ino = $1",
                "DELETE FROM inodes WHERE ino = $1",
            ] {
                sqlx::query(sql).bind(i(ino)).execute(&mut **tx).await?;
            }
            Ok(())
        })
    }

    fn put_dirent(&mut self, parent: Ino, name: &[u8], e: &DirEntry) -> MetaResult<()> {
        self.touched.push(parent);
        let q = sqlx::query(
            "INSERT INTO dirents (parent, name, ino, kind, cookie) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (parent, name) DO UPDATE SET ino = EXCLUDED.ino, kind = EXCLUDED.kind, cookie = EXCLUDED.cookie",
        )
        .bind(i(parent))
        .bind(name)
        .bind(i(e.ino))
        .bind(e.kind.tag() as i16)
        .bind(i(e.cookie));
        self.run(async |tx| q.execute(&mut **tx).await).map(drop)
    }

    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        self.touched.push(parent);
        let q = sqlx::query("DELETE FROM dirents WHERE parent = $1 AND name = $2")
            .bind(i(parent))
            .bind(name);
        self.run(async |tx| q.execute(&mut **tx).await).map(drop)
    }

    fn apply_splice(&mut self, ino: Ino, s: &Splice) -> MetaResult<()> {
        self.touched.push(ino);
        let removed: Vec<i64> = s.remove.iter().map(|e| i(e.offset)).collect();
        let offsets: Vec<i64> = s.insert.iter().map(|e| i(e.offset)).collect();
        let keys: Vec<Vec<u8>> = s.insert.iter().map(|e| e.key.to_bytes().to_vec()).collect();
        let block_offsets: Vec<i32> = s.insert.iter().map(|e| e.block_offset as i32).collect();
        let lens: Vec<i32> = s.insert.iter().map(|e| e.len as i32).collect();
        self.run(async |tx| {
            if !removed.is_empty() {
                sqlx::query("DELETE FROM extents WHERE ino = $1 AND file_offset = ANY($2)")
                    .bind(i(ino))
                    .bind(&removed)
                    .execute(&mut **tx)
                    .await?;
            }
            if !offsets.is_empty() {
                sqlx::query(
                    "INSERT INTO extents (ino, file_offset, block_key, block_offset, len) \
                     SELECT $1, * FROM UNNEST($2::bigint[], $3::bytea[], $4::integer[], $5::integer[]) \
                     ON CONFLICT (ino, file_offset) DO UPDATE SET block_key = EXCLUDED.block_key, \
                     block_offset = EXCLUDED.block_offset, len = EXCLUDED.len",
                )
                .bind(i(ino))
                .bind(&offsets)
                .bind(&keys)
                .bind(&block_offsets)
                .bind(&lens)
                .execute(&mut **tx)
                .await?;
            }
            Ok(())
        })
    }

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        self.touched.push(ino);
        let q = sqlx::query("INSERT INTO xattrs VALUES ($1, $2, $3) ON CONFLICT (ino, name) DO UPDATE SET value = EXCLUDED.value")
            .bind(i(ino))
            .bind(name)
            .bind(value);
        self.run(async |tx| q.execute(&mut **tx).await).map(drop)
    }

    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.touched.push(ino);
        let q = sqlx::query("DELETE FROM xattrs WHERE ino = $1 AND name = $2")
            .bind(i(ino))
            .bind(name);
        self.run(async |tx| q.execute(&mut **tx).await).map(drop)
    }

    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        self.touched.push(ino);
        let q = sqlx::query("INSERT INTO symlinks VALUES ($1, $2) ON CONFLICT (ino) DO UPDATE SET target = EXCLUDED.target")
            .bind(i(ino))
            .bind(target);
        self.run(async |tx| q.execute(&mut **tx).await).map(drop)
    }

    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        let q = sqlx::query(
            "INSERT INTO orphans (ino, session) VALUES ($1, $2) \
             ON CONFLICT (ino) DO UPDATE SET session = EXCLUDED.session",
        )
        .bind(i(ino))
        .bind(self.store.session_id());
        self.run(async |tx| q.execute(&mut **tx).await).map(drop)
    }

    fn commit(mut self: Box<Self>) -> MetaResult<()> {
        if !self.touched.is_empty() {
            let (session, inos, payload) = self.store.change_record(&mut self.touched);
            self.run(async |tx| {
                sqlx::query(
                    "WITH logged AS (INSERT INTO changes (session, inos) VALUES ($1, $2)) \
                     SELECT pg_notify('graviton_changes', $3)",
                )
                .bind(session)
                .bind(&inos)
                .bind(&payload)
                .execute(&mut **tx)
                .await
            })?;
        }
        let tx = self.tx.take().expect("transaction open until commit");
        self.store.rt.block_on(tx.commit()).map_err(pg_err)
    }
}

impl Drop for PgTxn<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // roll back explicitly: dropping an open transaction outside the runtime cannot
            let _ = self.store.rt.block_on(tx.rollback());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fresh_database() -> String {
        let admin = std::env::var("GRAVITON_TEST_PG")
            .expect("GRAVITON_TEST_PG is not set: run the tests through scripts/test.sh, which starts PostgreSQL");
        create_scratch_database(&admin).expect("scratch database")
    }

    #[test]
    fn conformance() {
        let store = Arc::new(PgMetaStore::connect(&fresh_database()).unwrap());
        super::super::conformance::run_all(store);
    }

    #[test]
    fn records_survive_reconnect_and_migrations_run_once() {
        let url = fresh_database();
        let first = {
            let store = PgMetaStore::connect(&url).unwrap();
            super::super::conformance::write_sample(&store);
            store.allocate_ino().unwrap()
        };
        let store = PgMetaStore::connect(&url).unwrap();
        super::super::conformance::check_sample(&store);
        assert!(
            store.allocate_ino().unwrap() > first,
            "inode numbers are never reused"
        );
    }

    #[test]
    fn bad_server_is_a_clear_error_without_the_password() {
        let url = "postgres://graviton:s3cret-pw@127.0.0.1:1/none";
        let err = PgMetaStore::connect_within(url, Duration::from_secs(2))
            .err()
            .expect("no server there");
        let msg = err.to_string();
        assert!(msg.contains("postgres"), "{msg}");
        assert!(!msg.contains("s3cret-pw"), "the password leaked: {msg}");
    }
}
