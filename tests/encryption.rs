//! Volumes formatted with `--encrypt`: nothing readable in any store, cache or staging folder;
//! a damaged frame reads as EIO; a wrong passphrase mounts nothing; `key change` re-wraps the
//! key.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mounted::{BIN, Mounted, ok, run};

/// A key file holding `passphrase`, readable by its owner only.
fn key_file(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, passphrase).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// 64 random characters, found nowhere by chance.
fn marker() -> String {
    (0..2)
        .map(|_| format!("{:032x}", rand::random::<u128>()))
        .collect()
}

/// The regular files under `dir` (none when it is missing).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => out.extend(files(&path)),
            Ok(meta) if meta.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

/// The files under `dir` whose bytes contain `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Writes the marker into 1,000 small files and, eight times over, into a 3 MiB one (blocks
/// of every size: in the database, in S3, in files); returns the big file's bytes.
fn write_marked(mnt: &Path, marker: &str) -> Vec<u8> {
    for i in 0..1000 {
        let body = format!("file {i}\n{marker}\nthe end of file {i}\n");
        std::fs::write(mnt.join(format!("f{i}")), body).unwrap();
    }
    let mut big = Vec::with_capacity(3 << 20);
    let mut n = 0u64;
    while big.len() < 3 << 20 {
        if n.is_multiple_of(50_000) {
            big.extend_from_slice(marker.as_bytes());
        }
        big.extend_from_slice(format!("{n:08}\n").as_bytes());
        n += 1;
    }
    std::fs::write(mnt.join("big"), &big).unwrap();
    big
}

/// The S3 server's folder for the URL `s3` (`scripts/s3.sh` serves `GRAVITON_TEST_S3_ROOT`):
/// the bucket's, where s3s-fs keeps objects and their metadata.
fn s3_folder(s3: &str) -> PathBuf {
    let root = PathBuf::from(std::env::var("GRAVITON_TEST_S3_ROOT").expect("S3 root"));
    let bucket = s3
        .trim_start_matches("s3://")
        .split(['/', '?'])
        .next()
        .unwrap();
    root.join(bucket)
}

/// The S3 server's folder of the objects under the URL `s3`'s prefix.
fn s3_objects(s3: &str) -> PathBuf {
    let path = s3.trim_start_matches("s3://").split('?').next().unwrap();
    let prefix = path.split_once('/').map_or("", |(_, p)| p);
    s3_folder(s3).join(prefix)
}

/// The rows of the PostgreSQL tables that hold small blocks, as hex.
fn block_tables_hex(url: &str) -> String {
    let out = run(
        "psql",
        &[
            url,
            "-At",
            "-c",
            "SELECT encode(block_key, 'hex') || ':' || encode(data, 'hex') FROM block_pieces",
        ],
        Path::new("/"),
    );
    ok(out, "psql")
}

