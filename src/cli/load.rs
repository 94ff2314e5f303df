//! `graviton load`: restore a dump into a freshly formatted volume (`maint::load`).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Args;

use crate::maint::load::load;
use crate::volume::Volume;

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// A file written by `graviton dump` (`-`: standard input).
    pub input: PathBuf,
    /// The volume to fill: formatted and empty (a directory or a postgres:// URL).
    pub target: String,
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let target = crate::volume::Source::parse(&args.target);
    let mut input = if args.input.as_os_str() == "-" {
        spool_stdin()?
    } else {
        File::open(&args.input).map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))?
    };
    // checked whole before anything is written: a cut-short or broken dump changes nothing
    crate::maint::dump_check::check(BufReader::new(&input))?;
    input.seek(SeekFrom::Start(0))?;
    let vol = match wrapped_key(&mut input)? {
        None => Volume::open(&target)?,
        Some(wrapped) => {
            // the dump's key, unlocked first: a wrong passphrase changes nothing
            let key = Volume::unwrap_key(&target, &wrapped)?;
            // the target (encrypted, empty, unmounted) takes it, and its passphrase
            Volume::adopt_data_key(&target, &wrapped)?;
            eprintln!("the target now opens with the dumped volume's passphrase");
            let vol = Volume::open_with_key(&target, key)?;
            // the sealed blocks, checked before anything else is written
            crate::maint::dump_check::check_sealed_blocks(BufReader::new(&input), &vol.at_rest)?;
            input.seek(SeekFrom::Start(0))?;
            vol
        }
    };
    let r = load(&vol, Box::new(BufReader::new(input)))?;
    println!(
        "loaded {} inodes and {} entries into {}",
        r.inodes,
        r.entries,
        vol.source.display()
    );
    if r.missing_blocks > 0 {
        anyhow::bail!(
            "{} blocks the files name are not in the target's block store ({}): format the target with --store naming the dumped volume's block store, or copy its blocks",
            r.missing_blocks,
            vol.store.backend()
        );
    }
    Ok(())
}

/// The wrapped data key the dump's header carries (an encrypted volume's dump); the input is
/// left at its start.
fn wrapped_key(input: &mut File) -> anyhow::Result<Option<String>> {
    let mut header = String::new();
    std::io::BufRead::read_line(&mut BufReader::new(&*input), &mut header)?;
    input.seek(SeekFrom::Start(0))?;
    match serde_json::from_str(&header)? {
        crate::maint::dump::Record::Header { data_key, .. } => Ok(data_key),
        _ => anyhow::bail!("not a graviton dump: the first line is not its header"),
    }
}

/// Standard input, copied to a file only this process can open (private, and unlinked at
/// once), so that it can be checked whole before it is loaded.
fn spool_stdin() -> anyhow::Result<File> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let path = std::env::temp_dir().join(format!(
        "graviton-load-{}-{nanos}.jsonl",
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    std::fs::remove_file(&path)?;
    std::io::copy(&mut std::io::stdin().lock(), &mut file)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}
