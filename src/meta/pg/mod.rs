//! PostgreSQL metadata engine: the same records as the RocksDB engine, one row each, and each
//! filesystem operation one SERIALIZABLE transaction. Serialization failures and deadlocks
//! surface as [`MetaError::Conflict`], and the core runs the operation again. Migrations in
//! `migrations/` are applied when the store connects.
//!
//! The core is synchronous; this adapter owns a small tokio runtime and blocks on sqlx futures
//! (callers are FUSE reader threads or the core's blocking pool, never async tasks).
//!
//! Here the store and its transactions; `ops.rs` a transaction's batched writes, `conn.rs`
//! per-thread connections; what a volume several mounts share (`SharedVolume`) in
//! `shared_volume.rs`, with the mount sessions (`session.rs`) and open-file holds (`holds.rs`).

mod holds;
mod ops;
mod session;
mod shared_volume;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::{
    DirEntry, FileKind, Ino, Inode, MetaError, MetaRead, MetaRecords, MetaResult, MetaTxn,
    MountSessions, Timestamp, Usage, VolumeIndex,
};
use crate::domain::extent::Splice;
use crate::domain::{BlockKey, Extent};
use crate::postgres::conn::{LocalConn, LocalConns};
use crate::postgres::{MIGRATOR, unavailable};
use ops::{Ops, i};

/// Inode numbers reserved per sequence step (the sequence's INCREMENT).
const INO_BATCH: u64 = 1024;

pub struct PgMetaStore {
    pub(super) pool: PgPool,
    /// How long an operation waits for an unreachable server before it fails (EIO).
    retry_for: Duration,
    pub(super) rt: tokio::runtime::Runtime,
    /// Connections owned by the calling threads (the fast path; see `conn`).
    local: Option<std::sync::Arc<LocalConns>>,
    /// This mount's session, heartbeat, change feed and lock waiters (see `shared_volume`).
    shared: std::sync::Arc<shared_volume::SharedVolumeState>,
    /// (next inode to hand out, first inode not reserved)
    ino_range: Mutex<(Ino, Ino)>,
}

/// Runs one round trip to the server, recording its duration under `kind` (see
/// [`crate::metrics::META_QUERY_DURATION`]).
fn round_trip<T>(kind: &'static str, f: impl FnOnce() -> T) -> T {
    let start = crate::metrics::enabled().then(Instant::now);
    let r = f();
    if let Some(start) = start {
        let h = crate::metrics::META_QUERY_DURATION;
        metrics::histogram!(h, "engine" => "postgres", "kind" => kind)
            .record(start.elapsed().as_secs_f64());
    }
    r
}

/// SQLSTATE of `graviton_apply_live` refusing a transaction of an expired session.
const SESSION_GONE: &str = "GR001";
/// SQLSTATE of a foreign key violation: the only foreign keys name a session (locks, pins,
/// holds), so a row written for a session that is gone.
const NO_SUCH_SESSION: &str = "23503";

pub(super) fn pg_err(e: sqlx::Error) -> MetaError {
    if let Some(code) = e.as_database_error().and_then(|d| d.code()) {
        if code == "40001" || code == "40P01" {
            return MetaError::Conflict;
        }
        if code == SESSION_GONE || code == NO_SUCH_SESSION {
            return MetaError::SessionExpired;
        }
    }
    // sqlx errors name the failure, never the connection string or its password.
    MetaError::backend("postgres", e)
}

/// A failed COMMIT. When the server answered with an error, nothing was committed: a server
/// shutting down or a lost serialization race is run again. When the connection died without an
/// answer the outcome is unknown, and the operation fails (EIO).
fn commit_err(e: sqlx::Error) -> MetaError {
    let answered_unavailable = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("57P") || c.starts_with("08"));
    if answered_unavailable {
        tracing::warn!(
            "the server refused the commit while going away, running the operation again: {e}"
        );
        return MetaError::Conflict;
    }
    pg_err(e)
}

