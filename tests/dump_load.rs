//! `graviton dump` and `graviton load`: a volume moved from RocksDB to PostgreSQL and back reads
//! identically (content, names, modes, owners, times, inode numbers, hard links, symlinks,
//! xattrs, holes, special files), and takes new files afterwards.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::mounted::{Mounted, ok, run};
use common::random_bytes;

/// Everything a user sees of a tree, per path (atime left out: reading changes it).
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_file() {
                blake3::hash(&std::fs::read(&p).unwrap())
                    .to_hex()
                    .to_string()
            } else {
                if m.is_dir() {
                    todo.push(p.clone());
                }
                String::new()
            };
            let xattrs = xattrs(&p);
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            out.insert(
                rel,
                format!(
                    "ino {} mode {:o} uid {} gid {} nlink {} size {} mtime {}.{} ctime {}.{} {what} {xattrs:?}",
                    m.ino(),
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.nlink(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec()
                ),
            );
        }
    }
    out
}

/// The command failed, saying `what` on stderr.
fn fails_with(out: std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(what), "{err}");
}

/// Dumps `source` into `name` in the mount's folder; the path and the text.
fn dump_to(m: &Mounted, source: &str, name: &str) -> (std::path::PathBuf, String) {
    let path = m.dir.path().join(name);
    ok(
        m.graviton(&["dump", "-o", path.to_str().unwrap(), source]),
        "dump",
    );
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The user xattrs of a path (not following symlinks), sorted.
fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    // SAFETY: the buffer is as long as we say; the path is NUL-terminated.
    let n = unsafe { libc::llistxattr(c(p).as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut value = vec![0u8; 4096];
        // SAFETY: as above.
        let v = unsafe {
            libc::lgetxattr(
                c(p).as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(v >= 0);
        value.truncate(v as usize);
        out.push((name.to_vec(), value));
    }
    out.sort();
    out
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let cname = CString::new(name).unwrap();
    // SAFETY: pointers and lengths describe live buffers.
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name} on {}", p.display());
}

/// A tree with every kind of thing a dump must carry.
fn fill(m: &Mounted) {
    std::fs::create_dir_all(m.path("src/deep/er")).unwrap();
    std::fs::write(m.path("src/big"), random_bytes(1, 3 * (1 << 20) + 123)).unwrap();
    std::fs::write(m.path("src/deep/small"), b"hello").unwrap();
    std::fs::write(m.path("empty"), b"").unwrap();
    for i in 0..40 {
        std::fs::write(
            m.path(&format!("src/deep/er/f{i}")),
            random_bytes(10 + i, 5000),
        )
        .unwrap();
    }
    // a hole between two written stretches
    let f = std::fs::File::create(m.path("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"end", 10 << 20).unwrap();
    drop(f);
    std::fs::hard_link(m.path("src/big"), m.path("big-link")).unwrap();
    std::os::unix::fs::symlink("src/deep/small", m.path("link")).unwrap();
    let odd = m
        .mnt
        .join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe"));
    std::fs::write(&odd, b"odd name").unwrap();
    set_xattr(&m.path("src/big"), "user.origin", b"camera");
    set_xattr(&odd, "user.bin", &[0, 159, 146, 150]);
    let fifo = c(&m.path("pipe"));
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::fs::set_permissions(m.path("src/deep"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(m.path("src/deep/small"), Some(1234), Some(5678)).unwrap();
}

#[test]
fn a_volume_moves_from_rocksdb_to_postgres_and_back() {
    graviton_testkit::needs_servers!();
    let rocks = Mounted::new(&[], "");
    fill(&rocks);
    let before = snapshot(&rocks.mnt);
    assert!(before.len() > 45, "{}", before.len());
    rocks.unmount();
    let blocks = format!("file://{}", rocks.vol.join("blocks").display());
    let work = rocks.dir.path();

    // RocksDB -> PostgreSQL
    let dump1 = work.join("one.jsonl");
    let out = rocks.graviton(&["dump", "-o", dump1.to_str().unwrap(), &rocks.source]);
    ok(out, "dump");
    let pg = graviton_testkit::scratch_database();
    ok(
        rocks.graviton(&["format", "--store", &blocks, &pg]),
        "format pg",
    );
    let loaded = ok(
        rocks.graviton(&["load", dump1.to_str().unwrap(), &pg]),
        "load into pg",
    );
    assert!(loaded.contains("loaded"), "{loaded}");
    // a second load finds the volume in use
    let again = rocks.graviton(&["load", dump1.to_str().unwrap(), &pg]);
    fails_with(again, "not empty");
    {
        let m = Mounted::existing(&pg, "");
        assert_eq!(snapshot(&m.mnt), before, "PostgreSQL copy differs");
        // new inodes do not collide with loaded ones
        for i in 0..30 {
            std::fs::write(m.path(&format!("new{i}")), format!("new {i}")).unwrap();
        }
        std::fs::write(m.path("src/deep/small"), b"changed").unwrap();
        let fsck = ok(m.graviton(&["fsck", "--verify-data", &pg]), "fsck pg");
        assert!(fsck.contains(": 0 problems"), "{fsck}");
        m.unmount();
    }
    let pg_tree = {
        let m = Mounted::existing(&pg, "");
        let t = snapshot(&m.mnt);
        assert_eq!(t.len(), before.len() + 30);
        m.unmount();
        t
    };

    // PostgreSQL -> RocksDB, through standard output and input
    let dump2 = work.join("two.jsonl");
    let out = rocks.graviton(&["dump", "-o", "-", &pg]);
    assert!(out.status.success());
    std::fs::write(&dump2, &out.stdout).unwrap();
    let back = work.join("back");
    ok(
        rocks.graviton(&["format", "--store", &blocks, back.to_str().unwrap()]),
        "format embedded",
    );
    let piped = run(
        "sh",
        &[
            "-c",
            &format!(
                "{} load - {} < {}",
                common::mounted::BIN,
                back.display(),
                dump2.display()
            ),
        ],
        work,
    );
    ok(piped, "load from stdin");
    let m = Mounted::existing(back.to_str().unwrap(), "");
    assert_eq!(snapshot(&m.mnt), pg_tree, "RocksDB copy differs");
    assert_eq!(std::fs::read(m.path("src/deep/small")).unwrap(), b"changed");
}

#[test]
fn a_cut_short_or_foreign_dump_changes_nothing() {
    let m = Mounted::new(&[], "");
    // a full block: in the block store, not in the dump (small ones travel in it)
    std::fs::write(m.path("a"), random_bytes(3, 1 << 20)).unwrap();
    m.unmount();
    let work = m.dir.path();
    let (dump, text) = dump_to(&m, &m.source, "d.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.last().unwrap().contains("\"end\""), "{text}");

    let target = work.join("target");
    ok(m.graviton(&["format", target.to_str().unwrap()]), "format");
    // a volume formatted and never mounted is whole: its root is made at format time
    let fresh = ok(
        m.graviton(&["fsck", target.to_str().unwrap()]),
        "fsck of a new volume",
    );
    assert!(fresh.contains(": 0 problems"), "{fresh}");
    let short = work.join("short.jsonl");
    std::fs::write(&short, lines[..lines.len() - 1].join("\n")).unwrap();
    let out = m.graviton(&["load", short.to_str().unwrap(), target.to_str().unwrap()]);
    fails_with(out, "incomplete");
    let other = work.join("other.jsonl");
    std::fs::write(&other, "{\"hello\": 1}\n").unwrap();
    let out = m.graviton(&["load", other.to_str().unwrap(), target.to_str().unwrap()]);
    fails_with(out, "dump line 1");
    // nothing was loaded: the target is still empty and takes a good dump; its blocks are in
    // the first volume's store, so a load into its own empty store names them missing
    let out = m.graviton(&["load", dump.to_str().unwrap(), target.to_str().unwrap()]);
    fails_with(out, "not in the target's block store");
}

/// Blocks a PostgreSQL volume kept in its database travel in the dump (the database does not
/// move with it); a target that keeps small blocks in its database also finds those the
/// dumped volume kept in the block store.
#[test]
fn small_blocks_kept_in_the_database_travel_in_the_dump() {
    graviton_testkit::needs_servers!();
    let s3 = common::mounted::s3_scratch_url();
    let m = Mounted::new_pg_with_store("", Some(&s3));
    let (small, large) = (random_bytes(5, 5_000), random_bytes(6, 300_000));
    std::fs::write(m.path("small"), &small).unwrap();
    std::fs::write(m.path("large"), &large).unwrap();
    m.unmount();
    let work = m.dir.path();
    let (dump, text) = dump_to(&m, &m.source, "d.jsonl");
    assert_eq!(
        text.matches("{\"block\":").count(),
        1,
        "the small block: {text}"
    );

    // into an embedded volume on the same S3 prefix
    let target = work.join("target");
    ok(
        m.graviton(&["format", "--store", &s3, target.to_str().unwrap()]),
        "format",
    );
    ok(
        m.graviton(&["load", dump.to_str().unwrap(), target.to_str().unwrap()]),
        "load",
    );
    let t = Mounted::existing(target.to_str().unwrap(), "");
    assert!(std::fs::read(t.path("small")).unwrap() == small);
    assert!(std::fs::read(t.path("large")).unwrap() == large);
    t.unmount();

    // that volume's blocks are all in S3: a PostgreSQL target keeping small blocks in its
    // database finds them there too
    let (dump2, _) = dump_to(&m, target.to_str().unwrap(), "e.jsonl");
    let pg = graviton_testkit::scratch_database();
    ok(m.graviton(&["format", "--store", &s3, &pg]), "format pg");
    ok(
        m.graviton(&["load", dump2.to_str().unwrap(), &pg]),
        "load pg",
    );
    let p = Mounted::existing(&pg, "");
    assert!(std::fs::read(p.path("small")).unwrap() == small);
    assert!(std::fs::read(p.path("large")).unwrap() == large);
    p.unmount();
}

/// A dump edited by `edit` (its records as JSON, header first).
fn edited(text: &str, edit: impl Fn(&mut Vec<serde_json::Value>)) -> String {
    let mut records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    edit(&mut records);
    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    lines.join("\n") + "\n"
}

/// The `kind` record (`entry`, `inode`, `extents`...) matching `pick`.
fn record<'a>(
    records: &'a mut [serde_json::Value],
    kind: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> &'a mut serde_json::Value {
    records
        .iter_mut()
        .filter_map(|r| r.get_mut(kind))
        .find(|r| pick(r))
        .unwrap_or_else(|| panic!("no {kind} record to edit"))
}

fn named<'a>(records: &'a mut [serde_json::Value], name: &str) -> &'a mut serde_json::Value {
    record(records, "entry", |e| e["name"] == name)
}

/// A dump that breaks the file system's rules (a name with '/', a directory that is its own
/// ancestor or has two names, an entry of the wrong kind, a wrong link count, extents that
/// overlap or reach past their block) is refused, naming the problem, before anything is
/// written: the target stays a freshly formatted volume, and takes the good dump afterwards.
#[test]
fn a_dump_breaking_the_file_system_s_rules_is_refused_and_writes_nothing() {
    let m = Mounted::new(&[], "");
    std::fs::create_dir_all(m.path("d/e")).unwrap();
    std::fs::write(m.path("d/f"), random_bytes(7, 5000)).unwrap();
    std::fs::hard_link(m.path("d/f"), m.path("g")).unwrap();
    m.unmount();
    let work = m.dir.path();
    let (dump, text) = dump_to(&m, &m.source, "d.jsonl");
    let blocks = format!("file://{}", m.vol.join("blocks").display());
    let target = work.join("target");
    let target = target.to_str().unwrap();
    ok(
        m.graviton(&["format", "--store", &blocks, target]),
        "format",
    );
    let mut records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ino_of = |name: &str| named(&mut records, name)["ino"].as_u64().unwrap();
    let (d, e, f) = (ino_of("d"), ino_of("e"), ino_of("f"));

    type Edit = Box<dyn Fn(&mut Vec<serde_json::Value>)>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "slash",
            Box::new(|r: &mut Vec<serde_json::Value>| named(r, "e")["name"] = "x/e".into()),
            "contains '/'".into(),
        ),
        (
            "dotdot",
            Box::new(|r: &mut Vec<serde_json::Value>| named(r, "g")["name"] = "..".into()),
            "\"..\"".into(),
        ),
        (
            "cycle",
            // d leaves the root for e, its own child
            Box::new(move |r: &mut Vec<serde_json::Value>| {
                named(r, "d")["parent"] = e.into();
                record(r, "inode", |n| n["ino"] == e)["next_cookie"] = 100.into();
            }),
            format!("directories {d}, {e} form a cycle"),
        ),
        (
            "two-parents",
            Box::new(move |r: &mut Vec<serde_json::Value>| {
                let mut again = r
                    .iter()
                    .find(|x| x.get("entry").is_some_and(|x| x["name"] == "e"))
                    .unwrap()
                    .clone();
                again["entry"]["parent"] = 1.into();
                again["entry"]["name"] = "e2".into();
                again["entry"]["cookie"] = 99.into();
                record(r, "inode", |n| n["ino"] == 1)["next_cookie"] = 100.into();
                r.insert(2, again);
                let end = record(r, "end", |_| true);
                end["entries"] = (end["entries"].as_u64().unwrap() + 1).into();
            }),
            format!("directory {e} has a second name"),
        ),
        (
            "kind",
            Box::new(|r: &mut Vec<serde_json::Value>| named(r, "g")["kind"] = "Symlink".into()),
            format!("inode {f} is File"),
        ),
        (
            "nlink",
            Box::new(move |r: &mut Vec<serde_json::Value>| {
                record(r, "inode", |n| n["ino"] == f)["nlink"] = 3.into()
            }),
            format!("inode {f}: link count 3 where the dump names it 2 times"),
        ),
        (
            "overlap",
            Box::new(move |r: &mut Vec<serde_json::Value>| {
                let x = record(r, "extents", |x| x["ino"] == f);
                let mut second = x["extents"][0].clone();
                second["offset"] = 1.into();
                second["len"] = 10.into();
                x["extents"].as_array_mut().unwrap().push(second);
            }),
            format!("inode {f}: extents overlap at offset 1"),
        ),
        (
            "past-block",
            Box::new(move |r: &mut Vec<serde_json::Value>| {
                let x = record(r, "extents", |x| x["ino"] == f);
                x["extents"][0]["block_offset"] = 1.into();
            }),
            "past the end of its block".into(),
        ),
    ];
    for (what, edit, says) in cases {
        let bad = work.join(format!("{what}.jsonl"));
        std::fs::write(&bad, edited(&text, edit)).unwrap();
        let out = m.graviton(&["load", bad.to_str().unwrap(), target]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: loaded");
        assert!(err.contains(&says), "{what}: {err}");
        assert!(
            err.contains("dump line") || err.contains("inode"),
            "{what}: {err}"
        );
        let fsck = ok(m.graviton(&["fsck", target]), "fsck");
        assert!(
            fsck.contains("checked 1 directories, 0 other inodes, 0 blocks: 0 problems"),
            "{what}: the target changed: {fsck}"
        );
    }
    // from standard input too
    let bad = work.join("slash.jsonl");
    let piped = run(
        "sh",
        &[
            "-c",
            &format!(
                "{} load - {target} < {}",
                common::mounted::BIN,
                bad.display()
            ),
        ],
        work,
    );
    fails_with(piped, "contains '/'");
    let fsck = ok(m.graviton(&["fsck", target]), "fsck");
    assert!(
        fsck.contains("checked 1 directories, 0 other inodes"),
        "{fsck}"
    );

    ok(
        m.graviton(&["load", dump.to_str().unwrap(), target]),
        "load",
    );
    let fsck = ok(m.graviton(&["fsck", "--verify-data", target]), "fsck");
    assert!(fsck.contains(": 0 problems"), "{fsck}");
}
