//! POSIX namespace semantics of the core: link counts, times, rename flavours, readdir
//! offsets, xattrs, holes, copy_file_range block sharing, and concurrent namespace changes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::stacks::{Remountable, Stack, StackVolume};
use common::{CTX, create, random_bytes, small_cfg, write_all};
use graviton::meta::{FileKind, Inode, ROOT_INO};
use graviton::vfs::{
    Caller, FallocateMode, Fs, FsError, RenameFlags, SetAttr, TimeSet, Whence, XattrSet,
};

fn pause() {
    std::thread::sleep(Duration::from_millis(15));
}

fn link_counts_and_times_follow_posix(vol: &dyn Remountable) {
    let fs = vol.mount();
    let root0 = fs.getattr(ROOT_INO).unwrap();
    assert_eq!(root0.nlink, 2);
    pause();
    let d = fs.mkdir(CTX, ROOT_INO, b"d", 0o755).unwrap();
    assert_eq!((d.nlink, d.uid, d.kind), (2, 1000, FileKind::Dir));
    let root1 = fs.getattr(ROOT_INO).unwrap();
    assert_eq!(root1.nlink, 3, "a subdirectory's .. links its parent");
    assert!(root1.mtime > root0.mtime && root1.ctime > root0.ctime);

    let (f, fh) = create(&fs, "f");
    fs.release(fh).unwrap();
    let before = fs.getattr(f).unwrap();
    pause();
    let linked = fs.link(f, d.ino, b"g").unwrap();
    assert_eq!(linked.nlink, 2);
    assert!(linked.ctime > before.ctime, "link changes ctime");
    assert_eq!(linked.mtime, before.mtime, "link leaves mtime");
    pause();
    fs.unlink(ROOT_INO, b"f").unwrap();
    let after = fs.getattr(f).unwrap();
    assert_eq!(after.nlink, 1);
    assert!(after.ctime > linked.ctime);
    assert_eq!(fs.lookup(d.ino, b"g").unwrap().ino, f);

    assert!(matches!(fs.rmdir(ROOT_INO, b"d"), Err(FsError::NotEmpty)));
    assert!(matches!(fs.unlink(ROOT_INO, b"d"), Err(FsError::IsDir)));
    assert!(matches!(fs.rmdir(d.ino, b"g"), Err(FsError::NotDir)));
    fs.unlink(d.ino, b"g").unwrap();
    fs.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 2);
    assert!(matches!(fs.getattr(d.ino), Err(FsError::NotFound)));
    assert!(
        matches!(
            fs.link(ROOT_INO, ROOT_INO, b"x"),
            Err(FsError::NotPermitted)
        ),
        "no hard links to directories"
    );
}

fn names_are_checked(vol: &dyn Remountable) {
    let fs = vol.mount();
    let long = vec![b'x'; 256];
    assert!(matches!(
        fs.mkdir(CTX, ROOT_INO, &long, 0o755),
        Err(FsError::NameTooLong)
    ));
    assert!(matches!(
        fs.lookup(ROOT_INO, &long),
        Err(FsError::NameTooLong)
    ));
    assert!(
        fs.mkdir(CTX, ROOT_INO, &long[..255], 0o755).is_ok(),
        "255 bytes is allowed"
    );
    assert!(matches!(
        fs.mkdir(CTX, ROOT_INO, b"a/b", 0o755),
        Err(FsError::Invalid)
    ));
    assert!(matches!(
        fs.mkdir(CTX, ROOT_INO, b"..", 0o755),
        Err(FsError::Exists)
    ));
    fs.mkdir(CTX, ROOT_INO, b"x", 0o755).unwrap();
    assert!(matches!(
        fs.mkdir(CTX, ROOT_INO, b"x", 0o755),
        Err(FsError::Exists)
    ));
    let (f, _) = create(&fs, "file");
    assert!(matches!(fs.lookup(f, b"y"), Err(FsError::NotDir)));
    let s = fs.symlink(CTX, ROOT_INO, b"ln", b"/target/path").unwrap();
    assert_eq!((s.kind, s.size), (FileKind::Symlink, 12));
    assert_eq!(fs.readlink(s.ino).unwrap(), b"/target/path");
    assert!(matches!(
        fs.symlink(CTX, ROOT_INO, b"ln2", &vec![b'a'; 4096]),
        Err(FsError::NameTooLong)
    ));
    let fifo = fs
        .mknod(CTX, ROOT_INO, b"fifo", libc::S_IFIFO | 0o600, 0)
        .unwrap();
    assert_eq!(fifo.kind, FileKind::Fifo);
}

