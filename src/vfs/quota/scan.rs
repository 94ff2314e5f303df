//! Counting usage by walking trees: a directory moved to another quota's tree (inside its
//! transaction), a new quota (`start`), and the recount `graviton fsck` compares with the
//! records.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::*;
use crate::meta::{MetaResult, MetaStore};
use crate::vfs::tree::{PAGE, detached};

/// Bytes and inodes.
pub type Usage = (i64, i64);

/// What the tree below `dir` (not `dir` itself) counts against `dir`'s quotas: every inode
/// found there whose home is in the tree. Taken from `dir`'s own record when it has a
/// counted quota.
pub fn below(tx: &mut dyn MetaRead, map: &Map, dir: Ino) -> FsResult<Usage> {
    if map.contains(&Key::Dir(dir))
        && let Some(rec) = record(tx, Key::Dir(dir))?
        && !rec.counting
    {
        return Ok((rec.bytes, rec.inodes));
    }
    let mut tree: HashSet<Ino> = HashSet::from([dir]);
    let mut seen: HashSet<Ino> = HashSet::new();
    let (mut todo, mut total) = (vec![dir], (0, 0));
    while let Some(d) = todo.pop() {
        each_entry(tx, d, |tx, e| {
            let Some(inode) = tx.inode(e.ino)? else {
                return Ok(());
            };
            if inode.kind == FileKind::Dir {
                tree.insert(e.ino);
                todo.push(e.ino);
            }
            if counts(&inode) && tree.contains(&inode.parent) && seen.insert(e.ino) {
                let r = match inode.kind {
                    FileKind::File => reserved(tx, e.ino)?,
                    _ => 0,
                };
                total.0 += charge(&inode, r) as i64;
                total.1 += 1;
            }
            Ok(())
        })?;
    }
    Ok(total)
}

/// Calls `f` with each entry of `dir`, a page at a time.
fn each_entry(
    tx: &mut dyn MetaRead,
    dir: Ino,
    mut f: impl FnMut(&mut dyn MetaRead, crate::meta::DirEntry) -> FsResult<()>,
) -> FsResult<()> {
    let mut after = 0;
    loop {
        let page = tx.list_dir(dir, after, PAGE)?;
        for (_, e) in &page {
            f(tx, *e)?;
        }
        match page.last() {
            Some((_, e)) if page.len() == PAGE => after = e.cookie,
            _ => return Ok(()),
        }
    }
}

/// Usage of each quota of `wanted`, counted from one consistent view: every inode reachable
/// from the root, from trees being copied, and from the trash, each once (snapshots hold
/// nothing that counts and are not walked). `trash`: the trash folder, if made.
/// Files found holding a reservation go in `reserving`.
pub fn tally(
    view: &mut dyn MetaRead,
    map: &Map,
    wanted: &Map,
    starts: &[Ino],
    trash: Option<Ino>,
    reserving: &mut Vec<Ino>,
) -> FsResult<BTreeMap<Key, Usage>> {
    let mut out: BTreeMap<Key, Usage> = wanted.iter().map(|k| (*k, (0, 0))).collect();
    let mut chains: HashMap<Ino, Vec<Ino>> = HashMap::new();
    let mut seen: HashSet<Ino> = HashSet::new();
    let mut todo: Vec<Ino> = Vec::new();
    let mut visit = |view: &mut dyn MetaRead, inode: Inode, todo: &mut Vec<Ino>| -> FsResult<()> {
        if inode.kind == FileKind::Dir
            && (!is_frozen(inode.ino) || Some(inode.ino) == trash || Some(inode.parent) == trash)
        {
            todo.push(inode.ino);
        }
        if !counts(&inode) || !seen.insert(inode.ino) {
            return Ok(());
        }
        let dirs = match chains.get(&inode.parent) {
            Some(c) => c.clone(),
            None => {
                let c = dirs_above(view, map, inode.parent)?;
                chains.insert(inode.parent, c.clone());
                c
            }
        };
        let r = match inode.kind {
            FileKind::File => reserved(view, inode.ino)?,
            _ => 0,
        };
        if r > 0 {
            reserving.push(inode.ino);
        }
        let bytes = charge(&inode, r) as i64;
        let trashed = crate::vfs::tree::trash::holds(&inode).then_some(Key::Trash);
        let keys = dirs
            .into_iter()
            .map(Key::Dir)
            .chain([Key::Volume, Key::User(inode.uid), Key::Group(inode.gid)])
            .chain(trashed);
        for k in keys {
            if let Some(u) = out.get_mut(&k) {
                u.0 += bytes;
                u.1 += 1;
            }
        }
        Ok(())
    };
    for &start in starts {
        if let Some(inode) = view.inode(start)? {
            visit(view, inode, &mut todo)?;
        }
    }
    while let Some(d) = todo.pop() {
        each_entry(view, d, |view, e| match view.inode(e.ino)? {
            Some(inode) => visit(view, inode, &mut todo),
            None => Ok(()),
        })?;
    }
    Ok(out)
}

/// Where a count of `key` starts: its directory, or the root and the trees being copied.
pub fn starts(meta: &dyn MetaStore, key: Key) -> FsResult<Vec<Ino>> {
    Ok(match key {
        Key::Dir(d) => vec![d],
        _ => {
            let mut s = vec![ROOT_INO];
            s.extend(detached::roots(meta)?.into_iter().map(|(root, _)| root));
            s
        }
    })
}

/// What a count found: the usage of each quota, with its record as the counted view held it.
pub type Counts = BTreeMap<Key, (Usage, Option<Record>)>;

