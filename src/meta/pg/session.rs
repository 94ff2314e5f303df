//! Mount sessions on a shared PostgreSQL volume: registration, the heartbeat, expiry judged
//! only by mounts that stay in touch with the database, and the replacement of an expired
//! session (see `shared_volume` for what sessions hold, and `vfs::fence` for what an expiry means
//! to open files).
//!
//! - A mount refreshes its `sessions` row every quarter of the shortest timeout of the
//!   volume's sessions, and reaps sessions whose heartbeat is older than their timeout: their
//!   locks go (waiters are woken) and the files they had unlinked while open are deleted.
//! - It reaps only while it has itself beaten without a gap for the other's whole timeout
//!   (`alive_since`), judged by the database's clock: an outage of the database, during which
//!   nobody can beat, expires no session, and a mount that was cut off judges nobody on its
//!   first beat back.
//! - A mount that finds its session gone never uses its id again: it registers a new session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::{Executor, Row};

use super::PgMetaStore;
use super::shared_volume::{SharedVolumeState, change_payload, trim_changes};
use crate::meta::SessionInfo;

/// The shortest time between heartbeats (a quarter of the shortest session timeout allowed).
pub(super) const MIN_BEAT_PERIOD: Duration = Duration::from_millis(250);
/// A failed heartbeat is tried again after this, then twice as long each time up to the
/// period: a short outage must not cost a whole period.
const BEAT_RETRY: Duration = Duration::from_millis(100);

/// A session's row: who is mounting, and the timeout in milliseconds.
#[derive(Clone)]
pub(super) struct Registration {
    pub(super) info: SessionInfo,
    pub(super) timeout_ms: i32,
}

impl PgMetaStore {
    /// The database refused something of session `old` because it is gone: a new session
    /// replaces it (once, however many find out), unless that happened already.
    pub(super) fn session_expired(&self, old: i64) {
        if let Err(e) = self.rt.block_on(renew(&self.pool, &self.shared, old)) {
            tracing::warn!("starting a new mount session failed (retried by the heartbeat): {e}");
        }
    }
}

/// Inserts a session row; returns its id (never one used before: `bigserial`).
pub(super) async fn register(
    tx: &mut sqlx::PgConnection,
    r: &Registration,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO sessions (host, pid, mountpoint, timeout_ms) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(&r.info.host)
    .bind(r.info.pid as i32)
    .bind(&r.info.mountpoint)
    .bind(r.timeout_ms)
    .fetch_one(tx)
    .await
}

/// Replaces session `old`, which has expired, by a new one, unless it was replaced already or
/// the mount's session has ended. The locks and unlinked open files of the old session are
/// gone (other mounts took them); the blocks this process has pinned are pinned again.
async fn renew(pool: &PgPool, st: &SharedVolumeState, old: i64) -> Result<(), sqlx::Error> {
    let _once = st.renewing.lock().await;
    if st.session.load(Ordering::SeqCst) != old {
        return Ok(());
    }
    let Some(registration) = st.registration.lock().expect("lock").clone() else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    let id = register(&mut tx, &registration).await?;
    let held: Vec<Vec<u8>> = crate::meta::pins::held()
        .iter()
        .map(|k| k.to_bytes().to_vec())
        .collect();
    sqlx::query(
        "INSERT INTO block_pins (session, block_key) SELECT $1, k FROM unnest($2::bytea[]) AS k \
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(&held)
    .execute(&mut *tx)
    .await?;
    // the files the mount has open, unless reclaimed meanwhile (their handles fail)
    sqlx::query(
        "INSERT INTO holds (ino, session) SELECT ino, $1 FROM inodes WHERE ino = ANY($2) \
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(st.holds.held())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    st.lockers.lock().expect("lock").clear();
    st.session.store(id, Ordering::SeqCst);
    tracing::error!(
        expired = old,
        session = id,
        "this mount's session had expired (other mounts could not hear from it for longer than \
         its timeout): its locks were released and the files it kept unlinked while open were \
         deleted; the handles that held them fail from now on, and a new session has started"
    );
    Ok(())
}

/// Refreshes this mount's session, reaps dead ones and trims the change log; replaces the
/// session when it finds it expired.
pub(super) async fn heartbeat(pool: PgPool, st: Arc<SharedVolumeState>, mut period: Duration) {
    let mut beats: u64 = 0;
    let mut retry = BEAT_RETRY;
    loop {
        let id = st.session.load(Ordering::SeqCst);
        let b = match beat(&pool, id).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                if let Err(e) = renew(&pool, &st, id).await {
                    tracing::warn!("starting a new mount session failed: {e}");
                }
                if st.session.load(Ordering::SeqCst) == id {
                    tokio::time::sleep(retry).await;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!("session heartbeat failed: {e}");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(period);
                continue;
            }
        };
        retry = BEAT_RETRY;
        period = (Duration::from_millis(b.shortest_timeout_ms as u64) / 4).max(MIN_BEAT_PERIOD);
        if let Err(e) = reap(&pool, id, &b).await {
            tracing::warn!("cleaning up after expired sessions failed: {e}");
        }
        st.unpinned.notify_one(); // pins whose release failed earlier

        if beats.is_multiple_of(100)
            && let Err(e) = trim_changes(&pool).await
        {
            tracing::warn!("trimming the change log failed: {e}");
        }
        beats += 1;
        tokio::time::sleep(period).await;
    }
}

/// What a heartbeat learned, in the database's time (microseconds since the Unix epoch).
struct Beat {
    now: i64,
    /// Since when this mount has beaten with no gap longer than `gap_limit_us`.
    alive_since: i64,
    /// The shortest timeout of the volume's sessions: a quarter of it is the beat period, half
    /// of it the longest gap that still counts as beating without a break.
    shortest_timeout_ms: i32,
}

impl Beat {
    fn gap_limit_us(&self) -> i64 {
        self.shortest_timeout_ms as i64 * 1000 / 2
    }
}

/// One heartbeat of session `id`; None when the session is gone (expired).
async fn beat(pool: &PgPool, id: i64) -> Result<Option<Beat>, sqlx::Error> {
    let row = sqlx::query(
        "WITH limits AS (SELECT min(timeout_ms) AS shortest FROM sessions), \
         me AS (UPDATE sessions SET \
             alive_since = CASE WHEN statement_timestamp() - heartbeat_at \
                 <= (SELECT shortest FROM limits) * interval '1 millisecond' / 2 \
                 THEN alive_since ELSE statement_timestamp() END, \
             heartbeat_at = statement_timestamp() \
             WHERE id = $1 RETURNING heartbeat_at, alive_since) \
         SELECT (extract(epoch FROM me.heartbeat_at) * 1000000)::bigint AS now, \
             (extract(epoch FROM me.alive_since) * 1000000)::bigint AS alive_since, \
             limits.shortest FROM me, limits",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Beat {
        now: r.get("now"),
        alive_since: r.get("alive_since"),
        shortest_timeout_ms: r.get("shortest"),
    }))
}