fn rename_replace_noreplace_exchange_and_loops(vol: &dyn Remountable) {
    let fs = vol.mount();
    let a = fs.mkdir(CTX, ROOT_INO, b"a", 0o755).unwrap();
    let b = fs.mkdir(CTX, ROOT_INO, b"b", 0o755).unwrap();
    let sub = fs.mkdir(CTX, a.ino, b"sub", 0o755).unwrap();
    // a directory cannot move into itself or below itself
    assert!(matches!(
        fs.rename(ROOT_INO, b"a", sub.ino, b"x", RenameFlags::default()),
        Err(FsError::Invalid)
    ));
    assert!(matches!(
        fs.rename(ROOT_INO, b"a", a.ino, b"x", RenameFlags::default()),
        Err(FsError::Invalid)
    ));
    // moving a directory moves its .. link
    pause();
    fs.rename(a.ino, b"sub", b.ino, b"sub2", RenameFlags::default())
        .unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(fs.lookup(sub.ino, b"..").unwrap().ino, b.ino);
    assert!(
        fs.getattr(sub.ino).unwrap().ctime > sub.ctime,
        "rename changes the moved inode's ctime"
    );
    // file over file replaces; the old target loses a link
    let (f1, h1) = create(&fs, "f1");
    let (f2, h2) = create(&fs, "f2");
    fs.release(h1).unwrap();
    fs.release(h2).unwrap();
    assert!(matches!(
        fs.rename(
            ROOT_INO,
            b"f1",
            ROOT_INO,
            b"f2",
            RenameFlags {
                noreplace: true,
                exchange: false
            }
        ),
        Err(FsError::Exists)
    ));
    fs.rename(ROOT_INO, b"f1", ROOT_INO, b"f2", RenameFlags::default())
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"f2").unwrap().ino, f1);
    assert!(matches!(fs.getattr(f2), Err(FsError::NotFound)));
    // file over directory and directory over file
    assert!(matches!(
        fs.rename(ROOT_INO, b"f2", ROOT_INO, b"a", RenameFlags::default()),
        Err(FsError::IsDir)
    ));
    assert!(matches!(
        fs.rename(ROOT_INO, b"a", ROOT_INO, b"f2", RenameFlags::default()),
        Err(FsError::NotDir)
    ));
    // directory over non-empty directory
    assert!(matches!(
        fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameFlags::default()),
        Err(FsError::NotEmpty)
    ));
    // exchange swaps a file and a directory across parents
    let ex = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    fs.rename(ROOT_INO, b"f2", b.ino, b"sub2", ex).unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"f2").unwrap().ino, sub.ino);
    assert_eq!(fs.lookup(b.ino, b"sub2").unwrap().ino, f1);
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 2);
    assert_eq!(
        fs.getattr(ROOT_INO).unwrap().nlink,
        5,
        "root holds a, b and the swapped-in directory"
    );
    assert_eq!(fs.lookup(sub.ino, b"..").unwrap().ino, ROOT_INO);
    assert!(matches!(
        fs.rename(ROOT_INO, b"nope", ROOT_INO, b"a", ex),
        Err(FsError::NotFound)
    ));
    // two names of one inode: nothing happens
    fs.link(f1, ROOT_INO, b"alias").unwrap();
    fs.rename(b.ino, b"sub2", ROOT_INO, b"alias", RenameFlags::default())
        .unwrap();
    assert_eq!(fs.getattr(f1).unwrap().nlink, 2);
}