/// The usage of each of `keys` as a count from one view finds it, with each record as that
/// view holds it; and the files holding a reservation.
pub fn recount(meta: &dyn MetaStore, keys: &Map) -> FsResult<(Counts, Vec<Ino>)> {
    let trash = crate::vfs::tree::trash::folder(meta)?;
    let mut view = meta.snapshot()?;
    let map = map(view.as_mut())?;
    let mut out = BTreeMap::new();
    let whole: Map = keys
        .iter()
        .filter(|k| !matches!(k, Key::Dir(_)))
        .copied()
        .collect();
    let mut groups: Vec<(Map, Vec<Ino>)> = Vec::new();
    if !whole.is_empty() {
        groups.push((whole, starts(meta, Key::Volume)?));
    }
    for k in keys {
        if let Key::Dir(d) = k {
            groups.push((Map::from([*k]), vec![*d]));
        }
    }
    let mut reserving = Vec::new();
    for (wanted, from) in groups {
        for (k, usage) in tally(view.as_mut(), &map, &wanted, &from, trash, &mut reserving)? {
            let rec = record(view.as_mut(), k)?;
            out.insert(k, (usage, rec));
        }
    }
    reserving.sort_unstable();
    reserving.dedup();
    Ok((out, reserving))
}

/// Makes the quota `key` with these limits, or changes the limits of the one there. A new
/// quota counts from the moment it is made: it is recorded (as counting, refusing nothing)
/// in one transaction, so every later change is added to it; a count of the tree from a view
/// taken after that then adds what was there before, less what the record already held in
/// that view.
pub fn set(meta: &dyn MetaStore, key: Key, bytes_limit: u64, inodes_limit: u64) -> FsResult<()> {
    if let Key::Dir(d) = key
        && !map(meta.read()?.as_mut())?.contains(&key)
    {
        adopt(meta, d)?;
    }
    let fresh = crate::vfs::run_txn(meta, |tx| {
        if let Key::Dir(d) = key {
            tx.inode(d)?
                .filter(|i| i.kind == FileKind::Dir && counts(i))
                .ok_or(FsError::NotDir)?;
        }
        let mut map = map(tx)?;
        let fresh = map.insert(key);
        let mut rec = record(tx, key)?.unwrap_or_default();
        if fresh {
            rec = Record {
                counting: true,
                ..Record::default()
            };
            put_map(tx, &map)?;
        }
        rec.bytes_limit = bytes_limit;
        rec.inodes_limit = inodes_limit;
        put_record(tx, key, &rec)?;
        Ok(fresh || rec.counting)
    })?;
    if fresh {
        finish_count(meta, key)?;
    }
    if key == Key::Volume && !map(meta.read()?.as_mut())?.contains(&Key::Trash) {
        // the volume's capacity comes with the count of the trash (`df` leaves it out of
        // what is used)
        set(meta, Key::Trash, 0, 0)?;
    }
    Ok(())
}

/// Gives a home to the files below `dir` that have none (made by a version of Graviton that
/// recorded no homes): the directory they are found in, one page of entries a transaction.
fn adopt(meta: &dyn MetaStore, dir: Ino) -> FsResult<()> {
    let mut todo = vec![dir];
    while let Some(d) = todo.pop() {
        let mut view = meta.read()?;
        let mut homeless = Vec::new();
        each_entry(view.as_mut(), d, |view, e| {
            match e.kind {
                FileKind::Dir => todo.push(e.ino),
                _ => {
                    if view
                        .inode(e.ino)?
                        .is_some_and(|i| i.parent == 0 && counts(&i))
                    {
                        homeless.push(e.ino);
                    }
                }
            }
            Ok(())
        })?;
        for some in homeless.chunks(PAGE) {
            crate::vfs::run_txn(meta, |tx| {
                for &ino in some {
                    if let Some(mut inode) = tx.inode(ino)?.filter(|i| i.parent == 0) {
                        inode.parent = d;
                        tx.put_inode(&inode)?;
                    }
                }
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Counts a quota made by `set` and starts enforcing it.
fn finish_count(meta: &dyn MetaStore, key: Key) -> FsResult<()> {
    repair(meta, &recount(meta, &Map::from([key]))?.0)
}

/// Removes the quota `key` (the volume's with the trash's count); false when there was none.
pub fn remove(meta: &dyn MetaStore, key: Key) -> FsResult<bool> {
    crate::vfs::run_txn(meta, |tx| {
        let mut map = map(tx)?;
        if !map.remove(&key) {
            return Ok(false);
        }
        if key == Key::Volume && map.remove(&Key::Trash) {
            delete_record(tx, Key::Trash)?;
        }
        put_map(tx, &map)?;
        delete_record(tx, key)?;
        Ok(true)
    })
}

/// Sets each quota's usage to what `counted` found (fsck's repair), keeping the changes made
/// since the view counted: each record moves by the count less what the view held.
pub fn repair(meta: &dyn MetaStore, counted: &Counts) -> FsResult<()> {
    crate::vfs::run_txn(meta, |tx| {
        for (key, ((bytes, inodes), seen)) in counted {
            let (Some(seen), Some(mut rec)) = (seen, record(tx, *key)?) else {
                continue;
            };
            rec.bytes += bytes - seen.bytes;
            rec.inodes += inodes - seen.inodes;
            rec.counting = false;
            put_record(tx, *key, &rec)?;
        }
        Ok(())
    })
}

/// Every quota with its record.
pub fn list(meta: &dyn MetaStore) -> MetaResult<Vec<(Key, Record)>> {
    let mut view = meta.read()?;
    let map = map(view.as_mut()).map_err(meta_error)?;
    let mut out = Vec::new();
    for k in map {
        if let Some(r) = record(view.as_mut(), k).map_err(meta_error)? {
            out.push((k, r));
        }
    }
    Ok(out)
}
