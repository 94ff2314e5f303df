//! `graviton trash list|restore|purge` on an open volume, as a caller (`tree::trash` does the
//! work): an ordinary user's request sees and touches only what that user owns.

use std::io::Write;

use crate::daemon::control::TrashRequest;
use crate::vfs::access::Who;
use crate::vfs::tree::trash;
use crate::volume::Volume;

pub fn run(vol: &Volume, req: &TrashRequest, who: &Who, out: &mut dyn Write) -> anyhow::Result<()> {
    let meta = vol.meta.as_ref();
    match req {
        TrashRequest::List { json } => {
            let all = trash::list(meta, who)?;
            if *json {
                serde_json::to_writer(&mut *out, &all)?;
                writeln!(out)?;
            } else {
                for e in all {
                    writeln!(out, "{}\t{}\t{}\t{}", e.name, e.kind, e.size, e.origin)?;
                }
            }
        }
        TrashRequest::Restore { names } => {
            let r = trash::restore(meta, names, who)?;
            for s in &r.skipped {
                writeln!(out, "left in the trash: {s}")?;
            }
            writeln!(out, "restored {} entries", r.restored)?;
            anyhow::ensure!(
                r.skipped.is_empty(),
                "{} entries could not be restored",
                r.skipped.len()
            );
        }
        TrashRequest::Purge { names } => {
            let in_use = |ino| vol.in_use.get().is_some_and(|f| f(ino));
            let n = trash::purge(meta, names, &in_use, who)?;
            writeln!(
                out,
                "purged: {n} inodes deleted; `graviton gc` frees the blocks only they referenced"
            )?;
        }
    }
    Ok(())
}
