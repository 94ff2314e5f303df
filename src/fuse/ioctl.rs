//! Requests made through the mount itself with ioctl(2), so that they carry the caller's
//! identity as every FUSE request does (the daemon checks what it may do: `vfs::access`).
//! The kernel passes an ioctl on a FUSE file or directory on only when its number encodes its
//! argument's size and direction, so each argument has a fixed size. [`CLONE`]'s: a version,
//! the lengths of two paths from the volume's root, and the paths. [`WHERE`]'s: the name of
//! the mount's control socket (`daemon::mount_socket`), which the daemon writes.
//! The numbers follow the generic encoding (x86, ARM, RISC-V); powerpc, mips and sparc
//! encode directions and sizes otherwise, and have no `graviton clone` or mount path queries.

/// Bytes of the argument: a 16-byte header and up to [`PATHS_MAX`] bytes of paths.
pub const ARG_BYTES: usize = 16 + PATHS_MAX;
/// Bytes of both paths together, at most.
pub const PATHS_MAX: usize = 8192;
const VERSION: u32 = 1;

/// `graviton clone`: `_IOW('G', 0xC1, [u8; ARG_BYTES])`.
pub const CLONE: u32 = (1 << 30) | ((ARG_BYTES as u32) << 16) | ((b'G' as u32) << 8) | 0xC1;

/// Bytes of [`WHERE`]'s answer: the name, then NULs.
pub const NAME_BYTES: usize = 64;

/// `graviton trash|quota … MOUNTPATH`: `_IOR('G', 0xC2, [u8; NAME_BYTES])`, the abstract name
/// of the mount's control socket.
pub const WHERE: u32 = (2 << 30) | ((NAME_BYTES as u32) << 16) | ((b'G' as u32) << 8) | 0xC2;

/// [`WHERE`]'s answer for the socket `name` (None: too long).
pub fn encode_where(name: &str) -> Option<Vec<u8>> {
    let mut out = name.as_bytes().to_vec();
    if out.len() >= NAME_BYTES {
        return None;
    }
    out.resize(NAME_BYTES, 0);
    Some(out)
}

/// The argument of [`CLONE`]: source and destination paths from the volume's root.
pub fn encode_clone(src: &[u8], dst: &[u8]) -> Option<Vec<u8>> {
    if src.len() + dst.len() > PATHS_MAX {
        return None;
    }
    let mut arg = Vec::with_capacity(ARG_BYTES);
    arg.extend_from_slice(&VERSION.to_ne_bytes());
    arg.extend_from_slice(&(src.len() as u32).to_ne_bytes());
    arg.extend_from_slice(&(dst.len() as u32).to_ne_bytes());
    arg.extend_from_slice(&0u32.to_ne_bytes());
    arg.extend_from_slice(src);
    arg.extend_from_slice(dst);
    arg.resize(ARG_BYTES, 0);
    Some(arg)
}

/// The paths of a [`CLONE`] argument; None when it is malformed.
pub fn decode_clone(arg: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let word = |i: usize| -> Option<usize> {
        Some(u32::from_ne_bytes(arg.get(i * 4..i * 4 + 4)?.try_into().ok()?) as usize)
    };
    if arg.len() != ARG_BYTES || word(0)? != VERSION as usize {
        return None;
    }
    let (src_len, dst_len) = (word(1)?, word(2)?);
    if src_len + dst_len > PATHS_MAX {
        return None;
    }
    let src = arg.get(16..16 + src_len)?;
    let dst = arg.get(16 + src_len..16 + src_len + dst_len)?;
    Some((src.to_vec(), dst.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_bad_arguments_are_refused() {
        let arg = encode_clone(b"a/b", b"c/d e").unwrap();
        assert_eq!(arg.len(), ARG_BYTES);
        assert_eq!(
            decode_clone(&arg),
            Some((b"a/b".to_vec(), b"c/d e".to_vec()))
        );
        assert_eq!(decode_clone(&arg[..100]), None);
        let mut long = arg.clone();
        long[4..8].copy_from_slice(&(PATHS_MAX as u32).to_ne_bytes());
        assert_eq!(decode_clone(&long), None);
        assert!(encode_clone(&[b'x'; PATHS_MAX], b"y").is_none());
        assert_eq!(CLONE >> 30, 1, "the kernel copies the argument in");
        assert_eq!((CLONE >> 16) & 0x3fff, ARG_BYTES as u32);
        assert_eq!(WHERE >> 30, 2, "the kernel copies the answer out");
        assert_eq!((WHERE >> 16) & 0x3fff, NAME_BYTES as u32);
        assert_eq!(encode_where("graviton-1").unwrap().len(), NAME_BYTES);
        assert!(encode_where(&"x".repeat(NAME_BYTES)).is_none());
    }
}
