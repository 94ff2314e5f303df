//! Verified byte ranges of a BLAKE3 block. BLAKE3 hashes its input as a binary tree in which
//! every aligned, power-of-two-sized stretch is a complete subtree, so the chaining values of a
//! block's aligned groups merge into the block's hash. Kept beside a block (the S3 store puts
//! them in the object's user metadata), they let a reader fetch the groups a read touches
//! instead of the whole block and still check every byte against the key: the chaining values
//! must merge into the key's digest, and each group fetched must hash to its value.

use std::ops::Range;

use base64::Engine as _;

use super::{BlockKey, HashAlgo};
use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// Blocks from this size on are worth reading in part; a smaller block's whole GET takes
/// about as long as a range of it.
pub const RANGED_FROM: u64 = 1 << 20;

/// Smallest group: a read of a few KiB fetches this much.
const MIN_GROUP: u64 = 64 << 10;
/// Most groups per block: 32 chaining values take 1,368 bytes in base64, inside the 2 KiB S3
/// allows for an object's user metadata.
const MAX_GROUPS: u64 = 32;

/// The group length of a block of `size` bytes: a power of two, at least 64 KiB, and large
/// enough for at most 32 groups (256 KiB for an 8 MiB block).
pub fn group_len(size: u64) -> u64 {
    (size.next_power_of_two() / MAX_GROUPS).max(MIN_GROUP)
}

/// The groups of a `size`-byte block that hold `range`: the stretch to fetch for it.
pub fn covering(size: u64, range: Range<u64>) -> Range<u64> {
    let g = group_len(size);
    let start = range.start.min(size) / g * g;
    let end = range.end.min(size).div_ceil(g) * g;
    start..end.min(size)
}

/// The chaining values of a block's groups, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupHashes {
    size: u64,
    cvs: Vec<ChainingValue>,
}

impl GroupHashes {
    /// The group hashes of a BLAKE3 block's bytes; `None` for a block of one group (it is
    /// fetched whole anyway).
    pub fn of(data: &[u8]) -> Option<GroupHashes> {
        let size = data.len() as u64;
        let g = group_len(size);
        if size <= g {
            return None;
        }
        let cvs = data
            .chunks(g as usize)
            .enumerate()
            .map(|(i, group)| group_cv(i as u64 * g, group))
            .collect();
        Some(GroupHashes { size, cvs })
    }

    /// The digest the groups merge into: the block's BLAKE3 hash when they are its groups.
    pub fn root(&self) -> [u8; 32] {
        let g = group_len(self.size);
        let (left, right) = split(&self.cvs, g, self.size);
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    }

    /// Whether `bytes`, found at `at` (a group boundary) in the block, are the block's bytes
    /// there: whole groups (the last one may end at the block's end), each hashing to its value.
    pub fn verify(&self, at: u64, bytes: &[u8]) -> bool {
        let g = group_len(self.size);
        if !at.is_multiple_of(g) || at + bytes.len() as u64 > self.size {
            return false;
        }
        let end = at + bytes.len() as u64;
        if end != self.size && !end.is_multiple_of(g) {
            return false;
        }
        bytes.chunks(g as usize).enumerate().all(|(i, group)| {
            let index = (at / g) as usize + i;
            self.cvs.get(index) == Some(&group_cv(index as u64 * g, group))
        })
    }

    /// The group hashes `text` holds for the block `key` names, only if they merge into the
    /// key's digest: then every range they verify is the key's bytes.
    pub fn for_key(key: &BlockKey, text: &str) -> Option<GroupHashes> {
        if key.algo != HashAlgo::Blake3 {
            return None;
        }
        let gh = GroupHashes::decode(key.size as u64, text)?;
        (gh.root() == key.digest).then_some(gh)
    }

    /// For the object's metadata: the chaining values in base64.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.cvs.concat())
    }

    /// The group hashes of a `size`-byte block, as [`GroupHashes::encode`] wrote them; `None`
    /// when the text is not that (it is not checked against a key here: see `root`).
    pub fn decode(size: u64, text: &str) -> Option<GroupHashes> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        let groups = size.div_ceil(group_len(size));
        if groups < 2 || bytes.len() as u64 != groups * 32 {
            return None;
        }
        let cvs = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        Some(GroupHashes { size, cvs })
    }
}

/// The BLAKE3 digest of `data` and, for a block of more than one group, its group hashes: one
/// pass over the bytes for both.
pub fn digest_and_groups(data: &[u8]) -> ([u8; 32], Option<GroupHashes>) {
    match GroupHashes::of(data) {
        Some(gh) => (gh.root(), Some(gh)),
        None => (*blake3::hash(data).as_bytes(), None),
    }
}

