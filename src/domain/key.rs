//! Block identity: `(algorithm, digest, length)`, rendered `algo:lowerhex:size`.
//! Only content decides a key, so equal bytes are stored once.
//!
//! An encrypted volume names its blocks with BLAKE3 in keyed mode (`blake3-keyed`), under an
//! identity key derived from the volume's data key: equal bytes still share a name within the
//! volume, and a name says nothing about the bytes to whoever lacks the key. The identity key
//! is the process's ([`install_identity_key`]): a process serves one encrypted volume at a
//! time, and another's key is refused while the first one's is held.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Largest block the volume accepts (16 MiB), as in the design notes.
pub const MAX_BLOCK_SIZE: u32 = 16 * 1024 * 1024;

/// Hash algorithm used to name blocks; chosen at format time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HashAlgo {
    Blake3,
    Sha256,
    /// BLAKE3 keyed with the process's identity key (an encrypted volume).
    Blake3Keyed,
}

/// The identity key of the encrypted volume this process serves.
static IDENTITY_KEY: RwLock<Option<[u8; 32]>> = RwLock::new(None);
/// How many holds the installed key has: another key may replace it only at none.
static HOLDS: Mutex<usize> = Mutex::new(0);

/// The process already holds another encrypted volume's identity key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("this process already serves another encrypted volume")]
pub struct OtherIdentityKey;

/// Keeps the installed identity key from being replaced while a volume uses it (its sealing
/// codecs hold one each).
#[derive(Debug)]
pub struct IdentityKeyHold(());

impl Drop for IdentityKeyHold {
    fn drop(&mut self) {
        *HOLDS.lock().expect("identity key holds") -= 1;
    }
}

/// Makes `key` the identity key that names `blake3-keyed` blocks in this process, held until
/// the hold returned is dropped. The same key again is another hold; a different one is
/// refused while the installed one is held, since the blocks named under it would no longer
/// verify.
pub fn install_identity_key(key: &[u8; 32]) -> Result<Arc<IdentityKeyHold>, OtherIdentityKey> {
    let mut holds = HOLDS.lock().expect("identity key holds");
    let mut installed = IDENTITY_KEY.write().expect("identity key");
    match *installed {
        Some(k) if k != *key && *holds > 0 => return Err(OtherIdentityKey),
        _ => *installed = Some(*key),
    }
    *holds += 1;
    Ok(Arc::new(IdentityKeyHold(())))
}

/// The installed identity key, if any.
fn installed_key() -> Option<[u8; 32]> {
    *IDENTITY_KEY.read().expect("identity key")
}

/// The installed identity key, to name a block. An encrypted volume installs it when it opens,
/// before any block is named, so naming one without it is a bug: a name under some other key
/// would lose the block. (Checking a block is another matter: without the key no keyed block
/// matches, `BlockKey::matches`.)
fn identity_key() -> [u8; 32] {
    installed_key()
        .expect("a blake3-keyed block is named only once the volume's data key is unlocked")
}

