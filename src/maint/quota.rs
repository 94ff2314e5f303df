//! `graviton quota set|get|list|remove` on an open volume (`vfs::quota` does the work).

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::daemon::control::{QuotaRequest, QuotaTarget};
use crate::meta::{MetaStore, ROOT_INO, is_frozen};
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

fn key_of(meta: &dyn MetaStore, target: &QuotaTarget) -> anyhow::Result<Key> {
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

/// How a command shows what quota `key` limits.
pub(crate) fn describe(meta: &dyn MetaStore, key: Key) -> anyhow::Result<String> {
    Ok(match key {
        Key::Volume => "volume".into(),
        Key::User(u) => format!("user:{u}"),
        Key::Group(g) => format!("group:{g}"),
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

/// Every quota of the volume.
pub fn all(meta: &dyn MetaStore) -> anyhow::Result<Vec<Shown>> {
    let mut all = Vec::new();
    for (key, record) in scan::list(meta)? {
        all.push(Shown {
            of: describe(meta, key)?,
            record,
        });
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

pub fn run(vol: &Volume, req: &QuotaRequest, out: &mut dyn Write) -> anyhow::Result<()> {
    let meta = vol.meta.as_ref();
    match req {
        QuotaRequest::Set {
            target,
            bytes,
            inodes,
        } => {
            let key = key_of(meta, target)?;
            scan::set(meta, key, *bytes, *inodes)?;
            let record = quota::record(meta.read()?.as_mut(), key)?.unwrap_or_default();
            let of = describe(meta, key)?;
            show(out, &[Shown { of, record }], false)?;
        }
        QuotaRequest::Get { target, json } => {
            let key = key_of(meta, target)?;
            let of = describe(meta, key)?;
            let Some(record) = quota::record(meta.read()?.as_mut(), key)? else {
                anyhow::bail!("{of} has no quota");
            };
            show(out, &[Shown { of, record }], *json)?;
        }
        QuotaRequest::List { json } => show(out, &all(meta)?, *json)?,
        QuotaRequest::Remove { target } => {
            let key = key_of(meta, target)?;
            let of = describe(meta, key)?;
            anyhow::ensure!(scan::remove(meta, key)?, "{of} has no quota");
            writeln!(out, "removed the quota of {of}")?;
        }
    }
    Ok(())
}
