//! Stored form of a block on a volume that compresses or encrypts: a header, an index and
//! one frame per verification group (`domain::groups::group_len`), so that a part of a block
//! can be opened from its own frames (`Layout::frames_for`, `FrameCodec::open`; the store
//! layer, `store::framed`, does so for sealed blocks, whose frames each check themselves).
//!
//! ```text
//! header  "GVF" | version (1) | compression | cipher | 0 0 | group length (u32) | frames (u32)
//! index   the stored length of each frame (u32 each)
//! frames  each: a flag (0 raw, 1 compressed), then the bytes: as they are, or sealed
//!         (nonce 24 | ciphertext | tag 16)
//! ```
//!
//! Integers are little-endian. A frame is compressed only when that makes it smaller. Sealing
//! is AES-256-GCM under a key of the frame's own: a random 24-byte nonce per frame, whose first
//! 12 bytes pick the frame's key (BLAKE3 keyed with the sealing key) and whose last 12 are
//! GCM's nonce, so two frames share key and nonce only if all 24 random bytes repeat (as with
//! XChaCha20-Poly1305, which the same layout would hold; AES-GCM is three times as fast here
//! with AES-NI, docs/benchmarks.md). The associated data is the header, the
//! block's identity (its key's digest), the frame's number and its flag, so a frame moved to
//! another block or another place, or a header or flag changed, fails to open. Frames are
//! sealed and opened in place: a raw frame's bytes are copied once each way. The tag is checked before
//! anything is decompressed, and a frame must open to exactly its length. The block's length
//! is not in the header: its key gives it, and the header's group and count must agree with
//! it, so no allocation is sized from what a store returned.

use std::ops::Range;

use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::groups::group_len;

const MAGIC: &[u8; 3] = b"GVF";
const VERSION: u8 = 1;
/// Bytes before the index.
pub const HEADER_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const RAW: u8 = 0;
const COMPRESSED: u8 = 1;

/// How frames are compressed; recorded in each object's header, so a volume can change it
/// and still read what it stored before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    /// zstd at this level (1–22; 3 is zstd's default).
    Zstd(i32),
    Lz4,
}

impl Compression {
    fn tag(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd(_) => 1,
            Compression::Lz4 => 2,
        }
    }

    /// `zstd[:LEVEL]`, `lz4` or `none`.
    pub fn parse(s: &str) -> Result<Compression, FrameError> {
        let bad = || {
            FrameError::Setting(format!(
                "unknown compression {s:?} (zstd[:LEVEL], lz4 or none)"
            ))
        };
        match s.split_once(':') {
            None if s == "none" => Ok(Compression::None),
            None if s == "lz4" => Ok(Compression::Lz4),
            None if s == "zstd" => Ok(Compression::Zstd(3)),
            Some(("zstd", level)) => match level.parse() {
                Ok(level @ 1..=22) => Ok(Compression::Zstd(level)),
                _ => Err(FrameError::Setting(format!(
                    "zstd level {level:?} is outside 1..=22"
                ))),
            },
            _ => Err(bad()),
        }
    }

    /// The setting as `parse` reads it.
    pub fn name(self) -> String {
        match self {
            Compression::None => "none".into(),
            Compression::Zstd(level) => format!("zstd:{level}"),
            Compression::Lz4 => "lz4".into(),
        }
    }

    /// `data` compressed, or None when that does not make it smaller.
    fn compress(self, data: &[u8]) -> Option<Vec<u8>> {
        let packed = match self {
            Compression::None => return None,
            Compression::Zstd(_) if looks_incompressible(data) => return None,
            Compression::Zstd(level) => ZSTD.with_borrow_mut(|z| z.compress(level, data))?,
            Compression::Lz4 => lz4_flex::block::compress(data),
        };
        (packed.len() < data.len()).then_some(packed)
    }
}

/// Whether zstd would shrink `data` by too little to pay for its time (ZFS's early abort
/// asks the same): in a sample of it (eight slices of 1 KiB spread over it), neither an
/// entropy coder (7 bits or more a byte) nor LZ4 would save an eighth. zstd takes about as
/// long to find that out as to compress: fio's sequential write (7.9 bits a byte, zstd saved
/// 3.5% of each frame) ran 3 times slower with it, and with the test on whole frames instead
/// of samples 1.8 times slower.
fn looks_incompressible(data: &[u8]) -> bool {
    const SLICES: usize = 8;
    const SLICE: usize = 1024;
    if data.len() < 4096 {
        return false;
    }
    let sample: std::borrow::Cow<[u8]> = if data.len() < 2 * SLICES * SLICE {
        data.into()
    } else {
        let step = data.len() / SLICES;
        (0..SLICES)
            .flat_map(|i| &data[i * step..i * step + SLICE])
            .copied()
            .collect::<Vec<u8>>()
            .into()
    };
    let mut counts = [0u32; 256];
    for &b in sample.iter() {
        counts[b as usize] += 1;
    }
    let n = sample.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    bits >= 7.0 && lz4_flex::block::compress(&sample).len() > sample.len() - sample.len() / 8
}

