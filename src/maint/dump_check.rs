//! The checks `graviton load` makes on a whole dump before it writes anything: a dump that is
//! cut short, damaged or made by hand to break the file system's rules is refused with the
//! first problem found (its line, or the inode), and the target volume stays as it was.
//!
//! Each line is checked as it is read: names (not empty, not `.` or `..`, no `/` or NUL, at
//! most 255 bytes), duplicate records, extents (inside their blocks, not overlapping), xattrs,
//! symlink targets, blocks against their keys, and the end record's counts. Then the records
//! are checked against each other: every entry names an inode of the kind it says, in a
//! directory; every directory but the root has exactly one name and is reached from the root
//! (no cycles); every inode is named; directories record their parent; link counts are what
//! the entries make them; a file's extents end within its size and are as many as it counts.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;

use crate::domain::{BlockKey, HashAlgo};
use crate::meta::{FIRST_COOKIE, FileKind, Ino, Inode, ROOT_INO};
use crate::vfs::{MAX_FILE_SIZE, NAME_MAX, PATH_MAX};

use super::dump::{Bytes, MappedSpan, Record};

/// Longest xattr name and value the file system takes (Linux's limits).
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;

/// Reads the whole dump and checks it; the first problem is the error.
pub fn check(input: impl BufRead) -> anyhow::Result<()> {
    let mut dump = Dump::default();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        let record: Record =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("dump line {}: {e}", n + 1))?;
        dump.record(n + 1, record)
            .map_err(|e| anyhow::anyhow!("dump line {}: {e}", n + 1))?;
    }
    anyhow::ensure!(
        dump.ended,
        "the dump is incomplete (it does not end with its end record)"
    );
    dump.whole()
}

/// The sealed blocks of an encrypted volume's dump, each opened with the volume's key
/// (`at_rest`, the volume the dump goes into having taken the dump's key) and checked against
/// its key: `check` could not, without the key.
pub fn check_sealed_blocks(
    input: impl BufRead,
    at_rest: &crate::store::at_rest::AtRest,
) -> anyhow::Result<()> {
    for (n, line) in input.lines().enumerate() {
        if let Record::Block { key, data } = serde_json::from_str(&line?)? {
            let key: BlockKey = key.parse()?;
            anyhow::ensure!(
                at_rest.holds(&key, &hex::decode(data)?),
                "dump line {}: block {key} does not open, or does not match its key",
                n + 1
            );
        }
    }
    Ok(())
}

/// What a directory entry says, and where.
struct Entry {
    line: usize,
    parent: Ino,
    name: Vec<u8>,
    ino: Ino,
    kind: FileKind,
    cookie: u64,
}

/// A file's extents record, summed up.
struct Extents {
    line: usize,
    count: u64,
    end: u64,
}

/// What the lines read so far hold.
#[derive(Default)]
struct Dump {
    hash: Option<HashAlgo>,
    /// Each inode and the line it is on.
    inodes: HashMap<Ino, (usize, Inode)>,
    entries: Vec<Entry>,
    names: HashSet<(Ino, Vec<u8>)>,
    cookies: HashSet<(Ino, u64)>,
    extents: HashMap<Ino, Extents>,
    xattrs: HashSet<(Ino, Vec<u8>)>,
    /// Inodes an xattr, symlink or quota record is about, with its line and the kind it needs.
    about: Vec<(usize, Ino, Option<FileKind>)>,
    symlinks: HashSet<Ino>,
    blocks: u64,
    ended: bool,
    /// Block records are sealed (an encrypted volume's dump): checked against their keys only
    /// once `load` has the key to open them.
    sealed: bool,
}

