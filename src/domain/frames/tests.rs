use super::*;
use rand::{Rng, SeedableRng};

const KEY: [u8; 32] = [7; 32];
const ID: [u8; 32] = [1; 32];

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.r#gen()).collect()
}

/// Text-like bytes: words from a small vocabulary, which every compressor shrinks.
fn text(len: usize) -> Vec<u8> {
    let words = [
        "extent ", "block ", "inode ", "frame ", "volume ", "mount\n",
    ];
    words
        .iter()
        .cycle()
        .flat_map(|w| w.bytes())
        .take(len)
        .collect()
}

fn codecs() -> Vec<FrameCodec> {
    let mut out = Vec::new();
    for c in [Compression::None, Compression::Zstd(3), Compression::Lz4] {
        out.push(FrameCodec::new(c, None));
        out.push(FrameCodec::new(c, Some(&KEY)));
    }
    out
}

#[test]
fn every_codec_gives_back_the_bytes_it_stored() {
    let sizes = [1, 4096, 65536, 65537, 200_000, 1 << 20, (1 << 20) + 3];
    for codec in codecs() {
        for &len in &sizes {
            for data in [random(len, len as u64), text(len)] {
                let stored = codec.encode(&ID, &data);
                assert_eq!(
                    codec.decode(&ID, len as u64, &stored).unwrap(),
                    data,
                    "{len} bytes"
                );
            }
        }
    }
}

/// Larger blocks have larger groups (128 KiB past 2 MiB, 512 KiB at 16 MiB): still 32 frames.
#[test]
fn blocks_past_two_mib_round_trip_in_larger_groups() {
    for len in [(2 << 20) + 1, 3 << 20, 16 << 20] {
        let data = text(len);
        for codec in codecs() {
            let stored = codec.encode(&ID, &data);
            let layout = Layout::parse(&stored, len as u64).unwrap();
            assert!(layout.starts.len() - 1 <= 32, "{len}");
            assert_eq!(
                codec.decode(&ID, len as u64, &stored).unwrap(),
                data,
                "{len}"
            );
        }
    }
}

#[test]
fn compression_shrinks_text_and_barely_grows_random_bytes() {
    let data = text(1 << 20);
    for c in [Compression::Zstd(3), Compression::Lz4] {
        let stored = FrameCodec::new(c, Some(&KEY)).encode(&ID, &data);
        assert!(stored.len() < data.len() / 10, "{c:?}: {}", stored.len());
    }
    let data = random(1 << 20, 1);
    let stored = FrameCodec::new(Compression::Zstd(3), Some(&KEY)).encode(&ID, &data);
    // 16 frames of 64 KiB: 4 + 1 + 24 + 16 bytes each, and the header
    assert!(
        stored.len() <= data.len() + 16 * 45 + HEADER_LEN,
        "{}",
        stored.len()
    );
}

#[test]
fn sealed_frames_show_nothing_of_the_bytes() {
    let marker = random(64, 99);
    let mut data = text(300_000);
    data[1000..1064].copy_from_slice(&marker);
    for c in [Compression::None, Compression::Lz4] {
        let stored = FrameCodec::new(c, Some(&KEY)).encode(&ID, &data);
        assert!(!stored.windows(64).any(|w| w == marker.as_slice()), "{c:?}");
        assert!(!stored.windows(12).any(|w| w == b"extent block"), "{c:?}");
        let plain = FrameCodec::new(c, None).encode(&ID, &data);
        if c == Compression::None {
            assert!(plain.windows(64).any(|w| w == marker.as_slice()));
        }
    }
}

#[test]
fn any_changed_byte_of_a_sealed_block_fails_to_open() {
    let data = text(70_000);
    for c in [Compression::None, Compression::Zstd(3)] {
        let codec = FrameCodec::new(c, Some(&KEY));
        let stored = codec.encode(&ID, &data);
        for at in 0..stored.len() {
            let mut bad = stored.clone();
            bad[at] ^= 0x20;
            assert!(
                codec.decode(&ID, data.len() as u64, &bad).is_err(),
                "{c:?}: byte {at} of {}",
                stored.len()
            );
        }
        assert!(
            codec
                .decode(&ID, data.len() as u64, &stored[..stored.len() - 1])
                .is_err()
        );
        let mut longer = stored.clone();
        longer.push(0);
        assert!(codec.decode(&ID, data.len() as u64, &longer).is_err());
    }
}

#[test]
fn a_frame_opens_only_with_its_key_in_its_block_at_its_place() {
    let codec = FrameCodec::new(Compression::None, Some(&KEY));
    let data = random(3 * 65536, 5);
    let stored = codec.encode(&ID, &data);
    let other_key = FrameCodec::new(Compression::None, Some(&[8; 32]));
    assert_eq!(
        other_key.decode(&ID, data.len() as u64, &stored),
        Err(FrameError::Forged)
    );
    assert_eq!(
        codec.decode(&[2; 32], data.len() as u64, &stored),
        Err(FrameError::Forged)
    );
    // the first two frames swapped (same length: neither compressed)
    let layout = Layout::parse(&stored, data.len() as u64).unwrap();
    let (a, b, c) = (
        layout.starts[0] as usize,
        layout.starts[1] as usize,
        layout.starts[2] as usize,
    );
    let mut swapped = stored[..a].to_vec();
    swapped.extend_from_slice(&stored[b..c]);
    swapped.extend_from_slice(&stored[a..b]);
    swapped.extend_from_slice(&stored[c..]);
    assert_eq!(
        codec.decode(&ID, data.len() as u64, &swapped),
        Err(FrameError::Forged)
    );
    // a frame of another block with the same layout, put in this one's place
    let other = codec.encode(&[2; 32], &random(3 * 65536, 6));
    let mut mixed = stored[..b].to_vec();
    mixed.extend_from_slice(&other[b..c]);
    mixed.extend_from_slice(&stored[c..]);
    assert_eq!(
        codec.decode(&ID, data.len() as u64, &mixed),
        Err(FrameError::Forged)
    );
}

