//! The trash: with the volume setting `trash_days` above 0, a file that loses its last name
//! (unlink, or replaced by a rename) and a removed directory are not deleted but moved to
//! `/<folder>/<YYYY-MM-DD-HH>/<ino>-<name>` (UTC hour of the removal; the folder is `.trash`
//! unless the setting `trash_dir` says otherwise), with where they came from in the attribute
//! `trusted.graviton.origin` (`<directory inode>/<name>`). The folder and its hour folders are
//! frozen (read-only to the mounts, left out of the root's listing); the entries are not, so a
//! file still open keeps working. `graviton trash` lists, restores and purges; the mounts
//! remove entries older than the setting (`expire`). Each user sees, restores and purges the
//! entries it owns; root all of them. A trashed inode is marked by its `parent`
//! being an hour folder, and shows no links to the applications that still hold it.

use std::time::{Duration, UNIX_EPOCH};

use super::{PAGE, detached};
use crate::meta::{
    DirEntry, FROZEN, FileKind, Ino, Inode, MetaRead, MetaResult, MetaStore, MetaTxn, ROOT_INO,
    Timestamp, is_frozen,
};
use crate::vfs::access::{EXEC, WRITE, Who};
use crate::vfs::{FsError, FsResult, run_txn};

pub const DAYS_SETTING: &str = "trash_days";
pub const FOLDER_SETTING: &str = "trash_dir";
pub const DEFAULT_FOLDER: &str = ".trash";
const ORIGIN_XATTR: &[u8] = b"trusted.graviton.origin";

/// Where removed inodes go on a volume with the trash on, and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bin {
    pub folder: Ino,
    pub keep: Duration,
}

/// Whether this mount has an inode open: the trash keeps such an entry past its time (a
/// program may keep writing a log it removed). Mounts on other machines are not asked: the
/// database keeps an inode another mount holds as an orphan (`meta::pg::holds`), so a program
/// there goes on with its file once the entry is gone, as after an unlink.
pub type InUse = dyn Fn(Ino) -> bool + Send + Sync;

/// Whether `inode` is in the trash (its parent is an hour folder).
pub fn holds(inode: &Inode) -> bool {
    !is_frozen(inode.ino) && is_frozen(inode.parent)
}

/// How long the trash keeps what it holds: None when it is off. `trash_days` may be a
/// fraction.
pub fn keep(meta: &dyn MetaStore) -> FsResult<Option<Duration>> {
    let days = meta.setting(DAYS_SETTING)?.unwrap_or_default();
    Ok(parse_days(&days).filter(|d| !d.is_zero()))
}

/// `trash_days` as a duration: a number of days from 0 to 100 years.
pub fn parse_days(days: &str) -> Option<Duration> {
    let d: f64 = days.trim().parse().ok()?;
    (d.is_finite() && (0.0..=36_500.0).contains(&d)).then(|| Duration::from_secs_f64(d * 86_400.0))
}

pub fn folder_name(meta: &dyn MetaStore) -> FsResult<Vec<u8>> {
    super::folder_name(meta, FOLDER_SETTING, DEFAULT_FOLDER)
}

/// The trash of the volume, when it is on and its folder made (`graviton settings`).
pub fn bin(meta: &dyn MetaStore) -> FsResult<Option<Bin>> {
    let Some(keep) = keep(meta)? else {
        return Ok(None);
    };
    Ok(folder(meta)?.map(|folder| Bin { folder, keep }))
}

/// The trash folder, once made.
pub(crate) fn folder(meta: &dyn MetaStore) -> FsResult<Option<Ino>> {
    super::made_folder(meta, &folder_name(meta)?)
}

/// The hour folder's name for `t` (UTC), `YYYY-MM-DD-HH`.
fn hour_name(t: Timestamp) -> String {
    let secs = t.secs.max(0) as u64;
    let stamp = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
    let s = stamp.to_string();
    format!("{}-{}", &s[..10], &s[11..13])
}

