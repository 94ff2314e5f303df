//! Volumes formatted with `--compress`: blocks are stored as compressed frames, read back as
//! written, and a damaged frame reads as EIO.

mod common;

use std::path::Path;

use common::mounted::Mounted;

/// The block files of an embedded volume, with their sizes (not the temporary ones).
fn block_files(vol: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let tmp = vol.join("blocks/tmp");
    let mut out: Vec<_> = files(&vol.join("blocks"))
        .into_iter()
        .filter(|(p, _)| !p.starts_with(&tmp))
        .collect();
    out.sort();
    out
}

/// A volume formatted with `--compress compress`, holding `log.txt` of `len` bytes of text,
/// unmounted.
fn written(compress: &str, len: usize) -> (Mounted, Vec<u8>) {
    let m = Mounted::new(&["--compress", compress], "");
    let data = text(len);
    std::fs::write(m.mnt.join("log.txt"), &data).unwrap();
    m.unmount();
    (m, data)
}

/// Every regular file under `dir`, with its size.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.extend(files(&entry.path()));
        } else if meta.is_file() {
            out.push((entry.path(), meta.len()));
        }
    }
    out
}

/// Lines of text no two alike, as source code and logs are: zstd shrinks them severalfold.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "line {i}: block {} of volume {} moved to frame {}\n",
                i * 7,
                i % 13,
                i % 5
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn a_compressed_volume_stores_text_in_fewer_bytes_and_reads_it_back() {
    for algo in ["zstd", "lz4"] {
        let (m, data) = written(algo, 8 << 20);
        m.mount();
        let small = text(5000);
        std::fs::write(m.mnt.join("small.txt"), &small).unwrap();
        m.unmount();
        // the 1 MiB blocks are files; what is under 1 MiB is in RocksDB
        let stored: u64 = block_files(&m.vol).iter().map(|(_, len)| len).sum();
        assert!(
            stored > 0 && stored < data.len() as u64 / 3,
            "{algo}: 8 MiB of text stored in {stored} bytes"
        );
        m.mount();
        assert_eq!(
            std::fs::read(m.mnt.join("log.txt")).unwrap(),
            data,
            "{algo}"
        );
        assert_eq!(
            std::fs::read(m.mnt.join("small.txt")).unwrap(),
            small,
            "{algo}"
        );
        let status = common::mounted::ok(m.graviton(&["status", m.source()]), "status");
        assert!(status.contains("frames ("), "{status}");
        // status reports the bytes after dedup and, fewer, the bytes stored
        let status = m.status_json();
        let (content, stored) = (&status["stored_bytes"], &status["stored_form_bytes"]);
        assert!(
            stored.as_u64().unwrap() * 3 < content.as_u64().unwrap(),
            "{algo}: {status}"
        );
    }
}

#[test]
fn a_damaged_frame_reads_as_eio_and_the_rest_of_the_file_still_reads() {
    let (m, data) = written("zstd", 3 << 20);
    let blocks = block_files(&m.vol);
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let (victim, len) = &blocks[0];
    let mut stored = std::fs::read(victim).unwrap();
    stored[*len as usize / 2] ^= 0x40;
    std::fs::write(victim, stored).unwrap();
    m.mount();
    let err = std::fs::read(m.mnt.join("log.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // the block that is not damaged reads: every block is checked on its own
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(m.mnt.join("log.txt")).unwrap();
    let mut good = 0;
    for i in 0..3u64 {
        let mut buf = vec![0u8; 1 << 20];
        if f.read_exact_at(&mut buf, i << 20).is_ok() {
            assert_eq!(buf, data[(i << 20) as usize..((i + 1) << 20) as usize]);
            good += 1;
        }
    }
    assert_eq!(good, 2, "one damaged block of three");
}

#[test]
fn an_unknown_compression_is_a_clear_error_and_formats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol");
    let out = common::mounted::run(
        common::mounted::BIN,
        &["format", "--compress", "brotli", vol.to_str().unwrap()],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown compression"), "{err}");
    assert!(!vol.join("meta").exists(), "nothing formatted");
}

/// A dump names the blocks of its volume's store: a target loading it over the same store
/// must read them as frames, or it would read every block as damaged (and a plain store could
/// rewrite the framed copies it finds there as damaged ones). Any compression reads them:
/// each stored block names its own.
#[test]
fn a_dump_of_a_compressed_volume_loads_only_into_one_that_compresses() {
    let (m, data) = written("zstd", 3 << 20);
    let work = m.dir.path();
    let dump = work.join("d.jsonl");
    common::mounted::ok(
        m.graviton(&["dump", "-o", dump.to_str().unwrap(), &m.source]),
        "dump",
    );
    // format 2: builds that predate frames refuse the dump instead of loading it as plain
    let header = std::fs::read_to_string(&dump).unwrap();
    let header = header.lines().next().unwrap();
    assert!(
        header.contains("\"format\":2") && header.contains("zstd:3"),
        "{header}"
    );
    let blocks = format!("file://{}", m.vol.join("blocks").display());
    let plain = work.join("plain");
    common::mounted::ok(
        m.graviton(&["format", "--store", &blocks, plain.to_str().unwrap()]),
        "format",
    );
    let out = m.graviton(&["load", dump.to_str().unwrap(), plain.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--compress zstd:3"),
        "{err}"
    );
    let alike = work.join("alike");
    common::mounted::ok(
        m.graviton(&[
            "format",
            "--compress",
            "lz4",
            "--store",
            &blocks,
            alike.to_str().unwrap(),
        ]),
        "format",
    );
    common::mounted::ok(
        m.graviton(&["load", dump.to_str().unwrap(), alike.to_str().unwrap()]),
        "load",
    );
    let copy = Mounted::existing(alike.to_str().unwrap(), "");
    assert_eq!(std::fs::read(copy.mnt.join("log.txt")).unwrap(), data);
    drop(copy);
    m.mount();
    assert_eq!(std::fs::read(m.mnt.join("log.txt")).unwrap(), data);
}