/// Decompresses with the algorithm `tag` names, into at most `room` bytes.
fn decompress(tag: u8, packed: &[u8], room: usize) -> Result<Vec<u8>, FrameError> {
    match tag {
        1 => ZSTD
            .with_borrow_mut(|z| z.decompress(packed, room))
            .ok_or(FrameError::Damaged),
        2 => {
            let mut out = vec![0u8; room];
            let len = lz4_flex::block::decompress_into(packed, &mut out)
                .map_err(|_| FrameError::Damaged)?;
            out.truncate(len);
            Ok(out)
        }
        _ => Err(FrameError::Damaged),
    }
}

thread_local! {
    /// Each thread's zstd contexts, made once: a context per frame cost more than the
    /// compression of an incompressible frame.
    static ZSTD: std::cell::RefCell<ZstdContexts> = std::cell::RefCell::new(ZstdContexts::default());
}

#[derive(Default)]
struct ZstdContexts {
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

impl ZstdContexts {
    fn compress(&mut self, level: i32, data: &[u8]) -> Option<Vec<u8>> {
        if self.compressor.as_ref().is_none_or(|(l, _)| *l != level) {
            self.compressor = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = self.compressor.as_mut().expect("just made");
        c.compress(data).ok()
    }

    fn decompress(&mut self, packed: &[u8], room: usize) -> Option<Vec<u8>> {
        if self.decompressor.is_none() {
            self.decompressor = Some(zstd::bulk::Decompressor::new().ok()?);
        }
        let d = self.decompressor.as_mut().expect("just made");
        d.decompress(packed, room).ok()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The object is not frames this version reads, or a frame does not decode to its group.
    #[error("stored block is damaged or not in Graviton's frame format")]
    Damaged,
    /// A frame's tag does not match: changed bytes, a frame from elsewhere, or another key.
    #[error("a frame of the stored block fails its authentication tag")]
    Forged,
    /// The object is sealed and this codec has no key, or the other way round.
    #[error("stored block is {0}")]
    CipherMismatch(&'static str),
    #[error("{0}")]
    Setting(String),
}

/// Turns a block's bytes into frames and back, with a volume's compression and, on an
/// encrypted volume, its sealing key.
pub struct FrameCodec {
    compression: Compression,
    cipher: Option<Sealer>,
    /// A sealing codec keeps its volume's identity key installed while it is in use.
    _identity: Option<std::sync::Arc<super::key::IdentityKeyHold>>,
}

/// Where a stored block's frames are: read from its header and index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    header: [u8; HEADER_LEN],
    group: u64,
    /// The block's length.
    size: u64,
    /// Offset of each frame in the object, and one past the last.
    starts: Vec<u64>,
}

impl Layout {
    /// Bytes to fetch for the header and index of an object whose block has at most
    /// `max_frames` frames.
    pub fn prefix_len(max_frames: u64) -> u64 {
        HEADER_LEN as u64 + 4 * max_frames
    }

    /// The header and index from the start of the stored object of a block of `size` bytes
    /// (`prefix` may run past them). A header whose group or frame count is not the one a
    /// block of that size has is damage: nothing is sized from what the store says.
    pub fn parse(prefix: &[u8], size: u64) -> Result<Layout, FrameError> {
        let header: [u8; HEADER_LEN] = prefix
            .get(..HEADER_LEN)
            .ok_or(FrameError::Damaged)?
            .try_into()
            .expect("length checked");
        if &header[..3] != MAGIC || header[3] != VERSION || header[6..8] != [0, 0] {
            return Err(FrameError::Damaged);
        }
        let group = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as u64;
        let count = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
        if group != group_len(size) || count as u64 != frame_count(size) {
            return Err(FrameError::Damaged);
        }
        let index = prefix
            .get(HEADER_LEN..HEADER_LEN + 4 * count)
            .ok_or(FrameError::Damaged)?;
        let mut at = (HEADER_LEN + 4 * count) as u64;
        let mut starts = Vec::with_capacity(count + 1);
        for len in index.chunks_exact(4) {
            starts.push(at);
            at += u32::from_le_bytes(len.try_into().expect("4 bytes")) as u64;
        }
        starts.push(at);
        Ok(Layout {
            header,
            group,
            size,
            starts,
        })
    }

    /// The plaintext length of frame `i`: a group, less for the block's last.
    fn frame_len(&self, i: usize) -> usize {
        let count = self.starts.len() - 1;
        if i + 1 < count {
            self.group as usize
        } else {
            (self.size - (count as u64 - 1) * self.group) as usize
        }
    }

    /// The frames that hold the block's bytes `range`: their numbers, and where they are in
    /// the object.
    pub fn frames_for(&self, range: Range<u64>) -> (Range<usize>, Range<u64>) {
        let count = self.starts.len() - 1;
        let first = ((range.start / self.group) as usize).min(count);
        let end = (range.end.div_ceil(self.group) as usize).clamp(first, count);
        (first..end, self.starts[first]..self.starts[end])
    }

    /// The plaintext length of every frame but the last.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// The stored object's length.
    pub fn stored_len(&self) -> u64 {
        *self.starts.last().expect("one start at least")
    }
}

impl FrameCodec {
    /// A codec that compresses and, with `sealing_key`, encrypts.
    pub fn new(compression: Compression, sealing_key: Option<&[u8; 32]>) -> FrameCodec {
        FrameCodec {
            compression,
            cipher: sealing_key.map(|k| Sealer(Zeroizing::new(*k))),
            _identity: None,
        }
    }

    /// Whether frames are sealed: each one then authenticates itself (its tag binds the block
    /// and its place), so a part of a block can be read and trusted without the rest.
    pub fn sealed(&self) -> bool {
        self.cipher.is_some()
    }

    /// This codec, keeping `hold`'s identity key installed for as long as it lives.
    pub fn holding(mut self, hold: std::sync::Arc<super::key::IdentityKeyHold>) -> FrameCodec {
        self._identity = Some(hold);
        self
    }

    /// What the frames are, for a volume's description: `zstd:3`, `lz4, sealed`.
    pub fn describe(&self) -> String {
        match self.cipher {
            None => self.compression.name(),
            Some(_) => format!("{}, sealed", self.compression.name()),
        }
    }

    /// The stored object for a block's bytes; `id` is the block's identity (its key's digest).
    pub fn encode(&self, id: &[u8; 32], data: &[u8]) -> Vec<u8> {
        let group = group_len(data.len() as u64) as usize;
        let count = frame_count(data.len() as u64) as usize;
        let mut header = [0u8; HEADER_LEN];
        header[..3].copy_from_slice(MAGIC);
        header[3] = VERSION;
        header[4] = self.compression.tag();
        header[5] = u8::from(self.cipher.is_some());
        header[8..12].copy_from_slice(&(group as u32).to_le_bytes());
        header[12..16].copy_from_slice(&(count as u32).to_le_bytes());
        // the index is filled in as the frames are appended after it
        let mut out = Vec::with_capacity(HEADER_LEN + 4 * count + data.len() + count * 48);
        out.extend_from_slice(&header);
        out.resize(HEADER_LEN + 4 * count, 0);
        for i in 0..count {
            let part = &data[(i * group).min(data.len())..((i + 1) * group).min(data.len())];
            let start = out.len();
            self.append_frame(&header, id, i, part, &mut out);
            let len = (out.len() - start) as u32;
            out[HEADER_LEN + 4 * i..HEADER_LEN + 4 * (i + 1)].copy_from_slice(&len.to_le_bytes());
        }
        out
    }

    /// Appends frame `index`, the block's bytes `part`, to `out`.
    fn append_frame(
        &self,
        header: &[u8; HEADER_LEN],
        id: &[u8; 32],
        index: usize,
        part: &[u8],
        out: &mut Vec<u8>,
    ) {
        let packed = self.compression.compress(part);
        let (flag, body) = match &packed {
            Some(packed) => (COMPRESSED, packed.as_slice()),
            None => (RAW, part),
        };
        out.push(flag);
        let Some(cipher) = &self.cipher else {
            out.extend_from_slice(body);
            return;
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(body);
        let aad = associated(header, id, index, flag);
        let tag = cipher.seal(&nonce, &aad, &mut out[start..]);
        out.extend_from_slice(&tag);
    }

    /// A whole block's bytes from its stored object; `size` is the block's length.
    pub fn decode(&self, id: &[u8; 32], size: u64, stored: &[u8]) -> Result<Vec<u8>, FrameError> {
        let layout = Layout::parse(stored, size)?;
        if layout.stored_len() != stored.len() as u64 {
            return Err(FrameError::Damaged);
        }
        let count = layout.starts.len() - 1;
        let body = &stored[layout.starts[0] as usize..];
        self.open(id, &layout, 0..count, body)
    }

    /// The bytes of the frames `frames` (numbers from [`Layout::frames_for`]), from `bytes`,
    /// the object's bytes where `frames_for` placed them. Each frame must open to exactly its
    /// length: a group, or what is left of the block for its last.
    pub fn open(
        &self,
        id: &[u8; 32],
        layout: &Layout,
        frames: Range<usize>,
        bytes: &[u8],
    ) -> Result<Vec<u8>, FrameError> {
        let sealed = layout.header[5] == 1;
        match (sealed, &self.cipher) {
            (true, None) => {
                return Err(FrameError::CipherMismatch("encrypted and no key was given"));
            }
            (false, Some(_)) => {
                return Err(FrameError::CipherMismatch(
                    "not encrypted on an encrypted volume",
                ));
            }
            _ => {}
        }
        let count = layout.starts.len() - 1;
        if frames.start > frames.end || frames.end > count {
            return Err(FrameError::Damaged);
        }
        let base = layout.starts[frames.start];
        if bytes.len() as u64 != layout.starts[frames.end] - base {
            return Err(FrameError::Damaged);
        }
        let mut out = Vec::with_capacity(frames.len() * layout.group as usize);
        for i in frames {
            let at = (layout.starts[i] - base) as usize..(layout.starts[i + 1] - base) as usize;
            let (&flag, rest) = bytes[at].split_first().ok_or(FrameError::Damaged)?;
            let len = layout.frame_len(i);
            let before = out.len();
            let compression = layout.header[4];
            match (&self.cipher, flag) {
                (_, f) if f != RAW && f != COMPRESSED => return Err(FrameError::Damaged),
                (None, RAW) => out.extend_from_slice(rest),
                (None, _) => out.extend_from_slice(&decompress(compression, rest, len)?),
                (Some(cipher), _) => {
                    if rest.len() < NONCE_LEN + TAG_LEN {
                        return Err(FrameError::Damaged);
                    }
                    let (nonce, sealed) = rest.split_at(NONCE_LEN);
                    let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
                    let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("split at its length");
                    let tag: &[u8; TAG_LEN] = tag.try_into().expect("split at its length");
                    let aad = associated(&layout.header, id, i, flag);
                    if flag == RAW {
                        // opened where it lands; on a wrong tag the bytes are wiped and `out`
                        // goes with the error, so nothing unchecked leaves here
                        out.extend_from_slice(ciphertext);
                        cipher.open(nonce, &aad, &mut out[before..], tag)?;
                    } else {
                        let mut packed = Zeroizing::new(ciphertext.to_vec());
                        cipher.open(nonce, &aad, &mut packed, tag)?;
                        out.extend_from_slice(&decompress(compression, &packed, len)?);
                    }
                }
            }
            if out.len() - before != len {
                return Err(FrameError::Damaged);
            }
        }
        Ok(out)
    }
}

/// Seals and opens frames: AES-256-GCM under a key each frame's nonce picks (module notes).
struct Sealer(Zeroizing<[u8; 32]>);

impl Sealer {
    /// The key of the frame whose nonce is `nonce`, and GCM's nonce for it.
    fn frame_key(&self, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        let (pick, gcm) = nonce.split_at(12);
        let key = Zeroizing::new(*blake3::keyed_hash(&self.0, pick).as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, &*key).expect("a 32-byte key");
        let gcm = Nonce::try_assume_unique_for_key(gcm).expect("12 bytes");
        (LessSafeKey::new(key), gcm)
    }

    /// Encrypts `buf` in place; returns the tag.
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let (key, gcm) = self.frame_key(nonce);
        let tag = key
            .seal_in_place_separate_tag(gcm, Aad::from(aad), buf)
            .expect("AES-256-GCM seals any frame shorter than 64 GiB");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    /// Decrypts `buf` in place and checks `tag`: `Forged` when it is wrong (`buf` is then
    /// wiped, and must not be used).
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), FrameError> {
        let (key, gcm) = self.frame_key(nonce);
        key.open_in_place_separate_tag(gcm, Aad::from(aad), (*tag).into(), buf, 0..)
            .map(drop)
            .map_err(|_| FrameError::Forged)
    }
}

/// How many frames a block of `size` bytes has: one a group, and one at least.
pub fn frame_count(size: u64) -> u64 {
    size.div_ceil(group_len(size)).max(1)
}

/// What a frame's tag also covers: the header, the block's identity, the frame's number and
/// its flag.
fn associated(
    header: &[u8; HEADER_LEN],
    id: &[u8; 32],
    index: usize,
    flag: u8,
) -> [u8; HEADER_LEN + 37] {
    let mut aad = [0u8; HEADER_LEN + 37];
    aad[..HEADER_LEN].copy_from_slice(header);
    aad[HEADER_LEN..HEADER_LEN + 32].copy_from_slice(id);
    aad[HEADER_LEN + 32..HEADER_LEN + 36].copy_from_slice(&(index as u32).to_le_bytes());
    aad[HEADER_LEN + 36] = flag;
    aad
}

#[cfg(test)]
mod tests;