impl HashAlgo {
    /// Every algorithm, for whatever lists blocks by algorithm.
    pub const ALL: [HashAlgo; 3] = [HashAlgo::Blake3, HashAlgo::Sha256, HashAlgo::Blake3Keyed];

    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Blake3 => "blake3",
            HashAlgo::Sha256 => "sha-256",
            HashAlgo::Blake3Keyed => "blake3-keyed",
        }
    }

    fn tag(self) -> u8 {
        match self {
            HashAlgo::Blake3 => 1,
            HashAlgo::Sha256 => 2,
            HashAlgo::Blake3Keyed => 3,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(HashAlgo::Blake3),
            2 => Some(HashAlgo::Sha256),
            3 => Some(HashAlgo::Blake3Keyed),
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
            HashAlgo::Blake3Keyed => *blake3::keyed_hash(&identity_key(), data).as_bytes(),
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
            // without the key (a keyed block where none was installed: a planted or foreign
            // one), a key of chance: the digest matches nothing, and the block is damage
            HashAlgo::Blake3Keyed => BlockHasher::Blake3(Box::new(blake3::Hasher::new_keyed(
                &installed_key().unwrap_or_else(rand::random),
            ))),
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
            "blake3-keyed" => Ok(HashAlgo::Blake3Keyed),
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
    #[error("unknown hash algorithm {0:?} (expected blake3, sha-256 or blake3-keyed)")]
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
    /// the bytes, as `for_data`. Keyed blocks have none: their frames are sealed, and each
    /// frame's tag checks it.
    pub fn for_data_grouped(
        algo: HashAlgo,
        data: &[u8],
    ) -> (BlockKey, Option<super::groups::GroupHashes>) {
        assert!(!data.is_empty(), "empty blocks do not exist");
        let (digest, groups) = match algo {
            HashAlgo::Blake3 => super::groups::digest_and_groups(data),
            HashAlgo::Sha256 | HashAlgo::Blake3Keyed => (algo.digest(data), None),
        };
        let key = BlockKey {
            algo,
            digest,
            size: data.len() as u32,
        };
        (key, groups)
    }

    /// True when `data` is exactly the content this key names (never for a keyed block in a
    /// process without the identity key).
    pub fn matches(&self, data: &[u8]) -> bool {
        if self.algo == HashAlgo::Blake3Keyed && installed_key().is_none() {
            return false;
        }
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

    /// The length a stored object's name carries: the block's, except for a keyed block, whose
    /// name hides it (XOR a mask only the identity key gives), so that a store's listing tells
    /// no more than its objects' own lengths.
    pub fn name_len(&self) -> u32 {
        self.size ^ self.length_mask()
    }

    /// The key an object's name gives (`name_len` undone): its algorithm, hex digest and name
    /// length. `None` for a name that is not a block's, or a keyed one without the key.
    pub fn from_name(algo: HashAlgo, hex: &str, name_len: &str) -> Option<BlockKey> {
        let masked: BlockKey = format!("{}:{hex}:1", algo.name()).parse().ok()?;
        if algo == HashAlgo::Blake3Keyed && installed_key().is_none() {
            return None;
        }
        let written: u32 = name_len.parse().ok()?;
        if written.to_string() != name_len {
            return None; // `+5` or `005`: not a name this program wrote
        }
        let size = written ^ masked.length_mask();
        (1..=MAX_BLOCK_SIZE)
            .contains(&size)
            .then_some(BlockKey { size, ..masked })
    }

    fn length_mask(&self) -> u32 {
        match (self.algo, installed_key()) {
            (HashAlgo::Blake3Keyed, Some(k)) => {
                // a key of its own: a block's digest under the identity key never gives a mask
                let mask_key = blake3::derive_key("graviton 2026 object name length", &k);
                let mask = blake3::keyed_hash(&mask_key, &self.digest);
                u32::from_le_bytes(mask.as_bytes()[..4].try_into().expect("4 bytes"))
            }
            // without the key, a keyed block's object is not found: damage, not a panic
            _ => 0,
        }
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

    /// Keyed names depend on the key as well as the bytes, check as unkeyed ones do, and the
    /// process refuses a second, different key while the first is held.
    #[test]
    fn keyed_names_need_the_key() {
        // before any key: a keyed block (planted, or named in foreign metadata) matches nothing,
        // and checking it does not panic
        let foreign = BlockKey {
            algo: HashAlgo::Blake3Keyed,
            digest: [1; 32],
            size: 3,
        };
        assert!(!foreign.matches(b"abc"));
        let mut h = BlockHasher::new(HashAlgo::Blake3Keyed);
        h.update(b"abc");
        assert!(!foreign.matches_hashed(3, h.finalize()));
        assert_eq!(
            BlockKey::from_name(HashAlgo::Blake3Keyed, &foreign.hex(), "3"),
            None,
            "a keyed object's length is unknown without the key"
        );
        let key = [9u8; 32];
        let hold = install_identity_key(&key).unwrap();
        let again = install_identity_key(&key).unwrap();
        assert_eq!(install_identity_key(&[8; 32]).err(), Some(OtherIdentityKey));
        drop(hold);
        assert_eq!(install_identity_key(&[8; 32]).err(), Some(OtherIdentityKey));
        drop(again);
        drop(install_identity_key(&[8; 32]).unwrap());
        let _hold = install_identity_key(&key).unwrap();
        let data = b"the same bytes".repeat(1000);
        let keyed = BlockKey::for_data(HashAlgo::Blake3Keyed, &data);
        let plain = BlockKey::for_data(HashAlgo::Blake3, &data);
        assert_ne!(keyed.digest, plain.digest);
        assert_eq!(keyed.digest, *blake3::keyed_hash(&key, &data).as_bytes());
        assert!(keyed.matches(&data) && !plain.matches(&data[1..]));
        assert_eq!(
            BlockKey::for_data_grouped(HashAlgo::Blake3Keyed, &data),
            (keyed, None)
        );
        let mut h = BlockHasher::new(HashAlgo::Blake3Keyed);
        h.update(&data[..7]);
        h.update(&data[7..]);
        assert!(keyed.matches_hashed(data.len(), h.finalize()));
        assert_eq!(keyed.to_string().parse::<BlockKey>().unwrap(), keyed);
        // object names hide a keyed block's length, and give it back with the key
        assert_ne!(keyed.name_len(), keyed.size);
        let name_len = keyed.name_len().to_string();
        assert_eq!(
            BlockKey::from_name(HashAlgo::Blake3Keyed, &keyed.hex(), &name_len),
            Some(keyed)
        );
        assert_eq!(
            plain.name_len(),
            plain.size,
            "plain names keep their length"
        );
        assert_eq!(
            BlockKey::from_name(HashAlgo::Blake3, &plain.hex(), &format!("0{}", plain.size)),
            None,
            "one name per key"
        );
        assert_eq!(BlockKey::from_bytes(&keyed.to_bytes()).unwrap(), keyed);
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