impl Dump {
    /// Checks one record on its own and keeps what the whole-dump checks need.
    fn record(&mut self, line: usize, record: Record) -> anyhow::Result<()> {
        anyhow::ensure!(!self.ended, "a record after the end record");
        if line == 1 {
            let Record::Header {
                format,
                hash,
                data_key,
                ..
            } = record
            else {
                anyhow::bail!("not a graviton dump: the first line is not its header");
            };
            super::dump::readable(format)?;
            self.hash = Some(hash.parse()?);
            self.sealed = data_key.is_some();
            return Ok(());
        }
        match record {
            Record::Header { .. } => anyhow::bail!("a second header"),
            Record::Inode(inode) => self.inode(line, inode),
            Record::Entry {
                parent,
                name,
                ino,
                kind,
                cookie,
            } => self.entry(Entry {
                line,
                parent,
                name: name.to_vec()?,
                ino,
                kind,
                cookie,
            }),
            Record::Extents { ino, extents } => self.extents(line, ino, &extents),
            Record::Xattr { ino, name, value } => self.xattr(line, ino, &name, &value),
            Record::Symlink { ino, target } => self.symlink(line, ino, &target),
            Record::Block { key, data } => self.block(&key, &data),
            Record::Quota { key, .. } => {
                if let crate::vfs::quota::Key::Dir(d) = key {
                    self.about.push((line, d, Some(FileKind::Dir)));
                }
                Ok(())
            }
            Record::End {
                inodes,
                entries,
                blocks,
            } => {
                let have = (
                    self.inodes.len() as u64,
                    self.entries.len() as u64,
                    self.blocks,
                );
                anyhow::ensure!(
                    (inodes, entries, blocks) == have,
                    "the end record counts {inodes} inodes, {entries} entries and {blocks} blocks, the lines before it {}, {} and {}",
                    have.0,
                    have.1,
                    have.2
                );
                self.ended = true;
                Ok(())
            }
        }
    }

    fn inode(&mut self, line: usize, inode: Inode) -> anyhow::Result<()> {
        let ino = inode.ino;
        anyhow::ensure!(ino != 0, "inode number 0");
        if let Some((first, _)) = self.inodes.get(&ino) {
            anyhow::bail!("inode {ino} again (first on line {first})");
        }
        self.inodes.insert(ino, (line, inode));
        Ok(())
    }

    fn entry(&mut self, e: Entry) -> anyhow::Result<()> {
        let shown = String::from_utf8_lossy(&e.name).into_owned();
        let at = format!("the name {shown:?} in directory {}", e.parent);
        check_name(&e.name).map_err(|why| anyhow::anyhow!("{at} {why}"))?;
        anyhow::ensure!(e.ino != 0, "{at} names inode 0");
        anyhow::ensure!(
            self.names.insert((e.parent, e.name.clone())),
            "{at} is there twice"
        );
        anyhow::ensure!(
            e.cookie >= FIRST_COOKIE,
            "{at} has readdir cookie {}, below {FIRST_COOKIE}",
            e.cookie
        );
        anyhow::ensure!(
            self.cookies.insert((e.parent, e.cookie)),
            "{at} has readdir cookie {}, which another entry there has",
            e.cookie
        );
        self.entries.push(e);
        Ok(())
    }