/// Deletes the sessions that expired by the judgment of `me`, which has just beaten (`b`),
/// with their locks (waking waiters) and open-file holds, and reclaims the files with no name
/// that no live mount needs. A session has expired when its last beat is older than its timeout *and* `me` has
/// been beating without a break for at least that timeout: had the other mount reached the
/// database meanwhile, `me` would have seen its beat. Nothing is judged from a beat that is no
/// longer fresh (this mount stalled, or the database went away, since).
async fn reap(pool: &PgPool, me: i64, b: &Beat) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let dead: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM sessions WHERE id <> $1 \
         AND (extract(epoch FROM heartbeat_at) * 1000000)::bigint < $2 - timeout_ms * 1000::bigint \
         AND $3 <= $2 - timeout_ms * 1000::bigint \
         AND (extract(epoch FROM clock_timestamp()) * 1000000)::bigint < $2 + $4 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(me)
    .bind(b.now)
    .bind(b.alive_since)
    .bind(b.gap_limit_us())
    .fetch_all(&mut *tx)
    .await?;
    if !dead.is_empty() {
        sqlx::query(
            "SELECT pg_notify('graviton_locks', ino::text) FROM \
             (SELECT DISTINCT ino FROM locks WHERE session = ANY($1)) held",
        )
        .bind(&dead)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE id = ANY($1)")
            .bind(&dead)
            .execute(&mut *tx)
            .await?;
        tracing::info!(sessions = ?dead, "released the locks of expired mount sessions");
    }
    reclaim_unheld(&mut tx, None).await?;
    tx.commit().await
}

/// Deletes the files with no name that no mount needs any more: orphans whose session is gone
/// (or that have none), which no mount holds open (`holds`); `among`: only these inodes.
/// Every mount is told, this one included.
pub(super) async fn reclaim_unheld(
    tx: &mut sqlx::PgConnection,
    among: Option<&[i64]>,
) -> Result<(), sqlx::Error> {
    let orphans: Vec<i64> = sqlx::query_scalar(
        "DELETE FROM orphans o \
         WHERE (o.session IS NULL OR NOT EXISTS (SELECT 1 FROM sessions WHERE id = o.session)) \
         AND NOT EXISTS (SELECT 1 FROM holds WHERE ino = o.ino) \
         AND ($1::bigint[] IS NULL OR o.ino = ANY($1)) RETURNING ino",
    )
    .bind(among)
    .fetch_all(&mut *tx)
    .await?;
    if orphans.is_empty() {
        return Ok(());
    }
    for table in ["extents", "xattrs", "symlinks", "inodes"] {
        tx.execute(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE ino = ANY($1)"
            )))
            .bind(&orphans),
        )
        .await?;
    }
    sqlx::query(
        "WITH logged AS (INSERT INTO changes (inos) VALUES ($1)) \
         SELECT pg_notify('graviton_changes', $2)",
    )
    .bind(&orphans)
    .bind(change_payload(0, &orphans))
    .execute(&mut *tx)
    .await?;
    tracing::info!(
        files = orphans.len(),
        "reclaimed files with no name that no mount has open any more"
    );
    Ok(())
}
