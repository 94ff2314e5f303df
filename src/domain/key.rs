//! Block identity: `(algorithm, digest, length)`, rendered `algo:lowerhex:size`.
//! Only content decides a key, so equal bytes are stored once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Largest block the volume accepts (16 MiB), as in the design notes.
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;

/// Hash algorithm used to name blocks; chosen at format time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HashAlgo {
    Blake3,
    Sha256,
}

impl HashAlgo {
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Blake3 => "blake3",
            HashAlgo::Sha256 => "sha-256",
        }
    }

    fn tag(self) -> u8 {
        match self {
            HashAlgo::Blake3 => 1,
            HashAlgo::Sha256 => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(HashAlgo::Blake3),
            2 => Some(HashAlgo::Sha256),
            _ => None,
        }
    }

    /// Digest of `data` under this algorithm.
    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            // One thread per block: the write path already hashes a flush's blocks on threads of
            // their own, and reads hash as the bytes arrive. Spreading each block over rayon's
            // pool as well slows a sequential write through `-o writeback`: the pool's threads
            // spin while they wait for work, on cores the writer needs.
            HashAlgo::Blake3 => *blake3::hash(data).as_bytes(),
            HashAlgo::Sha256 => sha2::Sha256::digest(data).into(),
        }
    }
}

/// A block's bytes hashed as they arrive (a download's chunks), while each chunk is still in
/// the core's cache: [`BlockKey::matches_hashed`] then checks the result.
pub enum BlockHasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl BlockHasher {
    pub fn new(algo: HashAlgo) -> BlockHasher {
        match algo {
            HashAlgo::Blake3 => BlockHasher::Blake3(Box::new(blake3::Hasher::new())),
            HashAlgo::Sha256 => BlockHasher::Sha256(sha2::Sha256::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            BlockHasher::Blake3(h) => {
                h.update(bytes);
            }
            BlockHasher::Sha256(h) => h.update(bytes),
        }
    }

    pub fn finalize(self) -> [u8; 32] {
        match self {
            BlockHasher::Blake3(h) => *h.finalize().as_bytes(),
            BlockHasher::Sha256(h) => h.finalize().into(),
        }
    }
}

impl FromStr for HashAlgo {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        match s {
            "blake3" => Ok(HashAlgo::Blake3),
            "sha-256" | "sha256" => Ok(HashAlgo::Sha256),
            other => Err(KeyError::UnknownAlgo(other.to_string())),
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("unknown hash algorithm {0:?} (expected blake3 or sha-256)")]
    UnknownAlgo(String),
    #[error("malformed block key {0:?} (expected algo:hex:size)")]
    Malformed(String),
    #[error("block size {0} is outside 1..=16 MiB")]
    BadSize(u64),
}

/// Identity of one immutable block.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    pub algo: HashAlgo,
    pub digest: [u8; 32],
    pub size: u32,
}

/// Length of [`BlockKey::to_bytes`].
pub const KEY_BYTES: usize = 37;

impl BlockKey {
    /// The key naming `data`. Panics on empty data: empty blocks do not exist.
    pub fn for_data(algo: HashAlgo, data: &[u8]) -> BlockKey {
        assert!(!data.is_empty(), "empty blocks do not exist");
        BlockKey {
            algo,
            digest: algo.digest(data),
            size: data.len() as u32,
        }
    }

    /// The key naming `data`, with its group hashes when it has some (BLAKE3 blocks of more
    /// than one group): a block store may keep them for verified ranged reads. One pass over
    /// the bytes, as `for_data`.
    pub fn for_data_grouped(
        algo: HashAlgo,
        data: &[u8],
    ) -> (BlockKey, Option<super::groups::GroupHashes>) {
        assert!(!data.is_empty(), "empty blocks do not exist");
        let (digest, groups) = match algo {
            HashAlgo::Blake3 => super::groups::digest_and_groups(data),
            HashAlgo::Sha256 => (algo.digest(data), None),
        };
        let key = BlockKey {
            algo,
            digest,
            size: data.len() as u32,
        };
        (key, groups)
    }

    /// True when `data` is exactly the content this key names.
    pub fn matches(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.size as u64 && self.algo.digest(data) == self.digest
    }