fn corrupt(what: &str) -> MetaError {
    MetaError::Corrupt(format!("postgres {what}"))
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
            .map_err(|e| MetaError::backend("postgres", format!("starting its runtime: {e}")))?;
        let pool = rt
            .block_on(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(wait.min(Duration::from_secs(5)))
                    .connect(url),
            )
            .map_err(pg_err)?;
        rt.block_on(MIGRATOR.run(&pool))
            .map_err(|e| MetaError::backend("postgres", format!("applying migrations: {e}")))?;
        Ok(PgMetaStore {
            pool,
            retry_for: wait,
            rt,
            local: LocalConns::for_url(url),
            shared: Default::default(),
            ino_range: Mutex::new((0, 0)),
        })
    }
}

impl PgMetaStore {
    /// Runs a read on this thread's own connection, or on the pool (waiting for an
    /// unreachable server like `retrying`).
    fn read_query<T>(
        &self,
        f: impl AsyncFn(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        self.on_own_connection("read", f)
    }

    /// Runs a statement outside any transaction on this thread's own connection (one wake-up
    /// per round trip), or on the pool, waiting for an unreachable server like `retrying`;
    /// timed as a round trip of `kind`.
    pub(super) fn on_own_connection<T>(
        &self,
        kind: &'static str,
        f: impl AsyncFn(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        // without a connection of its own (or having just lost it), the pool waits for the
        // server
        let here = self.local.as_ref().and_then(|local| {
            local.with(true, |c| {
                round_trip(kind, || c.run(async |conn| f(conn).await))
            })
        });
        if let Some(r) = here {
            return r.map_err(pg_err);
        }
        self.retrying_as(kind, async || {
            let mut conn = self.pool.acquire().await?;
            f(&mut conn).await
        })
    }

    /// Hands a transaction's connection, done with, back to the thread.
    fn give_back(&self, c: LocalConn) {
        if let Some(l) = &self.local {
            l.give_back(c);
        }
    }

    /// `retrying_as` for statements outside a file operation's transaction.
    pub(super) fn retrying<T, F: AsyncFnMut() -> Result<T, sqlx::Error>>(
        &self,
        f: F,
    ) -> MetaResult<T> {
        self.retrying_as("other", f)
    }

    /// Runs a statement outside any transaction, waiting (with backoff, up to `retry_for`)
    /// while the server cannot be reached. A lost connection is replaced by the pool. Each
    /// attempt is timed as a round trip of `kind`.
    fn retrying_as<T, F: AsyncFnMut() -> Result<T, sqlx::Error>>(
        &self,
        kind: &'static str,
        mut f: F,
    ) -> MetaResult<T> {
        let mut attempts = crate::retry::Backoff::POSTGRES.start(Some(self.retry_for));
        loop {
            match round_trip(kind, || self.rt.block_on(f())) {
                Err(e) if unavailable(&e) && attempts.wait() => {
                    tracing::warn!("metadata server unreachable, retrying: {e}");
                    metrics::counter!(crate::metrics::META_QUERY_RETRIES, "engine" => "postgres")
                        .increment(1);
                }
                other => return other.map_err(pg_err),
            }
        }
    }
}

impl MetaRecords for PgMetaStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn begin(&self) -> MetaResult<Box<dyn MetaTxn + '_>> {
        // On this thread's own connection the BEGIN waits for the transaction's first
        // statement and travels in its message (`PgTxn::begun`).
        let conn = match self.local.as_ref().and_then(|l| l.take()) {
            Some(c) => TxConn::Local(c),
            None => {
                TxConn::Pool(self.retrying_as("begin", async || self.pool.begin_with(BEGIN).await)?)
            }
        };
        Ok(Box::new(PgTxn {
            begun: matches!(conn, TxConn::Pool(_)),
            store: self,
            session: self.session_id(),
            adds_orphan: false,
            tx: Some(conn),
            pending: Ops::default(),
            splices: None,
            touched: Vec::new(),
            holds: Vec::new(),
        }))
    }

