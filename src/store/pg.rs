//! PostgreSQL block store: block content in the volume's database, in pieces of at most 1 MiB
//! (`migrations/0002_block_store.sql`). For small deployments that want one system to back up.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{BlockStore, PutOutcome, StoreError, Transience, Unchecked};
use crate::domain::BlockKey;
use crate::postgres::conn::LocalConns;
use crate::postgres::{MIGRATOR, unavailable};

const BACKEND: &str = "postgres";
const PIECE: usize = 1 << 20;

pub struct PgBlockStore {
    pool: PgPool,
    rt: tokio::runtime::Runtime,
    /// The calling thread's connection, shared with the metadata engine of the same database
    /// (`postgres::conn`): a small block's statement costs one wake-up, not three hops
    /// through the pool's runtime.
    local: Option<Arc<LocalConns>>,
}

/// A failure, transient when the server could not be reached (the retry layer above,
/// with `Backoff::POSTGRES`, tries it again).
fn err(context: &str, e: sqlx::Error) -> StoreError {
    let transience = match unavailable(&e) {
        true => Transience::Transient,
        false => Transience::Permanent,
    };
    StoreError::failed(
        BACKEND,
        context,
        std::io::Error::other(e.to_string()),
        transience,
    )
}

impl PgBlockStore {
    /// Connects to the database at `url` (the migrations create the tables).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("graviton-pg-blocks")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io(BACKEND, "starting its runtime", e))?;
        let pool = rt
            .block_on(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url),
            )
            .map_err(|e| err("connecting", e))?;
        rt.block_on(MIGRATOR.run(&pool)).map_err(|e| {
            StoreError::io(
                BACKEND,
                "applying migrations",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(PgBlockStore {
            pool,
            rt,
            local: LocalConns::for_url(url),
        })
    }

    /// Runs one statement on the calling thread's connection, or on the pool when the thread
    /// has none (threads that make metadata calls have one; hashing threads come and go) or
    /// has just lost it.
    fn run<T>(
        &self,
        f: impl AsyncFn(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let here = self
            .local
            .as_ref()
            .and_then(|local| local.with(false, |c| c.run(async |conn| f(conn).await)));
        if let Some(r) = here {
            return r;
        }
        self.rt.block_on(async {
            let mut conn = self.pool.acquire().await?;
            f(&mut conn).await
        })
    }

    /// Test hook: overwrites the first bytes of a stored block without changing its key.
    pub fn tamper(&self, key: &BlockKey) {
        let q = sqlx::query("UPDATE block_pieces SET data = overlay(data PLACING '\\xff'::bytea FROM 1) WHERE block_key = $1 AND piece = 0")
            .bind(key.to_bytes().to_vec());
        self.rt.block_on(q.execute(&self.pool)).expect("tamper");
    }
}

impl BlockStore for PgBlockStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn put(&self, key: &BlockKey, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let k = key.to_bytes().to_vec();
        if data.len() <= PIECE {
            // one statement, one round trip: the record and its only piece, or nothing when
            // the block is there (a concurrent put of it waits for the first to commit)
            let fresh = self
                .run(async |c| {
                    sqlx::query(
                        "WITH b AS (INSERT INTO blocks VALUES ($1, $2, 1) ON CONFLICT DO NOTHING \
                         RETURNING block_key) INSERT INTO block_pieces SELECT block_key, 0, $3 FROM b",
                    )
                    .bind(&k)
                    .bind(data.len() as i32)
                    .bind(data)
                    .execute(c)
                    .await
                })
                .map_err(|e| err(&format!("storing block {key}"), e))?
                .rows_affected()
                == 1;
            return Ok(if fresh {
                PutOutcome::Fresh
            } else {
                PutOutcome::Duplicate
            });
        }
        self.rt
            .block_on(async {
                let mut tx = self.pool.begin().await?;
                // A concurrent put of the same block waits here for the first to commit.
                let fresh =
                    sqlx::query("INSERT INTO blocks VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                        .bind(&k)
                        .bind(data.len() as i32)
                        .bind(data.len().div_ceil(PIECE) as i32)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                if !fresh {
                    tx.rollback().await?;
                    return Ok(PutOutcome::Duplicate);
                }
                for (i, piece) in data.chunks(PIECE).enumerate() {
                    sqlx::query("INSERT INTO block_pieces VALUES ($1, $2, $3)")
                        .bind(&k)
                        .bind(i as i32)
                        .bind(piece)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(PutOutcome::Fresh)
            })
            .map_err(|e| err(&format!("storing block {key}"), e))
    }

    fn cheap_put(&self, key: &BlockKey) -> bool {
        key.size as usize <= PIECE
    }

    fn get_unverified(&self, key: &BlockKey, _: Unchecked) -> Result<Vec<u8>, StoreError> {
        let k = key.to_bytes().to_vec();
        let rows = self
            .run(async |c| {
                sqlx::query("SELECT data FROM block_pieces WHERE block_key = $1 ORDER BY piece")
                    .bind(&k)
                    .fetch_all(c)
                    .await
            })
            .map_err(|e| err(&format!("reading block {key}"), e))?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(*key, BACKEND));
        }
        let mut out = Vec::with_capacity(key.size as usize);
        for r in &rows {
            out.extend_from_slice(r.get::<&[u8], _>("data"));
        }
        Ok(out)
    }

    fn exists(&self, key: &BlockKey) -> Result<bool, StoreError> {
        let k = key.to_bytes().to_vec();
        self.run(async |c| {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM blocks WHERE block_key = $1)")
                .bind(&k)
                .fetch_one(c)
                .await
        })
        .map_err(|e| err("checking a block", e))
    }

    fn delete(&self, key: &BlockKey) -> Result<(), StoreError> {
        let k = key.to_bytes().to_vec();
        self.rt
            .block_on(async {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM block_pieces WHERE block_key = $1")
                    .bind(&k)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM blocks WHERE block_key = $1")
                    .bind(&k)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            })
            .map_err(|e| err(&format!("deleting block {key}"), e))
    }

    fn list(&self) -> Result<Vec<BlockKey>, StoreError> {
        let rows: Vec<Vec<u8>> = self
            .rt
            .block_on(sqlx::query_scalar("SELECT block_key FROM blocks").fetch_all(&self.pool))
            .map_err(|e| err("listing blocks", e))?;
        Ok(rows
            .iter()
            .filter_map(|k| BlockKey::from_bytes(k))
            .collect())
    }

    fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        let total: Option<i64> = self
            .rt
            .block_on(
                sqlx::query_scalar("SELECT sum(length(data))::bigint FROM block_pieces")
                    .fetch_one(&self.pool),
            )
            .map_err(|e| err("summing block sizes", e))?;
        Ok(Some(total.unwrap_or(0) as u64))
    }

    fn sync(&self) -> Result<(), StoreError> {
        // Every put committed its own transaction, which PostgreSQL made durable.
        Ok(())
    }
}
