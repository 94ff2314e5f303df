//! `graviton fsck` on a volume with planted damage: a deleted block, a corrupted block (found
//! with `--verify-data`) and an entry naming no inode, each reported with its path.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::mounted::{Mounted, ok};
use common::random_bytes;
use graviton::meta::{DirEntry, FileKind, ROOT_INO};
use graviton::volume::{Source, Volume};

/// The block files under an embedded volume's store, in a stable order.
fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "tmp") {
                    todo.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn fsck_finds_a_missing_block_a_corrupt_block_and_a_dangling_entry() {
    // every block a file of its own, to damage
    let m = Mounted::new(&["--small-blocks", "0"], "");
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::write(m.path("d/a"), random_bytes(1, 100_000)).unwrap();
    std::fs::write(m.path("b"), random_bytes(2, 100_000)).unwrap();
    std::fs::hard_link(m.path("b"), m.path("d/b2")).unwrap();
    std::fs::create_dir(m.path("d/sub")).unwrap();
    std::fs::write(m.path("d/sub/x"), b"").unwrap();
    m.unmount();
    let clean = ok(
        m.graviton(&["fsck", "--verify-data", &m.source]),
        "fsck of a clean volume",
    );
    assert!(clean.contains(": 0 problems"), "{clean}");

    // damage: one block gone, one flipped byte, one entry naming no inode
    let blocks = block_files(&m.vol.join("blocks"));
    assert_eq!(blocks.len(), 2, "one block per file: {blocks:?}");
    std::fs::remove_file(&blocks[0]).unwrap();
    let mut bytes = std::fs::read(&blocks[1]).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&blocks[1], bytes).unwrap();
    {
        let vol = Volume::open(&Source::parse(&m.source)).unwrap();
        let mut tx = vol.meta.begin().unwrap();
        let ghost = DirEntry::new(999_999, FileKind::File, 1_000_000);
        tx.put_dirent(ROOT_INO, b"ghost", &ghost).unwrap();
        tx.commit().unwrap();
    }

    let quick = m.graviton(&["fsck", &m.source]);
    let text = String::from_utf8_lossy(&quick.stdout).into_owned();
    assert!(!quick.status.success(), "problems make fsck fail: {text}");
    assert!(
        text.contains("/ghost: entry names inode 999999 which does not exist"),
        "{text}"
    );
    assert_eq!(
        text.matches("is missing from the block store").count(),
        1,
        "the deleted block, with the file using it: {text}"
    );
    assert!(
        !text.contains("does not match"),
        "without --verify-data: {text}"
    );

    let full = m.graviton(&["fsck", "--verify-data", &m.source]);
    let text = String::from_utf8_lossy(&full.stdout).into_owned();
    assert!(!full.status.success());
    assert_eq!(text.matches("does not match its key").count(), 1, "{text}");
    assert!(text.contains(": 3 problems"), "{text}");
    eprintln!("{text}");

    // --repair drops the dangling entry, sets a wrong link count and gives a directory that
    // lost its entry a name in /lost+found; blocks are scrub's to repair
    let sub = {
        let vol = Volume::open(&Source::parse(&m.source)).unwrap();
        let mut tx = vol.meta.begin().unwrap();
        let d = tx.dirent(ROOT_INO, b"d").unwrap().unwrap().ino;
        let sub = tx.dirent(d, b"sub").unwrap().unwrap().ino;
        tx.delete_dirent(d, b"sub").unwrap();
        let mut dir = tx.inode(d).unwrap().unwrap();
        dir.nlink = 7;
        tx.put_inode(&dir).unwrap();
        tx.commit().unwrap();
        sub
    };
    let repaired = m.graviton(&["fsck", "--repair", &m.source]);
    let text = String::from_utf8_lossy(&repaired.stdout).into_owned();
    assert!(
        text.contains("/d: link count 7 where the tree has 2"),
        "{text}"
    );
    assert!(
        text.contains(&format!("inode {sub} (Dir, 0 bytes) is named by no entry")),
        "{text}"
    );
    assert!(text.contains("repaired 3 problems"), "{text}");
    let after = m.graviton(&["fsck", &m.source]);
    let text = String::from_utf8_lossy(&after.stdout).into_owned();
    assert!(
        !text.contains("ghost") && !text.contains("link count") && text.contains(": 1 problems"),
        "only the missing block is left: {text}"
    );
    m.mount();
    let found = m.path(&format!("lost+found/#{sub}"));
    assert!(
        found.join("x").is_file(),
        "the lost directory and its file are back"
    );
    assert_eq!(std::fs::metadata(m.path("lost+found")).unwrap().nlink(), 3);
}

#[test]
fn a_mounted_embedded_volume_is_checked_dumped_and_scrubbed_through_its_daemon() {
    let m = Mounted::new(&[], "");
    std::fs::create_dir(m.path("d")).unwrap();
    // a full block (a file in the block store) and a tail; a small file (both in RocksDB)
    std::fs::write(m.path("d/a"), random_bytes(1, (1 << 20) + 300_000)).unwrap();
    std::fs::write(m.path("b"), random_bytes(2, 100_000)).unwrap();
    let fsck = ok(
        m.graviton(&["fsck", "--verify-data", &m.source]),
        "fsck while mounted",
    );
    assert!(
        fsck.contains(
            "checked 2 directories, 2 other inodes, 3 blocks (data verified): 0 problems"
        ),
        "{fsck}"
    );
    let dump = ok(
        m.graviton(&["dump", "-o", "-", &m.source]),
        "dump while mounted",
    );
    assert!(
        dump.lines()
            .last()
            .unwrap()
            .contains(r#""end":{"inodes":4,"entries":3,"blocks":2}"#),
        "the small blocks kept in RocksDB travel in the dump: {dump}"
    );
    assert!(dump.contains("\"block\":"), "{dump}");
    let scrub = ok(m.graviton(&["scrub", &m.source]), "scrub while mounted");
    assert!(
        scrub.contains("scrubbed 3 blocks in 1 stores: 0 bad copies"),
        "{scrub}"
    );
    let refused = m.graviton(&["fsck", "--repair", &m.source]);
    assert!(!refused.status.success(), "no repairs under a live mount");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is mounted"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let status = m.status_json();
    assert_eq!(status["usage"]["files"], 2, "{status}");
    assert_eq!(status["stores"].as_array().unwrap().len(), 1, "{status}");

    // a problem found through the daemon is an error exit with its path
    let blocks = block_files(&m.vol.join("blocks"));
    std::fs::remove_file(&blocks[0]).unwrap();
    let out = m.graviton(&["fsck", &m.source]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("is missing from the block store") && text.contains(": 1 problems"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 problems found"));
}
