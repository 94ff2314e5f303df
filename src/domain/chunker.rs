//! Chunkers cut a byte stream into blocks: `fixed-<n>` or `fastcdc-<min>-<avg>-<max>`.
//! The chunker is chosen at format time and recorded in the volume settings.

use std::fmt;
use std::str::FromStr;

use fastcdc::v2020 as cdc;

use super::key::MAX_BLOCK_SIZE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunker {
    /// Cuts at every multiple of `n` bytes of *file offset*, so the same content at the same
    /// place in two files gives the same blocks however it was written.
    Fixed(u32),
    /// Content-defined cuts (FastCDC 2020): shift-resistant dedup.
    FastCdc { min: u32, avg: u32, max: u32 },
}

/// Graviton's default: fixed 1 MiB blocks, cut at file offsets. Whole-file copies dedup exactly
/// and cutting costs nothing; FastCDC (`fastcdc-256k-1m-4m`) also dedups shifted content, but
/// its rolling hash is a large share of the write path's CPU.
pub const DEFAULT_CHUNKER: Chunker = Chunker::Fixed(1 << 20);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkerError {
    #[error(
        "unknown chunker {0:?} (expected fixed-<n> or fastcdc-<min>-<avg>-<max>, sizes like 4096, 256k, 1m)"
    )]
    Syntax(String),
    #[error("chunker {spec:?}: {why}")]
    Limits { spec: String, why: String },
}

/// `65536`, `64k`, `1m` as bytes.
pub fn parse_size(s: &str) -> Option<u32> {
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1u64 << 20),
        _ => (s, 1),
    };
    let v = num.parse::<u64>().ok()?.checked_mul(mult)?;
    u32::try_from(v).ok()
}

impl FromStr for Chunker {
    type Err = ChunkerError;
    fn from_str(spec: &str) -> Result<Self, ChunkerError> {
        let syntax = || ChunkerError::Syntax(spec.to_string());
        let limits = |why: String| ChunkerError::Limits {
            spec: spec.to_string(),
            why,
        };
        let parts: Vec<&str> = spec.split('-').collect();
        match parts.as_slice() {
            ["fixed", n] => {
                let n = parse_size(n).ok_or_else(syntax)?;
                if !(4096..=MAX_BLOCK_SIZE).contains(&n) {
                    return Err(limits(format!(
                        "block size must be 4096..={MAX_BLOCK_SIZE}"
                    )));
                }
                Ok(Chunker::Fixed(n))
            }
            ["fastcdc", min, avg, max] => {
                let (min, avg, max) = (
                    parse_size(min).ok_or_else(syntax)?,
                    parse_size(avg).ok_or_else(syntax)?,
                    parse_size(max).ok_or_else(syntax)?,
                );
                if !(min < avg && avg < max) {
                    return Err(limits("needs min < avg < max".into()));
                }
                if !(cdc::MINIMUM_MIN..=cdc::MINIMUM_MAX).contains(&min)
                    || !(cdc::AVERAGE_MIN..=cdc::AVERAGE_MAX).contains(&avg)
                    || !(cdc::MAXIMUM_MIN..=cdc::MAXIMUM_MAX).contains(&max)
                {
                    return Err(limits(format!(
                        "FastCDC limits: min {}..={}, avg {}..={}, max {}..={}",
                        cdc::MINIMUM_MIN,
                        cdc::MINIMUM_MAX,
                        cdc::AVERAGE_MIN,
                        cdc::AVERAGE_MAX,
                        cdc::MAXIMUM_MIN,
                        cdc::MAXIMUM_MAX
                    )));
                }
                Ok(Chunker::FastCdc { min, avg, max })
            }
            _ => Err(syntax()),
        }
    }
}

impl fmt::Display for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chunker::Fixed(n) => write!(f, "fixed-{n}"),
            Chunker::FastCdc { min, avg, max } => write!(f, "fastcdc-{min}-{avg}-{max}"),
        }
    }
}

impl Chunker {
    /// Largest block this chunker produces.
    pub fn max_block(&self) -> u32 {
        match *self {
            Chunker::Fixed(n) => n,
            Chunker::FastCdc { max, .. } => max,
        }
    }

    /// Typical block size: what a well-packed extent map aims for.
    /// The shortest block a cut makes inside a stream: a shorter one is a file's tail, a
    /// small file, or pieces packed together.
    pub fn min_block(&self) -> u32 {
        match *self {
            Chunker::Fixed(n) => n,
            Chunker::FastCdc { min, .. } => min,
        }
    }