/// A directory `d` of 100 empty files, named by `name`.
fn dir_of_100_files(fs: &Fs, name: impl Fn(usize) -> String) -> Inode {
    let d = fs.mkdir(CTX, ROOT_INO, b"d", 0o755).unwrap();
    for i in 0..100 {
        fs.mknod(CTX, d.ino, name(i).as_bytes(), libc::S_IFREG | 0o644, 0)
            .unwrap();
    }
    d
}

/// A reader going through a directory while each entry it meets is renamed away and back
/// meets every entry once (xfstests generic/736): a name renamed within its directory keeps
/// its place in the listing.
fn readdir_meets_each_entry_once_while_entries_are_renamed_away_and_back(vol: &dyn Remountable) {
    let fs = vol.mount();
    let d = dir_of_100_files(&fs, |i| format!("{i}"));
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut offset = 0;
    loop {
        let page = fs.readdir(d.ino, offset, 10).unwrap();
        let Some(last) = page.last() else { break };
        offset = last.cookie;
        for e in page
            .into_iter()
            .filter(|e| e.name != b"." && e.name != b"..")
        {
            fs.rename(d.ino, &e.name, d.ino, b"TEMPFILE", RenameFlags::default())
                .unwrap();
            fs.rename(d.ino, b"TEMPFILE", d.ino, &e.name, RenameFlags::default())
                .unwrap();
            seen.push(e.name);
        }
        assert!(seen.len() <= 300, "the listing does not end");
    }
    assert_eq!(seen.len(), 100, "each entry once");
}

fn readdir_offsets_stay_valid_while_the_directory_changes(vol: &dyn Remountable) {
    let fs = vol.mount();
    let d = dir_of_100_files(&fs, |i| format!("n{i:03}"));
    let first = fs.readdir(d.ino, 0, 40).unwrap();
    assert_eq!(first[0].name, b".");
    assert_eq!(first[1].name, b"..");
    assert_eq!(first[1].ino, ROOT_INO);
    // remove entries already listed and not yet listed, add new ones
    fs.unlink(d.ino, b"n000").unwrap();
    fs.unlink(d.ino, b"n090").unwrap();
    fs.mknod(CTX, d.ino, b"late", libc::S_IFREG | 0o644, 0)
        .unwrap();
    let mut names: Vec<Vec<u8>> = first.iter().map(|e| e.name.clone()).collect();
    let mut offset = first.last().unwrap().cookie;
    loop {
        let page = fs.readdir(d.ino, offset, 25).unwrap();
        if page.is_empty() {
            break;
        }
        offset = page.last().unwrap().cookie;
        names.extend(page.into_iter().map(|e| e.name));
    }
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "no entry listed twice");
    for i in 1..100 {
        if i != 90 {
            assert!(
                names.contains(&format!("n{i:03}").into_bytes()),
                "n{i:03} listed"
            );
        }
    }
    assert!(
        !names.contains(&b"n090".to_vec()),
        "an entry removed before it was reached is not listed"
    );
    assert!(
        names.contains(&b"late".to_vec()),
        "an entry added during listing is listed (it sorts last)"
    );
}

