//! The mount daemon's control socket (`graviton.sock` in its state folder). RocksDB lets one
//! process open an embedded volume, so while it is mounted `status`, `fsck`, `scrub`, `gc` and `dump`
//! ask the daemon to run them on its open volume instead. For a PostgreSQL volume mounted on
//! this machine, `status`, `fsck` and `dump` do too: a `-o writeback` mount holds commits
//! PostgreSQL does not have yet.
//!
//! Protocol: the client writes one JSON [`Request`] line; the daemon streams the command's
//! output, then a last line `\x01graviton: ok` or `\x01graviton: error <message>`, and closes.
//!
//! Access: the socket is created 0600 in the daemon's private state folder, and every request
//! is checked against the caller's credentials (`SO_PEERCRED`, `SO_PEERGROUPS`): root and the
//! daemon's own user may ask anything (a dump holds every name and xattr; gc and scrub delete
//! and rewrite). A mount also answers on a socket of its own that any local user of it may
//! reach (`mount_socket`): trash and quota queries ([`for_users`]), with the caller's identity.
//! A request line is at most [`MAX_REQUEST`] bytes and must arrive within [`REQUEST_TIMEOUT`];
//! each socket answers at most [`MAX_CONNECTIONS`] at once, and on the mount's socket an
//! answer the client does not read within [`WRITE_TIMEOUT`] is dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::mount_socket::MountDoor;
use crate::vfs::access::Who;
use crate::volume::{Source, Volume};

/// What a client asks the daemon to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// `graviton status --json` output.
    Status,
    Fsck {
        verify_data: bool,
        repair: bool,
    },
    Gc {
        grace_secs: u64,
        dry_run: bool,
    },
    Scrub {
        dry_run: bool,
    },
    Dump,
    Snapshot(SnapshotRequest),
    Trash(TrashRequest),
    Quota(QuotaRequest),
    /// `graviton settings`: show them, or change one.
    Settings {
        set: Option<(String, String)>,
    },
}

/// `graviton trash`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TrashRequest {
    List { json: bool },
    Restore { names: Vec<String> },
    Purge { names: Vec<String> },
}

/// `graviton quota`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum QuotaRequest {
    Set {
        target: QuotaTarget,
        bytes: u64,
        inodes: u64,
    },
    Get {
        target: QuotaTarget,
        json: bool,
    },
    List {
        json: bool,
    },
    Remove {
        target: QuotaTarget,
    },
}

/// What a quota limits, as a command names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaTarget {
    Volume,
    /// A directory, from the volume's root.
    Path(String),
    User(u32),
    Group(u32),
}

/// `graviton snapshot`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SnapshotRequest {
    Create { name: String, path: Option<String> },
    List { json: bool },
    Delete { name: String },
}

const TRAILER: &[u8] = b"\x01graviton: ";
/// Longest request line.
pub const MAX_REQUEST: u64 = 64 << 10;
/// How long a client has to send its request line.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections answered at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long an answer waits for its client to read it.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Request {
    /// The command's name, for logs (a request's arguments may name files).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Fsck { .. } => "fsck",
            Request::Gc { .. } => "gc",
            Request::Scrub { .. } => "scrub",
            Request::Dump => "dump",
            Request::Snapshot(_) => "snapshot",
            Request::Trash(_) => "trash",
            Request::Quota(_) => "quota",
            Request::Settings { .. } => "settings",
        }
    }
}

/// The requests an ordinary user may make, each run with that user's identity: its own trash
/// entries, and the quotas that concern it.
pub fn for_users(req: &Request) -> bool {
    matches!(
        req,
        Request::Trash(_) | Request::Quota(QuotaRequest::Get { .. } | QuotaRequest::List { .. })
    )
}