/// The acceptance test of `--encrypt`: a marker written into 1,000 files is found in a plain
/// volume's block folder and S3 objects, and nowhere at rest for an encrypted, compressed
/// PostgreSQL + S3 volume: not in its S3 objects or their metadata, its replica's folder, the
/// database's block tables, its disk cache or its write-back staging folder.
#[test]
fn nothing_written_to_an_encrypted_volume_is_readable_at_rest() {
    graviton_testkit::needs_servers!();
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "key", "an encrypted volume's passphrase");
    let key_arg = key.to_str().unwrap();

    // plain: the marker is in the block files and the S3 objects
    let plain_marker = marker();
    let plain_s3 = common::mounted::s3_scratch_url();
    let scratch = tempfile::tempdir().unwrap();
    let replica = scratch.path().join("replica");
    let plain = Mounted::new_pg_formatted(
        &[
            "--small-blocks",
            "0",
            "--replica",
            &format!("file://{}", replica.display()),
        ],
        "",
        Some(&plain_s3),
    );
    let plain_big = write_marked(&plain.mnt, &plain_marker);
    plain.unmount();
    // a plain object's name ends in its block's length (the big file is one 8 MiB-chunked block)
    let named_by = |dir: &Path, len: usize| {
        files(dir)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(&format!("-{len}")))
    };
    assert!(named_by(&replica, plain_big.len()));
    assert!(!holding(&replica, plain_marker.as_bytes()).is_empty());
    assert!(!holding(&s3_folder(&plain_s3), plain_marker.as_bytes()).is_empty());

    // encrypted: blocks in S3, small ones in the database, a copy of each in files; the
    // mount stages writes (-o writeback) and caches blocks on its disk
    let secret = marker();
    let s3 = common::mounted::s3_scratch_url();
    let (copy, cache) = (scratch.path().join("copy"), scratch.path().join("cache"));
    let m = Mounted::new_pg_formatted(
        &[
            "--encrypt",
            "--compress",
            "zstd",
            "--key-file",
            key_arg,
            "--replica",
            &format!("file://{}", copy.display()),
        ],
        &format!("writeback,key_file={key_arg},cache_dir={}", cache.display()),
        Some(&s3),
    );
    let big = write_marked(&m.mnt, &secret);
    ok(run("sync", &[], Path::new("/")), "sync");
    // killed with its blocks still staged: the staging folder holds them as the daemon left it
    m.kill_daemon();
    let _ = Command::new("fusermount3").arg("-uz").arg(&m.mnt).output();
    let state = m.dir.path().join("state");
    let staged: Vec<PathBuf> = files(&state)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    let everywhere = vec![state.clone(), copy.clone(), cache.clone(), s3_folder(&s3)];
    let found = |dirs: &[PathBuf]| -> Vec<PathBuf> {
        dirs.iter()
            .flat_map(|d| holding(d, secret.as_bytes()))
            .collect()
    };
    assert_eq!(found(&everywhere), Vec::<PathBuf>::new(), "after a kill");

    // mounted again there (without write-back): the journal is sent and what was staged is
    // uploaded; everything reads back
    let options = format!("key_file={key_arg},cache_dir={}", cache.display());
    let mnt = m.mnt.to_str().unwrap();
    ok(
        m.graviton(&["mount", m.source(), mnt, "-o", &options]),
        "mount again",
    );
    for i in (0..1000).step_by(97) {
        let body = std::fs::read_to_string(m.mnt.join(format!("f{i}"))).unwrap();
        assert!(body.contains(&secret), "f{i}");
    }
    assert!(std::fs::read(m.mnt.join("big")).unwrap() == big);
    m.unmount();
    assert_eq!(found(&everywhere), Vec::<PathBuf>::new(), "after a remount");
    let tables = block_tables_hex(m.source());
    assert!(!tables.is_empty(), "small blocks are in the database");
    assert!(
        !tables.contains(&hex::encode(&secret)),
        "a block table holds the marker"
    );
    assert!(
        !files(&cache).is_empty() && !files(&copy).is_empty(),
        "the cache and the replica hold blocks"
    );
    assert!(
        !files(&s3_objects(&s3)).is_empty()
            && !named_by(&copy, big.len())
            && !named_by(&s3_objects(&s3), big.len()),
        "an encrypted volume's object names hide its blocks' lengths"
    );
    assert!(
        !staged.is_empty(),
        "the kill left staged records to look at"
    );
}