    fn extents(&mut self, line: usize, ino: Ino, spans: &[MappedSpan]) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.extents.contains_key(&ino),
            "inode {ino}: a second extents record"
        );
        let mut ranges = Vec::with_capacity(spans.len());
        for span in spans {
            let e = span.extent()?;
            self.same_hash(&e.key)?;
            let at = format!("inode {ino}: the extent at offset {}", e.offset);
            anyhow::ensure!(e.len > 0, "{at} is empty");
            anyhow::ensure!(
                e.block_offset as u64 + e.len as u64 <= e.key.size as u64,
                "{at} reaches past the end of its block ({} + {} > {})",
                e.block_offset,
                e.len,
                e.key.size
            );
            let end = e.offset.checked_add(e.len as u64);
            anyhow::ensure!(
                end.is_some_and(|end| end <= MAX_FILE_SIZE),
                "{at} ends past the largest file size ({MAX_FILE_SIZE})"
            );
            ranges.push(e.range());
        }
        ranges.sort_by_key(|r| r.start);
        for pair in ranges.windows(2) {
            anyhow::ensure!(
                pair[0].end <= pair[1].start,
                "inode {ino}: extents overlap at offset {}",
                pair[1].start
            );
        }
        let extents = Extents {
            line,
            count: ranges.len() as u64,
            end: ranges.last().map_or(0, |r| r.end),
        };
        self.extents.insert(ino, extents);
        Ok(())
    }

    fn xattr(&mut self, line: usize, ino: Ino, name: &Bytes, value: &Bytes) -> anyhow::Result<()> {
        let name = name.to_vec()?;
        let shown = String::from_utf8_lossy(&name).into_owned();
        anyhow::ensure!(
            !name.is_empty() && !name.contains(&0) && name.len() <= XATTR_NAME_MAX,
            "inode {ino}: the xattr name {shown:?} is empty, holds a NUL or is longer than {XATTR_NAME_MAX} bytes"
        );
        anyhow::ensure!(
            value.to_vec()?.len() <= XATTR_SIZE_MAX,
            "inode {ino}: the xattr {shown:?} is longer than {XATTR_SIZE_MAX} bytes"
        );
        anyhow::ensure!(
            self.xattrs.insert((ino, name)),
            "inode {ino}: the xattr {shown:?} again"
        );
        self.about.push((line, ino, None));
        Ok(())
    }

    fn symlink(&mut self, line: usize, ino: Ino, target: &Bytes) -> anyhow::Result<()> {
        let target = target.to_vec()?;
        anyhow::ensure!(
            !target.is_empty() && !target.contains(&0) && target.len() <= PATH_MAX,
            "inode {ino}: the symlink target is empty, holds a NUL or is longer than {PATH_MAX} bytes"
        );
        anyhow::ensure!(
            self.symlinks.insert(ino),
            "inode {ino}: a second symlink target"
        );
        self.about.push((line, ino, Some(FileKind::Symlink)));
        Ok(())
    }

    fn block(&mut self, key: &str, data: &str) -> anyhow::Result<()> {
        let key: BlockKey = key.parse()?;
        self.same_hash(&key)?;
        let data = hex::decode(data)?;
        anyhow::ensure!(
            self.sealed || key.matches(&data),
            "block {key} does not match its key"
        );
        self.blocks += 1;
        Ok(())
    }

    /// Blocks are named by the hash the header gives.
    fn same_hash(&self, key: &BlockKey) -> anyhow::Result<()> {
        let hash = self.hash.expect("the header came first");
        anyhow::ensure!(
            key.algo == hash,
            "block {key} is named by {}, the dump's blocks by {hash}",
            key.algo
        );
        Ok(())
    }

    /// The checks of records against each other, once every line is read.
    fn whole(&self) -> anyhow::Result<()> {
        let root = self.inode_of(ROOT_INO).filter(|n| n.kind == FileKind::Dir);
        anyhow::ensure!(root.is_some(), "the dump has no root directory");
        let parents = self.entries_agree()?;
        self.extents_and_targets_agree()?;
        let names = self.name_counts();
        let mut inodes: Vec<&(usize, Inode)> = self.inodes.values().collect();
        inodes.sort_by_key(|(line, _)| *line);
        for (line, inode) in &inodes {
            anyhow::ensure!(
                inode.ino == ROOT_INO || names.contains_key(&inode.ino),
                "dump line {line}: inode {} is named by no entry",
                inode.ino
            );
        }
        self.tree_is_whole(&parents)?;
        self.link_counts_agree(&inodes, &names)
    }

    fn inode_of(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(&ino).map(|(_, n)| n)
    }

    /// How many entries name each inode.
    fn name_counts(&self) -> HashMap<Ino, u32> {
        let mut counts = HashMap::new();
        for e in &self.entries {
            *counts.entry(e.ino).or_default() += 1;
        }
        counts
    }

    /// Every entry is in a directory and names an inode of its kind; a directory has one
    /// name (the root none). Returns each directory's parent.
    fn entries_agree(&self) -> anyhow::Result<HashMap<Ino, Ino>> {
        let mut parents: HashMap<Ino, Ino> = HashMap::new();
        for e in &self.entries {
            let shown = String::from_utf8_lossy(&e.name).into_owned();
            let at = format!(
                "dump line {}: the entry {shown:?} in directory {}",
                e.line, e.parent
            );
            let Some(dir) = self.inode_of(e.parent) else {
                anyhow::bail!("{at}: directory {} is not in the dump", e.parent);
            };
            anyhow::ensure!(
                dir.kind == FileKind::Dir,
                "{at}: inode {} is {:?}, not a directory",
                e.parent,
                dir.kind
            );
            anyhow::ensure!(
                e.cookie < dir.next_cookie,
                "{at}: readdir cookie {} is not below the directory's next one ({})",
                e.cookie,
                dir.next_cookie
            );
            let Some(inode) = self.inode_of(e.ino) else {
                anyhow::bail!("{at}: inode {} is not in the dump", e.ino);
            };
            anyhow::ensure!(
                inode.kind == e.kind,
                "{at} says {:?}, inode {} is {:?}",
                e.kind,
                e.ino,
                inode.kind
            );
            anyhow::ensure!(e.ino != ROOT_INO, "{at} names the root directory");
            if inode.kind == FileKind::Dir
                && let Some(first) = parents.insert(e.ino, e.parent)
            {
                anyhow::bail!(
                    "dump line {}: directory {} has a second name ({shown:?} in directory {}; the first is in directory {first})",
                    e.line,
                    e.ino,
                    e.parent
                );
            }
        }
        Ok(parents)
    }

    /// Extents are a file's, end within its size and are as many as it counts; symlink
    /// targets are a symlink's; xattrs are an inode's in the dump.
    fn extents_and_targets_agree(&self) -> anyhow::Result<()> {
        let mut files: Vec<(&Ino, &Extents)> = self.extents.iter().collect();
        files.sort_by_key(|(_, x)| x.line);
        for (&ino, x) in files {
            let at = format!("dump line {}: inode {ino}", x.line);
            let Some(inode) = self.inode_of(ino) else {
                anyhow::bail!("{at}: extents of an inode not in the dump");
            };
            anyhow::ensure!(
                inode.kind == FileKind::File,
                "{at}: extents of a {:?}",
                inode.kind
            );
            anyhow::ensure!(
                x.end <= inode.size,
                "{at}: extents reach byte {}, past the file's size ({})",
                x.end,
                inode.size
            );
            anyhow::ensure!(
                x.count == inode.extent_count,
                "{at}: {} extents where the inode counts {}",
                x.count,
                inode.extent_count
            );
        }
        for (&ino, (line, inode)) in &self.inodes {
            anyhow::ensure!(
                inode.kind != FileKind::File
                    || inode.extent_count == 0
                    || self.extents.contains_key(&ino),
                "dump line {line}: inode {ino} counts {} extents and has no extents record",
                inode.extent_count
            );
        }
        for &(line, ino, kind) in &self.about {
            let Some(inode) = self.inode_of(ino) else {
                anyhow::bail!("dump line {line}: inode {ino} is not in the dump");
            };
            if let Some(kind) = kind {
                anyhow::ensure!(
                    inode.kind == kind,
                    "dump line {line}: inode {ino} is {:?}, not {kind:?}",
                    inode.kind
                );
            }
        }
        Ok(())
    }

    /// Every directory is reached from the root, through the parents it records.
    fn tree_is_whole(&self, parents: &HashMap<Ino, Ino>) -> anyhow::Result<()> {
        let mut children: HashMap<Ino, Vec<Ino>> = HashMap::new();
        for (&dir, &parent) in parents {
            children.entry(parent).or_default().push(dir);
        }
        let mut reached: HashSet<Ino> = HashSet::from([ROOT_INO]);
        let mut todo = vec![ROOT_INO];
        while let Some(dir) = todo.pop() {
            for &child in children.get(&dir).into_iter().flatten() {
                reached.insert(child);
                todo.push(child);
            }
        }
        let mut cut_off: Vec<Ino> = parents
            .keys()
            .filter(|d| !reached.contains(d))
            .copied()
            .collect();
        cut_off.sort_unstable();
        if let Some(&first) = cut_off.first() {
            let line = self
                .entries
                .iter()
                .find(|e| e.ino == first)
                .map_or(0, |e| e.line);
            anyhow::bail!(
                "dump line {line}: directories {} form a cycle cut off from the root (inode {first} is named here)",
                cycle(first, parents)
            );
        }
        let mut dirs: Vec<(&Ino, &Ino)> = parents.iter().collect();
        dirs.sort_unstable();
        for (&dir, &parent) in dirs {
            let (line, inode) = &self.inodes[&dir];
            anyhow::ensure!(
                inode.parent == parent,
                "dump line {line}: directory {dir} records {} as its parent; its entry is in {parent}",
                inode.parent
            );
        }
        let (line, root) = &self.inodes[&ROOT_INO];
        anyhow::ensure!(
            root.parent == ROOT_INO,
            "dump line {line}: the root records {} as its parent, not itself",
            root.parent
        );
        Ok(())
    }

    /// A file's links are its names; a directory's 2 and one per subdirectory.
    fn link_counts_agree(
        &self,
        inodes: &[&(usize, Inode)],
        names: &HashMap<Ino, u32>,
    ) -> anyhow::Result<()> {
        let mut subdirs: HashMap<Ino, u32> = HashMap::new();
        for e in self.entries.iter().filter(|e| e.kind == FileKind::Dir) {
            *subdirs.entry(e.parent).or_default() += 1;
        }
        for (line, inode) in inodes {
            let ino = inode.ino;
            let at = format!("dump line {line}: inode {ino}: link count {}", inode.nlink);
            if inode.kind == FileKind::Dir {
                let n = subdirs.get(&ino).copied().unwrap_or(0);
                anyhow::ensure!(
                    inode.nlink == 2 + n,
                    "{at} where the dump gives it {n} subdirectories ({} links)",
                    2 + n
                );
            } else {
                let n = names.get(&ino).copied().unwrap_or(0);
                anyhow::ensure!(inode.nlink == n, "{at} where the dump names it {n} times");
            }
        }
        Ok(())
    }
}

