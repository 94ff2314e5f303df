//! `graviton dump`: a volume's metadata as JSON lines (`maint::dump`).

use std::path::PathBuf;

use clap::Args;

use crate::daemon::control::Request;
use crate::maint::dump::Record;

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Where to write the dump (`-`: standard output).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Volume directory or postgres:// URL (default: the default volume). A mounted embedded
    /// volume is handled by its mount daemon.
    pub source: Option<String>,
}

pub fn run(args: DumpArgs) -> anyhow::Result<()> {
    let source = super::source_or_default(args.source)?;
    if args.output.as_os_str() == "-" {
        return crate::daemon::control::run(&source, &Request::Dump, &mut std::io::stdout().lock());
    }
    // written beside, renamed when complete: a failed dump never replaces a good one. It holds
    // every name and xattr: created new, 0600, never through a symlink someone left there.
    let tmp = args.output.with_extension("partial");
    let _ = std::fs::remove_file(&tmp); // an interrupted dump's, or a planted link (not followed)
    let file =
        crate::private::create_new(&tmp).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    if let Err(e) = crate::daemon::control::run(&source, &Request::Dump, &mut out) {
        drop(out);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    out.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, &args.output)?;
    if let Some(Record::End {
        inodes, entries, ..
    }) = last_record(&args.output)
    {
        println!(
            "dumped {inodes} inodes and {entries} entries to {}",
            args.output.display()
        );
    }
    Ok(())
}

/// The last line of a dump file.
fn last_record(path: &std::path::Path) -> Option<Record> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(256))).ok()?;
    let mut tail = String::new();
    f.read_to_string(&mut tail).ok()?;
    serde_json::from_str(tail.lines().last()?).ok()
}