/// A flipped byte in a stored frame reads as EIO, never as other bytes; a wrong passphrase
/// or none fails the mount with a clear message; `key change` makes the new passphrase the
/// one that opens the volume.
#[test]
fn damage_reads_as_eio_and_only_the_passphrase_mounts() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "key", "the first passphrase");
    let wrong = key_file(keys.path(), "wrong", "not the passphrase");
    let new = key_file(keys.path(), "new", "the second passphrase");
    let opt = |k: &Path| format!("key_file={}", k.display());
    let m = Mounted::new(
        &["--encrypt", "--key-file", key.to_str().unwrap()],
        &opt(&key),
    );
    let mount_with =
        |k: &Path| m.graviton(&["mount", &m.source, m.mnt.to_str().unwrap(), "-o", &opt(k)]);
    let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(m.mnt.join("data"), &data).unwrap();
    m.unmount();

    // nobody's passphrase: a clear error (no terminal to ask: setsid leaves it behind)
    let out = Command::new("setsid")
        .args(["-w", "timeout", "60", BIN, "mount", &m.source])
        .arg(&m.mnt)
        .env_remove("GRAVITON_PASSPHRASE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is encrypted: give its passphrase"),
        "{err}"
    );
    let mounted = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .contains(m.mnt.to_str().unwrap())
    };
    assert!(!mounted());
    // a wrong one
    let out = mount_with(&wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wrong passphrase"),
        "{err}"
    );
    assert!(!mounted());

    // a byte flipped in the middle of a stored block file
    let blocks = m.vol.join("blocks");
    let stored: Vec<PathBuf> = files(&blocks)
        .into_iter()
        .filter(|p| !p.starts_with(blocks.join("tmp")))
        .collect();
    assert!(!stored.is_empty());
    let victim = &stored[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(victim, bytes).unwrap();
    m.mount();
    let err = std::fs::read(m.mnt.join("data")).expect_err("a damaged block is not read");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    m.unmount();

    // key change: the old passphrase no longer opens the volume, the new one does
    let out = m.graviton(&[
        "key",
        "change",
        "--key-file",
        key.to_str().unwrap(),
        "--new-key-file",
        new.to_str().unwrap(),
        &m.source,
    ]);
    ok(out, "graviton key change");
    let out = mount_with(&key);
    assert!(!out.status.success(), "the old passphrase still mounts");
    let out = mount_with(&new);
    ok(out, "mount with the new passphrase");
    assert_eq!(
        std::fs::metadata(m.mnt.join("data")).unwrap().len(),
        data.len() as u64
    );
    m.unmount();

    // asked on a terminal (script(1) gives the command one): the daemon asks its launcher
    let on_a_terminal = |answer: &str| {
        let command = format!("{BIN} mount {} {}", m.source, m.mnt.display());
        let script =
            format!("(sleep 1; printf '%s\\n' '{answer}') | script -qec '{command}' /dev/null");
        let out = run("sh", &["-c", &script], m.dir.path());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = on_a_terminal("not it");
    assert!(
        said.contains("passphrase of") && said.contains("wrong passphrase"),
        "{said}"
    );
    assert!(!mounted());
    let said = on_a_terminal("the second passphrase");
    assert!(mounted(), "{said}");
    assert_eq!(
        std::fs::metadata(m.mnt.join("data")).unwrap().len(),
        data.len() as u64
    );
    m.unmount();
}

/// A dump of an encrypted volume carries its wrapped key and its database's blocks sealed: it
/// shows no file content, and loads into an empty encrypted volume, which then opens with the
/// dumped volume's passphrase and reads every file back. `status`, `fsck --verify-data` and
/// `gc` see the keyed blocks as a plain volume's.
#[test]
fn a_dump_of_an_encrypted_volume_loads_with_its_key() {
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "key", "the dumped volume's passphrase");
    let other = key_file(keys.path(), "other", "the target's own passphrase");
    let m = Mounted::new(
        &["--encrypt", "--key-file", key.to_str().unwrap()],
        &format!("key_file={}", key.display()),
    );
    let secret = marker();
    let big = write_marked(&m.mnt, &secret);
    std::fs::write(m.mnt.join("gone"), vec![7u8; 3 << 20]).unwrap();
    std::fs::remove_file(m.mnt.join("gone")).unwrap();
    m.unmount();
    let graviton = |args: &[&str]| {
        let mut all = vec!["--key-file", key.to_str().unwrap()];
        all.extend_from_slice(args);
        m.graviton(&all)
    };
    let status: serde_json::Value =
        serde_json::from_str(&ok(graviton(&["status", "--json", &m.source]), "status")).unwrap();
    assert_eq!(status["settings"]["encrypted"], true, "{status}");
    let (content, stored) = (&status["stored_bytes"], &status["stored_form_bytes"]);
    assert!(
        stored.as_u64().unwrap() > content.as_u64().unwrap(),
        "sealed frames are a little longer: {status}"
    );
    assert!(
        status["referenced_blocks"].as_u64().unwrap() >= 1001,
        "{status}"
    );
    assert!(status["unreferenced_blocks"] == 1, "{status}");
    ok(
        graviton(&["fsck", "--verify-data", &m.source]),
        "fsck --verify-data",
    );
    ok(graviton(&["scrub", &m.source]), "scrub");
    ok(graviton(&["gc", "--grace", "0s", &m.source]), "gc");
    ok(graviton(&["gc", "--grace", "0s", &m.source]), "gc");
    let status: serde_json::Value =
        serde_json::from_str(&ok(graviton(&["status", "--json", &m.source]), "status")).unwrap();
    assert_eq!(
        status["unreferenced_blocks"], 0,
        "gc deleted keyed blocks: {status}"
    );

    let work = m.dir.path();
    let dump = work.join("d.jsonl");
    ok(
        graviton(&["dump", "-o", dump.to_str().unwrap(), &m.source]),
        "dump",
    );
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("\"data_key\":\"argon2id:")
    );
    assert!(
        text.contains("\"block\""),
        "small blocks travel in the dump"
    );
    assert!(!text.contains(&secret) && !text.contains(&hex::encode(&secret)));

    let blocks = format!("file://{}", m.vol.join("blocks").display());
    let target = work.join("target");
    let t = target.to_str().unwrap();
    let fmt = [
        "--key-file",
        other.to_str().unwrap(),
        "format",
        "--encrypt",
        "--store",
        &blocks,
        t,
    ];
    ok(m.graviton(&fmt), "format the target");
    // the target's own passphrase does not open the dump's key: refused, the target unchanged
    let wrong = [
        "--key-file",
        other.to_str().unwrap(),
        "load",
        dump.to_str().unwrap(),
        t,
    ];
    let out = m.graviton(&wrong);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("wrong passphrase"),
        "{err}"
    );
    let own = ["--key-file", other.to_str().unwrap(), "status", t];
    ok(
        m.graviton(&own),
        "the target still opens with its own passphrase",
    );
    ok(graviton(&["load", dump.to_str().unwrap(), t]), "load");
    let copy = Mounted::existing(t, &format!("key_file={}", key.display()));
    assert_eq!(std::fs::read(copy.mnt.join("big")).unwrap(), big);
    let f5 = std::fs::read_to_string(copy.mnt.join("f5")).unwrap();
    assert!(f5.contains(&secret));
}