/// One `getsockopt(SOL_SOCKET, opt)` into `buf`; the bytes written.
fn sockopt<T>(conn: &UnixStream, opt: libc::c_int, buf: &mut [T]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut len = std::mem::size_of_val(buf) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    match rc {
        0 => Ok(len as usize),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The identity of the process at the other end of a Unix socket, as it connected: user,
/// group and supplementary groups.
fn peer(conn: &UnixStream) -> std::io::Result<Who> {
    let mut cred = [libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    }];
    sockopt(conn, libc::SO_PEERCRED, &mut cred)?;
    // at most NGROUPS_MAX groups; none when the kernel cannot say (fewer permissions, never more)
    let mut groups: Vec<libc::gid_t> = vec![0; 65536];
    let n = sockopt(conn, libc::SO_PEERGROUPS, &mut groups).unwrap_or(0) / size_of::<libc::gid_t>();
    groups.truncate(n);
    Ok(Who {
        uid: cred[0].uid,
        gid: cred[0].gid,
        groups,
    })
}

pub fn socket(state_dir: &Path) -> PathBuf {
    state_dir.join("graviton.sock")
}

/// Runs a request on an open volume, writing its output.
/// `in_daemon`: run by a mount daemon on its mounted volume.
/// `who`: the caller, or `Who::root()` (see [`acting_as`]).
pub fn execute(
    vol: &Volume,
    req: &Request,
    who: &Who,
    in_daemon: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match req {
        Request::Status => {
            serde_json::to_writer(&mut *out, &crate::maint::status::collect(vol)?)?;
            writeln!(out)?;
            Ok(())
        }
        Request::Fsck {
            verify_data,
            repair,
        } => crate::maint::fsck::check(vol, *verify_data, *repair, in_daemon, out),
        Request::Gc {
            grace_secs,
            dry_run,
        } => crate::maint::gc::collect(
            vol,
            std::time::Duration::from_secs(*grace_secs),
            *dry_run,
            out,
        ),
        Request::Scrub { dry_run } => crate::maint::scrub::check(vol, !dry_run, out),
        Request::Dump => crate::maint::dump::dump(vol, out).map(drop),
        Request::Snapshot(s) => crate::maint::snapshot::run(vol, s, out),
        Request::Trash(t) => crate::maint::trash::run(vol, t, who, out),
        Request::Quota(q) => crate::maint::quota::run(vol, q, who, out),
        Request::Settings { set: None } => crate::maint::settings::show(vol, out),
        Request::Settings {
            set: Some((name, value)),
        } => crate::maint::settings::set(vol, name, value, out),
    }
}

/// Runs `req` on the volume: through a mount daemon of it on this machine when there is one,
/// else on the volume opened here.
pub fn run(source: &Source, req: &Request, out: &mut dyn Write) -> anyhow::Result<()> {
    // On a PostgreSQL volume only the views go to a mount: gc is refused while a write-back
    // mount holds the volume (below), and scrub checks the block stores themselves, where a
    // write-back mount's blocks may not have arrived yet.
    let to_a_mount = match (source, req) {
        (Source::Dir(_), _) => true,
        // a snapshot holds what a write-back mount has committed too
        (
            _,
            Request::Status
            | Request::Fsck { .. }
            | Request::Dump
            | Request::Snapshot(_)
            | Request::Trash(_)
            | Request::Quota(_)
            | Request::Settings { .. },
        ) => true,
        (_, Request::Gc { .. } | Request::Scrub { .. }) => false,
    };
    if to_a_mount && let Some(conn) = live_daemon(source) {
        return ask(conn, req, out);
    }
    let vol = Volume::open(source)?;
    if let Request::Gc { .. } = req {
        // blocks only a write-back mount's journal references look unreferenced here
        crate::meta::write_behind::check_unclaimed(vol.meta.as_ref(), None)?;
    }
    execute(&vol, req, &Who::root(), false, out)
}

/// A mount daemon of `source` on this machine that answers on its control socket. An embedded
/// volume has at most one (RocksDB is locked while mounted). A PostgreSQL volume may have one
/// per mountpoint, each with a state folder of its own under the volume's; a `-o writeback`
/// mount among them has the volume to itself, and only it sees the commits its journal has
/// not sent to PostgreSQL yet, so status, fsck and dump run there rather than on a PostgreSQL
/// that is behind.
fn live_daemon(source: &Source) -> Option<UnixStream> {
    let state = source.state_dir();
    match source {
        Source::Dir(_) => UnixStream::connect(socket(&state)).ok(),
        Source::Postgres(_) => std::fs::read_dir(&state)
            .ok()?
            .flatten()
            .find_map(|mount| UnixStream::connect(socket(&mount.path())).ok()),
    }
}

fn ask(mut conn: UnixStream, req: &Request, out: &mut dyn Write) -> anyhow::Result<()> {
    serde_json::to_writer(&mut conn, req)?;
    conn.write_all(b"\n")?;
    read_answer(conn, out)
}

/// Copies a command's output to `out` up to its last line, which says how it ended.
pub(super) fn read_answer(conn: UnixStream, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            anyhow::bail!("the mount daemon closed the connection before it finished");
        }
        if let Some(end) = line.strip_prefix(TRAILER) {
            let end = String::from_utf8_lossy(end);
            let end = end.trim_end();
            return match end.strip_prefix("error ") {
                Some(msg) => Err(anyhow::anyhow!("{msg}")),
                None => Ok(()),
            };
        }
        out.write_all(&line)?;
    }
}

/// Which socket a request came in on, and so what it may ask.
enum Door {
    /// The daemon's own: root and its user, anything.
    Private,
    Mount(MountDoor),
}