    fn read(&self) -> MetaResult<Box<dyn MetaRead + '_>> {
        Ok(Box::new(PgReader { store: self }))
    }

    fn read_inode(&self, ino: Ino) -> MetaResult<Option<Inode>> {
        PgReader { store: self }.inode(ino)
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

    fn reserve_inos_through(&self, last: Ino) -> MetaResult<()> {
        let mut range = self.ino_range.lock().expect("lock");
        // the sequence hands out batch starts: the next one is at least last + 1
        let q = sqlx::query(
            "SELECT setval('inode_numbers', $1, false) FROM inode_numbers \
             WHERE (CASE WHEN is_called THEN last_value + 1024 ELSE last_value END) < $1",
        )
        .bind((last + 1) as i64);
        self.rt.block_on(q.execute(&self.pool)).map_err(pg_err)?;
        if range.0 <= last {
            *range = (0, 0);
        }
        Ok(())
    }

    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        let rows: Vec<i64> = self.retrying(async || {
            // all but those another live mount has open
            sqlx::query_scalar(
                "SELECT ino FROM orphans WHERE (session IS NULL OR session = $1 \
                 OR NOT EXISTS (SELECT 1 FROM sessions WHERE id = orphans.session)) \
                 AND NOT EXISTS (SELECT 1 FROM holds WHERE ino = orphans.ino) ORDER BY ino",
            )
            .bind(self.session_id().unwrap_or(0))
            .fetch_all(&self.pool)
            .await
        })?;
        Ok(rows.into_iter().map(|v| v as u64).collect())
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
}

impl VolumeIndex for PgMetaStore {
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
        // on the write path (a stored copy's gc mark): this thread's connection
        self.read_query(async |conn| {
            sqlx::query_scalar("SELECT value FROM kv WHERE key = $1")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
        })
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

    fn referenced_among(&self, keys: &[BlockKey]) -> MetaResult<Vec<BlockKey>> {
        let wanted: Vec<Vec<u8>> = keys.iter().map(|k| k.to_bytes().to_vec()).collect();
        // on the write path: this thread's connection; waits out a server restart like a
        // transaction does
        let rows: Vec<Vec<u8>> = self.read_query(async |conn| {
            sqlx::query_scalar(
                "SELECT k FROM unnest($1::bytea[]) AS k \
                 WHERE EXISTS (SELECT 1 FROM extents WHERE block_key = k)",
            )
            .bind(&wanted)
            .fetch_all(&mut *conn)
            .await
        })?;
        rows.iter()
            .map(|k| BlockKey::from_bytes(k).ok_or_else(|| corrupt("block key")))
            .collect()
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
}

impl MountSessions for PgMetaStore {
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

pub(super) const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

const INODE: &str = "SELECT * FROM inodes WHERE ino = $1";
const DIRENT: &str = "SELECT ino, kind, cookie FROM dirents WHERE parent = $1 AND name = $2";
const INODE_AND_DIRENT: &str = "SELECT i.*, d.ino AS entry_ino, d.kind AS entry_kind, \
    d.cookie AS entry_cookie FROM inodes i LEFT JOIN dirents d \
    ON d.parent = i.ino AND d.name = $2 WHERE i.ino = $1";

/// The reads a transaction starts with (`INODE`, `DIRENT`, `INODE_AND_DIRENT`), prepared once on each thread's own connection
/// (`PgTxn::query_row`): a statement sent in a message with others, as SQL text, is planned
/// each time it runs, a prepared one once.
fn first_reads() -> String {
    format!(
        "PREPARE graviton_inode (bigint) AS {INODE}; \
         PREPARE graviton_dirent (bigint, bytea) AS {DIRENT}; \
         PREPARE graviton_inode_and_dirent (bigint, bytea) AS {INODE_AND_DIRENT}"
    )
}

/// A transaction's connection: this thread's own, or one from the pool.
enum TxConn {
    Local(LocalConn),
    Pool(Transaction<'static, Postgres>),
}

/// A transaction. Writes are queued and sent in one round trip (`graviton_apply`) at commit,
/// or before the next read so the transaction reads what it wrote.
struct PgTxn<'a> {
    store: &'a PgMetaStore,
    /// The server has been sent the BEGIN. On a thread's own connection it goes with the
    /// first statement: a transaction's snapshot is taken at its first statement anyway, so
    /// this saves a round trip and changes nothing else.
    begun: bool,
    /// The mount's session when the transaction began: its orphans belong to it, and a commit
    /// that relies on it is refused if it has expired by then (see `Apply::guarded`).
    session: Option<i64>,
    /// The transaction keeps a file unlinked while open (for its session).
    adds_orphan: bool,
    /// None once committed, or after its connection was lost.
    tx: Option<TxConn>,
    /// Writes not sent yet, in order.
    pending: Ops,
    /// Consecutive splices of one inode, netted per extent key (offset → the extent it ends
    /// up as, or None for removed) and queued as one: a flush of 2,000 scattered writes is one
    /// DELETE and one INSERT on the server, not 2,000 of each.
    splices: Option<(Ino, BTreeMap<u64, Option<Extent>>)>,
    /// Inodes this transaction wrote, announced to the other mounts when it commits.
    touched: Vec<Ino>,
    /// Inodes it holds open for the mount once it commits (`hold_open`).
    holds: Vec<Ino>,
}

impl PgTxn<'_> {
    fn query<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        self.apply_pending(false)?;
        self.run("read", f)
    }

