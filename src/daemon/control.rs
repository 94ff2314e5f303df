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
//! and rewrite). A mount also answers on a second socket that any local user may reach: an
//! abstract one (no file), under a random name the mount itself tells (`fuse::ioctl::WHERE`:
//! only the daemon serving the mount answers it, so no one can stand in for it), which
//! `graviton trash|quota … MOUNTPATH` use. There an ordinary user may list, restore and purge
//! the trash entries it owns and see the quotas that concern it ([`for_users`]), with its
//! own permissions; anything else is refused.
//! A request line is at most [`MAX_REQUEST`] bytes and must arrive within [`REQUEST_TIMEOUT`];
//! each socket answers at most [`MAX_CONNECTIONS`] at once.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

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

/// The requests an ordinary user may make, each run with that user's identity: its own trash
/// entries, and the quotas that concern it.
pub fn for_users(req: &Request) -> bool {
    matches!(
        req,
        Request::Trash(_) | Request::Quota(QuotaRequest::Get { .. } | QuotaRequest::List { .. })
    )
}

/// Who `req` runs as, asked by `peer` of a daemon running as `daemon_uid`: root and the
/// daemon's user act as root over the volume; another user, when `others` may use the mount
/// (`allow_other`), makes only the requests [`for_users`] allows, as itself. None: refused.
pub fn acting_as(peer: &Who, daemon_uid: u32, others: bool, req: &Request) -> Option<Who> {
    if peer.uid == 0 || peer.uid == daemon_uid {
        Some(Who::root())
    } else if others && for_users(req) {
        Some(peer.clone())
    } else {
        None
    }
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
    // at most NGROUPS_MAX groups
    let mut groups: Vec<libc::gid_t> = vec![0; 65536];
    let n = sockopt(conn, libc::SO_PEERGROUPS, &mut groups)? / size_of::<libc::gid_t>();
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

/// The name of a mount's second control socket, open to every local user: abstract (no file
/// to leave behind or to protect) and random, so no one can bind it first.
pub fn mount_socket_name() -> String {
    format!("graviton-{:032x}", rand::random::<u128>())
}

fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

/// The control socket of the Graviton mount holding `path` (a file or directory on it),
/// asked of the mount itself; None when `path` is not on a Graviton mount.
pub fn mount_socket(path: &Path) -> Option<String> {
    use std::os::fd::AsRawFd;
    let dir = match path.is_dir() {
        true => path,
        false => path.parent()?,
    };
    let dir = std::fs::File::open(dir).ok()?;
    let mut name = [0u8; crate::fuse::ioctl::NAME_BYTES];
    // SAFETY: the kernel writes at most NAME_BYTES into `name`, as the request number says.
    let rc = unsafe {
        libc::ioctl(
            dir.as_raw_fd(),
            crate::fuse::ioctl::WHERE as _,
            name.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8(name[..end].to_vec())
        .ok()
        .filter(|n| n.starts_with("graviton-"))
}

/// Runs `req` through the mount's control socket named `name` (`mount_socket`), as the user
/// running this process.
pub fn run_on_mount(name: &str, req: &Request, out: &mut dyn Write) -> anyhow::Result<()> {
    let conn = UnixStream::connect_addr(&abstract_addr(name)?)
        .context("the mount's daemon does not answer")?;
    ask(conn, req, out)
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

/// Serves requests on the daemon's socket, and on the mount's socket named `mount_socket`
/// (`mount_socket_name`) when given, each connection on a thread of its own (a long fsck
/// does not hold up a status). `others`: users other than root and the daemon's may use the
/// mount (`allow_other`), so they may make the requests [`for_users`] allows.
pub fn serve(vol: Arc<Volume>, mount_socket: Option<&str>, others: bool) -> anyhow::Result<()> {
    let path = socket(&vol.state_dir);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    accept(listener, vol.clone(), others)?;
    if let Some(name) = mount_socket {
        let listener = UnixListener::bind_addr(&abstract_addr(name)?)
            .context("binding the mount's control socket")?;
        accept(listener, vol, others)?;
    }
    Ok(())
}

/// Answers the connections of `listener`, at most `MAX_CONNECTIONS` at once.
fn accept(listener: UnixListener, vol: Arc<Volume>, others: bool) -> anyhow::Result<()> {
    let answering = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("graviton-control".into())
        .spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            for conn in listener.incoming().flatten() {
                if answering.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
                    answering.fetch_sub(1, SeqCst);
                    tracing::warn!("control socket: too many connections at once, one refused");
                    continue;
                }
                // the slot comes back however the answer ends (a panic, a failed spawn)
                let slot = Slot(answering.clone());
                let vol = vol.clone();
                let spawned = std::thread::Builder::new()
                    .name("graviton-control".into())
                    .spawn(move || {
                        let _slot = slot;
                        answer(&vol, conn, others);
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

/// Reads the request line: at most `MAX_REQUEST` bytes, within `REQUEST_TIMEOUT`.
fn read_request(conn: &UnixStream) -> anyhow::Result<Request> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    let mut line = Vec::new();
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

fn answer(vol: &Volume, conn: UnixStream, others: bool) {
    let peer = peer(&conn);
    let request = read_request(&conn);
    let mut out = Unmarked(std::io::BufWriter::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    }));
    let daemon_uid = nix::unistd::geteuid().as_raw();
    let result = request.and_then(|req| match peer {
        Ok(peer) => match acting_as(&peer, daemon_uid, others, &req) {
            Some(who) => {
                tracing::info!(?req, uid = peer.uid, "control request");
                execute(vol, &req, &who, true, &mut out)
            }
            None => {
                tracing::warn!(?req, uid = peer.uid, "control request refused");
                Err(anyhow::anyhow!(
                    "permission denied: only root and the mount's own user may ask this; other users of a mount with allow_other may list, restore and purge their own trash and see the quotas that concern them"
                ))
            }
        },
        Err(e) => Err(anyhow::anyhow!("cannot tell who is asking: {e}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_users_make_only_their_own_requests_as_themselves() {
        let user = Who {
            uid: 1000,
            gid: 1000,
            groups: vec![27],
        };
        let list = Request::Trash(TrashRequest::List { json: false });
        let get = Request::Quota(QuotaRequest::Get {
            target: QuotaTarget::Volume,
            json: false,
        });
        let set = Request::Quota(QuotaRequest::Set {
            target: QuotaTarget::User(1000),
            bytes: 1,
            inodes: 0,
        });
        assert_eq!(acting_as(&user, 0, true, &list), Some(user.clone()));
        assert_eq!(acting_as(&user, 0, true, &get), Some(user.clone()));
        for refused in [
            set,
            Request::Dump,
            Request::Status,
            Request::Settings { set: None },
        ] {
            assert_eq!(acting_as(&user, 0, true, &refused), None, "{refused:?}");
            assert_eq!(
                acting_as(&Who::root(), 0, false, &refused),
                Some(Who::root())
            );
            assert_eq!(acting_as(&user, 1000, false, &refused), Some(Who::root()));
        }
        // a mount only its own user may use answers no one else
        assert_eq!(acting_as(&user, 0, false, &list), None);
    }
}