/// Serves requests on the daemon's socket, and on the mount's own (`mount_socket`) when
/// given, each connection on a thread of its own (a long fsck does not hold up a status).
pub fn serve(vol: Arc<Volume>, mount: Option<MountDoor>) -> anyhow::Result<()> {
    let path = socket(&vol.state_dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    accept(listener, vol.clone(), Door::Private)?;
    if let Some(door) = mount {
        accept(door.bind()?, vol, Door::Mount(door))?;
    }
    Ok(())
}

/// Answers the connections of `listener`, at most `MAX_CONNECTIONS` at once.
fn accept(listener: UnixListener, vol: Arc<Volume>, door: Door) -> anyhow::Result<()> {
    let door = Arc::new(door);
    let answering = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("graviton-control".into())
        .spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            for conn in listener.incoming().flatten() {
                if answering.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
                    answering.fetch_sub(1, SeqCst);
                    // (the mount's socket is anyone's: nothing of it reaches the log)
                    if matches!(*door, Door::Private) {
                        tracing::warn!("control socket: too many connections at once, one refused");
                    }
                    continue;
                }
                // the slot comes back however the answer ends (a panic, a failed spawn)
                let slot = Slot(answering.clone());
                let (vol, door) = (vol.clone(), door.clone());
                let spawned = std::thread::Builder::new()
                    .name("graviton-control".into())
                    .spawn(move || {
                        let _slot = slot;
                        answer(&vol, conn, &door);
                    });
                if spawned.is_err() {
                    tracing::warn!("control socket: no thread to answer a request");
                }
            }
        })?;
    Ok(())
}

/// One of the `MAX_CONNECTIONS` answers in progress, given back when dropped.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Command output with the trailer's marker byte replaced: a file name holding it cannot end
/// the answer early (fsck prints names).
struct Unmarked<W: Write>(W);

impl<W: Write> Write for Unmarked<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.contains(&TRAILER[0]) {
            return self.0.write(buf);
        }
        let clean: Vec<u8> = buf
            .iter()
            .map(|&b| if b == TRAILER[0] { b'?' } else { b })
            .collect();
        self.0.write_all(&clean)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Reads the request line, which starts with `line`: at most `MAX_REQUEST` bytes, within
/// `REQUEST_TIMEOUT`.
fn read_request(conn: &UnixStream, mut line: Vec<u8>) -> anyhow::Result<Request> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    let mut chunk = [0u8; 4096];
    let mut conn = conn.try_clone()?;
    while !line.contains(&b'\n') && (line.len() as u64) < MAX_REQUEST {
        // the whole line within the time limit, however slowly it trickles in
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            anyhow::bail!("bad request: no complete line within {REQUEST_TIMEOUT:?}");
        }
        conn.set_read_timeout(Some(left))?;
        let want = chunk.len().min((MAX_REQUEST - line.len() as u64) as usize);
        match conn.read(&mut chunk[..want])? {
            0 => break,
            n => line.extend_from_slice(&chunk[..n]),
        }
    }
    match line.iter().position(|&b| b == b'\n') {
        Some(end) => line.truncate(end + 1),
        None => anyhow::bail!("bad request: no complete line within {MAX_REQUEST} bytes"),
    }
    serde_json::from_slice(&line).map_err(|e| anyhow::anyhow!("bad request: {e}"))
}

fn answer(vol: &Volume, conn: UnixStream, door: &Door) {
    let peer = peer(&conn);
    if let Door::Mount(_) = door {
        // anyone's: an answer left unread does not hold its thread for ever
        let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    }
    let _admitted = match (door, &peer) {
        (Door::Mount(m), Ok(p)) => match m.admit(p.uid) {
            Some(a) => Some(a),
            // this user has enough answered already: closed without a word
            None => return,
        },
        _ => None,
    };
    // a request through a mount brings an open directory of it (`mount_socket`)
    let (request, brought) = match door {
        Door::Private => (read_request(&conn, Vec::new()), None),
        Door::Mount(_) => {
            let mut first = vec![0u8; 4096];
            let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
            match super::mount_socket::recv_request(&conn, &mut first) {
                Ok((n, fd)) => {
                    first.truncate(n);
                    (read_request(&conn, first), fd)
                }
                Err(e) => (Err(anyhow::anyhow!("bad request: {e}")), None),
            }
        }
    };
    let mut out = Unmarked(std::io::BufWriter::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    }));
    let daemon_uid = nix::unistd::geteuid().as_raw();
    let result = request.and_then(|req| {
        let peer = peer.map_err(|e| anyhow::anyhow!("cannot tell who is asking: {e}"))?;
        let who = match door {
            Door::Private if peer.uid == 0 || peer.uid == daemon_uid => Ok(Who::root()),
            Door::Private => Err(
                "permission denied: only root and the mount's own user may ask its daemon; other users name a directory on the mount".to_string(),
            ),
            Door::Mount(m) => m.acting_as(&peer, daemon_uid, &req, brought),
        };
        // (an ordinary user's requests are not logged: they are theirs, and could fill the log)
        let ordinary = peer.uid != 0 && peer.uid != daemon_uid;
        match who {
            Ok(who) => {
                if !ordinary {
                    tracing::info!(command = req.kind(), uid = peer.uid, "control request");
                }
                execute(vol, &req, &who, true, &mut out)
            }
            Err(why) => {
                if !ordinary {
                    tracing::warn!(command = req.kind(), uid = peer.uid, "control request refused");
                }
                Err(anyhow::anyhow!("{why}"))
            }
        }
    });
    let end = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error {}", format!("{e:#}").replace('\n', " ")),
    };
    let mut out = out.0;
    let _ = out.write_all(TRAILER);
    let _ = out.write_all(end.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}
