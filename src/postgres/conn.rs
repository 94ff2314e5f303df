//! Per-thread PostgreSQL connections. The core calls the metadata engine from its own threads
//! (FUSE readers, blocking pool) and waits for each answer. Driving a statement on the calling
//! thread, with a connection and a single-threaded runtime of its own, costs one wake-up per
//! round trip instead of three hops through a shared runtime, which more than doubled a short
//! statement's latency. The pool (with its waiting and retrying) remains the fallback when a
//! thread has no connection, the cap is reached, or the server is unreachable.
//!
//! Both adapters of one database share a thread's connection (`LocalConns::for_url`): the
//! metadata engine's and the block store's statements of one file operation run one after
//! the other on the same thread, so they need only one connection between them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// Threads that may hold a connection of their own, per store.
const MAX_LOCAL: usize = 12;
/// After a failed connect, threads use the pool for this long.
const BACKOFF: Duration = Duration::from_secs(1);

/// A connection bound to one thread, with the runtime that drives it there.
pub(crate) struct LocalConn {
    // dropped before the runtime whose reactor it is registered with
    pub(crate) conn: PgConnection,
    /// The metadata engine's SQL-level prepared statements exist on this connection.
    pub(crate) prepared: bool,
    rt: tokio::runtime::Runtime,
    open: Arc<AtomicUsize>,
}

impl LocalConn {
    /// Runs `f` on this thread until it completes.
    pub(crate) fn run<T>(
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
pub(crate) struct LocalConns {
    id: u64,
    opts: PgConnectOptions,
    open: Arc<AtomicUsize>,
    failed_at: Mutex<Option<Instant>>,
}

impl LocalConns {
    /// The per-thread connections to the database at `url`, shared by every adapter of this
    /// process that uses it (None when the URL does not parse: such adapters use their pool).
    pub(crate) fn for_url(url: &str) -> Option<Arc<LocalConns>> {
        static BY_URL: Mutex<Vec<(String, Weak<LocalConns>)>> = Mutex::new(Vec::new());
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut by_url = BY_URL.lock().unwrap_or_else(|e| e.into_inner());
        by_url.retain(|(_, w)| w.strong_count() > 0);
        if let Some(c) = by_url
            .iter()
            .find(|(u, _)| u == url)
            .and_then(|(_, w)| w.upgrade())
        {
            return Some(c);
        }
        let conns = Arc::new(LocalConns {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            opts: url.parse().ok()?,
            open: Arc::new(AtomicUsize::new(0)),
            failed_at: Mutex::new(None),
        });
        by_url.push((url.to_string(), Arc::downgrade(&conns)));
        Some(conns)
    }

    /// This thread's connection if it has one (None: "use the pool"), for callers that may
    /// run on short-lived threads, where a connection would not outlive its first statement.
    pub(crate) fn take_existing(&self) -> Option<LocalConn> {
        CONNS.with(|m| m.borrow_mut().remove(&self.id))
    }

    /// This thread's connection, connecting it if there is none; None means "use the pool".
    pub(crate) fn take(&self) -> Option<LocalConn> {
        if let Some(c) = self.take_existing() {
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
                prepared: false,
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

    /// Runs `g` on this thread's connection (`connect`: made first if the thread has none)
    /// and keeps the connection for the thread. None when there is no connection, or when
    /// `g` found it lost (it is dropped): the caller then uses its pool.
    pub(crate) fn with<T>(
        &self,
        connect: bool,
        g: impl FnOnce(&mut LocalConn) -> Result<T, sqlx::Error>,
    ) -> Option<Result<T, sqlx::Error>> {
        let mut c = match connect {
            true => self.take(),
            false => self.take_existing(),
        }?;
        match g(&mut c) {
            Err(e) if crate::postgres::unavailable(&e) => None,
            r => {
                self.give_back(c);
                Some(r)
            }
        }
    }

    /// Hands a healthy connection back to this thread.
    pub(crate) fn give_back(&self, c: LocalConn) {
        CONNS.with(|m| m.borrow_mut().insert(self.id, c));
    }
}