/// Whoever names a key file expects an encrypted volume: a volume that says it is plain (its
/// settings may have been changed to turn encryption off) is refused. And a passphrase in the
/// environment of `graviton mount` does not stay in its daemon's environment.
#[test]
fn a_key_file_for_a_plain_volume_is_refused_and_the_daemon_keeps_no_passphrase_in_its_environment()
{
    let keys = tempfile::tempdir().unwrap();
    let key = key_file(keys.path(), "key", "a passphrase");
    let plain = Mounted::new(&[], "");
    plain.unmount();
    let out = plain.graviton(&["--key-file", key.to_str().unwrap(), "status", &plain.source]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("says it is not encrypted"),
        "{err}"
    );
    drop(plain);

    let m = Mounted::new(
        &["--encrypt", "--key-file", key.to_str().unwrap()],
        &format!("key_file={}", key.display()),
    );
    m.unmount();
    let out = Command::new("timeout")
        .args(["60", BIN, "mount", &m.source, m.mnt.to_str().unwrap()])
        .env("GRAVITON_PASSPHRASE", "a passphrase")
        .output()
        .unwrap();
    ok(out, "mount with the passphrase in the environment");
    let pid = m.daemon_pid().expect("daemon pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !environ.windows(19).any(|w| w == b"GRAVITON_PASSPHRASE"),
        "the daemon's environment holds the passphrase"
    );
    std::fs::write(m.mnt.join("f"), b"x").unwrap();
    m.unmount();
}