#[test]
fn a_sealed_block_needs_the_key_and_a_plain_one_refuses_it() {
    let data = text(5000);
    let sealed = FrameCodec::new(Compression::Lz4, Some(&KEY)).encode(&ID, &data);
    let plain = FrameCodec::new(Compression::Lz4, None).encode(&ID, &data);
    assert!(matches!(
        FrameCodec::new(Compression::Lz4, None).decode(&ID, data.len() as u64, &sealed),
        Err(FrameError::CipherMismatch(_))
    ));
    assert!(matches!(
        FrameCodec::new(Compression::Lz4, Some(&KEY)).decode(&ID, data.len() as u64, &plain),
        Err(FrameError::CipherMismatch(_))
    ));
    // the header names the compression: a volume that changed its setting still reads it
    assert_eq!(
        FrameCodec::new(Compression::None, Some(&KEY))
            .decode(&ID, data.len() as u64, &sealed)
            .unwrap(),
        data
    );
}

#[test]
fn a_range_reads_only_the_frames_that_hold_it() {
    let data = text(1_000_000);
    for codec in codecs() {
        let stored = codec.encode(&ID, &data);
        let prefix = &stored[..Layout::prefix_len(32) as usize];
        let layout = Layout::parse(prefix, data.len() as u64).unwrap();
        assert_eq!(layout.stored_len(), stored.len() as u64);
        for range in [
            0usize..1,
            65535..65537,
            300_000..310_000,
            999_000..1_000_000,
            0..1_000_000,
        ] {
            let (frames, at) = layout.frames_for(range.start as u64..range.end as u64);
            let bytes = &stored[at.start as usize..at.end as usize];
            let opened = codec.open(&ID, &layout, frames.clone(), bytes).unwrap();
            let from = frames.start * 65536;
            assert_eq!(
                &opened[range.start - from..range.end - from],
                &data[range.clone()]
            );
            assert!(frames.len() <= range.len().div_ceil(65536) + 1);
        }
    }
}

#[test]
fn damaged_objects_are_errors_not_panics() {
    let codec = FrameCodec::new(Compression::Zstd(3), None);
    for junk in [
        &b""[..],
        b"GVF",
        b"GVF\x01\x01\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00",
    ] {
        assert!(codec.decode(&ID, 65536, junk).is_err());
    }
    // a header that claims huge groups or many frames is damage, not an allocation
    let data = text(8 << 20);
    let stored = codec.encode(&ID, &data);
    for (at, value) in [(11, 0x80), (10, 0xff), (14, 0x01), (12, 0xff)] {
        let mut bad = stored.clone();
        bad[at] = value;
        assert_eq!(
            codec.decode(&ID, data.len() as u64, &bad),
            Err(FrameError::Damaged),
            "header byte {at}"
        );
    }
    // nor may a header disagree with the block's length its key gives
    assert!(codec.decode(&ID, data.len() as u64 / 2, &stored).is_err());
    assert!(codec.decode(&ID, data.len() as u64 - 1, &stored).is_err());
    // a range of frames outside the block is an error, not a panic
    let layout = Layout::parse(&stored, data.len() as u64).unwrap();
    assert!(codec.open(&ID, &layout, 40..41, &[]).is_err());
}

#[test]
fn compression_settings_parse() {
    assert_eq!(Compression::parse("zstd"), Ok(Compression::Zstd(3)));
    assert_eq!(Compression::parse("zstd:19"), Ok(Compression::Zstd(19)));
    assert_eq!(Compression::parse("lz4"), Ok(Compression::Lz4));
    assert_eq!(Compression::parse("none"), Ok(Compression::None));
    for bad in ["zstd:0", "zstd:23", "zstd:x", "gzip", ""] {
        assert!(Compression::parse(bad).is_err(), "{bad}");
    }
    for c in [Compression::None, Compression::Zstd(7), Compression::Lz4] {
        assert_eq!(Compression::parse(&c.name()), Ok(c));
    }
}

#[test]
fn random_bytes_skip_zstd_and_skewed_ones_do_not() {
    assert!(looks_incompressible(&random(65536, 3)));
    // hex digits: no repeats for LZ4, but 4 bits a byte for zstd's entropy coder
    let hex: Vec<u8> = random(32768, 4)
        .iter()
        .map(|b| b"0123456789abcdef"[(b & 15) as usize])
        .collect();
    assert!(!looks_incompressible(&hex));
    let codec = FrameCodec::new(Compression::Zstd(3), None);
    assert!(codec.encode(&ID, &hex).len() < hex.len() * 6 / 10);
    // random bytes, twice: evenly spread, but LZ4 finds the repeat
    let mut twice = random(32768, 5);
    twice.extend_from_within(..);
    assert!(!looks_incompressible(&twice));
    assert!(codec.encode(&ID, &twice).len() < twice.len() * 6 / 10);
}

/// Unsealed frames come from a store that may be damaged or hostile: decoding any changed
/// byte gives an error or some bytes (which the key check then refuses), never a crash.
#[test]
fn damaged_unsealed_frames_decode_without_crashing() {
    let data = text(70_000);
    for c in [Compression::Lz4, Compression::Zstd(3)] {
        let codec = FrameCodec::new(c, None);
        let stored = codec.encode(&ID, &data);
        for at in 0..stored.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = stored.clone();
                bad[at] ^= flip;
                if let Ok(out) = codec.decode(&ID, data.len() as u64, &bad) {
                    assert!(out.len() <= data.len() + 65536);
                }
            }
        }
    }
}