/// The chaining value of the group of `bytes` that starts `offset` bytes into its block.
fn group_cv(offset: u64, bytes: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(offset);
    h.update(bytes);
    h.finalize_non_root()
}

/// The two children of the subtree over `cvs` (groups of `g` bytes, `len` bytes in all), each
/// merged from its groups: BLAKE3's left child holds the largest power of two of bytes that
/// leaves the right one non-empty, a whole number of groups since `g` is a power of two.
fn split(cvs: &[ChainingValue], g: u64, len: u64) -> (ChainingValue, ChainingValue) {
    let left = left_subtree_len(len);
    let n = (left / g) as usize;
    (
        subtree(&cvs[..n], g, left),
        subtree(&cvs[n..], g, len - left),
    )
}

fn subtree(cvs: &[ChainingValue], g: u64, len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let (left, right) = split(cvs, g, len);
    merge_subtrees_non_root(&left, &right, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn the_groups_merge_into_the_blocks_hash() {
        let sizes = [
            (64 << 10) + 1,
            128 << 10,
            200_000,
            (1 << 20) - 1,
            1 << 20,
            3 * (1 << 20) + 5,
            (8 << 20) - 1,
            8 << 20,
            (8 << 20) + 1,
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            let data = bytes(size, i as u64);
            let gh = GroupHashes::of(&data).expect("more than one group");
            assert!(gh.cvs.len() as u64 <= MAX_GROUPS, "{size}");
            assert_eq!(&gh.root(), blake3::hash(&data).as_bytes(), "size {size}");
            assert_eq!(digest_and_groups(&data), (gh.root(), Some(gh.clone())));
            let back = GroupHashes::decode(size as u64, &gh.encode()).expect("decodes");
            assert_eq!(back, gh);
            assert!(gh.encode().len() <= 1368);
        }
        let one = bytes(64 << 10, 9);
        assert!(GroupHashes::of(&one).is_none(), "one group");
        assert_eq!(
            digest_and_groups(&one),
            (*blake3::hash(&one).as_bytes(), None)
        );
    }

    #[test]
    fn a_range_verifies_only_with_its_own_bytes() {
        let data = bytes(8 << 20, 42);
        let gh = GroupHashes::of(&data).unwrap();
        let g = group_len(data.len() as u64);
        assert_eq!(g, 256 << 10);
        let span = covering(data.len() as u64, 300_000..304_096);
        assert_eq!(span, g..2 * g);
        let (s, e) = (span.start as usize, span.end as usize);
        assert!(gh.verify(span.start, &data[s..e]));
        let mut bad = data[s..e].to_vec();
        bad[4000] ^= 1;
        assert!(!gh.verify(span.start, &bad), "a flipped byte");
        assert!(!gh.verify(0, &data[s..e]), "bytes of another group");
        assert!(!gh.verify(span.start, &data[s..e - 1]), "a group cut short");
        // the last group ends at the block's end
        let last = covering(8 << 20, (8 << 20) - 10..8 << 20);
        assert!(gh.verify(last.start, &data[last.start as usize..]));
        // an odd-sized block's short last group
        let odd = bytes(3 * (1 << 20) + 5, 7);
        let gh = GroupHashes::of(&odd).unwrap();
        let tail = covering(odd.len() as u64, odd.len() as u64 - 3..odd.len() as u64);
        assert!(gh.verify(tail.start, &odd[tail.start as usize..]));
    }

    #[test]
    fn malformed_metadata_is_refused() {
        assert!(GroupHashes::decode(1 << 20, "not base64!").is_none());
        assert!(
            GroupHashes::decode(1 << 20, "AAAA").is_none(),
            "too few values"
        );
        let data = bytes(1 << 20, 3);
        let text = GroupHashes::of(&data).unwrap().encode();
        assert!(
            GroupHashes::decode(2 << 20, &text).is_none(),
            "another size"
        );
        let key = BlockKey::for_data(HashAlgo::Blake3, &data);
        assert!(GroupHashes::for_key(&key, &text).is_some());
        let other = BlockKey::for_data(HashAlgo::Blake3, &bytes(1 << 20, 4));
        assert!(
            GroupHashes::for_key(&other, &text).is_none(),
            "values of another block"
        );
        let sha = BlockKey::for_data(HashAlgo::Sha256, &data);
        assert!(GroupHashes::for_key(&sha, &text).is_none());
    }
}
