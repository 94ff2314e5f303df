//! The JSON argument of `graviton_apply` (migrations/0004): a transaction's queued writes, each
//! `{"op": name, "v": row}`, written straight into one text buffer as they are queued, without
//! `serde_json::Value` trees, whose allocations would dominate the CPU time of sending
//! write-behind batches.

use serde::{Serialize, Serializer};

use crate::domain::Extent;
use crate::domain::key::KEY_BYTES;
use crate::meta::{DirEntry, Ino, Inode};

/// A JSON array of operations under construction.
#[derive(Default)]
pub(super) struct Ops {
    text: Vec<u8>,
}

/// bytea in PostgreSQL's hex input format (`\x…`), as a JSON string.
struct Bytea<'a>(&'a [u8]);

impl Serialize for Bytea<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("\\x{}", hex::encode(self.0)))
    }
}

pub(super) fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

#[derive(Serialize)]
struct Op<'a, T> {
    op: &'a str,
    v: T,
}

#[derive(Serialize)]
struct InodeRow {
    ino: i64,
    kind: u8,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: i64,
    rdev: u32,
    atime_s: i64,
    atime_ns: u32,
    mtime_s: i64,
    mtime_ns: u32,
    ctime_s: i64,
    ctime_ns: u32,
    crtime_s: i64,
    crtime_ns: u32,
    extent_count: i64,
    data_version: i64,
    next_cookie: i64,
    parent: i64,
}

#[derive(Serialize)]
struct InoRow {
    ino: i64,
}

#[derive(Serialize)]
struct DirentRow<'a> {
    parent: i64,
    name: Bytea<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ino: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cookie: Option<i64>,
}

#[derive(Serialize)]
struct XattrRow<'a> {
    ino: i64,
    name: Bytea<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Bytea<'a>>,
}

#[derive(Serialize)]
struct SymlinkRow<'a> {
    ino: i64,
    target: Bytea<'a>,
}

#[derive(Serialize)]
struct OrphanRow {
    ino: i64,
    /// null without a session
    session: Option<i64>,
}

#[derive(Serialize)]
struct ExtentRow {
    ino: i64,
    file_offset: i64,
    #[serde(serialize_with = "key_bytea")]
    block_key: [u8; KEY_BYTES],
    block_offset: u32,
    len: u32,
}

fn key_bytea<S: Serializer>(key: &[u8; KEY_BYTES], s: S) -> Result<S::Ok, S::Error> {
    Bytea(key).serialize(s)
}

#[derive(Serialize)]
struct SpliceRow {
    ino: i64,
    remove: Vec<i64>,
    insert: Vec<ExtentRow>,
}

impl Ops {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The array's text, leaving this empty.
    pub fn take(&mut self) -> String {
        let mut text = std::mem::take(&mut self.text);
        if text.is_empty() {
            text.push(b'[');
        }
        text.push(b']');
        String::from_utf8(text).expect("serde_json writes UTF-8")
    }

    fn push(&mut self, op: &str, v: impl Serialize) {
        self.text
            .push(if self.text.is_empty() { b'[' } else { b',' });
        serde_json::to_writer(&mut self.text, &Op { op, v }).expect("rows serialize");
    }

    pub fn put_inode(&mut self, n: &Inode) {
        self.push(
            "put_inode",
            InodeRow {
                ino: i(n.ino),
                kind: n.kind.tag(),
                perm: n.perm,
                uid: n.uid,
                gid: n.gid,
                nlink: n.nlink,
                size: i(n.size),
                rdev: n.rdev,
                atime_s: n.atime.secs,
                atime_ns: n.atime.nanos,
                mtime_s: n.mtime.secs,
                mtime_ns: n.mtime.nanos,
                ctime_s: n.ctime.secs,
                ctime_ns: n.ctime.nanos,
                crtime_s: n.crtime.secs,
                crtime_ns: n.crtime.nanos,
                extent_count: i(n.extent_count),
                data_version: i(n.data_version),
                next_cookie: i(n.next_cookie),
                parent: i(n.parent),
            },
        );
    }

    pub fn delete_inode(&mut self, ino: Ino) {
        self.push("delete_inode", InoRow { ino: i(ino) });
    }

    pub fn put_dirent(&mut self, parent: Ino, name: &[u8], e: &DirEntry) {
        self.push(
            "put_dirent",
            DirentRow {
                parent: i(parent),
                name: Bytea(name),
                ino: Some(i(e.ino)),
                kind: Some(e.kind.tag()),
                cookie: Some(i(e.cookie)),
            },
        );
    }

    pub fn delete_dirent(&mut self, parent: Ino, name: &[u8]) {
        let row = DirentRow {
            parent: i(parent),
            name: Bytea(name),
            ino: None,
            kind: None,
            cookie: None,
        };
        self.push("delete_dirent", row);
    }

