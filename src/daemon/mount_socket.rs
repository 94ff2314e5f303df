//! A mount's own control socket, which any local user of the mount may reach: `graviton
//! trash|quota … MOUNTPATH` run there with the caller's identity (`control::for_users`).
//!
//! - **Found through the mount.** The socket is abstract (no file to leave behind or to
//!   protect) under a random name, bound before the mount answers anyone, and told by the
//!   mount itself (`fuse::ioctl::WHERE`).
//! - **Tied to the mount.** Every request brings an open directory of the mount (`SCM_RIGHTS`),
//!   and the daemon checks that it is on its own device. A caller that cannot open anything
//!   on the mount (another mount namespace, a sandbox) gets nothing, and a client sent to
//!   another volume's socket by a filesystem answering `WHERE` falsely is refused there.
//! - **Only what concerns the caller.** Trash and quota queries only, even for root, which
//!   runs the other commands with the volume as SOURCE (`control::run`). Others than root and
//!   the daemon's user are answered on `allow_other` mounts only, with their own identity
//!   (`SO_PEERCRED`, `SO_PEERGROUPS`); nothing is restored or purged through a read-only
//!   mount; each user has at most [`PER_USER`] requests answered at once.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::Context;

use super::control::{Request, TrashRequest, for_users};
use crate::vfs::access::Who;

/// Requests of one user (other than root) answered at once.
pub const PER_USER: usize = 2;

/// The daemon's side of a mount's socket.
pub struct MountDoor {
    pub name: String,
    pub mountpoint: PathBuf,
    /// Users other than root and the daemon's may use the mount (`allow_other`).
    pub others: bool,
    pub read_only: bool,
    /// The mount's device, set once mounted (`set_device`); nothing is answered before.
    dev: OnceLock<u64>,
    answering: Mutex<HashMap<u32, usize>>,
}

/// One user's request being answered (`MountDoor::admit`), counted until dropped.
pub struct Admitted<'a> {
    door: &'a MountDoor,
    uid: u32,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut answering = self.door.answering.lock().expect("lock");
        if let Some(n) = answering.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                answering.remove(&self.uid);
            }
        }
    }
}

fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

impl MountDoor {
    /// A door under a fresh random name (128 bits: no one binds it first).
    pub fn new(mountpoint: &Path, others: bool, read_only: bool) -> MountDoor {
        MountDoor {
            name: format!("graviton-{:032x}", rand::random::<u128>()),
            mountpoint: mountpoint.to_path_buf(),
            others,
            read_only,
            dev: OnceLock::new(),
            answering: Mutex::default(),
        }
    }

    pub fn bind(&self) -> anyhow::Result<UnixListener> {
        UnixListener::bind_addr(&abstract_addr(&self.name)?)
            .context("binding the mount's control socket")
    }

    /// Counts a request of `uid`; None when that user has `PER_USER` answered already.
    pub fn admit(&self, uid: u32) -> Option<Admitted<'_>> {
        let mut answering = self.answering.lock().expect("lock");
        let n = answering.entry(uid).or_default();
        if uid != 0 && *n >= PER_USER {
            return None;
        }
        *n += 1;
        Some(Admitted { door: self, uid })
    }

    /// Records the mount's device, read from the mount table right after mounting (a later
    /// mount over the mountpoint, or a renamed path, cannot change it).
    pub fn set_device(&self) -> anyhow::Result<()> {
        let dev = crate::fuse::readahead::device(&self.mountpoint)
            .context("the mount is not in /proc/self/mountinfo")?;
        let _ = self.dev.set(dev);
        Ok(())
    }

    /// Who `req` of `peer` runs as, given what it brought (`recv_request`); why not, else.
    pub fn acting_as(
        &self,
        peer: &Who,
        daemon_uid: u32,
        req: &Request,
        brought: Option<OwnedFd>,
    ) -> Result<Who, String> {
        if !for_users(req) {
            return Err("permission denied: only trash and quota queries come through a mount; root runs the other commands naming the volume".into());
        }
        let on_this_mount = brought
            .map(std::fs::File::from)
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| self.dev.get() == Some(&m.dev()));
        if !on_this_mount {
            return Err(
                "permission denied: the request brought no open directory of this mount".into(),
            );
        }
        if self.read_only
            && !matches!(
                req,
                Request::Trash(TrashRequest::List { .. }) | Request::Quota(_)
            )
        {
            return Err("the mount is read-only".into());
        }
        if peer.uid == 0 || peer.uid == daemon_uid {
            Ok(Who::root())
        } else if self.others {
            Ok(peer.clone())
        } else {
            Err("permission denied: only its own user may use this mount (no allow_other)".into())
        }
    }
}

/// Receives the start of a request (into `buf`) with the open file it brings, if any.
pub fn recv_request(
    conn: &UnixStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    // room for a few descriptors: more than one is refused below, all are closed
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg writes at most iov_len bytes into `buf` and msg_controllen into
    // `control`, both alive for the call.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds: Vec<OwnedFd> = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled, within
    // msg_controllen; each SCM_RIGHTS payload is an array of descriptors now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let brought = match fds.len() {
        1 => fds.pop(),
        _ => None,
    };
    Ok((n as usize, brought))
}

