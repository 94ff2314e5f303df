//! Shared PostgreSQL volumes: mount sessions with a heartbeat, cleanup after dead sessions,
//! global byte-range locks, and the change feed (LISTEN/NOTIFY plus the `changes` log).
//!
//! - A mount has a session (`session`: the heartbeat, expiry, and a new session with a new
//!   id when one expired). Expired sessions lose their locks and the files they had unlinked
//!   while open; handles that relied on them fail (`vfs::fence`). A transaction that relies on
//!   its session (the mount holds locks, or it keeps a file unlinked while open) is refused at
//!   commit once the session has expired (`graviton_apply_live`), so nothing a mount writes
//!   lands after others took its locks.
//! - Locks live in `locks`; one inode's lock changes are serialized by a transaction-scoped
//!   advisory lock on the inode number. Releasing sends `NOTIFY graviton_locks, '<ino>'`; a
//!   blocked waiter sleeps on that notification, with a 10 s re-check in case one was lost.
//! - Every committing write transaction logs the inodes it wrote in `changes` and sends them on
//!   `graviton_changes`; other mounts drop their cached copies (see `cached` and the FUSE
//!   adapter's kernel invalidation).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Executor, Postgres, Row};
use tokio::sync::Notify;

use super::PgMetaStore;
use super::holds::release_holds;
use super::session::{MIN_BEAT_PERIOD, Registration, heartbeat, register};
use crate::meta::shared_volume::{self, TO_EOF};
use crate::meta::{
    Change, ChangeSink, HeldLock, Ino, LockKind, LockRequest, MetaError, MetaResult, SessionInfo,
    SessionRecord, SharedVolume,
};

const CHANGES_CHANNEL: &str = "graviton_changes";
const LOCKS_CHANNEL: &str = "graviton_locks";
/// Barriers: a mount notifies itself here and waits for its own token, by which time every
/// notification committed before it has been handled.
const SYNC_CHANNEL: &str = "graviton_sync";
/// How long the change log keeps its rows; a local cache older than this starts empty.
const CHANGE_LOG_KEEP: &str = "1 day";
/// A NOTIFY payload must stay under 8,000 bytes; larger change sets say "everything".
const MAX_PAYLOAD: usize = 7000;
/// A blocked lock waiter re-checks this often even without a notification.
const WAITER_RECHECK: Duration = Duration::from_secs(10);
/// The change feed sends itself a probe this long after the last one came back (`feed`).
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// A probe that has not come back through the feed this long after it was sent means the
/// feed has stalled without its connection failing.
const FEED_STALL: Duration = Duration::from_secs(3);
/// A probe: a notification on the feed's own channel whose payload is the database's time
/// when it was sent (microseconds since the Unix epoch). Notifications arrive in commit order:
/// once it is back, every change committed before that time has arrived too.
const PROBE: &str = "SELECT pg_notify($1, \
    (extract(epoch FROM statement_timestamp()) * 1000000)::bigint::text)";

/// Per-store state of the shared-volume machinery.
#[derive(Default)]
pub(super) struct SharedVolumeState {
    /// This mount's session id; 0 before `start_session` and after `finish_session`.
    pub(super) session: AtomicI64,
    /// What a new session is registered with, while the mount has one.
    pub(super) registration: Mutex<Option<Registration>>,
    /// Held while a new session replaces an expired one, so it is replaced once.
    pub(super) renewing: tokio::sync::Mutex<()>,
    pub(super) feed_up: AtomicBool,
    sinks: Mutex<Vec<ChangeSink>>,
    barriers: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    waiters: Mutex<HashMap<Ino, Arc<Notify>>>,
    /// (inode, owner) pairs this mount has taken locks for: closing other files skips the
    /// database.
    pub(super) lockers: Mutex<HashSet<(Ino, u64)>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Block pins this mount released and has not yet deleted from `block_pins`.
    unpins: Mutex<HashSet<Vec<u8>>>,
    /// Wakes the task that deletes them.
    pub(super) unpinned: Notify,
    /// Held while pins are written or deleted, so a deletion of released pins never removes a
    /// pin taken again meanwhile.
    pin_order: tokio::sync::Mutex<()>,
    /// The files this mount has open (`holds`).
    pub(super) holds: super::holds::Holds,
}

