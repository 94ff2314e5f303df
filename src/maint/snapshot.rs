//! `graviton snapshot create|list|delete` on an open volume (`tree::snapshot` does the work).

use std::io::Write;

use crate::daemon::control::SnapshotRequest;
use crate::vfs::tree::snapshot;
use crate::volume::Volume;

pub fn run(vol: &Volume, req: &SnapshotRequest, out: &mut dyn Write) -> anyhow::Result<()> {
    let meta = vol.meta.as_ref();
    match req {
        SnapshotRequest::Create { name, path } => {
            let made = snapshot::create(meta, name, path.as_deref())?;
            writeln!(
                out,
                "snapshot {name}: {} inodes, {} bytes of files, in {:.2} s",
                made.inodes, made.bytes, made.seconds
            )?;
        }
        SnapshotRequest::List { json } => {
            let all = snapshot::list(meta)?;
            if *json {
                serde_json::to_writer(&mut *out, &all)?;
                writeln!(out)?;
            } else {
                for s in all {
                    let when = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_secs(s.created.max(0) as u64),
                    );
                    writeln!(out, "{}\t{when}\t{}", s.name, s.path)?;
                }
            }
        }
        SnapshotRequest::Delete { name } => {
            let removed = snapshot::delete(meta, name)?;
            writeln!(
                out,
                "snapshot {name} deleted ({removed} inodes); `graviton gc` frees the blocks only it referenced"
            )?;
        }
    }
    Ok(())
}
