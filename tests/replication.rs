//! A volume whose blocks live in two stores: a block deleted or corrupted in one is served
//! from the other, and `graviton scrub` repairs it.

mod common;

use std::path::{Path, PathBuf};

use common::mounted::{BIN, Mounted, ok, run};
use common::random_bytes;

/// Every block file under a local store's folder.
fn block_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join("blake3")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_bad_copy_is_served_from_the_other_replica_and_repaired_by_scrub() {
    let stores = tempfile::tempdir_in("/var/tmp").unwrap();
    let (a, b) = (stores.path().join("a"), stores.path().join("b"));
    let (ua, ub) = (
        format!("file://{}", a.display()),
        format!("file://{}", b.display()),
    );
    let m = Mounted::new(&["--store", &ua, "--replica", &ub], "");
    let files: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(40 + i, 3 << 20)).collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(m.path(&format!("f{i}")), f).unwrap();
    }
    m.unmount();
    let in_a = block_files(&a);
    assert_eq!(in_a.len(), 9, "3 files of 3 one-MiB blocks: {in_a:?}");
    assert_eq!(block_files(&b).len(), 9, "every block also in the replica");
    // one copy lost, one damaged, both in the primary
    std::fs::remove_file(&in_a[2]).unwrap();
    let mut bytes = std::fs::read(&in_a[5]).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&in_a[5], bytes).unwrap();

    m.mount();
    for (i, f) in files.iter().enumerate() {
        assert!(
            std::fs::read(m.path(&format!("f{i}"))).unwrap() == *f,
            "f{i} reads intact from the other replica"
        );
    }
    m.unmount();

    let report = ok(
        run(BIN, &["scrub", m.vol.to_str().unwrap()], m.dir.path()),
        "scrub",
    );
    assert!(
        report.contains("9 blocks in 2 stores: 2 bad copies, 2 repaired, 0 lost"),
        "{report}"
    );
    assert!(in_a[2].exists(), "the lost copy is back");
    let again = ok(
        run(BIN, &["scrub", m.vol.to_str().unwrap()], m.dir.path()),
        "scrub",
    );
    assert!(
        again.contains("0 bad copies"),
        "all good after repair: {again}"
    );
    // with every copy of a block gone, scrub says so and fails
    std::fs::remove_file(&in_a[0]).unwrap();
    std::fs::remove_file(
        block_files(&b)
            .iter()
            .find(|p| p.file_name() == in_a[0].file_name())
            .unwrap(),
    )
    .unwrap();
    let out = run(BIN, &["scrub", m.vol.to_str().unwrap()], m.dir.path());
    assert!(!out.status.success(), "a lost block fails the scrub");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 lost"));
}