    /// True when `len` bytes whose digest under this key's algorithm is `digest` (from a
    /// [`BlockHasher`]) are exactly the content this key names.
    pub fn matches_hashed(&self, len: usize, digest: [u8; 32]) -> bool {
        len as u64 == self.size as u64 && digest == self.digest
    }

    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// Compact binary form used inside metadata records (tag, digest, size).
    pub fn to_bytes(&self) -> [u8; KEY_BYTES] {
        let mut out = [0u8; KEY_BYTES];
        out[0] = self.algo.tag();
        out[1..33].copy_from_slice(&self.digest);
        out[33..].copy_from_slice(&self.size.to_be_bytes());
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<BlockKey> {
        if b.len() != KEY_BYTES {
            return None;
        }
        let algo = HashAlgo::from_tag(b[0])?;
        let digest = b[1..33].try_into().ok()?;
        let size = u32::from_be_bytes(b[33..].try_into().ok()?);
        Some(BlockKey { algo, digest, size })
    }
}

impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.algo, self.hex(), self.size)
    }
}

impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}…:{}", self.algo, &self.hex()[..12], self.size)
    }
}

impl FromStr for BlockKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Malformed(s.to_string());
        let mut parts = s.split(':');
        let (Some(algo), Some(hex_digest), Some(size), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let algo: HashAlgo = algo.parse()?;
        if hex_digest.len() != 64 || hex_digest.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| bad())?;
        let size: u64 = size.parse().map_err(|_| bad())?;
        if size == 0 || size > MAX_BLOCK_SIZE as u64 {
            return Err(KeyError::BadSize(size));
        }
        Ok(BlockKey {
            algo,
            digest,
            size: size as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_blake3_key_renders_in_upstream_form() {
        let k = BlockKey::for_data(HashAlgo::Blake3, b"abc");
        assert_eq!(
            k.to_string(),
            "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85:3"
        );
    }

    #[test]
    fn known_sha256_key() {
        let k = BlockKey::for_data(HashAlgo::Sha256, b"abc");
        assert_eq!(
            k.to_string(),
            "sha-256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad:3"
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in ["", "blake3", "md5:00:1", "blake3:zz:1", "blake3:ab:1:2"] {
            assert!(bad.parse::<BlockKey>().is_err(), "{bad}");
        }
        let zero = format!("blake3:{}:0", "0".repeat(64));
        assert_eq!(zero.parse::<BlockKey>(), Err(KeyError::BadSize(0)));
        let upper = format!("blake3:{}:1", "A".repeat(64));
        assert!(upper.parse::<BlockKey>().is_err());
    }

    proptest! {
        #[test]
        fn text_and_binary_forms_round_trip(data in proptest::collection::vec(any::<u8>(), 1..2000), sha in any::<bool>()) {
            let algo = if sha { HashAlgo::Sha256 } else { HashAlgo::Blake3 };
            let k = BlockKey::for_data(algo, &data);
            prop_assert_eq!(k.to_string().parse::<BlockKey>().unwrap(), k);
            prop_assert_eq!(BlockKey::from_bytes(&k.to_bytes()).unwrap(), k);
            prop_assert!(k.matches(&data));
            let mut other = data.clone();
            other[0] ^= 1;
            prop_assert!(!k.matches(&other));
        }

        #[test]
        fn hashing_in_pieces_checks_as_the_whole(
            data in proptest::collection::vec(any::<u8>(), 1..5000),
            cuts in proptest::collection::vec(0usize..5000, 0..6),
            sha in any::<bool>(),
        ) {
            let algo = if sha { HashAlgo::Sha256 } else { HashAlgo::Blake3 };
            let k = BlockKey::for_data(algo, &data);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % data.len()).collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            let hashed = |bytes: &[u8]| {
                let mut h = BlockHasher::new(algo);
                for w in cuts.windows(2) {
                    h.update(&bytes[w[0]..w[1]]);
                }
                h.finalize()
            };
            prop_assert!(k.matches_hashed(data.len(), hashed(&data)));
            let mut other = data.clone();
            other[data.len() / 2] ^= 0x80;
            prop_assert!(!k.matches_hashed(data.len(), hashed(&other)));
            prop_assert!(!k.matches_hashed(data.len() - 1, hashed(&data)));
        }
    }
}