    /// A read of `ino`'s records alone: the queued writes go first only when one is to `ino`
    /// (a read of another inode's records cannot see them), so that a read late in a
    /// transaction (the quotas', `vfs::quota`) leaves its writes to travel with the COMMIT.
    fn query_about<T>(
        &mut self,
        ino: Ino,
        f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        match self.touched.contains(&ino) {
            true => self.query(f),
            false => self.run("read", f),
        }
    }

    /// One of the `first_reads`, which fetch one row of integer columns: as the
    /// transaction's first statement on a thread's own connection it travels with the BEGIN
    /// in one message, as `execute` (an EXECUTE of the prepared statement with the values in
    /// it); otherwise `f` runs it.
    fn query_row(
        &mut self,
        execute: impl FnOnce() -> String,
        f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<Option<PgRow>, sqlx::Error>,
    ) -> MetaResult<Option<PgRow>> {
        let first = !self.begun && self.pending.is_empty() && self.splices.is_none();
        let Some(TxConn::Local(c)) = self.tx.as_mut().filter(|_| first) else {
            return self.query(f);
        };
        if !c.prepared {
            let prepared = round_trip("prepare", || {
                let sql = first_reads();
                c.run(async |conn| sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await)
            });
            match prepared {
                Ok(_) => c.prepared = true,
                Err(_) => return self.query(f),
            }
        }
        let sql = format!("{BEGIN}; {}", execute());
        self.begun = true;
        self.run("read", async |c| {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .fetch_optional(c)
                .await
        })
    }

    /// Queues one write to `ino`'s records.
    fn write(&mut self, ino: Ino, op: impl FnOnce(&mut Ops)) -> MetaResult<()> {
        self.queue_splices();
        self.touched.push(ino);
        op(&mut self.pending);
        Ok(())
    }

    /// Queues the netted splices as one `splice` operation.
    fn queue_splices(&mut self) {
        let Some((ino, net)) = self.splices.take() else {
            return;
        };
        let mut remove = Vec::new();
        let mut insert = Vec::new();
        for (offset, e) in net {
            match e {
                None => remove.push(offset),
                Some(e) => insert.push(e),
            }
        }
        self.pending.splice(ino, remove, &insert);
    }

    /// Sends the queued writes; at commit, also logs and announces the inodes written.
    fn apply_pending(&mut self, committing: bool) -> MetaResult<()> {
        let Some(Apply {
            ops,
            session,
            inos,
            payload,
            guarded,
        }) = self.take_pending(committing)
        else {
            return Ok(());
        };
        let sql = match guarded {
            true => "SELECT graviton_apply_live($1::jsonb, $2, $3, $4)",
            false => "SELECT graviton_apply($1::jsonb, $2, $3, $4)",
        };
        self.run("write", async |c| {
            sqlx::query(sql)
                .bind(&ops)
                .bind(session)
                .bind(&inos)
                .bind(&payload)
                .execute(c)
                .await
        })
        .map(drop)
    }

