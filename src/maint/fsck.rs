//! `graviton fsck`: walks a volume's directory tree from the root and checks that every entry
//! names an existing inode of the kind it says, that link counts match the entries naming each
//! inode, and that every block a file's extents reference is in the block store (and, with
//! `--verify-data`, still matches its key). It reports, with paths, and exits non-zero when
//! anything is wrong. `--repair` fixes what is safe to fix: it removes entries that name no
//! inode and sets link counts to what the tree has; missing or corrupt blocks are for
//! `graviton scrub` (from a replica), since fsck has no good copy. An inode no entry names
//! (and not an orphan still open somewhere) is reported and, repaired, gets a name in
//! `/lost+found`. A mounted volume is checked (a shared one in one snapshot; an embedded one by
//! its daemon, where a change made during the walk can show as a problem: run it again to
//! confirm) but not repaired: a repair racing a mount's changes could undo them.

use std::collections::{HashMap, HashSet};

use std::io::Write;

use crate::domain::BlockKey;
use crate::meta::{DirEntry, FileKind, Ino, Inode, MetaRead, MetaTxn, ROOT_INO, Timestamp};
use crate::store::StoreError;
use crate::vfs::quota;
use crate::volume::Volume;

/// What fsck found.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub dirs: u64,
    pub files: u64,
    pub blocks: u64,
    /// One line per problem, naming the path.
    pub problems: Vec<String>,
    /// What `--repair` would fix, in order.
    pub fixes: Vec<Fix>,
}

/// A repair fsck can make safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Remove the entry `name` from `dir` (it names no inode).
    DropEntry { dir: Ino, name: Vec<u8> },
    /// Set the inode's link count.
    SetLinks { ino: Ino, nlink: u32 },
    /// Give an inode no entry names a name in `/lost+found` (`#<ino>`), as e2fsck does.
    LinkLost { ino: Ino },
    /// Give back the reservations of these files (left by mounts that stopped without
    /// closing them), then set every quota's usage to a count (`vfs::quota::scan`).
    Quotas { reserving: Vec<Ino> },
}

/// Checks the volume (and with `repair`, fixes and checks again), writing the problems and a
/// summary; an error when problems remain. `in_use`: run by the daemon mounting the volume.
/// Repairs are refused on a volume in use (a mount of a shared volume counts too).
pub fn check(
    vol: &Volume,
    verify_data: bool,
    repair: bool,
    in_use: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let in_use = in_use
        || match vol.meta.shared() {
            Some(shared) => !shared.sessions()?.is_empty(),
            None => false,
        };
    if repair && in_use {
        anyhow::bail!(
            "{} is mounted: unmount every mount to repair it (a repair racing a mount's changes could undo them); fsck without --repair checks it while mounted",
            vol.source.display()
        );
    }
    let mut r = fsck(vol, verify_data, in_use)?;
    if repair && !r.fixes.is_empty() {
        for p in &r.problems {
            writeln!(out, "{p}")?;
        }
        for fix in &r.fixes {
            apply(vol, fix)?;
        }
        writeln!(out, "repaired {} problems; checking again", r.fixes.len())?;
        r = fsck(vol, verify_data, in_use)?;
    }
    for p in &r.problems {
        writeln!(out, "{p}")?;
    }
    writeln!(
        out,
        "checked {} directories, {} other inodes, {} blocks{}: {} problems",
        r.dirs,
        r.files,
        r.blocks,
        if verify_data { " (data verified)" } else { "" },
        r.problems.len()
    )?;
    if !r.problems.is_empty() {
        anyhow::bail!("{} problems found", r.problems.len());
    }
    Ok(())
}