    pub fn target_block(&self) -> u32 {
        match *self {
            Chunker::Fixed(n) => n,
            Chunker::FastCdc { avg, .. } => avg,
        }
    }

    /// Cuts `data`, which sits at file offset `base`, into chunk lengths that sum to `data.len()`.
    /// The last chunk ends at the end of `data` whether or not it is a natural cut point; callers
    /// that expect more data right after can hold it back (see [`Chunker::is_natural_end`]).
    pub fn cut(&self, base: u64, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        match *self {
            Chunker::Fixed(n) => {
                let n = n as u64;
                let mut pos = 0usize;
                while pos < data.len() {
                    let abs = base + pos as u64;
                    let len = ((n - abs % n) as usize).min(data.len() - pos);
                    out.push(len);
                    pos += len;
                }
            }
            Chunker::FastCdc { min, avg, max } => {
                out.extend(cdc::FastCDC::new(data, min, avg, max).map(|c| c.length));
            }
        }
        out
    }

    /// For a run of bytes ending at file offset `end` that more bytes may extend: where its
    /// final cuts end, when that is known without reading the bytes (the last block boundary
    /// for fixed blocks; FastCDC's cut points depend on the content).
    pub fn settled_end(&self, end: u64) -> Option<u64> {
        match *self {
            Chunker::Fixed(n) => Some(end - end % n as u64),
            Chunker::FastCdc { .. } => None,
        }
    }

    /// Whether a chunk that ends at file offset `end` (the last of a cut) ends on a cut point
    /// that more data would not move.
    pub fn is_natural_end(&self, end: u64, chunk_len: usize) -> bool {
        match *self {
            Chunker::Fixed(n) => end.is_multiple_of(n as u64),
            Chunker::FastCdc { max, .. } => chunk_len == max as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn specs_parse_and_print() {
        assert_eq!(
            "fixed-1m".parse::<Chunker>().unwrap(),
            Chunker::Fixed(1 << 20)
        );
        assert_eq!(
            "fixed-4096".parse::<Chunker>().unwrap().to_string(),
            "fixed-4096"
        );
        assert_eq!(
            "fastcdc-256k-1m-4m".parse::<Chunker>().unwrap(),
            Chunker::FastCdc {
                min: 262144,
                avg: 1048576,
                max: 4194304
            }
        );
        assert_eq!(
            DEFAULT_CHUNKER.to_string().parse::<Chunker>().unwrap(),
            DEFAULT_CHUNKER
        );
        for bad in [
            "",
            "fixed",
            "fixed-0",
            "fixed-32m",
            "fastcdc-1m-1m-4m",
            "fastcdc-1-2-3",
            "cdc-1-2-3",
            "fixed-1x",
        ] {
            assert!(bad.parse::<Chunker>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn fixed_cuts_at_absolute_offsets() {
        let c = Chunker::Fixed(4096);
        assert_eq!(c.cut(4000, &[0u8; 10000]), vec![96, 4096, 4096, 1712]);
        assert!(c.is_natural_end(8192, 4096));
        assert!(!c.is_natural_end(8000, 10));
        assert_eq!(c.settled_end(8000), Some(4096));
        assert_eq!(c.settled_end(8192), Some(8192));
    }

    proptest! {
        #[test]
        fn cuts_cover_input_and_respect_max(seed in any::<u64>(), len in 1usize..200_000, base in 0u64..100_000) {
            use rand::{RngCore, SeedableRng};
            let mut data = vec![0u8; len];
            rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
            for c in [Chunker::Fixed(4096), Chunker::FastCdc { min: 2048, avg: 8192, max: 32768 }] {
                let cuts = c.cut(base, &data);
                prop_assert_eq!(cuts.iter().sum::<usize>(), len);
                prop_assert!(cuts.iter().all(|&l| l > 0 && l <= c.max_block() as usize));
                // a cut of a prefix that ends on a natural point agrees with the cut of the whole
                for i in [0, cuts.len() / 2] {
                    if i + 1 < cuts.len() {
                        let off: usize = cuts[..=i].iter().sum();
                        let prefix = c.cut(base, &data[..off]);
                        prop_assert_eq!(&prefix[..], &cuts[..=i]);
                    }
                }
            }
        }
    }
}