/// The start of an hour folder's hour, in Unix seconds.
fn hour_start(name: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(name).ok()?;
    if s.len() != 13 {
        return None;
    }
    let t =
        humantime::parse_rfc3339(&format!("{}T{}:00:00Z", s.get(..10)?, s.get(11..13)?)).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// Moves `inode`, whose last name (`name` in `parent`) the caller has just removed in `tx`,
/// into this hour's folder of the trash. `fresh` hands out a number for the hour folder, if it
/// has to be made.
pub fn put(
    tx: &mut dyn MetaTxn,
    bin: &Bin,
    inode: &mut Inode,
    parent: Ino,
    name: &[u8],
    now: Timestamp,
    fresh: &dyn Fn() -> MetaResult<Ino>,
) -> MetaResult<()> {
    let hour = hour_name(now);
    let mut hour_dir = match tx.dirent(bin.folder, hour.as_bytes())? {
        Some(e) => match tx.inode(e.ino)? {
            Some(i) => i,
            None => {
                return Err(crate::meta::MetaError::Corrupt(format!(
                    "trash folder {hour}"
                )));
            }
        },
        None => {
            let mut folder = tx
                .inode(bin.folder)?
                .ok_or_else(|| crate::meta::MetaError::Corrupt("the trash folder".into()))?;
            let mut dir = Inode::new(fresh()? | FROZEN, FileKind::Dir, 0o700, 0, 0, now);
            dir.parent = bin.folder;
            let cookie = folder.take_cookie();
            folder.nlink += 1;
            folder.touch(now);
            tx.put_inode(&folder)?;
            tx.put_dirent(
                bin.folder,
                hour.as_bytes(),
                &DirEntry::new(dir.ino, FileKind::Dir, cookie),
            )?;
            dir
        }
    };
    let mut entry = format!("{}-", inode.ino).into_bytes();
    entry.extend_from_slice(name);
    entry.truncate(crate::vfs::NAME_MAX);
    let cookie = hour_dir.take_cookie();
    if inode.kind == FileKind::Dir {
        hour_dir.nlink += 1;
    }
    hour_dir.touch(now);
    tx.put_inode(&hour_dir)?;
    tx.put_dirent(
        hour_dir.ino,
        &entry,
        &DirEntry::new(inode.ino, inode.kind, cookie),
    )?;
    inode.parent = hour_dir.ino;
    inode.ctime = now;
    tx.put_inode(inode)?;
    let mut origin = format!("{parent}/").into_bytes();
    origin.extend_from_slice(name);
    tx.put_xattr(inode.ino, ORIGIN_XATTR, &origin)
}

/// One entry of the trash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// `<hour folder>/<entry>`, as `restore` and `purge` take it.
    pub name: String,
    pub ino: Ino,
    pub kind: String,
    pub size: u64,
    /// Unix seconds of the removal.
    pub removed: i64,
    /// Its owner: only root and the owner see, restore and purge an entry.
    pub uid: u32,
    /// The path it had, when its directory still has one (or is in the trash itself).
    pub origin: String,
}

struct Raw {
    hour: Ino,
    hour_name: Vec<u8>,
    name: Vec<u8>,
    entry: DirEntry,
}

fn hour_folders(view: &mut dyn MetaRead, folder: Ino) -> FsResult<Vec<(Vec<u8>, Ino)>> {
    let mut out = Vec::new();
    let mut after = 2;
    loop {
        let page = view.list_dir(folder, after, PAGE)?;
        out.extend(page.iter().map(|(n, e)| (n.clone(), e.ino)));
        match page.last() {
            Some((_, last)) if page.len() == PAGE => after = last.cookie,
            _ => return Ok(out),
        }
    }
}