    pub fn put_xattr(&mut self, ino: Ino, name: &[u8], value: &[u8]) {
        let row = XattrRow {
            ino: i(ino),
            name: Bytea(name),
            value: Some(Bytea(value)),
        };
        self.push("put_xattr", row);
    }

    pub fn delete_xattr(&mut self, ino: Ino, name: &[u8]) {
        let row = XattrRow {
            ino: i(ino),
            name: Bytea(name),
            value: None,
        };
        self.push("delete_xattr", row);
    }

    pub fn put_symlink(&mut self, ino: Ino, target: &[u8]) {
        let row = SymlinkRow {
            ino: i(ino),
            target: Bytea(target),
        };
        self.push("put_symlink", row);
    }

    pub fn add_orphan(&mut self, ino: Ino, session: Option<i64>) {
        let row = OrphanRow {
            ino: i(ino),
            session,
        };
        self.push("add_orphan", row);
    }

    /// `session` holds `ino` open (migrations/0007).
    pub fn hold(&mut self, ino: Ino, session: i64) {
        let row = OrphanRow {
            ino: i(ino),
            session: Some(session),
        };
        self.push("hold", row);
    }

    /// One inode's netted extent changes: the extents keyed at `remove` go, `insert` come.
    pub fn splice(&mut self, ino: Ino, remove: Vec<u64>, insert: &[Extent]) {
        let insert = insert
            .iter()
            .map(|e| ExtentRow {
                ino: i(ino),
                file_offset: i(e.offset),
                block_key: e.key.to_bytes(),
                block_offset: e.block_offset,
                len: e.len,
            })
            .collect();
        let row = SpliceRow {
            ino: i(ino),
            remove: remove.into_iter().map(i).collect(),
            insert,
        };
        self.push("splice", row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BlockKey;
    use crate::meta::{FileKind, Timestamp};
    use serde_json::json;

    #[test]
    fn operations_are_the_json_graviton_apply_reads() {
        let mut ops = Ops::default();
        assert!(ops.is_empty());
        assert_eq!(ops.take(), "[]");
        let t = Timestamp { secs: -5, nanos: 7 };
        let inode = Inode {
            ino: 9,
            kind: FileKind::Dir,
            perm: 0o1755,
            uid: 1,
            gid: 2,
            nlink: 3,
            size: u64::MAX,
            rdev: 4,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            extent_count: 5,
            data_version: 6,
            next_cookie: 7,
            parent: 1,
        };
        let key = BlockKey::for_data(crate::domain::HashAlgo::Blake3, b"x");
        let e = Extent {
            offset: 4096,
            key,
            block_offset: 1,
            len: 2,
        };
        ops.put_inode(&inode);
        ops.delete_dirent(9, b"a\"\\");
        ops.put_dirent(9, b"b", &DirEntry::new(10, FileKind::File, 3));
        ops.put_xattr(10, b"user.x", b"");
        ops.delete_xattr(10, b"user.y");
        ops.put_symlink(11, b"/t");
        ops.add_orphan(10, None);
        ops.splice(10, vec![0], &[e]);
        ops.delete_inode(12);
        assert!(!ops.is_empty());
        let got: serde_json::Value = serde_json::from_str(&ops.take()).expect("valid JSON");
        let hexkey = format!("\\x{}", hex::encode(key.to_bytes()));
        let want = json!([
            {"op": "put_inode", "v": {
                "ino": 9, "kind": 1, "perm": 0o1755, "uid": 1, "gid": 2, "nlink": 3,
                "size": i64::MAX, "rdev": 4, "atime_s": -5, "atime_ns": 7, "mtime_s": -5,
                "mtime_ns": 7, "ctime_s": -5, "ctime_ns": 7, "crtime_s": -5, "crtime_ns": 7,
                "extent_count": 5, "data_version": 6, "next_cookie": 7, "parent": 1}},
            {"op": "delete_dirent", "v": {"parent": 9, "name": "\\x61225c"}},
            {"op": "put_dirent", "v": {"parent": 9, "name": "\\x62", "ino": 10, "kind": 0, "cookie": 3}},
            {"op": "put_xattr", "v": {"ino": 10, "name": "\\x757365722e78", "value": "\\x"}},
            {"op": "delete_xattr", "v": {"ino": 10, "name": "\\x757365722e79"}},
            {"op": "put_symlink", "v": {"ino": 11, "target": "\\x2f74"}},
            {"op": "add_orphan", "v": {"ino": 10, "session": null}},
            {"op": "splice", "v": {"ino": 10, "remove": [0], "insert": [
                {"ino": 10, "file_offset": 4096, "block_key": hexkey, "block_offset": 1, "len": 2}]}},
            {"op": "delete_inode", "v": {"ino": 12}},
        ]);
        assert_eq!(got, want);
        assert!(ops.is_empty(), "take empties the buffer");
    }
}