fn setattr_truncate_and_times(vol: &dyn Remountable) {
    let fs = vol.mount();
    let (ino, fh) = create(&fs, "f");
    write_all(&fs, fh, 0, &random_bytes(1, 10_000), 3000);
    assert_eq!(
        fs.getattr(ino).unwrap().size,
        10_000,
        "pending writes show in getattr"
    );
    let t = graviton::meta::Timestamp {
        secs: 1_000_000,
        nanos: 5,
    };
    let a = fs
        .setattr(
            ino,
            SetAttr {
                mode: Some(0o4755),
                mtime: Some(TimeSet::At(t)),
                atime: Some(TimeSet::At(t)),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((a.perm, a.mtime, a.atime, a.size), (0o4755, t, t, 10_000));
    pause();
    let b = fs
        .setattr(
            ino,
            SetAttr {
                size: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(b.size, 5);
    assert!(
        b.mtime > t && b.ctime > a.ctime,
        "truncate updates mtime and ctime"
    );
    fs.setattr(
        ino,
        SetAttr {
            size: Some(20_000),
            ..Default::default()
        },
    )
    .unwrap();
    let data = fs.read(fh, 0, 30_000).unwrap();
    assert_eq!(data.len(), 20_000);
    assert!(
        data[5..].iter().all(|&b| b == 0),
        "extended part reads as zeros"
    );
    assert!(matches!(fs.truncate(ROOT_INO, 0), Err(FsError::IsDir)));
}

fn xattrs_with_flags_and_limits(vol: &dyn Remountable) {
    let fs = vol.mount();
    let (ino, _) = create(&fs, "f");
    fs.setxattr(ino, b"user.k", b"v1", XattrSet::Any).unwrap();
    assert!(matches!(
        fs.setxattr(ino, b"user.k", b"v2", XattrSet::Create),
        Err(FsError::Exists)
    ));
    assert!(matches!(
        fs.setxattr(ino, b"user.none", b"v", XattrSet::Replace),
        Err(FsError::NoAttribute)
    ));
    fs.setxattr(ino, b"user.k", b"v2", XattrSet::Replace)
        .unwrap();
    assert_eq!(fs.getxattr(ino, b"user.k").unwrap(), b"v2");
    fs.setxattr(ino, b"user.empty", b"", XattrSet::Any).unwrap();
    assert_eq!(fs.listxattr(ino).unwrap(), b"user.empty\0user.k\0");
    assert!(matches!(
        fs.getxattr(ino, b"user.none"),
        Err(FsError::NoAttribute)
    ));
    assert!(matches!(
        fs.setxattr(ino, b"user.big", &vec![0; 65537], XattrSet::Any),
        Err(FsError::TooBig)
    ));
    assert!(matches!(
        fs.setxattr(ino, b"bogus.k", b"v", XattrSet::Any),
        Err(FsError::NotSupported)
    ));
    fs.removexattr(ino, b"user.k").unwrap();
    assert!(matches!(
        fs.removexattr(ino, b"user.k"),
        Err(FsError::NoAttribute)
    ));
}

fn holes_seek_and_fallocate(vol: &dyn Remountable) {
    let fs = vol.mount();
    let (ino, fh) = create(&fs, "sparse");
    // holes and data are told apart per 4 KiB page: data at 100,000 makes its page data
    fs.write(fh, 100_000, &[7u8; 20_000]).unwrap();
    assert_eq!(fs.seek(ino, 0, Whence::Data).unwrap(), 98_304);
    assert_eq!(fs.seek(ino, 0, Whence::Hole).unwrap(), 0);
    assert_eq!(fs.seek(ino, 100_000, Whence::Hole).unwrap(), 120_000);
    assert!(matches!(
        fs.seek(ino, 120_000, Whence::Data),
        Err(FsError::NoSuchOffset)
    ));
    let punch = FallocateMode {
        keep_size: true,
        punch_hole: true,
        zero_range: false,
    };
    // the page 106,496..110,592 is all hole; the pages around it keep some data
    fs.fallocate(ino, 105_000, 7000, punch).unwrap();
    assert_eq!(fs.seek(ino, 100_000, Whence::Hole).unwrap(), 106_496);
    assert_eq!(fs.seek(ino, 106_496, Whence::Data).unwrap(), 110_592);
    assert_eq!(
        fs.seek(ino, 105_500, Whence::Data).unwrap(),
        105_500,
        "a page with data"
    );
    let got = fs.read(fh, 104_990, 20).unwrap();
    assert_eq!(got, [&[7u8; 10][..], &[0u8; 10][..]].concat());
    assert_eq!(
        fs.getattr(ino).unwrap().size,
        120_000,
        "punching keeps the size"
    );
    fs.fallocate(ino, 0, 200_000, FallocateMode::default())
        .unwrap();
    assert_eq!(
        fs.getattr(ino).unwrap().size,
        200_000,
        "plain fallocate extends the size"
    );
    fs.fallocate(
        ino,
        0,
        300_000,
        FallocateMode {
            keep_size: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 200_000);
    assert!(matches!(
        fs.fallocate(
            ino,
            0,
            10,
            FallocateMode {
                punch_hole: true,
                ..Default::default()
            }
        ),
        Err(FsError::NotSupported)
    ));
}

fn copy_file_range_shares_blocks(vol: &dyn Remountable) {
    let fs = vol.mount();
    let (_, src) = create(&fs, "src");
    let data = random_bytes(4, 1 << 20);
    write_all(&fs, src, 0, &data, 1 << 16);
    fs.flush(src).unwrap();
    let stored = stored_bytes(&fs);
    let (dst_ino, dst) = create(&fs, "dst");
    assert_eq!(
        fs.copy_file_range(src, 1000, dst, 10, 500_000).unwrap(),
        500_000
    );
    assert_eq!(stored_bytes(&fs), stored, "no block content was copied");
    assert_eq!(fs.getattr(dst_ino).unwrap().size, 500_010);
    assert_eq!(fs.read(dst, 0, 10).unwrap(), vec![0; 10]);
    assert!(common::read_all(&fs, dst, 10, 500_000) == data[1000..501_000]);
    assert_eq!(
        fs.copy_file_range(src, 2 << 20, dst, 0, 10).unwrap(),
        0,
        "past the end copies nothing"
    );
    assert!(matches!(
        fs.copy_file_range(src, 0, src, 100, 1000),
        Err(FsError::Invalid)
    ));
}

fn concurrent_creates_renames_and_links_keep_counts_consistent(vol: &dyn Remountable) {
    let fs = Arc::new(vol.mount());
    let shared = fs.mkdir(CTX, ROOT_INO, b"shared", 0o755).unwrap().ino;
    let (target, fh) = create(&fs, "target");
    fs.release(fh).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                for i in 0..60 {
                    let name = format!("t{t}-{i}");
                    fs.mknod(CTX, shared, name.as_bytes(), libc::S_IFREG | 0o644, 0)
                        .unwrap();
                    fs.link(target, shared, format!("l{t}-{i}").as_bytes())
                        .unwrap();
                    fs.mkdir(CTX, shared, format!("d{t}-{i}").as_bytes(), 0o755)
                        .unwrap();
                    // everyone fights over one name: rename onto it replaces whatever is there
                    fs.rename(
                        shared,
                        name.as_bytes(),
                        shared,
                        b"hot",
                        RenameFlags::default(),
                    )
                    .unwrap();
                    if i % 3 == 0 {
                        fs.unlink(shared, format!("l{t}-{i}").as_bytes()).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut all = Vec::new();
    let mut off = 0;
    loop {
        let page = fs.readdir(shared, off, 500).unwrap();
        if page.is_empty() {
            break;
        }
        off = page.last().unwrap().cookie;
        all.extend(page);
    }
    let links = all.iter().filter(|e| e.name.starts_with(b"l")).count() as u32;
    let dirs = all
        .iter()
        .filter(|e| e.kind == FileKind::Dir && e.name != b"." && e.name != b"..")
        .count() as u32;
    assert_eq!(links, 4 * 40);
    assert_eq!(
        fs.getattr(target).unwrap().nlink,
        1 + links,
        "every link counted once"
    );
    assert_eq!(
        fs.getattr(shared).unwrap().nlink,
        2 + dirs,
        "every subdirectory counted once"
    );
    assert_eq!(dirs, 240);
    assert_eq!(all.iter().filter(|e| e.name == b"hot").count(), 1);
    assert_eq!(
        all.iter().filter(|e| e.name.starts_with(b"t")).count(),
        0,
        "every t-file was renamed onto hot"
    );
    assert_eq!(
        fs.meta().usage().unwrap().files,
        2,
        "only target and hot remain as regular files"
    );
}

/// chmod, chown and utimes of a file with pending writes (what tar and cp -a do before close)
/// show at once on this mount and are committed with the data, in one transaction, at close;
/// a write after utimes moves mtime again.
#[test]
fn attribute_changes_of_a_file_being_written_commit_with_its_data() {
    graviton_testkit::needs_servers!();
    let vol = common::PgVolume::new(small_cfg());
    let (fs, other) = (vol.mount(), vol.mount());
    let (ino, fh) = create(&fs, "f");
    write_all(&fs, fh, 0, &random_bytes(2, 10_000), 4096);
    let t = graviton::meta::Timestamp {
        secs: 1_000_000,
        nanos: 7,
    };
    let set = SetAttr {
        mode: Some(0o640),
        uid: Some(4321),
        gid: Some(8765),
        mtime: Some(TimeSet::At(t)),
        ..Default::default()
    };
    let a = fs.setattr(ino, set).unwrap();
    assert_eq!(
        (a.perm, a.uid, a.gid, a.mtime, a.size),
        (0o640, 4321, 8765, t, 10_000)
    );
    let seen = other.getattr(ino).unwrap();
    assert_eq!(
        (seen.perm, seen.size),
        (0o644, 0),
        "nothing committed before close"
    );
    fs.flush(fh).unwrap();
    let c = other.getattr(ino).unwrap();
    assert_eq!(
        (c.perm, c.uid, c.gid, c.mtime, c.size),
        (0o640, 4321, 8765, t, 10_000),
        "committed together at close"
    );
    assert!(c.ctime > t, "ctime is when the change was made");
    fs.write(fh, 10_000, b"x").unwrap();
    assert!(
        fs.getattr(ino).unwrap().mtime > t,
        "a later write moves mtime"
    );
    fs.release(fh).unwrap();
    let d = other.getattr(ino).unwrap();
    assert!(d.mtime > t && d.size == 10_001 && d.perm == 0o640, "{d:?}");
}

/// One file's extended attributes are bounded (ENOSPC past 256 of them, as ext4 refuses new
/// ones once a file's attribute space is full): a user cannot grow the metadata, and the
/// daemon's memory when they are listed, without end. Replacing an existing one still works.
fn a_files_extended_attributes_are_bounded(vol: &dyn Remountable) {
    let fs = vol.mount();
    let (ino, _) = create(&fs, "f");
    let mut stored = 0;
    let err = loop {
        let name = format!("user.attribute-number-{stored:06}");
        match fs.setxattr(ino, name.as_bytes(), &[7u8; 1024], XattrSet::Any) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored <= 100_000, "no bound");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    // what xfstests expects a FUSE filesystem to hold (generic/020)
    assert!(stored >= 1000, "{stored}");
    fs.setxattr(
        ino,
        b"user.attribute-number-000000",
        b"new",
        XattrSet::Replace,
    )
    .unwrap();
    fs.removexattr(ino, b"user.attribute-number-000001")
        .unwrap();
    fs.setxattr(ino, b"user.one-more", b"x", XattrSet::Create)
        .unwrap();
    assert!(fs.listxattr(ino).unwrap().len() <= 65536);
}

/// setuid/setgid go when a caller without CAP_FSETID writes or truncates, and at any chown;
/// a caller with it keeps them, and setgid without group-execute stays for a writer in the
/// file's group (as on ext4).
fn privileges_are_dropped_by_unprivileged_changes_and_chown(vol: &dyn Remountable) {
    let fs = vol.mount();
    let (ino, fh) = create(&fs, "f");
    write_all(&fs, fh, 0, b"#!/bin/sh\n", 64);
    let chmod = |mode: u32| {
        let set = SetAttr {
            mode: Some(mode),
            ..Default::default()
        };
        fs.setattr(ino, set).unwrap();
    };
    let perm = || fs.getattr(ino).unwrap().perm;
    let user = Caller::new(1000, 1000, std::process::id());
    let outsider = Caller::new(2000, 2000, u32::MAX);
    let root = Caller::new(0, 0, std::process::id());

    chmod(0o6755);
    assert!(!fs.written_by(ino, &root).unwrap(), "root keeps them");
    assert_eq!(perm(), 0o6755);
    assert!(fs.written_by(ino, &user).unwrap());
    assert_eq!(
        perm(),
        0o755,
        "a write drops both (setgid with group-execute)"
    );

    chmod(0o2644);
    assert!(!fs.written_by(ino, &user).unwrap());
    assert_eq!(
        perm(),
        0o2644,
        "setgid without group-execute stays for the group"
    );
    assert!(fs.written_by(ino, &outsider).unwrap());
    assert_eq!(perm(), 0o644, "but not for a writer outside the group");

    chmod(0o6755);
    let truncate = SetAttr {
        size: Some(3),
        ..Default::default()
    };
    assert_eq!(fs.setattr_by(ino, truncate, &root).unwrap().perm, 0o6755);
    assert_eq!(fs.setattr_by(ino, truncate, &user).unwrap().perm, 0o755);

    chmod(0o6755);
    let chown = SetAttr {
        uid: Some(1000),
        ..Default::default()
    };
    assert_eq!(
        fs.setattr_by(ino, chown, &root).unwrap().perm,
        0o755,
        "any chown drops them"
    );
    let chmod_too = SetAttr {
        mode: Some(0o4755),
        ..chown
    };
    assert_eq!(
        fs.setattr_by(ino, chmod_too, &user).unwrap().perm,
        0o4755,
        "a change that sets the mode keeps what it sets"
    );
    fs.release(fh).unwrap();
    drop(fs);
    assert_eq!(vol.mount().getattr(ino).unwrap().perm, 0o4755, "committed");
}

/// On a volume only one mount uses, lock calls answer ENOSYS: FUSE's way of leaving the locks
/// to the kernel, which then keeps them itself.
#[test]
fn lock_calls_on_an_embedded_volume_leave_locks_to_the_kernel() {
    use graviton::meta::{LockKind, LockRequest, TO_EOF};
    let vol = StackVolume::new(Stack::Embedded, small_cfg());
    let fs = vol.mount();
    let (_, fh) = create(&fs, "f");
    let req = LockRequest {
        owner: 1,
        kind: LockKind::Exclusive,
        start: 0,
        end: TO_EOF,
        pid: 1,
    };
    assert_eq!(fs.test_lock(fh, &req).unwrap_err().errno(), libc::ENOSYS);
    assert_eq!(
        fs.set_lock(fh, &req, false).unwrap_err().errno(),
        libc::ENOSYS
    );
}

/// Bytes of block content the volume stores.
fn stored_bytes(fs: &Fs) -> u64 {
    common::DiskVolume::stored_bytes(fs.store().as_ref())
}

/// Each test above, on a fresh volume of each production stack.
macro_rules! over_every_stack {
    ($($stack:ident),*; $tests:tt) => {
        $(over_every_stack!(@one $stack $tests);)*
    };
    (@one $stack:ident [$($test:ident),* $(,)?]) => {
        #[allow(non_snake_case)]
        mod $stack {
            use super::*;
            $(
                #[test]
                fn $test() {
                    if Stack::$stack.needs_servers() {
                        graviton_testkit::needs_servers!();
                    }
                    super::$test(&StackVolume::new(Stack::$stack, small_cfg()));
                }
            )*
        }
    };
}

over_every_stack!(Embedded, EmbeddedReplicated, Postgres, PostgresS3, PostgresS3Writeback, Sealed; [
    link_counts_and_times_follow_posix,
    names_are_checked,
    rename_replace_noreplace_exchange_and_loops,
    readdir_meets_each_entry_once_while_entries_are_renamed_away_and_back,
    readdir_offsets_stay_valid_while_the_directory_changes,
    setattr_truncate_and_times,
    xattrs_with_flags_and_limits,
    holes_seek_and_fallocate,
    copy_file_range_shares_blocks,
    concurrent_creates_renames_and_links_keep_counts_consistent,
    a_files_extended_attributes_are_bounded,
    privileges_are_dropped_by_unprivileged_changes_and_chown,
]);