/// The directories on the cycle `dir` leads up into (every directory cut off from the root
/// has a parent, so following them loops), sorted and joined.
fn cycle(dir: Ino, parents: &HashMap<Ino, Ino>) -> String {
    let mut path = vec![dir];
    let mut at = dir;
    loop {
        at = parents[&at];
        if let Some(i) = path.iter().position(|&d| d == at) {
            let mut on: Vec<Ino> = path[i..].to_vec();
            on.sort_unstable();
            return on
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ");
        }
        path.push(at);
    }
}

/// Why a directory entry's name is refused (as creating it would be).
fn check_name(name: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name == b"." || name == b".." {
        return Err("is reserved".into());
    }
    if name.contains(&b'/') {
        return Err("contains '/'".into());
    }
    if name.contains(&0) {
        return Err("contains a NUL byte".into());
    }
    if name.len() > NAME_MAX {
        return Err(format!("is longer than {NAME_MAX} bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Extent;
    use crate::meta::Timestamp;

    fn inode(ino: Ino, kind: FileKind, parent: Ino) -> Record {
        let mut n = Inode::new(ino, kind, 0o644, 0, 0, Timestamp { secs: 0, nanos: 0 });
        n.parent = parent;
        n.next_cookie = 10;
        if kind == FileKind::Dir {
            n.nlink = 2;
        }
        Record::Inode(n)
    }

    fn entry(parent: Ino, name: &[u8], ino: Ino, kind: FileKind, cookie: u64) -> Record {
        Record::Entry {
            parent,
            name: Bytes::new(name),
            ino,
            kind,
            cookie,
        }
    }

    /// `/dir/file` (100 bytes in one extent) and `/link`.
    fn good() -> Vec<Record> {
        let key = BlockKey::for_data(HashAlgo::Blake3, &[7; 200]);
        let Record::Inode(mut root) = inode(ROOT_INO, FileKind::Dir, ROOT_INO) else {
            unreachable!()
        };
        root.nlink = 3;
        let Record::Inode(mut file) = inode(3, FileKind::File, 0) else {
            unreachable!()
        };
        file.size = 100;
        file.extent_count = 1;
        let extent = Extent {
            offset: 0,
            key,
            block_offset: 50,
            len: 100,
        };
        vec![
            Record::Header {
                format: super::super::dump::DUMP_FORMAT,
                hash: "blake3".into(),
                chunker: "fixed".into(),
                block_store: String::new(),
                small_blocks: 0,
                compression: None,
                data_key: None,
                settings: Default::default(),
            },
            Record::Inode(root),
            entry(ROOT_INO, b"dir", 2, FileKind::Dir, 3),
            entry(ROOT_INO, b"link", 4, FileKind::Symlink, 4),
            inode(2, FileKind::Dir, ROOT_INO),
            entry(2, b"file", 3, FileKind::File, 3),
            Record::Inode(file),
            Record::Extents {
                ino: 3,
                extents: vec![MappedSpan::new(&extent)],
            },
            inode(4, FileKind::Symlink, 0),
            Record::Symlink {
                ino: 4,
                target: Bytes::new(b"dir/file"),
            },
            Record::End {
                inodes: 4,
                entries: 3,
                blocks: 0,
            },
        ]
    }

    fn checked(records: &[Record]) -> Result<(), String> {
        let text: String = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        check(text.as_bytes()).map_err(|e| e.to_string())
    }

    /// The check of `good()` changed by `edit` (the end record counting what is left) fails,
    /// saying `what`.
    fn refused(edit: impl FnOnce(&mut Vec<Record>), what: &str) {
        let mut records = good();
        edit(&mut records);
        let count = |f: fn(&Record) -> bool| records.iter().filter(|r| f(r)).count() as u64;
        let (n, e) = (
            count(|r| matches!(r, Record::Inode(_))),
            count(|r| matches!(r, Record::Entry { .. })),
        );
        if let Some(Record::End {
            inodes, entries, ..
        }) = records.last_mut()
        {
            (*inodes, *entries) = (n, e);
        }
        let err = checked(&records).expect_err(what);
        assert!(err.contains(what), "{err}");
    }

    fn inode_mut(records: &mut [Record], ino: Ino) -> &mut Inode {
        records
            .iter_mut()
            .find_map(|r| match r {
                Record::Inode(n) if n.ino == ino => Some(n),
                _ => None,
            })
            .unwrap()
    }

    fn rename(records: &mut [Record], to: &[u8]) {
        if let Record::Entry { name, .. } = &mut records[5] {
            *name = Bytes::new(to);
        }
    }

    #[test]
    fn a_whole_dump_passes() {
        checked(&good()).unwrap();
    }

    #[test]
    fn bad_names_are_refused_with_their_line() {
        refused(
            |r| rename(r, b""),
            "dump line 6: the name \"\" in directory 2 is empty",
        );
        refused(|r| rename(r, b"."), "is reserved");
        refused(|r| rename(r, b"a/b"), "contains '/'");
        refused(|r| rename(r, b"a\0b"), "contains a NUL byte");
        refused(|r| rename(r, &[b'x'; 256]), "is longer than 255 bytes");
        checked(&{
            let mut r = good();
            rename(&mut r, &[b'x'; 255]);
            r
        })
        .unwrap();
    }

    #[test]
    fn the_tree_must_be_whole() {
        refused(
            |r| r.insert(3, entry(ROOT_INO, b"again", 2, FileKind::Dir, 5)),
            "directory 2 has a second name",
        );
        refused(
            |r| {
                if let Record::Entry { parent, cookie, .. } = &mut r[2] {
                    (*parent, *cookie) = (2, 5); // dir inside itself
                }
            },
            "dump line 3: directories 2 form a cycle cut off from the root",
        );
        refused(
            |r| inode_mut(r, 2).parent = 3,
            "directory 2 records 3 as its parent",
        );
        refused(
            |r| inode_mut(r, ROOT_INO).nlink = 2,
            "inode 1: link count 2 where the dump gives it 1 subdirectories",
        );
        refused(
            |r| inode_mut(r, 3).nlink = 2,
            "inode 3: link count 2 where the dump names it 1 times",
        );
        refused(
            |r| {
                r.remove(5);
            },
            "inode 3 is named by no entry",
        );
        refused(
            |r| r.insert(3, entry(ROOT_INO, b"x", 9, FileKind::File, 5)),
            "inode 9 is not in the dump",
        );
        refused(
            |r| r[5] = entry(2, b"file", 3, FileKind::File, 12),
            "readdir cookie 12",
        );
        refused(
            |r| {
                r.remove(1);
            },
            "no root directory",
        );
    }

    #[test]
    fn an_entry_says_its_inode_s_kind() {
        refused(
            |r| r[3] = entry(ROOT_INO, b"link", 4, FileKind::File, 4),
            "dump line 4: the entry \"link\" in directory 1 says File, inode 4 is Symlink",
        );
    }

    #[test]
    fn extents_stay_in_their_blocks_and_the_file() {
        let edit = |change: fn(&mut MappedSpan)| {
            move |r: &mut Vec<Record>| {
                if let Record::Extents { extents, .. } = &mut r[7] {
                    change(&mut extents[0]);
                }
            }
        };
        refused(
            edit(|e| e.block_offset = 101),
            "reaches past the end of its block (101 + 100 > 200)",
        );
        refused(edit(|e| e.len = 0), "is empty");
        refused(
            edit(|e| e.offset = 1),
            "extents reach byte 101, past the file's size (100)",
        );
        refused(
            edit(|e| e.offset = u64::MAX - 10),
            "past the largest file size",
        );
        refused(
            |r| inode_mut(r, 3).extent_count = 2,
            "1 extents where the inode counts 2",
        );
        refused(
            |r| {
                if let Record::Extents { extents, .. } = &mut r[7] {
                    let mut second = extents[0].clone();
                    second.offset = 99;
                    extents.push(second);
                }
            },
            "inode 3: extents overlap at offset 99",
        );
    }

    #[test]
    fn records_must_add_up() {
        refused(
            |r| {
                r.pop();
            },
            "incomplete",
        );
        refused(|r| r.push(r[1].clone()), "a record after the end record");
        refused(
            |r| r.insert(2, r[1].clone()),
            "dump line 3: inode 1 again (first on line 2)",
        );
        let mut r = good();
        if let Some(Record::End { entries, .. }) = r.last_mut() {
            *entries = 4;
        }
        let err = checked(&r).unwrap_err();
        assert!(
            err.contains("the end record counts 4 inodes, 4 entries"),
            "{err}"
        );
        refused(
            |r| {
                r.insert(
                    9,
                    Record::Symlink {
                        ino: 3,
                        target: Bytes::new(b"x"),
                    },
                )
            },
            "dump line 10: inode 3 is File, not Symlink",
        );
    }
}