    /// The queued writes as one `graviton_apply` call (None when there is nothing to send); at
    /// commit it also logs and announces the inodes written.
    fn take_pending(&mut self, committing: bool) -> Option<Apply> {
        self.queue_splices();
        let announce = committing && !self.touched.is_empty();
        if self.pending.is_empty() && !announce {
            return None;
        }
        let ops = self.pending.take();
        let (session, inos, payload) = if announce {
            let (s, inos, p) = self.store.change_record(self.session, &mut self.touched);
            (s, Some(inos), Some(p))
        } else {
            // the session still goes along: the deletion of a file only other mounts hold
            // open keeps it (migrations/0007)
            (self.session, None, None)
        };
        // Only a mount holding locks can have done this under one, and a lost orphan would be
        // deleted while open: other commits need no check (it costs a row lock per commit).
        let guarded =
            announce && self.session.is_some() && (self.adds_orphan || self.store.holds_locks());
        Some(Apply {
            ops,
            session,
            inos,
            payload,
            guarded,
        })
    }

    /// Runs `f` on the transaction's connection (a round trip of `kind`).
    fn run<T>(
        &mut self,
        kind: &'static str,
        f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        let store = self.store;
        let begin = !std::mem::replace(&mut self.begun, true);
        let result = match self.tx.as_mut() {
            Some(TxConn::Local(c)) if begin => round_trip(kind, || {
                c.run(async |conn| {
                    sqlx::raw_sql(BEGIN).execute(&mut *conn).await?;
                    f(conn).await
                })
            }),
            Some(TxConn::Local(c)) => round_trip(kind, || c.run(f)),
            Some(TxConn::Pool(tx)) => round_trip(kind, || store.rt.block_on(f(&mut **tx))),
            None => return Err(MetaError::Conflict),
        };
        result.map_err(|e| {
            if unavailable(&e) {
                // Nothing was committed: the core runs the whole operation again, and its
                // `begin` waits for the server to come back.
                tracing::warn!(
                    "metadata server lost mid-transaction, running the operation again: {e}"
                );
                // (a pooled connection must go back inside the runtime)
                let _in_runtime = self.store.rt.enter();
                self.tx = None;
                MetaError::Conflict
            } else {
                self.expired_if(pg_err(e))
            }
        })
    }

    /// A refusal because the transaction's session expired starts a new session first, so
    /// that the operation can run again under it.
    fn expired_if(&self, e: MetaError) -> MetaError {
        if let (MetaError::SessionExpired, Some(old)) = (&e, self.session) {
            self.store.session_expired(old);
        }
        e
    }
}

