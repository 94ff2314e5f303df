//! Open files on a shared PostgreSQL volume. A mount records each inode it has open in
//! `holds` (migrations/0007) before the open returns, and `graviton_apply` turns the deletion
//! of a held inode into an orphan with no links: a file unlinked or renamed over on one mount
//! stays readable and writable on another that has it open, until no mount holds it.
//!
//! - A hold is written in a serializable transaction that also reads the inode, so an open and
//!   a deletion racing on two mounts cannot both miss each other: one of them runs again. The
//!   transaction is one message on the opening thread's own connection (one round trip).
//! - Releases are gathered and deleted by a background task (a close does not wait for the
//!   database); the same transaction reclaims the orphans nobody holds any more.
//! - A session's holds go with it (`ON DELETE CASCADE`): when it ends or expires, orphans only
//!   it held are reclaimed (`session::reclaim_unheld`); a session that replaces an expired
//!   one holds again what the mount still has open.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::sync::Notify;

use super::session::reclaim_unheld;
use super::shared_volume::SharedVolumeState;
use super::{BEGIN, PgMetaStore};
use crate::meta::{Ino, MetaError, MetaResult};

/// A release waits this long for others to delete with it.
const GATHER: Duration = Duration::from_millis(50);

/// This mount's side of `holds`.
#[derive(Default)]
pub(super) struct Holds {
    /// Inodes held now: a new session holds them again.
    held: std::sync::Mutex<HashSet<Ino>>,
    /// Released here and not yet deleted from `holds`.
    released: std::sync::Mutex<HashSet<Ino>>,
    /// Wakes the task that deletes them.
    wake: Notify,
    /// Shared while a hold is written, exclusive while released ones are deleted: a deletion
    /// never removes a hold taken again meanwhile.
    order: tokio::sync::RwLock<()>,
}

impl Holds {
    /// Inodes held by committed transactions (`MetaTxn::hold_open`).
    pub(super) fn mark_held(&self, inos: &[Ino]) {
        if !inos.is_empty() {
            self.held.lock().expect("lock").extend(inos);
        }
    }

    /// What a new session must hold again.
    pub(super) fn held(&self) -> Vec<i64> {
        let held = self.held.lock().expect("lock");
        held.iter().map(|&i| i as i64).collect()
    }
}

impl PgMetaStore {
    pub(super) fn hold_ino(&self, ino: Ino) -> MetaResult<()> {
        let Some(mut session) = self.session_id() else {
            return Ok(());
        };
        let holds = &self.shared.holds;
        if holds.held.lock().expect("lock").contains(&ino) {
            return Ok(()); // created by this mount to be opened: held with its creation
        }
        loop {
            // one message on the thread's own connection: the transaction and its COMMIT
            // (the values are integers)
            let sql = format!(
                "{BEGIN}; INSERT INTO holds (ino, session) SELECT {ino}, {session} \
                 FROM (SELECT count(*) FROM inodes WHERE ino = {ino}) AS seen \
                 ON CONFLICT DO NOTHING; COMMIT",
                ino = ino as i64,
            );
            let written = self.on_own_connection("hold", async |c| {
                let _in_order = holds.order.read().await;
                if holds.released.lock().expect("lock").remove(&ino) {
                    return Ok(()); // its row was never deleted
                }
                // reads the inode, there or not, so that a deletion racing with it conflicts
                let sent = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str()))
                    .execute(&mut *c)
                    .await;
                if sent.is_err() {
                    // a failed statement leaves the transaction open, aborted
                    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *c).await;
                }
                sent.map(drop)
            });
            match written {
                Ok(()) => {
                    holds.held.lock().expect("lock").insert(ino);
                    return Ok(());
                }
                Err(MetaError::Conflict) => continue,
                Err(MetaError::SessionExpired) => {
                    self.session_expired(session);
                    match self.session_id() {
                        Some(renewed) if renewed != session => session = renewed,
                        _ => return Err(MetaError::SessionExpired),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn unhold_ino(&self, ino: Ino) {
        if self.session_id().is_none() {
            return;
        }
        let holds = &self.shared.holds;
        holds.held.lock().expect("lock").remove(&ino);
        holds.released.lock().expect("lock").insert(ino);
        holds.wake.notify_one();
    }
}

/// Deletes the holds this mount released, gathered for a moment, and reclaims the orphans
/// nobody holds any more; a failure leaves them for the next round.
pub(super) async fn release_holds(pool: PgPool, st: Arc<SharedVolumeState>) {
    let holds = &st.holds;
    loop {
        holds.wake.notified().await;
        tokio::time::sleep(GATHER).await;
        let session = st.session.load(Ordering::SeqCst);
        let _in_order = holds.order.write().await;
        let released: Vec<i64> = holds
            .released
            .lock()
            .expect("lock")
            .drain()
            .map(|i| i as i64)
            .collect();
        if released.is_empty() {
            continue;
        }
        let done = async {
            let mut tx = pool.begin_with(BEGIN).await?;
            sqlx::query("DELETE FROM holds WHERE session = $1 AND ino = ANY($2)")
                .bind(session)
                .bind(&released)
                .execute(&mut *tx)
                .await?;
            reclaim_unheld(&mut tx, Some(&released)).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = done {
            tracing::debug!("releasing open-file holds failed (tried again): {e}");
            holds
                .released
                .lock()
                .expect("lock")
                .extend(released.iter().map(|&i| i as Ino));
            holds.wake.notify_one();
            tokio::time::sleep(GATHER).await;
        }
    }
}
