//! `graviton quota set|get|list|remove` on an open volume, as a caller (`vfs::quota` does the
//! work). An ordinary user sees the volume's quota, its own user's and groups', and those of
//! the directories it may reach (search permission on the way, as for `cd`); setting and
//! removing quotas is root's.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::daemon::control::{QuotaRequest, QuotaTarget};
use crate::meta::{MetaStore, ROOT_INO, is_frozen};
use crate::vfs::access::{self, Who};
use crate::vfs::quota::{self, Key, Record, scan};
use crate::vfs::tree;
use crate::volume::Volume;

/// A quota as `get`, `list` and `status` show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Shown {
    /// `volume`, `user:<uid>`, `group:<gid>`, or the directory's path.
    of: String,
    #[serde(flatten)]
    record: Record,
}

/// The quota `target` names; a directory as `who` reaches it.
fn key_of(meta: &dyn MetaStore, target: &QuotaTarget, who: &Who) -> anyhow::Result<Key> {
    if let QuotaTarget::Path(p) = target {
        reachable(meta, p, who, access::EXEC)?;
    }
    Ok(match target {
        QuotaTarget::Volume => Key::Volume,
        QuotaTarget::User(u) => Key::User(*u),
        QuotaTarget::Group(g) => Key::Group(*g),
        QuotaTarget::Path(p) => {
            let (dir, _) = tree::snapshot::directory(meta, p)?;
            anyhow::ensure!(
                !is_frozen(dir),
                "{p} is inside a snapshot or the trash: quotas limit the live tree"
            );
            match dir {
                // the whole volume's tree is the volume
                ROOT_INO => Key::Volume,
                d => Key::Dir(d),
            }
        }
    })
}

/// Whether `who` may walk to directory `path` (from the volume's root), with `mask` on every
/// directory on the way.
fn reachable(meta: &dyn MetaStore, path: &str, who: &Who, mask: u16) -> anyhow::Result<()> {
    if who.is_root() {
        return Ok(());
    }
    let parts = access::components(path.as_bytes())?;
    access::walk(meta.read()?.as_mut(), who, &parts, mask)
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    Ok(())
}

/// Whether `who` may see quota `key`, shown as `of` (`describe`).
fn visible(meta: &dyn MetaStore, key: Key, of: &str, who: &Who) -> bool {
    match key {
        _ if who.is_root() => true,
        Key::Volume => true,
        Key::User(u) => u == who.uid,
        Key::Group(g) => who.in_group(g),
        Key::Trash => true,
        // (a listing names it: only where `who` could list it too)
        Key::Dir(_) => {
            of.starts_with('/') && reachable(meta, of, who, access::READ | access::EXEC).is_ok()
        }
    }
}

/// How a command shows what quota `key` limits.
pub(crate) fn describe(meta: &dyn MetaStore, key: Key) -> anyhow::Result<String> {
    Ok(match key {
        Key::Volume => "volume".into(),
        Key::User(u) => format!("user:{u}"),
        Key::Group(g) => format!("group:{g}"),
        Key::Trash => "trash".into(),
        Key::Dir(d) => {
            let mut view = meta.read()?;
            match tree::trash::path_of(view.as_mut(), d, 0)? {
                Some(p) => p,
                None => format!("directory {d}"),
            }
        }
    })
}

fn limit(n: u64) -> String {
    match n {
        0 => "-".into(),
        n => n.to_string(),
    }
}

impl Shown {
    /// One line: what it limits, usage of limit for bytes and inodes.
    pub fn line(&self) -> String {
        let r = &self.record;
        let counting = if r.counting { "\t(counting)" } else { "" };
        format!(
            "{}\tbytes {} of {}\tinodes {} of {}{counting}",
            self.of,
            r.bytes,
            limit(r.bytes_limit),
            r.inodes,
            limit(r.inodes_limit)
        )
    }
}

/// Every quota of the volume `who` may see (`visible`).
pub fn all(meta: &dyn MetaStore, who: &Who) -> anyhow::Result<Vec<Shown>> {
    let mut all = Vec::new();
    for (key, record) in scan::list(meta)? {
        let of = describe(meta, key)?;
        if visible(meta, key, &of, who) {
            all.push(Shown { of, record });
        }
    }
    Ok(all)
}

fn show(out: &mut dyn Write, all: &[Shown], json: bool) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, all)?;
        return Ok(writeln!(out)?);
    }
    for s in all {
        writeln!(out, "{}", s.line())?;
    }
    Ok(())
}

pub fn run(vol: &Volume, req: &QuotaRequest, who: &Who, out: &mut dyn Write) -> anyhow::Result<()> {
    let meta = vol.meta.as_ref();
    if let QuotaRequest::Set { .. } | QuotaRequest::Remove { .. } = req {
        anyhow::ensure!(who.is_root(), "permission denied: only root sets quotas");
    }
    match req {
        QuotaRequest::Set {
            target,
            bytes,
            inodes,
        } => {
            let key = key_of(meta, target, who)?;
            scan::set(meta, key, *bytes, *inodes)?;
            let record = quota::record(meta.read()?.as_mut(), key)?.unwrap_or_default();
            let of = describe(meta, key)?;
            show(out, &[Shown { of, record }], false)?;
        }
        QuotaRequest::Get { target, json } => {
            let key = key_of(meta, target, who)?;
            let of = describe(meta, key)?;
            anyhow::ensure!(
                visible(meta, key, &of, who),
                "permission denied: the quota of {of} is not yours to see"
            );
            let Some(record) = quota::record(meta.read()?.as_mut(), key)? else {
                anyhow::bail!("{of} has no quota");
            };
            show(out, &[Shown { of, record }], *json)?;
        }
        QuotaRequest::List { json } => show(out, &all(meta, who)?, *json)?,
        QuotaRequest::Remove { target } => {
            let key = key_of(meta, target, who)?;
            let of = describe(meta, key)?;
            anyhow::ensure!(scan::remove(meta, key)?, "{of} has no quota");
            writeln!(out, "removed the quota of {of}")?;
        }
    }
    Ok(())
}