fn raw_entries(meta: &dyn MetaStore, folder: Ino) -> FsResult<Vec<Raw>> {
    let mut view = meta.read()?;
    let mut out = Vec::new();
    for (hour_name, hour) in hour_folders(view.as_mut(), folder)? {
        let mut after = 2;
        loop {
            let page = view.list_dir(hour, after, PAGE)?;
            for (name, entry) in &page {
                out.push(Raw {
                    hour,
                    hour_name: hour_name.clone(),
                    name: name.clone(),
                    entry: *entry,
                });
            }
            match page.last() {
                Some((_, last)) if page.len() == PAGE => after = last.cookie,
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Where a trashed inode came from: its directory and name.
fn origin(view: &mut dyn MetaRead, ino: Ino) -> FsResult<Option<(Ino, Vec<u8>)>> {
    let Some(v) = view.xattr(ino, ORIGIN_XATTR)? else {
        return Ok(None);
    };
    let slash = v.iter().position(|&b| b == b'/');
    Ok(slash.and_then(|i| {
        let dir = std::str::from_utf8(&v[..i]).ok()?.parse().ok()?;
        Some((dir, v[i + 1..].to_vec()))
    }))
}

/// The path of directory `dir` as things are now (through the trash for a trashed one).
pub(crate) fn path_of(view: &mut dyn MetaRead, dir: Ino, depth: usize) -> FsResult<Option<String>> {
    if dir == ROOT_INO {
        return Ok(Some(String::new()));
    }
    let Some(inode) = view.inode(dir)? else {
        return Ok(None);
    };
    if depth > 4096 {
        return Ok(None);
    }
    let (parent, name) = if holds(&inode) {
        match origin(view, dir)? {
            Some(o) => o,
            None => return Ok(None),
        }
    } else {
        // a live directory's name: found in its parent's entries
        let mut found = None;
        let mut after = 2;
        'pages: loop {
            let page = view.list_dir(inode.parent, after, PAGE)?;
            for (n, e) in &page {
                if e.ino == dir {
                    found = Some(n.clone());
                    break 'pages;
                }
            }
            match page.last() {
                Some((_, last)) if page.len() == PAGE => after = last.cookie,
                _ => break,
            }
        }
        match found {
            Some(n) => (inode.parent, n),
            None => return Ok(None),
        }
    };
    Ok(
        path_of(view, parent, depth + 1)?
            .map(|p| format!("{p}/{}", String::from_utf8_lossy(&name))),
    )
}

/// Whether `who` may see, restore and purge the trashed `inode`: root, and its owner.
fn owns(who: &Who, inode: &Inode) -> bool {
    who.is_root() || inode.uid == who.uid
}

/// What the trash holds that `who` owns (root: everything), oldest hour first.
pub fn list(meta: &dyn MetaStore, who: &Who) -> anyhow::Result<Vec<Entry>> {
    let Some(folder) = folder(meta)? else {
        return Ok(Vec::new());
    };
    let raw = raw_entries(meta, folder)?;
    let mut view = meta.read()?;
    let mut out = Vec::new();
    for r in raw {
        let Some(inode) = view.inode(r.entry.ino)?.filter(|i| owns(who, i)) else {
            continue;
        };
        let origin = match origin(view.as_mut(), inode.ino)? {
            Some((dir, n)) => path_of(view.as_mut(), dir, 0)?
                .map(|p| format!("{p}/{}", String::from_utf8_lossy(&n)))
                .unwrap_or_else(|| format!("(gone)/{}", String::from_utf8_lossy(&n))),
            None => "?".into(),
        };
        out.push(Entry {
            name: format!(
                "{}/{}",
                String::from_utf8_lossy(&r.hour_name),
                String::from_utf8_lossy(&r.name)
            ),
            ino: inode.ino,
            kind: format!("{:?}", inode.kind).to_lowercase(),
            size: inode.size,
            removed: inode.ctime.secs,
            uid: inode.uid,
            origin,
        });
    }
    Ok(out)
}

/// Whether entry `r` (as `hour/entry`) is picked by `names` (hour folders or entries; none:
/// all).
fn picked(r: &Raw, names: &[String]) -> bool {
    let hour = String::from_utf8_lossy(&r.hour_name);
    let full = format!("{hour}/{}", String::from_utf8_lossy(&r.name));
    names.is_empty() || names.iter().any(|n| *n == hour || *n == full)
}

/// What `restore` did.
#[derive(Debug, Default)]
pub struct Restored {
    pub restored: u64,
    /// Entries left in the trash, with why.
    pub skipped: Vec<String>,
}

/// Puts entries back where they were (`names`: hour folders or `hour/entry`; none: all), of
/// those `who` owns (root: all). A directory in the trash comes back before what was in it;
/// an entry whose name is taken again, whose directory is gone, or whose directory `who` may
/// not write, stays in the trash and is reported.
pub fn restore(meta: &dyn MetaStore, names: &[String], who: &Who) -> anyhow::Result<Restored> {
    let Some(folder) = folder(meta)? else {
        return Ok(Restored::default());
    };
    let raw = raw_entries(meta, folder)?;
    // where each trashed inode sits, to bring a trashed directory back first
    let place: std::collections::HashMap<Ino, (Ino, Vec<u8>)> = raw
        .iter()
        .map(|r| (r.entry.ino, (r.hour, r.name.clone())))
        .collect();
    let mut report = Restored::default();
    for r in raw.iter().filter(|r| picked(r, names)) {
        if !meta.read_inode(r.entry.ino)?.is_some_and(|i| owns(who, &i)) {
            continue;
        }
        let mut chain = vec![r.entry.ino];
        // directories in the trash above it, nearest first
        loop {
            let last = *chain.last().expect("not empty");
            let up = origin(meta.read()?.as_mut(), last)?.map(|(dir, _)| dir);
            match up {
                Some(dir) if place.contains_key(&dir) && !chain.contains(&dir) => chain.push(dir),
                _ => break,
            }
        }
        for &ino in chain.iter().rev() {
            let Some((hour, entry)) = place.get(&ino) else {
                continue;
            };
            match put_back(meta, *hour, entry, ino, who)? {
                Back::Done => report.restored += 1,
                Back::Already => {}
                Back::Skipped(why) => {
                    // (named by this entry only: a directory above it may be another's)
                    let why = match ino == r.entry.ino {
                        true => why.to_string(),
                        false => format!("its directory is in the trash too and {why}"),
                    };
                    report.skipped.push(format!(
                        "{}/{}: {why}",
                        String::from_utf8_lossy(&r.hour_name),
                        String::from_utf8_lossy(&r.name)
                    ));
                    break;
                }
            }
        }
    }
    Ok(report)
}

enum Back {
    Done,
    Already,
    Skipped(&'static str),
}

/// Moves one trashed inode from `hour/entry` back to its origin as `who`, in one transaction.
fn put_back(meta: &dyn MetaStore, hour: Ino, entry: &[u8], ino: Ino, who: &Who) -> FsResult<Back> {
    run_txn(meta, |tx| {
        let now = Timestamp::now();
        match tx.dirent(hour, entry)? {
            Some(e) if e.ino == ino => {}
            _ => return Ok(Back::Already),
        }
        let Some(mut inode) = tx.inode(ino)? else {
            return Ok(Back::Already);
        };
        if !owns(who, &inode) {
            return Ok(Back::Skipped("it is not yours"));
        }
        let Some((dir, name)) = origin(tx, ino)? else {
            return Ok(Back::Skipped("where it came from is not recorded"));
        };
        let (dir_inode, taken) = tx.inode_and_dirent(dir, &name)?;
        let mut dir_inode = match dir_inode {
            Some(d) if d.kind == FileKind::Dir && d.nlink > 0 && !holds(&d) => d,
            _ => return Ok(Back::Skipped("its directory is gone")),
        };
        // what `who` may do first: nothing about the directory's entries before that
        if !who.may(&dir_inode, WRITE | EXEC) {
            return Ok(Back::Skipped("you may not write its directory"));
        }
        // the way there must be searchable by `who`; and its directory may have moved into
        // it meanwhile (another mount renamed it there)
        let mut up = dir;
        for depth in 0.. {
            if up == ino || depth > 4096 {
                return Ok(Back::Skipped("its directory is inside it now"));
            }
            let Some(above) = tx.inode(up)? else {
                return Ok(Back::Skipped("its directory is gone"));
            };
            if !who.may(&above, EXEC) {
                return Ok(Back::Skipped("you may not reach its directory"));
            }
            if up == ROOT_INO {
                break;
            }
            up = above.parent;
        }
        if taken.is_some() {
            return Ok(Back::Skipped("its name is in use again"));
        }
        let mut hour_dir = tx.inode(hour)?.ok_or(FsError::NotFound)?;
        tx.delete_dirent(hour, entry)?;
        let cookie = dir_inode.take_cookie();
        tx.put_dirent(dir, &name, &DirEntry::new(ino, inode.kind, cookie))?;
        if inode.kind == FileKind::Dir {
            hour_dir.nlink -= 1;
            dir_inode.nlink += 1;
        }
        inode.parent = dir;
        inode.ctime = now;
        dir_inode.touch(now);
        hour_dir.touch(now);
        tx.delete_xattr(ino, ORIGIN_XATTR)?;
        tx.put_inode(&inode)?;
        tx.put_inode(&dir_inode)?;
        tx.put_inode(&hour_dir)?;
        Ok(Back::Done)
    })
}

/// Deletes one trashed inode (a directory with everything in it) from `hour/entry`.
fn drop_entry(meta: &dyn MetaStore, hour: Ino, entry: &[u8], e: DirEntry) -> FsResult<u64> {
    if e.kind == FileKind::Dir {
        // detached first, then removed in bounded steps (`tree::detached`)
        detached::record(meta, e.ino)?;
        let unlinked = run_txn(meta, |tx| {
            match tx.dirent(hour, entry)? {
                Some(found) if found.ino == e.ino => {}
                _ => return Ok(false),
            }
            tx.delete_dirent(hour, entry)?;
            if let Some(mut hour_dir) = tx.inode(hour)? {
                hour_dir.nlink = hour_dir.nlink.saturating_sub(1);
                tx.put_inode(&hour_dir)?;
            }
            if let Some(mut dir) = tx.inode(e.ino)? {
                dir.parent = 0;
                tx.put_inode(&dir)?;
            }
            Ok(true)
        })?;
        if !unlinked {
            // another removal took it: the record is that one's now
            return Ok(0);
        }
        return detached::remove(meta, e.ino);
    }
    run_txn(meta, |tx| {
        match tx.dirent(hour, entry)? {
            Some(found) if found.ino == e.ino => {}
            _ => return Ok(0),
        }
        tx.delete_dirent(hour, entry)?;
        match tx.inode(e.ino)? {
            Some(mut i) if i.nlink > 1 => {
                i.nlink -= 1;
                i.parent = 0;
                tx.delete_xattr(e.ino, ORIGIN_XATTR)?;
                tx.put_inode(&i)?;
                Ok(0)
            }
            Some(_) => {
                tx.delete_inode(e.ino)?;
                Ok(1)
            }
            None => Ok(0),
        }
    })
}

/// Deletes the picked entries (`names` as for `restore`; none: all) that `who` owns (root:
/// all) for good, with the hour folders left empty; the number of inodes deleted. gc then
/// frees their blocks.
pub fn purge(
    meta: &dyn MetaStore,
    names: &[String],
    in_use: &dyn Fn(Ino) -> bool,
    who: &Who,
) -> anyhow::Result<u64> {
    remove_where(meta, in_use, |r, inode| {
        picked(r, names) && inode.is_some_and(|i| owns(who, i))
    })
}

/// Deletes the entries removed more than the volume's `trash_days` ago, with the hour folders
/// whose hour is over and that are left empty. Every mount runs it now and then.
pub fn expire(meta: &dyn MetaStore, in_use: &dyn Fn(Ino) -> bool) -> anyhow::Result<u64> {
    let Some(keep) = keep(meta)? else {
        return Ok(0);
    };
    let now = Timestamp::now().secs;
    let keep = keep.as_secs() as i64;
    remove_where(meta, in_use, |r, inode| {
        let old_hour = hour_start(&r.hour_name).is_some_and(|start| start + keep <= now);
        old_hour && inode.is_some_and(|i| i.ctime.secs + keep <= now)
    })
}

fn remove_where(
    meta: &dyn MetaStore,
    in_use: &dyn Fn(Ino) -> bool,
    pick: impl Fn(&Raw, Option<&Inode>) -> bool,
) -> anyhow::Result<u64> {
    let Some(folder) = folder(meta)? else {
        return Ok(0);
    };
    let mut removed = 0;
    for r in raw_entries(meta, folder)? {
        let inode = meta.read_inode(r.entry.ino)?;
        // a file removed while open stays until it is closed
        if pick(&r, inode.as_ref()) && !in_use(r.entry.ino) {
            removed += drop_entry(meta, r.hour, &r.name, r.entry)?;
        }
    }
    // hour folders left empty, once their hour is over
    let now = Timestamp::now().secs;
    let hours = hour_folders(meta.read()?.as_mut(), folder)?;
    for (hour_name, hour) in hours {
        if hour_start(&hour_name).is_none_or(|start| start + 3600 > now) {
            continue;
        }
        run_txn(meta, |tx| {
            if !tx.dir_is_empty(hour)? {
                return Ok(());
            }
            let Some(mut top) = tx.inode(folder)? else {
                return Ok(());
            };
            tx.delete_dirent(folder, &hour_name)?;
            tx.delete_inode(hour)?;
            top.nlink = top.nlink.saturating_sub(1);
            tx.put_inode(&top).map_err(FsError::from)
        })?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_folders_are_named_by_the_utc_hour_and_read_back() {
        let t = Timestamp {
            secs: 1_796_680_000,
            nanos: 0,
        };
        let name = hour_name(t);
        assert_eq!(name.len(), 13);
        let start = hour_start(name.as_bytes()).unwrap();
        assert!(start <= t.secs && t.secs < start + 3600);
        assert_eq!(hour_start(b"lost+found"), None);
        assert_eq!(parse_days("0.5"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_days("-1"), None);
        assert_eq!(parse_days("soon"), None);
    }
}