/// One walk of one snapshot; long because its checks share the walk's state (parents,
/// link counts, referenced blocks) and read best in the order the report lists them.
pub fn fsck(vol: &Volume, verify_data: bool, in_use: bool) -> anyhow::Result<FsckReport> {
    let mut report = FsckReport::default();
    // one moment of the volume, also while mounts change it
    let mut view = vol.meta.snapshot()?;
    let tx: &mut dyn MetaRead = view.as_mut();
    // listed before the walk: an inode created during it is not suspected
    let numbers = tx.inode_numbers()?;
    // entries naming each inode, and the path of the first
    let mut named: HashMap<Ino, (u32, String)> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut blocks: HashMap<BlockKey, Option<String>> = HashMap::new();
    let mut seen_dirs: HashSet<Ino> = HashSet::from([ROOT_INO]);
    let mut todo = vec![(ROOT_INO, String::new())];
    let walk = super::progress::spinner("directories");
    walk.set_prefix("fsck: tree");
    while let Some((dir, path)) = todo.pop() {
        walk.inc(1);
        report.dirs += 1;
        super::each_entry_page(tx, dir, |tx, page| {
            for (name, entry) in page {
                let child = format!("{path}/{}", String::from_utf8_lossy(name));
                let Some(inode) = tx.inode(entry.ino)? else {
                    report.problems.push(format!(
                        "{child}: entry names inode {} which does not exist",
                        entry.ino
                    ));
                    report.fixes.push(Fix::DropEntry {
                        dir,
                        name: name.clone(),
                    });
                    continue;
                };
                if inode.kind != entry.kind {
                    report.problems.push(format!(
                        "{child}: entry says {:?}, inode {} is {:?}",
                        entry.kind, entry.ino, inode.kind
                    ));
                }
                let n = named.entry(entry.ino).or_insert((0, child.clone()));
                n.0 += 1;
                match inode.kind {
                    FileKind::Dir => {
                        *subdirs.entry(dir).or_default() += 1;
                        if !seen_dirs.insert(entry.ino) {
                            report.problems.push(format!(
                                "{child}: directory {} has a second name",
                                entry.ino
                            ));
                            continue;
                        }
                        if inode.parent != dir {
                            report.problems.push(format!(
                                "{child}: its parent is recorded as {}, not {dir}",
                                inode.parent
                            ));
                        }
                        todo.push((entry.ino, child));
                    }
                    FileKind::File if n.0 == 1 => {
                        report.files += 1;
                        for e in tx.extents(entry.ino, 0..u64::MAX)? {
                            blocks.entry(e.key).or_insert_with(|| Some(child.clone()));
                        }
                    }
                    _ if n.0 == 1 => report.files += 1,
                    _ => {}
                }
            }
            Ok(())
        })?;
    }
    // link counts: a file's names; a directory's 2 + its subdirectories
    for (&ino, (names, path)) in &named {
        let Some(inode) = tx.inode(ino)? else {
            continue;
        };
        let want = match inode.kind {
            FileKind::Dir => 2 + subdirs.get(&ino).copied().unwrap_or(0),
            _ => *names,
        };
        if inode.nlink != want {
            report.problems.push(format!(
                "{path}: link count {} where the tree has {want}",
                inode.nlink
            ));
            report.fixes.push(Fix::SetLinks { ino, nlink: want });
        }
    }
    if let Some(root) = tx.inode(ROOT_INO)? {
        let want = 2 + subdirs.get(&ROOT_INO).copied().unwrap_or(0);
        if root.nlink != want {
            report.problems.push(format!(
                "/: link count {} where the tree has {want}",
                root.nlink
            ));
            report.fixes.push(Fix::SetLinks {
                ino: ROOT_INO,
                nlink: want,
            });
        }
    } else {
        report.problems.push("/: the root inode is missing".into());
    }
    let mut lost = Vec::new();
    for (ino, orphan) in numbers {
        if ino == ROOT_INO || orphan || named.contains_key(&ino) {
            continue;
        }
        // gone since the listing: deleted, not lost
        if let Some(inode) = tx.inode(ino)? {
            lost.push(inode);
        }
    }
    // what a lost directory holds comes back with it: only the tops of lost trees are named
    let mut inside: HashSet<Ino> = HashSet::new();
    let mut todo: Vec<Ino> = lost
        .iter()
        .filter(|n| n.kind == FileKind::Dir)
        .map(|n| n.ino)
        .collect();
    while let Some(dir) = todo.pop() {
        super::each_entry_page(tx, dir, |_, page| {
            for (_, e) in page {
                if inside.insert(e.ino) && e.kind == FileKind::Dir {
                    todo.push(e.ino);
                }
            }
            Ok(())
        })?;
    }
    // copies being made and snapshots being removed (`tree::detached`) are named by no entry
    let detached: HashSet<Ino> = crate::vfs::tree::detached::roots(vol.meta.as_ref())?
        .into_iter()
        .map(|(root, _)| root)
        .collect();
    for inode in lost
        .iter()
        .filter(|n| !inside.contains(&n.ino) && !detached.contains(&n.ino))
    {
        report.problems.push(format!(
            "inode {} ({:?}, {} bytes) is named by no entry",
            inode.ino, inode.kind, inode.size
        ));
        report.fixes.push(Fix::LinkLost { ino: inode.ino });
    }
    drop(view);
    walk.finish_and_clear();
    quotas(vol, in_use, &mut report)?;
    let bar = super::progress::bar(blocks.len() as u64, "blocks");
    bar.set_prefix("fsck: blocks");
    for (key, path) in blocks {
        bar.inc(1);
        report.blocks += 1;
        let path = path.unwrap_or_default();
        let problem = if verify_data {
            match vol.store.get(&key) {
                Ok(_) => None,
                Err(StoreError::Corrupt(..)) => Some("does not match its key"),
                Err(StoreError::NotFound(..)) => Some("is missing from the block store"),
                Err(e) => return Err(e.into()),
            }
        } else {
            match vol.store.exists(&key)? {
                true => None,
                false => Some("is missing from the block store"),
            }
        };
        if let Some(what) = problem {
            report.problems.push(format!("{path}: block {key} {what}"));
        }
    }
    bar.finish_and_clear();
    report.problems.sort();
    Ok(report)
}