impl SharedVolumeState {
    pub(super) fn dispatch(&self, change: Change) {
        let sinks = self.sinks.lock().expect("lock").clone();
        for sink in sinks {
            sink(&change);
        }
    }

    fn waiter(&self, ino: Ino) -> Arc<Notify> {
        self.waiters
            .lock()
            .expect("lock")
            .entry(ino)
            .or_default()
            .clone()
    }

    fn wake(&self, ino: Ino) {
        if let Some(n) = self.waiters.lock().expect("lock").get(&ino) {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for n in self.waiters.lock().expect("lock").values() {
            n.notify_waiters();
        }
    }

    /// Handles one notification from the server.
    fn on_notification(&self, channel: &str, payload: &str) {
        if channel == SYNC_CHANNEL {
            if let Some(done) = payload
                .parse()
                .ok()
                .and_then(|t| self.barriers.lock().expect("lock").remove(&t))
            {
                let _ = done.send(());
            }
            return;
        }
        if channel == LOCKS_CHANNEL {
            if let Ok(ino) = payload.parse() {
                self.wake(ino);
            }
            return;
        }
        let Some((session, inos)) = payload.split_once(':') else {
            return;
        };
        if session.parse::<i64>().ok() == Some(self.session.load(Ordering::SeqCst)) {
            return; // this mount's own change: its caches are already up to date
        }
        if inos == "*" {
            self.dispatch(Change::All);
        } else {
            self.dispatch(Change::Inodes(
                inos.split(',').filter_map(|v| v.parse().ok()).collect(),
            ));
        }
    }
}

/// The NOTIFY payload of a change by `session` (0 for none) to `inos`: `<session>:<ino,...>`,
/// or `<session>:*` when the list is too long.
pub(super) fn change_payload(session: i64, inos: &[impl std::fmt::Display]) -> String {
    let list = inos
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    if list.len() > MAX_PAYLOAD {
        format!("{session}:*")
    } else {
        format!("{session}:{list}")
    }
}

impl PgMetaStore {
    /// This mount's session, if it has one (NULL in the database otherwise).
    pub(super) fn session_id(&self) -> Option<i64> {
        Some(self.shared.session.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }

    /// Whether this mount holds (or may hold) locks: its commits may rely on them.
    pub(super) fn holds_locks(&self) -> bool {
        !self.shared.lockers.lock().expect("lock").is_empty()
    }

    /// What a transaction of `session` logs when it commits: (session, inodes, NOTIFY
    /// payload).
    pub(super) fn change_record(
        &self,
        session: Option<i64>,
        touched: &mut Vec<Ino>,
    ) -> (Option<i64>, Vec<i64>, String) {
        touched.sort_unstable();
        touched.dedup();
        let inos = touched.iter().map(|&i| i as i64).collect();
        (session, inos, change_payload(session.unwrap_or(0), touched))
    }

    pub(super) fn start_session(&self, info: &SessionInfo) -> MetaResult<()> {
        if self.session_id().is_some() {
            return Ok(());
        }
        let registration = Registration {
            info: info.clone(),
            timeout_ms: info.timeout.as_millis().clamp(1000, i32::MAX as u128) as i32,
        };
        let id: i64 = self.retrying(async || {
            let mut tx = self.pool.begin().await?;
            let id = register(&mut tx, &registration).await?;
            tx.commit().await?;
            Ok(id)
        })?;
        *self.shared.registration.lock().expect("lock") = Some(registration);
        self.shared.session.store(id, Ordering::SeqCst);
        tracing::info!(session = id, "mount session started");
        let period = (info.timeout / 4).max(MIN_BEAT_PERIOD);
        let (pool, st) = (&self.pool, &self.shared);
        let tasks = [
            self.rt.spawn(heartbeat(pool.clone(), st.clone(), period)),
            self.rt.spawn(feed(pool.clone(), st.clone())),
            self.rt.spawn(release_pins(pool.clone(), st.clone())),
            self.rt.spawn(release_holds(pool.clone(), st.clone())),
        ];
        self.shared.tasks.lock().expect("lock").extend(tasks);
        Ok(())
    }

    /// Ends the session: its locks are released (waiters elsewhere wake).
    pub(super) fn finish_session(&self) {
        for t in self.shared.tasks.lock().expect("lock").drain(..) {
            t.abort();
        }
        *self.shared.registration.lock().expect("lock") = None;
        let Some(id) = self.session_id() else { return };
        let pool = self.pool.clone();
        let ended = self.rt.block_on(async move {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "SELECT pg_notify('graviton_locks', ino::text) FROM \
                 (SELECT DISTINCT ino FROM locks WHERE session = $1) held",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            // files unlinked elsewhere that only this mount still had open
            super::session::reclaim_unheld(&mut tx, None).await?;
            tx.commit().await
        });
        match ended {
            Ok(()) => tracing::info!(session = id, "mount session ended"),
            Err(e) => tracing::warn!(
                session = id,
                "ending the mount session failed (it expires by itself): {e}"
            ),
        }
        self.shared.session.store(0, Ordering::SeqCst);
    }

    /// Waits until the change feed has handled every notification committed before now
    /// (notifications arrive in commit order). Skipped while the feed is down: caches are
    /// bypassed then.
    fn feed_barrier(&self) {
        if !self.shared.feed_up.load(Ordering::SeqCst) {
            return;
        }
        let token: u64 = rand::random();
        let (done, wait) = tokio::sync::oneshot::channel();
        self.shared
            .barriers
            .lock()
            .expect("lock")
            .insert(token, done);
        let sent = self.rt.block_on(async {
            sqlx::query("SELECT pg_notify('graviton_sync', $1)")
                .bind(token.to_string())
                .execute(&self.pool)
                .await?;
            let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
            Ok::<_, sqlx::Error>(())
        });
        self.shared.barriers.lock().expect("lock").remove(&token);
        if let Err(e) = sent {
            tracing::debug!("change feed barrier: {e}");
        }
    }
}

/// Deletes the pins this mount released from `block_pins`, gathered for a moment so that a
/// burst of commits costs one statement; a failure leaves them for the next round.
async fn release_pins(pool: PgPool, st: Arc<SharedVolumeState>) {
    loop {
        st.unpinned.notified().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let id = st.session.load(Ordering::SeqCst);
        let _in_order = st.pin_order.lock().await;
        let unpins: Vec<Vec<u8>> = st.unpins.lock().expect("lock").drain().collect();
        if unpins.is_empty() {
            continue;
        }
        let released = sqlx::query(
            "DELETE FROM block_pins WHERE session = $1 AND block_key = ANY($2::bytea[])",
        )
        .bind(id)
        .bind(&unpins)
        .execute(&pool)
        .await;
        if let Err(e) = released {
            tracing::warn!("releasing block pins failed (retried at the next heartbeat): {e}");
            // again later, except those pinned again meanwhile (their cancel found nothing)
            crate::meta::pins::unless_held(&unpins, |still_released| {
                st.unpins.lock().expect("lock").extend(still_released)
            });
        }
    }
}

pub(super) async fn trim_changes(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO settings (name, value) VALUES ('changes_kept_since', \
         ((extract(epoch FROM clock_timestamp() - interval '{CHANGE_LOG_KEEP}')) * 1000000)::bigint::text) \
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM changes WHERE at < clock_timestamp() - interval '{CHANGE_LOG_KEEP}'"
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Listens for changes and lock releases, reconnecting while the server is away. It probes
/// itself (`PROBE`): a probe back says the feed is up to the time it was sent (`Change::Alive`,
/// from which a cache catches up after the feed was down); one not back within `FEED_STALL`
/// means the connection stalled without failing, and the feed starts again, so a cache never
/// goes on trusting a feed that has stopped delivering.
async fn feed(pool: PgPool, st: Arc<SharedVolumeState>) {
    let probes = format!("graviton_probe_{:016x}", rand::random::<u64>());
    let mut pause = Duration::from_millis(50);
    loop {
        // The listener's connection comes from a pool of its own: one dropped while stalled
        // waits there for its UNLISTEN, not in the volume's pool.
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        let listening = async {
            let mut l = PgListener::connect_with(&own).await?;
            l.listen_all([CHANGES_CHANNEL, LOCKS_CHANNEL, SYNC_CHANNEL, &probes])
                .await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listening.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("change feed: connecting: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        pause = Duration::from_millis(50);
        st.feed_up.store(true, Ordering::SeqCst);
        st.dispatch(Change::Resumed);
        st.wake_all();
        let mut next_probe = tokio::time::Instant::now();
        // when the probe on its way was sent
        let mut probing: Option<tokio::time::Instant> = None;
        loop {
            let wake = probing.map_or(next_probe, |sent| sent + FEED_STALL);
            let received = tokio::select! {
                r = listener.try_recv() => r,
                () = tokio::time::sleep_until(wake) => {
                    if probing.is_some() {
                        tracing::warn!(
                            "change feed: nothing came through it for {FEED_STALL:?}; reconnecting"
                        );
                        break;
                    }
                    probing = Some(tokio::time::Instant::now());
                    let (pool, probes) = (pool.clone(), probes.clone());
                    tokio::spawn(async move {
                        if let Err(e) = sqlx::query(PROBE).bind(probes).execute(&pool).await {
                            tracing::debug!("change feed probe: {e}");
                        }
                    });
                    continue;
                }
            };
            match received {
                Ok(Some(n)) if n.channel() == probes => {
                    if let Ok(at) = n.payload().parse() {
                        st.dispatch(Change::Alive(at));
                    }
                    probing = None;
                    next_probe = tokio::time::Instant::now() + PROBE_EVERY;
                }
                Ok(Some(n)) => st.on_notification(n.channel(), n.payload()),
                Ok(None) => {
                    // the connection was lost and re-established: catch up
                    probing = None;
                    st.dispatch(Change::Lost);
                    st.dispatch(Change::Resumed);
                    st.wake_all();
                }
                Err(e) => {
                    tracing::warn!("change feed lost: {e}");
                    break;
                }
            }
        }
        st.feed_up.store(false, Ordering::SeqCst);
        st.dispatch(Change::Lost);
    }
}

fn lock_from(row: &sqlx::postgres::PgRow) -> HeldLock {
    HeldLock {
        session: row.get("session"),
        owner: row.get::<i64, _>("owner") as u64,
        exclusive: row.get("exclusive"),
        start: row.get::<i64, _>("start_off") as u64,
        end: row.get::<i64, _>("end_off") as u64,
        pid: row.get::<i32, _>("pid") as u32,
    }
}

async fn held_locks<'e, E: Executor<'e, Database = Postgres>>(
    ex: E,
    ino: Ino,
) -> Result<Vec<HeldLock>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT session, owner, exclusive, start_off, end_off, pid FROM locks WHERE ino = $1",
    )
    .bind(ino as i64)
    .fetch_all(ex)
    .await?;
    Ok(rows.iter().map(lock_from).collect())
}

/// Applies `req` unless it conflicts; returns the conflicting lock if it does.
async fn try_set(
    pool: &PgPool,
    ino: Ino,
    me: i64,
    req: &LockRequest,
) -> Result<Option<HeldLock>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ino as i64)
        .execute(&mut *tx)
        .await?;
    let held = held_locks(&mut *tx, ino).await?;
    if let Some(c) = shared_volume::conflict(&held, me, req) {
        tx.rollback().await?;
        return Ok(Some(c));
    }
    let mine: Vec<HeldLock> = held
        .into_iter()
        .filter(|h| (h.session, h.owner) == (me, req.owner))
        .collect();
    let after = shared_volume::replace(&mine, me, req);
    if after != mine {
        sqlx::query("DELETE FROM locks WHERE ino = $1 AND session = $2 AND owner = $3")
            .bind(ino as i64)
            .bind(me)
            .bind(req.owner as i64)
            .execute(&mut *tx)
            .await?;
        if !after.is_empty() {
            sqlx::query(
                "INSERT INTO locks (ino, session, owner, exclusive, start_off, end_off, pid) \
                 SELECT $1, $2, $3, * FROM UNNEST($4::boolean[], $5::bigint[], $6::bigint[], $7::integer[])",
            )
            .bind(ino as i64)
            .bind(me)
            .bind(req.owner as i64)
            .bind(after.iter().map(|h| h.exclusive).collect::<Vec<_>>())
            .bind(after.iter().map(|h| h.start as i64).collect::<Vec<_>>())
            .bind(after.iter().map(|h| h.end as i64).collect::<Vec<_>>())
            .bind(after.iter().map(|h| h.pid as i32).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !mine.is_empty() {
            // something was released or downgraded: waiters re-check
            sqlx::query("SELECT pg_notify('graviton_locks', $1)")
                .bind(ino.to_string())
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(None)
}

impl SharedVolume for PgMetaStore {
    fn session(&self) -> Option<i64> {
        self.session_id()
    }

    fn test_lock(&self, ino: Ino, req: &LockRequest) -> MetaResult<Option<HeldLock>> {
        let held = self.retrying(async || held_locks(&self.pool, ino).await)?;
        Ok(shared_volume::conflict(
            &held,
            self.session_id().unwrap_or(0),
            req,
        ))
    }

    fn set_lock(&self, ino: Ino, req: &LockRequest, wait: bool) -> MetaResult<Option<i64>> {
        let me = self
            .session_id()
            .ok_or_else(|| MetaError::backend("postgres", "locks need a mount session"))?;
        loop {
            let waiter = self.shared.waiter(ino);
            {
                let notified = waiter.notified();
                tokio::pin!(notified);
                // registered before the check, so a release between the two still wakes us
                notified.as_mut().enable();
                let conflict = self
                    .retrying(async || try_set(&self.pool, ino, me, req).await)
                    .inspect_err(|e| {
                        if matches!(e, MetaError::SessionExpired) {
                            self.session_expired(me);
                        }
                    })?;
                if conflict.is_none() {
                    if req.kind != LockKind::Unlock {
                        // what other mounts committed before the lock was released is in our
                        // caches before the holder proceeds
                        self.feed_barrier();
                    }
                    let mut lockers = self.shared.lockers.lock().expect("lock");
                    if req.kind == LockKind::Unlock && req.start == 0 && req.end >= TO_EOF {
                        lockers.remove(&(ino, req.owner));
                    } else {
                        lockers.insert((ino, req.owner));
                    }
                    return Ok(Some(me));
                }
                if !wait {
                    return Ok(None);
                }
                self.rt.block_on(async {
                    let _ = tokio::time::timeout(WAITER_RECHECK, notified).await;
                });
            }
            drop(waiter);
            self.shared
                .waiters
                .lock()
                .expect("lock")
                .retain(|_, n| Arc::strong_count(n) > 1);
        }
    }

    fn release_locks(&self, ino: Ino, owner: u64) -> MetaResult<()> {
        if !self
            .shared
            .lockers
            .lock()
            .expect("lock")
            .contains(&(ino, owner))
        {
            return Ok(());
        }
        let req = LockRequest {
            owner,
            kind: LockKind::Unlock,
            start: 0,
            end: TO_EOF,
            pid: 0,
        };
        match self.set_lock(ino, &req, false) {
            // an expired session's locks are gone already
            Err(MetaError::SessionExpired) => Ok(()),
            other => other.map(drop),
        }
    }

    fn subscribe(&self, sink: ChangeSink) {
        self.shared.sinks.lock().expect("lock").push(sink);
    }

    fn changes_since(&self, since: i64) -> MetaResult<(Option<Vec<Ino>>, i64)> {
        let (now, kept_since, inos) = self.retrying(async || {
            let mut tx = self.pool.begin().await?;
            let now: i64 = sqlx::query_scalar(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
            )
            .fetch_one(&mut *tx)
            .await?;
            let kept: Option<String> = sqlx::query_scalar(
                "SELECT value FROM settings WHERE name = 'changes_kept_since'",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let inos: Vec<i64> = sqlx::query_scalar(
                "SELECT DISTINCT unnest(inos) FROM changes WHERE at >= to_timestamp($1::bigint / 1000000.0)",
            )
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((now, kept, inos))
        })?;
        let kept_since = kept_since.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        if since < kept_since {
            return Ok((None, now));
        }
        Ok((Some(inos.into_iter().map(|i| i as u64).collect()), now))
    }

    fn pin_blocks(&self, keys: &[crate::domain::BlockKey]) -> MetaResult<()> {
        let pins: Vec<Vec<u8>> = keys.iter().map(|k| k.to_bytes().to_vec()).collect();
        let pin = |session: i64| {
            self.on_own_connection("other", async |conn| {
                // after a deletion of released pins that may include these (`release_pins`)
                let _in_order = self.shared.pin_order.lock().await;
                sqlx::query(
                    "INSERT INTO block_pins (session, block_key) SELECT $1, k FROM unnest($2::bytea[]) AS k \
                     ON CONFLICT DO NOTHING",
                )
                .bind(session)
                .bind(&pins)
                .execute(&mut *conn)
                .await
            })
            .map(drop)
        };
        let Some(session) = self.session_id() else {
            return Ok(());
        };
        match pin(session) {
            // pins are the process's, not the session's: they go on under its successor
            Err(MetaError::SessionExpired) => {
                self.session_expired(session);
                match self.session_id() {
                    Some(renewed) if renewed != session => pin(renewed),
                    _ => Err(MetaError::SessionExpired),
                }
            }
            other => other,
        }
    }

    fn unpin_blocks(&self, keys: &[crate::domain::BlockKey]) {
        if self.session_id().is_some() {
            let mut pending = self.shared.unpins.lock().expect("lock");
            pending.extend(keys.iter().map(|k| k.to_bytes().to_vec()));
            drop(pending);
            self.shared.unpinned.notify_one();
        }
    }

    fn cancel_unpins(&self, keys: &[crate::domain::BlockKey]) {
        let mut pending = self.shared.unpins.lock().expect("lock");
        for k in keys {
            pending.remove(&k.to_bytes().to_vec());
        }
    }

    fn hold(&self, ino: Ino) -> MetaResult<()> {
        self.hold_ino(ino)
    }

    fn unhold(&self, ino: Ino) {
        self.unhold_ino(ino)
    }

    fn pinned_blocks(&self) -> MetaResult<Vec<crate::domain::BlockKey>> {
        let rows: Vec<Vec<u8>> = self.retrying(async || {
            sqlx::query_scalar("SELECT DISTINCT block_key FROM block_pins")
                .fetch_all(&self.pool)
                .await
        })?;
        rows.iter()
            .map(|k| {
                crate::domain::BlockKey::from_bytes(k).ok_or_else(|| {
                    MetaError::backend("postgres", "a block pin that is no block key")
                })
            })
            .collect()
    }

    fn sessions(&self) -> MetaResult<Vec<SessionRecord>> {
        let rows = self.retrying(async || {
            sqlx::query(
                "SELECT id, host, pid, mountpoint, \
                 extract(epoch FROM clock_timestamp() - heartbeat_at)::double precision AS age \
                 FROM sessions ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await
        })?;
        Ok(rows
            .iter()
            .map(|r| SessionRecord {
                id: r.get("id"),
                host: r.get("host"),
                pid: r.get::<i32, _>("pid") as u32,
                mountpoint: r.get("mountpoint"),
                heartbeat_age_secs: r.get("age"),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::prelude::*;
    use crate::meta::{FileKind, Inode, Timestamp};
    use std::time::Instant;

    fn session(store: &PgMetaStore, secs: u64) {
        store
            .begin_session(&SessionInfo {
                host: "test".into(),
                pid: std::process::id(),
                mountpoint: "/test".into(),
                timeout: Duration::from_secs(secs),
            })
            .expect("session");
    }

    fn lock(owner: u64, kind: LockKind) -> LockRequest {
        LockRequest {
            owner,
            kind,
            start: 0,
            end: TO_EOF,
            pid: 1,
        }
    }

    impl PgMetaStore {
        /// As if the process died: no heartbeat, no goodbye.
        fn vanish(&self) {
            for t in self.shared.tasks.lock().expect("lock").drain(..) {
                t.abort();
            }
            self.shared.session.store(0, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_commit_of_a_lock_holder_after_its_session_expired_is_refused_and_a_new_session_starts() {
        graviton_testkit::needs_servers!();
        let url = graviton_testkit::scratch_database();
        let a = PgMetaStore::connect(&url).unwrap();
        session(&a, 60);
        let old = a.session_id().unwrap();
        let file = |ino| Inode::new(ino, FileKind::File, 0o644, 0, 0, Timestamp::default());
        let late = a.allocate_ino().unwrap();
        // what the mount commits may rely on the lock it holds
        assert!(
            a.set_lock(late, &lock(1, LockKind::Exclusive), false)
                .unwrap()
                .is_some()
        );
        let mut tx = a.begin().unwrap();
        tx.put_inode(&file(late)).unwrap();
        // another mount reaps the session while the transaction is open
        a.rt.block_on(
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(old)
                .execute(&a.pool),
        )
        .unwrap();
        let refused = tx.commit();
        assert!(
            matches!(refused, Err(MetaError::SessionExpired)),
            "a commit under an expired session is refused: {refused:?}"
        );
        assert!(
            a.read_inode(late).unwrap().is_none(),
            "nothing of it applied"
        );
        let new = a.session_id().expect("a new session");
        assert_ne!(new, old, "session ids are never used again");
        let next = a.allocate_ino().unwrap();
        let mut tx = a.begin().unwrap();
        tx.put_inode(&file(next)).unwrap();
        tx.commit().expect("a commit under the new session");
        assert!(a.read_inode(next).unwrap().is_some());
    }

    #[test]
    fn an_expired_session_loses_its_locks_and_its_unlinked_open_files() {
        graviton_testkit::needs_servers!();
        let url = graviton_testkit::scratch_database();
        let a = PgMetaStore::connect(&url).unwrap();
        let b = PgMetaStore::connect(&url).unwrap();
        session(&a, 1);
        session(&b, 1);
        let z = a.allocate_ino().unwrap();
        let mut gone = Inode::new(z, FileKind::File, 0o644, 0, 0, Timestamp::default());
        gone.nlink = 0;
        let mut tx = a.begin().unwrap();
        tx.put_inode(&gone).unwrap();
        tx.add_orphan(z).unwrap();
        tx.commit().unwrap();
        assert!(
            a.set_lock(z, &lock(7, LockKind::Exclusive), false)
                .unwrap()
                .is_some()
        );
        assert!(
            b.set_lock(z, &lock(7, LockKind::Shared), false)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            b.test_lock(z, &lock(1, LockKind::Shared))
                .unwrap()
                .map(|h| h.exclusive),
            Some(true)
        );
        assert!(
            !b.orphans().unwrap().contains(&z),
            "a live mount's open file stays"
        );
        assert_eq!(b.sessions().unwrap().len(), 2);

        a.vanish();
        let t = Instant::now();
        assert!(
            b.set_lock(z, &lock(8, LockKind::Exclusive), true)
                .unwrap()
                .is_some()
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "woken after {:?}",
            t.elapsed()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.read_inode(z).unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "the dead mount's unlinked file was never reclaimed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(b.sessions().unwrap().len(), 1);
        // and b's own lock goes with its close
        b.release_locks(z, 8).unwrap();
        assert_eq!(b.test_lock(z, &lock(1, LockKind::Exclusive)).unwrap(), None);
    }
}
