//! Per-thread PostgreSQL connections. The core calls the metadata engine from its own threads
//! (FUSE readers, blocking pool) and waits for each answer. Driving a statement on the calling
//! thread, with a connection and a single-threaded runtime of its own, costs one wake-up per
//! round trip instead of three hops through a shared runtime, which more than doubled a short
//! statement's latency. The pool (with its waiting and retrying) remains the fallback when a
//! thread has no connection, the cap is reached, or the server is unreachable.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// Threads that may hold a connection of their own, per store.
const MAX_LOCAL: usize = 12;
/// After a failed connect, threads use the pool for this long.
const BACKOFF: Duration = Duration::from_secs(1);

/// A connection bound to one thread, with the runtime that drives it there.
pub(super) struct LocalConn {
    // dropped before the runtime whose reactor it is registered with
    pub(super) conn: PgConnection,
    rt: tokio::runtime::Runtime,
    open: Arc<AtomicUsize>,
}

impl LocalConn {
    /// Runs `f` on this thread until it completes.
    pub(super) fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let LocalConn { conn, rt, .. } = self;
        rt.block_on(f(conn))
    }
}

impl Drop for LocalConn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

thread_local! {
    /// This thread's connections, by store.
    static CONNS: RefCell<HashMap<u64, LocalConn>> = RefCell::new(HashMap::new());
}

/// The per-thread connections of one store.
pub(super) struct LocalConns {
    id: u64,
    opts: PgConnectOptions,
    open: Arc<AtomicUsize>,
    failed_at: Mutex<Option<Instant>>,
}

impl LocalConns {
    pub(super) fn new(url: &str) -> Option<LocalConns> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Some(LocalConns {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            opts: url.parse().ok()?,
            open: Arc::new(AtomicUsize::new(0)),
            failed_at: Mutex::new(None),
        })
    }

    /// This thread's connection, connecting it if there is none; None means "use the pool".
    pub(super) fn take(&self) -> Option<LocalConn> {
        if let Some(c) = CONNS.with(|m| m.borrow_mut().remove(&self.id)) {
            return Some(c);
        }
        if self
            .failed_at
            .lock()
            .expect("lock")
            .is_some_and(|t| t.elapsed() < BACKOFF)
        {
            return None;
        }
        if self.open.fetch_add(1, Ordering::SeqCst) >= MAX_LOCAL {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(_) => {
                self.open.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
        };
        let connected = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(2),
                PgConnection::connect_with(&self.opts),
            )
            .await
        });
        match connected {
            Ok(Ok(conn)) => Some(LocalConn {
                conn,
                rt,
                open: self.open.clone(),
            }),
            _ => {
                self.open.fetch_sub(1, Ordering::SeqCst);
                *self.failed_at.lock().expect("lock") = Some(Instant::now());
                None
            }
        }
    }

    /// Hands a healthy connection back to this thread.
    pub(super) fn give_back(&self, c: LocalConn) {
        CONNS.with(|m| m.borrow_mut().insert(self.id, c));
    }
}