/// Compares each quota's usage with a count, and while no mount runs, finds reservations
/// a mount left behind.
fn quotas(vol: &Volume, in_use: bool, report: &mut FsckReport) -> anyhow::Result<()> {
    let meta = vol.meta.as_ref();
    let map = quota::map(meta.read()?.as_mut())?;
    if map.is_empty() {
        return Ok(());
    }
    let (counts, mut reserving) = quota::scan::recount(meta, &map)?;
    let mut wrong = false;
    for (key, ((bytes, inodes), rec)) in &counts {
        let Some(rec) = rec else { continue };
        let of = super::quota::describe(meta, *key)?;
        if rec.counting {
            report.problems.push(format!(
                "quota of {of}: still being counted (a `graviton quota set` that did not finish)"
            ));
            wrong = true;
        } else if (rec.bytes, rec.inodes) != (*bytes, *inodes) {
            report.problems.push(format!(
                "quota of {of}: records {} bytes, {} inodes where a count finds {bytes} bytes, {inodes} inodes",
                rec.bytes, rec.inodes
            ));
            wrong = true;
        }
    }
    if in_use {
        // the mounts' open files hold them
        reserving.clear();
    }
    if !reserving.is_empty() {
        report.problems.push(format!(
            "{} files hold quota reservations no mount uses",
            reserving.len()
        ));
    }
    // the other repairs change what counts too: counted again after them
    if wrong || !reserving.is_empty() || !report.fixes.is_empty() {
        report.fixes.push(Fix::Quotas { reserving });
    }
    Ok(())
}

const LOST_FOUND: &[u8] = b"lost+found";

/// `/lost+found`, made when missing.
fn lost_found(tx: &mut dyn MetaTxn, vol: &Volume) -> anyhow::Result<Ino> {
    if let Some(e) = tx.dirent(ROOT_INO, LOST_FOUND)? {
        anyhow::ensure!(
            e.kind == FileKind::Dir,
            "/lost+found is not a directory: move it away to repair"
        );
        return Ok(e.ino);
    }
    let mut root = tx
        .inode(ROOT_INO)?
        .ok_or_else(|| anyhow::anyhow!("the root inode is missing"))?;
    let now = Timestamp::now();
    let mut dir = Inode::new(vol.meta.allocate_ino()?, FileKind::Dir, 0o700, 0, 0, now);
    dir.parent = ROOT_INO;
    tx.put_inode(&dir)?;
    let cookie = root.take_cookie();
    root.nlink += 1;
    root.touch(now);
    tx.put_inode(&root)?;
    tx.put_dirent(
        ROOT_INO,
        LOST_FOUND,
        &DirEntry::new(dir.ino, FileKind::Dir, cookie),
    )?;
    Ok(dir.ino)
}

/// Makes one repair in a transaction of its own.
fn apply(vol: &Volume, fix: &Fix) -> anyhow::Result<()> {
    if let Fix::Quotas { reserving } = fix {
        let meta = vol.meta.as_ref();
        for &ino in reserving {
            quota::release(meta, ino)?;
        }
        let map = quota::map(meta.read()?.as_mut())?;
        return Ok(quota::scan::repair(
            meta,
            &quota::scan::recount(meta, &map)?.0,
        )?);
    }
    let mut tx = vol.meta.begin()?;
    match fix {
        Fix::LinkLost { ino } => {
            let lf = lost_found(tx.as_mut(), vol)?;
            let (Some(mut inode), Some(mut dir)) = (tx.inode(*ino)?, tx.inode(lf)?) else {
                return Ok(());
            };
            let cookie = dir.take_cookie();
            if inode.kind == FileKind::Dir {
                dir.nlink += 1;
            } else {
                inode.nlink = 1;
            }
            // a directory's parent, any other inode's home
            inode.parent = lf;
            tx.put_inode(&inode)?;
            tx.put_inode(&dir)?;
            tx.put_dirent(
                lf,
                format!("#{ino}").as_bytes(),
                &DirEntry::new(*ino, inode.kind, cookie),
            )?;
        }
        Fix::DropEntry { dir, name } => tx.delete_dirent(*dir, name)?,
        Fix::SetLinks { ino, nlink } => {
            if let Some(mut inode) = tx.inode(*ino)? {
                inode.nlink = *nlink;
                tx.put_inode(&inode)?;
            }
        }
        Fix::Quotas { .. } => unreachable!("made above"),
    }
    tx.commit()?;
    Ok(())
}
