//! Records a transaction took as read from a mount's cache instead of from the database
//! (`MetaTxn::expect_inode`), and the statement that checks them in the commit's message:
//! unless every one is still the database's record, the transaction fails as a lost
//! serialization race (`graviton_stale`, migrations/0010) and the mount runs it again from
//! the database. A transaction whose cached reads all hold is as if it had read the database
//! in its own snapshot.

use super::bytea_literal;
use super::ops::i;
use crate::meta::{DirEntry, Ino, Inode};

/// The checks, prepared once on each thread's own connection (with the `first_reads`): one
/// inode record (all its columns); one entry (parent, name, then inode and cookie, both null
/// for "no entry"); or a directory's record and one of its entries, in one statement (a
/// create's or a rename's reads). A stale record calls `graviton_stale`. Their parameters
/// are scalars, so the server plans each once (one index lookup per record) and runs that
/// plan from then on; arrays of records would be planned again at every run, their lengths
/// changing the plan's cost.
pub(super) fn prepare() -> String {
    let columns = [
        "ino",
        "kind",
        "perm",
        "uid",
        "gid",
        "nlink",
        "size",
        "rdev",
        "atime_s",
        "atime_ns",
        "mtime_s",
        "mtime_ns",
        "ctime_s",
        "ctime_ns",
        "crtime_s",
        "crtime_ns",
        "extent_count",
        "data_version",
        "next_cookie",
        "parent",
    ];
    let types = vec!["bigint"; columns.len()].join(", ");
    let equal: Vec<String> = (columns.iter().enumerate())
        .map(|(n, c)| format!("i.{c} = ${}", n + 1))
        .collect();
    let inode = format!(
        "NOT EXISTS (SELECT 1 FROM inodes i WHERE {})",
        equal.join(" AND ")
    );
    // the entry under the parent in parameter $parent, with the name, the entry's inode and
    // its cookie in the three parameters from $name
    let dirent = |parent: usize, name: usize| {
        let (ino, cookie) = (name + 1, name + 2);
        format!(
            "NOT coalesce((SELECT x.ino IS NOT DISTINCT FROM ${ino} \
             AND x.cookie IS NOT DISTINCT FROM ${cookie} FROM dirents x \
             WHERE x.parent = ${parent} AND x.name = ${name}), ${ino} IS NULL)"
        )
    };
    format!(
        "PREPARE graviton_expect_inode ({types}) AS SELECT graviton_stale() WHERE {inode}; \
         PREPARE graviton_expect_dirent (bigint, bytea, bigint, bigint) AS \
         SELECT graviton_stale() WHERE {}; \
         PREPARE graviton_expect_inode_and_dirent ({types}, bytea, bigint, bigint) AS \
         SELECT graviton_stale() WHERE {inode} OR {}",
        dirent(1, 2),
        dirent(1, columns.len() + 1),
    )
}

/// The checks of the records taken as read, as SQL text made of integers and hex digits only.
#[derive(Default)]
pub(super) struct Expected {
    checks: Vec<String>,
    /// The inode and the fields of the last check, when it is of an inode: an entry of that
    /// directory checked next goes into the same statement.
    last_inode: Option<(Ino, String)>,
}

impl Expected {
    pub(super) fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    pub(super) fn inode(&mut self, n: &Inode) {
        let fields = [
            i(n.ino),
            n.kind.tag().into(),
            n.perm.into(),
            n.uid.into(),
            n.gid.into(),
            n.nlink.into(),
            i(n.size),
            n.rdev.into(),
            n.atime.secs,
            n.atime.nanos.into(),
            n.mtime.secs,
            n.mtime.nanos.into(),
            n.ctime.secs,
            n.ctime.nanos.into(),
            n.crtime.secs,
            n.crtime.nanos.into(),
            i(n.extent_count),
            i(n.data_version),
            i(n.next_cookie),
            i(n.parent),
        ];
        let fields: Vec<String> = fields.iter().map(i64::to_string).collect();
        let fields = fields.join(",");
        (self.checks).push(format!("EXECUTE graviton_expect_inode({fields})"));
        self.last_inode = Some((n.ino, fields));
    }

    pub(super) fn dirent(&mut self, parent: Ino, name: &[u8], entry: Option<&DirEntry>) {
        let or_null = |v: Option<u64>| v.map_or("NULL".to_string(), |v| i(v).to_string());
        let entry = format!(
            "{}, {}, {}",
            bytea_literal(name),
            or_null(entry.map(|e| e.ino)),
            or_null(entry.map(|e| e.cookie)),
        );
        let check = match self.last_inode.take() {
            Some((dir, fields)) if dir == parent => {
                self.checks.pop();
                format!("EXECUTE graviton_expect_inode_and_dirent({fields}, {entry})")
            }
            _ => format!("EXECUTE graviton_expect_dirent({}, {entry})", i(parent)),
        };
        self.checks.push(check);
    }

    /// The statements that check the records (on a connection with `prepare()` run), leaving
    /// this empty.
    pub(super) fn take_sql(&mut self) -> String {
        std::mem::take(self).checks.join("; ")
    }
}