/// Sends `data` with `fd` attached to its first byte.
fn send_with_fd(conn: &mut UnixStream, data: &[u8], fd: RawFd) -> std::io::Result<()> {
    let mut control = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN compute sizes; the header and descriptor written fit in
    // `control` (32 bytes, more than CMSG_SPACE of one descriptor).
    let sent = unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        libc::sendmsg(conn.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    conn.write_all(&data[sent as usize..])
}

/// A directory of the Graviton mount holding `path`, open, and the name of the mount's
/// socket, asked of the mount itself; None when `path` is not on a Graviton mount. The
/// nearest directory this user may open, from `path` up to the mount's root.
pub fn find(path: &Path) -> Option<(std::fs::File, String)> {
    let mut dir = std::fs::canonicalize(path).ok()?;
    if !dir.is_dir() {
        dir.pop();
    }
    let dev = std::fs::metadata(&dir).ok()?.dev();
    loop {
        if let Ok(f) = std::fs::File::open(&dir) {
            return ask_where(&f).map(|name| (f, name));
        }
        if !dir.pop() || std::fs::metadata(&dir).ok()?.dev() != dev {
            return None;
        }
    }
}

/// The socket name a Graviton mount tells for an open file of it (`ioctl::WHERE`).
fn ask_where(f: &std::fs::File) -> Option<String> {
    let mut name = [0u8; crate::fuse::ioctl::NAME_BYTES];
    // SAFETY: the kernel writes at most NAME_BYTES into `name`, as the request number says.
    let rc = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
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

/// Runs `req` through the mount's socket `name`, bringing `dir` (`find`), as the user running
/// this process.
pub fn run(
    dir: &std::fs::File,
    name: &str,
    req: &Request,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut conn = UnixStream::connect_addr(&abstract_addr(name)?)
        .context("the mount's daemon does not answer")?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    send_with_fd(&mut conn, &line, dir.as_raw_fd())?;
    super::control::read_answer(conn, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::control::{QuotaRequest, QuotaTarget};

    fn door(others: bool, read_only: bool) -> MountDoor {
        let door = MountDoor::new(Path::new("/"), others, read_only);
        door.dev.set(std::fs::metadata("/").unwrap().dev()).unwrap();
        door
    }

    fn on_it() -> Option<OwnedFd> {
        Some(std::fs::File::open("/").unwrap().into())
    }

    #[test]
    fn other_users_make_only_their_own_requests_as_themselves() {
        let user = Who {
            uid: 1000,
            gid: 1000,
            groups: vec![27],
        };
        let list = Request::Trash(TrashRequest::List { json: false });
        let purge = Request::Trash(TrashRequest::Purge { names: vec![] });
        let get = Request::Quota(QuotaRequest::Get {
            target: QuotaTarget::Volume,
            json: false,
        });
        let set = Request::Quota(QuotaRequest::Set {
            target: QuotaTarget::User(1000),
            bytes: 1,
            inodes: 0,
        });
        let d = door(true, false);
        assert_eq!(d.acting_as(&user, 0, &list, on_it()), Ok(user.clone()));
        assert_eq!(d.acting_as(&user, 0, &get, on_it()), Ok(user.clone()));
        assert_eq!(
            d.acting_as(&Who::root(), 0, &purge, on_it()),
            Ok(Who::root())
        );
        assert_eq!(d.acting_as(&user, 1000, &purge, on_it()), Ok(Who::root()));
        // nothing else, for anyone, through a mount
        for refused in [
            set,
            Request::Dump,
            Request::Status,
            Request::Settings { set: None },
        ] {
            assert!(
                d.acting_as(&user, 0, &refused, on_it()).is_err(),
                "{refused:?}"
            );
            assert!(
                d.acting_as(&Who::root(), 0, &refused, on_it()).is_err(),
                "{refused:?}"
            );
        }
        // a request that brings nothing of the mount, or something of another filesystem
        assert!(d.acting_as(&Who::root(), 0, &list, None).is_err());
        let elsewhere = MountDoor::new(Path::new("/"), true, false);
        elsewhere.dev.set(u64::MAX).unwrap();
        assert!(
            elsewhere
                .acting_as(&Who::root(), 0, &list, on_it())
                .is_err()
        );
        // a mount only its own user may use answers no one else
        assert!(
            door(false, false)
                .acting_as(&user, 0, &list, on_it())
                .is_err()
        );
        assert_eq!(
            door(false, false).acting_as(&user, 1000, &list, on_it()),
            Ok(Who::root())
        );
        // a read-only mount lists, and restores or purges nothing
        let ro = door(true, true);
        assert_eq!(ro.acting_as(&user, 0, &list, on_it()), Ok(user.clone()));
        assert!(ro.acting_as(&Who::root(), 0, &purge, on_it()).is_err());
    }

    #[test]
    fn each_user_has_a_bounded_number_of_requests_answered_at_once() {
        let d = door(true, false);
        let a = d.admit(1000).unwrap();
        let _b = d.admit(1000).unwrap();
        assert!(d.admit(1000).is_none());
        assert!(d.admit(1001).is_some());
        drop(a);
        assert!(d.admit(1000).is_some());
    }

    #[test]
    fn a_descriptor_travels_with_the_request() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let dir = std::fs::File::open("/").unwrap();
        send_with_fd(&mut client, b"{\"command\":\"status\"}\n", dir.as_raw_fd()).unwrap();
        let mut buf = [0u8; 64];
        let (n, fd) = recv_request(&server, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"{\"command\":\"status\"}\n");
        let got = std::fs::File::from(fd.expect("a descriptor"))
            .metadata()
            .unwrap();
        assert_eq!(got.ino(), dir.metadata().unwrap().ino());
    }
}