/// The read queries, shared by transactions and the read-only view: `$self.query(f)` runs `f`
/// on the transaction's or a pooled connection.
macro_rules! pg_reads {
    ($ty:ty) => {
        impl MetaRead for $ty {
            fn inode(&mut self, ino: Ino) -> MetaResult<Option<Inode>> {
                let execute = || format!("EXECUTE graviton_inode({})", i(ino));
                let row = self.query_row(execute, async |c| {
                    sqlx::query(INODE)
                        .bind(i(ino))
                        .fetch_optional(c)
                        .await
                })?;
                row.as_ref().map(inode_from).transpose()
            }

            fn dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<Option<DirEntry>> {
                let execute = || {
                    format!("EXECUTE graviton_dirent({}, {})", i(parent), bytea_literal(name))
                };
                let row = self.query_row(execute, async |c| {
                    sqlx::query(DIRENT)
                        .bind(i(parent))
                        .bind(name)
                        .fetch_optional(c)
                        .await
                })?;
                row.as_ref().map(dirent_from).transpose()
            }

            fn inode_and_dirent(
                &mut self,
                dir: Ino,
                name: &[u8],
            ) -> MetaResult<(Option<Inode>, Option<DirEntry>)> {
                let execute = || {
                    format!(
                        "EXECUTE graviton_inode_and_dirent({}, {})",
                        i(dir),
                        bytea_literal(name)
                    )
                };
                let row = self.query_row(execute, async |c| {
                    sqlx::query(INODE_AND_DIRENT)
                    .bind(i(dir))
                    .bind(name)
                    .fetch_optional(c)
                    .await
                })?;
                let Some(row) = row else {
                    return Ok((None, None));
                };
                let entry = match row.get::<Option<i64>, _>("entry_ino") {
                    None => None,
                    Some(ino) => Some(DirEntry {
                        ino: ino as u64,
                        kind: FileKind::from_tag(row.get::<i16, _>("entry_kind") as u8)
                            .ok_or_else(|| corrupt("file kind"))?,
                        cookie: row.get::<i64, _>("entry_cookie") as u64,
                    }),
                };
                Ok((Some(inode_from(&row)?), entry))
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
                self.query_about(ino, async |c| {
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

            fn inode_numbers(&mut self) -> MetaResult<Vec<(Ino, bool)>> {
                let rows: Vec<(i64, bool)> = self.query(async |c| {
                    sqlx::query_as(
                        "SELECT i.ino, o.ino IS NOT NULL FROM inodes i \
                         LEFT JOIN orphans o ON o.ino = i.ino ORDER BY i.ino",
                    )
                    .fetch_all(c)
                    .await
                })?;
                Ok(rows.into_iter().map(|(n, o)| (n as Ino, o)).collect())
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
        self.store.read_query(f)
    }

    fn query_about<T>(
        &mut self,
        _ino: Ino,
        f: impl AsyncFn(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> MetaResult<T> {
        self.query(f)
    }

    fn query_row(
        &mut self,
        _execute: impl FnOnce() -> String,
        f: impl AsyncFn(&mut sqlx::PgConnection) -> Result<Option<PgRow>, sqlx::Error>,
    ) -> MetaResult<Option<PgRow>> {
        self.query(f)
    }
}

impl MetaTxn for PgTxn<'_> {
    fn put_inode(&mut self, n: &Inode) -> MetaResult<()> {
        self.write(n.ino, |ops| ops.put_inode(n))
    }

    fn delete_inode(&mut self, ino: Ino) -> MetaResult<()> {
        self.write(ino, |ops| ops.delete_inode(ino))
    }

    fn put_dirent(&mut self, parent: Ino, name: &[u8], e: &DirEntry) -> MetaResult<()> {
        self.write(parent, |ops| ops.put_dirent(parent, name, e))
    }

    fn delete_dirent(&mut self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        self.write(parent, |ops| ops.delete_dirent(parent, name))
    }

    fn apply_splice(&mut self, ino: Ino, s: &Splice) -> MetaResult<()> {
        if self.splices.as_ref().is_some_and(|(at, _)| *at != ino) {
            self.queue_splices();
        }
        self.touched.push(ino);
        let (_, net) = self.splices.get_or_insert_with(|| (ino, BTreeMap::new()));
        // the extent keyed at an offset ends as the last splice left it
        for e in &s.remove {
            net.insert(e.offset, None);
        }
        for e in &s.insert {
            net.insert(e.offset, Some(*e));
        }
        Ok(())
    }

    fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) -> MetaResult<()> {
        self.write(ino, |ops| ops.put_xattr(ino, name, value))
    }

    fn delete_xattr(&mut self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.write(ino, |ops| ops.delete_xattr(ino, name))
    }

    fn put_symlink_target(&mut self, ino: Ino, target: &[u8]) -> MetaResult<()> {
        self.write(ino, |ops| ops.put_symlink(ino, target))
    }

    fn add_orphan(&mut self, ino: Ino) -> MetaResult<()> {
        self.adds_orphan = true;
        let session = self.session;
        self.write(ino, |ops| ops.add_orphan(ino, session))
    }

    fn hold_open(&mut self, ino: Ino) -> MetaResult<()> {
        if let Some(session) = self.session {
            self.queue_splices();
            self.pending.hold(ino, session);
            self.holds.push(ino);
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> MetaResult<()> {
        let holds = std::mem::take(&mut self.holds);
        self.commit_writes()?;
        self.store.shared.holds.mark_held(&holds);
        Ok(())
    }
}

impl PgTxn<'_> {
    fn commit_writes(&mut self) -> MetaResult<()> {
        if !matches!(self.tx, Some(TxConn::Local(_))) {
            self.apply_pending(true)?;
        }
        match self.tx.take() {
            Some(TxConn::Local(mut c)) => {
                // the writes and the COMMIT in one round trip (one simple-protocol message),
                // with the BEGIN when nothing was sent before
                let begin = match self.begun {
                    true => String::new(),
                    false => format!("{BEGIN}; "),
                };
                let sql = match (self.take_pending(true), self.begun) {
                    (Some(apply), _) => format!("{begin}{}; COMMIT", apply.to_sql()),
                    (None, true) => "COMMIT".to_string(),
                    // nothing sent and nothing to send: nothing to commit
                    (None, false) => {
                        self.store.give_back(c);
                        return Ok(());
                    }
                };
                self.begun = true;
                round_trip("commit", || {
                    c.run(async |conn| sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await)
                })
                .map_err(|e| self.expired_if(commit_err(e)))?;
                self.store.give_back(c);
                Ok(())
            }
            Some(TxConn::Pool(tx)) => {
                round_trip("commit", || self.store.rt.block_on(tx.commit())).map_err(commit_err)
            }
            None => Err(MetaError::Conflict),
        }
    }
}

/// `bytes` as an SQL bytea value made of hex digits only, whatever the bytes (and whatever
/// the server's `standard_conforming_strings`).
fn bytea_literal(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("decode('{hex}', 'hex')")
}

/// One `graviton_apply` call's arguments.
struct Apply {
    /// JSON text
    ops: String,
    session: Option<i64>,
    inos: Option<Vec<i64>>,
    payload: Option<String>,
    /// The commit relies on `session` (a lock it holds, an orphan it adds): it goes through
    /// `graviton_apply_live`, which refuses it when the session has expired.
    guarded: bool,
}

impl Apply {
    /// The call as SQL text, for a message that also carries the COMMIT. Text values are
    /// dollar-quoted with a tag they do not contain; numbers are formatted from integers.
    fn to_sql(&self) -> String {
        let text = |v: &str| {
            let mut tag = String::from("$g$");
            while v.contains(&tag) {
                tag = format!("$g{:x}$", rand::random::<u64>());
            }
            format!("{tag}{v}{tag}")
        };
        let ops = text(&self.ops);
        let session = self.session.map_or("NULL".into(), |s| s.to_string());
        let inos = match &self.inos {
            Some(list) => format!(
                "ARRAY[{}]::bigint[]",
                list.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => "NULL".into(),
        };
        let payload = self.payload.as_deref().map_or("NULL".into(), text);
        let function = match self.guarded {
            true => "graviton_apply_live",
            false => "graviton_apply",
        };
        format!("SELECT {function}({ops}::jsonb, {session}::bigint, {inos}, {payload}::text)")
    }
}

impl Drop for PgTxn<'_> {
    fn drop(&mut self) {
        match self.tx.take() {
            Some(TxConn::Local(c)) if !self.begun => {
                self.store.give_back(c);
            }
            Some(TxConn::Local(mut c)) => {
                let rolled_back = round_trip("rollback", || {
                    c.run(async |conn| sqlx::raw_sql("ROLLBACK").execute(conn).await)
                });
                if rolled_back.is_ok() {
                    self.store.give_back(c);
                }
            }
            // roll back explicitly: dropping an open transaction outside the runtime cannot
            Some(TxConn::Pool(tx)) => {
                let _ = round_trip("rollback", || self.store.rt.block_on(tx.rollback()));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_database() -> String {
        graviton_testkit::scratch_database()
    }

    /// A write-behind journal replayed after a crash sends transactions the database already
    /// has again, in order: the replay succeeds and ends where the first pass did, also
    /// across a rename within a directory (which keeps the entry's cookie).
    #[test]
    fn transactions_sent_again_in_order_end_where_they_did() {
        graviton_testkit::needs_servers!();
        use crate::meta::{DirEntry, FileKind, Inode, ROOT_INO, Timestamp};
        let store = PgMetaStore::connect(&fresh_database()).unwrap();
        let x = store.allocate_ino().unwrap();
        let entry = DirEntry::new(x, FileKind::File, 1_000);
        let create = |tx: &mut dyn MetaTxn| {
            let n = Inode::new(x, FileKind::File, 0o644, 0, 0, Timestamp::default());
            tx.put_inode(&n).unwrap();
            tx.put_dirent(ROOT_INO, b"old", &entry).unwrap();
        };
        let rename = |tx: &mut dyn MetaTxn| {
            tx.delete_dirent(ROOT_INO, b"old").unwrap();
            tx.put_dirent(ROOT_INO, b"new", &entry).unwrap();
        };
        for pass in ["first", "replayed"] {
            for step in [&create as &dyn Fn(&mut dyn MetaTxn), &rename] {
                let mut tx = store.begin().unwrap();
                step(tx.as_mut());
                tx.commit().unwrap_or_else(|e| panic!("{pass} pass: {e}"));
            }
            let mut r = store.read().unwrap();
            assert_eq!(r.dirent(ROOT_INO, b"new").unwrap(), Some(entry), "{pass}");
            assert_eq!(r.dirent(ROOT_INO, b"old").unwrap(), None, "{pass}");
        }
    }

    /// A transaction's first read travels with its BEGIN, the values written into the SQL
    /// text: a name of any bytes is found (and only it), and the read belongs to the
    /// transaction (a write to what it read, committed meanwhile, makes its commit fail).
    #[test]
    fn a_first_read_sent_with_the_begin_finds_any_name_and_is_isolated() {
        graviton_testkit::needs_servers!();
        use crate::meta::{DirEntry, FileKind, Inode, ROOT_INO, Timestamp};
        let store = PgMetaStore::connect(&fresh_database()).unwrap();
        let names: [&[u8]; 4] = [
            b"it's",
            b"\\x41'); DROP TABLE inodes; --",
            b"$1 $2",
            &[0xff, 0x27, 0x5c, 0x01],
        ];
        let mut tx = store.begin().unwrap();
        let root = Inode::new(ROOT_INO, FileKind::Dir, 0o755, 0, 0, Timestamp::default());
        tx.put_inode(&root).unwrap();
        for (n, name) in names.iter().enumerate() {
            let ino = store.allocate_ino().unwrap();
            tx.put_inode(&Inode::new(
                ino,
                FileKind::File,
                0o644,
                0,
                0,
                Timestamp::default(),
            ))
            .unwrap();
            let entry = DirEntry::new(ino, FileKind::File, 100 + n as u64);
            tx.put_dirent(ROOT_INO, name, &entry).unwrap();
        }
        tx.commit().unwrap();
        for name in names {
            let want = store.read().unwrap().dirent(ROOT_INO, name).unwrap();
            assert!(want.is_some(), "{name:?} stored");
            let mut tx = store.begin().unwrap();
            assert_eq!(tx.dirent(ROOT_INO, name).unwrap(), want, "{name:?}");
            drop(tx);
            let mut tx = store.begin().unwrap();
            let (dir, entry) = tx.inode_and_dirent(ROOT_INO, name).unwrap();
            assert_eq!(
                (dir.map(|d| d.ino), entry),
                (Some(ROOT_INO), want),
                "{name:?}"
            );
            drop(tx);
        }
        let mut tx = store.begin().unwrap();
        assert_eq!(tx.dirent(ROOT_INO, b"it'").unwrap(), None);
        drop(tx);

        // isolation: the first read is the transaction's
        let mut a = store.begin().unwrap();
        let mut root = a.inode(ROOT_INO).unwrap().expect("root");
        let mut b = store.begin().unwrap();
        let mut other = b.inode(ROOT_INO).unwrap().expect("root");
        other.perm = 0o700;
        b.put_inode(&other).unwrap();
        b.commit().unwrap();
        root.perm = 0o755;
        a.put_inode(&root).unwrap();
        assert!(
            matches!(a.commit(), Err(MetaError::Conflict)),
            "a commit over a read that changed meanwhile must fail"
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
